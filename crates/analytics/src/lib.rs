//! The analytics worker: a fifth consumer on the shared runtime that reads only the public
//! topics, as a third party's consumer would (it never reads another worker's tables), and keeps
//! the facts the referral funnel is computed from ([`report`]).
//!
//! # What it consumes
//!
//! `user-registered` (signups: platform and registration time), `referral-clicked`,
//! `referral-attributed`, `referral-scored` (every revision), `review-decided`,
//! `deposit-completed`, `reward-granted` and `reward-reversed` (names from `topics.*`). Records are
//! decoded and validated by the same codec and domain validation as every other worker (a
//! UserRegistered is checked exactly as attribution checks it), so a record that fails becomes a
//! dead letter with its reason, through the runtime, and the partition moves on.
//!
//! # What it guarantees
//!
//! - **Idempotent by natural keys**, not only by the runtime's event-id dedupe: one row per click
//!   id, user id, referral id, deposit id and reward id ([`facts`]). When records share a key the
//!   earliest (event time, then event id) is kept, so a resend under a new event id changes
//!   nothing; a scored referral keeps its strictest, latest assessment and a reviewed one its
//!   latest verdict. Each is the extreme of a set by a total order: the same whatever order the
//!   records arrive in, on whichever partitions.
//! - **Order-independent**: records of one referee arrive on different topics in any order (a
//!   score before its attribution, a deposit before the signup, a reward before both); the
//!   funnel is computed when read, by joining the facts ([`report`]), so it comes out the same.
//! - **Replay gives the same numbers**: `analytics --replay-from-start` rewinds the worker's
//!   consumer group and forgets its progress and dedupe rows ([`replay`]); every record is applied
//!   again onto the same rows and changes nothing. `--rebuild` also empties the tables first; the
//!   rows rebuilt from the topics are the same.
//! - **Set-based**: a batch is written with one `UNNEST` statement per kind of record in it.
//!
//! Where the guarantees stop: a replay judges first deposits by the campaign settings it runs
//! with (change `campaign.min_deposit`, `currency` or `window_days` and the replayed numbers
//! follow the new terms), and, as for every worker, a record dead-lettered for an event time more
//! than 24 hours ahead of the clock would be accepted by a replay made once that time has come.
//!
//! # Where a stage counts (campaign, UTC day, platform)
//!
//! - a click: the click's campaign, the day it was made, its platform;
//! - a signup: the campaign of the referral that names the user as referee, or `"none"`
//!   ([`rules::NO_CAMPAIGN`]) when nobody referred it; its registration day and platform;
//! - everything about a referee (attributed, approved / held / rejected, first deposit, rewards,
//!   reversals): the referral's campaign, the referee's registration day and signup platform
//!   (`"unknown"` while the signup has not been read). The report is a cohort view: money and
//!   conversions land on the day the referee registered, not on the day they happened.
//!
//! # What the stages mean
//!
//! - approved / held / rejected: a reviewer's latest verdict if there is one (approve, reject),
//!   else the scorer's latest decision (APPROVE, REVIEW, REJECT); an unscored referral is none;
//! - first deposit: the referee's first qualifying deposit, i.e. the earliest (by event time, then
//!   deposit id) in `campaign.currency`, of at least `campaign.min_deposit`, made no later than
//!   `campaign.window_days` after registration — the terms of the reward engine, from the
//!   settings this worker runs with. Deposit reversals are not read: a refunded first deposit
//!   still counts as converted (its reward's reversal is counted);
//! - rewards / reversals: RewardGranted / RewardReversed records, one per reward id (rewards
//!   counts reward rows: a campaign paying referrer and referee counts two per referral);
//!   rewarded: referrals with at least one reward.

pub mod facts;
pub mod replay;
pub mod report;
pub mod rules;

use chrono::{DateTime, Utc};
use refstream_core::events::{
    DepositCompleted, ReferralAttributed, ReferralClicked, ReferralScored, ReviewDecided, RewardGranted, RewardReversed, UserRegistered,
};
use refstream_core::Campaign;
use refstream_runtime::codec::{AvroRecord, Decoder};
use refstream_runtime::config::Topics;
use refstream_runtime::consumer::{Batch, Inbound, Rejection, Worker};
use refstream_runtime::Settings;
use uuid::Uuid;

pub use replay::{replay_from_start, reset_progress};

/// The worker's name: its consumer group suffix and dedupe namespace.
pub const WORKER: &str = "analytics";

/// One record the analytics worker reads.
#[derive(Debug, Clone)]
pub enum Input {
    Registered(UserRegistered),
    Clicked(ReferralClicked),
    Attributed(ReferralAttributed),
    Scored(ReferralScored),
    Reviewed(ReviewDecided),
    Deposited(DepositCompleted),
    Granted(RewardGranted),
    Reversed(RewardReversed),
}

pub struct Analytics {
    decoder: Decoder,
    topics: Topics,
    /// The campaign terms a first deposit is judged by.
    campaign: Campaign,
}

impl Analytics {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self { decoder: Decoder::new(settings.confluent_ids()?), topics: settings.topics.clone(), campaign: settings.campaign()? })
    }

    fn read<T: AvroRecord>(&self, record: &Inbound<'_>, now: DateTime<Utc>) -> Result<T, Rejection> {
        Ok(self.decoder.decode(record.payload, now)?)
    }
}

/// The topics the analytics worker reads.
pub fn topics(t: &Topics) -> Vec<String> {
    [
        &t.user_registered,
        &t.referral_clicked,
        &t.referral_attributed,
        &t.referral_scored,
        &t.review_decided,
        &t.deposit_completed,
        &t.reward_granted,
        &t.reward_reversed,
    ]
    .into_iter()
    .cloned()
    .collect()
}

macro_rules! pick {
    ($events:expr, $variant:ident) => {
        $events.iter().filter_map(|e| if let Input::$variant(x) = e { Some(x) } else { None }).collect::<Vec<_>>()
    };
}

impl Worker for Analytics {
    type Event = Input;

    fn name(&self) -> &'static str {
        WORKER
    }

    fn topics(&self) -> Vec<String> {
        topics(&self.topics)
    }

    fn decode(&self, record: &Inbound<'_>, now: DateTime<Utc>) -> Result<Input, Rejection> {
        let t = &self.topics;
        Ok(match record.topic {
            x if x == t.user_registered => Input::Registered(self.read(record, now)?),
            x if x == t.referral_clicked => Input::Clicked(self.read(record, now)?),
            x if x == t.referral_attributed => Input::Attributed(self.read(record, now)?),
            x if x == t.referral_scored => Input::Scored(self.read(record, now)?),
            x if x == t.review_decided => Input::Reviewed(self.read(record, now)?),
            x if x == t.deposit_completed => Input::Deposited(self.read(record, now)?),
            x if x == t.reward_granted => Input::Granted(self.read(record, now)?),
            x if x == t.reward_reversed => Input::Reversed(self.read(record, now)?),
            other => return Err(Rejection { label: "unknown_topic", reason: format!("no handler for topic {other}") }),
        })
    }

    fn event_id(&self, event: &Input) -> Uuid {
        match event {
            Input::Registered(e) => e.event_id,
            Input::Clicked(e) => e.event_id,
            Input::Attributed(e) => e.event_id,
            Input::Scored(e) => e.event_id,
            Input::Reviewed(e) => e.event_id,
            Input::Deposited(e) => e.event_id,
            Input::Granted(e) => e.event_id,
            Input::Reversed(e) => e.event_id,
        }
    }

    async fn apply(&self, batch: &mut Batch<'_>, events: &[Input]) -> sqlx::Result<()> {
        let conn = &mut *batch.conn;
        facts::signups(conn, &pick!(events, Registered)).await?;
        facts::clicks(conn, &pick!(events, Clicked)).await?;
        facts::referrals(conn, &pick!(events, Attributed), &self.campaign).await?;
        facts::scores(conn, &pick!(events, Scored)).await?;
        facts::reviews(conn, &pick!(events, Reviewed)).await?;
        facts::deposits(conn, &pick!(events, Deposited), &self.campaign).await?;
        facts::rewards(conn, &pick!(events, Granted)).await?;
        facts::reversals(conn, &pick!(events, Reversed)).await
    }
}
