//! The operations endpoint: `/metrics` (Prometheus text) and `/healthz` (200 when the worker
//! is ready: connected and not retrying a failure; 503 with the reason otherwise).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Whether the worker can do its job right now, and why not.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// Starts not ready until the worker says otherwise.
    pub fn starting() -> Self {
        Self(Arc::new(Mutex::new(Some("starting".into()))))
    }

    pub fn ready(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn not_ready(&self, why: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.into());
    }

    /// `None` when ready, the reason otherwise.
    pub fn problem(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn healthz(State(health): State<Health>) -> (StatusCode, String) {
    match health.problem() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn metrics() -> String {
    crate::metrics::render()
}

/// `/healthz` and `/metrics` as a router of their own, for a service that also serves them
/// beside its own routes.
pub fn routes(health: Health) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(health)
}

/// Binds `addr` and serves until `stop` is cancelled. Binding fails at start, naming the address.
pub async fn serve(addr: SocketAddr, health: Health, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on metrics.listen = {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = routes(health);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    });
    Ok(bound)
}
