-- The settlement gate asks the outbox about one topic (referral-attributed) on every sweep:
-- whether a row is left, the highest id, whether any is left up to an id. An index on (topic, id)
-- answers each with one lookup instead of reading the whole outbox, which holds thousands of
-- rows while a backlog drains.
CREATE INDEX outbox_topic_id ON outbox (topic, id);
