-- The scorer counts a referrer's referrals in a window around each registration (referrer
-- velocity, on both sides): an index on the referrer and the referee's registration time
-- answers each count from the index. It covers every lookup by referrer_id alone too.
CREATE INDEX referrals_referrer_time ON referrals (referrer_id, referee_registered_at);
DROP INDEX referrals_referrer;

-- users_device_time (device_id, registered_at, user_id) answers every lookup users_device did;
-- one index less to maintain on each registration.
DROP INDEX users_device;
