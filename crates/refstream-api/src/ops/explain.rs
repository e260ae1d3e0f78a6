//! Everything refstream knows about one referral and why it stands where it stands — the
//! referral, every assessment revision (score, decision, rule version, each rule that fired,
//! the evidence the rules saw), the status transitions with their causes, review decisions and
//! rewards — read from Postgres in one place for `refstream explain` and the API. Nothing here
//! holds a raw email or IP: the evidence stores keyed hashes' comparisons and email domains.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value as Json;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Referral {
    pub referral_id: Uuid,
    pub referrer_id: String,
    pub referee_id: String,
    pub code: String,
    pub campaign_id: String,
    /// The campaign version it pays by (0: the default campaign of the settings), and why.
    pub terms_version: i32,
    pub campaign_reason: Option<String>,
    pub attribution: String,
    pub referee_registered_at: DateTime<Utc>,
    pub status: String,
    pub cleared_by_review: bool,
    pub created_at: DateTime<Utc>,
    pub click_id: Option<String>,
    pub click_match: Option<String>,
    #[schema(value_type = Option<String>)]
    pub match_confidence: Option<Decimal>,
    pub touch: Option<String>,
    pub network_clicks: Option<i32>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Revision {
    pub revision: i32,
    pub score: i32,
    pub decision: String,
    pub reasons: Vec<String>,
    /// The rules that fired (`signals`: code, weight, detail) and the evidence they saw.
    #[schema(value_type = Object)]
    pub signals: Json,
    pub rule_version: String,
    pub cause: String,
    pub assessed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Transition {
    pub from_status: String,
    pub to_status: String,
    pub cause: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Review {
    pub decision: String,
    pub reviewer: String,
    pub reason: String,
    pub decided_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Reward {
    pub reward_type: String,
    pub beneficiary_id: String,
    #[schema(value_type = String)]
    pub amount: Decimal,
    pub currency: String,
    pub qualifying_deposit_id: String,
    pub granted_at: DateTime<Utc>,
    pub reversed_at: Option<DateTime<Utc>>,
    pub reversal_reason: Option<String>,
    pub hold_ended_at: Option<DateTime<Utc>>,
    pub barrier_id: Option<i64>,
    pub reversal_assessment_event_id: Option<Uuid>,
    pub reversal_assessment_revision: Option<i32>,
}

/// One referral explained.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Explained {
    pub referral: Referral,
    /// Every assessment revision, oldest first; the last is the one in force.
    pub assessments: Vec<Revision>,
    pub transitions: Vec<Transition>,
    pub reviews: Vec<Review>,
    pub rewards: Vec<Reward>,
}

const COLUMNS: &str =
    "referral_id, referrer_id, referee_id, code, campaign_id, terms_version, campaign_reason, attribution, referee_registered_at, \
                       status, cleared_by_review, created_at, click_id, click_match, match_confidence, touch, network_clicks";

/// Finds the referral by id, or by its referee's user id.
async fn find(pool: &PgPool, id: &str) -> sqlx::Result<Option<Referral>> {
    if let Ok(uuid) = Uuid::parse_str(id.trim()) {
        let found = sqlx::query_as::<_, Referral>(&format!("SELECT {COLUMNS} FROM referrals WHERE referral_id = $1"))
            .bind(uuid)
            .fetch_optional(pool)
            .await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    sqlx::query_as::<_, Referral>(&format!("SELECT {COLUMNS} FROM referrals WHERE referee_id = $1"))
        .bind(id.trim())
        .fetch_optional(pool)
        .await
}

/// The referral with this id (or whose referee is this user), explained; `None` when unknown.
pub async fn load(pool: &PgPool, id: &str) -> sqlx::Result<Option<Explained>> {
    let Some(referral) = find(pool, id).await? else { return Ok(None) };
    let id = referral.referral_id;
    let mut assessments: Vec<Revision> = sqlx::query_as(
        "SELECT revision, score, decision, reasons, signals, rule_version, cause, assessed_at FROM assessment_history \
         WHERE referral_id = $1 ORDER BY revision",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    if assessments.is_empty() {
        // Assessed before assessment_history existed: the row itself is all there is.
        assessments = sqlx::query_as(
            "SELECT revision, score, decision, reasons, signals, rule_version, cause, assessed_at FROM assessments WHERE referral_id = $1",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
    }
    let transitions =
        sqlx::query_as("SELECT from_status, to_status, cause, at FROM referral_transitions WHERE referral_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(pool)
            .await?;
    let reviews = sqlx::query_as(
        "SELECT decision, reviewer, reason, decided_at FROM review_decisions WHERE referral_id = $1 ORDER BY decided_at, decision_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let rewards = sqlx::query_as(
        "SELECT reward_type, beneficiary_id, amount, currency::text AS currency, qualifying_deposit_id, granted_at, reversed_at, reversal_reason, \
                hold_ended_at, barrier_id, reversal_assessment_event_id, reversal_assessment_revision \
         FROM rewards WHERE referral_id = $1 ORDER BY granted_at, reward_type",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(Explained { referral, assessments, transitions, reviews, rewards }))
}
