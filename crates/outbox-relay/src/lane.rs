//! One lane of the outbox (the rows whose key hashes to `shard`): a relay process runs one lane
//! task per lane, and a lane is relayed by at most one task in the whole fleet, the one holding
//! its session advisory lock on the connection it works on (a standby waits for the lock and
//! takes over when the active lane's connection dies). The active lane reads its rows in id
//! order inside one transaction held across claim → produce → delete: it waits for every
//! delivery report, deletes, commits; on any delivery failure it rolls back, the rows stay and
//! are sent again. A key's rows are all in one lane, so each key's records reach the topic in
//! the outbox's id order.
//!
//! The claim takes no row locks: the lane's advisory lock is held by the same session that
//! runs the claim transaction, so no other relay reads the lane while it is in flight (the
//! session's end drops both), and writers only insert. The one statement that moves rows
//! between lanes, a lane-count migration, takes `ACCESS EXCLUSIVE` on the outbox and so waits
//! for every claim in flight.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::producer::FutureRecord;
use refstream_runtime::http::Health;
use refstream_runtime::metrics::{OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, PUBLISHED};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Class of the lanes' advisory locks (the lane's shard number is the second key).
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

/// What one lane works with: its shard, at most `batch` rows per claim, the poll interval when
/// no notification wakes it, and the test-only pause before delete.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    pub shard: i32,
    pub batch: i64,
    pub idle: Duration,
    pub pause: Duration,
}

/// Relays the lane `claim.shard` until `stop`, becoming its active relay whenever it can and
/// retrying with backoff after an error; `wake` is notified when rows were inserted into it.
pub async fn run(pool: PgPool, producer: FutureProducer, claim: Claim, wake: Arc<Notify>, health: Health, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match lead(&pool, &producer, claim, &wake, &health, &stop).await {
            Ok(()) => break,
            Err(e) => {
                health.not_ready(format!("lane {}: {e:#}", claim.shard));
                tracing::warn!(shard = claim.shard, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "relay lane interrupted");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Waits to become the active relay of the lane, then relays until `stop` or an error.
async fn lead(
    pool: &PgPool,
    producer: &FutureProducer,
    claim: Claim,
    wake: &Notify,
    health: &Health,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let shard = claim.shard;
    // A connection of its own, outside the pool: it lives as long as the lane is active (its
    // session holds the lock), whatever the number of lanes.
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    // Standby until the lock is ours; the active lane's death releases it.
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)").bind(LOCK_CLASS).bind(shard).fetch_one(&mut conn).await?;
        if got {
            break;
        }
        health.ready();
        tracing::debug!(shard, "standby: another relay is active for this lane");
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::info!(shard, "active relay for this shard");
    let result = relay_loop(&mut conn, producer, claim, wake, health, stop).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)").bind(LOCK_CLASS).bind(shard).execute(&mut conn).await;
    let _ = conn.close().await;
    result
}

async fn relay_loop(
    conn: &mut PgConnection,
    producer: &FutureProducer,
    claim: Claim,
    wake: &Notify,
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
        // A claim that found fewer rows than it could take left the lane empty as of its
        // snapshot: a row committed after it notifies (the permit waits in `wake` even while
        // this batch was in flight), so the lane sleeps until then instead of claiming again
        // only to find nothing. A full claim may have left rows behind: claim again at once.
        if i64::try_from(sent).unwrap_or(i64::MAX) < claim.batch {
            tokio::select! {
                () = stop.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(claim.idle) => {}
            }
        }
    }
    Ok(())
}

/// One claim → produce → delete transaction; returns how many rows it published.
async fn relay_batch(conn: &mut PgConnection, producer: &FutureProducer, claim: Claim) -> anyhow::Result<usize> {
    let mut tx = conn.begin().await?;
    let rows: Vec<Row> =
        sqlx::query_as("SELECT id, topic, key, payload, event_id, headers FROM outbox WHERE shard = $1 ORDER BY id LIMIT $2")
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
    sqlx::query("DELETE FROM outbox WHERE shard = $1 AND id = ANY($2)").bind(claim.shard).bind(&ids).execute(&mut *tx).await?;
    tx.commit().await?;
    for row in &rows {
        PUBLISHED.with_label_values(&[&row.topic]).inc();
    }
    Ok(rows.len())
}

async fn record_backlog(conn: &mut PgConnection, shard: i32) -> sqlx::Result<()> {
    let (count, age): (i64, Option<f64>) =
        sqlx::query_as("SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM outbox WHERE shard = $1")
            .bind(shard)
            .fetch_one(&mut *conn)
            .await?;
    let label = shard.to_string();
    OUTBOX_BACKLOG.with_label_values(&[&label]).set(count);
    #[allow(clippy::cast_possible_truncation)]
    OUTBOX_OLDEST_AGE.with_label_values(&[&label]).set(age.unwrap_or(0.0) as i64);
    Ok(())
}
