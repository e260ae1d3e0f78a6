//! Admin endpoints: the funnel and leaderboard (from the analytics worker's tables), the summary,
//! the review queue with approve and reject (the same rules as `refstream review`), explain,
//! dead letters (list, replay) and client-token issuance. Roles: a viewer reads, a reviewer also
//! decides reviews, an admin also replays dead letters and reads the audit log; client tokens are
//! issued by an issuer token (the operator's backend) or an admin. Every action
//! that changes something is recorded in `api_admin_actions` (which token, what, when) — in the
//! same transaction as the change when the change is a database write.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{As, Body, Caller, IssuerRole, Params, ReviewerRole, Segment};
use crate::ops::{dead_letters, explain, review, summary};
use crate::problem::Problem;
use crate::tokens::{self, Principal, Role};
use crate::AppState;

/// Records an admin action in the caller's transaction.
async fn audit(conn: &mut PgConnection, who: &Principal, action: &str, target: &str, detail: serde_json::Value) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO api_admin_actions (token_id, token_name, role, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(who.token_id)
        .bind(&who.name)
        .bind(who.role.as_str())
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}

/// Which slice of the funnel: UTC days (both inclusive), a campaign, a platform.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FunnelQuery {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub campaign_id: Option<String>,
    pub platform: Option<String>,
    /// Leaderboard length (1..=100, default 10).
    pub limit: Option<i64>,
}

impl FunnelQuery {
    fn filter(&self) -> Result<analytics::report::Filter, Problem> {
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                return Err(Problem::bad_request("from is after to"));
            }
        }
        Ok(analytics::report::Filter {
            from: self.from,
            to: self.to,
            campaign_id: self.campaign_id.clone(),
            platform: self.platform.clone(),
        })
    }
}

/// The funnel per campaign, day and platform, with conversion, time to first deposit, fraud
/// rates and money per currency.
#[utoipa::path(get, path = "/v1/admin/funnel", tag = "admin", params(FunnelQuery), security(("bearer" = [])),
    responses((status = 200, body = analytics::report::Report), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn funnel(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<FunnelQuery>,
) -> Result<Json<analytics::report::Report>, Problem> {
    caller.require(Role::Viewer)?;
    Ok(Json(analytics::report::report(&state.pool, &q.filter()?).await?))
}

/// The top referrers of the slice.
#[utoipa::path(get, path = "/v1/admin/leaderboard", tag = "admin", params(FunnelQuery), security(("bearer" = [])),
    responses((status = 200, body = Vec<analytics::report::Leader>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn leaderboard(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<FunnelQuery>,
) -> Result<Json<Vec<analytics::report::Leader>>, Problem> {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(Problem::bad_request("limit must be between 1 and 100"));
    }
    Ok(Json(analytics::report::leaderboard(&state.pool, &q.filter()?, limit).await?))
}

/// Users, referrals by status, rewards, money and the ledger check (what `refstream summary` prints).
#[utoipa::path(get, path = "/v1/admin/summary", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = summary::Summary), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn summary(State(state): State<AppState>, caller: Caller) -> Result<Json<summary::Summary>, Problem> {
    caller.require(Role::Viewer)?;
    Ok(Json(summary::load(&state.pool).await?))
}

/// How many rows to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// 1..=500, default 50.
    pub limit: Option<i64>,
}

impl Limit {
    fn value(&self) -> Result<i64, Problem> {
        let n = self.limit.unwrap_or(50);
        if (1..=500).contains(&n) {
            Ok(n)
        } else {
            Err(Problem::bad_request("limit must be between 1 and 500"))
        }
    }
}

/// The review queue: held referrals, oldest hold first, and paid ones a later score flagged.
#[utoipa::path(get, path = "/v1/admin/reviews", tag = "admin", params(Limit), security(("bearer" = [])),
    responses((status = 200, body = review::Queue), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn reviews(State(state): State<AppState>, caller: Caller, Params(q): Params<Limit>) -> Result<Json<review::Queue>, Problem> {
    caller.require(Role::Viewer)?;
    Ok(Json(review::queue(&state.pool, q.value()?).await?))
}

/// A reviewer's reason for a decision.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why (recorded with the decision; 1 to 2000 characters).
    pub reason: String,
}

fn referral_id(segment: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(segment).map_err(|_| Problem::bad_request(format!("`{segment}` is not a referral id (a UUID)")))
}

async fn decide(
    state: &AppState,
    who: &Principal,
    segment: &str,
    reason: &str,
    approve: bool,
) -> Result<(StatusCode, Json<review::Decided>), Problem> {
    let id = referral_id(segment)?;
    let mut tx = state.pool.begin().await?;
    let reviewer = format!("api:{}", who.name);
    let decided = review::decide(&mut tx, &state.settings, id, &reviewer, reason, approve).await.map_err(|e| match e {
        review::DecideError::Invalid(m) => Problem::bad_request(m),
        review::DecideError::NotFound(_) => Problem::not_found(e.to_string()),
        review::DecideError::Conflict(m) => Problem::conflict(m),
        review::DecideError::Db(e) => Problem::from(e),
    })?;
    let action = if approve { "review.approve" } else { "review.reject" };
    audit(&mut tx, who, action, &id.to_string(), json!({ "reason": reason.trim(), "decision_id": decided.decision_id })).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(decided)))
}

/// Approve a held referral: it becomes eligible (and pays if a qualifying deposit is recorded).
#[utoipa::path(post, path = "/v1/admin/reviews/{referral_id}/approve", tag = "admin", security(("bearer" = [])),
    params(("referral_id" = Uuid, Path, description = "the held referral")), request_body = DecisionBody,
    responses((status = 201, body = review::Decided), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn approve(
    State(state): State<AppState>,
    As(who, _): As<ReviewerRole>,
    Segment(id): Segment,
    Body(body): Body<DecisionBody>,
) -> Result<(StatusCode, Json<review::Decided>), Problem> {
    decide(&state, &who, &id, &body.reason, true).await
}

/// Reject a held referral: it never pays.
#[utoipa::path(post, path = "/v1/admin/reviews/{referral_id}/reject", tag = "admin", security(("bearer" = [])),
    params(("referral_id" = Uuid, Path, description = "the held referral")), request_body = DecisionBody,
    responses((status = 201, body = review::Decided), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn reject(
    State(state): State<AppState>,
    As(who, _): As<ReviewerRole>,
    Segment(id): Segment,
    Body(body): Body<DecisionBody>,
) -> Result<(StatusCode, Json<review::Decided>), Problem> {
    decide(&state, &who, &id, &body.reason, false).await
}

/// A referral explained: assessments with rules and evidence, transitions, reviews, rewards.
#[utoipa::path(get, path = "/v1/admin/referrals/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "the referral id, or its referee's user id")),
    responses((status = 200, body = explain::Explained), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn explain(State(state): State<AppState>, caller: Caller, Segment(id): Segment) -> Result<Json<explain::Explained>, Problem> {
    caller.require(Role::Viewer)?;
    if id.len() > 128 {
        return Err(Problem::bad_request("id too long"));
    }
    explain::load(&state.pool, &id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no referral {id} (nor one whose referee is {id})")))
}

/// Dead letters, newest first (reasons and positions; payloads are not shown).
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin", params(Limit), security(("bearer" = [])),
    responses((status = 200, body = Vec<dead_letters::Letter>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn dead_letter_list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<Limit>,
) -> Result<Json<Vec<dead_letters::Letter>>, Problem> {
    caller.require(Role::Viewer)?;
    Ok(Json(dead_letters::list(&state.pool, q.value()?).await?))
}

/// A replayed dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub id: i64,
    pub topic: String,
}

/// Produce a dead letter's bytes back to its source topic (admin).
#[utoipa::path(post, path = "/v1/admin/dead-letters/{id}/replay", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the dead letter's id")),
    responses((status = 200, body = Replayed), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn dead_letter_replay(State(state): State<AppState>, caller: Caller, Segment(id): Segment) -> Result<Json<Replayed>, Problem> {
    let who = caller.require(Role::Admin)?;
    let id: i64 = id.parse().map_err(|_| Problem::bad_request(format!("`{id}` is not a dead letter id")))?;
    let mut tx = state.pool.begin().await?;
    let topic = dead_letters::replay(&mut tx, &state.settings, id).await.map_err(|e| match e {
        dead_letters::ReplayError::NotFound(_) => Problem::not_found(e.to_string()),
        other => Problem::internal(&other),
    })?;
    audit(&mut tx, who, "dead_letter.replay", &id.to_string(), json!({ "topic": topic })).await?;
    tx.commit().await?;
    Ok(Json(Replayed { id, topic }))
}

/// A client token to issue for one user (the operator's backend hands it to that user's app).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientTokenRequest {
    pub user_id: String,
    /// Seconds until it expires (60..=2592000, default 86400).
    pub ttl_secs: Option<i64>,
}

/// Issue a client token bound to one user (issuer or admin). The token is in this response only.
#[utoipa::path(post, path = "/v1/admin/client-tokens", tag = "admin", security(("bearer" = [])), request_body = ClientTokenRequest,
    responses((status = 201, body = tokens::Created), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn client_token(
    State(state): State<AppState>,
    As(who, _): As<IssuerRole>,
    Body(body): Body<ClientTokenRequest>,
) -> Result<(StatusCode, Json<tokens::Created>), Problem> {
    let ttl = body.ttl_secs.unwrap_or(86_400);
    if !(60..=2_592_000).contains(&ttl) {
        return Err(Problem::bad_request("ttl_secs must be between 60 and 2592000"));
    }
    let expires_at: DateTime<Utc> = Utc::now() + chrono::Duration::seconds(ttl);
    let name = format!("client:{}", body.user_id);
    let mut tx = state.pool.begin().await?;
    let created = tokens::create(&mut tx, &name, Role::Client, Some(&body.user_id), Some(expires_at), &format!("api:{}", who.name))
        .await
        .map_err(|e| match e {
        tokens::TokenError::Invalid(m) => Problem::bad_request(m),
        tokens::TokenError::Db(e) => Problem::from(e),
    })?;
    audit(&mut tx, &who, "client_token.create", &body.user_id, json!({ "token_id": created.token_id, "expires_at": expires_at })).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// An admin action as recorded.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Action {
    pub id: i64,
    pub token_name: String,
    pub role: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// Every action taken through the API, newest first (admin).
#[utoipa::path(get, path = "/v1/admin/actions", tag = "admin", params(Limit), security(("bearer" = [])),
    responses((status = 200, body = Vec<Action>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn actions(State(state): State<AppState>, caller: Caller, Params(q): Params<Limit>) -> Result<Json<Vec<Action>>, Problem> {
    caller.require(Role::Admin)?;
    let rows = sqlx::query_as("SELECT id, token_name, role, action, target, detail, at FROM api_admin_actions ORDER BY id DESC LIMIT $1")
        .bind(q.value()?)
        .fetch_all(&state.pool)
        .await?;
    Ok(Json(rows))
}
