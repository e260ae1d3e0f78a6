-- A ledger entry's reward is always a row its own transaction just wrote: `ledger::grant` books
-- entries only for the rewards its insert's `RETURNING` gave back, `ledger::reverse` only for
-- those its guarded update's `RETURNING` gave back, and a campaign's funding names no reward.
-- So, by the rule of migrations 20261211110000 and 20261212100000, the foreign key's check
-- (a row-locking lookup of the reward, two per reward: about 10 µs of Postgres' time per
-- reward, measured on 20,000) could never fail, and is dropped.
--
-- What every dropped key rested on, that the parent is never deleted, is now the schema's to
-- enforce rather than the code's: users, referrals, deposits and rewards refuse DELETE and
-- TRUNCATE (a statement trigger: nothing is run per row, and nothing at all on insert or
-- update). `refstream audit` checks that every ledger entry of a reward names a recorded
-- reward, beside its checks that every reward has its referral and its qualifying deposit.
-- The keys whose parent another transaction wrote are kept: a reward's referral and deposit,
-- a referral's referrer, an assessment's referral.
ALTER TABLE ledger_entries DROP CONSTRAINT IF EXISTS ledger_entries_reward_id_fkey;

CREATE FUNCTION refstream_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted', TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER users_never_deleted BEFORE DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_never_deleted();
CREATE TRIGGER referrals_never_deleted BEFORE DELETE OR TRUNCATE ON referrals
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_never_deleted();
CREATE TRIGGER deposits_never_deleted BEFORE DELETE OR TRUNCATE ON deposits
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_never_deleted();
CREATE TRIGGER rewards_never_deleted BEFORE DELETE OR TRUNCATE ON rewards
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_never_deleted();
