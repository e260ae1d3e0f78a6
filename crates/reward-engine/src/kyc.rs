//! KYC gates: the KYC service's `UserVerified` verdicts, and what they do to referrals whose
//! campaign requires the referee's (and/or referrer's) identity verified before paying. A
//! user's verdict is the latest by event time (REJECTED wins a tie), so verdicts arriving in any
//! order end the same. Settlement pays such a referral only once everyone required is verified;
//! until then its payout waits (the referral stays eligible). A verdict that arrives schedules
//! the payouts of the referrals it concerns again (settlement decides, behind the gate); a
//! REJECTED one rejects them, with its reason, and a later-dated VERIFIED that arrives after
//! it (before anything was paid) undoes that rejection: the referral goes back to the state it
//! was rejected from, exactly as if the verdicts had arrived in event-time order. Settlement's
//! gate waits until the engine has applied every verdict that had arrived when the payout's
//! hold ended, so a payout is decided by the same verdicts whatever the engine's lag.

use std::collections::BTreeMap;

use refstream_core::campaign::{KycState, Verification};
use refstream_core::events::UserVerified;
use refstream_core::lifecycle::{self, ReferralStatus};
use refstream_runtime::metrics::OUTCOMES;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::{self, Move, Referral};
use crate::RewardEngine;

/// Records a batch of verdicts (the latest per user by event time stands) and applies them to
/// the open referrals of those users; true when a payout was scheduled.
pub(crate) async fn verifications(engine: &RewardEngine, conn: &mut PgConnection, batch: &[&UserVerified]) -> sqlx::Result<bool> {
    sqlx::query(
        "INSERT INTO user_verifications (user_id, verified, reason, occurred_at, event_id) \
         SELECT DISTINCT ON (u) u, v, r, t, e FROM unnest($1::text[], $2::bool[], $3::text[], $4::timestamptz[], $5::uuid[]) AS b(u, v, r, t, e) \
         ORDER BY u, t DESC, v ASC \
         ON CONFLICT (user_id) DO UPDATE SET verified = EXCLUDED.verified, reason = EXCLUDED.reason, occurred_at = EXCLUDED.occurred_at, \
           event_id = EXCLUDED.event_id, recorded_at = now() \
         WHERE (EXCLUDED.occurred_at, NOT EXCLUDED.verified) > (user_verifications.occurred_at, NOT user_verifications.verified)",
    )
    .bind(batch.iter().map(|v| v.user_id.to_string()).collect::<Vec<_>>())
    .bind(batch.iter().map(|v| v.verified).collect::<Vec<_>>())
    .bind(batch.iter().map(|v| v.reason.clone()).collect::<Vec<Option<String>>>())
    .bind(batch.iter().map(|v| v.occurred_at).collect::<Vec<_>>())
    .bind(batch.iter().map(|v| v.event_id).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    let users: Vec<String> = batch.iter().map(|v| v.user_id.to_string()).collect();
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT referral_id FROM referrals WHERE (referee_id = ANY($1) OR referrer_id = ANY($1)) \
         AND status IN ('pending', 'held', 'eligible', 'capped', 'rejected') AND terms_version > 0",
    )
    .bind(&users)
    .fetch_all(&mut *conn)
    .await?;
    if ids.is_empty() {
        return Ok(false);
    }
    let mut referrals = store::lock_by_id(conn, engine, &ids).await?;
    let states = states_of(conn, engine, referrals.values()).await?;
    let mut moves = Vec::new();
    // Rejected by KYC last (no other move since), and not rejected by the scorer: where from.
    let rejected: Vec<Uuid> = referrals.values().filter(|r| r.status() == ReferralStatus::Rejected).map(|r| r.referral_id).collect();
    let restorable: BTreeMap<Uuid, ReferralStatus> = if rejected.is_empty() {
        BTreeMap::new()
    } else {
        sqlx::query_as::<_, (Uuid, String, String, String)>(
            "SELECT DISTINCT ON (t.referral_id) t.referral_id, t.from_status, t.to_status, t.cause FROM referral_transitions t \
             WHERE t.referral_id = ANY($1) \
               AND NOT EXISTS (SELECT 1 FROM assessments a WHERE a.referral_id = t.referral_id AND a.decision = 'REJECT') \
             ORDER BY t.referral_id, t.id DESC",
        )
        .bind(&rejected)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .filter(|(_, _, to, cause)| to == "rejected" && cause.starts_with(lifecycle::KYC_REJECTED))
        .filter_map(|(id, from, _, _)| Some((id, from.parse::<ReferralStatus>().ok()?)))
        .collect()
    };
    let mut now_clear = Vec::new();
    for referral in referrals.values_mut() {
        if let (Some(before), false) =
            (restorable.get(&referral.referral_id), matches!(states.get(&referral.referral_id), Some(KycState::Rejected(_))))
        {
            if let Some(m) = lifecycle::kyc_restore(*before).and_then(|t| Move::of(referral, t, "a later KYC verdict verified the user")) {
                OUTCOMES.with_label_values(&["reward-engine", "kyc_rejection_undone"]).inc();
                moves.push(m);
            }
        }
        match states.get(&referral.referral_id) {
            Some(KycState::Rejected(reason)) => {
                if let Some(m) = Move::of(referral, lifecycle::KYC_REJECT, reason.clone()) {
                    OUTCOMES.with_label_values(&["reward-engine", "kyc_rejected"]).inc();
                    moves.push(m);
                }
            }
            Some(KycState::Clear) if referral.status() == ReferralStatus::Eligible => now_clear.push(referral.referral_id),
            _ => {}
        }
    }
    store::apply_moves(conn, &moves).await?;
    let clear: Vec<&Referral> = now_clear.iter().filter_map(|id| referrals.get(id)).collect();
    Ok(store::schedule_if_qualifying(conn, engine, &clear).await? > 0)
}

/// The KYC state of each referral under its campaign's requirement (campaigns that require
/// nothing are `Clear`), from the recorded verdicts of its referee and referrer.
pub(crate) async fn states_of<'a>(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    referrals: impl Iterator<Item = &'a Referral>,
) -> sqlx::Result<BTreeMap<Uuid, KycState>> {
    let referrals: Vec<&Referral> = referrals.collect();
    // Only the users a campaign requires verified are looked up: a batch of referrals whose
    // campaigns require no KYC (every default-campaign batch) reads nothing.
    let required = |r: &Referral| engine.terms.of(r).is_some_and(|c| c.kyc.referee || c.kyc.referrer);
    let users: Vec<String> = referrals.iter().filter(|r| required(r)).flat_map(|r| [r.referee_id.clone(), r.referrer_id.clone()]).collect();
    let rows: Vec<(String, bool, Option<String>)> = if users.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as("SELECT user_id, verified, reason FROM user_verifications WHERE user_id = ANY($1)")
            .bind(&users)
            .fetch_all(&mut *conn)
            .await?
    };
    let verdicts: BTreeMap<String, Verification> =
        rows.into_iter().map(|(u, ok, reason)| (u, if ok { Verification::Verified } else { Verification::Rejected(reason) })).collect();
    let of = |u: &str| verdicts.get(u).cloned().unwrap_or(Verification::Unknown);
    Ok(referrals
        .iter()
        .map(|r| {
            let state = engine.terms.of(r).map_or(KycState::Waiting, |c| c.kyc.state(&of(&r.referee_id), &of(&r.referrer_id)));
            (r.referral_id, state)
        })
        .collect())
}
