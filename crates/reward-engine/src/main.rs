//! `reward-engine`: credits rewards exactly once and reverses them on refund or chargeback.

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    refstream_runtime::service::main("reward-engine", 9103, |svc| async move {
        let worker = Arc::new(reward_engine::RewardEngine::new(&svc.settings)?);
        refstream_runtime::consumer::run(worker, &svc.settings, svc.pool, svc.health, svc.stop).await
    })
}
