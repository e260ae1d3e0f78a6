//! Settlement: rewards whose qualifying deposit is younger than `campaign.settle_delay_secs`
//! wait in `pending_payouts`; this sweep pays them when due, through the same guarded path as
//! an immediate payment (eligibility, the shared-card check, the unique reward row), so a
//! payout is still credited at most once and a card shared with the referrer that arrived
//! meanwhile holds it for review. Several engines may sweep at once: rows are claimed with
//! `FOR UPDATE SKIP LOCKED`.

use std::time::Duration;

use refstream_runtime::outbox::enqueue;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::referral::lock_referral_of;
use crate::RewardEngine;

/// Settles every due payout (at most `limit`); returns how many were settled.
pub async fn sweep(engine: &RewardEngine, pool: &PgPool, limit: i64) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT p.referral_id, r.referee_id FROM pending_payouts p JOIN referrals r USING (referral_id) \
         WHERE p.due_at <= now() ORDER BY p.due_at LIMIT $1 FOR UPDATE OF p SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::new();
    for (referral_id, referee) in &due {
        sqlx::query("DELETE FROM pending_payouts WHERE referral_id = $1").bind(referral_id).execute(&mut *tx).await?;
        if let Some(mut referral) = lock_referral_of(&mut tx, referee).await? {
            engine.pay_if_due(&mut tx, &mut referral, &mut out).await?;
        }
    }
    enqueue(&mut tx, 0, &out).await?;
    tx.commit().await?;
    Ok(due.len())
}

/// Sweeps every `every` until `stop`; a failed sweep is logged and tried again.
pub async fn run(engine: std::sync::Arc<RewardEngine>, pool: PgPool, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        loop {
            match sweep(&engine, &pool, 200).await {
                Ok(200) => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "settlement sweep failed");
                    break;
                }
            }
        }
    }
}
