-- Settlement gated on the fraud scorer's progress, and clawback of fraud found after payment.

-- How far each worker has applied each partition it reads, written in the transaction of the
-- batch that got it there (so "progress covers offset N" means "the effects of every record
-- below N are committed"). Only ever moves forward.
CREATE TABLE consumer_progress (
    consumer    text NOT NULL,
    topic       text NOT NULL,
    partition   int NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- A settlement barrier: the position of the stream at the moment a group of payouts' holds
-- ended (`hold_ended_at`), and how far the pipeline in front of the fraud scorer has got with
-- it. Stages, in order: `attribution` (attribution must apply user-registered up to `upstream`),
-- `relay` (the relay must publish the referral-attributed outbox rows up to `outbox_through`),
-- `scorer` (the scorer must apply referral-attributed up to `scored` and deposit-completed up
-- to `upstream`), `open` (payouts behind it may settle).
CREATE TABLE settlement_barriers (
    barrier_id     bigserial PRIMARY KEY,
    hold_ended_at  timestamptz NOT NULL DEFAULT now(),
    stage          text NOT NULL CHECK (stage IN ('attribution', 'relay', 'scorer', 'open')),
    upstream       jsonb NOT NULL,
    outbox_through bigint,
    scored         jsonb,
    opened_at      timestamptz
);
CREATE INDEX settlement_barriers_waiting ON settlement_barriers (barrier_id) WHERE stage <> 'open';

ALTER TABLE pending_payouts ADD COLUMN barrier_id bigint REFERENCES settlement_barriers (barrier_id);
CREATE INDEX pending_payouts_barrier ON pending_payouts (barrier_id);

-- Which barrier let a reward settle, and when its hold ended; a clawback names the assessment
-- (the ReferralScored event id and revision) that caused it.
ALTER TABLE rewards ADD COLUMN barrier_id bigint;
ALTER TABLE rewards ADD COLUMN hold_ended_at timestamptz;
ALTER TABLE rewards ADD COLUMN reversal_assessment_event_id uuid;
ALTER TABLE rewards ADD COLUMN reversal_assessment_revision int;
CREATE INDEX rewards_referral ON rewards (referral_id);
