//! What one paid referral credits, and to whom: the campaign's own rewards (referrer, referee,
//! by tier), its multi-level rewards up the referrer's upline, and a milestone when this is the
//! referrer's N-th rewarded referral. Pure: the reward engine loads the upline and the count,
//! and inserts what this returns under the unique keys that make each grant exactly-once.
//!
//! The upline never pays anyone twice for one referral and never goes around a cycle: it stops
//! at the first ancestor already met (the referee, the referrer, or anyone above).

use std::collections::{HashMap, HashSet};

use rust_decimal::Decimal;

use crate::campaign::{Campaign, Credit, RewardKind, Role};
use crate::money::Money;

/// One reward to credit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// With the referral id, the key of exactly-once.
    pub reward_type: String,
    pub role: Role,
    /// 1: the referral's own referrer or referee; 2: the referrer's referrer; ...
    pub level: u8,
    /// A milestone reward: the referrer's N-th rewarded referral.
    pub milestone: Option<u32>,
    pub beneficiary: String,
    pub amount: Money,
    pub kind: RewardKind,
    pub wagering_requirement: Option<Decimal>,
}

impl Grant {
    fn new(reward_type: String, role: Role, level: u8, beneficiary: &str, amount: Money, credit: Credit) -> Self {
        Self {
            reward_type,
            role,
            level,
            milestone: None,
            beneficiary: beneficiary.to_owned(),
            amount,
            kind: credit.kind,
            wagering_requirement: credit.wagering_requirement(amount),
        }
    }
}

/// The referrer's ancestors, nearest first, at most `levels` of them: `parent_of` maps a user to
/// whoever referred them. Stops at the first user already met, so no one appears twice and the
/// referee and the referrer never appear.
pub fn upline(referee: &str, referrer: &str, parent_of: &HashMap<String, String>, levels: usize) -> Vec<String> {
    let mut seen: HashSet<&str> = HashSet::from([referee, referrer]);
    let mut out = Vec::new();
    let mut current = referrer;
    while out.len() < levels {
        match parent_of.get(current) {
            Some(parent) if seen.insert(parent.as_str()) => {
                out.push(parent.clone());
                current = parent;
            }
            _ => break,
        }
    }
    out
}

/// A referral being paid, as [`grants`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct Paid<'a> {
    pub referrer: &'a str,
    pub referee: &'a str,
    /// The referrer's ancestors (see [`upline`]).
    pub upline: &'a [String],
    /// The qualifying deposit, in the campaign's currency (tiers pay by it).
    pub deposit: Decimal,
    /// The referrer's rewarded referrals in the campaign before this one.
    pub rewarded_before: u32,
}

/// Everything `campaign` credits for paying `paid`.
pub fn grants(campaign: &Campaign, paid: Paid<'_>) -> Vec<Grant> {
    let mut out: Vec<Grant> = campaign
        .rewards
        .iter()
        .map(|spec| {
            let beneficiary = match spec.role {
                Role::Referrer => paid.referrer,
                Role::Referee => paid.referee,
            };
            Grant::new(spec.reward_type.clone(), spec.role, 1, beneficiary, spec.amount_for(paid.deposit), spec.credit)
        })
        .collect();
    for (level, ancestor) in campaign.levels.iter().zip(paid.upline) {
        out.push(Grant::new(level.reward_type(), Role::Referrer, level.level, ancestor, level.amount, level.credit));
    }
    for m in campaign.milestones.iter().filter(|m| m.referrals == paid.rewarded_before.saturating_add(1)) {
        let mut g = Grant::new(m.reward_type(), Role::Referrer, 1, paid.referrer, m.amount, m.credit);
        g.milestone = Some(m.referrals);
        out.push(g);
    }
    out
}

#[cfg(test)]
mod tests;
