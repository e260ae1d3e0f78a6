//! Prometheus metrics, registered once per process in the default registry. Labels are few
//! and bounded: the worker, the topic, and a reason label drawn from a fixed set.

use std::sync::LazyLock;

use prometheus::{register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec, IntCounterVec, IntGaugeVec};

/// Records received from Kafka, by worker and topic.
pub static CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("refstream_records_consumed_total", "Records received from Kafka", &["worker", "topic"]).expect("metric")
});
/// Records whose effects were committed (first delivery of their event id).
pub static APPLIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("refstream_records_applied_total", "Records whose effects were committed", &["worker", "topic"])
        .expect("metric")
});
/// Records skipped because their event id was already processed.
pub static DEDUPLICATED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("refstream_records_deduplicated_total", "Redeliveries skipped by event-id dedupe", &["worker", "topic"])
        .expect("metric")
});
/// Event ids forgotten: `processed_events` rows older than `kafka.dedupe_retention_hours`.
pub static PRUNED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "refstream_processed_events_pruned_total",
        "Event ids deleted from processed_events after kafka.dedupe_retention_hours",
        &["worker"]
    )
    .expect("metric")
});
/// Records turned into dead letters, by reason label.
pub static DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "refstream_records_dead_lettered_total",
        "Records sent to a dead-letter topic",
        &["worker", "topic", "reason"]
    )
    .expect("metric")
});
/// Transient failures that made a batch retry.
pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("refstream_batch_retries_total", "Batches retried after a transient failure", &["worker"]).expect("metric")
});
/// Records per committed batch.
pub static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "refstream_batch_records",
        "Records per committed batch",
        &["worker"],
        vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]
    )
    .expect("metric")
});
/// Partitions waiting for a slot to apply their batch in: a worker whose partitions often wait
/// is bound by its database (or by `kafka.batches_in_flight`).
pub static BATCHES_WAITING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "refstream_batches_waiting",
        "Partitions whose records wait for one of the worker's kafka.batches_in_flight slots",
        &["worker"]
    )
    .expect("metric")
});
/// Seconds from the first record of a batch received to its commit.
pub static BATCH_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "refstream_batch_seconds",
        "Seconds to apply and commit one batch",
        &["worker"],
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    )
    .expect("metric")
});
/// Consumer lag per partition: high watermark minus the next offset to process.
pub static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("refstream_consumer_lag", "Records behind the high watermark", &["worker", "topic", "partition"])
        .expect("metric")
});
/// Rows waiting in the outbox.
pub static OUTBOX_BACKLOG: LazyLock<IntGaugeVec> =
    LazyLock::new(|| register_int_gauge_vec!("refstream_outbox_backlog", "Rows waiting in the outbox", &["shard"]).expect("metric"));
/// Age in seconds of the oldest outbox row.
pub static OUTBOX_OLDEST_AGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("refstream_outbox_oldest_age_seconds", "Age of the oldest outbox row", &["shard"]).expect("metric")
});
/// Outbox rows published to Kafka.
pub static PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("refstream_outbox_published_total", "Outbox rows published and deleted", &["topic"]).expect("metric")
});
/// Business outcomes (rewards granted, referrals rejected, …).
pub static OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("refstream_outcomes_total", "Business outcomes by kind", &["worker", "outcome"]).expect("metric")
});

/// The text exposition of every registered metric.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Payouts whose hold ended and that wait for the pipeline in front of the fraud scorer.
pub static GATE_WAITING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "refstream_settlement_waiting_payouts",
        "Payouts whose hold ended, waiting on the scorer's progress, by the stage they wait on",
        &["stage"]
    )
    .expect("metric")
});
/// Seconds the oldest waiting payout has waited since its hold ended.
pub static GATE_WAIT_SECONDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("refstream_settlement_gate_wait_seconds", "Age of the oldest barrier not yet open", &["stage"]).expect("metric")
});
/// Records a gating worker must still apply before the oldest barrier opens.
pub static GATE_BEHIND: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "refstream_settlement_gate_behind_records",
        "Records the worker gating the oldest barrier must still apply",
        &["worker"]
    )
    .expect("metric")
});
/// 1 when payouts have waited on the gate longer than `settlement.gate_alert_secs`.
pub static GATE_STALLED: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "refstream_settlement_gate_stalled",
        "1 when payouts wait on a lagging scorer (or attribution, or relay) longer than settlement.gate_alert_secs"
    )
    .expect("metric")
});
/// Durable progress of a worker per partition, as the settlement gate reads it.
pub static PROGRESS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "refstream_consumer_progress_offset",
        "Next offset a worker will apply, as committed in consumer_progress",
        &["worker", "topic", "partition"]
    )
    .expect("metric")
});
