//! What a batch of each input does, set-based: a batch is the records of one partition of one
//! topic, applied with a handful of statements whatever its size. Deposits and review approvals
//! only schedule payouts (the settlement sweep pays, behind the gate); scores move referrals
//! through the lifecycle (only tightening once scored) and claw back a paid referral the scorer
//! rejects, as the campaign says; reversals take rewards back with compensating entries.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use refstream_core::events::{DepositCompleted, DepositReversed, ReferralScored, ReviewDecided};
use refstream_core::lifecycle::{self, Decision, ReferralStatus};
use refstream_core::settlement::{AfterPayment, CLAWBACK};
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::OutboxMessage;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ledger::{self, Reverse};
use crate::store::{self, Move, Referral};
use crate::{unmatched, Position, RewardEngine};

/// Records deposits (a replayed deposit id is skipped), holds those of unknown users, and
/// schedules a payout for every referral that may still pay and now has a qualifying deposit;
/// true when it scheduled one.
pub(crate) async fn deposits(
    engine: &RewardEngine,
    conn: &mut PgConnection,
    batch: &[(&DepositCompleted, &Position)],
) -> sqlx::Result<bool> {
    let recorded: Vec<&DepositCompleted> = batch.iter().map(|(d, _)| *d).collect();
    let store::RecordedAndLocked { inserted, mut referrals, mut deposits } =
        store::record_deposits_and_lock(conn, engine, &recorded).await?;
    let duplicates = batch.len() - inserted.len();
    if duplicates > 0 {
        OUTCOMES.with_label_values(&["reward-engine", "duplicate_deposit"]).inc_by(duplicates as u64);
    }
    let fresh: Vec<(&DepositCompleted, &Position)> = {
        let mut left: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &inserted {
            *left.entry(id.as_str()).or_default() += 1;
        }
        batch.iter().filter(|(d, _)| left.get_mut(d.deposit_id.as_str()).is_some_and(|n| std::mem::replace(n, 0) > 0)).copied().collect()
    };
    if fresh.is_empty() {
        return Ok(false);
    }
    // A referee is a registered user: only the other deposits can belong to a user never seen
    // (their raw records need not travel to Postgres otherwise).
    let maybe_unknown: Vec<(&DepositCompleted, &Position)> =
        fresh.iter().filter(|(d, _)| !referrals.contains_key(d.user_id.as_str())).copied().collect();
    if !maybe_unknown.is_empty() {
        unmatched::hold_unknown(conn, &maybe_unknown).await?;
    }
    deposits.extend(revive_expired(engine, conn, &mut referrals).await?);
    let open: Vec<&Referral> = referrals
        .values()
        .filter(|r| matches!(r.status(), ReferralStatus::Pending | ReferralStatus::Held | ReferralStatus::Eligible))
        .collect();
    Ok(store::schedule_qualifying(conn, engine, &open, &deposits).await? > 0)
}

/// Expired referrals among `referrals` (locked) that a deposit made within their window
/// (reported late) now qualifies go back to the state they expired from; the caller then
/// schedules their payouts. Returns the deposits of the expired referrals' referees, by user.
async fn revive_expired(
    engine: &RewardEngine,
    conn: &mut PgConnection,
    referrals: &mut BTreeMap<String, Referral>,
) -> sqlx::Result<BTreeMap<String, Vec<store::Recorded>>> {
    let ids: Vec<Uuid> = referrals.values().filter(|r| r.status() == ReferralStatus::Expired).map(|r| r.referral_id).collect();
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let before: BTreeMap<Uuid, String> = sqlx::query_as::<_, (Uuid, String)>(
        "SELECT DISTINCT ON (referral_id) referral_id, from_status FROM referral_transitions \
         WHERE referral_id = ANY($1) AND to_status = 'expired' ORDER BY referral_id, id DESC",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let referees: Vec<String> = referrals.values().filter(|r| ids.contains(&r.referral_id)).map(|r| r.referee_id.clone()).collect();
    let deposits = store::deposits_of(conn, &referees).await?;
    let rates = store::rates_for(conn, engine, referrals.values().filter(|r| ids.contains(&r.referral_id)), &deposits).await?;
    let mut moves = Vec::new();
    for referral in referrals.values_mut().filter(|r| ids.contains(&r.referral_id)) {
        let qualifies = deposits.get(&referral.referee_id).and_then(|d| store::qualifying(engine, referral, d, &rates)).is_some();
        let back = before.get(&referral.referral_id).and_then(|s| s.parse::<ReferralStatus>().ok()).and_then(lifecycle::revive);
        if let (true, Some(t)) = (qualifies, back) {
            OUTCOMES.with_label_values(&["reward-engine", "expired_referral_revived"]).inc();
            moves.extend(Move::of(referral, t, "a qualifying deposit made within the window was reported after it expired"));
        }
    }
    store::apply_moves(conn, &moves).await?;
    Ok(deposits)
}

/// Takes back every reward paid for a reversed deposit (a reversal that arrives first is kept,
/// and keeps its deposit from qualifying when it lands).
pub(crate) async fn reversals(
    engine: &RewardEngine,
    conn: &mut PgConnection,
    batch: &[&DepositReversed],
    out: &mut Vec<OutboxMessage>,
) -> sqlx::Result<()> {
    // The first reversal of a deposit in the batch wins, as it would one at a time.
    let mut seen = std::collections::BTreeSet::new();
    let batch: Vec<&DepositReversed> = batch.iter().copied().filter(|r| seen.insert(r.deposit_id.as_str())).collect();
    let ids: Vec<String> = batch.iter().map(|r| r.deposit_id.clone()).collect();
    let reasons: Vec<String> = batch.iter().map(|r| r.reason.as_str().to_owned()).collect();
    let at: Vec<DateTime<Utc>> = batch.iter().map(|r| r.occurred_at).collect();
    sqlx::query(
        "INSERT INTO deposit_reversals (deposit_id, user_id, reason, occurred_at) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) ON CONFLICT (deposit_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(batch.iter().map(|r| r.user_id.to_string()).collect::<Vec<_>>())
    .bind(&reasons)
    .bind(&at)
    .execute(&mut *conn)
    .await?;
    let reversed: Vec<String> = sqlx::query_scalar(
        "UPDATE deposits d SET reversed_at = r.at, reversal_reason = r.reason \
         FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS r(id, reason, at) \
         WHERE d.deposit_id = r.id AND d.reversed_at IS NULL RETURNING d.deposit_id",
    )
    .bind(&ids)
    .bind(&reasons)
    .bind(&at)
    .fetch_all(&mut *conn)
    .await?;
    if reversed.is_empty() {
        return Ok(());
    }
    // Lock the referrals first (id order), as the settlement sweep does, then the rewards.
    let referral_ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT referral_id FROM rewards WHERE qualifying_deposit_id = ANY($1) AND reversed_at IS NULL")
            .bind(&reversed)
            .fetch_all(&mut *conn)
            .await?;
    if referral_ids.is_empty() {
        return Ok(());
    }
    let mut referrals = store::lock_by_id(conn, engine, &referral_ids).await?;
    let pick: Vec<usize> = (0..batch.len()).filter(|&i| reversed.contains(&ids[i])).collect();
    let (ids, reasons, at): (Vec<String>, Vec<String>, Vec<DateTime<Utc>>) = (
        pick.iter().map(|&i| ids[i].clone()).collect(),
        pick.iter().map(|&i| reasons[i].clone()).collect(),
        pick.iter().map(|&i| at[i]).collect(),
    );
    let taken = ledger::reverse(conn, engine, Reverse::Deposits { ids: &ids, reasons: &reasons, at: &at }, out).await?;
    let mut moves = Vec::new();
    for id in taken {
        if let Some(referral) = referrals.get_mut(&id) {
            moves.extend(Move::of(referral, lifecycle::REVERSE, "qualifying deposit reversed"));
        }
    }
    store::apply_moves(conn, &moves).await
}

/// Applies scores in order: the first moves a pending referral, later ones only tighten an
/// unpaid one; a paid referral the scorer flags is clawed back or left for review, as the
/// campaign says. A referral that becomes eligible gets a payout if a deposit qualifies (then
/// true).
pub(crate) async fn scores(
    engine: &RewardEngine,
    conn: &mut PgConnection,
    batch: &[&ReferralScored],
    out: &mut Vec<OutboxMessage>,
) -> sqlx::Result<bool> {
    let referees: Vec<String> = batch.iter().map(|s| s.referee_id.to_string()).collect();
    let mut referrals = store::lock_by_referee(conn, engine, &referees).await?;
    let mut moves = Vec::new();
    let mut eligible: Vec<String> = Vec::new();
    let mut clawbacks: BTreeMap<Uuid, Uuid> = BTreeMap::new();
    for s in batch {
        let Some(referral) = referrals.get_mut(s.referee_id.as_str()) else {
            tracing::warn!(referral = %s.referral_id, "score for an unknown referral");
            continue;
        };
        let status = referral.status();
        let first = status == ReferralStatus::Pending;
        let cause = format!(
            "{} {} {} [{}] {}",
            if first { "score" } else { "re-score" },
            s.score,
            s.decision.as_str(),
            s.reasons.join(","),
            s.rule_version
        );
        if let Some(t) = lifecycle::on_any_score(status, s.decision, referral.cleared_by_review) {
            moves.extend(Move::of(referral, t, cause));
            OUTCOMES.with_label_values(&["reward-engine", if first { s.decision.as_str() } else { "rescore_tightened" }]).inc();
            if t.to == ReferralStatus::Eligible {
                eligible.push(referral.referee_id.clone());
            }
            continue;
        }
        if status == ReferralStatus::Rewarded {
            match engine.after_payment.on_paid(s.decision, referral.cleared_by_review) {
                Some(AfterPayment::Clawback) => {
                    clawbacks.entry(referral.referral_id).or_insert(s.event_id);
                }
                Some(AfterPayment::Review) => {
                    OUTCOMES.with_label_values(&["reward-engine", "flagged_after_payment"]).inc();
                    tracing::warn!(referral = %s.referral_id, cause, "paid referral flagged by a later score: left for review");
                }
                None => {}
            }
        } else if s.decision != Decision::Approve && status == ReferralStatus::Reversed {
            OUTCOMES.with_label_values(&["reward-engine", "flagged_after_payment"]).inc();
        }
    }
    if !clawbacks.is_empty() {
        claw_back(engine, conn, &mut referrals, &clawbacks, &mut moves, out).await?;
    }
    store::apply_moves(conn, &moves).await?;
    schedule_eligible(engine, conn, &referrals, &eligible).await
}

/// Reverses the rewards of paid referrals the scorer rejected (`referral → ReferralScored event
/// id`), naming the assessment revision, and moves them to `reversed`.
async fn claw_back(
    engine: &RewardEngine,
    conn: &mut PgConnection,
    referrals: &mut BTreeMap<String, Referral>,
    clawbacks: &BTreeMap<Uuid, Uuid>,
    moves: &mut Vec<Move>,
    out: &mut Vec<OutboxMessage>,
) -> sqlx::Result<()> {
    let events: Vec<Uuid> = clawbacks.values().copied().collect();
    let revisions: BTreeMap<Uuid, i32> =
        sqlx::query_as::<_, (Uuid, i32)>("SELECT event_id, revision FROM assessment_history WHERE event_id = ANY($1)")
            .bind(&events)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    let ids: Vec<Uuid> = clawbacks.keys().copied().collect();
    let assessments: Vec<Uuid> = clawbacks.values().copied().collect();
    let revs: Vec<i32> = assessments.iter().map(|e| revisions.get(e).copied().unwrap_or(0)).collect();
    let taken =
        ledger::reverse(conn, engine, Reverse::Fraud { referrals: &ids, assessments: &assessments, revisions: &revs, at: Utc::now() }, out)
            .await?;
    for id in taken {
        if let Some(referral) = referrals.values_mut().find(|r| r.referral_id == id) {
            let cause = format!(
                "fraud found after payment: assessment {} (revision {})",
                clawbacks[&id],
                revisions.get(&clawbacks[&id]).copied().unwrap_or(0)
            );
            moves.extend(Move::of(referral, CLAWBACK, cause));
        }
    }
    Ok(())
}

/// Reviewers' decisions on held referrals: approve makes one eligible (and cleared, so a
/// later REVIEW signal does not hold it again) and schedules its payout; reject rejects it.
pub(crate) async fn reviews(engine: &RewardEngine, conn: &mut PgConnection, batch: &[&ReviewDecided]) -> sqlx::Result<bool> {
    let referees: Vec<String> = batch.iter().map(|r| r.referee_id.to_string()).collect();
    let mut referrals = store::lock_by_referee(conn, engine, &referees).await?;
    let mut moves = Vec::new();
    let mut cleared = Vec::new();
    for r in batch {
        let Some(referral) = referrals.get_mut(r.referee_id.as_str()) else { continue };
        let verdict = if r.approve { "approved" } else { "rejected" };
        if let Some(m) = Move::of(referral, lifecycle::on_review(r.approve), format!("review {verdict} by {}: {}", r.reviewer, r.reason)) {
            moves.push(m);
            if r.approve {
                referral.cleared_by_review = true;
                cleared.push(referral.referee_id.clone());
            }
        }
    }
    store::apply_moves(conn, &moves).await?;
    if !cleared.is_empty() {
        let ids: Vec<Uuid> = cleared.iter().filter_map(|e| referrals.get(e)).map(|r| r.referral_id).collect();
        sqlx::query("UPDATE referrals SET cleared_by_review = true WHERE referral_id = ANY($1)").bind(&ids).execute(&mut *conn).await?;
    }
    schedule_eligible(engine, conn, &referrals, &cleared).await
}

/// Schedules the payouts of `referees`' referrals that are eligible; true when it scheduled one.
async fn schedule_eligible(
    engine: &RewardEngine,
    conn: &mut PgConnection,
    referrals: &BTreeMap<String, Referral>,
    referees: &[String],
) -> sqlx::Result<bool> {
    let now_eligible: Vec<&Referral> =
        referees.iter().filter_map(|e| referrals.get(e)).filter(|r| r.status() == ReferralStatus::Eligible).collect();
    Ok(store::schedule_if_qualifying(conn, engine, &now_eligible).await? > 0)
}
