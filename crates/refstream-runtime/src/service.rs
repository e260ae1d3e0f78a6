//! The life of a refstream process, shared by every binary: load and check configuration
//! (a bad setting exits with status 2 and a message naming it), start telemetry, the
//! operations endpoint and the signal handler, connect to Postgres and migrate, run, and
//! report how it ended.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::Health;

/// What a running service is handed.
pub struct Service {
    pub settings: Settings,
    pub pool: PgPool,
    pub health: Health,
    pub stop: CancellationToken,
}

/// The config file named by `--config <path>` on the command line, if any.
fn config_arg() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// Runs a service named `name` whose operations endpoint defaults to `127.0.0.1:default_port`.
pub fn main<F, Fut>(name: &'static str, default_port: u16, body: F) -> ExitCode
where
    F: FnOnce(Service) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match Settings::load(config_arg().as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics_addr = match settings.metrics_addr(default_port) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&settings.telemetry);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let stop = crate::shutdown::on_signal(settings.shutdown_deadline());
        let health = Health::starting();
        let bound = crate::http::serve(metrics_addr, health.clone(), stop.clone()).await?;
        tracing::info!(service = name, metrics = %bound, "started");
        let pool = crate::db::connect(&settings, name, &stop).await?;
        crate::db::migrate(&pool).await?;
        body(Service { settings, pool, health, stop }).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => {
            tracing::info!(service = name, "exited cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(service = name, error = %format!("{e:#}"), "exited with an error");
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
