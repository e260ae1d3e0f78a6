-- The scorer's latest word on a referral (`assessments`) costs less to write: a referral's
-- signals and evidence are written once, to assessment_history (every revision, the latest
-- included), and the row is indexed by referral only.
--
-- assessments keeps the latest revision's decision, score, reasons and cause. Its signals column
-- is '[]' for every revision written from this release; it holds the signals only of referrals
-- assessed before assessment_history existed, which is what explain falls back to for them.
COMMENT ON COLUMN assessments.signals IS
    'Only for referrals assessed before assessment_history existed; since 20261209100000 the signals of every revision are in assessment_history.';

-- The scorer finds a referee's or a referrer's assessments through referrals (its unique index
-- on referee_id, its index on (referrer_id, referee_registered_at)) and the primary key; these
-- two indexes cost two index insertions for every first assessment and answered nothing else.
DROP INDEX assessments_referee;
DROP INDEX assessments_referrer;
