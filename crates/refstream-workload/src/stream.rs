//! Producing an adversarial [`Plan`] through a running fleet, and waiting until the fleet has
//! done everything the stream asks of it.
//!
//! Registrations go out wave by wave (a referee needs its referrer's code, which attribution
//! mints), shuffled within a wave by the plan's seeded generator; then every deposit, in event
//! time order. [`Produced::known_since`] says when each input that can cause an assessment
//! revision reached the broker (its delivery report): a deposit's own event id, and for a
//! `ReferralAttributed` (whose id derives from the referee) the registration it derives from.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use rand::seq::SliceRandom;
use refstream_core::events::{DepositCompleted, UserRegistered};
use refstream_core::{Currency, DerivedId, Money, UserId};
use refstream_runtime::codec::encode;
use sqlx::PgPool;
use uuid::Uuid;

use crate::adversarial::Plan;
use crate::produce::{wait_for_codes, Sender};

/// Where the stream goes.
pub struct Topics<'a> {
    pub user_registered: &'a str,
    pub deposit_completed: &'a str,
}

/// What was produced.
pub struct Produced {
    /// Each account's id and the event id of its registration.
    pub registrations: Vec<(String, Uuid)>,
    /// The event ids of the deposits.
    pub deposits: Vec<Uuid>,
    /// From the first deposit handed to the producer to the last one's delivery report.
    pub deposits_took: StdDuration,
}

impl Produced {
    /// Cause event id → when the input behind it was delivered to the broker.
    pub fn known_since(&self, sender: &Sender) -> HashMap<Uuid, DateTime<Utc>> {
        let delivered = sender.delivered_at();
        let mut known: HashMap<Uuid, DateTime<Utc>> = self.deposits.iter().filter_map(|id| Some((*id, *delivered.get(id)?))).collect();
        for (account, event) in &self.registrations {
            if let (Ok(user), Some(at)) = (UserId::parse(account.clone()), delivered.get(event)) {
                known.insert(DerivedId::event("referral-attributed", DerivedId::referral(&user)), *at);
            }
        }
        known
    }
}

/// Produces every registration, wave by wave, then every deposit; returns when the last
/// delivery report arrived. `on_wave` is told each wave's number once it is produced.
pub async fn produce(
    plan: &mut Plan,
    sender: &mut Sender,
    pool: &PgPool,
    topics: &Topics<'_>,
    timeout: StdDuration,
    mut on_wave: impl FnMut(usize, usize),
) -> anyhow::Result<Produced> {
    let waves = plan.accounts.iter().map(|a| a.wave).max().unwrap_or(0);
    let mut codes: HashMap<String, String> = HashMap::new();
    let mut registrations = Vec::with_capacity(plan.accounts.len());
    for wave in 0..=waves {
        let mut members: Vec<usize> = (0..plan.accounts.len()).filter(|&i| plan.accounts[i].wave == wave).collect();
        members.shuffle(&mut plan.rng);
        let needed: BTreeSet<String> = members
            .iter()
            .filter_map(|&i| plan.accounts[i].referrer)
            .map(|r| plan.accounts[r].id.clone())
            .filter(|id| !codes.contains_key(id))
            .collect();
        if !needed.is_empty() {
            sender.flush().await?;
            codes.extend(wait_for_codes(pool, &needed.into_iter().collect::<Vec<_>>(), timeout).await?);
        }
        for i in members {
            let a = &plan.accounts[i];
            let e = UserRegistered {
                event_id: Uuid::new_v4(),
                user_id: UserId::parse(a.id.clone())?,
                occurred_at: a.at,
                referral_code: a.referrer.map(|r| codes[&plan.accounts[r].id].clone()),
                click_id: None,
                platform: ["ios", "android", "web"][i % 3].into(),
                device_id: Some(a.device.clone()),
                ip: Some(a.ip),
                email: Some(a.email.clone()),
                country: Some("DE".into()),
            };
            sender.send(topics.user_registered, &a.id, &encode(&e), e.event_id).await?;
            registrations.push((a.id.clone(), e.event_id));
        }
        on_wave(wave, sender.sent());
    }

    let mut order: Vec<(DateTime<Utc>, usize, usize)> = Vec::new();
    for (i, a) in plan.accounts.iter().enumerate() {
        for (n, (at, _, _)) in a.deposits.iter().enumerate() {
            order.push((*at, i, n));
        }
    }
    order.sort();
    let started = Instant::now();
    let mut deposits = Vec::with_capacity(order.len());
    for &(_, i, n) in &order {
        let a = &plan.accounts[i];
        let (at, amount, card) = &a.deposits[n];
        let e = DepositCompleted {
            event_id: Uuid::new_v4(),
            deposit_id: format!("{}-d{n}", a.id),
            user_id: UserId::parse(a.id.clone())?,
            amount: Money::new(*amount, Currency::USD),
            payment_fingerprint: Some(card.clone()),
            occurred_at: *at,
        };
        sender.send(topics.deposit_completed, &a.id, &encode(&e), e.event_id).await?;
        deposits.push(e.event_id);
    }
    sender.flush().await?;
    Ok(Produced { registrations, deposits, deposits_took: started.elapsed() })
}

/// Counters that reach their expected values, and stay there, once the fleet is done: rows
/// waiting in the outbox and pending payouts; events the scorer and the reward engine applied;
/// referrals; assessments; assessment revisions and review decisions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Progress {
    waiting: i64,
    scorer: i64,
    engine: i64,
    referrals: i64,
    assessed: i64,
    scores: i64,
}

pub async fn progress(pool: &PgPool) -> sqlx::Result<Progress> {
    let (waiting, scorer, engine, referrals, assessed, scores) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM pending_payouts), \
                (SELECT count(*) FROM processed_events WHERE consumer = 'fraud-scorer'), \
                (SELECT count(*) FROM processed_events WHERE consumer = 'reward-engine'), \
                (SELECT count(*) FROM referrals), (SELECT count(*) FROM assessments), \
                (SELECT count(*) FROM assessment_history) + (SELECT count(*) FROM review_decisions)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Progress { waiting, scorer, engine, referrals, assessed, scores })
}

/// Waits until, since `baseline`, the scorer applied every new referral and `deposits`
/// deposits, the reward engine every deposit and score, every referral is assessed, nothing
/// waits in the outbox or for settlement, and all of it has been stable for three seconds.
pub async fn wait_quiet(pool: &PgPool, baseline: Progress, deposits: i64, timeout: StdDuration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = None;
    let mut stable_since = Instant::now();
    loop {
        let p = progress(pool).await?;
        let settled = p.waiting == 0
            && p.referrals == p.assessed
            && p.scorer - baseline.scorer >= (p.referrals - baseline.referrals) + deposits
            && p.engine - baseline.engine >= deposits + (p.scores - baseline.scores);
        if last != Some(p) {
            last = Some(p);
            stable_since = Instant::now();
        } else if settled && stable_since.elapsed() >= StdDuration::from_secs(3) {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < timeout, "fleet not quiet after {timeout:?}: {p:?}");
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
}
