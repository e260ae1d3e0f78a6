-- The KYC service's verdicts (topic user-verified): per user the latest by event time
-- (REJECTED wins a tie), whatever order they arrive in.
CREATE TABLE user_verifications (
    user_id     text PRIMARY KEY,
    verified    boolean NOT NULL,
    reason      text,
    occurred_at timestamptz NOT NULL,
    event_id    uuid NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
