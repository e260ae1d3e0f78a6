//! `attribution`: mints referral codes and attributes new users to their referrers; a
//! background sweep ends the wait of registrations whose click never landed.

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    refstream_runtime::service::main("attribution", 9101, |svc| async move {
        let worker = Arc::new(attribution::Attribution::new(&svc.settings)?);
        // Registrations whose click never landed are decided without it once their wait is over.
        let (sweeper, pool, stop) = (worker.clone(), svc.pool.clone(), svc.stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                match sweeper.end_overdue_waits(&pool).await {
                    Ok(500..) => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ending overdue click waits failed; retrying"),
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                }
            }
        });
        refstream_runtime::consumer::run(worker, &svc.settings, svc.pool, svc.health, svc.stop).await
    })
}
