//! The outbox relay, the only Kafka producer of derived events. The outbox is split into lanes
//! (`outbox_shards()` in Postgres; a row's lane is a hash of its key, so all of a key's rows
//! share one). This process:
//! - runs a task for every lane ([`lane`]); a lane is relayed by one task in the whole fleet at
//!   a time, in id order, one claim → produce → delete transaction at a time, so lanes overlap
//!   their claims while each key's records still reach the topic in the outbox's id order and
//!   no committed row is skipped;
//! - produces with one idempotent producer (`enable.idempotence=true`, `acks=all`), keyed by
//!   the row's key; a delivery failure rolls the claim back and the rows are sent again
//!   (at-least-once on the wire, every record carrying its deterministic `event_id` header for
//!   downstream dedupe);
//! - wakes a lane on `LISTEN refstream_outbox` (each notification names the lane a statement
//!   inserted into), polls every `relay.idle_poll_ms` as a fallback, and rereads the number of
//!   lanes every few seconds, restarting its lanes when a migration changed it.

mod lane;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};
use refstream_runtime::consumer::client_config;
use refstream_runtime::http::Health;
use refstream_runtime::Settings;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often the number of lanes is read again.
const LANE_CHECK: Duration = Duration::from_secs(5);

/// Builds the idempotent producer.
pub fn producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    let mut cfg = client_config(settings);
    // linger.ms 1: a claim's rows are handed over in one burst and batch anyway (they queue
    // while the previous request is in flight); a longer linger only delays a quiet stream.
    cfg.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "1").set("message.timeout.ms", "30000");
    for (k, v) in &settings.kafka.options {
        cfg.set(k, v);
    }
    cfg.create().map_err(|e| anyhow::anyhow!("cannot create the Kafka producer (kafka.brokers / kafka.options): {e}"))
}

/// Runs the relay's lanes until `stop`.
pub async fn run(settings: &Settings, pool: PgPool, health: Health, stop: CancellationToken) -> anyhow::Result<()> {
    let producer = producer(settings)?;
    let claim = |shard| lane::Claim {
        shard,
        batch: settings.relay.batch_size,
        idle: Duration::from_millis(settings.relay.idle_poll_ms),
        pause: Duration::from_millis(settings.relay.fault_pause_before_delete_ms),
    };
    while let Some(lanes) = lane_count_when_available(&pool, &health, &stop).await {
        tracing::info!(lanes, "relaying the outbox's lanes");
        let generation = stop.child_token();
        let wakes: Vec<Arc<Notify>> = (0..lanes).map(|_| Arc::new(Notify::new())).collect();
        let mut tasks = JoinSet::new();
        for (shard, wake) in (0..lanes).zip(&wakes) {
            tasks.spawn(lane::run(pool.clone(), producer.clone(), claim(shard), wake.clone(), health.clone(), generation.clone()));
        }
        watch(&pool, &wakes, lanes, &generation).await;
        generation.cancel();
        while tasks.join_next().await.is_some() {}
    }
    let _ = producer.flush(Duration::from_secs(5));
    tracing::info!("relay stopped");
    Ok(())
}

/// The number of lanes, read from Postgres; retried with backoff while it cannot be read.
/// None when stopped first.
async fn lane_count_when_available(pool: &PgPool, health: &Health, stop: &CancellationToken) -> Option<i32> {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match lane_count(pool).await {
            Ok(n) => return Some(n),
            Err(e) => {
                let why = format!("cannot read the outbox's lane count (outbox_shards(); run `refstream migrate`): {e}");
                health.not_ready(why.clone());
                tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "relay waiting for Postgres");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    None
}

async fn lane_count(pool: &PgPool) -> anyhow::Result<i32> {
    let n: i32 = sqlx::query_scalar("SELECT outbox_shards()").fetch_one(pool).await?;
    anyhow::ensure!(n >= 1, "outbox_shards() is {n}: the outbox needs at least one lane");
    Ok(n)
}

/// Until `generation` is cancelled: passes each outbox notification to the lane it names (all
/// lanes when it names none, or after the listening connection was lost, since notifications
/// may have been missed), and cancels `generation` when the number of lanes changed.
async fn watch(pool: &PgPool, wakes: &[Arc<Notify>], lanes: i32, generation: &CancellationToken) {
    let wake_all = || wakes.iter().for_each(|w| w.notify_one());
    let mut listener: Option<PgListener> = None;
    let mut check = tokio::time::interval(LANE_CHECK);
    check.tick().await;
    while !generation.is_cancelled() {
        if listener.is_none() {
            match listen(pool).await {
                Ok(l) => listener = Some(l),
                Err(e) => tracing::warn!(error = %e, "relay cannot listen for outbox rows; lanes poll every relay.idle_poll_ms"),
            }
            wake_all();
        }
        tokio::select! {
            () = generation.cancelled() => return,
            _ = check.tick() => match lane_count(pool).await {
                Ok(n) if n != lanes => {
                    tracing::info!(was = lanes, now = n, "the outbox's lane count changed: restarting the lanes");
                    generation.cancel();
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "lane count not read"),
            },
            got = next(&mut listener) => match got {
                Ok(Some(lane)) => match wakes.get(lane) {
                    Some(w) => w.notify_one(),
                    None => wake_all(),
                },
                Ok(None) => wake_all(),
                Err(e) => {
                    tracing::warn!(error = %e, "relay lost its outbox listener");
                    listener = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}

async fn listen(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen("refstream_outbox").await?;
    Ok(listener)
}

/// The lane the next notification names (`Ok(None)`: it names none, or the connection was lost
/// and is being re-established); pending forever without a listener.
async fn next(listener: &mut Option<PgListener>) -> sqlx::Result<Option<usize>> {
    match listener {
        Some(l) => Ok(l.try_recv().await?.and_then(|n| n.payload().parse().ok())),
        None => std::future::pending().await,
    }
}
