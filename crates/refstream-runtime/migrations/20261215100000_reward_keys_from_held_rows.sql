-- A reward's referral and qualifying deposit: two foreign keys whose check could never fail,
-- by the rule of migrations 20261211110000 and 20261212100000. Rewards are inserted in one
-- place, settlement (`ledger::grant`), and only for a referral the same transaction's claim
-- locked `FOR UPDATE` and a deposit of its referee the same transaction read
-- (`store::deposits_of`). Neither parent can go away or change its key afterwards: referrals
-- and deposits refuse DELETE and TRUNCATE (migration 20261213100000), and, from here, an
-- UPDATE of their key (a statement trigger on the key column: nothing runs for an update that
-- does not name it, nor on insert).
--
-- Each check was a row-locking lookup of the parent per reward (the deposit's row lock also
-- wrote WAL and dirtied its page): in `make bench` the reward engine's Postgres time over a
-- burst of 20,000 rewards fell by 12% without them (2.07-2.27 to 1.75-1.96 CPU-s, three runs
-- each). `refstream audit` still checks that every reward has its referral and a recorded
-- deposit of its referee. The keys whose parent is another account's row or another worker's
-- write are kept: a referral's referrer, an assessment's referral.
ALTER TABLE rewards DROP CONSTRAINT IF EXISTS rewards_referral_id_fkey;
ALTER TABLE rewards DROP CONSTRAINT IF EXISTS rewards_qualifying_deposit_id_fkey;

CREATE FUNCTION refstream_key_never_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% keys never change: rewards and ledger entries name them', TG_TABLE_NAME;
END;
$$;

-- A statement trigger fires even when no row matches; an update that does not name the key
-- column never fires it.
CREATE TRIGGER referrals_key_never_changes BEFORE UPDATE OF referral_id ON referrals
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_key_never_changes();
CREATE TRIGGER deposits_key_never_changes BEFORE UPDATE OF deposit_id ON deposits
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_key_never_changes();
CREATE TRIGGER rewards_key_never_changes BEFORE UPDATE OF reward_id ON rewards
    FOR EACH STATEMENT EXECUTE FUNCTION refstream_key_never_changes();
