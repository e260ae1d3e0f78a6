//! Referral expiry: a referral whose window (its campaign's `window_days` after the referee's
//! registration) passed without a qualifying deposit becomes `expired`, with a transition row.
//! Lag never decides it: the sweep first captures where `deposit-completed` ends (a barrier, kept
//! in `expiry_barrier`), waits until this engine has applied every deposit up to there (its
//! durable `consumer_progress`), and only then expires the referrals whose window had ended
//! when the barrier was captured — every deposit published before the window closed has been
//! recorded by then, however far behind the engine was. A deposit made within the window but
//! published after that (a payments backlog) brings the referral back (`apply::deposits`), so a
//! late report never loses a reward.

use chrono::{DateTime, Utc};
use refstream_core::lifecycle;
use refstream_core::settlement::{covers, Position};
use refstream_runtime::metrics::OUTCOMES;
use sqlx::PgPool;
use uuid::Uuid;

use crate::gate::EndOffsets;
use crate::store::{self, Move};
use crate::RewardEngine;

/// Referrals expired per transaction.
const BATCH: i64 = 500;

fn to_json(p: &Position) -> serde_json::Value {
    serde_json::Value::Array(p.iter().map(|((t, part), o)| serde_json::json!([t, part, o])).collect())
}

fn from_json(v: &serde_json::Value) -> Position {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some(((e.get(0)?.as_str()?.to_owned(), i32::try_from(e.get(1)?.as_i64()?).ok()?), e.get(2)?.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The shortest window any referral can have: the default campaign's, or a stored campaign
/// version's (`window_days`, the default's where a version has none). A referral registered
/// less than this before a moment cannot have expired by then, so the sweep never reads the
/// open referrals still inside every window (with a floor of a day it read every open referral
/// older than a day, each round, to expire none of those inside a 30-day window). A version
/// whose `window_days` is not a number (one inserted by hand: it does not load, so it neither
/// pays nor expires) is left out rather than failing every round.
async fn shortest_window(engine: &RewardEngine, pool: &PgPool) -> sqlx::Result<chrono::Duration> {
    let days: i32 = sqlx::query_scalar(
        "SELECT LEAST($1, COALESCE(min(CASE WHEN jsonb_typeof(definition->'window_days') = 'number' \
                                                THEN (definition->>'window_days')::numeric::int END), $1)) FROM campaign_versions",
    )
    .bind(default_window_days(engine))
    .fetch_one(pool)
    .await?;
    Ok(chrono::Duration::days(i64::from(days)))
}

/// The default campaign's window in days: the window of a referral bound to no stored version.
fn default_window_days(engine: &RewardEngine) -> i32 {
    i32::try_from(engine.terms.default_campaign().window.num_days()).unwrap_or(i32::MAX)
}

/// One round: captures a barrier when referrals may have expired and none is pending; once the
/// engine's progress covers it, expires what had expired by then. Returns how many expired.
pub async fn sweep<E: EndOffsets>(engine: &RewardEngine, pool: &PgPool, ends: &E) -> anyhow::Result<usize> {
    let barrier: Option<(DateTime<Utc>, serde_json::Value, DateTime<Utc>, Uuid)> =
        sqlx::query_as("SELECT captured_at, deposits, after_registered_at, after_referral_id FROM expiry_barrier WHERE id = 1")
            .fetch_optional(pool)
            .await?;
    let Some((captured_at, deposits, after_at, after_id)) = barrier else {
        let cutoff = shortest_window(engine, pool).await?;
        let candidates: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM referrals WHERE status_group IN ('open', 'held') AND referee_registered_at < now() - $1::interval)",
        )
        .bind(cutoff)
        .fetch_one(pool)
        .await?;
        if candidates {
            // The time first, then where the stream ends: a deposit published in between is
            // covered by the ends, one published after is after the captured time.
            let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?;
            let ends = ends.end_offsets(std::slice::from_ref(&engine.topics.deposit_completed)).await?;
            sqlx::query(
                "INSERT INTO expiry_barrier (id, captured_at, deposits, after_registered_at, after_referral_id) \
                 VALUES (1, $1, $2, '1970-01-01T00:00:00Z', '00000000-0000-0000-0000-000000000000') ON CONFLICT (id) DO NOTHING",
            )
            .bind(now)
            .bind(to_json(&ends))
            .execute(pool)
            .await?;
        }
        return Ok(0);
    };
    let progress: Vec<(String, i32, i64)> =
        sqlx::query_as("SELECT topic, partition, next_offset FROM consumer_progress WHERE consumer = 'reward-engine'")
            .fetch_all(pool)
            .await?;
    let progress: Position = progress.into_iter().map(|(t, p, n)| ((t, p), n)).collect();
    if !covers(&progress, &from_json(&deposits)) {
        return Ok(0);
    }
    let cutoff = captured_at - shortest_window(engine, pool).await?;
    let mut tx = pool.begin().await?;
    // The next page after the cursor of the referrals whose window (their campaign version's, or
    // the default campaign's) had ended at the barrier; those that cannot expire yet are passed
    // over by the cursor, so a page of them never blocks the rest.
    let page: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT r.referral_id, r.referee_registered_at FROM referrals r \
         LEFT JOIN campaign_versions v ON v.campaign_id = r.campaign_id AND v.version = r.terms_version \
         WHERE r.status_group IN ('open', 'held') AND r.referee_registered_at < $1 \
           AND (r.referee_registered_at, r.referral_id) > ($4, $5) \
           AND r.referee_registered_at + make_interval(days => COALESCE((v.definition->>'window_days')::int, $3)) < $6 \
         ORDER BY r.referee_registered_at, r.referral_id LIMIT $2 FOR UPDATE OF r SKIP LOCKED",
    )
    .bind(cutoff)
    .bind(BATCH)
    .bind(default_window_days(engine))
    .bind(after_at)
    .bind(after_id)
    .bind(captured_at)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = page.iter().map(|(id, _)| *id).collect();
    let mut referrals = store::lock_by_id(&mut tx, engine, &ids).await?;
    let referees: Vec<String> = referrals.values().map(|r| r.referee_id.clone()).collect();
    let deposits_of = store::deposits_of(&mut tx, &referees).await?;
    let rates = store::rates_for(&mut tx, engine, referrals.values(), &deposits_of).await?;
    let mut moves = Vec::new();
    for referral in referrals.values_mut() {
        let Some(campaign) = engine.terms.of(referral) else { continue };
        let window_end = referral.referee_registered_at + campaign.window;
        if window_end >= captured_at {
            continue;
        }
        let paying = deposits_of.get(&referral.referee_id).and_then(|d| store::qualifying(engine, referral, d, &rates));
        if paying.is_none() {
            let cause = format!(
                "window of {} days ended {} without a qualifying deposit",
                campaign.window.num_days(),
                window_end.format("%Y-%m-%d %H:%M:%S UTC")
            );
            moves.extend(Move::of(referral, lifecycle::EXPIRE, cause));
        }
    }
    store::apply_moves(&mut tx, &moves).await?;
    match page.last() {
        Some((id, at)) if i64::try_from(page.len()).unwrap_or(i64::MAX) >= BATCH => {
            sqlx::query("UPDATE expiry_barrier SET after_registered_at = $1, after_referral_id = $2 WHERE id = 1 AND captured_at = $3")
                .bind(at)
                .bind(id)
                .bind(captured_at)
                .execute(&mut *tx)
                .await?;
        }
        // Everything this barrier could expire is done: the next round captures a new one.
        _ => {
            sqlx::query("DELETE FROM expiry_barrier WHERE id = 1 AND captured_at = $1").bind(captured_at).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    OUTCOMES.with_label_values(&["reward-engine", "referral_expired"]).inc_by(moves.len() as u64);
    Ok(moves.len())
}
