//! The ledger's bookings, shared by everything that moves money (the reward engine's grants
//! and reversals, a campaign's budget funding): entries go in with one insert and balances move
//! by the same amounts in one upsert in the caller's transaction, so every balance equals the
//! sum of its entries. Callers book only what their own guarded statement really changed.

use std::collections::BTreeMap;

use refstream_core::campaign::RewardKind;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

/// The ledger account of a user's reward balance of `kind`: cash in `user:<id>`, bonus credit
/// in `user:<id>:bonus`, so a wallet can tell them apart.
pub fn user_account(user: &str, kind: RewardKind) -> String {
    match kind {
        RewardKind::Cash => format!("user:{user}"),
        RewardKind::Bonus => format!("user:{user}:bonus"),
    }
}

/// The ledger account a campaign's rewards are paid from.
pub fn campaign_account(campaign: &str) -> String {
    format!("campaign:{campaign}")
}

/// One ledger entry to book.
#[derive(Debug, Clone)]
pub struct Entry {
    pub transaction: Uuid,
    pub account: String,
    pub amount: Decimal,
    pub currency: String,
    /// The reward it belongs to (none for a campaign's funding).
    pub reward: Option<Uuid>,
    /// `grant`, `reverse` or `fund`.
    pub kind: &'static str,
}

/// Books `entries` and moves the balances in one statement: the entries' insert and the
/// balances' upsert (summed per account, in account order, so concurrent bookings lock balance
/// rows in the same order).
pub async fn book(conn: &mut PgConnection, entries: &[Entry]) -> sqlx::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Entry) -> String| entries.iter().map(f).collect::<Vec<_>>();
    let transactions: Vec<Uuid> = entries.iter().map(|e| e.transaction).collect();
    let amounts: Vec<Decimal> = entries.iter().map(|e| e.amount).collect();
    let rewards: Vec<Option<Uuid>> = entries.iter().map(|e| e.reward).collect();
    let mut sums: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for e in entries {
        *sums.entry((e.account.clone(), e.currency.clone())).or_default() += e.amount;
    }
    let (keys, deltas): (Vec<(String, String)>, Vec<Decimal>) = sums.into_iter().unzip();
    let (accounts, currencies): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
    // One statement: the entries are a data-modifying CTE, inserted whatever the upsert does.
    sqlx::query(
        "WITH entries AS (INSERT INTO ledger_entries (transaction_id, account, amount, currency, reward_id, kind) \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::numeric[], $4::text[], $5::uuid[], $6::text[])) \
         INSERT INTO balances (account, currency, balance) \
         SELECT * FROM unnest($7::text[], $8::text[], $9::numeric[]) \
         ON CONFLICT (account, currency) DO UPDATE SET balance = balances.balance + EXCLUDED.balance, updated_at = now()",
    )
    .bind(&transactions)
    .bind(col(|e| e.account.clone()))
    .bind(&amounts)
    .bind(col(|e| e.currency.clone()))
    .bind(&rewards)
    .bind(col(|e| e.kind.to_owned()))
    .bind(&accounts)
    .bind(&currencies)
    .bind(&deltas)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The ledger account a campaign's budget is funded from.
pub fn funding_account(campaign: &str) -> String {
    format!("funding:{campaign}")
}
