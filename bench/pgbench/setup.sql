-- pgbench baseline for `make bench`: run against a database migrated with refstream's schema.
-- 1,000 referrers and 40,000 eligible referrals (pb-e-1 .. pb-e-40000) waiting for their reward.
INSERT INTO users (user_id, registered_at, platform)
SELECT 'pb-r-' || i, now() - interval '2 days', 'web' FROM generate_series(0, 999) AS i;
INSERT INTO users (user_id, registered_at, platform)
SELECT 'pb-e-' || i, now() - interval '1 day', 'web' FROM generate_series(1, 40100) AS i;
INSERT INTO referrals (referral_id, referrer_id, referee_id, code, campaign_id, attribution, referee_registered_at, status)
SELECT md5('pb' || i)::uuid, 'pb-r-' || (i % 1000), 'pb-e-' || i, 'PB', 'pb', 'CODE', now() - interval '1 day', 'eligible'
FROM generate_series(1, 40100) AS i;
CREATE SEQUENCE pb_one START 1;
CREATE SEQUENCE pb_batch START 201;
