-- What a limited campaign has paid is read under its limits lock before every batch of its
-- payouts (the engine's `limits::usage`), by `refstream campaigns apply` when it funds a budget
-- and by `refstream audit`. Without an index on the campaign each of those read every reward of
-- every campaign: a campaign with a budget paid more slowly the more any campaign had paid
-- (16.7 ms a batch at 26,000 rewards, growing with the table). With it, a read takes the
-- campaign's own rewards, which its budget or cap bounds.
CREATE INDEX rewards_campaign ON rewards (campaign_id);
