//! The manual review queue, shared by `refstream review` and the API: the held referrals (and
//! the paid ones a later score flagged), and a reviewer's decision, recorded in
//! `review_decisions` (append-only: who, when, why) with the `ReviewDecided` that announces it
//! in the outbox, in one transaction. The reward engine applies the decision (approve:
//! eligible, and paid at once if a qualifying deposit is recorded; reject: rejected); nothing
//! here moves a referral or credits anything. One decision per hold: a second is refused.

use chrono::{DateTime, Utc};
use refstream_core::events::ReviewDecided;
use refstream_core::validate::check_text;
use refstream_core::{DerivedId, UserId};
use refstream_runtime::outbox::{enqueue, OutboxMessage};
use refstream_runtime::Settings;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

/// A held referral waiting for a reviewer.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Held {
    pub referral_id: Uuid,
    pub referrer_id: String,
    pub referee_id: String,
    pub held_at: Option<DateTime<Utc>>,
    pub score: Option<i32>,
    pub decision: Option<String>,
    pub reasons: Option<Vec<String>>,
    /// Why it was held (the transition's cause).
    pub hold_cause: Option<String>,
    /// A decision already recorded for this hold, on its way to the reward engine.
    pub pending_decision: Option<String>,
}

/// A paid referral a later score flagged: never clawed back automatically.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Flagged {
    pub referral_id: Uuid,
    pub referrer_id: String,
    pub referee_id: String,
    pub status: String,
    pub score: i32,
    pub reasons: Vec<String>,
}

/// The queue: the oldest holds first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Queue {
    /// Every held referral, also those beyond `limit`.
    pub total_held: i64,
    pub held: Vec<Held>,
    pub flagged_after_payment: Vec<Flagged>,
}

pub async fn queue(pool: &PgPool, limit: i64) -> sqlx::Result<Queue> {
    let held = sqlx::query_as(
        "SELECT r.referral_id, r.referrer_id, r.referee_id, h.at AS held_at, a.score, a.decision, a.reasons, \
                h.cause AS hold_cause, d.decision || ' by ' || d.reviewer AS pending_decision \
         FROM referrals r \
         LEFT JOIN LATERAL (SELECT id, at, cause FROM referral_transitions t WHERE t.referral_id = r.referral_id \
                            AND t.to_status = 'held' ORDER BY id DESC LIMIT 1) h ON true \
         LEFT JOIN assessments a ON a.referral_id = r.referral_id \
         LEFT JOIN review_decisions d ON d.referral_id = r.referral_id AND d.hold_id = h.id \
         WHERE r.status_group = 'held' ORDER BY h.at NULLS FIRST, r.referral_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let total_held = sqlx::query_scalar("SELECT count(*) FROM referrals WHERE status_group = 'held'").fetch_one(pool).await?;
    let flagged_after_payment = sqlx::query_as(
        "SELECT r.referral_id, r.referrer_id, r.referee_id, r.status, a.score, a.reasons FROM referrals r \
         JOIN assessments a USING (referral_id) WHERE r.status IN ('rewarded', 'reversed') AND a.decision <> 'APPROVE' \
         ORDER BY a.assessed_at, r.referral_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Queue { total_held, held, flagged_after_payment })
}

/// A recorded decision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Decided {
    pub decision_id: Uuid,
    pub referral_id: Uuid,
    /// APPROVE or REJECT.
    pub decision: String,
    pub reviewer: String,
    pub decided_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("{0}")]
    Invalid(String),
    #[error("no referral {0}")]
    NotFound(Uuid),
    /// Not held, or already decided for this hold.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Records a reviewer's decision on a held referral, inside `tx` (the caller commits; the API
/// records its audit row in the same transaction).
pub async fn decide(
    tx: &mut PgConnection,
    settings: &Settings,
    referral_id: Uuid,
    reviewer: &str,
    reason: &str,
    approve: bool,
) -> Result<Decided, DecideError> {
    check_text("reviewer", reviewer, 128).map_err(|e| DecideError::Invalid(format!("reviewer: {}", e.reason)))?;
    check_text("reason", reason, 2000).map_err(|e| DecideError::Invalid(format!("reason: {}", e.reason)))?;
    let (reviewer, reason) = (reviewer.trim(), reason.trim());
    let referral: Option<(String, String)> = sqlx::query_as("SELECT referee_id, status FROM referrals WHERE referral_id = $1 FOR UPDATE")
        .bind(referral_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some((referee, status)) = referral else {
        return Err(DecideError::NotFound(referral_id));
    };
    if status != "held" {
        return Err(DecideError::Conflict(format!(
            "referral {referral_id} is {status}, not held: only held referrals take a review decision"
        )));
    }
    let hold_id: i64 =
        sqlx::query_scalar("SELECT id FROM referral_transitions WHERE referral_id = $1 AND to_status = 'held' ORDER BY id DESC LIMIT 1")
            .bind(referral_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| DecideError::Conflict(format!("referral {referral_id} is held but has no recorded hold")))?;
    let earlier: Option<(String, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT decision, reviewer, decided_at FROM review_decisions WHERE referral_id = $1 AND hold_id = $2")
            .bind(referral_id)
            .bind(hold_id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((decision, by, at)) = earlier {
        return Err(DecideError::Conflict(format!(
            "referral {referral_id} already has a decision for this hold: {decision} by {by} at {at}; the reward engine applies it shortly"
        )));
    }
    let referee_id = UserId::parse(referee.clone()).map_err(|e| DecideError::Conflict(format!("stored referee id: {e:?}")))?;
    let decision_id = Uuid::new_v4();
    let event_id = DerivedId::event("review-decided", decision_id);
    let verdict = if approve { "APPROVE" } else { "REJECT" };
    let decided_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO review_decisions (decision_id, referral_id, hold_id, decision, reviewer, reason, event_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING decided_at",
    )
    .bind(decision_id)
    .bind(referral_id)
    .bind(hold_id)
    .bind(verdict)
    .bind(reviewer)
    .bind(reason)
    .bind(event_id)
    .fetch_one(&mut *tx)
    .await?;
    let event = ReviewDecided {
        event_id,
        referral_id,
        referee_id,
        approve,
        reviewer: reviewer.to_owned(),
        reason: reason.to_owned(),
        occurred_at: decided_at,
    };
    enqueue(&mut *tx, &[OutboxMessage::record(&settings.topics.review_decided, &referee, &event)]).await?;
    Ok(Decided { decision_id, referral_id, decision: verdict.to_owned(), reviewer: reviewer.to_owned(), decided_at })
}
