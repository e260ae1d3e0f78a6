//! The reward engine, the only writer of rewards and the ledger. Consumes deposits, reversals,
//! scores and review decisions in any order and guarantees, per referral:
//! - a reward is credited at most once: `rewards (referral_id, reward_type)` is unique, and the
//!   ledger entries, balance updates and the `RewardGranted` outbox row are written only for
//!   the rows that insert really inserted, in the same transaction;
//! - it pays only for the first deposit that qualifies under the campaign (currency, threshold,
//!   window), and only through the settlement gate: after the payout's hold AND once the fraud
//!   scorer has applied everything that had arrived in the stream when the hold ended, with the
//!   scorer's latest assessment applied first — so fraud visible before payout is never paid,
//!   whatever the scorer's lag;
//! - a payment instrument the referrer also used sends the referral back to review instead of
//!   paying;
//! - a reversed qualifying deposit takes the reward back with compensating ledger entries, and
//!   a paid referral the scorer later rejects is clawed back the same way (or left for review,
//!   as `campaign.fraud_after_payment_*` says).
//!
//! Every status change is a guarded update recorded in `referral_transitions`. A batch (one
//! partition of one topic) is applied with a handful of statements whatever its size.

mod apply;
pub mod expiry;
pub mod gate;
mod kyc;
mod ledger;
mod limits;
mod plan;
pub mod settlement;
mod store;
mod terms;
pub mod unmatched;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use refstream_core::events::{DepositCompleted, DepositReversed, ReferralScored, ReviewDecided, UserVerified};
use refstream_core::settlement::FraudAfterPayment;
use refstream_runtime::codec::{AvroRecord, Decoder};
use refstream_runtime::consumer::{Batch, Inbound, Rejection, Worker};
use refstream_runtime::outbox::enqueue;
use refstream_runtime::Settings;
use tokio::sync::Notify;
use uuid::Uuid;

pub use store::Referral;

/// Where a record was read, kept with deposits so that one for an unknown user can still
/// become a dead letter later.
#[derive(Debug, Clone)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// One input of the reward engine.
#[derive(Debug, Clone)]
pub enum Input {
    Deposit(DepositCompleted, Position),
    Reversal(DepositReversed),
    Scored(ReferralScored),
    Verified(UserVerified),
    Review(ReviewDecided),
}

/// Topic names the engine reads and writes, and those whose position the gate captures.
#[derive(Debug, Clone)]
pub struct Topics {
    pub user_registered: String,
    pub referral_attributed: String,
    pub deposit_completed: String,
    pub deposit_reversed: String,
    pub referral_scored: String,
    pub review_decided: String,
    pub reward_granted: String,
    pub reward_reversed: String,
    pub user_verified: String,
}

pub struct RewardEngine {
    decoder: Decoder,
    pub(crate) topics: Topics,
    /// The terms each referral pays by (its bound campaign version, or the default campaign).
    pub(crate) terms: terms::Terms,
    /// How long after its deposit was recorded a reward's hold ends.
    pub(crate) settle_delay: Duration,
    pub(crate) after_payment: FraudAfterPayment,
    pub(crate) settlement_batch: i64,
    pub(crate) settlement_concurrency: usize,
    pub(crate) idle_sweep: Duration,
    pub(crate) busy_sweep: Duration,
    pub(crate) gate_alert: Duration,
    /// Wakes the settlement sweep when a batch scheduled a payout.
    pub(crate) wake: Arc<Notify>,
    /// Per campaign with capped referrals: what the last walk of them saw ([`limits::uncap`]).
    pub(crate) uncap_walks: std::sync::Mutex<std::collections::HashMap<String, limits::Walked>>,
}

impl RewardEngine {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let t = &settings.topics;
        let s = &settings.settlement;
        Ok(Self {
            decoder: Decoder::new(settings.confluent_ids()?),
            topics: Topics {
                user_registered: t.user_registered.clone(),
                referral_attributed: t.referral_attributed.clone(),
                deposit_completed: t.deposit_completed.clone(),
                deposit_reversed: t.deposit_reversed.clone(),
                referral_scored: t.referral_scored.clone(),
                review_decided: t.review_decided.clone(),
                reward_granted: t.reward_granted.clone(),
                reward_reversed: t.reward_reversed.clone(),
                user_verified: t.user_verified.clone(),
            },
            terms: terms::Terms::new(settings.campaign()?),
            settle_delay: Duration::from_secs(settings.campaign.settle_delay_secs),
            after_payment: settings.fraud_after_payment()?,
            settlement_batch: s.batch_size,
            settlement_concurrency: s.concurrency,
            idle_sweep: Duration::from_millis(s.idle_sweep_ms),
            busy_sweep: Duration::from_millis(s.busy_sweep_ms),
            gate_alert: Duration::from_secs(s.gate_alert_secs),
            wake: Arc::new(Notify::new()),
            uncap_walks: std::sync::Mutex::default(),
        })
    }
}

impl Worker for RewardEngine {
    type Event = Input;

    fn name(&self) -> &'static str {
        "reward-engine"
    }

    fn topics(&self) -> Vec<String> {
        let t = &self.topics;
        vec![
            t.deposit_completed.clone(),
            t.deposit_reversed.clone(),
            t.referral_scored.clone(),
            t.review_decided.clone(),
            t.user_verified.clone(),
        ]
    }

    fn decode(&self, record: &Inbound<'_>, now: DateTime<Utc>) -> Result<Input, Rejection> {
        let t = &self.topics;
        let d = &self.decoder;
        Ok(match record.topic {
            x if x == t.deposit_completed => Input::Deposit(
                d.decode(record.payload, now)?,
                Position {
                    topic: record.topic.to_owned(),
                    partition: record.partition,
                    offset: record.offset,
                    key: record.key.map(<[u8]>::to_vec),
                    payload: record.payload.to_vec(),
                },
            ),
            x if x == t.deposit_reversed => Input::Reversal(d.decode(record.payload, now)?),
            x if x == t.referral_scored => Input::Scored(d.decode(record.payload, now)?),
            x if x == t.review_decided => Input::Review(d.decode(record.payload, now)?),
            x if x == t.user_verified => Input::Verified(d.decode(record.payload, now)?),
            other => return Err(Rejection { label: "unknown_topic", reason: format!("no handler for topic {other}") }),
        })
    }

    fn event_id(&self, event: &Input) -> Uuid {
        match event {
            Input::Deposit(e, _) => e.event_id(),
            Input::Reversal(e) => e.event_id(),
            Input::Scored(e) => e.event_id(),
            Input::Review(e) => e.event_id(),
            Input::Verified(e) => e.event_id(),
        }
    }

    async fn apply(&self, batch: &mut Batch<'_>, events: &[Input]) -> sqlx::Result<()> {
        let mut out = Vec::new();
        // Whether a payout was scheduled: the settlement sweep is woken once the batch commits.
        let mut scheduled = false;
        // A batch is one partition of one topic; runs of one kind keep the order regardless.
        let mut start = 0;
        while start < events.len() {
            let kind = std::mem::discriminant(&events[start]);
            let end = events[start..].iter().position(|e| std::mem::discriminant(e) != kind).map_or(events.len(), |n| start + n);
            let run = &events[start..end];
            match &run[0] {
                Input::Deposit(..) => {
                    let deposits: Vec<_> =
                        run.iter().filter_map(|e| if let Input::Deposit(d, at) = e { Some((d, at)) } else { None }).collect();
                    scheduled |= apply::deposits(self, batch.conn, &deposits).await?;
                }
                Input::Reversal(_) => {
                    let reversals: Vec<_> = run.iter().filter_map(|e| if let Input::Reversal(r) = e { Some(r) } else { None }).collect();
                    apply::reversals(self, batch.conn, &reversals, &mut out).await?;
                }
                Input::Scored(_) => {
                    let scores: Vec<_> = run.iter().filter_map(|e| if let Input::Scored(s) = e { Some(s) } else { None }).collect();
                    scheduled |= apply::scores(self, batch.conn, &scores, &mut out).await?;
                }
                Input::Review(_) => {
                    let reviews: Vec<_> = run.iter().filter_map(|e| if let Input::Review(r) = e { Some(r) } else { None }).collect();
                    scheduled |= apply::reviews(self, batch.conn, &reviews).await?;
                }
                Input::Verified(_) => {
                    let verdicts: Vec<_> = run.iter().filter_map(|e| if let Input::Verified(v) = e { Some(v) } else { None }).collect();
                    scheduled |= kyc::verifications(self, batch.conn, &verdicts).await?;
                }
            }
            start = end;
        }
        if scheduled {
            batch.wake_after_commit(self.wake.clone());
        }
        enqueue(batch.conn, &out).await
    }
}
