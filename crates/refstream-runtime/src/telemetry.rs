//! Logging: one subscriber per process, text or JSON lines on stderr, filtered by
//! `RUST_LOG` when set and by `telemetry.level` otherwise.

use tracing_subscriber::EnvFilter;

use crate::config::TelemetrySettings;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = if settings.format == "json" { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}
