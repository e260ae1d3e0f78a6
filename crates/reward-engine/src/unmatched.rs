//! Deposits for users never seen registering. The deposit is recorded like any other (so a
//! late registration still finds it); the raw record is also held here. A periodic sweep
//! releases the hold once the user is registered, and turns a deposit still unmatched after
//! `deposits.unknown_user_hold_secs` into a dead letter. Nothing is lost either way.

use std::time::Duration;

use refstream_core::events::DepositCompleted;
use refstream_runtime::dead_letter::{self, DeadLetter};
use refstream_runtime::metrics::{DEAD_LETTERED, OUTCOMES};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::Position;

/// Holds the raw records of `deposits` whose user is not registered, in one insert.
pub(crate) async fn hold_unknown(conn: &mut PgConnection, deposits: &[(&DepositCompleted, &Position)]) -> sqlx::Result<()> {
    let held: Vec<String> = sqlx::query_scalar(
        "INSERT INTO unmatched_deposits (deposit_id, user_id, topic, partition, \"offset\", key, payload) \
         SELECT d.id, d.user_id, d.topic, d.partition, d.off, NULLIF(d.key, ''::bytea), d.payload \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::bytea[], $7::bytea[]) \
              AS d(id, user_id, topic, partition, off, key, payload) \
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = d.user_id) \
         ON CONFLICT (deposit_id) DO NOTHING RETURNING deposit_id",
    )
    .bind(deposits.iter().map(|(d, _)| d.deposit_id.clone()).collect::<Vec<_>>())
    .bind(deposits.iter().map(|(d, _)| d.user_id.to_string()).collect::<Vec<_>>())
    .bind(deposits.iter().map(|(_, at)| at.topic.clone()).collect::<Vec<_>>())
    .bind(deposits.iter().map(|(_, at)| at.partition).collect::<Vec<_>>())
    .bind(deposits.iter().map(|(_, at)| at.offset).collect::<Vec<_>>())
    .bind(deposits.iter().map(|(_, at)| at.key.clone().unwrap_or_default()).collect::<Vec<_>>())
    .bind(deposits.iter().map(|(_, at)| at.payload.clone()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    if !held.is_empty() {
        OUTCOMES.with_label_values(&["reward-engine", "deposit_unknown_user"]).inc_by(held.len() as u64);
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Held {
    deposit_id: String,
    user_id: String,
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// One sweep: releases holds whose user registered meanwhile, dead-letters those held longer
/// than `hold`. Returns (released, dead-lettered).
pub async fn sweep(pool: &PgPool, hold: Duration) -> sqlx::Result<(u64, usize)> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query("DELETE FROM unmatched_deposits u USING users WHERE users.user_id = u.user_id")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let expired: Vec<Held> = sqlx::query_as(
        "DELETE FROM unmatched_deposits WHERE first_seen < now() - make_interval(secs => $1) \
         RETURNING deposit_id, user_id, topic, partition, \"offset\", key, payload",
    )
    .bind(hold.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    for h in &expired {
        let letter = DeadLetter {
            topic: h.topic.clone(),
            partition: h.partition,
            offset: h.offset,
            key: h.key.clone(),
            payload: h.payload.clone(),
            label: "unknown_user",
            reason: format!(
                "deposit {} for user {} who was never registered within {} s (the deposit is recorded and still pays if the registration arrives)",
                h.deposit_id,
                h.user_id,
                hold.as_secs()
            ),
        };
        if dead_letter::record(&mut tx, "reward-engine", &letter).await? {
            DEAD_LETTERED.with_label_values(&["reward-engine", &h.topic, "unknown_user"]).inc();
        }
    }
    tx.commit().await?;
    Ok((released, expired.len()))
}

/// Sweeps every `every` until `stop`; a failed sweep is logged and tried again next time.
pub async fn run(pool: PgPool, every: Duration, hold: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match sweep(&pool, hold).await {
            Ok((0, 0)) => {}
            Ok((released, lettered)) => tracing::info!(released, lettered, "unmatched deposits swept"),
            Err(e) => tracing::warn!(error = %e, "unmatched-deposit sweep failed"),
        }
    }
}
