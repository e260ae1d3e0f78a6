-- referrals_status indexed every referral by its status, so every registration and every status
-- move (pending → eligible → rewarded) wrote an entry into it, for two questions about rare rows:
-- the review queue (status 'held') and the referrals paid although the scorer did not approve
-- them. Partial indexes answer both and are written only for those rows.
DROP INDEX referrals_status;
CREATE INDEX referrals_held ON referrals (referral_id) WHERE status = 'held';
CREATE INDEX assessments_not_approved ON assessments (assessed_at, referral_id) WHERE decision <> 'APPROVE';
