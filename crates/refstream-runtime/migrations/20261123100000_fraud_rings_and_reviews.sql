-- Fraud rings, re-scoring and the manual review queue.

-- The hard identifiers the fraud scorer has seen per account: the edges of the ring graph.
-- Two accounts with the same (kind, value) are linked; connected accounts form a component.
-- device: the device id as the platform sends it; email: the keyed hash of the normalized
-- email (as in users.email_hash); payment: the payment fingerprint of a DepositCompleted.
-- Written by the fraud scorer only (from the users row of each referrer and referee it scores,
-- and from every deposit it consumes).
CREATE TABLE identity_links (
    kind          text NOT NULL CHECK (kind IN ('device', 'email', 'payment')),
    value         text NOT NULL,
    user_id       text NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value, user_id)
);
CREATE INDEX identity_links_user ON identity_links (user_id);

-- The latest assessment of a referral is in `assessments`; a re-score on new evidence (a ring
-- that formed, a shared payment instrument learned from a deposit) raises its revision. Every
-- revision, the first included, is kept here, append-only.
ALTER TABLE assessments ADD COLUMN revision int NOT NULL DEFAULT 1;
ALTER TABLE assessments ADD COLUMN cause text NOT NULL DEFAULT 'referral attributed';
CREATE INDEX assessments_referee ON assessments (referee_id);
CREATE INDEX assessments_referrer ON assessments (referrer_id);

CREATE TABLE assessment_history (
    referral_id  uuid NOT NULL REFERENCES referrals (referral_id),
    revision     int NOT NULL,
    score        int NOT NULL CHECK (score BETWEEN 0 AND 100),
    decision     text NOT NULL CHECK (decision IN ('APPROVE', 'REVIEW', 'REJECT')),
    reasons      text[] NOT NULL,
    signals      jsonb NOT NULL,
    rule_version text NOT NULL,
    cause        text NOT NULL,
    event_id     uuid NOT NULL,
    assessed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (referral_id, revision)
);
CREATE TRIGGER assessment_history_append_only BEFORE UPDATE OR DELETE ON assessment_history
    FOR EACH ROW EXECUTE FUNCTION refstream_append_only();

-- Reviewers' decisions on held referrals, append-only: who, when, why. One decision per hold
-- (hold_id is the referral_transitions row that put the referral on hold), so a second
-- decision cannot race the first one to the reward engine.
CREATE TABLE review_decisions (
    decision_id uuid PRIMARY KEY,
    referral_id uuid NOT NULL REFERENCES referrals (referral_id),
    hold_id     bigint NOT NULL REFERENCES referral_transitions (id),
    decision    text NOT NULL CHECK (decision IN ('APPROVE', 'REJECT')),
    reviewer    text NOT NULL CHECK (length(btrim(reviewer)) > 0),
    reason      text NOT NULL CHECK (length(btrim(reason)) > 0),
    event_id    uuid NOT NULL UNIQUE,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (referral_id, hold_id)
);
CREATE TRIGGER review_decisions_append_only BEFORE UPDATE OR DELETE ON review_decisions
    FOR EACH ROW EXECUTE FUNCTION refstream_append_only();
CREATE TRIGGER review_decisions_no_truncate BEFORE TRUNCATE ON review_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_append_only();

-- The review queue reads held referrals by status.
CREATE INDEX referrals_status ON referrals (status);
