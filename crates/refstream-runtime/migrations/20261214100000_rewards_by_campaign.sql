-- What a limited campaign has paid is read under its limits lock before every batch of its
-- payouts (the engine's `limits::usage`), by `refstream campaigns apply` when it funds a budget
-- and by `refstream audit`; the sweep that releases capped referrals counts a campaign's
-- reversed rewards every second to see whether room was freed. Without an index on the
-- campaign each of those read every reward of every campaign: a campaign with a budget paid
-- more slowly the more any campaign had paid (16.7 ms a batch at 26,000 rewards, growing with
-- the table). Two partial indexes: a campaign's unreversed rewards (what it paid, bounded by its
-- budget or cap) and its reversed ones (few). A reward is inserted into the first only; its
-- reversal, rare, moves it to the second.
CREATE INDEX rewards_campaign ON rewards (campaign_id) WHERE reversed_at IS NULL;
CREATE INDEX rewards_campaign_reversed ON rewards (campaign_id) WHERE reversed_at IS NOT NULL;
