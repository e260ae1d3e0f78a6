//! Postgres: the pool, the migrations (applied under sqlx's advisory lock, so concurrent
//! workers starting together apply them once), and the classification of errors into
//! transient (retry the batch) and permanent (isolate the record).

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// The migrations of the whole fleet.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects, retrying with backoff while Postgres is unreachable, until `stop` is cancelled.
/// Every connection carries `name` as its `application_name` (unless `database.url` sets one),
/// so `pg_stat_activity` and Postgres' logs say which worker a backend serves.
pub async fn connect(settings: &Settings, name: &str, stop: &CancellationToken) -> anyhow::Result<PgPool> {
    let mut options = settings.database_options()?;
    if options.get_application_name().is_none() {
        options = options.application_name(name);
    }
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(settings.database.max_connections)
            .acquire_timeout(Duration::from_secs(settings.database.connect_timeout_secs))
            .test_before_acquire(false)
            .before_acquire(|conn, idle| Box::pin(ping_if_idle(conn, idle.idle_for)))
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Postgres unreachable");
                tokio::select! {
                    () = stop.cancelled() => anyhow::bail!("stopped while waiting for Postgres"),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => anyhow::bail!("cannot connect to database.url: {e}"),
        }
    }
}

/// A pooled connection idle longer than this is pinged before it is handed out.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Whether a connection taken from the pool's idle queue may be handed out. sqlx pings every
/// connection it takes back into the pool, so one idle for less than [`PING_AFTER_IDLE`] was
/// answering a moment ago: it is handed out without a second round trip (at a steady low load
/// a worker's transaction is a batch of one event, and that ping was one round trip in about
/// ten). One idle longer is pinged, and closed when the ping fails, so a restarted Postgres
/// costs a worker at most the connections it used in the last second: their next statement
/// fails as a transient error (a connection error), the batch is retried, and sqlx closes the
/// connection when it fails the ping it gets on its way back into the pool.
async fn ping_if_idle(conn: &mut sqlx::PgConnection, idle_for: Duration) -> sqlx::Result<bool> {
    if idle_for >= PING_AFTER_IDLE {
        sqlx::Connection::ping(conn).await?;
    }
    Ok(true)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.map_err(|e| anyhow::anyhow!("migrations failed: {e}"))
}

/// True when retrying the same work later can succeed: the connection or server failed, a
/// serialization conflict or deadlock, or the server is shutting down or out of resources.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            code.starts_with("08") // connection exception
                || code.starts_with("53") // insufficient resources
                || code.starts_with("57") // operator intervention (admin shutdown, crash)
                || code == "40001" // serialization failure
                || code == "40P01" // deadlock detected
                || code == "55P03" // lock not available
        }
        _ => false,
    }
}
