//! The reward engine, the only writer of rewards and the ledger. Consumes deposits, reversals,
//! scores and review decisions in any order and guarantees, per referral:
//! - a reward is credited at most once: `rewards (referral_id, reward_type)` is unique, and the
//!   ledger entries, balance updates and the `RewardGranted` outbox row are written only when
//!   that insert really inserted, in the same transaction;
//! - it pays only an eligible referral, for the first deposit that qualifies under the
//!   campaign (currency, threshold, window), whichever of score and deposit arrived first;
//! - a payment instrument the referrer also used, first seen at deposit time, sends the
//!   referral back to review instead of paying;
//! - a reversed qualifying deposit takes the reward back with compensating ledger entries.
//!
//! Every status change is a guarded update recorded in `referral_transitions`.

mod ledger;
mod referral;
pub mod settlement;
pub mod unmatched;

use chrono::{DateTime, Utc};
use refstream_core::campaign::Campaign;
use refstream_core::events::{DepositCompleted, DepositReversed, ReferralScored, ReviewDecided};
use refstream_runtime::codec::{AvroRecord, Decoder};
use refstream_runtime::consumer::{Batch, Inbound, Rejection, Worker};
use refstream_runtime::outbox::enqueue;
use refstream_runtime::Settings;
use uuid::Uuid;

pub use referral::Referral;

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
    Review(ReviewDecided),
}

/// Topic names the engine reads and writes.
#[derive(Debug, Clone)]
pub struct Topics {
    pub deposit_completed: String,
    pub deposit_reversed: String,
    pub referral_scored: String,
    pub review_decided: String,
    pub reward_granted: String,
    pub reward_reversed: String,
}

pub struct RewardEngine {
    decoder: Decoder,
    pub(crate) topics: Topics,
    pub(crate) campaign: Campaign,
    /// How long after its deposit was recorded a reward is credited.
    pub(crate) settle_delay: std::time::Duration,
}

impl RewardEngine {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let t = &settings.topics;
        Ok(Self {
            decoder: Decoder::new(settings.confluent_ids()?),
            topics: Topics {
                deposit_completed: t.deposit_completed.clone(),
                deposit_reversed: t.deposit_reversed.clone(),
                referral_scored: t.referral_scored.clone(),
                review_decided: t.review_decided.clone(),
                reward_granted: t.reward_granted.clone(),
                reward_reversed: t.reward_reversed.clone(),
            },
            campaign: settings.campaign()?,
            settle_delay: std::time::Duration::from_secs(settings.campaign.settle_delay_secs),
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
        vec![t.deposit_completed.clone(), t.deposit_reversed.clone(), t.referral_scored.clone(), t.review_decided.clone()]
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
            other => return Err(Rejection { label: "unknown_topic", reason: format!("no handler for topic {other}") }),
        })
    }

    fn event_id(&self, event: &Input) -> Uuid {
        match event {
            Input::Deposit(e, _) => e.event_id(),
            Input::Reversal(e) => e.event_id(),
            Input::Scored(e) => e.event_id(),
            Input::Review(e) => e.event_id(),
        }
    }

    async fn apply(&self, batch: &mut Batch<'_>, events: &[Input]) -> sqlx::Result<()> {
        let mut out = Vec::new();
        for event in events {
            match event {
                Input::Deposit(d, at) => self.on_deposit(batch.conn, d, at, &mut out).await?,
                Input::Reversal(r) => self.on_reversal(batch.conn, r, &mut out).await?,
                Input::Scored(s) => self.on_score(batch.conn, s, &mut out).await?,
                Input::Review(r) => self.on_review(batch.conn, r, &mut out).await?,
            }
        }
        enqueue(batch.conn, 0, &out).await
    }
}
