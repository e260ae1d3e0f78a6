-- Campaigns as data: every change of a campaign (applied, paused, resumed) is a new version,
-- in force from `effective_from`; a referral is bound at attribution to the campaign and the
-- version in force at its referee's registration (version 0: the embedded default campaign of
-- the settings) and keeps them. Versions are never changed.

CREATE TABLE campaign_versions (
    campaign_id    text NOT NULL,
    version        int NOT NULL CHECK (version >= 1),
    definition     jsonb NOT NULL,
    active         boolean NOT NULL,
    effective_from timestamptz NOT NULL DEFAULT now(),
    change         text NOT NULL CHECK (change IN ('applied', 'paused', 'resumed')),
    changed_by     text NOT NULL,
    PRIMARY KEY (campaign_id, version)
);
CREATE TRIGGER campaign_versions_append_only BEFORE UPDATE OR DELETE ON campaign_versions
    FOR EACH ROW EXECUTE FUNCTION refstream_append_only();
CREATE TRIGGER campaign_versions_no_truncate BEFORE TRUNCATE ON campaign_versions
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_append_only();

ALTER TABLE referrals ADD COLUMN terms_version int NOT NULL DEFAULT 0;
ALTER TABLE referrals ADD COLUMN campaign_reason text;
ALTER TABLE rewards ADD COLUMN terms_version int NOT NULL DEFAULT 0;
