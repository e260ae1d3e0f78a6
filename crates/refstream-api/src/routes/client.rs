//! Client endpoints, for a user's own screen: their code and share link, their referrals with
//! status, their rewards. A client token acts for exactly one user and these endpoints read
//! nothing else: another user appears only as a referral's status and dates, never by id,
//! email or address — nor by a referral or reward id, which are derived from the referee's user
//! id (a referrer could recover who signed up by hashing guesses).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::problem::Problem;
use crate::AppState;

/// The caller's referral code and the link to share.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyCode {
    pub user_id: String,
    pub code: String,
    pub share_link: String,
    pub campaign_id: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The caller's code and share link.
#[utoipa::path(get, path = "/v1/me/code", tag = "client", security(("bearer" = [])),
    responses((status = 200, body = MyCode), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn my_code(State(state): State<AppState>, caller: Caller) -> Result<Json<MyCode>, Problem> {
    let user = caller.user()?;
    let row: Option<(String, String, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT code, campaign_id, expires_at FROM referral_codes WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&state.pool)
            .await?;
    let (code, campaign_id, expires_at) =
        row.ok_or_else(|| Problem::not_found("no referral code yet: the registration is still being processed"))?;
    let share_link = format!("{}/r/{code}", state.settings.api.share_base_url.trim_end_matches('/'));
    Ok(Json(MyCode { user_id: user.to_owned(), code, share_link, campaign_id, expires_at }))
}

/// One of the caller's referrals: who it was is not shown, only where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyReferral {
    /// When the invited user registered.
    pub registered_at: DateTime<Utc>,
    /// pending, held, eligible, rewarded, rejected, expired or reversed.
    pub status: String,
    /// What the caller earned from it (rewards not reversed), per currency.
    pub earned: Vec<Earned>,
}

/// An amount earned in one currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Earned {
    #[schema(value_type = String)]
    pub amount: Decimal,
    pub currency: String,
}

/// The people the caller invited, newest first, with status.
#[utoipa::path(get, path = "/v1/me/referrals", tag = "client", security(("bearer" = [])),
    responses((status = 200, body = Vec<MyReferral>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn my_referrals(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<MyReferral>>, Problem> {
    let user = caller.user()?;
    #[derive(sqlx::FromRow)]
    struct Row {
        registered_at: DateTime<Utc>,
        status: String,
        amounts: Vec<Decimal>,
        currencies: Vec<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.referee_registered_at AS registered_at, r.status, COALESCE(w.amounts, '{}') AS amounts, \
                COALESCE(w.currencies, '{}') AS currencies \
         FROM referrals r LEFT JOIN LATERAL ( \
           SELECT array_agg(amount ORDER BY currency) AS amounts, array_agg(currency::text ORDER BY currency) AS currencies FROM ( \
             SELECT currency, sum(amount) AS amount FROM rewards \
             WHERE referral_id = r.referral_id AND beneficiary_id = $1 AND reversed_at IS NULL GROUP BY currency) x) w ON true \
         WHERE r.referrer_id = $1 ORDER BY r.referee_registered_at DESC, r.referral_id LIMIT 500",
    )
    .bind(user)
    .fetch_all(&state.pool)
    .await?;
    let referrals = rows
        .into_iter()
        .map(|r| MyReferral {
            registered_at: r.registered_at,
            status: r.status,
            earned: r.amounts.into_iter().zip(r.currencies).map(|(amount, currency)| Earned { amount, currency }).collect(),
        })
        .collect();
    Ok(Json(referrals))
}

/// A reward credited to the caller.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct MyReward {
    pub reward_type: String,
    #[schema(value_type = String)]
    pub amount: Decimal,
    pub currency: String,
    /// CASH (withdrawable) or BONUS (promotional credit).
    pub kind: String,
    /// BONUS: how much must be wagered before it can be withdrawn.
    #[schema(value_type = Option<String>)]
    pub wagering_requirement: Option<Decimal>,
    /// 1: for your own referral (or as the friend); 2 and up: a friend of someone you invited.
    pub level: i16,
    pub granted_at: DateTime<Utc>,
    pub reversed_at: Option<DateTime<Utc>>,
    pub reversal_reason: Option<String>,
}

/// The caller's rewards, newest first (reversed ones included, marked).
#[utoipa::path(get, path = "/v1/me/rewards", tag = "client", security(("bearer" = [])),
    responses((status = 200, body = Vec<MyReward>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn my_rewards(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<MyReward>>, Problem> {
    let user = caller.user()?;
    let rows = sqlx::query_as(
        "SELECT reward_type, amount, currency::text AS currency, kind, wagering_requirement, level, granted_at, reversed_at, reversal_reason \
         FROM rewards WHERE beneficiary_id = $1 ORDER BY granted_at DESC, reward_id LIMIT 500",
    )
    .bind(user)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows))
}
