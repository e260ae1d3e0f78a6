//! `analytics`: keeps the referral funnel's facts from the public topics.
//!
//! `analytics --replay-from-start` first rewinds its consumer group to every partition's first
//! record and forgets its progress and dedupe rows, then runs as usual: every record is read and
//! applied again, and the numbers stay the same. `--rebuild` does the same after emptying the
//! `analytics_*` tables. Stop the running analytics processes before either.

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rebuild = args.iter().any(|a| a == "--rebuild");
    let replay = rebuild || args.iter().any(|a| a == "--replay-from-start");
    refstream_runtime::service::main("analytics", 9106, move |svc| async move {
        let worker = Arc::new(analytics::Analytics::new(&svc.settings)?);
        if replay {
            let topics = analytics::topics(&svc.settings.topics);
            let forgot = analytics::replay_from_start(&svc.settings, &svc.pool, topics, rebuild).await?;
            tracing::info!(
                partitions = forgot.partitions_rewound,
                progress_rows = forgot.progress_rows,
                processed_events = forgot.processed_events,
                rebuild,
                "replaying from the first record of every partition"
            );
        }
        refstream_runtime::consumer::run(worker, &svc.settings, svc.pool, svc.health, svc.stop).await
    })
}
