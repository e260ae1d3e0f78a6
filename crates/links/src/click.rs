//! Recording clicks: `GET /r/{code}` (a person following a link) and `POST /v1/clicks` (an app
//! reporting one). A click on an issued code is one `referral_clicks` row and its
//! `ReferralClicked` outbox record, committed in one transaction, so the event exists exactly
//! when the click does. A click on an expired code is recorded too (`expired = true`, for
//! analytics; it never attributes) and answered 404; a malformed or unknown code records
//! nothing. Only keyed hashes of the client's address, network and User-Agent are stored.

use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use refstream_core::events::{ReferralClicked, MAX_SHORT_TEXT};
use refstream_core::links::{mint_click_id, Platform};
use refstream_core::validate::{check_optional_text, optional_text};
use refstream_core::UserId;
use refstream_runtime::outbox::{enqueue, OutboxMessage};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::{ApiError, JsonBody};
use crate::client::{self, ClientAddr, Signals};
use crate::metrics::{self, ClickOutcome, Rejection};
use crate::{pages, AppState};

/// The owner and state of an issued code, as `referral_codes` has them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CodeOwner {
    pub code: String,
    pub referrer_id: String,
    pub campaign_id: String,
    /// `expires_at` has passed (by the database's clock).
    pub expired: bool,
}

/// Why a click could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("referral code {code} has an owner that is not a valid user id: {reason}")]
    BadOwner { code: String, reason: String },
}

/// The owner of `code` (already normalized), if it was issued.
pub async fn lookup(pool: &PgPool, code: &str) -> sqlx::Result<Option<CodeOwner>> {
    sqlx::query_as(
        "SELECT code, user_id AS referrer_id, campaign_id, COALESCE(expires_at < now(), false) AS expired \
         FROM referral_codes WHERE code = $1",
    )
    .bind(code)
    .fetch_optional(pool)
    .await
}

/// One click to record.
#[derive(Debug, Clone)]
pub struct NewClick<'a> {
    pub owner: &'a CodeOwner,
    pub platform: Platform,
    pub from_sdk: bool,
    pub signals: &'a Signals,
    pub cookie_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
}

/// Inserts the click and enqueues its `ReferralClicked` on `topic` (keyed by the referrer) in
/// one transaction; returns the new click id.
pub async fn record(pool: &PgPool, topic: &str, click: &NewClick<'_>) -> Result<String, StoreError> {
    let owner = click.owner;
    let referrer_id =
        UserId::parse(owner.referrer_id.clone()).map_err(|e| StoreError::BadOwner { code: owner.code.clone(), reason: e.to_string() })?;
    let click_id = mint_click_id();
    let mut tx = pool.begin().await?;
    let clicked_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO referral_clicks (click_id, code, referrer_id, campaign_id, platform, source, \
         ip_hash, ip_prefix_hash, ua_hash, cookie_id, device_id, expired) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING clicked_at",
    )
    .bind(&click_id)
    .bind(&owner.code)
    .bind(&owner.referrer_id)
    .bind(&owner.campaign_id)
    .bind(click.platform.as_str())
    .bind(if click.from_sdk { "sdk" } else { "link" })
    .bind(&click.signals.ip_hash)
    .bind(&click.signals.ip_prefix_hash)
    .bind(click.signals.ua_hash.as_deref())
    .bind(click.cookie_id)
    .bind(click.device_id)
    .bind(owner.expired)
    .fetch_one(&mut *tx)
    .await?;
    let event = ReferralClicked {
        event_id: Uuid::new_v4(),
        click_id: click_id.clone(),
        code: owner.code.clone(),
        referrer_id,
        campaign_id: owner.campaign_id.clone(),
        platform: click.platform,
        from_sdk: click.from_sdk,
        expired: owner.expired,
        occurred_at: clicked_at,
    };
    enqueue(&mut tx, &[OutboxMessage::record(topic, &owner.referrer_id, &event)]).await?;
    tx.commit().await?;
    Ok(click_id)
}

/// `url` with `click_id=<id>` added to its query (`?` or `&` as the URL needs). Click ids are
/// URL-safe by construction (letters, digits, `_`); destinations have no fragment (checked
/// when the settings load).
pub fn with_click_id(url: &str, click_id: &str) -> String {
    let sep = match url.find('?') {
        None => "?",
        Some(_) if url.ends_with('?') || url.ends_with('&') => "",
        Some(_) => "&",
    };
    format!("{url}{sep}click_id={click_id}")
}

/// An HTML answer that no cache keeps.
fn html(status: StatusCode, body: String) -> Response {
    (status, [(CACHE_CONTROL, "no-store"), (CONTENT_SECURITY_POLICY, pages::CSP)], Html(body)).into_response()
}

/// The 429 page of a limited `/r/` request.
pub fn too_many_html(retry_after_secs: u64) -> Response {
    let mut r = html(StatusCode::TOO_MANY_REQUESTS, pages::too_many_requests(retry_after_secs));
    r.headers_mut().insert(axum::http::header::RETRY_AFTER, retry_after_secs.into());
    r
}

fn unavailable_html() -> Response {
    metrics::rejected(Rejection::Unavailable);
    let mut r = html(StatusCode::SERVICE_UNAVAILABLE, pages::unavailable());
    r.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn invalid_html() -> Response {
    metrics::rejected(Rejection::UnknownCode);
    html(StatusCode::NOT_FOUND, pages::invalid_link())
}

/// `GET /r/{code}`: records the click and sends the browser on (302 to the platform's
/// destination with `click_id`, or the landing page when the platform has none), setting
/// `rs_click` and, for a browser without one, `rs_cid`.
pub async fn follow(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
) -> Response {
    let Some(code) = path.ok().and_then(|Path(raw)| refstream_core::code::normalize(&raw)) else {
        return invalid_html();
    };
    let owner = match lookup(&state.pool, &code).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return invalid_html(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up a referral code");
            return unavailable_html();
        }
    };
    if let Err(limited) = state.per_code.check(owner.code.clone(), Instant::now()) {
        metrics::rejected(Rejection::RateLimitedCode);
        return too_many_html(limited.retry_after_secs());
    }
    let user_agent = client::user_agent(&headers);
    let platform = Platform::from_user_agent(user_agent.unwrap_or_default());
    let signals = state.signals(ip, user_agent);
    let known_browser = client::cookie(&headers, client::BROWSER_COOKIE).filter(|c| client::is_browser_id(c)).map(str::to_owned);
    // An expired link sets no cookie, so it mints no browser id either.
    let (browser_id, minted) = match known_browser {
        Some(id) => (Some(id), false),
        None if owner.expired => (None, false),
        None => (Some(client::mint_browser_id()), true),
    };
    let click = NewClick { owner: &owner, platform, from_sdk: false, signals: &signals, cookie_id: browser_id.as_deref(), device_id: None };
    let click_id = match record(&state.pool, &state.topic, &click).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, code = %owner.code, "cannot record a click");
            return unavailable_html();
        }
    };
    tracing::info!(click_id = %click_id, code = %owner.code, platform = platform.as_str(), expired = owner.expired, "click recorded");
    if owner.expired {
        metrics::click(platform, ClickOutcome::Expired);
        return html(StatusCode::NOT_FOUND, pages::expired_link());
    }

    let secure = state.links.cookie_secure;
    let mut cookies = vec![client::set_cookie(client::CLICK_COOKIE, &click_id, state.click_window.num_seconds(), secure)];
    if let (true, Some(id)) = (minted, &browser_id) {
        cookies.push(client::set_cookie(client::BROWSER_COOKIE, id, client::BROWSER_COOKIE_MAX_AGE_SECS, secure));
    }
    let destination = state.destination(platform);
    let mut response = if destination.is_empty() {
        metrics::click(platform, ClickOutcome::Landing);
        let web = &state.links.destinations.web;
        let continue_to = (!web.is_empty()).then(|| with_click_id(web, &click_id));
        let landing = pages::Landing { code: &owner.code, campaign: &state.campaign, continue_to: continue_to.as_deref() };
        html(StatusCode::OK, pages::landing(&landing))
    } else {
        let Ok(location) = HeaderValue::try_from(with_click_id(destination, &click_id)) else {
            tracing::error!(platform = platform.as_str(), "the destination is not a valid Location header value");
            return unavailable_html();
        };
        metrics::click(platform, ClickOutcome::Redirect);
        (StatusCode::FOUND, [(CACHE_CONTROL, HeaderValue::from_static("no-store")), (LOCATION, location)]).into_response()
    };
    for c in cookies {
        if let Ok(v) = HeaderValue::try_from(c) {
            response.headers_mut().append(SET_COOKIE, v);
        }
    }
    response
}

/// `HEAD /r/{code}`: link checkers and chat apps building a preview ask before anyone clicks;
/// they get an empty 200 and nothing is recorded (without this route axum would answer HEAD
/// with the GET handler and record a click per preview).
pub async fn peek() -> impl IntoResponse {
    (StatusCode::OK, [(CACHE_CONTROL, "no-store")])
}

/// `POST /v1/clicks` body. Fields not listed are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ClickRequest {
    pub code: String,
    /// `ios`, `android`, `desktop` or `web`; else guessed from the User-Agent.
    pub platform: Option<String>,
    pub device_id: Option<String>,
    /// The User-Agent of the browser or app that followed the link; else the request's.
    pub user_agent: Option<String>,
    /// The browser id; else the request's `rs_cid` cookie, if any.
    pub cookie_id: Option<String>,
}

/// The most characters of a reported User-Agent (only its hash is kept).
const MAX_USER_AGENT: usize = 1024;

/// `platform` as given, or guessed from `user_agent`.
pub fn platform_of(given: Option<&str>, user_agent: Option<&str>) -> Result<Platform, ApiError> {
    match given.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => Platform::parse(p)
            .ok_or_else(|| ApiError::invalid("invalid_platform", "field `platform`: must be one of ios, android, desktop, web")),
        None => Ok(Platform::from_user_agent(user_agent.unwrap_or_default())),
    }
}

/// The reported User-Agent, checked, or the request's.
pub fn reported_user_agent<'a>(given: Option<&'a str>, headers: &'a HeaderMap) -> Result<Option<&'a str>, ApiError> {
    match given.map(str::trim).filter(|ua| !ua.is_empty()) {
        Some(ua) => {
            check_optional_text("user_agent", ua, MAX_USER_AGENT).map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
            Ok(Some(ua))
        }
        None => Ok(client::user_agent(headers)),
    }
}

/// The first characters of what a client typed, to quote it in an error.
fn quoted(typed: &str) -> String {
    typed.chars().take(32).collect()
}

/// `POST /v1/clicks`: records a click an app or SDK reports; 201 `{"click_id": …}`.
pub async fn report(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ClickRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let invalid = |e: refstream_core::validate::FieldError| ApiError::invalid("invalid_field", e.to_string());
    let device_id = optional_text("device_id", req.device_id, MAX_SHORT_TEXT).map_err(invalid)?;
    if device_id.as_deref().is_some_and(refstream_core::links::is_placeholder_device) {
        return Err(ApiError::invalid(
            "invalid_field",
            "field `device_id`: a placeholder id (all zeros, unknown, null) identifies no device",
        ));
    }
    let cookie_id = optional_text("cookie_id", req.cookie_id, MAX_SHORT_TEXT).map_err(invalid)?;
    if cookie_id.as_deref().is_some_and(|c| !client::is_browser_id(c)) {
        return Err(ApiError::invalid("invalid_field", "field `cookie_id`: not a browser id this service issued (the `rs_cid` cookie)"));
    }
    let cookie_id =
        cookie_id.or_else(|| client::cookie(&headers, client::BROWSER_COOKIE).filter(|c| client::is_browser_id(c)).map(str::to_owned));
    let user_agent = reported_user_agent(req.user_agent.as_deref(), &headers)?;
    let platform = platform_of(req.platform.as_deref(), user_agent)?;
    let code = refstream_core::code::normalize(&req.code).ok_or_else(|| ApiError::unknown_code(&quoted(&req.code)))?;
    let owner = match lookup(&state.pool, &code).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return Err(ApiError::unknown_code(&code)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up a referral code");
            return Err(ApiError::unavailable());
        }
    };
    if let Err(limited) = state.per_code.check(owner.code.clone(), Instant::now()) {
        return Err(ApiError::rate_limited(limited.retry_after_secs(), Rejection::RateLimitedCode));
    }
    let signals = state.signals(ip, user_agent);
    let click = NewClick {
        owner: &owner,
        platform,
        from_sdk: true,
        signals: &signals,
        cookie_id: cookie_id.as_deref(),
        device_id: device_id.as_deref(),
    };
    let click_id = record(&state.pool, &state.topic, &click).await.map_err(|e| {
        tracing::warn!(error = %e, code = %owner.code, "cannot record a click");
        ApiError::unavailable()
    })?;
    tracing::info!(click_id = %click_id, code = %owner.code, platform = platform.as_str(), expired = owner.expired, sdk = true, "click recorded");
    if owner.expired {
        metrics::click(platform, ClickOutcome::Expired);
        return Err(ApiError::expired_code(&owner.code));
    }
    metrics::click(platform, ClickOutcome::Sdk);
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "click_id": click_id }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_click_id_joins_the_query_the_url_has() {
        assert_eq!(with_click_id("https://apps.apple.com/app/id1", "c_1"), "https://apps.apple.com/app/id1?click_id=c_1");
        assert_eq!(with_click_id("https://x.test/s?ref=a", "c_1"), "https://x.test/s?ref=a&click_id=c_1");
        assert_eq!(with_click_id("https://x.test/s?", "c_1"), "https://x.test/s?click_id=c_1");
        assert_eq!(with_click_id("https://x.test/s?a=1&", "c_1"), "https://x.test/s?a=1&click_id=c_1");
    }

    #[test]
    fn a_given_platform_wins_over_the_user_agent() {
        let iphone = Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)");
        assert_eq!(platform_of(Some("android"), iphone).unwrap(), Platform::Android);
        assert_eq!(platform_of(None, iphone).unwrap(), Platform::Ios);
        assert_eq!(platform_of(Some(" "), None).unwrap(), Platform::Web);
        assert_eq!(platform_of(Some("palm"), iphone).unwrap_err().error, "invalid_platform");
    }
}
