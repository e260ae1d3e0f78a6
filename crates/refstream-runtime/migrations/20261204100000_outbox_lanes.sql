-- The outbox in lanes: a row's shard is a hash of its key over outbox_shards() lanes, so every
-- row of one key is in one lane and the lanes are relayed concurrently (one advisory lock and
-- one claim at a time per lane), each in id order. Per-key order on the topic is unchanged: a
-- key's rows are claimed by one lane, in id order, as before by the one relay.
--
-- To change the number of lanes, a migration does, in one transaction:
--   LOCK TABLE outbox IN EXCLUSIVE MODE;  -- waits for writers and claims in flight, holds new ones
--   CREATE OR REPLACE FUNCTION outbox_shards() ... (the new count);
--   UPDATE outbox SET shard = outbox_shard(key) WHERE shard <> outbox_shard(key);
-- so no key ever has rows in two lanes. The relays read the count every few seconds and restart
-- their lanes when it changed.
--
-- outbox_shards() is PL/pgSQL and STABLE on purpose: Postgres never inlines or pre-computes it
-- into a cached plan, so every insert after that migration commits uses the new count (an
-- inlined constant would live on in the cached plans of long-lived connections).
CREATE FUNCTION outbox_shards() RETURNS int LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN 4;
END;
$$;

CREATE FUNCTION outbox_shard(key text) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE
    AS 'SELECT abs(hashtextextended(key, 7) % outbox_shards())::int';

UPDATE outbox SET shard = outbox_shard(key) WHERE shard <> outbox_shard(key);

-- Postgres decides a row's lane, whatever the writer sent: a writer built before lanes (still
-- naming shard 0 during a rolling deploy) or a hand-written insert cannot put a key's rows in two
-- lanes. The trigger costs a few microseconds per row.
ALTER TABLE outbox ALTER COLUMN shard DROP DEFAULT;
CREATE FUNCTION refstream_outbox_lane() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.shard := outbox_shard(NEW.key);
    RETURN NEW;
END;
$$;
CREATE TRIGGER outbox_lane BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refstream_outbox_lane();

-- A lane wakes only for its own rows: the notification names each lane a statement inserted into.
CREATE OR REPLACE FUNCTION refstream_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('refstream_outbox', lane::text) FROM (SELECT DISTINCT shard AS lane FROM inserted) AS lanes;
    RETURN NULL;
END;
$$;
DROP TRIGGER outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_outbox_notify();
