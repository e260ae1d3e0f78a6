-- Reward kinds, multi-level and milestone rewards (campaign `[[levels]]`, `[[milestones]]`).
-- A reward is CASH (withdrawable, account user:<id>) or BONUS (promotional credit, account
-- user:<id>:bonus) with the wagering requirement recorded on the grant. `level` 1 is the
-- referral's own referrer or referee, 2 the referrer's referrer, and so on. A milestone reward
-- rides on the referral that reached it (its referral_id and qualifying deposit) and is paid
-- once per referrer and campaign, ever: the second unique key below decides.
ALTER TABLE rewards ADD COLUMN kind text NOT NULL DEFAULT 'CASH' CHECK (kind IN ('CASH', 'BONUS'));
ALTER TABLE rewards ADD COLUMN wagering_requirement numeric(18, 4) CHECK (wagering_requirement >= 0);
ALTER TABLE rewards ADD COLUMN level smallint NOT NULL DEFAULT 1 CHECK (level >= 1);
ALTER TABLE rewards ADD COLUMN milestone int CHECK (milestone >= 1);
ALTER TABLE rewards ADD CONSTRAINT rewards_bonus_only_wagers CHECK (kind = 'BONUS' OR wagering_requirement IS NULL);
CREATE UNIQUE INDEX rewards_milestone_once ON rewards (campaign_id, beneficiary_id, milestone) WHERE milestone IS NOT NULL;
