-- refstream's foundation schema. Money is numeric(18,4); every fact has one writer.

CREATE TABLE users (
    user_id        text PRIMARY KEY,
    registered_at  timestamptz NOT NULL,
    platform       text NOT NULL,
    device_id      text,
    ip_hash        text,
    ip_prefix_hash text,
    email_hash     text,
    email_domain   text,
    country        text,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_device ON users (device_id, registered_at) WHERE device_id IS NOT NULL;
CREATE INDEX users_ip ON users (ip_hash, registered_at) WHERE ip_hash IS NOT NULL;
CREATE INDEX users_email ON users (email_hash, registered_at) WHERE email_hash IS NOT NULL;

CREATE TABLE referral_codes (
    code        text PRIMARY KEY,
    user_id     text NOT NULL UNIQUE REFERENCES users (user_id),
    campaign_id text NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz
);

-- Referral-link clicks: a click id resolves to the code of the link that was clicked, so a
-- user who clicked on one device and registered on another is still attributed.
CREATE TABLE referral_clicks (
    click_id   text PRIMARY KEY,
    code       text NOT NULL REFERENCES referral_codes (code),
    clicked_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE referrals (
    referral_id           uuid PRIMARY KEY,
    referrer_id           text NOT NULL REFERENCES users (user_id),
    referee_id            text NOT NULL UNIQUE REFERENCES users (user_id),
    code                  text NOT NULL,
    campaign_id           text NOT NULL,
    attribution           text NOT NULL CHECK (attribution IN ('CODE', 'CLICK')),
    referee_registered_at timestamptz NOT NULL,
    status                text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'held', 'eligible', 'rewarded', 'rejected', 'expired', 'reversed')),
    -- A reviewer approved it: signals seen later (a shared card) no longer hold it.
    cleared_by_review     boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (referrer_id <> referee_id)
);
CREATE INDEX referrals_referrer ON referrals (referrer_id);

-- Every status change, append-only: who moved a referral where, and why.
CREATE TABLE referral_transitions (
    id          bigserial PRIMARY KEY,
    referral_id uuid NOT NULL REFERENCES referrals (referral_id),
    from_status text NOT NULL,
    to_status   text NOT NULL,
    cause       text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX referral_transitions_referral ON referral_transitions (referral_id, id);

CREATE TABLE deposits (
    deposit_id          text PRIMARY KEY,
    user_id             text NOT NULL,
    amount              numeric(18, 4) NOT NULL CHECK (amount > 0),
    currency            char(3) NOT NULL,
    payment_fingerprint text,
    occurred_at         timestamptz NOT NULL,
    reversed_at         timestamptz,
    reversal_reason     text,
    recorded_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deposits_user ON deposits (user_id, occurred_at, deposit_id);

-- Reversals, recorded even when they arrive before their deposit.
CREATE TABLE deposit_reversals (
    deposit_id  text PRIMARY KEY,
    user_id     text NOT NULL,
    reason      text NOT NULL CHECK (reason IN ('REFUND', 'CHARGEBACK')),
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rewards (
    reward_id             uuid PRIMARY KEY,
    referral_id           uuid NOT NULL REFERENCES referrals (referral_id),
    reward_type           text NOT NULL,
    beneficiary_id        text NOT NULL,
    role                  text NOT NULL CHECK (role IN ('REFERRER', 'REFEREE')),
    amount                numeric(18, 4) NOT NULL CHECK (amount > 0),
    currency              char(3) NOT NULL,
    campaign_id           text NOT NULL,
    qualifying_deposit_id text NOT NULL REFERENCES deposits (deposit_id),
    granted_at            timestamptz NOT NULL DEFAULT now(),
    reversed_at           timestamptz,
    reversal_reason       text,
    UNIQUE (referral_id, reward_type)
);
CREATE INDEX rewards_deposit ON rewards (qualifying_deposit_id);

-- Double-entry ledger: every transaction's entries sum to zero; rows are never changed.
CREATE TABLE ledger_entries (
    entry_id       bigserial PRIMARY KEY,
    transaction_id uuid NOT NULL,
    account        text NOT NULL,
    amount         numeric(18, 4) NOT NULL CHECK (amount <> 0),
    currency       char(3) NOT NULL,
    reward_id      uuid NOT NULL REFERENCES rewards (reward_id),
    kind           text NOT NULL CHECK (kind IN ('grant', 'reverse')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (transaction_id, account)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account, currency);

CREATE FUNCTION refstream_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION refstream_append_only();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_append_only();
CREATE TRIGGER referral_transitions_append_only BEFORE UPDATE OR DELETE ON referral_transitions
    FOR EACH ROW EXECUTE FUNCTION refstream_append_only();

CREATE TABLE balances (
    account    text NOT NULL,
    currency   char(3) NOT NULL,
    balance    numeric(18, 4) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, currency)
);

-- Transactional outbox: rows committed with the effects they announce, drained by the relay.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    shard      int NOT NULL DEFAULT 0,
    topic      text NOT NULL,
    key        text NOT NULL,
    payload    bytea NOT NULL,
    event_id   uuid NOT NULL,
    headers    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_shard_id ON outbox (shard, id);

CREATE FUNCTION refstream_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('refstream_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_outbox_notify();

-- Event-id dedupe per consuming worker: a redelivered event finds its row and is skipped.
CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    consumer     text NOT NULL,
    topic        text NOT NULL,
    partition    int NOT NULL,
    "offset"     bigint NOT NULL,
    key          bytea,
    payload      bytea NOT NULL,
    reason       text NOT NULL,
    reason_label text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz,
    UNIQUE (consumer, topic, partition, "offset")
);

-- The fraud scorer's decisions.
CREATE TABLE assessments (
    referral_id  uuid PRIMARY KEY REFERENCES referrals (referral_id),
    referrer_id  text NOT NULL,
    referee_id   text NOT NULL,
    score        int NOT NULL CHECK (score BETWEEN 0 AND 100),
    decision     text NOT NULL CHECK (decision IN ('APPROVE', 'REVIEW', 'REJECT')),
    reasons      text[] NOT NULL,
    signals      jsonb NOT NULL DEFAULT '[]'::jsonb,
    rule_version text NOT NULL,
    assessed_at  timestamptz NOT NULL DEFAULT now()
);
