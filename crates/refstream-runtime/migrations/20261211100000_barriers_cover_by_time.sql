-- A barrier covers every payout whose hold ended by its moment: a payout no longer joins one by
-- a write. A barrier captured at `hold_ended_at` holds the stream's position read after that
-- moment, so it covers everything that had arrived when the hold of any payout due by then
-- ended, whichever barrier was captured first and whether the payout was committed before or
-- after it. The settlement sweep claims the payouts due by the latest open barrier's moment and
-- records, on each reward, the first open barrier that covered it. Each payout was inserted,
-- updated (a new row version and an index entry: its barrier was indexed) and deleted, with a
-- foreign-key check on each of the first two; now it is inserted and deleted (in isolation, a
-- payout's insert and barrier took 41 µs, the insert alone 23).
--
-- A payout waiting on a barrier when this runs keeps it: its due time is at or before that
-- barrier's moment. Upgrading: a reward engine built before this migration stamps payouts with
-- a barrier column that is gone, and its sweep fails (logged, retried) until it is replaced:
-- stop the old engines before the first upgraded worker starts (any worker applies the
-- migrations).
-- Dropping the column drops its foreign key and both partial indexes that name it (by barrier,
-- and by due time while without one); payouts are then indexed by due time alone.
ALTER TABLE pending_payouts DROP COLUMN barrier_id;
CREATE INDEX pending_payouts_due ON pending_payouts (due_at);

-- The sweep's questions about barriers, by moment: the latest one captured (is a due payout
-- covered yet?) and the open ones (which payouts may settle, and the first that covered each).
CREATE INDEX settlement_barriers_moment ON settlement_barriers (hold_ended_at);
CREATE INDEX settlement_barriers_open_moment ON settlement_barriers (hold_ended_at) WHERE stage = 'open';
