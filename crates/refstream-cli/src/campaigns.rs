//! `refstream campaigns apply|list|show|pause|resume`: campaigns as data. A campaign is a TOML
//! file ([`Definition`]), validated with errors naming the field; every change — a new
//! definition, a pause, a resume — is a new version in `campaign_versions`, in force from the
//! moment it is recorded. A referral is bound at attribution to the version in force at its
//! referee's registration and keeps it; nothing here touches a referral already bound. A
//! campaign's budget is funded into its ledger account with the version that sets it.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use refstream_core::campaigns::Definition;
use refstream_core::Currency;
use refstream_runtime::ledger::{book, campaign_account, funding_account, Entry};
use refstream_runtime::Settings;
use rust_decimal::Decimal;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

#[derive(Subcommand)]
pub enum Action {
    /// Validate a campaign file and record it as the campaign's next version (a new campaign
    /// starts active; an unchanged file records nothing).
    Apply {
        file: PathBuf,
        /// Who applies it (recorded with the version).
        #[arg(long = "by", default_value = "cli")]
        by: String,
    },
    /// Every campaign: its current version, state, priority and referrals bound.
    List,
    /// One campaign: every version, and the current definition as TOML.
    Show { id: String },
    /// Stop binding new referrals to the campaign (referrals already bound keep their terms).
    Pause {
        id: String,
        #[arg(long = "by", default_value = "cli")]
        by: String,
    },
    /// Bind new referrals to the campaign again.
    Resume {
        id: String,
        #[arg(long = "by", default_value = "cli")]
        by: String,
    },
}

pub async fn run(action: Action, settings: &Settings, pool: &PgPool) -> anyhow::Result<()> {
    let delay = settings.campaign.changes_in_force_after_ms.max(0);
    match action {
        Action::Apply { file, by } => {
            let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let definition = parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if definition.id == settings.campaign.id {
                anyhow::bail!(
                    "{}: `id`: `{}` is the default campaign, configured by the campaign.* settings; choose another id",
                    file.display(),
                    definition.id
                );
            }
            let mut tx = pool.begin().await?;
            let latest = lock_latest(&mut tx, &definition.id).await?;
            let message = match latest {
                Some(l) if l.definition.0 == definition => format!("campaign {} unchanged (version {})", definition.id, l.version),
                Some(l) => {
                    record(&mut tx, &definition, l.version + 1, l.active, "applied", &by, delay).await?;
                    fund(&mut tx, &definition).await?;
                    format!("campaign {} version {} recorded ({}), in force in {delay} ms", definition.id, l.version + 1, state(l.active))
                }
                None => {
                    record(&mut tx, &definition, 1, true, "applied", &by, delay).await?;
                    fund(&mut tx, &definition).await?;
                    format!("campaign {} version 1 recorded (active), in force in {delay} ms", definition.id)
                }
            };
            tx.commit().await?;
            println!("{message}");
        }
        Action::Pause { id, by } => set_active(pool, &id, false, &by, delay).await?,
        Action::Resume { id, by } => set_active(pool, &id, true, &by, delay).await?,
        Action::List => {
            let rows: Vec<Listed> = sqlx::query_as(
                "SELECT l.campaign_id, l.version, l.active, l.effective_from, l.definition, COALESCE(n.bound, 0) \
                 FROM (SELECT DISTINCT ON (campaign_id) campaign_id, version, active, effective_from, definition \
                       FROM campaign_versions ORDER BY campaign_id, version DESC) l \
                 LEFT JOIN (SELECT campaign_id, count(*) AS bound FROM referrals GROUP BY campaign_id) n USING (campaign_id) \
                 ORDER BY l.campaign_id",
            )
            .fetch_all(pool)
            .await?;
            println!("{:<24} {:>7}  {:<7} {:>8}  {:>9}  {:<20} name", "campaign", "version", "state", "priority", "referrals", "since");
            let default_bound: i64 = sqlx::query_scalar("SELECT count(*) FROM referrals WHERE terms_version = 0").fetch_one(pool).await?;
            println!(
                "{:<24} {:>7}  {:<7} {:>8}  {default_bound:>9}  {:<20} the default (campaign.* settings)",
                settings.campaign.id, 0, "active", "-", "-"
            );
            for (id, version, active, since, d, bound) in rows {
                println!(
                    "{id:<24} {version:>7}  {:<7} {:>8}  {bound:>9}  {:<20} {}",
                    state(active),
                    d.0.priority,
                    since.format("%Y-%m-%d %H:%M:%S"),
                    d.0.name
                );
            }
        }
        Action::Show { id } => {
            let versions: Vec<Shown> = sqlx::query_as(
                "SELECT version, active, effective_from, change, changed_by, definition FROM campaign_versions \
                 WHERE campaign_id = $1 ORDER BY version",
            )
            .bind(&id)
            .fetch_all(pool)
            .await?;
            let Some(current) = versions.last() else { anyhow::bail!("no campaign {id} (`refstream campaigns list` shows them)") };
            println!("campaign {id}: version {} ({})", current.0, state(current.1));
            // The referrals bound to each version, in one pass over the campaign's referrals.
            let bound_to: std::collections::HashMap<i32, i64> =
                sqlx::query_as("SELECT terms_version, count(*) FROM referrals WHERE campaign_id = $1 GROUP BY terms_version")
                    .bind(&id)
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .collect();
            for (version, active, at, change, by, _) in &versions {
                let bound = bound_to.get(version).copied().unwrap_or(0);
                println!(
                    "  v{version:<4} {}  {change:<8} by {by:<16} {:<7} {bound} referral(s) bound",
                    at.format("%Y-%m-%d %H:%M:%S UTC"),
                    state(*active)
                );
            }
            println!();
            print!("{}", toml::to_string(&current.5 .0)?);
        }
    }
    Ok(())
}

/// A campaign as listed: id, current version, active, since, definition, referrals bound.
type Listed = (String, i32, bool, DateTime<Utc>, Json<Definition>, i64);
/// A version as shown: version, active, since, change, by whom, definition.
type Shown = (i32, bool, DateTime<Utc>, String, String, Json<Definition>);

fn state(active: bool) -> &'static str {
    if active {
        "active"
    } else {
        "paused"
    }
}

/// Parses and validates a campaign file; the error names the field.
pub fn parse(text: &str) -> anyhow::Result<Definition> {
    let definition: Definition = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
    definition.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(definition)
}

struct Latest {
    version: i32,
    active: bool,
    definition: Json<Definition>,
}

/// The campaign's latest version, under a transaction lock on the campaign id (so two changes
/// of one campaign are numbered one after the other).
async fn lock_latest(conn: &mut PgConnection, id: &str) -> sqlx::Result<Option<Latest>> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('campaign:' || $1, 2718))").bind(id).execute(&mut *conn).await?;
    let row: Option<(i32, bool, Json<Definition>)> =
        sqlx::query_as("SELECT version, active, definition FROM campaign_versions WHERE campaign_id = $1 ORDER BY version DESC LIMIT 1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(version, active, definition)| Latest { version, active, definition }))
}

/// Records a version, in force from `delay_ms` after this statement runs (not from when the
/// transaction began: a registration attributed meanwhile must not be bound by an uncommitted
/// version).
async fn record(
    conn: &mut PgConnection,
    d: &Definition,
    version: i32,
    active: bool,
    change: &str,
    by: &str,
    delay_ms: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO campaign_versions (campaign_id, version, definition, active, change, changed_by, effective_from) \
         VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp() + $7 * interval '1 millisecond')",
    )
    .bind(&d.id)
    .bind(version)
    .bind(Json(d))
    .bind(active)
    .bind(change)
    .bind(by)
    .bind(delay_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps a campaign's ledger account funded with its budget: credits `campaign:<id>` from
/// `funding:<id>` by the difference between the budget and what was funded so far (a debit when
/// it was lowered or removed), so the account holds what the campaign may still pay. Under the
/// campaign's limits lock (the one payouts take), a budget below what the campaign has already
/// paid, net of reversals, is refused and nothing is recorded.
async fn fund(conn: &mut PgConnection, d: &Definition) -> anyhow::Result<()> {
    let limits = d.limits().map_err(|e| anyhow::anyhow!("{e}"))?;
    let currency = Currency::parse(&d.currency).map_err(|e| anyhow::anyhow!("`currency`: {}", e.reason))?;
    let budget = limits.budget.map_or(Decimal::ZERO, |b| b.amount);
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('campaign-limits:' || $1, 2718))").bind(&d.id).execute(&mut *conn).await?;
    let account = campaign_account(&d.id);
    // What was funded, from the funding account's entries (it holds nothing else; the campaign
    // account also holds every grant and reversal, and reading all of them under the limits lock
    // held the campaign's payouts that long), and what was paid, through the rewards' campaign
    // index.
    let (funded, spent): (Decimal, Decimal) = sqlx::query_as(
        "SELECT (SELECT COALESCE(-sum(amount), 0) FROM ledger_entries WHERE account = $1 AND currency = $3 AND kind = 'fund'), \
                (SELECT COALESCE(sum(amount), 0) FROM rewards WHERE campaign_id = $2 AND currency = $3 AND reversed_at IS NULL)",
    )
    .bind(funding_account(&d.id))
    .bind(&d.id)
    .bind(currency.as_str())
    .fetch_one(&mut *conn)
    .await?;
    if limits.budget.is_some() && budget < spent {
        anyhow::bail!("`limits.budget`: {budget} is below what campaign {} has already paid ({spent} {currency})", d.id);
    }
    let delta = budget - funded;
    if delta.is_zero() {
        return Ok(());
    }
    let (transaction, currency) = (uuid::Uuid::new_v4(), currency.as_str().to_owned());
    let entry =
        |account: String, amount: Decimal| Entry { transaction, account, amount, currency: currency.clone(), reward: None, kind: "fund" };
    book(&mut *conn, &[entry(account, delta), entry(funding_account(&d.id), -delta)]).await?;
    Ok(())
}

async fn set_active(pool: &PgPool, id: &str, active: bool, by: &str, delay_ms: i64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let Some(latest) = lock_latest(&mut tx, id).await? else { anyhow::bail!("no campaign {id} (`refstream campaigns list` shows them)") };
    if latest.active == active {
        println!("campaign {id} is already {} (version {})", state(active), latest.version);
        return Ok(());
    }
    let change = if active { "resumed" } else { "paused" };
    record(&mut tx, &latest.definition.0, latest.version + 1, active, change, by, delay_ms).await?;
    tx.commit().await?;
    println!("campaign {id} {change}: version {}, in force in {delay_ms} ms", latest.version + 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    const EXAMPLE: &str = include_str!("../../../deploy/campaigns/gb-web-tiers.toml");

    #[test]
    fn the_example_file_parses_and_errors_name_the_field() {
        let d = parse(EXAMPLE).unwrap();
        assert_eq!(d.id, "gb-web-tiers");
        let unknown = EXAMPLE.replace("window_days", "window_dayz");
        assert!(parse(&unknown).unwrap_err().to_string().contains("window_dayz"));
        let bad = EXAMPLE.replace("amount = \"25.00\"", "amount = \"lots\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("rewards[0].tiers[1].amount"), "{e}");
    }
}
