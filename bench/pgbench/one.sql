-- The reward transaction, once per event: what one qualifying deposit costs Postgres when
-- every reward is its own transaction (deposit, reward, two ledger entries, two balance
-- upserts, the referral's status and its transition row, the outbox row).
SELECT nextval('pb_one') AS i \gset
BEGIN;
INSERT INTO deposits (deposit_id, user_id, amount, currency, payment_fingerprint, occurred_at)
VALUES ('pb-d-' || :i, 'pb-e-' || :i, 50, 'USD', 'card-' || :i, now());
INSERT INTO rewards (reward_id, referral_id, reward_type, beneficiary_id, role, amount, currency, campaign_id, qualifying_deposit_id)
VALUES (md5('pbw' || :i)::uuid, md5('pb' || :i)::uuid, 'referrer_bonus', 'pb-r-' || (:i % 1000), 'REFERRER', 10, 'USD', 'pb', 'pb-d-' || :i)
ON CONFLICT (referral_id, reward_type) DO NOTHING;
INSERT INTO ledger_entries (transaction_id, account, amount, currency, reward_id, kind)
VALUES (md5('pbt' || :i)::uuid, 'user:pb-r-' || (:i % 1000), 10, 'USD', md5('pbw' || :i)::uuid, 'grant'),
       (md5('pbt' || :i)::uuid, 'campaign:pb', -10, 'USD', md5('pbw' || :i)::uuid, 'grant');
INSERT INTO balances (account, currency, balance) VALUES ('user:pb-r-' || (:i % 1000), 'USD', 10)
ON CONFLICT (account, currency) DO UPDATE SET balance = balances.balance + EXCLUDED.balance;
INSERT INTO balances (account, currency, balance) VALUES ('campaign:pb', 'USD', -10)
ON CONFLICT (account, currency) DO UPDATE SET balance = balances.balance + EXCLUDED.balance;
UPDATE referrals SET status = 'rewarded', updated_at = now() WHERE referral_id = md5('pb' || :i)::uuid AND status = 'eligible';
INSERT INTO referral_transitions (referral_id, from_status, to_status, cause) VALUES (md5('pb' || :i)::uuid, 'eligible', 'rewarded', 'pgbench');
INSERT INTO outbox (topic, key, payload, event_id) VALUES ('pb-reward-granted', 'pb-r-' || (:i % 1000), '\x00', md5('pbe' || :i)::uuid);
END;
