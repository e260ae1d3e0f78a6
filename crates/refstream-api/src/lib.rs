//! refstream's HTTP API (`refstream serve`): client endpoints for a user's own code, referrals
//! and rewards; admin endpoints for the funnel, the leaderboard, the review queue, explain, dead
//! letters, the summary and campaigns; a dashboard page; and the OpenAPI 3.1 document at `/openapi.json`.
//!
//! # What it guarantees
//! - Every route is declared once, with its OpenAPI description, and registered from that
//!   declaration ([`router`]): the document lists every route the server has.
//! - Every endpoint but `/healthz`, `/openapi.json`, `/` and `/dashboard` (which hold no data)
//!   needs a bearer token ([`tokens`]): 401 without a valid one, 403 without the role. Errors
//!   are RFC 9457 problems; request bodies are bounded (`api.max_body_bytes`, 413 beyond).
//! - Decisions go through [`ops`], the code the command line uses: the same rules whichever door.
//!   Every admin action is recorded with the token that took it.
//! - No endpoint returns an IP address or an email (refstream keeps them only as keyed hashes,
//!   and in dead letters' raw payloads, which no endpoint shows); client endpoints return no id
//!   of another user, nor the referral and reward ids derived from one.

pub mod auth;
pub mod ops;
pub mod problem;
pub mod routes;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use refstream_runtime::Settings;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::{Modify, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::problem::Problem;
use crate::routes::{admin, campaigns, client, meta};

/// What every handler is given.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// The OpenAPI document, as served.
    pub openapi: Arc<String>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "refstream API", description = "Referral codes, funnel, review queue and rewards of a refstream deployment."),
    modifiers(&BearerScheme),
    tags((name = "client", description = "A user's own code, referrals and rewards (client token)"),
         (name = "admin", description = "Operators: viewer, reviewer and admin tokens"),
         (name = "meta", description = "Health, this document and the dashboard (no token)"))
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme =
            HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("a token from `refstream api-token create`")).build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The routes and their OpenAPI document, built from the same declarations.
pub fn router() -> (Router<AppState>, OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(meta::root))
        .routes(routes!(meta::healthz))
        .routes(routes!(meta::openapi))
        .routes(routes!(meta::dashboard))
        .routes(routes!(client::my_code))
        .routes(routes!(client::my_referrals))
        .routes(routes!(client::my_rewards))
        .routes(routes!(admin::funnel))
        .routes(routes!(admin::leaderboard))
        .routes(routes!(admin::summary))
        .routes(routes!(admin::reviews))
        .routes(routes!(admin::approve))
        .routes(routes!(admin::reject))
        .routes(routes!(admin::explain))
        .routes(routes!(admin::dead_letter_list))
        .routes(routes!(admin::dead_letter_replay))
        .routes(routes!(admin::client_token))
        .routes(routes!(admin::actions))
        .routes(routes!(campaigns::list))
        .routes(routes!(campaigns::show))
        .split_for_parts()
}

async fn not_found() -> Problem {
    Problem::not_found("no such route: see /openapi.json")
}

async fn method_not_allowed() -> Problem {
    Problem::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "this route does not take that method: see /openapi.json")
}

/// Answers hold personal data and tokens: never cached, never sniffed into another type.
async fn private_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The OpenAPI document alone (`refstream openapi`).
pub fn openapi() -> OpenApi {
    router().1
}

/// Serves the API on `api.listen` until `stop`; `bound` receives the address it listens on.
pub async fn serve(settings: Settings, pool: PgPool, stop: CancellationToken) -> anyhow::Result<()> {
    let addr: SocketAddr = settings.api_addr()?;
    let limit = settings.api.max_body_bytes;
    let (routes, doc) = router();
    let state = AppState { pool, settings: Arc::new(settings), openapi: Arc::new(doc.to_json()?) };
    let app = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(private_headers))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("api.listen {addr}: {e}"))?;
    tracing::info!(listen = %listener.local_addr()?, "api serving");
    println!("refstream api listening on http://{}/ (dashboard at /dashboard, OpenAPI at /openapi.json)", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    Ok(())
}
