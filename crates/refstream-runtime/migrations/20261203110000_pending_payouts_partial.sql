-- A payout is inserted without a barrier, joins one when its hold ends, and is deleted when it
-- settles. Indexed by due time only while it has no barrier (the question then: which holds have
-- ended), and by barrier only once it has one: each payout writes two index entries fewer, and
-- concurrent inserts no longer pile their NULL barrier ids into one leaf page.
DROP INDEX pending_payouts_due;
CREATE INDEX pending_payouts_due ON pending_payouts (due_at) WHERE barrier_id IS NULL;
DROP INDEX pending_payouts_barrier;
CREATE INDEX pending_payouts_barrier ON pending_payouts (barrier_id) WHERE barrier_id IS NOT NULL;
