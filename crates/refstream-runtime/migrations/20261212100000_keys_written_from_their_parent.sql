-- Three more foreign keys whose check could never fail, because the child row is written from
-- its parent's row by the same transaction (and users and referrals are never deleted), by the
-- rule of migration 20261211110000:
--
-- - `referral_codes.user_id`: a code is minted only for the users the same transaction's insert
--   returned (`attribution::mint_codes` after `insert_users`);
-- - `referrals.referee_id`: a referral is inserted only for a user the same transaction inserted,
--   or read as waiting for its click (`attribution::register`, `attribute`);
-- - `assessment_history.referral_id`: a first revision is inserted by the statement that
--   inserted its assessment (whose key on the referral is kept), from that insert's
--   `RETURNING`; a later one only for an assessment the same transaction locked `FOR UPDATE`.
--
-- Each check was a row-locking lookup of the parent, run once per row inserted: 13-16 µs of
-- Postgres' time in isolation, three per registration. The keys whose parent is another
-- account's row or another worker's write are kept: a referral's referrer, an assessment's
-- referral, a reward's referral and deposit, a ledger entry's reward.
ALTER TABLE referral_codes DROP CONSTRAINT IF EXISTS referral_codes_user_id_fkey;
ALTER TABLE referrals DROP CONSTRAINT IF EXISTS referrals_referee_id_fkey;
ALTER TABLE assessment_history DROP CONSTRAINT IF EXISTS assessment_history_referral_id_fkey;
