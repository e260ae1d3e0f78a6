//! Campaigns: what a referral pays and when. A deposit qualifies when it is in the campaign's
//! currency, at least the threshold, and occurs within the window after the referee registered.
//! The decision uses event times only, so replaying history gives the same answer.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money};

/// Who receives a reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Referrer,
    Referee,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Referrer => "REFERRER",
            Self::Referee => "REFEREE",
        }
    }
}

/// What a reward credits: withdrawable cash, or promotional bonus credit (its own balance),
/// which may carry a wagering requirement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardKind {
    #[default]
    Cash,
    Bonus,
}

impl RewardKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cash => "CASH",
            Self::Bonus => "BONUS",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CASH" => Some(Self::Cash),
            "BONUS" => Some(Self::Bonus),
            _ => None,
        }
    }
}

/// How a reward is credited: its kind and, for a bonus, the wagering requirement as a multiple
/// of the amount (10: ten times the bonus must be wagered before it can be withdrawn).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credit {
    pub kind: RewardKind,
    pub wagering_multiple: Option<Decimal>,
}

impl Credit {
    pub const CASH: Credit = Credit { kind: RewardKind::Cash, wagering_multiple: None };

    /// The wagering requirement recorded on a grant of `amount`, to the minor unit of its
    /// currency (half away from zero).
    pub fn wagering_requirement(&self, amount: Money) -> Option<Decimal> {
        self.wagering_multiple.map(|m| {
            (amount.amount * m)
                .round_dp_with_strategy(crate::fx::minor_units(amount.currency), rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        })
    }
}

/// One reward a campaign pays per referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardSpec {
    /// Unique per referral with the referral id: the key of exactly-once.
    pub reward_type: String,
    pub role: Role,
    /// The amount, or the first tier's when there are tiers.
    pub amount: Money,
    /// Deposit tiers, in increasing `min_deposit` (empty: `amount` whatever the deposit).
    pub tiers: Vec<Tier>,
    pub credit: Credit,
}

/// A multi-level reward: `amount` to the referrer's `level - 1`-th ancestor (level 2: the
/// referrer's own referrer) for each referral paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelReward {
    /// 2 and up.
    pub level: u8,
    pub amount: Money,
    pub credit: Credit,
}

impl LevelReward {
    pub fn reward_type(&self) -> String {
        format!("level_{}", self.level)
    }
}

/// A milestone: `amount` to a referrer when their `referrals`-th referral in the campaign is
/// rewarded; once per referrer and campaign, ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Milestone {
    pub referrals: u32,
    pub amount: Money,
    pub credit: Credit,
}

impl Milestone {
    pub fn reward_type(&self) -> String {
        format!("milestone_{}", self.referrals)
    }
}

/// A deposit tier: deposits of at least `min_deposit` pay `amount` (unless a higher tier applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub min_deposit: Decimal,
    pub amount: Money,
}

impl RewardSpec {
    /// A fixed reward.
    pub fn fixed(reward_type: &str, role: Role, amount: Money) -> Self {
        Self { reward_type: reward_type.to_owned(), role, amount, tiers: Vec::new(), credit: Credit::CASH }
    }

    /// What this reward pays for a qualifying deposit of `deposit` (in the campaign's currency):
    /// the highest tier it reaches, else the fixed amount.
    pub fn amount_for(&self, deposit: Decimal) -> Money {
        self.tiers.iter().rev().find(|t| deposit >= t.min_deposit).map_or(self.amount, |t| t.amount)
    }
}

/// A referral campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: String,
    pub rewards: Vec<RewardSpec>,
    /// The smallest deposit that qualifies, in `currency`.
    pub min_deposit: Decimal,
    pub currency: Currency,
    /// How long after registration a deposit still qualifies.
    pub window: Duration,
    /// Whose identity must be verified (KYC) before a reward is paid.
    pub kyc: Kyc,
    /// Multi-level rewards, by increasing level from 2 (empty: the referrer's referrer gets nothing).
    pub levels: Vec<LevelReward>,
    /// Milestones, by increasing number of referrals.
    pub milestones: Vec<Milestone>,
}

/// The KYC a campaign requires before paying.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kyc {
    #[serde(default)]
    pub referee: bool,
    #[serde(default)]
    pub referrer: bool,
}

/// Where a user's identity verification stands (the latest `UserVerified` by event time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Unknown,
    Verified,
    Rejected(Option<String>),
}

/// What KYC allows for a payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KycState {
    /// Everyone the campaign requires is verified (or it requires no one).
    Clear,
    /// Someone it requires is not verified yet: the payout waits for the verification.
    Waiting,
    /// Someone it requires was rejected: the referral is rejected with this reason.
    Rejected(String),
}

impl Kyc {
    /// The KYC state of a referral whose referee and referrer stand as given.
    pub fn state(&self, referee: &Verification, referrer: &Verification) -> KycState {
        let required = [(self.referee, "referee", referee), (self.referrer, "referrer", referrer)];
        for (needed, who, v) in required {
            if let (true, Verification::Rejected(reason)) = (needed, v) {
                return KycState::Rejected(format!(
                    "{}{who}{}",
                    crate::lifecycle::KYC_REJECTED,
                    reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                ));
            }
        }
        if required.iter().any(|(needed, _, v)| *needed && **v != Verification::Verified) {
            return KycState::Waiting;
        }
        KycState::Clear
    }
}

/// Whether a deposit qualifies, and if not, why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualification {
    Qualifies,
    BelowThreshold,
    WrongCurrency,
    OutsideWindow,
}

impl Campaign {
    /// The campaign the seeds describe: 10.00 USD to the referrer for a first deposit of at
    /// least 20.00 USD within 30 days of registration.
    pub fn default_referrer_bonus() -> Self {
        Self {
            id: "default".into(),
            rewards: vec![RewardSpec::fixed("referrer_bonus", Role::Referrer, Money::new(Decimal::new(1000, 2), Currency::USD))],
            min_deposit: Decimal::new(2000, 2),
            currency: Currency::USD,
            window: Duration::days(30),
            kyc: Kyc::default(),
            levels: Vec::new(),
            milestones: Vec::new(),
        }
    }

    pub fn qualifies(&self, deposit: &Money, deposited_at: DateTime<Utc>, registered_at: DateTime<Utc>) -> Qualification {
        if deposit.currency != self.currency {
            Qualification::WrongCurrency
        } else if deposit.amount < self.min_deposit {
            Qualification::BelowThreshold
        } else if deposited_at > registered_at + self.window {
            Qualification::OutsideWindow
        } else {
            Qualification::Qualifies
        }
    }
}

/// A deposit as the reward engine recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedDeposit {
    pub deposit_id: String,
    pub amount: Money,
    pub occurred_at: DateTime<Utc>,
    /// Refunded or charged back (before or after it was recorded).
    pub reversed: bool,
}

impl Campaign {
    /// The deposit that pays a referral: the earliest (by event time, then id) that is not
    /// reversed and qualifies. Smaller or foreign-currency deposits before it do not disqualify.
    pub fn first_qualifying<'a>(&self, registered_at: DateTime<Utc>, deposits: &'a [RecordedDeposit]) -> Option<&'a RecordedDeposit> {
        deposits
            .iter()
            .filter(|d| !d.reversed && self.qualifies(&d.amount, d.occurred_at, registered_at) == Qualification::Qualifies)
            .min_by(|a, b| (a.occurred_at, &a.deposit_id).cmp(&(b.occurred_at, &b.deposit_id)))
    }
}

/// A deposit that pays, with its amount in the campaign's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qualified<'a> {
    pub deposit: &'a RecordedDeposit,
    pub converted: crate::fx::Converted,
}

impl Campaign {
    /// As [`Campaign::first_qualifying`], with deposits in other currencies converted at the
    /// rate in force at their time (no rate: they do not qualify).
    pub fn first_qualifying_fx<'a>(
        &self,
        registered_at: DateTime<Utc>,
        deposits: &'a [RecordedDeposit],
        rates: &crate::fx::Rates,
    ) -> Option<Qualified<'a>> {
        deposits
            .iter()
            .filter(|d| !d.reversed)
            .filter_map(|d| rates.convert(d.amount, self.currency, d.occurred_at).map(|converted| Qualified { deposit: d, converted }))
            .filter(|q| self.qualifies(&q.converted.amount, q.deposit.occurred_at, registered_at) == Qualification::Qualifies)
            .min_by(|a, b| (a.deposit.occurred_at, &a.deposit.deposit_id).cmp(&(b.deposit.occurred_at, &b.deposit.deposit_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Money {
        Money::new(s.parse().unwrap(), Currency::USD)
    }

    #[test]
    fn the_first_qualifying_deposit_is_the_earliest_unreversed_one_that_qualifies() {
        let c = Campaign::default_referrer_bonus();
        let reg = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let d = |id: &str, amount: &str, hours: i64, reversed: bool| RecordedDeposit {
            deposit_id: id.into(),
            amount: usd(amount),
            occurred_at: reg + Duration::hours(hours),
            reversed,
        };
        let deposits = vec![d("late", "50", 5, false), d("small", "5", 1, false), d("refunded", "90", 2, true), d("ok", "20", 3, false)];
        assert_eq!(c.first_qualifying(reg, &deposits).map(|d| d.deposit_id.as_str()), Some("ok"));
        assert_eq!(c.first_qualifying(reg, &deposits[1..3]), None);
        let tie = vec![d("b", "30", 3, false), d("a", "30", 3, false)];
        assert_eq!(c.first_qualifying(reg, &tie).map(|d| d.deposit_id.as_str()), Some("a"), "ties break by id");
    }

    #[test]
    fn kyc_waits_for_whom_the_campaign_requires_and_a_rejection_rejects() {
        let k = Kyc { referee: true, referrer: false };
        let (u, v) = (Verification::Unknown, Verification::Verified);
        assert_eq!(k.state(&u, &u), KycState::Waiting);
        assert_eq!(k.state(&v, &u), KycState::Clear, "the referrer is not required");
        let no = Verification::Rejected(Some("document forged".into()));
        assert_eq!(k.state(&no, &v), KycState::Rejected("KYC rejected the referee: document forged".into()));
        assert_eq!(k.state(&v, &no), KycState::Clear);
        assert_eq!(Kyc::default().state(&no, &no), KycState::Clear, "nothing required");
        assert_eq!(Kyc { referee: true, referrer: true }.state(&v, &u), KycState::Waiting);
    }

    #[test]
    fn default_campaign_rules() {
        let c = Campaign::default_referrer_bonus();
        let reg = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(c.qualifies(&usd("20.00"), reg + Duration::days(1), reg), Qualification::Qualifies);
        assert_eq!(c.qualifies(&usd("19.9999"), reg, reg), Qualification::BelowThreshold);
        assert_eq!(c.qualifies(&usd("50"), reg + Duration::days(30), reg), Qualification::Qualifies);
        assert_eq!(c.qualifies(&usd("50"), reg + Duration::days(30) + Duration::milliseconds(1), reg), Qualification::OutsideWindow);
        let eur = Money::new("50".parse().unwrap(), Currency::parse("EUR").unwrap());
        assert_eq!(c.qualifies(&eur, reg, reg), Qualification::WrongCurrency);
    }
}
