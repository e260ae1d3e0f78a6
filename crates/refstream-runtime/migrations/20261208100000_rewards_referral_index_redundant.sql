-- rewards_referral (referral_id) duplicates the leading column of the reward key's unique index
-- (referral_id, reward_type), which answers every lookup by referral just as well: every
-- settlement paid for one more index insertion per reward and gained nothing.
DROP INDEX IF EXISTS rewards_referral;
