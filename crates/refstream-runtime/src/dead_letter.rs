//! Dead letters: a record that cannot be decoded or fails validation is stored with its
//! position, raw bytes and reason, and announced on `<topic>.dlq` through the outbox — in the
//! transaction that moves the partition past it. The position is unique per consumer, so a
//! redelivered bad record is stored and announced once.

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::dead_letter_topic;
use crate::outbox::{enqueue, OutboxMessage};

/// A record that will not be processed, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// A short stable label (for metrics), e.g. `malformed` or `invalid`.
    pub label: &'static str,
    /// The full human-readable reason.
    pub reason: String,
}

/// Stores `letter` for `consumer` and enqueues its `.dlq` record; returns false when this
/// position was already dead-lettered.
pub async fn record(conn: &mut PgConnection, consumer: &str, letter: &DeadLetter) -> sqlx::Result<bool> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO dead_letters (consumer, topic, partition, \"offset\", key, payload, reason, reason_label) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (consumer, topic, partition, \"offset\") DO NOTHING RETURNING id",
    )
    .bind(consumer)
    .bind(&letter.topic)
    .bind(letter.partition)
    .bind(letter.offset)
    .bind(&letter.key)
    .bind(&letter.payload)
    .bind(&letter.reason)
    .bind(letter.label)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(id) = id else { return Ok(false) };
    let key = letter.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
    let message = OutboxMessage {
        topic: dead_letter_topic(&letter.topic),
        key,
        payload: letter.payload.clone(),
        event_id: Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("dlq:{consumer}:{}:{}:{}", letter.topic, letter.partition, letter.offset).as_bytes(),
        ),
        headers: json!({
            "dead_letter_id": id.to_string(),
            "consumer": consumer,
            "source_topic": letter.topic,
            "source_partition": letter.partition.to_string(),
            "source_offset": letter.offset.to_string(),
            "reason": letter.reason,
            "reason_label": letter.label,
        }),
    };
    enqueue(conn, std::slice::from_ref(&message)).await?;
    Ok(true)
}
