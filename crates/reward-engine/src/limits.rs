//! Caps and budgets (a data campaign's `[limits]`, by its current version), enforced where
//! rewards are paid: under a transaction lock per limited campaign (taken after the referral
//! and milestone locks, in campaign order), the batch's payments are admitted in referral order against what
//! the campaign has paid so far (net of reversals) — its budget, its number of rewarded
//! referrals, each referrer's lifetime and per-period caps. A payment that would break one is
//! not made: its referral becomes `capped` with the reason. Concurrent sweeps settle one
//! campaign's payments one after the other, each seeing what the previous one committed, so no
//! limit is exceeded under concurrency or replay. Campaigns without limits take no lock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use refstream_core::campaigns::{Limits, Usage};
use refstream_runtime::campaign_store;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::plan::Planner;
use crate::store::Referral;
use crate::RewardEngine;

/// The current limits of `campaigns` (data campaigns only; empty limits left out).
pub(crate) async fn current(conn: &mut PgConnection, campaigns: &[String]) -> sqlx::Result<BTreeMap<String, Limits>> {
    let rows = campaign_store::latest_definitions(conn, Some(campaigns)).await?;
    Ok(rows.into_iter().filter_map(|(id, d)| d.limits().ok().filter(|l| !l.is_empty()).map(|l| (id, l))).collect())
}

/// Takes the campaign's limits lock and reads what it has paid (net of reversals) as far as
/// `limits` ask: its rewarded referrals and spending only when it has a budget or a cap on them
/// (through the campaign's index: its own rewards), and the rewarded referrals of `referrers`
/// only when it caps referrers (from each referrer's referrals: what the batch's referrers
/// were paid, whatever the campaign paid to others).
async fn usage(conn: &mut PgConnection, campaign: &str, limits: &Limits, referrers: &[String]) -> sqlx::Result<Usage> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('campaign-limits:' || $1, 2718))")
        .bind(campaign)
        .execute(&mut *conn)
        .await?;
    let mut usage = Usage::default();
    if limits.budget.is_some() || limits.max_rewarded_referrals.is_some() {
        let (rewarded, spent): (i64, Decimal) = sqlx::query_as(
            "SELECT count(DISTINCT referral_id), COALESCE(sum(amount), 0) FROM rewards WHERE campaign_id = $1 AND reversed_at IS NULL",
        )
        .bind(campaign)
        .fetch_one(&mut *conn)
        .await?;
        usage.rewarded_referrals = u32::try_from(rewarded).unwrap_or(u32::MAX);
        usage.spent = spent;
    }
    if limits.per_referrer.is_some() || limits.per_referrer_per_period.is_some() {
        // Lateral lookups from each referrer's referrals in the campaign (a reward's campaign is
        // its referral's): the planner cannot hash every reward instead.
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT DISTINCT ON (w.referral_id) r.referrer_id, d.occurred_at \
             FROM (SELECT DISTINCT b FROM unnest($2::text[]) AS b) AS b \
             CROSS JOIN LATERAL (SELECT r.referral_id, r.referrer_id FROM referrals r WHERE r.referrer_id = b.b AND r.campaign_id = $1) AS r \
             CROSS JOIN LATERAL (SELECT w.referral_id, w.qualifying_deposit_id FROM rewards w \
                                 WHERE w.referral_id = r.referral_id AND w.campaign_id = $1 AND w.reversed_at IS NULL) AS w \
             CROSS JOIN LATERAL (SELECT d.occurred_at FROM deposits d WHERE d.deposit_id = w.qualifying_deposit_id) AS d \
             ORDER BY w.referral_id",
        )
        .bind(campaign)
        .bind(referrers)
        .fetch_all(&mut *conn)
        .await?;
        for (referrer, at) in rows {
            usage.by_referrer.entry(referrer).or_default().push(at);
        }
    }
    Ok(usage)
}

/// The limits of a batch's campaigns and what each has paid, read under their locks; admits
/// payments one by one, counting each it admits.
pub(crate) struct Admission {
    limits: BTreeMap<String, Limits>,
    usages: BTreeMap<String, Usage>,
}

impl Admission {
    /// Takes the locks of the limited campaigns among `referrals` and reads their usage.
    pub(crate) async fn load(conn: &mut PgConnection, referrals: &[&Referral]) -> sqlx::Result<Self> {
        let campaigns: Vec<String> =
            referrals.iter().filter(|r| r.terms_version > 0).map(|r| r.campaign_id.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        if campaigns.is_empty() {
            return Ok(Self { limits: BTreeMap::new(), usages: BTreeMap::new() });
        }
        let limits = current(conn, &campaigns).await?;
        let mut usages = BTreeMap::new();
        for (campaign, limits) in &limits {
            let referrers: Vec<String> = referrals.iter().filter(|r| &r.campaign_id == campaign).map(|r| r.referrer_id.clone()).collect();
            usages.insert(campaign.clone(), usage(conn, campaign, limits, &referrers).await?);
        }
        Ok(Self { limits, usages })
    }

    /// Admits paying `r`, costing `cost` in all, for a deposit made at `deposited_at`, and
    /// counts it; or says which limit it would break.
    pub(crate) fn admit(&mut self, r: &Referral, cost: Decimal, deposited_at: DateTime<Utc>) -> Result<(), String> {
        match (self.limits.get(&r.campaign_id), self.usages.get_mut(&r.campaign_id)) {
            (Some(l), Some(u)) => u.admit(l, &r.referrer_id, cost, deposited_at),
            _ => Ok(()),
        }
    }
}

/// Capped referrals released per transaction.
const PAGE: i64 = 200;

/// How often a campaign whose limits and reversals did not change has one page of its capped
/// referrals looked at again anyway (a payment's cost can fall as others are paid: a tier or a
/// milestone another referral took), so a referral such a change makes payable waits at most
/// one walk of the campaign's capped referrals, a page per this interval, without the sweep
/// reading all of them every second.
const SLOW_WALK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// What can make a capped referral of a campaign payable: a new version (limits raised) and a
/// reversal of one of its rewards (the room it used is free again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    version: i32,
    reversed: i64,
}

/// Per campaign: the mark the last complete walk of its capped referrals saw, and where the
/// slow walk is.
#[derive(Debug)]
pub(crate) struct Walked {
    mark: Mark,
    slow_after: Uuid,
    slow_at: std::time::Instant,
}

/// The campaigns with capped referrals: a skip scan of the capped referrals' index, one probe
/// per campaign instead of a read of every capped referral.
const CAPPED_CAMPAIGNS: &str = "WITH RECURSIVE c AS ( \
       (SELECT campaign_id FROM referrals WHERE status_group = 'capped' ORDER BY campaign_id LIMIT 1) \
       UNION ALL \
       SELECT (SELECT r.campaign_id FROM referrals r WHERE r.status_group = 'capped' AND r.campaign_id > c.campaign_id \
               ORDER BY r.campaign_id LIMIT 1) FROM c WHERE c.campaign_id IS NOT NULL) \
     SELECT campaign_id FROM c WHERE campaign_id IS NOT NULL";

/// Pays the referrals a campaign capped once a later version raised the limit and says
/// `pay_capped_when_raised`, or a reversal freed room: in referral order, those the limits
/// admit (at their whole cost, levels and milestones included, as settlement will admit them)
/// go back to `eligible` and get their payout scheduled (settlement checks the limits again
/// when it pays). A campaign's capped referrals are walked whole only when its latest version
/// or its count of reversed rewards changed since the last complete walk (or this engine
/// started); otherwise one page every [`SLOW_WALK_EVERY`]. Returns how many were released.
pub(crate) async fn uncap(engine: &RewardEngine, pool: &sqlx::PgPool) -> sqlx::Result<usize> {
    let campaigns: Vec<String> = sqlx::query_scalar(CAPPED_CAMPAIGNS).fetch_all(pool).await?;
    if campaigns.is_empty() {
        return Ok(0);
    }
    // The latest version of each first, then its reversed rewards: counted once per campaign,
    // not once per version.
    let latest: Vec<(String, i32, sqlx::types::Json<refstream_core::campaigns::Definition>, i64)> = sqlx::query_as(
        "SELECT l.campaign_id, l.version, l.definition, \
                (SELECT count(*) FROM rewards w WHERE w.campaign_id = l.campaign_id AND w.reversed_at IS NOT NULL) \
         FROM (SELECT DISTINCT ON (campaign_id) campaign_id, version, definition FROM campaign_versions \
               WHERE campaign_id = ANY($1) ORDER BY campaign_id, version DESC) l",
    )
    .bind(&campaigns)
    .fetch_all(pool)
    .await?;
    let mut released = 0;
    for (campaign, version, definition, reversed) in latest {
        let Ok(limits) = definition.0.limits() else { continue };
        if !limits.pay_capped_when_raised {
            continue;
        }
        let mark = Mark { version, reversed };
        let walked = engine.uncap_walks.lock().unwrap_or_else(|e| e.into_inner()).get(&campaign).map(|w| (w.mark, w.slow_after, w.slow_at));
        match walked {
            // Nothing changed: a page of the slow walk, when it is due.
            Some((seen, after, at)) if seen == mark => {
                if at.elapsed() < SLOW_WALK_EVERY {
                    continue;
                }
                let (n, last) = release_page(engine, pool, &campaign, after).await?;
                released += n;
                if let Some(w) = engine.uncap_walks.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&campaign) {
                    w.slow_after = last.unwrap_or(Uuid::nil());
                    w.slow_at = std::time::Instant::now();
                }
            }
            // Changed, or never walked by this engine: every capped referral, page by page
            // (one the limits still refuse never hides the ones behind it).
            _ => {
                let mut after = Uuid::nil();
                loop {
                    let (n, last) = release_page(engine, pool, &campaign, after).await?;
                    released += n;
                    let Some(last) = last else { break };
                    after = last;
                }
                let walked = Walked { mark, slow_after: Uuid::nil(), slow_at: std::time::Instant::now() };
                engine.uncap_walks.lock().unwrap_or_else(|e| e.into_inner()).insert(campaign, walked);
            }
        }
    }
    if released > 0 {
        engine.wake.notify_one();
    }
    Ok(released)
}

/// One transaction: the next page of the campaign's capped referrals after `after`, those the
/// limits admit released. Returns how many were released and the page's last referral when the
/// page was full (there may be more). The page's referrals are locked in id order, waiting for
/// a transaction that holds one (a deposit batch of its referee, a score): a walk that skipped
/// a locked referral would count it as looked at, and leave it to the slow walk.
async fn release_page(engine: &RewardEngine, pool: &sqlx::PgPool, campaign: &str, after: Uuid) -> sqlx::Result<(usize, Option<Uuid>)> {
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT referral_id FROM referrals WHERE status_group = 'capped' AND campaign_id = $1 AND referral_id > $2 \
         ORDER BY referral_id LIMIT $3 FOR UPDATE",
    )
    .bind(campaign)
    .bind(after)
    .bind(PAGE)
    .fetch_all(&mut *tx)
    .await?;
    let Some(last) = ids.last().copied() else { return Ok((0, None)) };
    let mut referrals = crate::store::lock_by_id(&mut tx, engine, &ids).await?;
    // Admitted exactly as settlement will admit them (levels and milestones included): one it
    // would cap again is never released.
    let mut planner = Planner::load(&mut tx, engine, &referrals.values().collect::<Vec<_>>()).await?;
    let referees: Vec<String> = referrals.values().map(|r| r.referee_id.clone()).collect();
    let deposits = crate::store::deposits_of(&mut tx, &referees).await?;
    let rates = crate::store::rates_for(&mut tx, engine, referrals.values(), &deposits).await?;
    let mut moves = Vec::new();
    for referral in referrals.values_mut() {
        let Some(d) = deposits.get(&referral.referee_id).and_then(|d| crate::store::qualifying(engine, referral, d, &rates)) else {
            continue;
        };
        let Some(terms) = engine.terms.of(referral) else { continue };
        if planner.next(&terms, referral, d.amount, d.recorded.deposit.occurred_at).is_ok() {
            moves.extend(crate::store::Move::of(referral, refstream_core::lifecycle::UNCAP, "the campaign's limits admit it now"));
        }
    }
    let uncapped: Vec<&crate::store::Referral> = referrals.values().filter(|r| r.status == "eligible").collect();
    let released = uncapped.len();
    crate::store::schedule_if_qualifying(&mut tx, engine, &uncapped).await?;
    crate::store::apply_moves(&mut tx, &moves).await?;
    tx.commit().await?;
    let full = i64::try_from(ids.len()).unwrap_or(i64::MAX) >= PAGE;
    Ok((released, full.then_some(last)))
}
