//! Replaying the analytics worker from offset zero (`analytics --replay-from-start`, or
//! `--rebuild` to also empty its tables first). What it guarantees:
//!
//! - **Only the analytics worker's state is touched**: its consumer group's committed offsets
//!   (`<kafka.group_prefix>.analytics`), its `consumer_progress` and `processed_events` rows
//!   (consumer `analytics`) and, with `--rebuild`, the `analytics_*` tables. Other workers' rows,
//!   groups and dead letters are left alone; its own dead letters stay (they are unique by
//!   position, so a replay does not letter a record twice).
//! - **Kafka first, then Postgres**: the group's offsets are moved to each partition's low
//!   watermark before any row is forgotten. If the rewind fails (a broker down, another analytics
//!   process still in the group) nothing was changed and the process exits with the error; if
//!   the process dies between the two steps, running the command again finishes the job.
//! - **The same numbers**: every fact is keyed by its natural key and scores and reviews converge
//!   to the greatest record, so applying every record again (or onto empty tables) gives the same
//!   rows, and the report reads nothing else.
//!
//! Stop every running analytics process first: a committed offset of a live group member cannot
//! be moved (the broker refuses the commit) and its progress would be written again.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use sqlx::PgPool;

use crate::WORKER;

/// The tables the analytics worker writes, emptied by [`clear_facts`].
pub const TABLES: [&str; 8] = [
    "analytics_clicks",
    "analytics_signups",
    "analytics_referrals",
    "analytics_scores",
    "analytics_reviews",
    "analytics_deposits",
    "analytics_rewards",
    "analytics_reversals",
];

/// What a replay forgot, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    pub partitions_rewound: usize,
    pub progress_rows: u64,
    pub processed_events: u64,
}

/// Moves the analytics consumer group's committed offset of every partition of `topics` back to
/// the partition's first record (its low watermark). Blocking: call it off the async runtime.
///
/// The rewind joins the group as its only member (so it works on brokers that refuse offset
/// commits from outside a group that exists, librdkafka's mock cluster among them), waits until
/// every partition is assigned to it, commits, and leaves. If another member holds partitions,
/// the assignment never covers them all and the rewind fails without committing anything.
pub fn rewind_group(settings: &Settings, topics: &[String]) -> anyhow::Result<usize> {
    let timeout = Duration::from_secs(10);
    let group = settings.group_id(WORKER);
    let mut cfg = client_config(settings);
    cfg.set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", settings.kafka.session_timeout_ms.to_string());
    for (k, v) in &settings.kafka.options {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer = cfg.create().map_err(|e| anyhow::anyhow!("cannot create a Kafka client to rewind: {e}"))?;
    let mut wanted = TopicPartitionList::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| anyhow::anyhow!("metadata of {topic}: {e}"))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else { continue };
        if t.error().is_some() || t.partitions().is_empty() {
            // No such topic yet: nothing was read from it, nothing to rewind.
            tracing::info!(topic, "no such topic: nothing to rewind");
            continue;
        }
        for p in t.partitions() {
            let (low, _high) =
                consumer.fetch_watermarks(topic, p.id(), timeout).map_err(|e| anyhow::anyhow!("watermarks of {topic}[{}]: {e}", p.id()))?;
            wanted.add_partition_offset(topic, p.id(), Offset::Offset(low.max(0)))?;
        }
    }
    let n = wanted.count();
    if n == 0 {
        return Ok(0);
    }
    let present: Vec<String> = {
        let mut t: Vec<String> = wanted.elements().iter().map(|e| e.topic().to_owned()).collect();
        t.dedup();
        t
    };
    let refs: Vec<&str> = present.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    let deadline = Instant::now() + Duration::from_millis(u64::from(settings.kafka.session_timeout_ms) * 3) + timeout;
    loop {
        // Polling runs the group protocol; records it fetches are dropped, their offsets never stored.
        let _ = consumer.poll(Duration::from_millis(200));
        let assigned = consumer.assignment()?;
        if assigned.count() >= n {
            break;
        }
        if Instant::now() > deadline {
            consumer.unsubscribe();
            anyhow::bail!(
                "cannot rewind group {group}: {} of its {n} partitions were assigned to the rewind (is another analytics process running?)",
                assigned.count()
            );
        }
    }
    let committed = consumer.commit(&wanted, CommitMode::Sync);
    consumer.unsubscribe();
    committed.map_err(|e| anyhow::anyhow!("cannot move the offsets of group {group}: {e}"))?;
    Ok(n)
}

/// Forgets the analytics worker's durable progress and event-id dedupe rows (and, when
/// `rebuild`, empties its fact tables), in one transaction. Other consumers' rows are untouched.
pub async fn reset_progress(pool: &PgPool, rebuild: bool) -> sqlx::Result<Forgotten> {
    let mut tx = pool.begin().await?;
    let progress_rows =
        sqlx::query("DELETE FROM consumer_progress WHERE consumer = $1").bind(WORKER).execute(&mut *tx).await?.rows_affected();
    let processed_events =
        sqlx::query("DELETE FROM processed_events WHERE consumer = $1").bind(WORKER).execute(&mut *tx).await?.rows_affected();
    if rebuild {
        clear_facts(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(Forgotten { partitions_rewound: 0, progress_rows, processed_events })
}

/// Empties every `analytics_*` fact table.
async fn clear_facts(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query(&format!("TRUNCATE {}", TABLES.join(", "))).execute(conn).await?;
    Ok(())
}

/// The whole replay: rewinds the group, then forgets the progress (and the facts when
/// `rebuild`). The worker started afterwards reads every topic from its first record.
pub async fn replay_from_start(settings: &Settings, pool: &PgPool, topics: Vec<String>, rebuild: bool) -> anyhow::Result<Forgotten> {
    let s = settings.clone();
    let partitions_rewound = tokio::task::spawn_blocking(move || rewind_group(&s, &topics)).await??;
    let forgotten = reset_progress(pool, rebuild).await?;
    Ok(Forgotten { partitions_rewound, ..forgotten })
}
