-- The outbox's primary key is (shard, id). A lane claims its rows in id order and deletes them by
-- lane and id, so this one index answers both; the separate unique index on id alone answered
-- nothing else and cost an index insertion for every outbox row (two per registration, one per
-- reward). ids still come from one sequence, so an id names one row whatever its lane.
--
-- During a rolling deploy a relay built before this migration deletes by id alone: that delete
-- reads the whole (small) outbox instead of one index, and is still correct.
--
-- From this release the relay claims a lane's rows without row locks (the lane's advisory lock,
-- held by the session that runs the claim, already keeps every other relay out of the lane). So
-- a migration that changes the number of lanes (see 20261204100000_outbox_lanes.sql) must take
-- LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE, not EXCLUSIVE: only that mode also waits for a
-- claim in flight, which now holds no lock stronger than a plain read's.
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey;
DROP INDEX outbox_shard_id;
ALTER TABLE outbox ADD PRIMARY KEY (shard, id);
