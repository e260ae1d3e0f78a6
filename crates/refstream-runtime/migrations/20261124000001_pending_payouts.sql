-- Rewards wait `campaign.settle_delay_secs` after their qualifying deposit was recorded, so
-- that a payment instrument the referrer also used, arriving on another partition, is seen
-- before anything is paid. A due row is settled by the reward engine's sweep.
CREATE TABLE pending_payouts (
    referral_id uuid PRIMARY KEY REFERENCES referrals (referral_id),
    due_at      timestamptz NOT NULL
);
CREATE INDEX pending_payouts_due ON pending_payouts (due_at);
