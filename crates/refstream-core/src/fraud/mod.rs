//! Fraud scoring: everything the fraud scorer needs to turn the facts it gathered about one
//! referral ([`Evidence`]) into a score, a decision and the reasons for it ([`Assessment`]).
//! Pure and deterministic: no I/O, no clock, no randomness, no floats; the same evidence and
//! policy always give the same assessment. Two guarantees hold whatever the thresholds: a
//! referral that only IP rules flag is approved, and one with a hard link to its referrer
//! (device, payment instrument, email variant, ring) is never approved without a reviewer.

pub mod disposable;
pub mod email;
pub mod network;
pub mod privacy;
pub mod revision;
pub mod rings;
pub mod rules;

use chrono::Duration;

use crate::lifecycle::Decision;

pub use disposable::{DisposableDomains, DomainListError};
pub use email::{canonical_email, email_domain};
pub use network::ip_prefix;
pub use privacy::keyed_hash;
pub use revision::tightens;
pub use rings::{ring_members, ComponentSummary, Components, Graph};

/// The version of the rules below, recorded with every score. Change it with any change to a
/// rule, weight or decision so that scores stay explainable.
pub const RULE_VERSION: &str = "rules-2026.11.2";

/// What the scorer knows about one referral, gathered from its tables.
///
/// Fill both ids: equal ids (both empty included) are a self-referral.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    pub referrer_id: String,
    pub referee_id: String,
    /// The referee's device id equals one of the devices the referrer used.
    pub same_device: bool,
    /// The referee registered from exactly the referrer's IP address.
    pub same_ip: bool,
    /// The referee registered from the referrer's /24 (IPv4) or /64 (IPv6), see [`ip_prefix`].
    pub same_ip_prefix: bool,
    /// The canonical emails of referee and referrer are equal, see [`canonical_email`].
    pub email_matches_referrer: bool,
    /// The referee's canonical email already belongs to another, earlier account.
    pub email_matches_earlier_account: bool,
    /// The referee's email domain is a disposable-email provider, see [`DisposableDomains`].
    pub disposable_email: bool,
    /// Referrals by the referrer within the policy's window, this one included.
    pub referrals_by_referrer_in_window: u32,
    /// Registrations from the referee's device within the window, this one included.
    pub registrations_from_device_in_window: u32,
    /// Registrations from the referee's IP address within the window, this one included.
    pub registrations_from_ip_in_window: u32,
    /// Accounts other than the referee that registered on the referee's device.
    pub other_accounts_on_referee_device: u32,
    /// A payment fingerprint was used by both referrer and referee.
    pub shared_payment_instrument: bool,
    /// Accounts in the referee's ring component (see [`ring_members`]); 0 when not in a ring.
    pub ring_size: u32,
    /// The app got the referee's click id by a signal match, this sure (percent); `None` for
    /// a code or a click id that came back as issued.
    pub probabilistic_match_pct: Option<u8>,
    /// Clicks on the referral's code from the referee click's network in the hour up to it.
    pub network_clicks_on_code: u32,
}

/// The operator's thresholds and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudPolicy {
    /// A score at or above this holds the referral for review.
    pub review_at: u8,
    /// A score at or above this rejects the referral.
    pub reject_at: u8,
    /// The fewest accounts a linked component needs to count as a ring.
    pub ring_min_size: u32,
    /// Referrals one referrer may make per window before VELOCITY_REFERRER fires.
    pub velocity_per_referrer: u32,
    /// Registrations one device may make per window before VELOCITY_DEVICE fires.
    pub velocity_per_device: u32,
    /// Registrations one IP address may make per window before VELOCITY_IP fires; high
    /// because offices and carrier NAT put many people behind one address.
    pub velocity_per_ip: u32,
    /// The window the velocity counts cover.
    pub velocity_window: Duration,
    /// Clicks on one code from one network within an hour at which CLICK_FLOOD fires.
    pub click_flood_per_network: u32,
}

impl Default for FraudPolicy {
    fn default() -> Self {
        Self {
            review_at: 40,
            reject_at: 80,
            ring_min_size: 3,
            velocity_per_referrer: 10,
            velocity_per_device: 3,
            velocity_per_ip: 20,
            velocity_window: Duration::hours(24),
            click_flood_per_network: 20,
        }
    }
}

/// A policy that cannot be meant as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("fraud policy: review_at ({review_at}) is above reject_at ({reject_at})")]
    ThresholdsOutOfOrder { review_at: u8, reject_at: u8 },
    #[error("fraud policy: ring_min_size is {0}; a ring needs at least 2 accounts")]
    RingTooSmall(u32),
    #[error("fraud policy: {0} is 0, so every referral would exceed it")]
    ZeroVelocityLimit(&'static str),
    #[error("fraud policy: velocity_window must be positive")]
    EmptyWindow,
}

impl FraudPolicy {
    /// Checks the policy as an operator configured it. [`assess`] works with any policy; this
    /// catches the ones that are certainly mistakes before a scorer starts.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.review_at > self.reject_at {
            return Err(PolicyError::ThresholdsOutOfOrder { review_at: self.review_at, reject_at: self.reject_at });
        }
        if self.ring_min_size < 2 {
            return Err(PolicyError::RingTooSmall(self.ring_min_size));
        }
        for (name, limit) in [
            ("velocity_per_referrer", self.velocity_per_referrer),
            ("velocity_per_device", self.velocity_per_device),
            ("velocity_per_ip", self.velocity_per_ip),
            ("click_flood_per_network", self.click_flood_per_network),
        ] {
            if limit == 0 {
                return Err(PolicyError::ZeroVelocityLimit(name));
            }
        }
        if self.velocity_window <= Duration::zero() {
            return Err(PolicyError::EmptyWindow);
        }
        Ok(())
    }
}

/// One fired rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// The rule's reason code, SCREAMING_SNAKE_CASE (see [`rules`]).
    pub code: &'static str,
    /// Points the rule adds to the score.
    pub weight: u8,
    /// A sentence for reviewers, for example "referee registered on a device the referrer used".
    pub detail: String,
}

/// The scorer's verdict on one referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The sum of the fired rules' weights, capped at 100.
    pub score: u8,
    pub decision: Decision,
    /// The fired rules, in the order of [`rules::RULES`].
    pub signals: Vec<Signal>,
    pub rule_version: &'static str,
}

impl Assessment {
    /// The reason codes of the fired rules, in the order of [`rules::RULES`].
    pub fn reasons(&self) -> Vec<String> {
        self.signals.iter().map(|s| s.code.to_owned()).collect()
    }

    /// True when the rule with `code` fired.
    pub fn fired(&self, code: &str) -> bool {
        self.signals.iter().any(|s| s.code == code)
    }
}

/// Scores a referral: runs every rule, sums the weights (capped at 100) and decides.
pub fn assess(evidence: &Evidence, policy: &FraudPolicy) -> Assessment {
    let signals: Vec<Signal> = rules::RULES.iter().filter_map(|(_, rule)| rule(evidence, policy)).collect();
    let total: u32 = signals.iter().map(|s| u32::from(s.weight)).sum();
    let score = u8::try_from(total.min(100)).unwrap_or(100);
    let decision = decide(score, &signals, policy);
    Assessment { score, decision, signals, rule_version: RULE_VERSION }
}

/// The decision for `score` and the fired `signals`, in order of precedence:
/// 1. a self-referral is rejected;
/// 2. a referral flagged only by soft (IP) rules, or by none, is approved whatever the
///    thresholds: households, offices and carrier NAT share addresses and must not be held;
/// 3. otherwise the score decides against `reject_at` and `review_at`;
/// 4. but a hard link to the referrer (device, payment instrument, email variant, ring) is
///    held for review at least, whatever the thresholds.
fn decide(score: u8, signals: &[Signal], policy: &FraudPolicy) -> Decision {
    let any_fired = |codes: &[&str]| signals.iter().any(|s| codes.contains(&s.code));
    if any_fired(rules::ALWAYS_REJECT) {
        return Decision::Reject;
    }
    let only_soft = signals.iter().all(|s| rules::SOFT.contains(&s.code));
    if only_soft {
        return Decision::Approve;
    }
    let by_score = if score >= policy.reject_at {
        Decision::Reject
    } else if score >= policy.review_at {
        Decision::Review
    } else {
        Decision::Approve
    };
    if by_score == Decision::Approve && any_fired(rules::AT_LEAST_REVIEW) {
        return Decision::Review;
    }
    by_score
}

#[cfg(test)]
mod tests;
