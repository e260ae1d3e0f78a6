//! Graceful shutdown: SIGTERM or ctrl-c cancels one token; workers finish the batch in hand,
//! commit, store offsets and return. A second signal, or the deadline, ends the process.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Cancels the returned token on the first SIGTERM or ctrl-c; exits the process at once on a
/// second signal, or `deadline` after the first if the process is still running.
pub fn on_signal(deadline: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(deadline_secs = deadline.as_secs(), "shutdown requested: draining");
        t.cancel();
        tokio::select! {
            () = wait_for_signal() => tracing::warn!("second signal: exiting now"),
            () = tokio::time::sleep(deadline) => tracing::error!("shutdown deadline passed: exiting"),
        }
        std::process::exit(1);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
