-- The API's bearer tokens (stored as SHA-256 of the token, never the token) and the record of
-- every admin action taken through it.

CREATE TABLE api_tokens (
    token_id    uuid PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('viewer', 'reviewer', 'admin', 'issuer', 'client')),
    -- A client token acts for this one user and sees nothing else.
    user_id     text,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    created_by  text NOT NULL,
    revoked_by  text,
    CHECK ((role = 'client') = (user_id IS NOT NULL))
);
CREATE UNIQUE INDEX api_tokens_staff_name ON api_tokens (name) WHERE role <> 'client' AND revoked_at IS NULL;

-- Append-only: who (which token) did what, to what, when.
CREATE TABLE api_admin_actions (
    id          bigserial PRIMARY KEY,
    token_id    uuid NOT NULL REFERENCES api_tokens (token_id),
    token_name  text NOT NULL,
    role        text NOT NULL,
    action      text NOT NULL,
    target      text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_admin_actions_at ON api_admin_actions (at);
CREATE TRIGGER api_admin_actions_append_only BEFORE UPDATE OR DELETE ON api_admin_actions
    FOR EACH ROW EXECUTE FUNCTION refstream_append_only();
CREATE TRIGGER api_admin_actions_no_truncate BEFORE TRUNCATE ON api_admin_actions
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_append_only();

-- A user's own rewards (the client API's "my rewards").
CREATE INDEX rewards_beneficiary ON rewards (beneficiary_id, granted_at);
