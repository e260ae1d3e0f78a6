//! `refstream dlq list` and `refstream dlq replay <id>`: dead letters for operators
//! ([`refstream_api::ops::dead_letters`]). A replay produces the stored bytes back to their
//! source topic with the same key and marks the letter replayed.

use clap::Subcommand;
use refstream_api::ops::dead_letters;
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

pub async fn run(action: Action, settings: &Settings, pool: &PgPool) -> anyhow::Result<()> {
    match action {
        Action::List { limit } => {
            println!("{:>6}  {:<14} {:<28} {:>9}  reason", "id", "consumer", "topic[partition]@offset", "replayed");
            for l in dead_letters::list(pool, limit).await? {
                let at = format!("{}[{}]@{}", l.topic, l.partition, l.offset);
                let replayed = if l.replayed_at.is_some() { "yes" } else { "no" };
                println!("{:>6}  {:<14} {at:<28} {replayed:>9}  {}", l.id, l.consumer, l.reason);
            }
        }
        Action::Replay { id } => {
            let mut tx = pool.begin().await?;
            let topic = dead_letters::replay(&mut tx, settings, id).await?;
            tx.commit().await?;
            println!("replayed dead letter {id} to {topic}");
        }
    }
    Ok(())
}
