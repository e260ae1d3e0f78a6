//! Campaigns as data: the definition an operator applies (`refstream campaigns apply <file>`),
//! validated into the [`Campaign`] the reward engine pays by, its targeting, and the pure rule
//! that binds a new referral to one campaign and the terms version in force at the referee's
//! registration. Binding depends on event times and the campaigns' recorded history only, so a
//! registration read late, or twice, is bound to the same terms.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::campaign::{Campaign, Credit, LevelReward, Milestone, RewardKind, RewardSpec, Role, Tier};
use crate::money::{Currency, Money};
/// A problem in a campaign definition, naming its field (`rewards[1].tiers[0].amount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for DefinitionError {}

/// A campaign as written in its file (TOML) and stored with each version (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Letters, digits, `-` and `_`; at most 64.
    pub id: String,
    pub name: String,
    /// Among campaigns whose targeting matches a registration, the highest priority wins (then
    /// the smallest id).
    #[serde(default)]
    pub priority: i32,
    pub currency: String,
    /// The smallest deposit that qualifies, a decimal in `currency`.
    pub min_deposit: String,
    /// How long after registration a deposit still qualifies.
    pub window_days: i64,
    #[serde(default)]
    pub targeting: TargetingDef,
    pub rewards: Vec<RewardDef>,
    /// Caps and budget (all optional), enforced when a reward is paid, by the campaign's
    /// current version.
    #[serde(default)]
    pub limits: LimitsDef,
    /// Whose identity (KYC) must be verified before a reward is paid.
    #[serde(default)]
    pub kyc: crate::campaign::Kyc,
    /// Multi-level: the first pays the referrer's referrer (level 2), the next their referrer, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<LevelDef>,
    /// Extra rewards to a referrer at their N-th rewarded referral.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub milestones: Vec<MilestoneDef>,
}

/// The most levels above the referrer a campaign pays (level 2 to level 1 + this).
pub const MAX_LEVELS: usize = 4;

/// One multi-level reward as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelDef {
    pub amount: String,
    /// `cash` (default) or `bonus`.
    #[serde(default)]
    pub kind: RewardKind,
    /// Bonus only: how many times the amount must be wagered before it can be withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wagering: Option<String>,
}

/// One milestone as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilestoneDef {
    /// Paid when the referrer's rewarded referrals in the campaign reach this number.
    pub referrals: u32,
    pub amount: String,
    #[serde(default)]
    pub kind: RewardKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wagering: Option<String>,
}

/// A campaign's caps and budget as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDef {
    /// The most the campaign pays in all (in its currency), net of reversals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// The most referrals it pays (net of reversals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rewarded_referrals: Option<u32>,
    /// The most referrals it pays one referrer, ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_referrer: Option<u32>,
    /// The most referrals it pays one referrer whose qualifying deposits fall within `period_days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_referrer_per_period: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_days: Option<i64>,
    /// When a later version raises a limit, pay the referrals it capped (oldest first).
    #[serde(default)]
    pub pay_capped_when_raised: bool,
}

/// Caps and budget, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub budget: Option<Money>,
    pub max_rewarded_referrals: Option<u32>,
    pub per_referrer: Option<u32>,
    pub per_referrer_per_period: Option<(u32, Duration)>,
    pub pay_capped_when_raised: bool,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.budget.is_none()
            && self.max_rewarded_referrals.is_none()
            && self.per_referrer.is_none()
            && self.per_referrer_per_period.is_none()
    }
}

/// What a campaign has paid so far (net of reversals), as the cap check needs it.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub rewarded_referrals: u32,
    pub spent: Decimal,
    /// Per referrer: the qualifying-deposit times of its rewarded referrals.
    pub by_referrer: std::collections::HashMap<String, Vec<DateTime<Utc>>>,
}

impl Usage {
    /// Admits one more referral of `referrer` paying `amount` for a deposit made at
    /// `deposited_at`, and counts it; or says which limit it would break.
    pub fn admit(&mut self, limits: &Limits, referrer: &str, amount: Decimal, deposited_at: DateTime<Utc>) -> Result<(), String> {
        if let Some(max) = limits.max_rewarded_referrals {
            if self.rewarded_referrals >= max {
                return Err(format!("campaign budget spent: {max} rewarded referrals"));
            }
        }
        if let Some(budget) = limits.budget {
            if self.spent + amount > budget.amount {
                return Err(format!("campaign budget spent: {} of {budget} paid, this needs {amount}", self.spent));
            }
        }
        let times = self.by_referrer.entry(referrer.to_owned()).or_default();
        if let Some(max) = limits.per_referrer {
            if times.len() >= max as usize {
                return Err(format!("referrer cap: {max} rewarded referrals per referrer"));
            }
        }
        if let Some((max, period)) = limits.per_referrer_per_period {
            let recent = times.iter().filter(|t| **t > deposited_at - period && **t <= deposited_at + period).count();
            if recent >= max as usize {
                return Err(format!("referrer cap: {max} rewarded referrals per {} days", period.num_days()));
            }
        }
        times.push(deposited_at);
        self.rewarded_referrals += 1;
        self.spent += amount;
        Ok(())
    }
}

/// Who a campaign is for. Empty lists match everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetingDef {
    /// ISO 3166-1 alpha-2 codes, e.g. `["GB", "IE"]`.
    #[serde(default)]
    pub countries: Vec<String>,
    /// Countries this campaign never pays in.
    #[serde(default)]
    pub exclude_countries: Vec<String>,
    /// `web`, `ios`, `android`, `desktop`.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Registrations from this time (inclusive).
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// Registrations before this time.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
}

/// One reward of a referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardDef {
    /// Unique within the campaign: with the referral id, the key of exactly-once.
    #[serde(rename = "type")]
    pub reward_type: String,
    /// `referrer` or `referee`.
    pub role: Role,
    /// A fixed amount, or
    #[serde(default)]
    pub amount: Option<String>,
    /// deposit tiers: the highest tier whose `min_deposit` the qualifying deposit reaches.
    #[serde(default)]
    pub tiers: Vec<TierDef>,
    /// `cash` (default, withdrawable) or `bonus` (promotional credit, its own balance).
    #[serde(default)]
    pub kind: RewardKind,
    /// Bonus only: how many times the amount must be wagered before it can be withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wagering: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierDef {
    pub min_deposit: String,
    pub amount: String,
}

/// A campaign's targeting, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targeting {
    pub countries: Vec<String>,
    pub exclude_countries: Vec<String>,
    pub platforms: Vec<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
}

impl Targeting {
    /// Why a registration (country, platform, time) is outside this targeting; `None` when it
    /// matches.
    pub fn refusal(&self, country: Option<&str>, platform: &str, at: DateTime<Utc>) -> Option<String> {
        let country = country.map(str::to_ascii_uppercase);
        if let Some(c) = &country {
            if self.exclude_countries.contains(c) {
                return Some(format!("country {c} is excluded"));
            }
        }
        if !self.countries.is_empty() && !country.as_ref().is_some_and(|c| self.countries.contains(c)) {
            return Some(format!("country {} is not targeted", country.as_deref().unwrap_or("unknown")));
        }
        if !self.platforms.is_empty() && !self.platforms.iter().any(|p| p.eq_ignore_ascii_case(platform)) {
            return Some(format!("platform {platform} is not targeted"));
        }
        if self.starts_at.is_some_and(|s| at < s) {
            return Some("registered before the campaign starts".into());
        }
        if self.ends_at.is_some_and(|e| at >= e) {
            return Some("registered after the campaign ended".into());
        }
        None
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> DefinitionError {
    DefinitionError { field: field.into(), reason: reason.into() }
}

fn decimal(field: &str, raw: &str) -> Result<Decimal, DefinitionError> {
    raw.trim().parse::<Decimal>().map_err(|e| err(field, format!("`{raw}` is not a decimal: {e}")))
}

fn positive(field: &str, raw: &str, currency: Currency) -> Result<Money, DefinitionError> {
    let d = decimal(field, raw)?;
    Money::positive("amount", d, currency).map_err(|e| err(field, e.reason))
}

/// A reward's kind and wagering multiple (`prefix` names the reward: `levels[0]`).
fn credit(prefix: &str, kind: RewardKind, wagering: Option<&str>) -> Result<Credit, DefinitionError> {
    let field = format!("{prefix}.wagering");
    let wagering_multiple = match (kind, wagering) {
        (_, None) => None,
        (RewardKind::Cash, Some(_)) => return Err(err(field, "only a `bonus` reward has a wagering requirement")),
        (RewardKind::Bonus, Some(raw)) => {
            let m = decimal(&field, raw)?;
            if m < Decimal::ZERO || m > Decimal::new(1000, 0) {
                return Err(err(field, "must be between 0 and 1000 (times the bonus)"));
            }
            Some(m)
        }
    };
    Ok(Credit { kind, wagering_multiple })
}

impl Definition {
    /// The campaign and targeting this definition describes, or the first problem, naming its
    /// field (`rewards[1].tiers[0].amount`).
    pub fn validate(&self) -> Result<(Campaign, Targeting), DefinitionError> {
        let id_ok =
            !self.id.is_empty() && self.id.len() <= 64 && self.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            return Err(err("id", format!("`{}` must be 1 to 64 letters, digits, `-` or `_`", self.id)));
        }
        if self.id == "none" {
            return Err(err("id", "`none` is reserved (a referral no campaign covers)"));
        }
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            return Err(err("name", "must be 1 to 200 characters"));
        }
        let currency = Currency::parse(&self.currency).map_err(|e| err("currency", e.reason))?;
        let min_deposit = positive("min_deposit", &self.min_deposit, currency)?.amount;
        if !(1..=3650).contains(&self.window_days) {
            return Err(err("window_days", "must be between 1 and 3650"));
        }
        if self.rewards.is_empty() {
            return Err(err("rewards", "a campaign pays at least one reward"));
        }
        let mut rewards = Vec::new();
        for (i, r) in self.rewards.iter().enumerate() {
            let field = |f: &str| format!("rewards[{i}].{f}");
            let type_ok = !r.reward_type.is_empty()
                && r.reward_type.len() <= 64
                && r.reward_type.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !type_ok {
                return Err(err(field("type"), "must be 1 to 64 letters, digits, `_` or `-`"));
            }
            if self.rewards[..i].iter().any(|o| o.reward_type == r.reward_type) {
                return Err(err(field("type"), format!("`{}` appears twice: each reward type pays once per referral", r.reward_type)));
            }
            let (amount, tiers) = match (&r.amount, r.tiers.is_empty()) {
                (Some(a), true) => (positive(&field("amount"), a, currency)?, Vec::new()),
                (None, false) => {
                    let mut tiers = Vec::new();
                    for (j, t) in r.tiers.iter().enumerate() {
                        let tf = |f: &str| format!("rewards[{i}].tiers[{j}].{f}");
                        let min = positive(&tf("min_deposit"), &t.min_deposit, currency)?.amount;
                        let amount = positive(&tf("amount"), &t.amount, currency)?;
                        if tiers.last().is_some_and(|p: &Tier| p.min_deposit >= min) {
                            return Err(err(tf("min_deposit"), "tiers must be in increasing order of min_deposit"));
                        }
                        tiers.push(Tier { min_deposit: min, amount });
                    }
                    if tiers[0].min_deposit != min_deposit {
                        return Err(err(
                            format!("rewards[{i}].tiers[0].min_deposit"),
                            format!("the first tier starts at the campaign's min_deposit ({min_deposit})"),
                        ));
                    }
                    (tiers[0].amount, tiers)
                }
                (Some(_), false) => return Err(err(field("amount"), "give either amount or tiers, not both")),
                (None, true) => return Err(err(field("amount"), "missing: give amount or tiers")),
            };
            let credit = credit(&format!("rewards[{i}]"), r.kind, r.wagering.as_deref())?;
            rewards.push(RewardSpec { reward_type: r.reward_type.clone(), role: r.role, amount, tiers, credit });
        }
        if self.levels.len() > MAX_LEVELS {
            return Err(err("levels", format!("at most {MAX_LEVELS} levels above the referrer")));
        }
        let mut levels = Vec::new();
        for (i, l) in self.levels.iter().enumerate() {
            let amount = positive(&format!("levels[{i}].amount"), &l.amount, currency)?;
            let credit = credit(&format!("levels[{i}]"), l.kind, l.wagering.as_deref())?;
            levels.push(LevelReward { level: u8::try_from(i + 2).unwrap_or(u8::MAX), amount, credit });
        }
        let mut milestones: Vec<Milestone> = Vec::new();
        for (i, m) in self.milestones.iter().enumerate() {
            if m.referrals < 1 || m.referrals > 100_000 {
                return Err(err(format!("milestones[{i}].referrals"), "must be between 1 and 100000"));
            }
            if milestones.last().is_some_and(|p| p.referrals >= m.referrals) {
                return Err(err(format!("milestones[{i}].referrals"), "milestones must be in increasing order of referrals"));
            }
            let amount = positive(&format!("milestones[{i}].amount"), &m.amount, currency)?;
            let credit = credit(&format!("milestones[{i}]"), m.kind, m.wagering.as_deref())?;
            milestones.push(Milestone { referrals: m.referrals, amount, credit });
        }
        if let Some((i, r)) =
            rewards.iter().enumerate().find(|(_, r)| r.reward_type.starts_with("level_") || r.reward_type.starts_with("milestone_"))
        {
            return Err(err(
                format!("rewards[{i}].type"),
                format!("`{}`: level_ and milestone_ name level and milestone rewards", r.reward_type),
            ));
        }
        let t = &self.targeting;
        let countries = |name: &str, list: &[String]| -> Result<Vec<String>, DefinitionError> {
            list.iter()
                .map(|c| {
                    let up = c.trim().to_ascii_uppercase();
                    if up.len() == 2 && up.chars().all(|ch| ch.is_ascii_alphabetic()) {
                        Ok(up)
                    } else {
                        Err(err(format!("targeting.{name}"), format!("`{c}` is not an ISO 3166-1 alpha-2 code")))
                    }
                })
                .collect()
        };
        let platforms = t
            .platforms
            .iter()
            .map(|p| {
                let low = p.trim().to_ascii_lowercase();
                if ["web", "ios", "android", "desktop"].contains(&low.as_str()) {
                    Ok(low)
                } else {
                    Err(err("targeting.platforms", format!("`{p}` is not one of web, ios, android, desktop")))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let (Some(s), Some(e)) = (t.starts_at, t.ends_at) {
            if e <= s {
                return Err(err("targeting.ends_at", "must be after starts_at"));
            }
        }
        let targeting = Targeting {
            countries: countries("countries", &t.countries)?,
            exclude_countries: countries("exclude_countries", &t.exclude_countries)?,
            platforms,
            starts_at: t.starts_at,
            ends_at: t.ends_at,
        };
        self.limits()?;
        let campaign = Campaign {
            id: self.id.clone(),
            rewards,
            min_deposit,
            currency,
            window: Duration::days(self.window_days),
            kyc: self.kyc,
            levels,
            milestones,
        };
        Ok((campaign, targeting))
    }

    /// The campaign's caps and budget, or the first problem, naming its field.
    pub fn limits(&self) -> Result<Limits, DefinitionError> {
        let l = &self.limits;
        let currency = Currency::parse(&self.currency).map_err(|e| err("currency", e.reason))?;
        let budget = l.budget.as_deref().map(|b| positive("limits.budget", b, currency)).transpose()?;
        let at_least_one = |name: &str, v: Option<u32>| match v {
            Some(0) => Err(err(format!("limits.{name}"), "must be at least 1")),
            other => Ok(other),
        };
        let per_period = match (at_least_one("per_referrer_per_period", l.per_referrer_per_period)?, l.period_days) {
            (Some(n), Some(days)) if (1..=3650).contains(&days) => Some((n, Duration::days(days))),
            (Some(_), Some(_)) => return Err(err("limits.period_days", "must be between 1 and 3650")),
            (Some(_), None) => return Err(err("limits.period_days", "missing: per_referrer_per_period needs it")),
            (None, Some(_)) => return Err(err("limits.per_referrer_per_period", "missing: period_days alone limits nothing")),
            (None, None) => None,
        };
        Ok(Limits {
            budget,
            max_rewarded_referrals: at_least_one("max_rewarded_referrals", l.max_rewarded_referrals)?,
            per_referrer: at_least_one("per_referrer", l.per_referrer)?,
            per_referrer_per_period: per_period,
            pay_capped_when_raised: l.pay_capped_when_raised,
        })
    }
}

/// One recorded version of a data campaign: its definition, whether it is active, and from when
/// it is in force.
#[derive(Debug, Clone)]
pub struct Version {
    pub campaign_id: String,
    pub version: i32,
    pub active: bool,
    pub effective_from: DateTime<Utc>,
    pub priority: i32,
    pub targeting: Targeting,
}

/// The campaign and terms a referral is bound to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub campaign_id: String,
    /// 0: the embedded default campaign of the settings.
    pub version: i32,
    pub reason: String,
}

/// The version of each campaign in force at `at`: the latest whose `effective_from` is not after it.
fn in_force(versions: &[Version], at: DateTime<Utc>) -> Vec<&Version> {
    let mut latest: Vec<&Version> = Vec::new();
    for v in versions.iter().filter(|v| v.effective_from <= at) {
        match latest.iter_mut().find(|l| l.campaign_id == v.campaign_id) {
            Some(l) if l.version < v.version => *l = v,
            Some(_) => {}
            None => latest.push(v),
        }
    }
    latest
}

/// Binds a referral whose referee registered at `at` (from `country`, on `platform`) with a code
/// of campaign `code_campaign`: that campaign if it is a data campaign in force, active and
/// targeting the registration; else the active campaign in force whose targeting matches, by
/// priority (then id); else the embedded default campaign `default_id` (version 0).
pub fn bind(
    versions: &[Version],
    code_campaign: &str,
    country: Option<&str>,
    platform: &str,
    at: DateTime<Utc>,
    default_id: &str,
) -> Binding {
    let live = in_force(versions, at);
    let mut notes = Vec::new();
    if let Some(v) = live.iter().find(|v| v.campaign_id == code_campaign) {
        match (v.active, v.targeting.refusal(country, platform, at)) {
            (true, None) => {
                return Binding { campaign_id: v.campaign_id.clone(), version: v.version, reason: "the code's campaign".into() };
            }
            (false, _) => notes.push(format!("the code's campaign {code_campaign} is paused")),
            (true, Some(why)) => notes.push(format!("the code's campaign {code_campaign}: {why}")),
        }
    }
    let mut matching: Vec<&&Version> = live.iter().filter(|v| v.active && v.targeting.refusal(country, platform, at).is_none()).collect();
    matching.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.campaign_id.cmp(&b.campaign_id)));
    if let Some(v) = matching.first() {
        notes.push(format!("targeting matched (priority {})", v.priority));
        return Binding { campaign_id: v.campaign_id.clone(), version: v.version, reason: notes.join("; ") };
    }
    notes.push("no data campaign matched: the default campaign".into());
    Binding { campaign_id: default_id.to_owned(), version: 0, reason: notes.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_like() -> Definition {
        Definition {
            id: "gb-web".into(),
            name: "GB web, tiers".into(),
            priority: 10,
            currency: "GBP".into(),
            min_deposit: "20".into(),
            window_days: 30,
            targeting: TargetingDef { countries: vec!["gb".into()], platforms: vec!["web".into()], ..Default::default() },
            rewards: vec![
                RewardDef {
                    reward_type: "referrer_bonus".into(),
                    role: Role::Referrer,
                    amount: None,
                    tiers: vec![
                        TierDef { min_deposit: "20".into(), amount: "10".into() },
                        TierDef { min_deposit: "100".into(), amount: "25".into() },
                    ],
                    kind: RewardKind::Cash,
                    wagering: None,
                },
                RewardDef {
                    reward_type: "referee_bonus".into(),
                    role: Role::Referee,
                    amount: Some("5".into()),
                    tiers: vec![],
                    kind: RewardKind::Bonus,
                    wagering: Some("10".into()),
                },
            ],
            limits: LimitsDef::default(),
            kyc: Default::default(),
            levels: vec![],
            milestones: vec![],
        }
    }

    #[test]
    fn caps_and_budget_admit_until_spent_and_say_which_limit() {
        let t0 = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let mut d = toml_like();
        d.limits = LimitsDef { budget: Some("50".into()), max_rewarded_referrals: Some(3), per_referrer: Some(2), ..Default::default() };
        let limits = d.limits().unwrap();
        let mut usage = Usage::default();
        assert!(usage.admit(&limits, "ana", Decimal::new(15, 0), t0).is_ok());
        assert!(usage.admit(&limits, "ana", Decimal::new(15, 0), t0).is_ok());
        assert!(usage.admit(&limits, "ana", Decimal::new(15, 0), t0).unwrap_err().contains("referrer cap"));
        assert!(usage.admit(&limits, "bob", Decimal::new(25, 0), t0).unwrap_err().contains("50"), "budget: 30 + 25 > 50");
        assert!(usage.admit(&limits, "bob", Decimal::new(15, 0), t0).is_ok());
        assert!(usage.admit(&limits, "cid", Decimal::new(1, 0), t0).unwrap_err().contains("3 rewarded referrals"));
        let mut periodic = toml_like();
        periodic.limits = LimitsDef { per_referrer_per_period: Some(1), period_days: Some(7), ..Default::default() };
        let limits = periodic.limits().unwrap();
        let mut usage = Usage::default();
        assert!(usage.admit(&limits, "ana", Decimal::ONE, t0).is_ok());
        assert!(usage.admit(&limits, "ana", Decimal::ONE, t0 + Duration::days(3)).is_err());
        assert!(usage.admit(&limits, "ana", Decimal::ONE, t0 + Duration::days(8)).is_ok());
        let mut bad = toml_like();
        bad.limits.period_days = Some(7);
        assert_eq!(bad.validate().unwrap_err().field, "limits.per_referrer_per_period");
        bad.limits = LimitsDef { budget: Some("0".into()), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "limits.budget");
    }

    #[test]
    fn a_valid_definition_becomes_a_campaign_with_tiers() {
        let (c, t) = toml_like().validate().unwrap();
        assert_eq!(c.rewards.len(), 2);
        let gbp = |s: &str| Money::new(s.parse().unwrap(), Currency::parse("GBP").unwrap());
        assert_eq!(c.rewards[0].amount_for(Decimal::new(20, 0)), gbp("10"));
        assert_eq!(c.rewards[0].amount_for(Decimal::new(9999, 2)), gbp("10"));
        assert_eq!(c.rewards[0].amount_for(Decimal::new(100, 0)), gbp("25"));
        assert_eq!(c.rewards[1].amount_for(Decimal::new(500, 0)), gbp("5"));
        assert_eq!(t.countries, ["GB"]);
    }

    fn level(amount: &str) -> LevelDef {
        LevelDef { amount: amount.into(), kind: RewardKind::Cash, wagering: None }
    }

    fn milestone(referrals: u32) -> MilestoneDef {
        MilestoneDef { referrals, amount: "50".into(), kind: RewardKind::Bonus, wagering: Some("5".into()) }
    }

    #[test]
    fn levels_milestones_and_bonus_kinds_read_from_toml() {
        let text = r#"
            id = "spring"
            name = "Spring"
            currency = "USD"
            min_deposit = "20"
            window_days = 30
            [[rewards]]
            type = "referrer_bonus"
            role = "referrer"
            amount = "10"
            [[rewards]]
            type = "welcome_bonus"
            role = "referee"
            amount = "5"
            kind = "bonus"
            wagering = "10"
            [[levels]]
            amount = "2"
            [[levels]]
            amount = "1"
            kind = "bonus"
            [[milestones]]
            referrals = 5
            amount = "50"
        "#;
        let d: Definition = toml::from_str(text).unwrap();
        let (c, _) = d.validate().unwrap();
        assert_eq!(c.rewards[1].credit, Credit { kind: RewardKind::Bonus, wagering_multiple: Some(Decimal::new(10, 0)) });
        assert_eq!(
            c.levels.iter().map(|l| (l.level, l.reward_type(), l.credit.kind)).collect::<Vec<_>>(),
            vec![(2, "level_2".to_owned(), RewardKind::Cash), (3, "level_3".to_owned(), RewardKind::Bonus)]
        );
        assert_eq!(c.milestones[0].reward_type(), "milestone_5");
        let stored: Definition = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(stored, d, "stored as JSON and read back unchanged");
    }

    #[test]
    fn problems_name_their_field() {
        type Change = Box<dyn Fn(&mut Definition)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|d| d.id = "has space".into()), "id"),
            (Box::new(|d| d.currency = "XXQ".into()), "currency"),
            (Box::new(|d| d.min_deposit = "twenty".into()), "min_deposit"),
            (Box::new(|d| d.window_days = 0), "window_days"),
            (Box::new(|d| d.rewards.clear()), "rewards"),
            (Box::new(|d| d.rewards[0].tiers[1].amount = "-1".into()), "rewards[0].tiers[1].amount"),
            (Box::new(|d| d.rewards[0].tiers[1].min_deposit = "10".into()), "rewards[0].tiers[1].min_deposit"),
            (Box::new(|d| d.rewards[0].tiers[0].min_deposit = "15".into()), "rewards[0].tiers[0].min_deposit"),
            (Box::new(|d| d.rewards[1].reward_type = "referrer_bonus".into()), "rewards[1].type"),
            (Box::new(|d| d.rewards[1].amount = None), "rewards[1].amount"),
            (Box::new(|d| d.targeting.countries = vec!["Britain".into()]), "targeting.countries"),
            (Box::new(|d| d.targeting.platforms = vec!["tv".into()]), "targeting.platforms"),
            (Box::new(|d| d.rewards[0].wagering = Some("10".into())), "rewards[0].wagering"),
            (Box::new(|d| d.rewards[1].wagering = Some("-1".into())), "rewards[1].wagering"),
            (Box::new(|d| d.levels = vec![level("0")]), "levels[0].amount"),
            (Box::new(|d| d.levels = vec![level("1"); MAX_LEVELS + 1]), "levels"),
            (Box::new(|d| d.milestones = vec![milestone(5), milestone(3)]), "milestones[1].referrals"),
            (Box::new(|d| d.milestones = vec![milestone(0)]), "milestones[0].referrals"),
            (Box::new(|d| d.rewards[1].reward_type = "level_2".into()), "rewards[1].type"),
        ];
        for (change, field) in cases {
            let mut d = toml_like();
            change(&mut d);
            let e = d.validate().expect_err(field);
            assert_eq!(e.field, field, "{e:?}");
        }
    }

    fn version(id: &str, version: i32, active: bool, from_day: i64, priority: i32, targeting: Targeting) -> Version {
        let t0 = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        Version { campaign_id: id.into(), version, active, effective_from: t0 + Duration::days(from_day), priority, targeting }
    }

    #[test]
    fn binding_uses_the_version_in_force_at_registration_and_targeting_by_priority() {
        let t0 = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let gb = Targeting { countries: vec!["GB".into()], ..Default::default() };
        let ios = Targeting { platforms: vec!["ios".into()], ..Default::default() };
        let versions = vec![
            version("gb", 1, true, 0, 1, gb.clone()),
            version("gb", 2, true, 10, 1, gb.clone()),
            version("gb", 3, false, 20, 1, gb),
            version("ios", 1, true, 0, 5, ios),
        ];
        let b = |country: &str, platform: &str, day: i64| {
            bind(&versions, "default", Some(country), platform, t0 + Duration::days(day), "default")
        };
        assert_eq!((b("GB", "web", 5).campaign_id.as_str(), b("GB", "web", 5).version), ("gb", 1));
        assert_eq!(b("GB", "web", 15).version, 2, "the version in force at registration");
        assert_eq!(b("GB", "web", 25).campaign_id, "default", "paused from day 20");
        assert_eq!(b("GB", "ios", 5).campaign_id, "ios", "priority 5 beats 1");
        assert_eq!(b("US", "web", 5).campaign_id, "default");
        assert_eq!(b("GB", "web", -1).campaign_id, "default", "before the campaign existed");
        // A code of a data campaign wins when it targets the registration.
        let code = bind(&versions, "gb", Some("GB"), "ios", t0 + Duration::days(5), "default");
        assert_eq!((code.campaign_id.as_str(), code.reason.as_str()), ("gb", "the code's campaign"));
        let outside = bind(&versions, "gb", Some("FR"), "ios", t0 + Duration::days(5), "default");
        assert_eq!(outside.campaign_id, "ios");
        assert!(outside.reason.contains("country FR is not targeted"), "{}", outside.reason);
    }

    #[test]
    fn targeting_refuses_with_a_reason() {
        let t = Targeting { exclude_countries: vec!["US".into()], platforms: vec!["web".into()], ..Default::default() };
        let at = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        assert_eq!(t.refusal(Some("us"), "web", at).as_deref(), Some("country US is excluded"));
        assert_eq!(t.refusal(Some("GB"), "ios", at).as_deref(), Some("platform ios is not targeted"));
        assert_eq!(t.refusal(None, "web", at), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn limits() -> impl Strategy<Value = Limits> {
            (
                proptest::option::of(1u32..6),
                proptest::option::of(1i64..80),
                proptest::option::of(1u32..4),
                proptest::option::of((1u32..3, 1i64..5)),
            )
                .prop_map(|(max, budget, per, period)| Limits {
                    budget: budget.map(|b| Money::new(Decimal::new(b, 0), Currency::USD)),
                    max_rewarded_referrals: max,
                    per_referrer: per,
                    per_referrer_per_period: period.map(|(n, days)| (n, Duration::days(days))),
                    pay_capped_when_raised: false,
                })
        }

        proptest! {
            /// Whatever the payouts and their order, what the limits admit never exceeds them.
            #[test]
            fn admitted_payouts_never_exceed_caps_or_budget(
                limits in limits(),
                payouts in proptest::collection::vec((0usize..4, 1i64..30, 0i64..20), 0..40),
            ) {
                let t0 = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
                let mut usage = Usage::default();
                let mut admitted: Vec<(usize, Decimal, DateTime<Utc>)> = Vec::new();
                for (referrer, amount, day) in payouts {
                    let (amount, at) = (Decimal::new(amount, 0), t0 + Duration::days(day));
                    if usage.admit(&limits, &format!("r{referrer}"), amount, at).is_ok() {
                        admitted.push((referrer, amount, at));
                    }
                }
                if let Some(max) = limits.max_rewarded_referrals {
                    prop_assert!(admitted.len() <= max as usize);
                }
                if let Some(budget) = limits.budget {
                    prop_assert!(admitted.iter().map(|a| a.1).sum::<Decimal>() <= budget.amount);
                }
                for r in 0..4 {
                    let mine: Vec<DateTime<Utc>> = admitted.iter().filter(|a| a.0 == r).map(|a| a.2).collect();
                    if let Some(per) = limits.per_referrer {
                        prop_assert!(mine.len() <= per as usize);
                    }
                    if let Some((n, period)) = limits.per_referrer_per_period {
                        for t in &mine {
                            let close = mine.iter().filter(|o| **o > *t - period && **o <= *t).count();
                            prop_assert!(close <= n as usize, "{close} within a period ending {t}");
                        }
                    }
                }
            }

            /// Binding depends on the versions recorded and the registration only: the order the
            /// versions are read in changes nothing.
            #[test]
            fn binding_does_not_depend_on_the_order_versions_are_read(
                specs in proptest::collection::vec((0usize..3, 1i32..4, any::<bool>(), 0i64..10, 0i32..3, any::<bool>()), 0..12),
                day in -2i64..12,
                ios in any::<bool>(),
                seed in any::<u64>(),
            ) {
                let t0 = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
                let mut versions: Vec<Version> = specs
                    .iter()
                    .map(|(id, v, active, from, priority, gb)| Version {
                        campaign_id: format!("c{id}"),
                        version: *v,
                        active: *active,
                        effective_from: t0 + Duration::days(*from),
                        priority: *priority,
                        targeting: Targeting { countries: if *gb { vec!["GB".into()] } else { vec![] }, ..Default::default() },
                    })
                    .collect();
                // One row per (campaign, version), as the table's key guarantees.
                versions.sort_by(|a, b| (&a.campaign_id, a.version).cmp(&(&b.campaign_id, b.version)));
                versions.dedup_by(|a, b| a.campaign_id == b.campaign_id && a.version == b.version);
                let platform = if ios { "ios" } else { "web" };
                let at = t0 + Duration::days(day);
                let expected = bind(&versions, "c1", Some("GB"), platform, at, "default");
                let mut shuffled = versions.clone();
                let mut state = seed;
                for i in (1..shuffled.len()).rev() {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    shuffled.swap(i, (state >> 33) as usize % (i + 1));
                }
                prop_assert_eq!(bind(&shuffled, "c1", Some("GB"), platform, at, "default"), expected);
            }
        }
    }
}
