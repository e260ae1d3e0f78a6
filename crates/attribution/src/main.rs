//! `attribution`: mints referral codes and attributes new users to their referrers.

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    refstream_runtime::service::main("attribution", 9101, |svc| async move {
        let worker = Arc::new(attribution::Attribution::new(&svc.settings)?);
        refstream_runtime::consumer::run(worker, &svc.settings, svc.pool, svc.health, svc.stop).await
    })
}
