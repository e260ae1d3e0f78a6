-- Deposits for users refstream has not seen register yet. The deposit itself is recorded in
-- `deposits` (so it can still qualify when the registration arrives late); this row keeps the
-- raw record so that, if no registration arrives within the hold, it becomes a dead letter.
CREATE TABLE unmatched_deposits (
    deposit_id  text PRIMARY KEY,
    user_id     text NOT NULL,
    topic       text NOT NULL,
    partition   int NOT NULL,
    "offset"    bigint NOT NULL,
    key         bytea,
    payload     bytea NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX unmatched_deposits_seen ON unmatched_deposits (first_seen);
