//! The events of the contract (DESIGN §2) as validated domain values. A value of these types
//! has passed every field check; the codec builds them and turns any failure into a dead
//! letter that names the field.

use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::campaign::Role;
use crate::ids::UserId;
use crate::lifecycle::Decision;
use crate::money::Money;
use crate::validate::{check_text, optional_text, FieldError};

/// How far in the future an event's time may be before it is rejected as bad input.
pub const MAX_CLOCK_SKEW: Duration = Duration::hours(24);
/// Longest deposit id, code, platform or other short identifier.
pub const MAX_SHORT_TEXT: usize = 128;
/// Longest email address (RFC 5321 path limit).
pub const MAX_EMAIL: usize = 254;

/// Checks an event time: not beyond `now` plus the allowed clock skew.
pub fn check_occurred_at(field: &'static str, at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), FieldError> {
    if at > now + MAX_CLOCK_SKEW {
        return Err(FieldError::new(field, format!("{at} is more than 24 hours in the future")));
    }
    Ok(())
}

/// A new account, with whatever the signup service knew about where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRegistered {
    pub event_id: Uuid,
    pub user_id: UserId,
    pub occurred_at: DateTime<Utc>,
    pub referral_code: Option<String>,
    pub click_id: Option<String>,
    pub platform: String,
    pub device_id: Option<String>,
    /// `None` when absent or not an IP address (an unreadable IP is a missing signal, not a
    /// reason to lose the registration).
    pub ip: Option<IpAddr>,
    pub email: Option<String>,
    pub country: Option<String>,
}

/// The raw fields of a UserRegistered as decoded from the wire.
#[derive(Debug, Clone, Default)]
pub struct RawUserRegistered {
    pub event_id: Uuid,
    pub user_id: String,
    pub occurred_at: DateTime<Utc>,
    pub referral_code: Option<String>,
    pub click_id: Option<String>,
    pub platform: String,
    pub device_id: Option<String>,
    pub ip: Option<String>,
    pub email: Option<String>,
    pub country: Option<String>,
}

impl UserRegistered {
    pub fn validate(raw: RawUserRegistered, now: DateTime<Utc>) -> Result<Self, FieldError> {
        check_occurred_at("occurred_at", raw.occurred_at, now)?;
        check_text("platform", &raw.platform, MAX_SHORT_TEXT)?;
        let ip = optional_text("ip", raw.ip, MAX_SHORT_TEXT)?.and_then(|s| s.trim().parse().ok());
        Ok(Self {
            event_id: raw.event_id,
            user_id: UserId::parse(raw.user_id)?,
            occurred_at: raw.occurred_at,
            referral_code: optional_text("referral_code", raw.referral_code, MAX_SHORT_TEXT)?,
            click_id: optional_text("click_id", raw.click_id, MAX_SHORT_TEXT)?,
            platform: raw.platform,
            device_id: optional_text("device_id", raw.device_id, MAX_SHORT_TEXT)?,
            ip,
            email: optional_text("email", raw.email, MAX_EMAIL)?,
            country: optional_text("country", raw.country, MAX_SHORT_TEXT)?,
        })
    }
}

/// Money reached a user's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositCompleted {
    pub event_id: Uuid,
    pub deposit_id: String,
    pub user_id: UserId,
    pub amount: Money,
    pub payment_fingerprint: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

impl DepositCompleted {
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), FieldError> {
        check_text("deposit_id", &self.deposit_id, MAX_SHORT_TEXT)?;
        Money::positive("amount", self.amount.amount, self.amount.currency)?;
        if let Some(fp) = &self.payment_fingerprint {
            check_text("payment_fingerprint", fp, MAX_SHORT_TEXT)?;
        }
        check_occurred_at("occurred_at", self.occurred_at, now)
    }
}

/// Why a deposit was reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalReason {
    Refund,
    Chargeback,
}

impl ReversalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refund => "REFUND",
            Self::Chargeback => "CHARGEBACK",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        match s {
            "REFUND" => Ok(Self::Refund),
            "CHARGEBACK" => Ok(Self::Chargeback),
            other => Err(FieldError::new("reason", format!("`{other}` is neither REFUND nor CHARGEBACK"))),
        }
    }
}

/// A completed deposit was refunded or charged back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositReversed {
    pub event_id: Uuid,
    pub deposit_id: String,
    pub user_id: UserId,
    pub reason: ReversalReason,
    pub occurred_at: DateTime<Utc>,
}

impl DepositReversed {
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), FieldError> {
        check_text("deposit_id", &self.deposit_id, MAX_SHORT_TEXT)?;
        check_occurred_at("occurred_at", self.occurred_at, now)
    }
}

/// How a referee was tied to the referrer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributionSource {
    Code,
    Click,
}

impl AttributionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Code => "CODE",
            Self::Click => "CLICK",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        match s {
            "CODE" => Ok(Self::Code),
            "CLICK" => Ok(Self::Click),
            other => Err(FieldError::new("attribution", format!("unknown source `{other}`"))),
        }
    }
}

/// A referee was attributed to a referrer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralAttributed {
    pub event_id: Uuid,
    pub referral_id: Uuid,
    pub referrer_id: UserId,
    pub referee_id: UserId,
    pub referral_code: String,
    pub campaign_id: String,
    pub attribution: AttributionSource,
    pub referee_registered_at: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
}

/// The fraud scorer's decision on a referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralScored {
    pub event_id: Uuid,
    pub referral_id: Uuid,
    pub referrer_id: UserId,
    pub referee_id: UserId,
    pub score: u8,
    pub decision: Decision,
    pub reasons: Vec<String>,
    pub rule_version: String,
    pub occurred_at: DateTime<Utc>,
}

/// A reward was credited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardGranted {
    pub event_id: Uuid,
    pub reward_id: Uuid,
    pub referral_id: Uuid,
    pub user_id: UserId,
    pub role: Role,
    pub reward_type: String,
    pub amount: Money,
    pub campaign_id: String,
    pub qualifying_deposit_id: String,
    pub granted_at: DateTime<Utc>,
    /// 1: the referral's own referrer or referee; 2: the referrer's referrer; ...
    pub level: u8,
    /// A milestone reward: the referrer's N-th rewarded referral in the campaign.
    pub milestone: Option<u32>,
    /// Cash (withdrawable) or bonus (promotional credit).
    pub kind: crate::campaign::RewardKind,
    /// Bonus: how much must be wagered before it can be withdrawn.
    pub wagering_requirement: Option<rust_decimal::Decimal>,
}

/// A reward was taken back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardReversed {
    pub event_id: Uuid,
    pub reward_id: Uuid,
    pub referral_id: Uuid,
    pub user_id: UserId,
    pub amount: Money,
    /// REFUND or CHARGEBACK of the qualifying deposit, or FRAUD found after payment.
    pub reason: String,
    pub deposit_id: String,
    pub reversed_at: DateTime<Utc>,
    /// For FRAUD: the event id of the `ReferralScored` (assessment revision) that caused it.
    pub assessment_event_id: Option<Uuid>,
}

/// A referral link was opened, by a browser (`/r/{code}`) or reported by an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralClicked {
    pub event_id: Uuid,
    pub click_id: String,
    pub code: String,
    pub referrer_id: UserId,
    pub campaign_id: String,
    pub platform: crate::links::Platform,
    /// `true` when an app or SDK reported the click (`POST /v1/clicks`).
    pub from_sdk: bool,
    pub expired: bool,
    pub occurred_at: DateTime<Utc>,
}

/// The KYC service's verdict on a user's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserVerified {
    pub event_id: Uuid,
    pub user_id: UserId,
    /// VERIFIED (true) or REJECTED (false).
    pub verified: bool,
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// A reviewer's verdict on a held referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewDecided {
    pub event_id: Uuid,
    pub referral_id: Uuid,
    pub referee_id: UserId,
    pub approve: bool,
    pub reviewer: String,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawUserRegistered {
        RawUserRegistered {
            event_id: Uuid::new_v4(),
            user_id: "u1".into(),
            occurred_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            platform: "ios".into(),
            ip: Some("10.0.0.1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn registration_validation() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let ok = UserRegistered::validate(raw(), now).unwrap();
        assert_eq!(ok.ip, Some("10.0.0.1".parse().unwrap()));

        let mut future = raw();
        future.occurred_at = now + Duration::days(2);
        assert_eq!(UserRegistered::validate(future, now).unwrap_err().field, "occurred_at");

        let mut empty = raw();
        empty.user_id = "".into();
        assert_eq!(UserRegistered::validate(empty, now).unwrap_err().field, "user_id");

        let mut junk_ip = raw();
        junk_ip.ip = Some("not-an-ip".into());
        assert_eq!(UserRegistered::validate(junk_ip, now).unwrap().ip, None);

        let mut blank_code = raw();
        blank_code.referral_code = Some("  ".into());
        assert_eq!(UserRegistered::validate(blank_code, now).unwrap().referral_code, None);
    }

    proptest::proptest! {
        /// The validator never panics, and whatever it accepts satisfies the contract.
        #[test]
        fn validation_is_total_and_sound(
            user in "\\PC{0,200}|[\\x00-\\x1f]{0,4}",
            platform in "\\PC{0,20}",
            code in proptest::option::of("\\PC{0,200}"),
            ip in proptest::option::of("\\PC{0,40}"),
            skew_hours in -1000_i64..1000,
        ) {
            let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
            let raw = RawUserRegistered {
                event_id: Uuid::nil(),
                user_id: user,
                occurred_at: now + Duration::hours(skew_hours),
                referral_code: code,
                platform,
                ip,
                ..Default::default()
            };
            if let Ok(ok) = UserRegistered::validate(raw, now) {
                proptest::prop_assert!(!ok.user_id.as_str().trim().is_empty());
                proptest::prop_assert!(!ok.user_id.as_str().chars().any(char::is_control));
                proptest::prop_assert!(ok.occurred_at <= now + MAX_CLOCK_SKEW);
                proptest::prop_assert!(ok.referral_code.as_ref().is_none_or(|c| c.chars().count() <= MAX_SHORT_TEXT));
            }
        }
    }
}
