-- The input event (ReferralAttributed or DepositCompleted event id) whose processing produced an
-- assessment revision: "this flag is known since that event reached the broker".
ALTER TABLE assessments ADD COLUMN cause_event_id uuid;
ALTER TABLE assessment_history ADD COLUMN cause_event_id uuid;
CREATE INDEX assessment_history_event ON assessment_history (event_id);
CREATE INDEX users_device_time ON users (device_id, registered_at, user_id) WHERE device_id IS NOT NULL;
