//! `refstream fx set|list`: the exchange rates deposits in other currencies qualify by. A rate
//! is in force from its `--at`, and never before `campaign.changes_in_force_after_ms` after it
//! is written: a deposit is judged by rates visible before it, so a decision never changes
//! afterwards.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use refstream_core::Currency;
use rust_decimal::Decimal;
use sqlx::PgPool;

#[derive(Subcommand)]
pub enum Action {
    /// Record a rate: 1 BASE = RATE QUOTE, e.g. `refstream fx set EUR USD 1.0850`.
    Set {
        base: String,
        quote: String,
        rate: String,
        /// In force from (RFC 3339; default and at the earliest: now + campaign.changes_in_force_after_ms).
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        #[arg(long = "by", default_value = "cli")]
        by: String,
    },
    /// Every recorded rate, newest first.
    List,
}

pub async fn run(action: Action, settings: &refstream_runtime::Settings, pool: &PgPool) -> anyhow::Result<()> {
    let delay = settings.campaign.changes_in_force_after_ms.max(0);
    match action {
        Action::Set { base, quote, rate, at, by } => {
            let base = Currency::parse(&base).map_err(|e| anyhow::anyhow!("BASE: {}", e.reason))?;
            let quote = Currency::parse(&quote).map_err(|e| anyhow::anyhow!("QUOTE: {}", e.reason))?;
            anyhow::ensure!(base != quote, "BASE and QUOTE are the same currency");
            let rate: Decimal = rate.trim().parse().map_err(|e| anyhow::anyhow!("RATE: `{rate}` is not a decimal: {e}"))?;
            anyhow::ensure!(rate > Decimal::ZERO, "RATE must be positive");
            // In force from the requested time, but never before `campaign.changes_in_force_after_ms`
            // after the row is written (taken in the INSERT itself): no deposit is judged by a
            // rate that was not yet visible.
            let at: DateTime<Utc> = sqlx::query_scalar(
                "INSERT INTO fx_rates (base, quote, rate, effective_at, recorded_by) \
                 VALUES ($1, $2, $3, GREATEST(COALESCE($4, '1970-01-01T00:00:00Z'), clock_timestamp() + $6 * interval '1 millisecond'), $5) \
                 RETURNING effective_at",
            )
            .bind(base.as_str())
            .bind(quote.as_str())
            .bind(rate)
            .bind(at)
            .bind(&by)
            .bind(delay)
            .fetch_one(pool)
            .await?;
            println!("1 {base} = {rate} {quote} from {}", at.format("%Y-%m-%d %H:%M:%S UTC"));
        }
        Action::List => {
            let rows: Vec<(String, String, Decimal, DateTime<Utc>, String)> = sqlx::query_as(
                "SELECT base::text, quote::text, rate, effective_at, recorded_by FROM fx_rates ORDER BY effective_at DESC, base, quote",
            )
            .fetch_all(pool)
            .await?;
            for (b, q, r, at, by) in rows {
                println!("1 {b} = {r} {q}  from {}  by {by}", at.format("%Y-%m-%d %H:%M:%S UTC"));
            }
        }
    }
    Ok(())
}
