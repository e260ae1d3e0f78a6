-- The outbox's primary key is (shard, id). A lane claims its rows in id order and deletes them by
-- lane and id, so this one index answers both; the separate unique index on id alone answered
-- nothing else and cost an index insertion for every outbox row (two per registration, one per
-- reward). ids still come from one sequence, so an id names one row whatever its lane.
--
-- During a rolling deploy a relay built before this migration deletes by id alone: that delete
-- reads the whole (small) outbox instead of one index, and is still correct.
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey;
DROP INDEX outbox_shard_id;
ALTER TABLE outbox ADD PRIMARY KEY (shard, id);
