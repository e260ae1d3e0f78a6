//! Writing the facts, set-based: one `UNNEST` statement per kind of record in a batch, whatever
//! its size. What each guarantees:
//!
//! - **One row per natural key** (click id, user id, referral id, deposit id, reward id), and
//!   which record it holds does not depend on the order records are read in: when two records
//!   share a key, the one with the earliest event time (then the smallest event id) wins. A
//!   redelivery, a resend under a new event id (same or later time) or a replay from offset zero
//!   leaves the rows as they are, and records of one key on different partitions cannot race.
//! - **Scores and reviews converge**: a referral's row holds the greatest record by a total order
//!   ([`crate::rules::score_order`], [`crate::rules::review_order`]).
//! - Either way a batch is first reduced to its winning record per key (the same order as the
//!   SQL), and the upsert only replaces a row by a record that wins over it: the result is the
//!   extreme of a set, whatever order its members arrive in.
//! - **Rows in key order**: each statement inserts its rows sorted by key, so two partitions'
//!   batches touching the same keys lock them in the same order.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use refstream_core::events::{
    DepositCompleted, ReferralAttributed, ReferralClicked, ReferralScored, ReviewDecided, RewardGranted, RewardReversed, UserRegistered,
};
use refstream_core::Campaign;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::rules;

fn day(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

/// The winning record of each key (the greatest by `order`), sorted by key.
fn winners<'a, T, K: Ord>(records: &[&'a T], key: impl Fn(&T) -> K, order: impl Fn(&T, &T) -> Ordering) -> Vec<&'a T> {
    let mut best: BTreeMap<K, &T> = BTreeMap::new();
    for r in records {
        best.entry(key(r))
            .and_modify(|b| {
                if order(r, b).is_gt() {
                    *b = r
                }
            })
            .or_insert(r);
    }
    best.into_values().collect()
}

/// The winning record of each key when the earliest (event time, event id) wins.
fn earliest<'a, T, K: Ord>(records: &[&'a T], key: impl Fn(&T) -> K, at: impl Fn(&T) -> (DateTime<Utc>, Uuid)) -> Vec<&'a T> {
    winners(records, key, |a, b| at(b).cmp(&at(a)))
}

pub async fn signups(conn: &mut PgConnection, events: &[&UserRegistered]) -> sqlx::Result<()> {
    let rows = earliest(events, |e| e.user_id.to_string(), |e| (e.occurred_at, e.event_id));
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO analytics_signups AS x (user_id, platform, registered_at, day, event_id) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::date[], $5::uuid[]) \
         ON CONFLICT (user_id) DO UPDATE SET platform = EXCLUDED.platform, registered_at = EXCLUDED.registered_at, \
             day = EXCLUDED.day, event_id = EXCLUDED.event_id \
         WHERE (EXCLUDED.registered_at, EXCLUDED.event_id) < (x.registered_at, x.event_id)",
    )
    .bind(rows.iter().map(|e| e.user_id.to_string()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| rules::platform(&e.platform)).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| day(e.occurred_at)).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn clicks(conn: &mut PgConnection, events: &[&ReferralClicked]) -> sqlx::Result<()> {
    let rows = earliest(events, |e| e.click_id.clone(), |e| (e.occurred_at, e.event_id));
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO analytics_clicks AS x (click_id, campaign_id, referrer_id, platform, clicked_at, day, expired, event_id) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::date[], $7::bool[], $8::uuid[]) \
         ON CONFLICT (click_id) DO UPDATE SET campaign_id = EXCLUDED.campaign_id, referrer_id = EXCLUDED.referrer_id, \
             platform = EXCLUDED.platform, clicked_at = EXCLUDED.clicked_at, day = EXCLUDED.day, expired = EXCLUDED.expired, \
             event_id = EXCLUDED.event_id \
         WHERE (EXCLUDED.clicked_at, EXCLUDED.event_id) < (x.clicked_at, x.event_id)",
    )
    .bind(rows.iter().map(|e| e.click_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.campaign_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.referrer_id.to_string()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.platform.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| day(e.occurred_at)).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.expired).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Referrals, each with the end of its qualifying window under `campaign` (the terms in force
/// when the attribution is read).
pub async fn referrals(conn: &mut PgConnection, events: &[&ReferralAttributed], campaign: &Campaign) -> sqlx::Result<()> {
    let rows = earliest(events, |e| e.referral_id, |e| (e.occurred_at, e.event_id));
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO analytics_referrals AS x (referral_id, referee_id, referrer_id, campaign_id, registered_at, day, qualify_until, \
                                               attributed_at, event_id) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::date[], $7::timestamptz[], \
                              $8::timestamptz[], $9::uuid[]) \
         ON CONFLICT (referral_id) DO UPDATE SET referee_id = EXCLUDED.referee_id, referrer_id = EXCLUDED.referrer_id, \
             campaign_id = EXCLUDED.campaign_id, registered_at = EXCLUDED.registered_at, day = EXCLUDED.day, \
             qualify_until = EXCLUDED.qualify_until, attributed_at = EXCLUDED.attributed_at, event_id = EXCLUDED.event_id \
         WHERE (EXCLUDED.attributed_at, EXCLUDED.event_id) < (x.attributed_at, x.event_id)",
    )
    .bind(rows.iter().map(|e| e.referral_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.referee_id.to_string()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.referrer_id.to_string()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.campaign_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.referee_registered_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| day(e.referee_registered_at)).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.referee_registered_at + campaign.window).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps, per referral, the greatest score by [`rules::score_order`].
pub async fn scores(conn: &mut PgConnection, events: &[&ReferralScored]) -> sqlx::Result<()> {
    let rows = winners(events, |e| e.referral_id, rules::score_order);
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO analytics_scores AS s (referral_id, decision, strictness, score, reasons, rule_version, occurred_at, event_id) \
         SELECT id, decision, strictness, score, CASE WHEN reasons = '' THEN '{}'::text[] ELSE string_to_array(reasons, ',') END, \
                rule_version, at, event_id \
         FROM unnest($1::uuid[], $2::text[], $3::int2[], $4::int2[], $5::text[], $6::text[], $7::timestamptz[], $8::uuid[]) \
              AS b(id, decision, strictness, score, reasons, rule_version, at, event_id) \
         ON CONFLICT (referral_id) DO UPDATE SET decision = EXCLUDED.decision, strictness = EXCLUDED.strictness, \
             score = EXCLUDED.score, reasons = EXCLUDED.reasons, rule_version = EXCLUDED.rule_version, \
             occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id \
         WHERE (EXCLUDED.strictness, EXCLUDED.occurred_at, EXCLUDED.score, EXCLUDED.event_id) \
             > (s.strictness, s.occurred_at, s.score, s.event_id)",
    )
    .bind(rows.iter().map(|e| e.referral_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.decision.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| rules::strictness(e.decision)).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| i16::from(e.score)).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.reasons.join(",")).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.rule_version.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps, per referral, the latest reviewer's verdict by [`rules::review_order`].
pub async fn reviews(conn: &mut PgConnection, events: &[&ReviewDecided]) -> sqlx::Result<()> {
    let rows = winners(events, |e| e.referral_id, rules::review_order);
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO analytics_reviews AS v (referral_id, approve, reviewer, occurred_at, event_id) \
         SELECT * FROM unnest($1::uuid[], $2::bool[], $3::text[], $4::timestamptz[], $5::uuid[]) \
         ON CONFLICT (referral_id) DO UPDATE SET approve = EXCLUDED.approve, reviewer = EXCLUDED.reviewer, \
             occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id \
         WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) > (v.occurred_at, v.event_id)",
    )
    .bind(rows.iter().map(|e| e.referral_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.approve).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.reviewer.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Deposits, each marked whether its amount and currency can qualify under `campaign`.
pub async fn deposits(conn: &mut PgConnection, events: &[&DepositCompleted], campaign: &Campaign) -> sqlx::Result<()> {
    let rows = earliest(events, |e| e.deposit_id.clone(), |e| (e.occurred_at, e.event_id));
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO analytics_deposits AS x (deposit_id, user_id, amount, currency, occurred_at, qualifies, event_id) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::text[], $5::timestamptz[], $6::bool[], $7::uuid[]) \
         ON CONFLICT (deposit_id) DO UPDATE SET user_id = EXCLUDED.user_id, amount = EXCLUDED.amount, \
             currency = EXCLUDED.currency, occurred_at = EXCLUDED.occurred_at, qualifies = EXCLUDED.qualifies, \
             event_id = EXCLUDED.event_id \
         WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) < (x.occurred_at, x.event_id)",
    )
    .bind(rows.iter().map(|e| e.deposit_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.user_id.to_string()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.amount.amount).collect::<Vec<Decimal>>())
    .bind(rows.iter().map(|e| e.amount.currency.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| rules::qualifying_amount(campaign, &e.amount)).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn rewards(conn: &mut PgConnection, events: &[&RewardGranted]) -> sqlx::Result<()> {
    let rows = earliest(events, |e| e.reward_id, |e| (e.granted_at, e.event_id));
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO analytics_rewards AS x (reward_id, referral_id, beneficiary_id, role, reward_type, amount, currency, campaign_id, \
                                        qualifying_deposit_id, granted_at, granted_day, event_id) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::text[], $8::text[], \
                              $9::text[], $10::timestamptz[], $11::date[], $12::uuid[]) \
         ON CONFLICT (reward_id) DO UPDATE SET referral_id = EXCLUDED.referral_id, beneficiary_id = EXCLUDED.beneficiary_id, \
             role = EXCLUDED.role, reward_type = EXCLUDED.reward_type, amount = EXCLUDED.amount, \
             currency = EXCLUDED.currency, campaign_id = EXCLUDED.campaign_id, \
             qualifying_deposit_id = EXCLUDED.qualifying_deposit_id, granted_at = EXCLUDED.granted_at, \
             granted_day = EXCLUDED.granted_day, event_id = EXCLUDED.event_id \
         WHERE (EXCLUDED.granted_at, EXCLUDED.event_id) < (x.granted_at, x.event_id)",
    )
    .bind(rows.iter().map(|e| e.reward_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.referral_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.user_id.to_string()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.role.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.reward_type.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.amount.amount).collect::<Vec<Decimal>>())
    .bind(rows.iter().map(|e| e.amount.currency.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.campaign_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.qualifying_deposit_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.granted_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| day(e.granted_at)).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn reversals(conn: &mut PgConnection, events: &[&RewardReversed]) -> sqlx::Result<()> {
    let rows = earliest(events, |e| e.reward_id, |e| (e.reversed_at, e.event_id));
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO analytics_reversals AS x (reward_id, referral_id, user_id, amount, currency, reason, reversed_at, reversed_day, event_id) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::text[], $6::text[], $7::timestamptz[], \
                              $8::date[], $9::uuid[]) \
         ON CONFLICT (reward_id) DO UPDATE SET referral_id = EXCLUDED.referral_id, user_id = EXCLUDED.user_id, \
             amount = EXCLUDED.amount, currency = EXCLUDED.currency, reason = EXCLUDED.reason, \
             reversed_at = EXCLUDED.reversed_at, reversed_day = EXCLUDED.reversed_day, event_id = EXCLUDED.event_id \
         WHERE (EXCLUDED.reversed_at, EXCLUDED.event_id) < (x.reversed_at, x.event_id)",
    )
    .bind(rows.iter().map(|e| e.reward_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.referral_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.user_id.to_string()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.amount.amount).collect::<Vec<Decimal>>())
    .bind(rows.iter().map(|e| e.amount.currency.as_str().to_owned()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.reason.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.reversed_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| day(e.reversed_at)).collect::<Vec<_>>())
    .bind(rows.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_earliest_record_of_a_key_wins_whatever_the_order_and_rows_come_sorted() {
        let t = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        let recs = [("b", t(5), 1u128), ("a", t(9), 2), ("b", t(3), 3), ("c", t(1), 4), ("a", t(9), 1)];
        let forward: Vec<&(&str, DateTime<Utc>, u128)> = recs.iter().collect();
        let backward: Vec<&(&str, DateTime<Utc>, u128)> = recs.iter().rev().collect();
        for refs in [forward, backward] {
            let rows = earliest(&refs, |r| r.0, |r| (r.1, Uuid::from_u128(r.2)));
            assert_eq!(rows.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(), [("a", 1), ("b", 3), ("c", 4)]);
        }
    }

    #[test]
    fn the_greatest_record_per_referral_does_not_depend_on_the_order() {
        let (x, y) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let recs = [(y, 3), (x, 7), (x, 9), (y, 1), (x, 8)];
        let forward: Vec<&(Uuid, i32)> = recs.iter().collect();
        let backward: Vec<&(Uuid, i32)> = recs.iter().rev().collect();
        for refs in [forward, backward] {
            let best = winners(&refs, |r| r.0, |a, b| a.1.cmp(&b.1));
            assert_eq!(best.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(x, 9), (y, 3)]);
        }
    }
}
