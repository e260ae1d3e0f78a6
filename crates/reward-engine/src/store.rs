//! The engine's reads and writes of referrals, deposits and payouts, each a single statement
//! over a whole batch (array binds). Referrals are locked in `referral_id` order, so concurrent
//! batches (partitions are applied concurrently) and the settlement sweep never deadlock on
//! them; every status change is a guarded update from the state the row was locked in, with
//! its row in `referral_transitions`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use refstream_core::campaign::RecordedDeposit;
use refstream_core::events::DepositCompleted;
use refstream_core::fx::Rates;
use refstream_core::lifecycle::{ReferralStatus, Transition};
use refstream_core::{Currency, Money};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::RewardEngine;

/// A referral as the engine reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Referral {
    pub referral_id: Uuid,
    pub referrer_id: String,
    pub referee_id: String,
    pub campaign_id: String,
    /// The campaign version it pays by (0: the default campaign of the settings).
    pub terms_version: i32,
    pub referee_registered_at: DateTime<Utc>,
    pub status: String,
    pub cleared_by_review: bool,
}

impl Referral {
    pub fn status(&self) -> ReferralStatus {
        self.status.parse().unwrap_or(ReferralStatus::Rejected)
    }
}

pub(crate) const REFERRAL_COLUMNS: &str =
    "referral_id, referrer_id, referee_id, campaign_id, terms_version, referee_registered_at, status, cleared_by_review";

/// Locks the referrals of `referees` (in `referral_id` order) for the transaction, with their
/// terms loaded.
pub async fn lock_by_referee(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    referees: &[String],
) -> sqlx::Result<BTreeMap<String, Referral>> {
    let rows: Vec<Referral> =
        sqlx::query_as(&format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE referee_id = ANY($1) ORDER BY referral_id FOR UPDATE"))
            .bind(referees)
            .fetch_all(&mut *conn)
            .await?;
    engine.terms.load(conn, rows.iter()).await?;
    Ok(rows.into_iter().map(|r| (r.referee_id.clone(), r)).collect())
}

/// A row of [`record_deposits_and_lock`]: a deposit it inserted (`kind` = `inserted`), a
/// deposit stored before (`deposit`), or a referral it locked (`referral`).
#[derive(sqlx::FromRow)]
struct RecordedOrLocked {
    kind: String,
    deposit_id: Option<String>,
    user_id: Option<String>,
    amount: Option<Decimal>,
    currency: Option<String>,
    occurred_at: Option<DateTime<Utc>>,
    reversed: Option<bool>,
    recorded_at: Option<DateTime<Utc>>,
    referral_id: Option<Uuid>,
    referrer_id: Option<String>,
    referee_id: Option<String>,
    campaign_id: Option<String>,
    terms_version: Option<i32>,
    referee_registered_at: Option<DateTime<Utc>>,
    status: Option<String>,
    cleared_by_review: Option<bool>,
}

impl RecordedOrLocked {
    fn deposit(self) -> Option<DepositRow> {
        Some(DepositRow {
            deposit_id: self.deposit_id?,
            user_id: self.user_id?,
            amount: self.amount?,
            currency: self.currency?,
            occurred_at: self.occurred_at?,
            reversed: self.reversed?,
            recorded_at: self.recorded_at?,
        })
    }

    fn referral(self) -> Option<Referral> {
        Some(Referral {
            referral_id: self.referral_id?,
            referrer_id: self.referrer_id?,
            referee_id: self.referee_id?,
            campaign_id: self.campaign_id?,
            terms_version: self.terms_version?,
            referee_registered_at: self.referee_registered_at?,
            status: self.status?,
            cleared_by_review: self.cleared_by_review?,
        })
    }
}

/// What [`record_deposits_and_lock`] found: the deposit ids it inserted (one per row), the
/// referrals it locked by referee, and by user every recorded deposit of the referees whose
/// referral may still pay (`pending`, `held`, `eligible`), beside the batch's own deposits of
/// the other users (never looked up: only a referral that may still pay is decided).
pub struct RecordedAndLocked {
    pub inserted: Vec<String>,
    pub referrals: BTreeMap<String, Referral>,
    pub deposits: BTreeMap<String, Vec<Recorded>>,
}

/// Records `deposits` (a deposit id already stored is skipped), locks the referrals of the
/// users whose deposits were inserted (in `referral_id` order, with their terms loaded), and
/// reads the deposits of those whose referral may still pay, in one statement (one round trip:
/// at a low load a batch is one deposit).
///
/// The referees' deposits are a lookup per referee (`OFFSET 0` keeps it one): as
/// `IN (SELECT ...)` the planner hashed the whole deposits table for each batch while it looked
/// small enough (26,000 rows: 3.5 ms of a batch's 9, against 1 ms).
///
/// The referrals are locked before anything is decided: the expiry sweep locks them too, so a
/// referral it expires concurrently is returned expired (a row waited for is returned as
/// committed) and revived, and one locked here is skipped by it; a deposit and an expiry never
/// miss each other. The deposits come from the statement's snapshot, taken before any wait for
/// those locks: only a reversal changes a stored deposit, and a reversal does not take the
/// referral's lock before it marks its deposit, so no later read here could order the two
/// either. A deposit reversed meanwhile is caught where it matters: settlement reads the
/// deposits again under the referral's lock before it pays, and a reversal that lands after
/// the payment takes the reward back.
pub async fn record_deposits_and_lock(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    deposits: &[&DepositCompleted],
) -> sqlx::Result<RecordedAndLocked> {
    let rows: Vec<RecordedOrLocked> = sqlx::query_as(&format!(
        "WITH ins AS (INSERT INTO deposits (deposit_id, user_id, amount, currency, payment_fingerprint, occurred_at, reversed_at, reversal_reason) \
           SELECT d.id, d.user_id, d.amount, d.currency, d.card, d.at, r.occurred_at, r.reason \
           FROM unnest($1::text[], $2::text[], $3::numeric[], $4::text[], $5::text[], $6::timestamptz[]) \
                WITH ORDINALITY AS d(id, user_id, amount, currency, card, at, n) \
           LEFT JOIN deposit_reversals r ON r.deposit_id = d.id ORDER BY d.n \
           ON CONFLICT (deposit_id) DO NOTHING RETURNING deposit_id, user_id, amount, currency, occurred_at, reversed_at, recorded_at), \
              locked AS (SELECT {REFERRAL_COLUMNS} FROM referrals WHERE referee_id IN (SELECT user_id FROM ins) \
                         ORDER BY referral_id FOR UPDATE) \
         SELECT 'inserted' AS kind, deposit_id, user_id, amount, currency, occurred_at, reversed_at IS NOT NULL AS reversed, recorded_at, \
                {NO_REFERRAL} FROM ins \
         UNION ALL \
         SELECT 'deposit', d.deposit_id, d.user_id, d.amount, d.currency, d.occurred_at, d.reversed_at IS NOT NULL, d.recorded_at, {NO_REFERRAL} \
         FROM locked l CROSS JOIN LATERAL (SELECT * FROM deposits WHERE user_id = l.referee_id OFFSET 0) AS d \
         WHERE l.status IN ('pending', 'held', 'eligible') \
         UNION ALL \
         SELECT 'referral', NULL, NULL, NULL, NULL, NULL, NULL, NULL, {REFERRAL_COLUMNS} FROM locked"
    ))
    .bind(deposits.iter().map(|d| d.deposit_id.clone()).collect::<Vec<_>>())
    .bind(deposits.iter().map(|d| d.user_id.to_string()).collect::<Vec<_>>())
    .bind(deposits.iter().map(|d| d.amount.amount).collect::<Vec<_>>())
    .bind(deposits.iter().map(|d| d.amount.currency.as_str().to_owned()).collect::<Vec<_>>())
    .bind(deposits.iter().map(|d| d.payment_fingerprint.clone()).collect::<Vec<Option<String>>>())
    .bind(deposits.iter().map(|d| d.occurred_at).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut inserted = Vec::new();
    let mut stored = Vec::new();
    let mut referrals = Vec::new();
    for row in rows {
        match row.kind.as_str() {
            "inserted" => {
                inserted.extend(row.deposit_id.clone());
                stored.extend(row.deposit());
            }
            "deposit" => stored.extend(row.deposit()),
            _ => referrals.extend(row.referral()),
        }
    }
    engine.terms.load(conn, referrals.iter()).await?;
    Ok(RecordedAndLocked {
        inserted,
        referrals: referrals.into_iter().map(|r| (r.referee_id.clone(), r)).collect(),
        deposits: by_user(stored),
    })
}

/// The referral columns of [`REFERRAL_COLUMNS`], null, for a row that carries none.
const NO_REFERRAL: &str = "NULL::uuid AS referral_id, NULL AS referrer_id, NULL AS referee_id, NULL AS campaign_id, \
     NULL::int AS terms_version, NULL::timestamptz AS referee_registered_at, NULL AS status, NULL::bool AS cleared_by_review";

/// Locks referrals by id (in id order) for the transaction, with their terms loaded.
pub async fn lock_by_id(conn: &mut PgConnection, engine: &RewardEngine, ids: &[Uuid]) -> sqlx::Result<BTreeMap<Uuid, Referral>> {
    let rows: Vec<Referral> =
        sqlx::query_as(&format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE referral_id = ANY($1) ORDER BY referral_id FOR UPDATE"))
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
    engine.terms.load(conn, rows.iter()).await?;
    Ok(rows.into_iter().map(|r| (r.referral_id, r)).collect())
}

/// A recorded deposit and when it was recorded (its hold starts then).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub deposit: RecordedDeposit,
    pub recorded_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct DepositRow {
    deposit_id: String,
    user_id: String,
    amount: Decimal,
    currency: String,
    occurred_at: DateTime<Utc>,
    reversed: bool,
    recorded_at: DateTime<Utc>,
}

/// Every recorded deposit of `users`, by user: a lookup per user (`OFFSET 0` keeps it one; as
/// `user_id = ANY($1)` the planner read the whole table for a settlement's 1,000 users while its
/// statistics called it small).
pub async fn deposits_of(conn: &mut PgConnection, users: &[String]) -> sqlx::Result<BTreeMap<String, Vec<Recorded>>> {
    let rows: Vec<DepositRow> = sqlx::query_as(
        "SELECT d.deposit_id, d.user_id, d.amount, d.currency, d.occurred_at, d.reversed_at IS NOT NULL AS reversed, d.recorded_at \
         FROM (SELECT DISTINCT u FROM unnest($1::text[]) AS u) AS b \
         CROSS JOIN LATERAL (SELECT * FROM deposits WHERE user_id = b.u OFFSET 0) AS d",
    )
    .bind(users)
    .fetch_all(&mut *conn)
    .await?;
    Ok(by_user(rows))
}

/// Deposit rows by user (a row whose currency no longer parses is skipped).
fn by_user(rows: Vec<DepositRow>) -> BTreeMap<String, Vec<Recorded>> {
    let mut by_user: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
    for r in rows {
        // Currencies were validated when the deposit was decoded.
        let Ok(currency) = Currency::parse(r.currency.trim()) else { continue };
        let deposit = RecordedDeposit {
            deposit_id: r.deposit_id,
            amount: Money::new(r.amount, currency),
            occurred_at: r.occurred_at,
            reversed: r.reversed,
        };
        by_user.entry(r.user_id).or_default().push(Recorded { deposit, recorded_at: r.recorded_at });
    }
    by_user
}

/// The deposit that pays a referral, and its amount in the campaign's currency (converted at
/// the rate in force at the deposit's time when it is in another currency).
#[derive(Debug, Clone, Copy)]
pub struct Paying<'a> {
    pub recorded: &'a Recorded,
    pub amount: Decimal,
    /// The rate used and from when it was in force (`None`: the campaign's own currency).
    pub fx: Option<(Decimal, DateTime<Utc>)>,
}

/// The deposit that pays `referral` under its terms, among `deposits` (the referee's).
pub fn qualifying<'a>(engine: &RewardEngine, referral: &Referral, deposits: &'a [Recorded], rates: &Rates) -> Option<Paying<'a>> {
    let plain: Vec<RecordedDeposit> = deposits.iter().map(|d| d.deposit.clone()).collect();
    let campaign = engine.terms.of(referral)?;
    let q = campaign.first_qualifying_fx(referral.referee_registered_at, &plain, rates)?;
    let recorded = deposits.iter().find(|d| d.deposit.deposit_id == q.deposit.deposit_id)?;
    Some(Paying { recorded, amount: q.converted.amount.amount, fx: q.converted.rate })
}

/// The exchange rates that deciding `referrals` on `deposits` (their referees', by user) may
/// need, read in the caller's transaction: for each deposit in another currency than its
/// referral's campaign, the rates of that pair in force at the deposit's time (both directions);
/// none, without a read, when there is no such deposit — a deposit in its campaign's own
/// currency is never converted ([`refstream_core::fx::Rates::convert`]).
pub async fn rates_for<'a>(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    referrals: impl IntoIterator<Item = &'a Referral>,
    deposits: &BTreeMap<String, Vec<Recorded>>,
) -> sqlx::Result<Rates> {
    // Every conversion a deposit of these referrals may need: its currency to its campaign's, at
    // its time (none when every deposit is in its campaign's currency: no query).
    let mut needs = Vec::new();
    for r in referrals {
        let Some(campaign) = engine.terms.of(r) else { continue };
        for d in deposits.get(&r.referee_id).into_iter().flatten() {
            if d.deposit.amount.currency != campaign.currency {
                needs.push((d.deposit.amount.currency, campaign.currency, d.deposit.occurred_at));
            }
        }
    }
    refstream_runtime::campaign_store::rates_in_force(conn, &needs).await
}

/// One status change of a locked referral.
#[derive(Debug, Clone)]
pub struct Move {
    pub referral_id: Uuid,
    pub from: ReferralStatus,
    pub to: ReferralStatus,
    pub cause: String,
}

impl Move {
    /// `t` applied to `referral` (whose status it updates), if `t` allows its current status.
    pub fn of(referral: &mut Referral, t: Transition, cause: impl Into<String>) -> Option<Move> {
        let from = referral.status();
        if !t.allows(from) {
            return None;
        }
        referral.status = t.to.as_str().to_owned();
        Some(Move { referral_id: referral.referral_id, from, to: t.to, cause: cause.into() })
    }
}

/// Applies `moves` (several per referral allowed, in order) in one statement: each referral's
/// status goes from its first move's `from` to its last move's `to`, guarded by that first
/// state, and every move of a referral that really changed is a `referral_transitions` row.
pub async fn apply_moves(conn: &mut PgConnection, moves: &[Move]) -> sqlx::Result<()> {
    if moves.is_empty() {
        return Ok(());
    }
    let mut first_last: BTreeMap<Uuid, (ReferralStatus, ReferralStatus)> = BTreeMap::new();
    for m in moves {
        first_last.entry(m.referral_id).and_modify(|(_, to)| *to = m.to).or_insert((m.from, m.to));
    }
    let ids: Vec<Uuid> = first_last.keys().copied().collect();
    let from: Vec<&str> = first_last.values().map(|(f, _)| f.as_str()).collect();
    let to: Vec<&str> = first_last.values().map(|(_, t)| t.as_str()).collect();
    sqlx::query(
        "WITH m AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS m(id, from_status, to_status)), \
         moved AS (UPDATE referrals r SET status = m.to_status, updated_at = now() FROM m \
                   WHERE r.referral_id = m.id AND r.status = m.from_status RETURNING r.referral_id) \
         INSERT INTO referral_transitions (referral_id, from_status, to_status, cause) \
         SELECT t.id, t.from_status, t.to_status, t.cause \
         FROM unnest($4::uuid[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS t(id, from_status, to_status, cause, n) \
         JOIN moved ON moved.referral_id = t.id ORDER BY t.n",
    )
    .bind(&ids)
    .bind(&from)
    .bind(&to)
    .bind(moves.iter().map(|m| m.referral_id).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.from.as_str()).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.to.as_str()).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.cause.clone()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Schedules payouts: `(referral_id, due_at)`, one upsert in referral order; a referral already
/// waiting keeps the earlier due time. A payout is due no earlier than it is scheduled: one
/// scheduled late (a KYC pass, a review's approval, a raised cap, a late deposit that revives
/// an expired referral) waits for a barrier that covers the stream up to then, as its new hold
/// end, not for the one that covered its deposit's hold.
pub async fn schedule_payouts(conn: &mut PgConnection, payouts: &BTreeMap<Uuid, DateTime<Utc>>) -> sqlx::Result<()> {
    if payouts.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = payouts.keys().copied().collect();
    let due: Vec<DateTime<Utc>> = payouts.values().copied().collect();
    sqlx::query(
        "INSERT INTO pending_payouts (referral_id, due_at) SELECT id, GREATEST(due, now()) FROM unnest($1::uuid[], $2::timestamptz[]) AS p(id, due) \
         ON CONFLICT (referral_id) DO UPDATE SET due_at = LEAST(pending_payouts.due_at, EXCLUDED.due_at)",
    )
    .bind(&ids)
    .bind(&due)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Schedules a payout for each of `referrals` with a qualifying deposit: due when that deposit's
/// hold (recorded at + the settle delay) ends.
pub async fn schedule_if_qualifying(conn: &mut PgConnection, engine: &RewardEngine, referrals: &[&Referral]) -> sqlx::Result<usize> {
    if referrals.is_empty() {
        return Ok(0);
    }
    let users: Vec<String> = referrals.iter().map(|r| r.referee_id.clone()).collect();
    let deposits = deposits_of(conn, &users).await?;
    schedule_qualifying(conn, engine, referrals, &deposits).await
}

/// [`schedule_if_qualifying`] with the referees' deposits already read (`deposits`: every
/// recorded deposit of each referee of `referrals`, by user).
pub async fn schedule_qualifying(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    referrals: &[&Referral],
    deposits: &BTreeMap<String, Vec<Recorded>>,
) -> sqlx::Result<usize> {
    if referrals.is_empty() {
        return Ok(0);
    }
    let rates = rates_for(conn, engine, referrals.iter().copied(), deposits).await?;
    let delay = chrono::Duration::from_std(engine.settle_delay).unwrap_or(chrono::Duration::zero());
    let payouts: BTreeMap<Uuid, DateTime<Utc>> = referrals
        .iter()
        .filter_map(|r| {
            let d = qualifying(engine, r, deposits.get(&r.referee_id)?, &rates)?;
            Some((r.referral_id, d.recorded.recorded_at + delay))
        })
        .collect();
    schedule_payouts(conn, &payouts).await?;
    Ok(payouts.len())
}
