//! The consumer runtime every worker runs (DESIGN §4). It guarantees:
//! - records of one partition are applied in offset order, a batch of one partition in ONE
//!   Postgres transaction, together with its dead letters, its outbox rows and the worker's
//!   durable progress on that partition (`consumer_progress`); different partitions are applied
//!   concurrently, each by its own task, at most `kafka.batches_in_flight` at once;
//! - an event id is applied at most once per worker (`processed_events`), so redelivery after
//!   a crash, a rebalance or a replay is a no-op; that memory lasts `kafka.dedupe_retention_hours`
//!   (a task beside the poll loop deletes older ids, [`prune_processed_events`]), which must be
//!   at least the input topics' retention: an older record is no longer there to be redelivered,
//!   and one redelivered anyway (a group's offsets reset by hand) is stopped only by the
//!   worker's own keys;
//! - an offset is stored only after the transaction that covers it committed, never past an
//!   unprocessed record, and never behind an offset already stored; stored offsets are
//!   committed on an interval, on revoke and at shutdown;
//! - a transient failure (database or broker) retries the partition's records with backoff
//!   without moving past them, the process stays up and `/healthz` says not ready;
//! - a record the database refuses for what it is (not for being unreachable) is isolated by
//!   retrying the batch record by record, and becomes a dead letter: the partition keeps flowing.
//!
//! Workers supply only the decoding of a record and the effects of a batch ([`Worker`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, Notify, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Settings;
use crate::db::is_transient;
use crate::dead_letter::{self, DeadLetter};
use crate::http::Health;
use crate::metrics;

/// How long an idle, error-free poll must last before a worker that reported a broker error
/// reports itself ready again.
const IDLE_READY_AFTER: Duration = Duration::from_secs(5);

/// How often a worker deletes its event ids older than `kafka.dedupe_retention_hours`.
const PRUNE_EVERY: Duration = Duration::from_secs(300);

/// Rows one statement of [`prune_processed_events`] deletes at most.
const PRUNE_CHUNK: i64 = 5000;

/// A record as received, before decoding.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// Why a record will not be applied: becomes a dead letter.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub label: &'static str,
    pub reason: String,
}

impl From<crate::codec::DecodeError> for Rejection {
    fn from(e: crate::codec::DecodeError) -> Self {
        Self { label: e.label(), reason: e.to_string() }
    }
}

/// The transaction a batch is applied in, and what the worker asks of the runtime.
pub struct Batch<'c> {
    pub conn: &'c mut PgConnection,
    rejected: Vec<(usize, Rejection)>,
    wake: Option<Arc<Notify>>,
}

impl Batch<'_> {
    /// Turns the event at `index` (of the slice given to [`Worker::apply`]) into a dead letter,
    /// committed with the batch.
    pub fn reject(&mut self, index: usize, rejection: Rejection) {
        self.rejected.push((index, rejection));
    }

    /// Wakes `notify` once the batch has committed, so that the task it wakes finds what the
    /// batch wrote (woken before the commit, it would look too early and sleep again).
    pub fn wake_after_commit(&mut self, notify: Arc<Notify>) {
        self.wake = Some(notify);
    }
}

/// Advisory locks a batch takes in its first statement ([`Worker::batch_locks`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchLocks {
    /// The seed of `hashtextextended`: the worker's lock namespace.
    pub seed: i64,
    /// Text keys, each locked exclusively for the transaction as `hashtextextended(key, seed)`,
    /// all in hash order.
    pub keys: Vec<String>,
}

/// A stream-processing worker: how to read a record, and what a batch of events does.
pub trait Worker: Send + Sync + 'static {
    type Event: Send + Sync;

    /// Name of the worker: its consumer group suffix, its dedupe namespace, its metrics label.
    fn name(&self) -> &'static str;
    /// Topics it consumes.
    fn topics(&self) -> Vec<String>;
    /// Decodes and validates one record. No I/O.
    fn decode(&self, record: &Inbound<'_>, now: DateTime<Utc>) -> Result<Self::Event, Rejection>;
    /// The event's id, the dedupe key.
    fn event_id(&self, event: &Self::Event) -> Uuid;
    /// Applies fresh events of ONE partition of ONE topic, in offset order, inside `batch`'s
    /// transaction. Other partitions' batches run concurrently in their own transactions: lock
    /// shared rows in a deterministic order.
    fn apply(&self, batch: &mut Batch<'_>, events: &[Self::Event]) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Advisory locks the batch's transaction takes before [`Worker::apply`] runs, named by its
    /// decoded events (duplicates included): taken in the statement that dedupes the batch and
    /// records its progress, so a worker whose batch starts by locking what its events name
    /// saves that statement's round trip (at a low load a batch is one event). `apply` runs only
    /// inside the runtime's transaction, so it may count on them. Default: none.
    fn batch_locks(&self, _events: &[&Self::Event]) -> BatchLocks {
        BatchLocks::default()
    }
}

/// What applying a partition's records ended in.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Committed,
    /// Transient failure: nothing committed, retry later.
    Retry(String),
}

struct Context {
    worker: &'static str,
}

impl ClientContext for Context {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    metrics::LAG.with_label_values(&[self.worker, topic, &p.to_string()]).set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Offsets stored so far cover committed work only: hand them to the next owner.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => tracing::info!(partitions = tpl.count(), "revoked: offsets committed"),
                Err(e) => tracing::debug!(error = %e, "revoked: nothing to commit"),
            }
        }
    }
}

/// Builds the client configuration shared by consumers and producers.
pub fn client_config(settings: &Settings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.kafka.brokers);
    for (k, v) in &settings.kafka.options {
        cfg.set(k, v);
    }
    cfg
}

/// Runs `worker` until `stop` is cancelled, then drains: each partition's batch in hand
/// finishes, offsets are committed, the consumer closes.
///
/// One poll loop hands records to a task per partition (spawned when the partition's first
/// record arrives) over a bounded queue: partitions are applied concurrently, each strictly in
/// offset order, at most `kafka.batches_in_flight` at once (a partition waiting for a slot keeps
/// queueing, so its next batch is larger). A partition task takes the first record it is given
/// and whatever else is already queued (up to `kafka.batch_max_records`, waiting at most
/// `kafka.batch_linger_ms` for more), so a quiet stream is applied record by record at once and
/// a backlog in large batches.
/// A transient failure retries the same records with backoff, in the task, so the partition
/// never moves past them; the other partitions keep flowing. A full queue makes the poll loop
/// wait: memory stays bounded by the partitions' queues. Beside the loop a task deletes the
/// worker's event ids older than `kafka.dedupe_retention_hours` every five minutes
/// ([`prune_processed_events`]); it stops with the loop.
pub async fn run<W: Worker>(
    worker: Arc<W>,
    settings: &Settings,
    pool: PgPool,
    health: Health,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let name = worker.name();
    let mut cfg = client_config(settings);
    cfg.set("group.id", settings.group_id(name))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", settings.kafka.session_timeout_ms.to_string())
        .set("statistics.interval.ms", "5000")
        // Latency at low load: a fetch returns as soon as one byte is there, and a broker that
        // cannot wake a waiting fetch (librdkafka's mock cluster) answers within
        // `kafka.fetch_wait_max_ms`.
        .set("fetch.wait.max.ms", settings.kafka.fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", "1")
        // Memory: librdkafka prefetches at most this much per consumer (default 64 MiB).
        .set("queued.max.messages.kbytes", "8192");
    for (k, v) in &settings.kafka.options {
        cfg.set(k, v);
    }
    let consumer: StreamConsumer<Context> = cfg
        .create_with_context(Context { worker: name })
        .map_err(|e| anyhow::anyhow!("cannot create the Kafka consumer (kafka.brokers / kafka.options): {e}"))?;
    let consumer = Arc::new(consumer);
    let topics = worker.topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(worker = name, topics = ?topics, "consuming");
    health.ready();

    let shared = Arc::new(Shared {
        consumer: consumer.clone(),
        pool,
        health: health.clone(),
        failing: AtomicUsize::new(0),
        max: settings.kafka.batch_max_records,
        linger: Duration::from_millis(settings.kafka.batch_linger_ms),
        stop: stop.clone(),
        slots: Semaphore::new(settings.kafka.batches_in_flight),
    });
    let prune_stop = stop.child_token();
    let prune = tokio::spawn(prune_task(shared.pool.clone(), name, settings.kafka.dedupe_retention_hours, prune_stop.clone()));
    let mut partitions: HashMap<(String, i32), mpsc::Sender<OwnedMessage>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let polled = tokio::select! {
            () = stop.cancelled() => break,
            polled = tokio::time::timeout(IDLE_READY_AFTER, consumer.recv()) => polled,
        };
        let message = match polled {
            Err(_idle) => {
                // Polling without an error for a while: a past broker blip is over.
                if shared.failing.load(Ordering::SeqCst) == 0 {
                    health.ready();
                }
                continue;
            }
            Ok(Err(e)) => {
                // librdkafka reports broker trouble as error events and reconnects by itself;
                // queued events must not each cost a backoff, so only pause briefly.
                tracing::warn!(error = %e, "Kafka error while polling");
                health.not_ready(format!("kafka: {e}"));
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            Ok(Ok(m)) => m.detach(),
        };
        let key = (message.topic().to_owned(), message.partition());
        let queue = partitions.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(shared.max.max(1));
            tasks.spawn(partition_task(worker.clone(), shared.clone(), key.0.clone(), key.1, rx));
            tx
        });
        tokio::select! {
            () = stop.cancelled() => break,
            sent = queue.send(message) => if sent.is_err() { break },
        }
    }

    // Closing the queues ends each task after the batch in hand.
    partitions.clear();
    prune_stop.cancel();
    while tasks.join_next().await.is_some() {}
    prune.await.ok();
    tracing::info!(worker = name, "draining: committing offsets");
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit: nothing to commit");
    }
    consumer.unsubscribe();
    drop(shared);
    // Closing the consumer may block in librdkafka; the shutdown deadline bounds it.
    tokio::task::spawn_blocking(move || drop(consumer)).await.ok();
    tracing::info!(worker = name, "stopped");
    Ok(())
}

/// What the partition tasks of one worker share.
struct Shared {
    consumer: Arc<StreamConsumer<Context>>,
    pool: PgPool,
    health: Health,
    /// Partition tasks currently retrying a failure: ready only when none is.
    failing: AtomicUsize,
    max: usize,
    linger: Duration,
    stop: CancellationToken,
    /// One per batch being applied: at most `kafka.batches_in_flight` partitions at once.
    slots: Semaphore,
}

impl Shared {
    /// Waits for a slot to apply a batch in; `None` once `stop` is cancelled.
    async fn slot(&self, worker: &'static str) -> Option<SemaphorePermit<'_>> {
        if let Ok(slot) = self.slots.try_acquire() {
            return Some(slot);
        }
        let waiting = metrics::BATCHES_WAITING.with_label_values(&[worker]);
        waiting.inc();
        let slot = tokio::select! {
            () = self.stop.cancelled() => None,
            slot = self.slots.acquire() => slot.ok(),
        };
        waiting.dec();
        slot
    }
}

/// Applies one partition's records in offset order until its queue closes or `stop`. Records
/// below the next offset to apply (a redelivery after the partition came back from a
/// rebalance) are already applied and skipped, so the stored offset never goes backwards.
async fn partition_task<W: Worker>(
    worker: Arc<W>,
    shared: Arc<Shared>,
    topic: String,
    partition: i32,
    mut queue: mpsc::Receiver<OwnedMessage>,
) {
    let name = worker.name();
    let mut next: i64 = -1;
    let mut backoff = Backoff::new();
    loop {
        let first = tokio::select! {
            () = shared.stop.cancelled() => return,
            first = queue.recv() => match first { Some(m) => m, None => return },
        };
        // The slot is taken before the batch is: records that arrive while the partition waits
        // for one join its batch.
        let Some(mut slot) = shared.slot(name).await else { return };
        let mut records = vec![first];
        let deadline = tokio::time::Instant::now() + shared.linger;
        while records.len() < shared.max {
            match queue.try_recv() {
                Ok(m) => records.push(m),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if shared.linger.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(m)) => records.push(m),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        records.retain(|m| m.offset() >= next);
        if records.is_empty() {
            // A redelivery of what this task already applied (the partition came back after a
            // rebalance, from an older committed offset): it is durable, so the offset moves on.
            store_offset(&shared.consumer, &topic, partition, next);
            continue;
        }
        let started = Instant::now();
        loop {
            match apply_partition(&*worker, &shared.pool, &records).await {
                Applied::Committed => break,
                Applied::Retry(why) => {
                    metrics::RETRIES.with_label_values(&[name]).inc();
                    tracing::warn!(worker = name, topic, partition, reason = %why, retry_in_ms = backoff.current().as_millis() as u64, "batch not applied: retrying");
                    if !backoff.failing {
                        shared.failing.fetch_add(1, Ordering::SeqCst);
                    }
                    shared.health.not_ready(why);
                    // The other partitions may apply meanwhile: the slot is given back for the wait.
                    drop(slot);
                    let again = if backoff.wait(&shared.stop).await { None } else { shared.slot(name).await };
                    let Some(again) = again else {
                        if backoff.failing {
                            shared.failing.fetch_sub(1, Ordering::SeqCst);
                        }
                        return;
                    };
                    slot = again;
                }
            }
        }
        let last = records[records.len() - 1].offset();
        next = last + 1;
        store_offset(&shared.consumer, &topic, partition, next);
        metrics::BATCH_SIZE.with_label_values(&[name]).observe(records.len() as f64);
        metrics::BATCH_LATENCY.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
        if backoff.reset() {
            tracing::info!(worker = name, topic, partition, "recovered");
            shared.failing.fetch_sub(1, Ordering::SeqCst);
        }
        if shared.failing.load(Ordering::SeqCst) == 0 {
            shared.health.ready();
        }
    }
}

fn store_offset(consumer: &StreamConsumer<Context>, topic: &str, partition: i32, next: i64) {
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, Offset::Offset(next)).is_ok() {
        if let Err(e) = consumer.store_offsets(&tpl) {
            // The partition was revoked meanwhile: its next owner redelivers, dedupe skips.
            tracing::debug!(topic, partition, error = %e, "offset not stored");
        }
    }
}

fn inbound(m: &OwnedMessage) -> Inbound<'_> {
    Inbound { topic: m.topic(), partition: m.partition(), offset: m.offset(), key: m.key(), payload: m.payload().unwrap_or_default() }
}

/// Applies one partition's records in one transaction; when the database refuses the batch
/// for what it contains, applies them one by one and dead-letters the one it refuses.
pub async fn apply_partition<W: Worker>(worker: &W, pool: &PgPool, records: &[OwnedMessage]) -> Applied {
    match apply_records(worker, pool, records, None).await {
        Ok(()) => Applied::Committed,
        Err(e) if is_transient(&e) => Applied::Retry(format!("database: {e}")),
        Err(e) => {
            tracing::warn!(error = %e, records = records.len(), "batch refused: isolating the record");
            for (i, record) in records.iter().enumerate() {
                let one = std::slice::from_ref(record);
                match apply_records(worker, pool, one, None).await {
                    Ok(()) => {}
                    Err(e) if is_transient(&e) => return Applied::Retry(format!("database: {e}")),
                    Err(e) => {
                        let why = Rejection { label: "refused", reason: format!("database refused the record: {e}") };
                        if let Err(e) = apply_records(worker, pool, one, Some(why)).await {
                            return Applied::Retry(format!("database: {e}"));
                        }
                        tracing::warn!(offset = records[i].offset(), "record dead-lettered after the database refused it");
                    }
                }
            }
            Applied::Committed
        }
    }
}

/// One transaction: dedupe, apply, dead letters. `force` dead-letters every record instead.
async fn apply_records<W: Worker>(worker: &W, pool: &PgPool, records: &[OwnedMessage], force: Option<Rejection>) -> sqlx::Result<()> {
    let name = worker.name();
    let now = Utc::now();
    let mut decoded = Vec::with_capacity(records.len());
    let mut rejections: Vec<(usize, Rejection)> = Vec::new();
    for (i, m) in records.iter().enumerate() {
        metrics::CONSUMED.with_label_values(&[name, m.topic()]).inc();
        match (&force, worker.decode(&inbound(m), now)) {
            (Some(why), _) => rejections.push((i, why.clone())),
            (None, Ok(event)) => decoded.push((i, event)),
            (None, Err(why)) => rejections.push((i, why)),
        }
    }

    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = decoded.iter().map(|(_, e)| worker.event_id(e)).collect();
    let progress = records.last().map(|last| (last.topic(), last.partition(), last.offset() + 1));
    let locks = worker.batch_locks(&decoded.iter().map(|(_, e)| e).collect::<Vec<_>>());
    let fresh = dedupe_and_record_progress(&mut tx, name, &ids, progress, &locks).await?;
    let mut seen = HashSet::new();
    let mut positions = Vec::new();
    let mut events = Vec::new();
    let mut duplicates = Vec::new();
    for (i, event) in decoded {
        let id = worker.event_id(&event);
        if fresh.contains(&id) && seen.insert(id) {
            positions.push(i);
            events.push(event);
        } else {
            duplicates.push(i);
        }
    }

    let mut batch = Batch { conn: &mut tx, rejected: Vec::new(), wake: None };
    worker.apply(&mut batch, &events).await?;
    let (applied_rejections, wake) = (batch.rejected, batch.wake);
    rejections.extend(applied_rejections.into_iter().map(|(j, r)| (positions[j], r)));

    let mut lettered = Vec::new();
    for (i, why) in &rejections {
        let m = &records[*i];
        let letter = DeadLetter {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            label: why.label,
            reason: why.reason.clone(),
        };
        if dead_letter::record(&mut tx, name, &letter).await? {
            lettered.push((m.topic().to_owned(), why.label, why.reason.clone(), m.offset()));
        }
    }
    tx.commit().await?;
    if let Some(notify) = wake {
        notify.notify_one();
    }

    for i in &duplicates {
        metrics::DEDUPLICATED.with_label_values(&[name, records[*i].topic()]).inc();
    }
    for i in &positions {
        metrics::APPLIED.with_label_values(&[name, records[*i].topic()]).inc();
    }
    for (topic, label, reason, offset) in lettered {
        metrics::DEAD_LETTERED.with_label_values(&[name, &topic, label]).inc();
        tracing::warn!(worker = name, topic, offset, reason, "dead letter");
    }
    Ok(())
}

/// In one statement of the batch's transaction: records `ids` as applied by `consumer` and
/// returns those not recorded before (the batch's fresh events), records that `consumer` has
/// applied `progress` = (topic, partition, next offset) up to, not including, the next offset,
/// and takes the batch's `locks` first ([`Worker::batch_locks`]; a materialized CTE read by a
/// one-time filter, so all of them are held before the first row is written). Both records
/// commit with the batch's effects or not at all, so writing the progress before the effects
/// changes nothing a reader can see; one statement instead of two (three with locks) saves a
/// round trip per batch, which at a low load is a batch per event. Durable progress only moves
/// forward: the settlement gate reads it to know what a worker has seen (`consumer_progress`).
/// Two instances overlapping in a rebalance run this same statement on the same partition, so
/// the second waits for the first's commit on whichever of the rows or locks it reaches first,
/// holding nothing the first's batch needs; it then finds the events applied.
async fn dedupe_and_record_progress(
    conn: &mut PgConnection,
    consumer: &str,
    ids: &[Uuid],
    progress: Option<(&str, i32, i64)>,
    locks: &BatchLocks,
) -> sqlx::Result<HashSet<Uuid>> {
    const PROGRESS: &str = "progress AS ( \
           INSERT INTO consumer_progress (consumer, topic, partition, next_offset) \
           SELECT $1, $3, $4, $5 WHERE $3::text IS NOT NULL \
           ON CONFLICT (consumer, topic, partition) DO UPDATE \
           SET next_offset = GREATEST(consumer_progress.next_offset, EXCLUDED.next_offset), updated_at = now())";
    let (topic, partition, next_offset) = progress.map_or((None, 0, 0), |(t, p, n)| (Some(t), p, n));
    let query = if locks.keys.is_empty() {
        format!(
            "WITH {PROGRESS} INSERT INTO processed_events (consumer, event_id) SELECT $1, e FROM unnest($2::uuid[]) AS e \
             ON CONFLICT DO NOTHING RETURNING event_id"
        )
    } else {
        format!(
            "WITH locks AS MATERIALIZED (SELECT pg_advisory_xact_lock(h) FROM \
               (SELECT DISTINCT hashtextextended(k, $7) AS h FROM unnest($6::text[]) AS k) AS keys ORDER BY h), {PROGRESS} \
             INSERT INTO processed_events (consumer, event_id) SELECT $1, e FROM unnest($2::uuid[]) AS e \
             WHERE (SELECT count(*) FROM locks) >= 0 ON CONFLICT DO NOTHING RETURNING event_id"
        )
    };
    let mut q = sqlx::query_scalar(&query).bind(consumer).bind(ids).bind(topic).bind(partition).bind(next_offset);
    if !locks.keys.is_empty() {
        q = q.bind(&locks.keys).bind(locks.seed);
    }
    let fresh: Vec<Uuid> = q.fetch_all(conn).await?;
    Ok(fresh.into_iter().collect())
}

/// Deletes `worker`'s event ids older than `retention_hours` every [`PRUNE_EVERY`], the first
/// time 10 to 60 s after start (spread, so instances of a worker started together do not prune
/// in step), until `stop`. A failure is logged and the next run tries again; it never stops
/// the worker. Each run starts where the last one finished, so it reads only the ids that aged
/// out since, not the deleted ones a vacuum has not cleaned up yet.
async fn prune_task(pool: PgPool, worker: &'static str, retention_hours: i32, stop: CancellationToken) {
    let mut wait = Duration::from_secs(rand::random_range(10..=60));
    let mut from = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = PRUNE_EVERY;
        // Stopping abandons at most the statement in hand, which commits whole or not at all.
        let pruned = tokio::select! {
            () = stop.cancelled() => return,
            pruned = prune_processed_events(&pool, worker, retention_hours, from) => pruned,
        };
        match pruned {
            Ok(p) => {
                tracing::debug!(worker, deleted = p.deleted, before = %p.done_before, "forgot old event ids");
                // An hour back from where the last run finished: rows another instance of the
                // worker left when it stopped half-way (or a batch that committed late) are
                // reached again, for an hour of deleted rows re-read.
                from = Some(p.done_before - chrono::Duration::hours(1));
            }
            Err(e) => tracing::warn!(worker, error = %e, "could not delete old event ids: trying again at the next run"),
        }
    }
}

/// What one [`prune_processed_events`] run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rows deleted.
    pub deleted: u64,
    /// Every row of the consumer processed before this moment is gone (unless another instance
    /// of the worker, pruning at the same time, stopped half-way): where the next run may start.
    pub done_before: DateTime<Utc>,
}

/// Deletes `consumer`'s `processed_events` rows older than `retention_hours` (by the database's
/// clock, which stamped them) and, when `from` is given (the previous run's
/// [`Pruned::done_before`]), processed at or after it. Oldest first, at most 5,000
/// rows a statement, each statement its own transaction, until one comes back short: no lock is
/// held long, and a partition's batch waits for one statement at most, only when it dedupes an
/// id being deleted. Each statement reads the `(consumer, processed_at)` index in order from
/// where the previous one stopped. The statements are not prepared, so each is planned with its
/// own bounds: a generic plan cannot tell a few rows from a backlog, and sorted the whole
/// backlog for every chunk.
pub async fn prune_processed_events(
    pool: &PgPool,
    consumer: &str,
    retention_hours: i32,
    from: Option<DateTime<Utc>>,
) -> sqlx::Result<Pruned> {
    let cutoff: DateTime<Utc> =
        sqlx::query_scalar("SELECT now() - make_interval(hours => $1)").bind(retention_hours).fetch_one(pool).await?;
    let mut lower = from;
    let mut deleted = 0;
    loop {
        let (n, newest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "WITH gone AS ( \
               DELETE FROM processed_events WHERE ctid = ANY (ARRAY( \
                 SELECT ctid FROM processed_events \
                 WHERE consumer = $1 AND processed_at >= COALESCE($2, '-infinity') AND processed_at < $3 \
                 ORDER BY processed_at LIMIT $4)) \
               RETURNING processed_at) \
             SELECT count(*), max(processed_at) FROM gone",
        )
        .bind(consumer)
        .bind(lower)
        .bind(cutoff)
        .bind(PRUNE_CHUNK)
        .persistent(false)
        .fetch_one(pool)
        .await?;
        deleted += n as u64;
        metrics::PRUNED.with_label_values(&[consumer]).inc_by(n as u64);
        if n < PRUNE_CHUNK {
            return Ok(Pruned { deleted, done_before: cutoff });
        }
        lower = newest;
    }
}

/// Exponential backoff from 100 ms to 5 s.
struct Backoff {
    current: Duration,
    failing: bool,
}

impl Backoff {
    fn new() -> Self {
        Self { current: Duration::from_millis(100), failing: false }
    }

    fn current(&self) -> Duration {
        self.current
    }

    /// Sleeps the current backoff and doubles it; true when `stop` was cancelled meanwhile.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        self.failing = true;
        let d = self.current;
        self.current = (self.current * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(d) => false,
        }
    }

    /// Back to the shortest wait; true when it had been failing.
    fn reset(&mut self) -> bool {
        self.current = Duration::from_millis(100);
        std::mem::replace(&mut self.failing, false)
    }
}
