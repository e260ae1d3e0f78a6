//! What a settlement batch credits: for each payment, every grant of its campaign's terms
//! ([`refstream_core::rewards::grants`]) — its own rewards by tier, multi-level rewards up the
//! referrer's upline, a milestone when this is the referrer's N-th rewarded referral — admitted
//! whole or not at all by the campaign's caps and budget ([`crate::limits`]).
//!
//! Milestone counts are read under a transaction lock per (campaign, referrer), taken in key
//! order after the referral locks, and counted on within the batch, so concurrent sweeps never
//! both see the same N-th referral; the unique (campaign, beneficiary, milestone) key is the
//! last word either way. The upline follows attributed referrals that neither the scorer
//! (assessment REJECT) nor a person (status rejected) refused, nor were reversed.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use refstream_core::campaign::Campaign;
use refstream_core::rewards::{self, Grant, Paid};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ledger::Payment;
use crate::limits;
use crate::store::Referral;
use crate::RewardEngine;

/// A payment with what it credits.
pub(crate) struct Planned<'a> {
    pub payment: Payment<'a>,
    pub grants: Vec<Grant>,
}

/// Whoever referred each of `users`, and so on up to `levels` generations: child → parent, over
/// referrals that still stand.
async fn parents(conn: &mut PgConnection, users: Vec<String>, levels: usize) -> sqlx::Result<HashMap<String, String>> {
    let mut parent_of = HashMap::new();
    let mut frontier = users;
    for _ in 0..levels {
        frontier.retain(|u| !parent_of.contains_key(u));
        if frontier.is_empty() {
            break;
        }
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT r.referee_id, r.referrer_id FROM referrals r WHERE r.referee_id = ANY($1) \
               AND r.status NOT IN ('rejected', 'reversed') \
               AND NOT EXISTS (SELECT 1 FROM assessments a WHERE a.referral_id = r.referral_id AND a.decision = 'REJECT')",
        )
        .bind(&frontier)
        .fetch_all(&mut *conn)
        .await?;
        frontier = rows.iter().map(|(_, parent)| parent.clone()).collect();
        parent_of.extend(rows);
    }
    Ok(parent_of)
}

/// Locks (campaign, referrer) pairs in key order and reads each referrer's rewarded referrals
/// in the campaign.
async fn rewarded_counts(conn: &mut PgConnection, pairs: &BTreeSet<(String, String)>) -> sqlx::Result<HashMap<(String, String), u32>> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<String> = pairs.iter().map(|(c, r)| format!("milestone:{c}:{r}")).collect();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(k, 2718)) FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n")
        .bind(&keys)
        .execute(&mut *conn)
        .await?;
    let (campaigns, referrers): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT r.campaign_id, r.referrer_id, count(*) FROM referrals r \
         JOIN unnest($1::text[], $2::text[]) AS p(campaign_id, referrer_id) USING (campaign_id, referrer_id) \
         WHERE r.status = 'rewarded' GROUP BY 1, 2",
    )
    .bind(&campaigns)
    .bind(&referrers)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(c, r, n)| ((c, r), u32::try_from(n).unwrap_or(u32::MAX))).collect())
}

/// What a batch's grants are decided with: the upline of its referrers, the rewarded counts of
/// those whose campaign has milestones (under their locks), and the limits of its limited
/// campaigns (under theirs). Settlement pays by it; releasing capped referrals admits by it, so
/// the two never disagree.
pub(crate) struct Planner {
    parent_of: HashMap<String, String>,
    counts: HashMap<(String, String), u32>,
    admission: limits::Admission,
}

impl Planner {
    /// Loads what deciding `referrals` needs; takes the milestone locks, then the limits locks.
    pub(crate) async fn load(conn: &mut PgConnection, engine: &RewardEngine, referrals: &[&Referral]) -> sqlx::Result<Self> {
        let terms: Vec<_> = referrals.iter().map(|r| (*r, engine.terms.of(r))).collect();
        let levels = terms.iter().filter_map(|(_, c)| c.as_ref()).map(|c| c.levels.len()).max().unwrap_or(0);
        let parent_of = if levels > 0 {
            let referrers = terms
                .iter()
                .filter(|(_, c)| c.as_ref().is_some_and(|c| !c.levels.is_empty()))
                .map(|(r, _)| r.referrer_id.clone())
                .collect();
            parents(conn, referrers, levels).await?
        } else {
            HashMap::new()
        };
        let with_milestones: BTreeSet<(String, String)> = terms
            .iter()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| !c.milestones.is_empty()))
            .map(|(r, _)| (r.campaign_id.clone(), r.referrer_id.clone()))
            .collect();
        let counts = rewarded_counts(conn, &with_milestones).await?;
        let admission = limits::Admission::load(conn, referrals).await?;
        Ok(Self { parent_of, counts, admission })
    }

    /// The grants of paying `r` by `campaign` for a deposit of `deposit` (in the campaign's
    /// currency) made at `at`, counted as paid; or the limit that refuses them.
    pub(crate) fn next(&mut self, campaign: &Campaign, r: &Referral, deposit: Decimal, at: DateTime<Utc>) -> Result<Vec<Grant>, String> {
        let key = (r.campaign_id.clone(), r.referrer_id.clone());
        let upline = rewards::upline(&r.referee_id, &r.referrer_id, &self.parent_of, campaign.levels.len());
        let grants = rewards::grants(
            campaign,
            Paid {
                referrer: &r.referrer_id,
                referee: &r.referee_id,
                upline: &upline,
                deposit,
                rewarded_before: self.counts.get(&key).copied().unwrap_or(0),
            },
        );
        self.admission.admit(r, grants.iter().map(|g| g.amount.amount).sum(), at)?;
        *self.counts.entry(key).or_default() += 1;
        Ok(grants)
    }
}

/// Plans `payments` (in order): their grants, and the referrals caps or budgets refuse (with
/// the reason), which are paid nothing.
pub(crate) async fn plan<'a>(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    payments: Vec<Payment<'a>>,
) -> sqlx::Result<(Vec<Planned<'a>>, Vec<(Uuid, String)>)> {
    let referrals: Vec<&Referral> = payments.iter().map(|p| p.referral).collect();
    let mut planner = Planner::load(conn, engine, &referrals).await?;
    let (mut planned, mut capped) = (Vec::new(), Vec::new());
    for payment in payments {
        // Terms were loaded with the referral; without them nothing is paid by other terms.
        let Some(campaign) = engine.terms.of(payment.referral) else { continue };
        match planner.next(&campaign, payment.referral, payment.deposit_amount, payment.deposited_at) {
            Ok(grants) => planned.push(Planned { payment, grants }),
            Err(reason) => capped.push((payment.referral.referral_id, reason)),
        }
    }
    Ok((planned, capped))
}
