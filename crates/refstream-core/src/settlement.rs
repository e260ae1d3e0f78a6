//! Settlement: when a reward may be paid, and what paying means for a referral. Pure rules, so
//! the gate and the payout decision are property-tested without a database.
//!
//! The gate. A payout's hold ends at a moment of the engine's clock; the stream's position at
//! that moment (the end offset of every partition the fraud scorer's evidence comes through) is
//! captured in a barrier. The barrier opens only when every stage in front of the scorer has
//! applied what had arrived by then: attribution has applied `user-registered` up to the captured
//! ends, the relay has published the `referral-attributed` rows those registrations produced,
//! and the scorer has applied `referral-attributed` (captured once the relay published) and
//! `deposit-completed` up to their ends — and the reward engine itself has applied
//! `user-verified` (the KYC verdicts) up to its ends. A partition whose captured end is 0, or
//! that the worker has applied to its end, never blocks. Whatever the scorer knew of the stream
//! up to the hold's end is therefore in its committed assessments before anything settles, and
//! every KYC verdict that had arrived by then is recorded, whether the workers are caught up,
//! hours behind or restarted mid-way.

use std::collections::BTreeMap;

use crate::lifecycle::{self, Decision, ReferralStatus, Transition};

/// Offsets by (topic, partition): end offsets of a captured stream position, or a worker's
/// durable progress (the next offset it will apply).
pub type Position = BTreeMap<(String, i32), i64>;

/// True when `progress` has reached `ends` on every partition: the worker has applied every
/// record that had arrived when the ends were captured.
pub fn covers(progress: &Position, ends: &Position) -> bool {
    ends.iter().all(|(tp, &end)| end <= 0 || progress.get(tp).is_some_and(|&next| next >= end))
}

/// Records still to apply before `progress` covers `ends`.
pub fn behind(progress: &Position, ends: &Position) -> i64 {
    ends.iter().map(|(tp, &end)| (end - progress.get(tp).copied().unwrap_or(0)).max(0)).sum()
}

/// Where a barrier stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Waiting for attribution to apply `user-registered` up to the captured ends.
    Attribution,
    /// Waiting for the relay to publish the `referral-attributed` rows up to an outbox id.
    Relay,
    /// Waiting for the scorer to apply `referral-attributed` and `deposit-completed`.
    Scorer,
    /// Payouts behind the barrier may settle.
    Open,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Attribution, Stage::Relay, Stage::Scorer, Stage::Open];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Attribution => "attribution",
            Stage::Relay => "relay",
            Stage::Scorer => "scorer",
            Stage::Open => "open",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A barrier: the stream's position when a group of payouts' holds ended, and what has been
/// captured since on the way to opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    pub stage: Stage,
    /// End offsets of `user-registered` at the hold's end.
    pub registrations: Position,
    /// End offsets of `deposit-completed` at the hold's end.
    pub deposits: Position,
    /// The last outbox id of a `referral-attributed` row once attribution covered
    /// `registrations`: the relay must have published through it.
    pub outbox_through: Option<i64>,
    /// End offsets of `referral-attributed` once the relay published through `outbox_through`.
    pub attributed: Option<Position>,
    /// End offsets of `user-verified` at the hold's end: the reward engine must have applied them.
    pub verifications: Position,
}

/// The stream's position when holds ended, read from the broker in one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    pub registrations: Position,
    pub deposits: Position,
    pub verifications: Position,
    /// End offsets of `referral-attributed`, read in the same request.
    pub attributed: Position,
}

/// The barrier for payouts whose hold ended, from the ends `at` read after the hold's moment and
/// what was read between the two: attribution's durable progress, and whether any
/// `referral-attributed` row was still in the outbox (read with that progress, from one
/// snapshot, or after it).
///
/// When attribution had already covered the registrations and the outbox held no
/// `referral-attributed` row, the barrier starts at [`Stage::Scorer`] with `at.attributed`: every
/// registration that had arrived was applied before the ends were read, its
/// `referral-attributed` row was committed with that progress and was gone from the outbox (the
/// relay deletes a row only once the broker acknowledged it) before the ends were read, so the
/// ends include it. This is what the `Attribution` and `Relay` stages would establish one
/// broker round trip later. Otherwise the barrier starts at [`Stage::Attribution`].
pub fn barrier_at(at: Captured, attribution: &Position, attributed_unpublished: bool) -> Barrier {
    let caught_up = !attributed_unpublished && covers(attribution, &at.registrations);
    Barrier {
        stage: if caught_up { Stage::Scorer } else { Stage::Attribution },
        registrations: at.registrations,
        deposits: at.deposits,
        outbox_through: None,
        attributed: caught_up.then_some(at.attributed),
        verifications: at.verifications,
    }
}

/// The barrier's next move, given what the workers have durably done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Attribution covers the registrations: capture the outbox id to publish through.
    CaptureOutbox,
    /// The relay published it: capture the end offsets of `referral-attributed`.
    CaptureAttributed,
    /// The scorer covers everything: payouts behind the barrier may settle.
    Open,
}

/// Durable progress of the workers a barrier waits on.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub attribution: &'a Position,
    pub scorer: &'a Position,
    /// The reward engine's own (it applies `user-verified`).
    pub engine: &'a Position,
}

/// The barrier's next step. `relay_published` says whether no `referral-attributed` outbox row
/// with an id up to `outbox_through` is left unpublished.
pub fn step(b: &Barrier, p: Progress<'_>, relay_published: bool) -> Step {
    match b.stage {
        Stage::Attribution if covers(p.attribution, &b.registrations) => Step::CaptureOutbox,
        Stage::Relay if relay_published => Step::CaptureAttributed,
        Stage::Scorer
            if b.attributed.as_ref().is_some_and(|a| covers(p.scorer, a))
                && covers(p.scorer, &b.deposits)
                && covers(p.engine, &b.verifications) =>
        {
            Step::Open
        }
        _ => Step::Wait,
    }
}

/// The verdict of the scorer's latest assessment, as the gate reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub revision: i32,
}

/// A referral at settlement, locked for the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtSettlement {
    pub status: ReferralStatus,
    pub cleared_by_review: bool,
    /// The scorer's latest assessment, committed before the barrier opened.
    pub verdict: Option<Verdict>,
    /// The referrer and the referee paid with one payment instrument.
    pub shared_instrument: bool,
    /// A deposit that qualifies under the campaign exists.
    pub qualifying_deposit: bool,
    /// What the campaign's KYC requirement allows.
    pub kyc: crate::campaign::KycState,
}

/// What settlement does with one referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Status moves to apply first, in order, with their causes.
    pub moves: Vec<(Transition, String)>,
    /// Whether to credit the campaign's rewards (the unique reward key still decides).
    pub pay: bool,
}

/// Decides one payout once its barrier is open. The latest assessment applies first, exactly as
/// its `ReferralScored` will when it reaches the engine (only tightening a scored referral); a
/// referral that then stands eligible is sent back to review when it shares a payment
/// instrument with its referrer and no reviewer cleared it, and is paid when a deposit
/// qualifies. Nothing else pays.
pub fn settle(r: AtSettlement) -> Settlement {
    let mut status = r.status;
    let mut moves = Vec::new();
    if let Some(v) = r.verdict {
        if let Some(t) = lifecycle::on_any_score(status, v.decision, r.cleared_by_review) {
            moves.push((t, format!("assessment revision {} {} applied at settlement", v.revision, v.decision.as_str())));
            status = t.to;
        }
    }
    if status != ReferralStatus::Eligible {
        return Settlement { moves, pay: false };
    }
    if r.shared_instrument && !r.cleared_by_review {
        moves.push((lifecycle::BACK_TO_REVIEW, "SHARED_PAYMENT_INSTRUMENT seen at settlement".to_owned()));
        return Settlement { moves, pay: false };
    }
    match r.kyc {
        crate::campaign::KycState::Clear => Settlement { moves, pay: r.qualifying_deposit },
        // Paid when the verification arrives (the reward engine schedules the payout again).
        crate::campaign::KycState::Waiting => Settlement { moves, pay: false },
        crate::campaign::KycState::Rejected(reason) => {
            moves.push((lifecycle::KYC_REJECT, reason));
            Settlement { moves, pay: false }
        }
    }
}

/// What a campaign does with a referral the scorer flags after it was paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPayment {
    /// Take the rewards back through the ledger's compensating entries.
    Clawback,
    /// List it for a person to decide; the money stays.
    Review,
}

impl AfterPayment {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "clawback" => Some(Self::Clawback),
            "review" => Some(Self::Review),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clawback => "clawback",
            Self::Review => "review",
        }
    }
}

/// The policy for fraud found after payment: per decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FraudAfterPayment {
    pub on_reject: AfterPayment,
    pub on_review: AfterPayment,
}

impl Default for FraudAfterPayment {
    fn default() -> Self {
        Self { on_reject: AfterPayment::Clawback, on_review: AfterPayment::Review }
    }
}

impl FraudAfterPayment {
    /// What to do when a score with `decision` reaches a paid (`rewarded`) referral. A referral
    /// a reviewer approved is never clawed back automatically: a person approved it, a person
    /// decides again.
    pub fn on_paid(&self, decision: Decision, cleared_by_review: bool) -> Option<AfterPayment> {
        let what = match decision {
            Decision::Approve => return None,
            Decision::Review => self.on_review,
            Decision::Reject => self.on_reject,
        };
        Some(if cleared_by_review { AfterPayment::Review } else { what })
    }
}

/// A paid referral whose rewards were clawed back.
pub const CLAWBACK: Transition = Transition { from: &[ReferralStatus::Rewarded], to: ReferralStatus::Reversed };

#[cfg(test)]
mod tests;
