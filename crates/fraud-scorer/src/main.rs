//! `fraud-scorer`: scores every referral and decides APPROVE, REVIEW or REJECT.

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    refstream_runtime::service::main("fraud-scorer", 9102, |svc| async move {
        let worker = Arc::new(fraud_scorer::FraudScorer::new(&svc.settings)?);
        refstream_runtime::consumer::run(worker, &svc.settings, svc.pool, svc.health, svc.stop).await
    })
}
