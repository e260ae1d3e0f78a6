//! Money movements, set-based. A grant books two entries that sum to zero (the beneficiary's
//! account up, the campaign's account down) and a reversal books their exact negation; balances
//! change by the same amounts in the same transaction, so every balance equals the sum of its
//! entries. Nothing here books anything unless the `rewards` row it belongs to was really
//! inserted (or really marked reversed) by this transaction's statement: exactly-once rests on
//! the unique `(referral_id, reward_type)` and the `reversed_at IS NULL` guard, whatever the
//! batch size.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use refstream_core::campaign::RewardKind;
use refstream_core::events::{RewardGranted, RewardReversed};
use refstream_core::rewards::Grant;
use refstream_core::{Currency, DerivedId, Money, UserId};
use refstream_runtime::ledger::{book, campaign_account, user_account, Entry};
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::OutboxMessage;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::plan::Planned;
use crate::store::Referral;
use crate::RewardEngine;

/// A referral to pay, with the deposit that qualifies it and the barrier that let it settle.
#[derive(Debug, Clone)]
pub(crate) struct Payment<'a> {
    pub referral: &'a Referral,
    pub deposit_id: String,
    /// The qualifying deposit's amount (deposit tiers pay by it) and event time (per-period caps).
    pub deposit_amount: Decimal,
    pub deposited_at: DateTime<Utc>,
    /// The exchange rate that converted the deposit, and from when it was in force.
    pub fx: Option<(Decimal, DateTime<Utc>)>,
    pub barrier_id: i64,
    pub hold_ended_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Inserted {
    reward_id: Uuid,
    granted_at: DateTime<Utc>,
}

type Row<'r, 'a> = (&'r Payment<'a>, &'r Grant, Uuid);

/// Inserts reward rows; returns those really inserted (a conflict on any unique key — the
/// reward key, or a milestone's once per referrer — inserts nothing).
async fn insert(conn: &mut PgConnection, rows: &[&Row<'_, '_>]) -> sqlx::Result<Vec<Inserted>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: &dyn Fn(&Row<'_, '_>) -> String| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    sqlx::query_as(
        "INSERT INTO rewards (reward_id, referral_id, reward_type, beneficiary_id, role, amount, currency, campaign_id, \
                              qualifying_deposit_id, barrier_id, hold_ended_at, terms_version, fx_rate, fx_rate_at, \
                              kind, wagering_requirement, level, milestone) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::text[], $8::text[], \
                              $9::text[], $10::int8[], $11::timestamptz[], $12::int[], $13::numeric[], $14::timestamptz[], \
                              $15::text[], $16::numeric[], $17::int2[], $18::int[]) \
         ON CONFLICT DO NOTHING RETURNING reward_id, granted_at",
    )
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.0.referral.referral_id).collect::<Vec<_>>())
    .bind(col(&|r| r.1.reward_type.clone()))
    .bind(col(&|r| r.1.beneficiary.clone()))
    .bind(col(&|r| r.1.role.as_str().to_owned()))
    .bind(rows.iter().map(|r| r.1.amount.amount).collect::<Vec<_>>())
    .bind(col(&|r| r.1.amount.currency.as_str().to_owned()))
    .bind(col(&|r| r.0.referral.campaign_id.clone()))
    .bind(col(&|r| r.0.deposit_id.clone()))
    .bind(rows.iter().map(|r| r.0.barrier_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.0.hold_ended_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.0.referral.terms_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.0.fx.map(|f| f.0)).collect::<Vec<Option<Decimal>>>())
    .bind(rows.iter().map(|r| r.0.fx.map(|f| f.1)).collect::<Vec<Option<DateTime<Utc>>>>())
    .bind(col(&|r| r.1.kind.as_str().to_owned()))
    .bind(rows.iter().map(|r| r.1.wagering_requirement).collect::<Vec<Option<Decimal>>>())
    .bind(rows.iter().map(|r| i16::from(r.1.level)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.milestone.and_then(|m| i32::try_from(m).ok())).collect::<Vec<Option<i32>>>())
    .fetch_all(&mut *conn)
    .await
}

/// What a grant inserted: the referral ids that got a new reward, and the ledger entries of
/// those rewards, for the caller to [`book`].
#[derive(Default)]
pub(crate) struct Granted {
    pub paid: Vec<Uuid>,
    pub entries: Vec<Entry>,
}

/// Credits every planned grant in one insert (and one more for milestones), and announces,
/// and returns the entries of, only the rows that insert really inserted (a conflict on the
/// reward key, or on a milestone's once-per-referrer key, inserts nothing). The caller books
/// the entries in the same transaction: settlement books them last before its outbox rows,
/// because the campaign's balance row they lock is shared by every settlement transaction.
pub(crate) async fn grant(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    planned: &[Planned<'_>],
    out: &mut Vec<OutboxMessage>,
) -> sqlx::Result<Granted> {
    let rows: Vec<Row<'_, '_>> = planned
        .iter()
        .flat_map(|p| p.grants.iter().map(move |g| (&p.payment, g, DerivedId::reward(p.payment.referral.referral_id, &g.reward_type))))
        .collect();
    if rows.is_empty() {
        return Ok(Granted::default());
    }
    // Own and level rewards first; a milestone goes in only with its referral's own rewards (a
    // referral paid again inserts nothing, so it never reaches a milestone twice).
    let (own, milestones): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.1.milestone.is_none());
    let mut inserted = insert(conn, &own).await?;
    let new: BTreeSet<Uuid> = inserted.iter().map(|i| i.reward_id).collect();
    let reached: BTreeSet<Uuid> = own.iter().filter(|r| new.contains(&r.2)).map(|r| r.0.referral.referral_id).collect();
    let milestones: Vec<_> = milestones.into_iter().filter(|r| reached.contains(&r.0.referral.referral_id)).collect();
    inserted.extend(insert(conn, &milestones).await?);
    let granted_at: BTreeMap<Uuid, DateTime<Utc>> = inserted.into_iter().map(|i| (i.reward_id, i.granted_at)).collect();
    let mut entries = Vec::new();
    let mut paid = Vec::new();
    for (payment, g, reward_id) in rows.iter().filter(|r| granted_at.contains_key(&r.2)) {
        let (amount, currency) = (g.amount.amount, g.amount.currency.as_str().to_owned());
        let transaction = DerivedId::ledger_transaction("grant", *reward_id);
        let campaign = &payment.referral.campaign_id;
        for (account, amount) in [(user_account(&g.beneficiary, g.kind), amount), (campaign_account(campaign), -amount)] {
            entries.push(Entry { transaction, account, amount, currency: currency.clone(), reward: Some(*reward_id), kind: "grant" });
        }
        let event = RewardGranted {
            event_id: DerivedId::event("reward-granted", *reward_id),
            reward_id: *reward_id,
            referral_id: payment.referral.referral_id,
            user_id: UserId::parse(g.beneficiary.as_str()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            role: g.role,
            reward_type: g.reward_type.clone(),
            amount: g.amount,
            campaign_id: campaign.clone(),
            qualifying_deposit_id: payment.deposit_id.clone(),
            granted_at: granted_at[reward_id],
            level: g.level,
            milestone: g.milestone,
            kind: g.kind,
            wagering_requirement: g.wagering_requirement,
        };
        out.push(OutboxMessage::record(&engine.topics.reward_granted, &g.beneficiary, &event));
        OUTCOMES.with_label_values(&["reward-engine", "reward_granted"]).inc();
        if paid.last() != Some(&payment.referral.referral_id) {
            paid.push(payment.referral.referral_id);
        }
    }
    Ok(Granted { paid, entries })
}

/// Which rewards a reversal takes back.
pub(crate) enum Reverse<'a> {
    /// Every unreversed reward paid for these deposits, each with the deposit's reversal
    /// (reason REFUND or CHARGEBACK, and when).
    Deposits { ids: &'a [String], reasons: &'a [String], at: &'a [DateTime<Utc>] },
    /// Every unreversed reward of these referrals: fraud found after payment, with the
    /// assessment (ReferralScored event id, revision) that found it.
    Fraud { referrals: &'a [Uuid], assessments: &'a [Uuid], revisions: &'a [i32], at: DateTime<Utc> },
}

#[derive(sqlx::FromRow)]
struct Taken {
    reward_id: Uuid,
    referral_id: Uuid,
    beneficiary_id: String,
    amount: Decimal,
    currency: String,
    campaign_id: String,
    qualifying_deposit_id: String,
    reversed_at: DateTime<Utc>,
    reversal_reason: String,
    reversal_assessment_event_id: Option<Uuid>,
    kind: String,
}

/// Takes back the rewards `what` names, in one guarded update; books the compensating entries
/// and announces `RewardReversed` for the rows that update really changed. Returns the
/// referral ids whose rewards were taken back.
pub(crate) async fn reverse(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    what: Reverse<'_>,
    out: &mut Vec<OutboxMessage>,
) -> sqlx::Result<Vec<Uuid>> {
    const RETURNING: &str = "RETURNING w.reward_id, w.referral_id, w.beneficiary_id, w.amount, w.currency, w.campaign_id, \
                             w.qualifying_deposit_id, w.reversed_at, w.reversal_reason, w.reversal_assessment_event_id, w.kind";
    let taken: Vec<Taken> = match what {
        Reverse::Deposits { ids, reasons, at } => {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            sqlx::query_as(&format!(
                "UPDATE rewards w SET reversed_at = r.at, reversal_reason = r.reason \
                 FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS r(deposit_id, reason, at) \
                 WHERE w.qualifying_deposit_id = r.deposit_id AND w.reversed_at IS NULL {RETURNING}"
            ))
            .bind(ids)
            .bind(reasons)
            .bind(at)
            .fetch_all(&mut *conn)
            .await?
        }
        Reverse::Fraud { referrals, assessments, revisions, at } => {
            if referrals.is_empty() {
                return Ok(Vec::new());
            }
            sqlx::query_as(&format!(
                "UPDATE rewards w SET reversed_at = $4, reversal_reason = 'FRAUD', reversal_assessment_event_id = r.assessment, \
                        reversal_assessment_revision = r.revision \
                 FROM unnest($1::uuid[], $2::uuid[], $3::int4[]) AS r(referral_id, assessment, revision) \
                 WHERE w.referral_id = r.referral_id AND w.reversed_at IS NULL {RETURNING}"
            ))
            .bind(referrals)
            .bind(assessments)
            .bind(revisions)
            .bind(at)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let mut entries = Vec::new();
    let mut referrals = Vec::new();
    for r in &taken {
        let currency = r.currency.trim().to_owned();
        let transaction = DerivedId::ledger_transaction("reverse", r.reward_id);
        let kind =
            RewardKind::parse(&r.kind).ok_or_else(|| sqlx::Error::Protocol(format!("reward {} has kind {}", r.reward_id, r.kind)))?;
        for (account, amount) in [(user_account(&r.beneficiary_id, kind), -r.amount), (campaign_account(&r.campaign_id), r.amount)] {
            entries.push(Entry { transaction, account, amount, currency: currency.clone(), reward: Some(r.reward_id), kind: "reverse" });
        }
        let parsed = Currency::parse(&currency).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let event = RewardReversed {
            event_id: DerivedId::event("reward-reversed", r.reward_id),
            reward_id: r.reward_id,
            referral_id: r.referral_id,
            user_id: UserId::parse(r.beneficiary_id.clone()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            amount: Money::new(r.amount, parsed),
            reason: r.reversal_reason.clone(),
            deposit_id: r.qualifying_deposit_id.clone(),
            reversed_at: r.reversed_at,
            assessment_event_id: r.reversal_assessment_event_id,
        };
        out.push(OutboxMessage::record(&engine.topics.reward_reversed, &r.beneficiary_id, &event));
        let outcome = if r.reversal_reason == "FRAUD" { "reward_clawed_back" } else { "reward_reversed" };
        OUTCOMES.with_label_values(&["reward-engine", outcome]).inc();
        if !referrals.contains(&r.referral_id) {
            referrals.push(r.referral_id);
        }
    }
    book(conn, &entries).await?;
    Ok(referrals)
}
