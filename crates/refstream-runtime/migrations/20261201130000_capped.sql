-- A referral its campaign's budget or a per-referrer cap refused to pay: `capped`, with the
-- reason in its transition.
ALTER TABLE referrals DROP CONSTRAINT referrals_status_check;
ALTER TABLE referrals ADD CONSTRAINT referrals_status_check
    CHECK (status IN ('pending', 'held', 'eligible', 'rewarded', 'rejected', 'expired', 'reversed', 'capped'));
-- The settlement sweep looks for capped referrals every round: keep that lookup an index scan.
CREATE INDEX referrals_capped ON referrals (campaign_id, referral_id) WHERE status = 'capped';
