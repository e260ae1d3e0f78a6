//! Campaign endpoints (viewer): every data campaign's current version and state, and one
//! campaign's versions with how many referrals each bound. Read-only: campaigns change through
//! `refstream campaigns apply|pause|resume`, which record who changed what.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use refstream_core::campaigns::Definition;
use serde::Serialize;
use sqlx::types::Json as Stored;
use utoipa::ToSchema;

use crate::auth::{Caller, Segment};
use crate::problem::Problem;
use crate::tokens::Role;
use crate::AppState;

/// One version of a campaign.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignVersion {
    pub campaign_id: String,
    pub version: i32,
    pub active: bool,
    pub effective_from: DateTime<Utc>,
    /// applied, paused or resumed.
    pub change: String,
    pub changed_by: String,
    /// The campaign file as applied (id, name, priority, currency, min_deposit, window_days,
    /// targeting, rewards, limits, kyc).
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    /// Referrals bound to this version.
    pub referrals: i64,
}

type Row = (String, i32, bool, DateTime<Utc>, String, String, Stored<Definition>, i64);

fn version(row: Row) -> CampaignVersion {
    let (campaign_id, version, active, effective_from, change, changed_by, definition, referrals) = row;
    CampaignVersion {
        campaign_id,
        version,
        active,
        effective_from,
        change,
        changed_by,
        definition: serde_json::to_value(&definition.0).unwrap_or_default(),
        referrals,
    }
}

/// A campaign's versions (`v`) with the referrals bound to each, counted in one grouped pass
/// over the campaign's referrals (a count per version read the whole table once per version).
fn versions_query(latest_only: bool) -> String {
    let (versions, bound_to) = if latest_only {
        ("(SELECT DISTINCT ON (campaign_id) * FROM campaign_versions ORDER BY campaign_id, version DESC)", "WHERE terms_version > 0")
    } else {
        ("campaign_versions", "WHERE campaign_id = $1")
    };
    format!(
        "SELECT v.campaign_id, v.version, v.active, v.effective_from, v.change, v.changed_by, v.definition, COALESCE(n.bound, 0) \
         FROM {versions} v LEFT JOIN (SELECT campaign_id, terms_version, count(*) AS bound FROM referrals {bound_to} \
                                      GROUP BY campaign_id, terms_version) n \
         ON n.campaign_id = v.campaign_id AND n.terms_version = v.version"
    )
}

/// Every data campaign, its current version (the default campaign of the settings is not listed).
#[utoipa::path(get, path = "/v1/admin/campaigns", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<CampaignVersion>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<CampaignVersion>>, Problem> {
    caller.require(Role::Viewer)?;
    let rows: Vec<Row> = sqlx::query_as(&format!("{} ORDER BY v.campaign_id", versions_query(true))).fetch_all(&state.pool).await?;
    Ok(Json(rows.into_iter().map(version).collect()))
}

/// One campaign's versions, oldest first.
#[utoipa::path(get, path = "/v1/admin/campaigns/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "the campaign id")),
    responses((status = 200, body = Vec<CampaignVersion>), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn show(State(state): State<AppState>, caller: Caller, Segment(id): Segment) -> Result<Json<Vec<CampaignVersion>>, Problem> {
    caller.require(Role::Viewer)?;
    let rows: Vec<Row> = sqlx::query_as(&format!("{} WHERE v.campaign_id = $1 ORDER BY v.version", versions_query(false)))
        .bind(&id)
        .fetch_all(&state.pool)
        .await?;
    if rows.is_empty() {
        return Err(Problem::not_found(format!("no campaign {id}")));
    }
    Ok(Json(rows.into_iter().map(version).collect()))
}
