-- The outbox in lanes: a row's shard is a hash of its key over outbox_shards() lanes, so every
-- row of one key is in one lane and the lanes are relayed concurrently (one advisory lock and
-- one claim at a time per lane), each in id order. Per-key order on the topic is unchanged: a
-- key's rows are claimed by one lane, in id order, as before by the one relay.
--
-- To change the number of lanes: a migration that redefines outbox_shards() and, in the same
-- transaction, moves the waiting rows (UPDATE outbox SET shard = outbox_shard(key)); that
-- update waits for any claim in flight, so a key's rows never sit in two lanes. The relays
-- read the count every few seconds and restart their lanes when it changed.
CREATE FUNCTION outbox_shards() RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT 4';

CREATE FUNCTION outbox_shard(key text) RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS 'SELECT abs(hashtextextended(key, 7) % outbox_shards())::int';

UPDATE outbox SET shard = outbox_shard(key) WHERE shard <> outbox_shard(key);
-- A writer names the lane (refstream_runtime::outbox::enqueue does): a row that forgot it would
-- otherwise sit in lane 0 whatever its key.
ALTER TABLE outbox ALTER COLUMN shard DROP DEFAULT;

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
