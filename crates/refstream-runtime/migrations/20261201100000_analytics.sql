-- The analytics worker (crates/analytics): facts read from the public topics only, one row per
-- natural key, and the views its funnel report reads. Nothing here is read or written by the
-- other workers, and the analytics worker reads nothing of theirs.
--
-- Every table is a set of facts whose rows depend only on the records of the topics: one row per
-- natural key, upserted so that it only ever moves to the record that wins by a total order — the
-- earliest (event time, event id) for most tables, the greatest assessment for scores, the latest
-- verdict for reviews. The result is the same whatever order the records were read in, so
-- replaying every topic from offset zero, onto these rows or onto empty tables, gives the same rows.

-- A click on a referral link (ReferralClicked), counted under its own campaign, UTC day and platform.
CREATE TABLE analytics_clicks (
    click_id    text PRIMARY KEY,
    campaign_id text NOT NULL,
    referrer_id text NOT NULL,
    platform    text NOT NULL,
    clicked_at  timestamptz NOT NULL,
    day         date NOT NULL,
    expired     boolean NOT NULL,
    event_id    uuid NOT NULL
);
CREATE INDEX analytics_clicks_place ON analytics_clicks (day, campaign_id, platform);

-- A signup (UserRegistered): the platform (normalized: ios, android, desktop, web, or the
-- lower-cased text the signup service sent) and the UTC day of registration.
CREATE TABLE analytics_signups (
    user_id       text PRIMARY KEY,
    platform      text NOT NULL,
    registered_at timestamptz NOT NULL,
    day           date NOT NULL,
    event_id      uuid NOT NULL
);
CREATE INDEX analytics_signups_day ON analytics_signups (day, platform);

-- A referral (ReferralAttributed): its campaign, the referee's registration (time and UTC day)
-- and the end of the window in which a deposit still qualifies (campaign.window_days in force
-- when the attribution was read: the referral is bound to the terms of its time).
CREATE TABLE analytics_referrals (
    referral_id   uuid PRIMARY KEY,
    referee_id    text NOT NULL,
    referrer_id   text NOT NULL,
    campaign_id   text NOT NULL,
    registered_at timestamptz NOT NULL,
    day           date NOT NULL,
    qualify_until timestamptz NOT NULL,
    attributed_at timestamptz NOT NULL,
    event_id      uuid NOT NULL
);
CREATE INDEX analytics_referrals_referee ON analytics_referrals (referee_id);
CREATE INDEX analytics_referrals_referrer ON analytics_referrals (referrer_id);
CREATE INDEX analytics_referrals_place ON analytics_referrals (day, campaign_id);

-- The fraud scorer's latest word on a referral (ReferralScored). Re-assessments only tighten, so
-- the latest is the greatest by (strictness, occurred_at, score, event_id): APPROVE 0, REVIEW 1,
-- REJECT 2. The upsert keeps the greatest whatever order the revisions arrive in.
CREATE TABLE analytics_scores (
    referral_id  uuid PRIMARY KEY,
    decision     text NOT NULL CHECK (decision IN ('APPROVE', 'REVIEW', 'REJECT')),
    strictness   smallint NOT NULL,
    score        smallint NOT NULL,
    reasons      text[] NOT NULL,
    rule_version text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    event_id     uuid NOT NULL
);

-- A reviewer's latest verdict on a referral (ReviewDecided), the greatest by (occurred_at, event_id).
CREATE TABLE analytics_reviews (
    referral_id uuid PRIMARY KEY,
    approve     boolean NOT NULL,
    reviewer    text NOT NULL,
    occurred_at timestamptz NOT NULL,
    event_id    uuid NOT NULL
);

-- A completed deposit (DepositCompleted). `qualifies`: in campaign.currency and at least
-- campaign.min_deposit (the window is checked against the referral's qualify_until).
CREATE TABLE analytics_deposits (
    deposit_id  text PRIMARY KEY,
    user_id     text NOT NULL,
    amount      numeric NOT NULL,
    currency    text NOT NULL,
    occurred_at timestamptz NOT NULL,
    qualifies   boolean NOT NULL,
    event_id    uuid NOT NULL
);
CREATE INDEX analytics_deposits_first ON analytics_deposits (user_id, occurred_at, deposit_id) WHERE qualifies;

-- A reward credited (RewardGranted), one per reward_id (itself one per referral and reward type).
CREATE TABLE analytics_rewards (
    reward_id             uuid PRIMARY KEY,
    referral_id           uuid NOT NULL,
    beneficiary_id        text NOT NULL,
    role                  text NOT NULL,
    reward_type           text NOT NULL,
    amount                numeric NOT NULL,
    currency              text NOT NULL,
    campaign_id           text NOT NULL,
    qualifying_deposit_id text NOT NULL,
    granted_at            timestamptz NOT NULL,
    granted_day           date NOT NULL,
    event_id              uuid NOT NULL
);
CREATE INDEX analytics_rewards_referral ON analytics_rewards (referral_id);

-- A reward taken back (RewardReversed), one per reward_id (a reward is reversed at most once).
CREATE TABLE analytics_reversals (
    reward_id    uuid PRIMARY KEY,
    referral_id  uuid NOT NULL,
    user_id      text NOT NULL,
    amount       numeric NOT NULL,
    currency     text NOT NULL,
    reason       text NOT NULL,
    reversed_at  timestamptz NOT NULL,
    reversed_day date NOT NULL,
    event_id     uuid NOT NULL
);

-- Where each referral counts: its campaign, the referee's registration day, and the referee's
-- signup platform ('unknown' while the signup has not been read).
CREATE VIEW analytics_referral_places AS
SELECT r.referral_id, r.referee_id, r.referrer_id, r.campaign_id, r.day,
       coalesce(s.platform, 'unknown') AS platform, r.registered_at, r.qualify_until
FROM analytics_referrals r
LEFT JOIN analytics_signups s ON s.user_id = r.referee_id;

-- Everything known about each referral: the scorer's latest decision, the reviewer's latest
-- verdict, the resulting verdict (a reviewer's verdict overrides the scorer), the first
-- qualifying deposit (earliest by time then id, in the referral's window) and whether any
-- reward was granted for it.
CREATE VIEW analytics_referral_facts AS
SELECT p.*,
       sc.decision AS score_decision,
       rv.approve AS review_approve,
       CASE WHEN rv.approve THEN 'approved'
            WHEN NOT rv.approve THEN 'rejected'
            WHEN sc.decision = 'APPROVE' THEN 'approved'
            WHEN sc.decision = 'REVIEW' THEN 'held'
            WHEN sc.decision = 'REJECT' THEN 'rejected'
       END AS verdict,
       fd.deposit_id AS first_deposit_id,
       fd.occurred_at AS first_deposit_at,
       EXISTS (SELECT 1 FROM analytics_rewards w WHERE w.referral_id = p.referral_id) AS rewarded
FROM analytics_referral_places p
LEFT JOIN analytics_scores sc ON sc.referral_id = p.referral_id
LEFT JOIN analytics_reviews rv ON rv.referral_id = p.referral_id
LEFT JOIN LATERAL (
    SELECT d.deposit_id, d.occurred_at FROM analytics_deposits d
    WHERE d.user_id = p.referee_id AND d.qualifies AND d.occurred_at <= p.qualify_until
    ORDER BY d.occurred_at, d.deposit_id LIMIT 1
) fd ON true;

-- Rewards, counted where their referral counts (or, for a referral not read yet, under the
-- reward's campaign and the day it was granted, platform 'unknown').
CREATE VIEW analytics_reward_facts AS
SELECT w.reward_id, w.referral_id, w.beneficiary_id, w.role, w.amount, w.currency,
       coalesce(p.campaign_id, w.campaign_id) AS campaign_id,
       coalesce(p.day, w.granted_day) AS day,
       coalesce(p.platform, 'unknown') AS platform,
       p.referrer_id
FROM analytics_rewards w
LEFT JOIN analytics_referral_places p ON p.referral_id = w.referral_id;

-- Reversals, counted where their referral counts (failing that, where their reward does).
CREATE VIEW analytics_reversal_facts AS
SELECT v.reward_id, v.referral_id, v.user_id, v.amount, v.currency, v.reason,
       coalesce(p.campaign_id, w.campaign_id, 'none') AS campaign_id,
       coalesce(p.day, w.granted_day, v.reversed_day) AS day,
       coalesce(p.platform, 'unknown') AS platform
FROM analytics_reversals v
LEFT JOIN analytics_referral_places p ON p.referral_id = v.referral_id
LEFT JOIN analytics_rewards w ON w.reward_id = v.reward_id;

-- The funnel per (campaign, UTC day, platform). Clicks count under the click's own campaign,
-- day and platform; a signup under its referral's campaign ('none' when nobody referred it), its
-- registration day and platform; everything about a referee (attributed, verdict, first
-- qualifying deposit, rewards, reversals) under its referral's campaign, the referee's
-- registration day and platform.
CREATE VIEW analytics_funnel AS
SELECT campaign_id, day, platform,
       sum(clicks)::bigint AS clicks,
       sum(signups)::bigint AS signups,
       sum(attributed)::bigint AS attributed,
       sum(approved)::bigint AS approved,
       sum(held)::bigint AS held,
       sum(rejected)::bigint AS rejected,
       sum(first_deposits)::bigint AS first_deposits,
       sum(rewards)::bigint AS rewards,
       sum(reversals)::bigint AS reversals,
       sum(rewarded)::bigint AS rewarded
FROM (
    SELECT c.campaign_id, c.day, c.platform,
           1 AS clicks, 0 AS signups, 0 AS attributed, 0 AS approved, 0 AS held, 0 AS rejected,
           0 AS first_deposits, 0 AS rewards, 0 AS reversals, 0 AS rewarded
    FROM analytics_clicks c
    UNION ALL
    SELECT coalesce(r.campaign_id, 'none'), s.day, s.platform, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0
    FROM analytics_signups s
    LEFT JOIN LATERAL (
        SELECT campaign_id FROM analytics_referrals x WHERE x.referee_id = s.user_id ORDER BY x.referral_id LIMIT 1
    ) r ON true
    UNION ALL
    SELECT f.campaign_id, f.day, f.platform, 0, 0, 1,
           (f.verdict = 'approved')::int, (f.verdict = 'held')::int, (f.verdict = 'rejected')::int,
           (f.first_deposit_at IS NOT NULL)::int, 0, 0, f.rewarded::int
    FROM analytics_referral_facts f
    UNION ALL
    SELECT w.campaign_id, w.day, w.platform, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0
    FROM analytics_reward_facts w
    UNION ALL
    SELECT v.campaign_id, v.day, v.platform, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0
    FROM analytics_reversal_facts v
) stages
GROUP BY campaign_id, day, platform;
