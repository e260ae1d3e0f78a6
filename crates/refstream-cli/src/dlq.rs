//! `refstream dlq list` and `refstream dlq replay <id>`: dead letters for operators. A replay
//! produces the stored bytes back to their source topic with the same key (for example once
//! the producer was fixed or the missing data arrived) and marks the letter replayed.

use std::time::Duration;

use clap::Subcommand;
use rdkafka::producer::{FutureProducer, FutureRecord};
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use sqlx::PgPool;

#[derive(Subcommand)]
pub enum Action {
    /// List dead letters, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Produce a dead letter's bytes back to its source topic.
    Replay { id: i64 },
}

/// id, consumer, topic, partition, offset, reason, replayed at.
type LetterRow = (i64, String, String, i32, i64, String, Option<chrono::DateTime<chrono::Utc>>);

pub async fn run(action: Action, settings: &Settings, pool: &PgPool) -> anyhow::Result<()> {
    match action {
        Action::List { limit } => {
            let rows: Vec<LetterRow> = sqlx::query_as(
                "SELECT id, consumer, topic, partition, \"offset\", reason, replayed_at FROM dead_letters ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?;
            println!("{:>6}  {:<14} {:<28} {:>9}  reason", "id", "consumer", "topic[partition]@offset", "replayed");
            for (id, consumer, topic, partition, offset, reason, replayed) in rows {
                let at = format!("{topic}[{partition}]@{offset}");
                println!("{id:>6}  {consumer:<14} {at:<28} {:>9}  {reason}", if replayed.is_some() { "yes" } else { "no" });
            }
        }
        Action::Replay { id } => {
            let row: Option<(String, Option<Vec<u8>>, Vec<u8>)> =
                sqlx::query_as("SELECT topic, key, payload FROM dead_letters WHERE id = $1").bind(id).fetch_optional(pool).await?;
            let Some((topic, key, payload)) = row else { anyhow::bail!("no dead letter {id}") };
            let producer: FutureProducer = client_config(settings).set("enable.idempotence", "true").create()?;
            let mut record = FutureRecord::to(&topic).payload(&payload);
            if let Some(k) = &key {
                record = record.key(k);
            }
            producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| anyhow::anyhow!("replay of {id} failed: {e}"))?;
            sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1").bind(id).execute(pool).await?;
            println!("replayed dead letter {id} to {topic}");
        }
    }
    Ok(())
}
