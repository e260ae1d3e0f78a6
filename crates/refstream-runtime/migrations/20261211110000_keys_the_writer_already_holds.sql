-- Two foreign keys whose check could never fail, because the row is written from its referral's
-- own row, locked by the same transaction (and referrals are never deleted):
--
-- - `referral_transitions.referral_id`: a transition row is inserted only from the referrals the
--   same statement's guarded update changed (`RETURNING`, `store::apply_moves`);
-- - `pending_payouts.referral_id`: a payout is scheduled only for referrals the same
--   transaction locked `FOR UPDATE` a statement earlier, and the queue's claim joins the
--   referral anyway (a row without one could never be paid).
--
-- Each check was a row-locking lookup of the referral, run once per row inserted: about 12 µs
-- of Postgres' time in isolation, one per registration (the move to `eligible`) and two per
-- reward (the payout, the move to `rewarded`). The foreign keys whose parent another statement
-- or worker writes are kept: a reward's referral and qualifying deposit, a ledger entry's
-- reward, a referral's users, an assessment's referral, a code's user.
ALTER TABLE referral_transitions DROP CONSTRAINT IF EXISTS referral_transitions_referral_id_fkey;
ALTER TABLE pending_payouts DROP CONSTRAINT IF EXISTS pending_payouts_referral_id_fkey;
