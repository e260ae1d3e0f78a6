-- The outbox and pending_payouts are queues: every row is deleted seconds after it was
-- inserted, so a vacuum often finds the pages at the end of the table empty and, by default,
-- truncates them. Truncating takes an ACCESS EXCLUSIVE lock on the table, held while it checks
-- the pages (giving it up only every 20 ms when others wait), so every insert into the queue
-- and every claim stalls behind it: at a steady load, a latency spike each time autovacuum, or
-- the engine's own vacuum of pending_payouts, visits. The pages are reused by the next inserts
-- anyway; vacuum keeps them.
ALTER TABLE outbox SET (vacuum_truncate = false);
ALTER TABLE pending_payouts SET (vacuum_truncate = false);
