-- Each worker remembers an event id for kafka.dedupe_retention_hours, then deletes it (the
-- consumer runtime's prune, every five minutes), so the dedupe table and its primary key stop
-- growing: their random inserts no longer read more of the disk the longer the fleet runs. The
-- prune reads a worker's oldest rows through this index, in order, and stops at the retention.
-- Each worker inserts at its own end of it, in time order, so an insert touches a page already in
-- memory. A BRIN index on processed_at would cost less per insert but stops narrowing: a block
-- range's summary only ever widens, so once vacuum hands the deleted rows' space to new ones
-- every range spans from the oldest row to the newest, and each prune would read the whole table.
CREATE INDEX processed_events_consumer_time ON processed_events (consumer, processed_at);
