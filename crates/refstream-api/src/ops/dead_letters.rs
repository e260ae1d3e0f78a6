//! Dead letters for operators (`refstream dlq` and the API): list them, and replay one — its
//! stored bytes produced back to its source topic with the same key (once the producer was
//! fixed or the missing data arrived) — and mark it replayed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;

/// A dead letter as listed (its payload is not shown: it may carry personal data).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Letter {
    pub id: i64,
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// The newest dead letters first.
pub async fn list(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<Letter>> {
    sqlx::query_as(
        "SELECT id, consumer, topic, partition, \"offset\" AS offset, reason, replayed_at FROM dead_letters ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no dead letter {0}")]
    NotFound(i64),
    #[error("replay of {0} failed: {1}")]
    Produce(i64, String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Produces dead letter `id` back to its topic and marks it replayed, in `tx` (the caller
/// commits, with its audit row): the letter is locked while it is produced, so two operators
/// replaying it at once produce it once each in turn, never concurrently. A commit that fails
/// after the produce leaves it unmarked; replaying again re-sends a record whose event id
/// consumers already dedupe.
pub async fn replay(tx: &mut PgConnection, settings: &Settings, id: i64) -> Result<String, ReplayError> {
    let row: Option<(String, Option<Vec<u8>>, Vec<u8>)> =
        sqlx::query_as("SELECT topic, key, payload FROM dead_letters WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(&mut *tx).await?;
    let Some((topic, key, payload)) = row else { return Err(ReplayError::NotFound(id)) };
    let producer: FutureProducer =
        client_config(settings).set("enable.idempotence", "true").create().map_err(|e| ReplayError::Produce(id, e.to_string()))?;
    let mut record = FutureRecord::to(&topic).payload(&payload);
    if let Some(k) = &key {
        record = record.key(k);
    }
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| ReplayError::Produce(id, e.to_string()))?;
    sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1").bind(id).execute(&mut *tx).await?;
    Ok(topic)
}
