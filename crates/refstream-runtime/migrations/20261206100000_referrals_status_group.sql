-- A referral's first move, pending → eligible, rewrote an entry in each of its indexes: Postgres
-- makes an update in place (HOT: a new row version on the same page, no index entry) only
-- when no indexed column changes, and `status` was a column of three partial indexes'
-- predicates. Those indexes now name `status_group`, a stored column computed from the status
-- that is the same for pending and eligible, so that move (one per registration) writes no
-- index entry. The moves out of pending or eligible still do, as they should: the row leaves
-- the open referrals' index.
--
-- A page keeps room for the moved version: fillfactor 50 (the referrals of a batch are written
-- together, so most of a page's rows move within seconds of each other). The heap takes
-- about twice the pages; its indexes are unchanged.
--
-- Adding a stored column rewrites the table under an exclusive lock: on a large deployment,
-- run it in a quiet window.
ALTER TABLE referrals ADD COLUMN status_group text COLLATE "C" GENERATED ALWAYS AS (
    CASE status
        WHEN 'pending' THEN 'open'
        WHEN 'eligible' THEN 'open'
        WHEN 'held' THEN 'held'
        WHEN 'capped' THEN 'capped'
    END) STORED;
ALTER TABLE referrals SET (fillfactor = 50);

DROP INDEX referrals_held;
CREATE INDEX referrals_held ON referrals (referral_id) WHERE status_group = 'held';
DROP INDEX referrals_capped;
CREATE INDEX referrals_capped ON referrals (campaign_id, referral_id) WHERE status_group = 'capped';
DROP INDEX referrals_open_by_registration;
CREATE INDEX referrals_open_by_registration ON referrals (referee_registered_at)
    WHERE status_group IN ('open', 'held');
