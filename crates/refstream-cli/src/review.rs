//! `refstream review`: the manual review queue. `list` shows the held referrals (and the paid
//! ones a later score flagged); `approve` and `reject` record a reviewer's decision in
//! `review_decisions` (append-only: who, when, why) and the `ReviewDecided` that announces it in
//! the outbox, in one transaction. The reward engine applies the decision (approve: eligible,
//! and paid at once if a qualifying deposit is recorded; reject: rejected); nothing here moves a
//! referral or credits anything.

use clap::{Args, Subcommand};
use refstream_api::ops::review;
use refstream_core::validate::check_text;
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

async fn list(pool: &PgPool, limit: i64) -> anyhow::Result<()> {
    let q = review::queue(pool, limit).await?;
    println!(
        "{} held referral(s) waiting for review{}",
        q.total_held,
        if q.total_held > limit { format!(", oldest {limit} shown") } else { String::new() }
    );
    for h in &q.held {
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
    if !q.flagged_after_payment.is_empty() {
        println!();
        println!("paid before a later score flagged them (not reversed automatically; look at them):");
        for f in &q.flagged_after_payment {
            println!(
                "  {}  {} referred {}  {}  score {}  {}",
                f.referral_id,
                f.referrer_id,
                f.referee_id,
                f.status,
                f.score,
                f.reasons.join(", ")
            );
        }
    }
    Ok(())
}

async fn decide(pool: &PgPool, settings: &Settings, d: &Decision, approve: bool) -> anyhow::Result<()> {
    check_text("--by", &d.reviewer, 128).map_err(|e| anyhow::anyhow!("--by: {}", e.reason))?;
    check_text("--reason", &d.reason, 2000).map_err(|e| anyhow::anyhow!("--reason: {}", e.reason))?;
    let mut tx = pool.begin().await?;
    let decided = review::decide(&mut tx, settings, d.referral_id, &d.reviewer, &d.reason, approve).await.map_err(|e| match e {
        review::DecideError::Conflict(m) => anyhow::anyhow!("{m} (see `refstream explain {}`)", d.referral_id),
        other => anyhow::anyhow!("{other}"),
    })?;
    tx.commit().await?;
    println!(
        "{} recorded for referral {} by {} (decision {}); the reward engine applies it",
        decided.decision, decided.referral_id, decided.reviewer, decided.decision_id
    );
    Ok(())
}
