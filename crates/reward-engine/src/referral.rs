//! What the reward engine does with each input: record deposits and reversals, move referrals
//! through the lifecycle with guarded updates, and pay or claw back through [`crate::ledger`].

use chrono::{DateTime, Utc};
use refstream_core::campaign::Qualification;
use refstream_core::events::{DepositCompleted, DepositReversed, ReferralScored, ReviewDecided};
use refstream_core::lifecycle::{self, Decision, ReferralStatus, Transition};
use refstream_core::{Currency, Money};
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::OutboxMessage;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::RewardEngine;

/// A referral as the engine reads it, locked for the transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Referral {
    pub referral_id: Uuid,
    pub referrer_id: String,
    pub referee_id: String,
    pub campaign_id: String,
    pub referee_registered_at: DateTime<Utc>,
    pub status: String,
    pub cleared_by_review: bool,
}

impl Referral {
    fn status(&self) -> ReferralStatus {
        self.status.parse().unwrap_or(ReferralStatus::Rejected)
    }
}

/// A deposit that may qualify.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Deposit {
    pub deposit_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub occurred_at: DateTime<Utc>,
    /// When this deposit can pay: recorded at + the campaign's settle delay.
    pub settles_at: DateTime<Utc>,
    /// Whether that moment has passed (by the database's clock).
    pub settled: bool,
}

pub(crate) async fn lock_referral_of(conn: &mut PgConnection, referee: &str) -> sqlx::Result<Option<Referral>> {
    sqlx::query_as(
        "SELECT referral_id, referrer_id, referee_id, campaign_id, referee_registered_at, status, cleared_by_review \
         FROM referrals WHERE referee_id = $1 FOR UPDATE",
    )
    .bind(referee)
    .fetch_optional(conn)
    .await
}

/// Applies `t` if the referral is in one of its starting states; true when it moved.
pub(crate) async fn transition(conn: &mut PgConnection, referral: &mut Referral, t: Transition, cause: &str) -> sqlx::Result<bool> {
    if !t.allows(referral.status()) {
        return Ok(false);
    }
    let moved = sqlx::query("UPDATE referrals SET status = $2, updated_at = now() WHERE referral_id = $1 AND status = ANY($3)")
        .bind(referral.referral_id)
        .bind(t.to.as_str())
        .bind(t.from_strs())
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1;
    if moved {
        sqlx::query("INSERT INTO referral_transitions (referral_id, from_status, to_status, cause) VALUES ($1, $2, $3, $4)")
            .bind(referral.referral_id)
            .bind(&referral.status)
            .bind(t.to.as_str())
            .bind(cause)
            .execute(&mut *conn)
            .await?;
        referral.status = t.to.as_str().to_owned();
    }
    Ok(moved)
}

impl RewardEngine {
    pub(crate) async fn on_deposit(
        &self,
        conn: &mut PgConnection,
        d: &DepositCompleted,
        at: &crate::Position,
        out: &mut Vec<OutboxMessage>,
    ) -> sqlx::Result<()> {
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO deposits (deposit_id, user_id, amount, currency, payment_fingerprint, occurred_at, reversed_at, reversal_reason) \
             SELECT $1, $2, $3, $4, $5, $6, r.occurred_at, r.reason \
             FROM (SELECT 1) AS one LEFT JOIN deposit_reversals r ON r.deposit_id = $1 \
             ON CONFLICT (deposit_id) DO NOTHING RETURNING deposit_id",
        )
        .bind(&d.deposit_id)
        .bind(d.user_id.as_str())
        .bind(d.amount.amount)
        .bind(d.amount.currency.as_str())
        .bind(&d.payment_fingerprint)
        .bind(d.occurred_at)
        .fetch_optional(&mut *conn)
        .await?;
        if inserted.is_none() {
            OUTCOMES.with_label_values(&["reward-engine", "duplicate_deposit"]).inc();
            return Ok(());
        }
        crate::unmatched::hold_if_unknown(conn, d, at).await?;
        let Some(mut referral) = lock_referral_of(conn, d.user_id.as_str()).await? else { return Ok(()) };
        self.pay_if_due(conn, &mut referral, out).await
    }

    pub(crate) async fn on_score(&self, conn: &mut PgConnection, s: &ReferralScored, out: &mut Vec<OutboxMessage>) -> sqlx::Result<()> {
        let Some(mut referral) = lock_referral_of(conn, s.referee_id.as_str()).await? else {
            tracing::warn!(referral = %s.referral_id, "score for an unknown referral");
            return Ok(());
        };
        // The first score moves a pending referral; a re-score (the scorer saw new evidence, such
        // as a ring that formed) can only tighten an unpaid one. A paid one is left alone.
        let status = referral.status();
        let first = status == ReferralStatus::Pending;
        let what = if first { "score" } else { "re-score" };
        let cause = format!("{what} {} {} [{}] {}", s.score, s.decision.as_str(), s.reasons.join(","), s.rule_version);
        let moved = match lifecycle::on_any_score(status, s.decision, referral.cleared_by_review) {
            Some(t) => transition(conn, &mut referral, t, &cause).await?,
            None => false,
        };
        if moved {
            let outcome = if first { s.decision.as_str() } else { "rescore_tightened" };
            OUTCOMES.with_label_values(&["reward-engine", outcome]).inc();
        } else if s.decision != Decision::Approve && matches!(status, ReferralStatus::Rewarded | ReferralStatus::Reversed) {
            // Never clawed back automatically: a person decides (`refstream review list` shows it).
            OUTCOMES.with_label_values(&["reward-engine", "flagged_after_payment"]).inc();
            tracing::warn!(referral = %s.referral_id, status = %status, cause, "already paid referral flagged by a later score: left for review");
        }
        if moved && s.decision == Decision::Approve {
            self.pay_if_due(conn, &mut referral, out).await?;
        }
        Ok(())
    }

    pub(crate) async fn on_review(&self, conn: &mut PgConnection, r: &ReviewDecided, out: &mut Vec<OutboxMessage>) -> sqlx::Result<()> {
        let Some(mut referral) = lock_referral_of(conn, r.referee_id.as_str()).await? else { return Ok(()) };
        let verdict = if r.approve { "approved" } else { "rejected" };
        let cause = format!("review {verdict} by {}: {}", r.reviewer, r.reason);
        if transition(conn, &mut referral, lifecycle::on_review(r.approve), &cause).await? && r.approve {
            sqlx::query("UPDATE referrals SET cleared_by_review = true WHERE referral_id = $1")
                .bind(referral.referral_id)
                .execute(&mut *conn)
                .await?;
            referral.cleared_by_review = true;
            self.pay_if_due(conn, &mut referral, out).await?;
        }
        Ok(())
    }

    pub(crate) async fn on_reversal(&self, conn: &mut PgConnection, r: &DepositReversed, out: &mut Vec<OutboxMessage>) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO deposit_reversals (deposit_id, user_id, reason, occurred_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (deposit_id) DO NOTHING",
        )
        .bind(&r.deposit_id)
        .bind(r.user_id.as_str())
        .bind(r.reason.as_str())
        .bind(r.occurred_at)
        .execute(&mut *conn)
        .await?;
        let reversed =
            sqlx::query("UPDATE deposits SET reversed_at = $2, reversal_reason = $3 WHERE deposit_id = $1 AND reversed_at IS NULL")
                .bind(&r.deposit_id)
                .bind(r.occurred_at)
                .bind(r.reason.as_str())
                .execute(&mut *conn)
                .await?
                .rows_affected();
        if reversed == 0 {
            return Ok(());
        }
        let Some(mut referral) = lock_referral_of(conn, r.user_id.as_str()).await? else { return Ok(()) };
        let clawed = crate::ledger::reverse_rewards_of_deposit(conn, self, &r.deposit_id, r.reason.as_str(), r.occurred_at, out).await?;
        if clawed > 0 {
            transition(conn, &mut referral, lifecycle::REVERSE, &format!("deposit {} {}", r.deposit_id, r.reason.as_str())).await?;
        }
        Ok(())
    }

    /// Pays an eligible referral whose referee has a qualifying deposit, unless the deposit's
    /// payment instrument is also the referrer's and no reviewer cleared it: then the referral
    /// goes back to review.
    pub(crate) async fn pay_if_due(
        &self,
        conn: &mut PgConnection,
        referral: &mut Referral,
        out: &mut Vec<OutboxMessage>,
    ) -> sqlx::Result<()> {
        if referral.status() != ReferralStatus::Eligible {
            return Ok(());
        }
        let deposits: Vec<Deposit> = sqlx::query_as(
            "SELECT deposit_id, amount, currency, occurred_at, recorded_at + make_interval(secs => $2) AS settles_at, \
             recorded_at + make_interval(secs => $2) <= now() AS settled FROM deposits \
             WHERE user_id = $1 AND reversed_at IS NULL ORDER BY occurred_at, deposit_id",
        )
        .bind(&referral.referee_id)
        .bind(self.settle_delay.as_secs_f64())
        .fetch_all(&mut *conn)
        .await?;
        let qualifying = deposits.into_iter().find(|d| {
            let Ok(currency) = Currency::parse(d.currency.trim()) else { return false };
            self.campaign.qualifies(&Money::new(d.amount, currency), d.occurred_at, referral.referee_registered_at)
                == Qualification::Qualifies
        });
        let Some(deposit) = qualifying else { return Ok(()) };
        if !deposit.settled {
            // Not yet: the settlement sweep pays (or holds) it when due.
            sqlx::query(
                "INSERT INTO pending_payouts (referral_id, due_at) VALUES ($1, $2) \
                 ON CONFLICT (referral_id) DO UPDATE SET due_at = LEAST(pending_payouts.due_at, EXCLUDED.due_at)",
            )
            .bind(referral.referral_id)
            .bind(deposit.settles_at)
            .execute(&mut *conn)
            .await?;
            return Ok(());
        }
        let shared: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM deposits a JOIN deposits b ON a.payment_fingerprint = b.payment_fingerprint \
             WHERE a.user_id = $1 AND b.user_id = $2)",
        )
        .bind(&referral.referrer_id)
        .bind(&referral.referee_id)
        .fetch_one(&mut *conn)
        .await?;
        if shared && !referral.cleared_by_review {
            OUTCOMES.with_label_values(&["reward-engine", "held_shared_instrument"]).inc();
            transition(conn, referral, lifecycle::BACK_TO_REVIEW, "SHARED_PAYMENT_INSTRUMENT seen at deposit time").await?;
            return Ok(());
        }
        let granted = crate::ledger::grant(conn, self, referral, &deposit, out).await?;
        if granted > 0 {
            transition(conn, referral, lifecycle::REWARD, &format!("qualifying deposit {}", deposit.deposit_id)).await?;
        }
        Ok(())
    }
}
