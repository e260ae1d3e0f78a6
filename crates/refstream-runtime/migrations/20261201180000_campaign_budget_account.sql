-- A budgeted campaign's ledger account holds its budget: `refstream campaigns apply` credits
-- `campaign:<id>` from `funding:<id>` with the budget (or the change of it) in the transaction
-- that records the version (entries of kind 'fund', no reward); every grant debits it, every
-- reversal credits it back. Its balance is what the campaign may still pay, never below zero
-- (the engine refuses payouts beyond the budget; a budget below what was paid is refused).
ALTER TABLE ledger_entries ALTER COLUMN reward_id DROP NOT NULL;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check CHECK (kind IN ('grant', 'reverse', 'fund'));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_reward_unless_funding CHECK ((kind = 'fund') = (reward_id IS NULL));
