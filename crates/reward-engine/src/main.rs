//! `reward-engine`: credits rewards exactly once, behind the settlement gate, and reverses them
//! on refund, chargeback or fraud found after payment.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    refstream_runtime::service::main("reward-engine", 9103, |svc| async move {
        let worker = Arc::new(reward_engine::RewardEngine::new(&svc.settings)?);
        let ends = reward_engine::gate::KafkaEndOffsets::new(&svc.settings)?;
        let d = &svc.settings.deposits;
        tokio::spawn(reward_engine::unmatched::run(
            svc.pool.clone(),
            Duration::from_secs(d.unknown_user_check_secs.max(1)),
            Duration::from_secs(d.unknown_user_hold_secs),
            svc.stop.clone(),
        ));
        tokio::spawn(reward_engine::settlement::run(worker.clone(), svc.pool.clone(), ends, svc.stop.clone()));
        refstream_runtime::consumer::run(worker, &svc.settings, svc.pool, svc.health, svc.stop).await
    })
}
