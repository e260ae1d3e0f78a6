//! What the fleet has done, read from Postgres (`refstream summary` and the API): the same
//! numbers an auditor would check — the ledger must sum to zero per currency.

use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

/// A count by a label.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Count {
    pub label: String,
    pub count: i64,
}

/// An amount in a currency.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Amount {
    pub currency: String,
    #[schema(value_type = String)]
    pub amount: Decimal,
}

/// The headline numbers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Summary {
    pub users: i64,
    pub referrals: i64,
    pub by_status: Vec<Count>,
    pub rewards_granted: i64,
    pub rewards_reversed: i64,
    /// Net credited to users per currency (grants minus reversals).
    pub credited: Vec<Amount>,
    /// Currencies whose ledger does not sum to zero: empty when the books balance.
    pub ledger_imbalance: Vec<Amount>,
    pub dead_letters: i64,
    /// The most frequent reasons of holds and rejections.
    pub top_reasons: Vec<Count>,
}

pub async fn load(pool: &PgPool) -> sqlx::Result<Summary> {
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(pool);
    Ok(Summary {
        users: count("SELECT count(*) FROM users").await?,
        referrals: count("SELECT count(*) FROM referrals").await?,
        by_status: sqlx::query_as("SELECT status AS label, count(*) AS count FROM referrals GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await?,
        rewards_granted: count("SELECT count(*) FROM rewards").await?,
        rewards_reversed: count("SELECT count(*) FROM rewards WHERE reversed_at IS NOT NULL").await?,
        credited: sqlx::query_as(
            "SELECT currency::text AS currency, sum(amount) AS amount FROM ledger_entries WHERE account LIKE 'user:%' \
             GROUP BY currency ORDER BY currency",
        )
        .fetch_all(pool)
        .await?,
        ledger_imbalance: sqlx::query_as(
            "SELECT currency::text AS currency, sum(amount) AS amount FROM ledger_entries GROUP BY currency HAVING sum(amount) <> 0",
        )
        .fetch_all(pool)
        .await?,
        dead_letters: count("SELECT count(*) FROM dead_letters").await?,
        top_reasons: sqlx::query_as(
            "SELECT reason AS label, count(*) AS count FROM assessments, unnest(reasons) AS reason \
             WHERE decision <> 'APPROVE' GROUP BY reason ORDER BY count DESC, reason LIMIT 5",
        )
        .fetch_all(pool)
        .await?,
    })
}
