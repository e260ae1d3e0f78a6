//! The referral lifecycle (DESIGN §3). Every transition is named here with the states it may
//! start from; the database applies it as a conditional update guarded by exactly those states,
//! so a replayed or late event can never move a referral backwards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a referral stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferralStatus {
    /// Attributed, not yet scored.
    Pending,
    /// Scored REVIEW: waits for a reviewer.
    Held,
    /// Approved: the first qualifying deposit pays.
    Eligible,
    /// The reward was credited.
    Rewarded,
    /// Scored REJECT or rejected by a reviewer: never pays.
    Rejected,
    /// The attribution window passed without a qualifying deposit.
    Expired,
    /// The qualifying deposit was reversed and the reward taken back.
    Reversed,
    /// Eligible, but its campaign's budget or a per-referrer cap was spent when it was to be
    /// paid: listed with the reason, paid if the campaign raises the limit and says so.
    Capped,
}

impl ReferralStatus {
    pub const ALL: [ReferralStatus; 8] =
        [Self::Pending, Self::Held, Self::Eligible, Self::Rewarded, Self::Rejected, Self::Expired, Self::Reversed, Self::Capped];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Held => "held",
            Self::Eligible => "eligible",
            Self::Rewarded => "rewarded",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Reversed => "reversed",
            Self::Capped => "capped",
        }
    }
}

impl fmt::Display for ReferralStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReferralStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown referral status `{s}`"))
    }
}

/// The fraud scorer's (or a reviewer's) verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    Approve,
    Review,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "APPROVE",
            Self::Review => "REVIEW",
            Self::Reject => "REJECT",
        }
    }
}

impl FromStr for Decision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "APPROVE" => Ok(Self::Approve),
            "REVIEW" => Ok(Self::Review),
            "REJECT" => Ok(Self::Reject),
            other => Err(format!("unknown decision `{other}`")),
        }
    }
}

/// A named move between states, with the only states it may start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: &'static [ReferralStatus],
    pub to: ReferralStatus,
}

use ReferralStatus::*;

/// The scorer's decision on a pending referral.
pub fn on_score(decision: Decision) -> Transition {
    let to = match decision {
        Decision::Approve => Eligible,
        Decision::Review => Held,
        Decision::Reject => Rejected,
    };
    Transition { from: &[Pending], to }
}

/// A reviewer's decision on a held referral.
pub fn on_review(approve: bool) -> Transition {
    Transition { from: &[Held], to: if approve { Eligible } else { Rejected } }
}

/// A new fraud signal seen before payment sends an eligible referral back to review.
pub const BACK_TO_REVIEW: Transition = Transition { from: &[Eligible], to: Held };
/// A re-score that rejects an unpaid referral no reviewer has cleared.
pub const RESCORE_REJECT: Transition = Transition { from: &[Eligible, Held], to: Rejected };

/// A later score of a referral that is no longer pending: the scorer re-scores a referral when
/// new evidence arrives (a fraud ring that formed, a payment instrument it learned). A re-score
/// only ever tightens, and never touches a paid referral (rewarded or reversed: those are for a
/// person to look at). APPROVE moves nothing; REVIEW sends an eligible referral back to held;
/// REJECT rejects an eligible or held one, except that a referral a reviewer already cleared
/// goes back to held instead: a person approved it, so a person decides again.
pub fn on_rescore(decision: Decision, cleared_by_review: bool) -> Option<Transition> {
    match (decision, cleared_by_review) {
        (Decision::Approve, _) | (Decision::Review, true) => None,
        (Decision::Review, false) | (Decision::Reject, true) => Some(BACK_TO_REVIEW),
        (Decision::Reject, false) => Some(RESCORE_REJECT),
    }
}

/// The move a score makes on a referral in `current`: the first score moves a pending referral
/// ([`on_score`]), a later one may only tighten ([`on_rescore`]). `None` when nothing moves.
pub fn on_any_score(current: ReferralStatus, decision: Decision, cleared_by_review: bool) -> Option<Transition> {
    let t = if current == Pending { Some(on_score(decision)) } else { on_rescore(decision, cleared_by_review) };
    t.filter(|t| t.allows(current))
}
/// The first qualifying deposit pays an eligible referral.
pub const REWARD: Transition = Transition { from: &[Eligible], to: Rewarded };
/// The qualifying deposit was reversed after payment.
pub const REVERSE: Transition = Transition { from: &[Rewarded], to: Reversed };
/// A limit of the campaign (budget, per-referrer cap) was spent when the referral was to be paid.
pub const CAP: Transition = Transition { from: &[Eligible], to: Capped };
/// The campaign raised the limit and pays the referrals it capped.
pub const UNCAP: Transition = Transition { from: &[Capped], to: Eligible };
/// The KYC service rejected someone the campaign requires verified.
pub const KYC_REJECT: Transition = Transition { from: &[Pending, Held, Eligible, Capped], to: Rejected };
/// The window passed before any qualifying deposit.
pub const EXPIRE: Transition = Transition { from: &[Pending, Held, Eligible], to: Expired };
/// A deposit made within the window was reported after the referral expired: it goes back to
/// where it stood, and pays as it would have (a late report never loses a reward).
pub const REVIVE_PENDING: Transition = Transition { from: &[Expired], to: Pending };
pub const REVIVE_HELD: Transition = Transition { from: &[Expired], to: Held };
pub const REVIVE_ELIGIBLE: Transition = Transition { from: &[Expired], to: Eligible };

/// A KYC rejection is undone when a later verdict (by event time) verifies the user before
/// anything was paid: the referral goes back to the state it was rejected from, so verdicts
/// arriving in any order end the same. Only a rejection whose cause starts with
/// [`KYC_REJECTED`] is ever undone; any other rejection stays final.
pub const KYC_RESTORE_PENDING: Transition = Transition { from: &[Rejected], to: Pending };
pub const KYC_RESTORE_HELD: Transition = Transition { from: &[Rejected], to: Held };
pub const KYC_RESTORE_ELIGIBLE: Transition = Transition { from: &[Rejected], to: Eligible };
pub const KYC_RESTORE_CAPPED: Transition = Transition { from: &[Rejected], to: Capped };

/// How the cause of every KYC rejection starts.
pub const KYC_REJECTED: &str = "KYC rejected the ";

/// The move back from a KYC rejection to the state it was rejected from.
pub fn kyc_restore(before: ReferralStatus) -> Option<Transition> {
    match before {
        Pending => Some(KYC_RESTORE_PENDING),
        Held => Some(KYC_RESTORE_HELD),
        Eligible => Some(KYC_RESTORE_ELIGIBLE),
        Capped => Some(KYC_RESTORE_CAPPED),
        _ => None,
    }
}

/// The move back from `expired` to the state it expired from.
pub fn revive(before: ReferralStatus) -> Option<Transition> {
    match before {
        Pending => Some(REVIVE_PENDING),
        Held => Some(REVIVE_HELD),
        Eligible => Some(REVIVE_ELIGIBLE),
        _ => None,
    }
}

impl Transition {
    pub fn allows(&self, current: ReferralStatus) -> bool {
        self.from.contains(&current)
    }

    /// The starting states as text, for the SQL guard `status = ANY($n)`.
    pub fn from_strs(&self) -> Vec<String> {
        self.from.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

/// True when nothing can move a referral out of `status` any more.
pub fn is_final(status: ReferralStatus) -> bool {
    matches!(status, Rejected | Reversed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text() {
        for s in ReferralStatus::ALL {
            assert_eq!(s.as_str().parse::<ReferralStatus>().unwrap(), s);
        }
    }

    #[test]
    fn final_states_have_no_way_out() {
        let all = [
            on_score(Decision::Approve),
            on_score(Decision::Review),
            on_score(Decision::Reject),
            on_review(true),
            on_review(false),
            BACK_TO_REVIEW,
            RESCORE_REJECT,
            REWARD,
            REVERSE,
            EXPIRE,
            CAP,
            UNCAP,
            KYC_REJECT,
            REVIVE_PENDING,
            REVIVE_HELD,
            REVIVE_ELIGIBLE,
            // KYC_RESTORE_* leave `rejected`, but only a KYC rejection (by its cause), which the
            // reward engine checks before it applies one.
        ];
        for s in ReferralStatus::ALL.into_iter().filter(|s| is_final(*s)) {
            assert!(all.iter().all(|t| !t.allows(s)), "{s} must be final");
        }
    }

    /// Strictness of where a referral stands, for the "a re-score only tightens" checks.
    fn strictness(s: ReferralStatus) -> u8 {
        match s {
            Pending | Eligible | Capped => 0,
            Held => 1,
            Rejected => 2,
            Rewarded | Expired | Reversed => 3,
        }
    }

    #[test]
    fn a_rescore_only_tightens_and_never_touches_a_paid_referral() {
        for decision in [Decision::Approve, Decision::Review, Decision::Reject] {
            for cleared in [false, true] {
                let Some(t) = on_rescore(decision, cleared) else { continue };
                assert!(strictness(t.to) > 0, "{decision:?}: a re-score never makes a referral payable");
                for s in ReferralStatus::ALL.into_iter().filter(|s| t.allows(*s)) {
                    assert!(strictness(t.to) > strictness(s), "{decision:?} cleared={cleared}: {s} -> {}", t.to);
                }
                for paid in [Rewarded, Reversed, Expired, Rejected, Pending] {
                    assert!(!t.allows(paid), "{decision:?} must not move a {paid} referral");
                }
            }
        }
    }

    #[test]
    fn a_rescore_moves_eligible_and_held_referrals_as_the_decision_says() {
        assert_eq!(on_rescore(Decision::Approve, false), None, "a re-score never relaxes");
        assert_eq!(on_rescore(Decision::Review, false), Some(BACK_TO_REVIEW));
        assert_eq!(on_rescore(Decision::Reject, false), Some(RESCORE_REJECT));
        assert!(RESCORE_REJECT.allows(Eligible) && RESCORE_REJECT.allows(Held));
        // A reviewer's approval stands against REVIEW; REJECT sends it back to a person.
        assert_eq!(on_rescore(Decision::Review, true), None);
        assert_eq!(on_rescore(Decision::Reject, true), Some(BACK_TO_REVIEW));
    }

    #[test]
    fn any_score_picks_first_score_or_rescore_by_the_current_status() {
        assert_eq!(on_any_score(Pending, Decision::Approve, false).map(|t| t.to), Some(Eligible));
        assert_eq!(on_any_score(Pending, Decision::Reject, false).map(|t| t.to), Some(Rejected));
        assert_eq!(on_any_score(Eligible, Decision::Approve, false), None);
        assert_eq!(on_any_score(Eligible, Decision::Review, false).map(|t| t.to), Some(Held));
        assert_eq!(on_any_score(Eligible, Decision::Reject, false).map(|t| t.to), Some(Rejected));
        assert_eq!(on_any_score(Eligible, Decision::Reject, true).map(|t| t.to), Some(Held));
        assert_eq!(on_any_score(Held, Decision::Review, false), None);
        assert_eq!(on_any_score(Held, Decision::Reject, false).map(|t| t.to), Some(Rejected));
        assert_eq!(on_any_score(Held, Decision::Reject, true), None, "already with a reviewer");
        for s in [Rewarded, Reversed, Rejected, Expired] {
            for d in [Decision::Approve, Decision::Review, Decision::Reject] {
                assert_eq!(on_any_score(s, d, false), None, "{s} {d:?}");
            }
        }
    }

    #[test]
    fn a_score_only_moves_a_pending_referral() {
        let t = on_score(Decision::Approve);
        assert!(t.allows(Pending));
        assert!(!t.allows(Rewarded));
        assert!(!t.allows(Held));
    }
}
