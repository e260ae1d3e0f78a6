-- Referral expiry: the barrier the sweep waits behind (where deposit-completed ended when it was
-- captured), and an index for the sweep's look for referrals that may have expired.
CREATE TABLE expiry_barrier (
    id          int PRIMARY KEY CHECK (id = 1),
    captured_at timestamptz NOT NULL,
    deposits    jsonb NOT NULL,
    -- The sweep's cursor through the referrals it may expire, (registered at, referral id).
    after_registered_at timestamptz NOT NULL,
    after_referral_id   uuid NOT NULL
);
CREATE INDEX referrals_open_by_registration ON referrals (referee_registered_at)
    WHERE status IN ('pending', 'held', 'eligible');
