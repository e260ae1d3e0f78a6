//! Deferred attribution: `POST /v1/attribution/claim`, an app's first open asking which click
//! brought it. A recorded, unexpired click id made within `attribution.click_window_days` is an
//! exact match; otherwise the clicks from the same client address within
//! `links.probabilistic_window_secs` before the claim are scored by
//! `refstream_core::links::match_signals`, and a match at or above
//! `links.probabilistic_min_confidence_pct` is probabilistic. Every match is a `click_claims`
//! row (the attribution worker reads it to mark the referral), so none is silent; "none" is
//! only counted. Confidence never passes through floating-point arithmetic.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use refstream_core::links::{confidence_text, is_click_id, match_signals, Candidate, Platform, SignalMatch};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Number, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::{ApiError, JsonBody};
use crate::click::{platform_of, reported_user_agent};
use crate::client::{ClientAddr, Signals};
use crate::metrics;
use crate::AppState;

/// The most clicks from one address a claim weighs (newest first).
pub const MAX_CANDIDATES: i64 = 50;

/// A click may be stamped this long after the claim (clocks of app and server differ).
const CLOCK_SKEW: Duration = Duration::seconds(5);

/// `POST /v1/attribution/claim` body. Fields not listed are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ClaimRequest {
    /// A click id the app got (install referrer, clipboard); absent or unknown: signals only.
    pub click_id: Option<String>,
    /// `ios`, `android`, `desktop` or `web`; else guessed from the User-Agent.
    pub platform: Option<String>,
    /// The app's User-Agent; else the request's.
    pub user_agent: Option<String>,
    /// When the app was first opened (RFC 3339); default now, and never later than now.
    pub occurred_at: Option<DateTime<Utc>>,
}

/// How a claim matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Exact { click_id: String },
    Probabilistic(SignalMatch),
    None,
}

impl Answer {
    fn label(&self) -> &'static str {
        match self {
            Self::Exact { .. } => "exact",
            Self::Probabilistic(_) => "probabilistic",
            Self::None => "none",
        }
    }

    /// The JSON answer.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Exact { click_id } => json!({ "click_id": click_id, "match": "exact", "confidence": confidence_number(100) }),
            Self::Probabilistic(m) => json!({
                "click_id": m.click_id,
                "match": "probabilistic",
                "confidence": confidence_number(m.confidence_pct),
                "candidates": m.candidates,
            }),
            Self::None => json!({ "click_id": null, "match": "none" }),
        }
    }
}

/// `pct` percent as a JSON number (`90` → `0.9`), from its decimal text.
pub fn confidence_number(pct: u8) -> Number {
    confidence_text(pct).parse().unwrap_or_else(|_| Number::from(0))
}

/// The click `click_id`, if recorded, unexpired and made at or after `since`.
async fn exact(pool: &PgPool, click_id: &str, since: DateTime<Utc>) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT click_id FROM referral_clicks WHERE click_id = $1 AND NOT expired AND clicked_at >= $2")
        .bind(click_id)
        .bind(since)
        .fetch_optional(pool)
        .await
}

#[derive(sqlx::FromRow)]
struct ClickRow {
    click_id: String,
    code: String,
    clicked_at: DateTime<Utc>,
    ua_hash: Option<String>,
    platform: Option<String>,
}

/// Unexpired clicks from the client's address made between `from` and `to`, newest first.
async fn candidates(pool: &PgPool, signals: &Signals, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<Vec<Candidate>> {
    let rows: Vec<ClickRow> = sqlx::query_as(
        "SELECT click_id, code, clicked_at, ua_hash, platform FROM referral_clicks \
         WHERE ip_hash = $1 AND NOT expired AND clicked_at >= $2 AND clicked_at <= $3 \
         ORDER BY clicked_at DESC LIMIT $4",
    )
    .bind(&signals.ip_hash)
    .bind(from)
    .bind(to)
    .bind(MAX_CANDIDATES)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Candidate {
            same_user_agent: r.ua_hash.is_some() && r.ua_hash == signals.ua_hash,
            platform: r.platform.as_deref().and_then(Platform::parse),
            click_id: r.click_id,
            code: r.code,
            clicked_at: r.clicked_at,
        })
        .collect())
}

/// Records a match in `click_claims`.
async fn record(pool: &PgPool, answer: &Answer, platform: Platform, signals: &Signals) -> sqlx::Result<()> {
    let (click_id, pct, candidates) = match answer {
        Answer::Exact { click_id } => (click_id, 100, 1),
        Answer::Probabilistic(m) => (&m.click_id, m.confidence_pct, i32::try_from(m.candidates).unwrap_or(i32::MAX)),
        Answer::None => return Ok(()),
    };
    sqlx::query(
        "INSERT INTO click_claims (claim_id, click_id, method, confidence, candidates, platform, ip_hash, ua_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(Uuid::new_v4())
    .bind(click_id)
    .bind(answer.label())
    .bind(Decimal::new(i64::from(pct), 2))
    .bind(candidates)
    .bind(platform.as_str())
    .bind(&signals.ip_hash)
    .bind(signals.ua_hash.as_deref())
    .execute(pool)
    .await?;
    Ok(())
}

/// Decides a claim made at `at` from `platform` with `signals`.
async fn decide(
    state: &AppState,
    click_id: Option<&str>,
    platform: Platform,
    at: DateTime<Utc>,
    signals: &Signals,
) -> sqlx::Result<Answer> {
    if let Some(id) = click_id.map(str::trim).filter(|id| is_click_id(id)) {
        if let Some(click_id) = exact(&state.pool, id, at - state.click_window).await? {
            return Ok(Answer::Exact { click_id });
        }
    }
    let window = Duration::seconds(state.links.probabilistic_window_secs);
    let found = candidates(&state.pool, signals, at - window, at + CLOCK_SKEW).await?;
    Ok(match match_signals(&found, Some(platform), at, window, state.links.probabilistic_min_confidence_pct) {
        Some(m) => Answer::Probabilistic(m),
        None => Answer::None,
    })
}

/// `POST /v1/attribution/claim`.
pub async fn claim(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ClaimRequest>,
) -> Result<Json<Value>, ApiError> {
    let user_agent = reported_user_agent(req.user_agent.as_deref(), &headers)?;
    let platform = platform_of(req.platform.as_deref(), user_agent)?;
    let now = Utc::now();
    let at = req.occurred_at.map_or(now, |t| t.min(now));
    let signals = state.signals(ip, user_agent);
    let answered = async {
        let answer = decide(&state, req.click_id.as_deref(), platform, at, &signals).await?;
        record(&state.pool, &answer, platform, &signals).await?;
        Ok::<_, sqlx::Error>(answer)
    };
    let answer = answered.await.map_err(|e| {
        tracing::warn!(error = %e, "cannot answer an attribution claim");
        ApiError::unavailable()
    })?;
    metrics::claim(answer.label());
    match &answer {
        Answer::Exact { click_id } => tracing::info!(click_id = %click_id, "claim matched exactly"),
        Answer::Probabilistic(m) => {
            tracing::info!(click_id = %m.click_id, confidence_pct = m.confidence_pct, candidates = m.candidates, "claim matched by signals")
        }
        Answer::None => tracing::info!(platform = platform.as_str(), "claim matched nothing"),
    }
    Ok(Json(answer.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_is_a_json_number_without_float_arithmetic() {
        assert_eq!(serde_json::to_string(&confidence_number(90)).unwrap(), "0.9");
        assert_eq!(serde_json::to_string(&confidence_number(45)).unwrap(), "0.45");
        assert_eq!(serde_json::to_string(&confidence_number(100)).unwrap(), "1.0");
    }

    #[test]
    fn answers_have_their_json_shapes() {
        assert_eq!(Answer::None.to_json().to_string(), r#"{"click_id":null,"match":"none"}"#);
        assert_eq!(
            Answer::Exact { click_id: "c_1".into() }.to_json().to_string(),
            r#"{"click_id":"c_1","match":"exact","confidence":1.0}"#
        );
        let m = SignalMatch { click_id: "c_2".into(), confidence_pct: 60, candidates: 3 };
        assert_eq!(
            Answer::Probabilistic(m).to_json().to_string(),
            r#"{"click_id":"c_2","match":"probabilistic","confidence":0.6,"candidates":3}"#
        );
    }
}
