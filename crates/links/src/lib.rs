//! `links`: the edge service referral links point at. It records clicks (`GET /r/{code}`,
//! `POST /v1/clicks`), each with its `ReferralClicked` in one Postgres transaction (the outbox
//! relay publishes it), and answers deferred-attribution claims (`POST
//! /v1/attribution/claim`). Every public request is rate-limited per client address
//! (`links.rate_limit_per_ip_per_min`) and clicks per code (`links.rate_limit_per_code_per_min`),
//! both answered 429 with `Retry-After`; bodies are capped at `links.max_body_bytes` (413).
//! `/healthz` (ready while Postgres answers) and `/metrics` are served here and on
//! `metrics.listen`. It needs no broker.

pub mod api;
pub mod claim;
pub mod click;
pub mod client;
pub mod limit;
pub mod metrics;
pub mod pages;

use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use refstream_core::links::Platform;
use refstream_runtime::config::{CampaignSettings, LinksSettings};
use refstream_runtime::http::Health;
use refstream_runtime::service::Service;
use refstream_runtime::Settings;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::client::{ClientAddr, Signals};
use crate::limit::Limiter;
use crate::metrics::Rejection;

/// Keys each rate limiter tracks at most (about 100 bytes each).
const MAX_LIMITER_KEYS: usize = 100_000;
/// How often `/healthz` asks Postgres whether it answers.
const HEALTH_PROBE: Duration = Duration::from_secs(2);

/// What every handler shares.
pub struct Shared {
    pub pool: PgPool,
    pub links: LinksSettings,
    pub campaign: CampaignSettings,
    /// `attribution.click_window_days`: how long a click attributes (and `rs_click` lives).
    pub click_window: chrono::Duration,
    /// The `referral-clicked` topic.
    pub topic: String,
    hash_key: SecretString,
    pub per_ip: Limiter<IpAddr>,
    pub per_code: Limiter<String>,
    pub health: Health,
}

/// The handlers' state: cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(settings: &Settings, pool: PgPool, health: Health) -> Self {
        let l = &settings.links;
        let minute = Duration::from_secs(60);
        let now = Instant::now();
        Self(Arc::new(Shared {
            pool,
            per_ip: Limiter::new(l.rate_limit_per_ip_per_min, minute, MAX_LIMITER_KEYS, now),
            per_code: Limiter::new(l.rate_limit_per_code_per_min, minute, MAX_LIMITER_KEYS, now),
            links: l.clone(),
            campaign: settings.campaign.clone(),
            click_window: chrono::Duration::days(settings.attribution.click_window_days),
            topic: settings.topics.referral_clicked.clone(),
            hash_key: settings.fraud.hash_key.clone(),
            health,
        }))
    }

    /// The keyed hashes of a client.
    pub fn signals(&self, ip: IpAddr, user_agent: Option<&str>) -> Signals {
        Signals::hash(self.hash_key.expose_secret().as_bytes(), ip, user_agent)
    }

    /// Where `/r/{code}` sends `platform` (empty: nowhere, show the landing page).
    pub fn destination(&self, platform: Platform) -> &str {
        let d = &self.links.destinations;
        match platform {
            Platform::Ios => &d.ios,
            Platform::Android => &d.android,
            Platform::Desktop => &d.desktop,
            Platform::Web => &d.web,
        }
    }
}

/// Refuses a client over `links.rate_limit_per_ip_per_min` (per IPv4 address, per IPv6 /64).
async fn limit_per_ip(State(state): State<AppState>, ClientAddr(ip): ClientAddr, req: Request, next: Next) -> Response {
    match state.per_ip.check(client::limit_key(ip), Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(limited) if req.uri().path().starts_with("/r/") => {
            metrics::rejected(Rejection::RateLimitedIp);
            click::too_many_html(limited.retry_after_secs())
        }
        Err(limited) => ApiError::rate_limited(limited.retry_after_secs(), Rejection::RateLimitedIp).into_response(),
    }
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    let public = Router::new()
        .route("/r/{code}", get(click::follow).head(click::peek))
        .route("/v1/clicks", post(click::report))
        .route("/v1/attribution/claim", post(claim::claim))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_per_ip))
        .layer(DefaultBodyLimit::max(state.links.max_body_bytes))
        .with_state(state.clone());
    public.merge(refstream_runtime::http::routes(state.health.clone()))
}

/// Keeps `health` in step with whether Postgres answers, until `stop`.
async fn watch_database(pool: PgPool, health: Health, stop: CancellationToken) {
    loop {
        let probe = tokio::time::timeout(HEALTH_PROBE, sqlx::query("SELECT 1").execute(&pool)).await;
        match probe {
            Ok(Ok(_)) => health.ready(),
            Ok(Err(e)) => health.not_ready(format!("Postgres: {e}")),
            Err(_) => health.not_ready("Postgres does not answer"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_PROBE) => {}
        }
    }
}

/// Serves on `links.listen` until the process is asked to stop.
pub async fn run(svc: Service) -> anyhow::Result<()> {
    let addr = svc.settings.links_addr()?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on links.listen = {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    metrics::init();
    let state = AppState::new(&svc.settings, svc.pool.clone(), svc.health.clone());
    tokio::spawn(watch_database(svc.pool.clone(), svc.health.clone(), svc.stop.clone()));
    tracing::info!(listen = %bound, "links serving");
    axum::serve(listener, app(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(svc.stop.cancelled_owned())
        .await?;
    Ok(())
}
