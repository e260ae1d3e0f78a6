//! `refstream review`: the manual review queue. `list` shows the held referrals (and the paid
//! ones a later score flagged); `approve` and `reject` record a reviewer's decision in
//! `review_decisions` (append-only: who, when, why) and the `ReviewDecided` that announces it in
//! the outbox, in one transaction. The reward engine applies the decision (approve: eligible,
//! and paid at once if a qualifying deposit is recorded; reject: rejected); nothing here moves a
//! referral or credits anything.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use refstream_core::events::ReviewDecided;
use refstream_core::validate::check_text;
use refstream_core::{DerivedId, UserId};
use refstream_runtime::outbox::{enqueue, OutboxMessage};
use refstream_runtime::Settings;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Subcommand)]
pub enum Action {
    /// List the referrals waiting for a reviewer, oldest hold first.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Approve a held referral: it becomes eligible (and pays if a qualifying deposit exists).
    Approve(Decision),
    /// Reject a held referral: it never pays.
    Reject(Decision),
}

#[derive(Args)]
pub struct Decision {
    /// The referral's id (`refstream review list` shows it).
    referral_id: Uuid,
    /// Who decides (recorded with the decision).
    #[arg(long = "by")]
    reviewer: String,
    /// Why (recorded with the decision).
    #[arg(long)]
    reason: String,
}

pub async fn run(action: Action, settings: &Settings, pool: &PgPool) -> anyhow::Result<()> {
    match action {
        Action::List { limit } => list(pool, limit).await,
        Action::Approve(d) => decide(pool, settings, &d, true).await,
        Action::Reject(d) => decide(pool, settings, &d, false).await,
    }
}

#[derive(sqlx::FromRow)]
struct Held {
    referral_id: Uuid,
    referrer_id: String,
    referee_id: String,
    held_at: Option<DateTime<Utc>>,
    score: Option<i32>,
    decision: Option<String>,
    reasons: Option<Vec<String>>,
    hold_cause: Option<String>,
    pending_decision: Option<String>,
}

async fn list(pool: &PgPool, limit: i64) -> anyhow::Result<()> {
    let held: Vec<Held> = sqlx::query_as(
        "SELECT r.referral_id, r.referrer_id, r.referee_id, h.at AS held_at, a.score, a.decision, a.reasons, \
                h.cause AS hold_cause, d.decision || ' by ' || d.reviewer AS pending_decision \
         FROM referrals r \
         LEFT JOIN LATERAL (SELECT id, at, cause FROM referral_transitions t WHERE t.referral_id = r.referral_id \
                            AND t.to_status = 'held' ORDER BY id DESC LIMIT 1) h ON true \
         LEFT JOIN assessments a ON a.referral_id = r.referral_id \
         LEFT JOIN review_decisions d ON d.referral_id = r.referral_id AND d.hold_id = h.id \
         WHERE r.status = 'held' ORDER BY h.at NULLS FIRST, r.referral_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM referrals WHERE status = 'held'").fetch_one(pool).await?;
    println!(
        "{total} held referral(s) waiting for review{}",
        if total > limit { format!(", oldest {limit} shown") } else { String::new() }
    );
    for h in &held {
        let when = h.held_at.map_or_else(|| "?".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        println!();
        println!("{}  held since {when}", h.referral_id);
        println!("  {} referred {}", h.referrer_id, h.referee_id);
        if let (Some(score), Some(decision)) = (h.score, &h.decision) {
            println!("  score {score} {decision}  {}", h.reasons.as_deref().unwrap_or_default().join(", "));
        }
        if let Some(cause) = &h.hold_cause {
            println!("  held by: {cause}");
        }
        if let Some(pending) = &h.pending_decision {
            println!("  decision recorded, on its way to the reward engine: {pending}");
        }
    }
    // Paid referrals a later score flagged: never clawed back automatically.
    let flagged: Vec<(Uuid, String, String, String, i32, Vec<String>)> = sqlx::query_as(
        "SELECT r.referral_id, r.referrer_id, r.referee_id, r.status, a.score, a.reasons FROM referrals r \
         JOIN assessments a USING (referral_id) WHERE r.status IN ('rewarded', 'reversed') AND a.decision <> 'APPROVE' \
         ORDER BY a.assessed_at, r.referral_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    if !flagged.is_empty() {
        println!();
        println!("paid before a later score flagged them (not reversed automatically; look at them):");
        for (id, referrer, referee, status, score, reasons) in flagged {
            println!("  {id}  {referrer} referred {referee}  {status}  score {score}  {}", reasons.join(", "));
        }
    }
    Ok(())
}

async fn decide(pool: &PgPool, settings: &Settings, d: &Decision, approve: bool) -> anyhow::Result<()> {
    check_text("--by", &d.reviewer, 128).map_err(|e| anyhow::anyhow!("--by: {}", e.reason))?;
    check_text("--reason", &d.reason, 2000).map_err(|e| anyhow::anyhow!("--reason: {}", e.reason))?;
    let mut tx = pool.begin().await?;
    let referral: Option<(String, String)> = sqlx::query_as("SELECT referee_id, status FROM referrals WHERE referral_id = $1 FOR UPDATE")
        .bind(d.referral_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some((referee, status)) = referral else {
        anyhow::bail!("no referral {}", d.referral_id);
    };
    if status != "held" {
        anyhow::bail!(
            "referral {} is {status}, not held: only held referrals take a review decision (see `refstream explain {}`)",
            d.referral_id,
            d.referral_id
        );
    }
    let hold_id: i64 =
        sqlx::query_scalar("SELECT id FROM referral_transitions WHERE referral_id = $1 AND to_status = 'held' ORDER BY id DESC LIMIT 1")
            .bind(d.referral_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| anyhow::anyhow!("referral {} is held but has no recorded hold", d.referral_id))?;
    let earlier: Option<(String, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT decision, reviewer, decided_at FROM review_decisions WHERE referral_id = $1 AND hold_id = $2")
            .bind(d.referral_id)
            .bind(hold_id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((decision, reviewer, at)) = earlier {
        anyhow::bail!(
            "referral {} already has a decision for this hold: {decision} by {reviewer} at {at}; the reward engine applies it shortly",
            d.referral_id
        );
    }
    let decision_id = Uuid::new_v4();
    let event_id = DerivedId::event("review-decided", decision_id);
    let verdict = if approve { "APPROVE" } else { "REJECT" };
    let decided_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO review_decisions (decision_id, referral_id, hold_id, decision, reviewer, reason, event_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING decided_at",
    )
    .bind(decision_id)
    .bind(d.referral_id)
    .bind(hold_id)
    .bind(verdict)
    .bind(d.reviewer.trim())
    .bind(d.reason.trim())
    .bind(event_id)
    .fetch_one(&mut *tx)
    .await?;
    let event = ReviewDecided {
        event_id,
        referral_id: d.referral_id,
        referee_id: UserId::parse(referee.clone())?,
        approve,
        reviewer: d.reviewer.trim().to_owned(),
        reason: d.reason.trim().to_owned(),
        occurred_at: decided_at,
    };
    enqueue(&mut tx, 0, &[OutboxMessage::record(&settings.topics.review_decided, &referee, &event)]).await?;
    tx.commit().await?;
    println!(
        "{verdict} recorded for referral {} by {} (decision {decision_id}); the reward engine applies it",
        d.referral_id,
        d.reviewer.trim()
    );
    Ok(())
}
