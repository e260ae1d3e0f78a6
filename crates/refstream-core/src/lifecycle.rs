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
}

impl ReferralStatus {
    pub const ALL: [ReferralStatus; 7] = [
        Self::Pending,
        Self::Held,
        Self::Eligible,
        Self::Rewarded,
        Self::Rejected,
        Self::Expired,
        Self::Reversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Held => "held",
            Self::Eligible => "eligible",
            Self::Rewarded => "rewarded",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Reversed => "reversed",
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
/// The first qualifying deposit pays an eligible referral.
pub const REWARD: Transition = Transition { from: &[Eligible], to: Rewarded };
/// The qualifying deposit was reversed after payment.
pub const REVERSE: Transition = Transition { from: &[Rewarded], to: Reversed };
/// The window passed before any qualifying deposit.
pub const EXPIRE: Transition = Transition { from: &[Pending, Held, Eligible], to: Expired };

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
    matches!(status, Rejected | Expired | Reversed)
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
        let all = [on_score(Decision::Approve), on_score(Decision::Review), on_score(Decision::Reject), on_review(true), on_review(false), BACK_TO_REVIEW, REWARD, REVERSE, EXPIRE];
        for s in ReferralStatus::ALL.into_iter().filter(|s| is_final(*s)) {
            assert!(all.iter().all(|t| !t.allows(s)), "{s} must be final");
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
