-- Referral links (issue 8): what the links service records about a click, the deferred-
-- attribution claims it answered, and how each referral was attributed.

-- A click: which link (code, its owner and campaign when clicked), when, from what platform,
-- and keyed hashes of the client's address, network and User-Agent (never the raw values), the
-- first-party cookie id and the device id an app reported. `expired`: the code had expired;
-- the click is kept for analytics and never attributes.
ALTER TABLE referral_clicks
    ADD COLUMN referrer_id    text,
    ADD COLUMN campaign_id    text,
    ADD COLUMN platform       text CHECK (platform IN ('ios', 'android', 'desktop', 'web')),
    ADD COLUMN source         text NOT NULL DEFAULT 'link' CHECK (source IN ('link', 'sdk')),
    ADD COLUMN ip_hash        text,
    ADD COLUMN ip_prefix_hash text,
    ADD COLUMN ua_hash        text,
    ADD COLUMN cookie_id      text,
    ADD COLUMN device_id      text,
    ADD COLUMN expired        boolean NOT NULL DEFAULT false;
CREATE INDEX referral_clicks_cookie ON referral_clicks (cookie_id, clicked_at) WHERE cookie_id IS NOT NULL;
CREATE INDEX referral_clicks_device ON referral_clicks (device_id, clicked_at) WHERE device_id IS NOT NULL;
CREATE INDEX referral_clicks_ip ON referral_clicks (ip_hash, clicked_at) WHERE ip_hash IS NOT NULL;
CREATE INDEX referral_clicks_code_network ON referral_clicks (code, ip_prefix_hash, clicked_at);

-- Every answer POST /v1/attribution/claim gave: a probabilistic answer is never silent.
CREATE TABLE click_claims (
    claim_id    uuid PRIMARY KEY,
    click_id    text NOT NULL REFERENCES referral_clicks (click_id),
    method      text NOT NULL CHECK (method IN ('exact', 'probabilistic')),
    confidence  numeric(3, 2) NOT NULL CHECK (confidence > 0 AND confidence <= 1),
    candidates  int NOT NULL,
    platform    text,
    ip_hash     text,
    ua_hash     text,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX click_claims_click ON click_claims (click_id);

-- What a registration carried, so one whose click is not recorded yet is decided when it lands,
-- and how attribution decided it: 'attributed', 'awaiting_click', or why nobody referred it
-- (organic, unknown_code, own_code, expired_code, click_outside_window, already_referred).
ALTER TABLE users
    ADD COLUMN typed_code  text,
    ADD COLUMN click_id    text,
    ADD COLUMN attribution text;
CREATE INDEX users_awaiting_click ON users (click_id) WHERE attribution = 'awaiting_click';
CREATE INDEX users_awaiting_since ON users (registered_at) WHERE attribution = 'awaiting_click';

-- How a referral was attributed: the click behind it (if any), whether the app got that click
-- by an exact or a probabilistic match and how sure, which touch won and why, and the clicks on
-- the code from the referee's network in the hour before its click (the fraud scorer weighs it).
ALTER TABLE referrals
    ADD COLUMN click_id         text,
    ADD COLUMN click_match      text CHECK (click_match IN ('exact', 'probabilistic')),
    ADD COLUMN match_confidence numeric(3, 2),
    ADD COLUMN touch            text,
    ADD COLUMN network_clicks   int;
