//! `refstream summary`: what the fleet has done, read from Postgres: the same numbers an
//! auditor would check (the ledger must sum to zero per currency).

use rust_decimal::Decimal;
use sqlx::PgPool;

/// The headline numbers.
#[derive(Debug, Default)]
pub struct Summary {
    pub users: i64,
    pub referrals: i64,
    pub by_status: Vec<(String, i64)>,
    pub rewards_granted: i64,
    pub rewards_reversed: i64,
    pub credited: Vec<(String, Decimal)>,
    pub ledger_imbalance: Vec<(String, Decimal)>,
    pub dead_letters: i64,
    pub top_reasons: Vec<(String, i64)>,
}

pub async fn load(pool: &PgPool) -> sqlx::Result<Summary> {
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(pool);
    Ok(Summary {
        users: count("SELECT count(*) FROM users").await?,
        referrals: count("SELECT count(*) FROM referrals").await?,
        by_status: sqlx::query_as("SELECT status, count(*) FROM referrals GROUP BY status ORDER BY status").fetch_all(pool).await?,
        rewards_granted: count("SELECT count(*) FROM rewards").await?,
        rewards_reversed: count("SELECT count(*) FROM rewards WHERE reversed_at IS NOT NULL").await?,
        credited: sqlx::query_as(
            "SELECT currency::text, sum(amount) FROM ledger_entries WHERE account LIKE 'user:%' GROUP BY currency ORDER BY currency",
        )
        .fetch_all(pool)
        .await?,
        ledger_imbalance: sqlx::query_as(
            "SELECT currency::text, sum(amount) FROM ledger_entries GROUP BY currency HAVING sum(amount) <> 0",
        )
        .fetch_all(pool)
        .await?,
        dead_letters: count("SELECT count(*) FROM dead_letters").await?,
        top_reasons: sqlx::query_as(
            "SELECT reason, count(*) AS n FROM assessments, unnest(reasons) AS reason \
             WHERE decision <> 'APPROVE' GROUP BY reason ORDER BY n DESC, reason LIMIT 5",
        )
        .fetch_all(pool)
        .await?,
    })
}

pub async fn print(pool: &PgPool) -> anyhow::Result<()> {
    let s = load(pool).await?;
    println!("users registered      {}", s.users);
    println!("referrals attributed  {}", s.referrals);
    for (status, n) in &s.by_status {
        println!("  {status:<19} {n}");
    }
    println!("rewards granted       {}", s.rewards_granted);
    println!("rewards reversed      {}", s.rewards_reversed);
    for (currency, total) in &s.credited {
        println!("net credited          {} {currency}", total.round_dp(2));
    }
    println!("dead letters          {}", s.dead_letters);
    if !s.top_reasons.is_empty() {
        let reasons: Vec<String> = s.top_reasons.iter().map(|(r, n)| format!("{r} ({n})")).collect();
        println!("top hold/reject reasons {}", reasons.join(", "));
    }
    if s.ledger_imbalance.is_empty() {
        println!("ledger                balanced (sums to zero per currency)");
    } else {
        anyhow::bail!("LEDGER IMBALANCE: {:?}", s.ledger_imbalance);
    }
    Ok(())
}
