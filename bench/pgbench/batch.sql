-- The same reward transaction for 100 events at once (set-based, as the fleet's batches are).
-- Each statement reads its 100 ids from generate_series, whose row count the planner knows, so
-- the referrals are found by their key (a temporary table has no statistics: the planner
-- hashed every eligible referral for each batch, 10 ms of a 26 ms transaction).
SELECT nextval('pb_batch') * 100 AS f \gset
BEGIN;
INSERT INTO deposits (deposit_id, user_id, amount, currency, payment_fingerprint, occurred_at)
SELECT 'pb-d-' || i, 'pb-e-' || i, 50, 'USD', 'card-' || i, now() FROM generate_series(:f, :f + 99) AS i;
INSERT INTO rewards (reward_id, referral_id, reward_type, beneficiary_id, role, amount, currency, campaign_id, qualifying_deposit_id)
SELECT md5('pbw' || i)::uuid, md5('pb' || i)::uuid, 'referrer_bonus', 'pb-r-' || (i % 1000), 'REFERRER', 10, 'USD', 'pb', 'pb-d-' || i
FROM generate_series(:f, :f + 99) AS i
ON CONFLICT (referral_id, reward_type) DO NOTHING;
INSERT INTO ledger_entries (transaction_id, account, amount, currency, reward_id, kind)
SELECT md5('pbt' || i)::uuid, a.account, a.amount, 'USD', md5('pbw' || i)::uuid, 'grant' FROM generate_series(:f, :f + 99) AS i,
LATERAL (VALUES ('user:pb-r-' || (i % 1000), 10), ('campaign:pb', -10)) AS a(account, amount);
INSERT INTO balances (account, currency, balance)
SELECT account, 'USD', sum(amount) FROM (SELECT 'user:pb-r-' || (i % 1000) AS account, 10 AS amount FROM generate_series(:f, :f + 99) AS i
  UNION ALL SELECT 'campaign:pb', -10 FROM generate_series(:f, :f + 99) AS i) x GROUP BY account ORDER BY account
ON CONFLICT (account, currency) DO UPDATE SET balance = balances.balance + EXCLUDED.balance;
WITH moved AS (UPDATE referrals r SET status = 'rewarded', updated_at = now() FROM generate_series(:f, :f + 99) AS g(i)
               WHERE r.referral_id = md5('pb' || g.i)::uuid AND r.status = 'eligible' RETURNING r.referral_id)
INSERT INTO referral_transitions (referral_id, from_status, to_status, cause) SELECT referral_id, 'eligible', 'rewarded', 'pgbench' FROM moved;
INSERT INTO outbox (topic, key, payload, event_id)
SELECT 'pb-reward-granted', 'pb-r-' || (i % 1000), '\x00', md5('pbe' || i)::uuid FROM generate_series(:f, :f + 99) AS i ORDER BY i;
END;
