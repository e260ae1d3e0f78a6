//! The transactional outbox, writer side. Rows are inserted in the caller's transaction, so an
//! event exists exactly when the effect it announces committed. Before inserting, the
//! transaction takes an advisory lock per message key (in ascending lock order, so writers
//! cannot deadlock each other): two transactions that announce events for one key therefore
//! commit in the order of their outbox ids, and the relay, reading in id order, publishes each
//! key's events in commit order.

use serde_json::Value as Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::codec::{encode, AvroRecord};

/// One message to publish.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub event_id: Uuid,
    pub headers: Json,
}

impl OutboxMessage {
    /// An Avro record for `topic`, keyed by `key`.
    pub fn record<T: AvroRecord>(topic: &str, key: &str, record: &T) -> Self {
        Self {
            topic: topic.to_owned(),
            key: key.to_owned(),
            payload: encode(record),
            event_id: record.event_id(),
            headers: Json::Object(Default::default()),
        }
    }
}

/// Inserts `messages` into the outbox, in order, inside the caller's transaction; Postgres puts
/// each row in the lane (`shard`) its key hashes to (`outbox_shard(key)`, set by a trigger).
pub async fn enqueue(conn: &mut PgConnection, messages: &[OutboxMessage]) -> sqlx::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = messages.iter().map(|m| m.key.as_str()).collect();
    let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let ids: Vec<Uuid> = messages.iter().map(|m| m.event_id).collect();
    let headers: Vec<Json> = messages.iter().map(|m| m.headers.clone()).collect();
    // One statement: the keys' locks are a materialized CTE read by a one-time filter, so all
    // of them are held before the first row takes its id from the sequence.
    sqlx::query(
        "WITH locks AS MATERIALIZED (SELECT pg_advisory_xact_lock(h) FROM \
           (SELECT DISTINCT hashtextextended(k, 1299) AS h FROM unnest($2::text[]) AS k) AS keys ORDER BY h) \
         INSERT INTO outbox (topic, key, payload, event_id, headers) \
         SELECT t, k, p, e, h FROM unnest($1::text[], $2::text[], $3::bytea[], $4::uuid[], $5::jsonb[]) \
         WITH ORDINALITY AS m(t, k, p, e, h, n) WHERE (SELECT count(*) FROM locks) >= 0 ORDER BY n",
    )
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&ids)
    .bind(&headers)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
