//! The outbox relay, the only Kafka producer of derived events. For its shard it:
//! - is the single active relay, holding a session advisory lock on the connection it works
//!   on; a standby waits for the lock and takes over when the active relay's connection dies;
//! - claims rows in id order with `FOR UPDATE SKIP LOCKED` inside one transaction held across
//!   claim → produce → delete, waits for every delivery report, deletes, commits;
//! - produces with an idempotent producer (`enable.idempotence=true`, `acks=all`), keyed by the
//!   row's key, so per-key order on the topic is the outbox's id order;
//! - on any delivery failure rolls back: the rows stay and are sent again (at-least-once on the
//!   wire, every record carrying its deterministic `event_id` header for downstream dedupe).
//!
//! It wakes on `LISTEN refstream_outbox`, and polls every `relay.idle_poll_ms` as a fallback.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use refstream_runtime::consumer::client_config;
use refstream_runtime::http::Health;
use refstream_runtime::metrics::{OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, PUBLISHED};
use refstream_runtime::Settings;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Class of the relay's advisory lock (the shard number is the second key).
const LOCK_CLASS: i32 = 0x5245_4c59; // "RELY"

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    topic: String,
    key: String,
    payload: Vec<u8>,
    event_id: Uuid,
    headers: serde_json::Value,
}

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

/// Runs the relay for `settings.relay.shard` until `stop`.
pub async fn run(settings: &Settings, pool: PgPool, health: Health, stop: CancellationToken) -> anyhow::Result<()> {
    let producer = producer(settings)?;
    let shard = settings.relay.shard;
    let idle = Duration::from_millis(settings.relay.idle_poll_ms);
    let batch = settings.relay.batch_size;
    let pause = Duration::from_millis(settings.relay.fault_pause_before_delete_ms);
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match lead(&pool, &producer, Claim { shard, batch, pause }, idle, &health, &stop).await {
            Ok(()) => break,
            Err(e) => {
                health.not_ready(format!("{e:#}"));
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "relay interrupted");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
    tracing::info!("relay stopped");
    Ok(())
}

/// What one claim takes: the shard, at most `batch` rows, and the test-only pause before delete.
#[derive(Debug, Clone, Copy)]
struct Claim {
    shard: i32,
    batch: i64,
    pause: Duration,
}

/// Waits to become the active relay of `claim.shard`, then relays until `stop` or an error.
async fn lead(
    pool: &PgPool,
    producer: &FutureProducer,
    claim: Claim,
    idle: Duration,
    health: &Health,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let shard = claim.shard;
    let mut conn = pool.acquire().await?;
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen("refstream_outbox").await?;
    // Standby until the lock is ours; the active relay's death releases it.
    loop {
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)").bind(LOCK_CLASS).bind(shard).fetch_one(&mut *conn).await?;
        if got {
            break;
        }
        health.ready();
        tracing::debug!(shard, "standby: another relay is active");
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::info!(shard, "active relay for this shard");
    let result = relay_loop(&mut conn, &mut listener, producer, claim, idle, health, stop).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)").bind(LOCK_CLASS).bind(shard).execute(&mut *conn).await;
    result
}

async fn relay_loop(
    conn: &mut PoolConnection<Postgres>,
    listener: &mut PgListener,
    producer: &FutureProducer,
    claim: Claim,
    idle: Duration,
    health: &Health,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut last_gauge = std::time::Instant::now() - Duration::from_secs(60);
    while !stop.is_cancelled() {
        let sent = relay_batch(conn, producer, claim).await?;
        health.ready();
        if last_gauge.elapsed() >= Duration::from_secs(2) {
            record_backlog(conn, claim.shard).await?;
            last_gauge = std::time::Instant::now();
        }
        if sent == 0 {
            tokio::select! {
                () = stop.cancelled() => break,
                n = listener.recv() => { n?; }
                () = tokio::time::sleep(idle) => {}
            }
        }
    }
    Ok(())
}

/// One claim → produce → delete transaction; returns how many rows it published.
async fn relay_batch(conn: &mut PoolConnection<Postgres>, producer: &FutureProducer, claim: Claim) -> anyhow::Result<usize> {
    let mut tx = sqlx::Connection::begin(&mut **conn).await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, topic, key, payload, event_id, headers FROM outbox WHERE shard = $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(claim.shard)
    .bind(claim.batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in &rows {
        let event_id = row.event_id.to_string();
        let mut headers = OwnedHeaders::new().insert(Header { key: "event_id", value: Some(event_id.as_str()) });
        if let serde_json::Value::Object(extra) = &row.headers {
            for (k, v) in extra {
                let v = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
                headers = headers.insert(Header { key: k, value: Some(v.as_str()) });
            }
        }
        let record = FutureRecord::to(&row.topic).key(&row.key).payload(&row.payload).headers(headers);
        // Enqueued now; the delivery report arrives through the future.
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e));
    }
    let mut failed = None;
    for (row, delivery) in rows.iter().zip(deliveries) {
        let outcome = match delivery {
            Ok(report) => match report.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("producer dropped the delivery report".to_owned()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            failed.get_or_insert_with(|| format!("delivery of outbox row {} to {} failed: {e}", row.id, row.topic));
        }
    }
    if let Some(why) = failed {
        tx.rollback().await?;
        anyhow::bail!(why);
    }
    if !claim.pause.is_zero() {
        tokio::time::sleep(claim.pause).await;
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
    tx.commit().await?;
    for row in &rows {
        PUBLISHED.with_label_values(&[&row.topic]).inc();
    }
    Ok(rows.len())
}

async fn record_backlog(conn: &mut PoolConnection<Postgres>, shard: i32) -> sqlx::Result<()> {
    let (count, age): (i64, Option<f64>) =
        sqlx::query_as("SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM outbox WHERE shard = $1")
            .bind(shard)
            .fetch_one(&mut **conn)
            .await?;
    let label = shard.to_string();
    OUTBOX_BACKLOG.with_label_values(&[&label]).set(count);
    #[allow(clippy::cast_possible_truncation)]
    OUTBOX_OLDEST_AGE.with_label_values(&[&label]).set(age.unwrap_or(0.0) as i64);
    Ok(())
}
