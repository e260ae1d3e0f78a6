//! `outbox-relay`: publishes the outbox to Kafka, one active relay per shard.

use std::process::ExitCode;

fn main() -> ExitCode {
    refstream_runtime::service::main("outbox-relay", 9104, |svc| async move {
        outbox_relay::run(&svc.settings, svc.pool, svc.health, svc.stop).await
    })
}
