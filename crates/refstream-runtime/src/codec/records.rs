//! The mapping between each contract record and its domain type. Decoding validates every
//! field through the domain constructors; encoding writes exactly the schema's fields.

use apache_avro::types::Value;
use chrono::{DateTime, Utc};
use refstream_core::campaign::RewardKind;
use refstream_core::campaign::Role;
use refstream_core::events::{
    AttributionSource, DepositCompleted, DepositReversed, RawUserRegistered, ReferralAttributed, ReferralClicked, ReferralScored,
    ReversalReason, ReviewDecided, RewardGranted, RewardReversed, UserRegistered, UserVerified, MAX_SHORT_TEXT,
};
use refstream_core::validate::{check_text, FieldError};
use refstream_core::{Currency, Money, UserId};
use uuid::Uuid;

use super::fields::{decimal_value, Fields};
use super::EventKind;

/// A record of the contract.
pub trait AvroRecord: Sized {
    const KIND: EventKind;
    /// The event id every record carries (dedupe key of consumers).
    fn event_id(&self) -> Uuid;
    fn to_value(&self) -> Value;
    fn from_value(value: Value, now: DateTime<Utc>) -> Result<Self, FieldError>;
}

fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn opt(v: Option<&str>) -> Value {
    match v {
        Some(v) => Value::Union(1, Box::new(s(v))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn ts(at: DateTime<Utc>) -> Value {
    Value::TimestampMillis(at.timestamp_millis())
}

fn enm(symbols: &[&str], symbol: &str) -> Value {
    let pos = symbols.iter().position(|x| *x == symbol).unwrap_or_default();
    Value::Enum(u32::try_from(pos).unwrap_or_default(), symbol.to_owned())
}

fn currency(f: &mut Fields) -> Result<Currency, FieldError> {
    Currency::parse(&f.string("currency")?)
}

impl AvroRecord for UserRegistered {
    const KIND: EventKind = EventKind::UserRegistered;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        let ip = self.ip.map(|ip| ip.to_string());
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("user_id", s(self.user_id.as_str())),
            ("occurred_at", ts(self.occurred_at)),
            ("referral_code", opt(self.referral_code.as_deref())),
            ("click_id", opt(self.click_id.as_deref())),
            ("platform", s(&self.platform)),
            ("device_id", opt(self.device_id.as_deref())),
            ("ip", opt(ip.as_deref())),
            ("email", opt(self.email.as_deref())),
            ("country", opt(self.country.as_deref())),
        ])
    }
    fn from_value(value: Value, now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        let raw = RawUserRegistered {
            event_id: f.uuid("event_id")?,
            user_id: f.string("user_id")?,
            occurred_at: f.timestamp("occurred_at")?,
            referral_code: f.opt_string("referral_code")?,
            click_id: f.opt_string("click_id")?,
            platform: f.string("platform")?,
            device_id: f.opt_string("device_id")?,
            ip: f.opt_string("ip")?,
            email: f.opt_string("email")?,
            country: f.opt_string("country")?,
        };
        UserRegistered::validate(raw, now)
    }
}

impl AvroRecord for DepositCompleted {
    const KIND: EventKind = EventKind::DepositCompleted;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("deposit_id", s(&self.deposit_id)),
            ("user_id", s(self.user_id.as_str())),
            ("amount", decimal_value(self.amount.amount)),
            ("currency", s(self.amount.currency.as_str())),
            ("payment_fingerprint", opt(self.payment_fingerprint.as_deref())),
            ("occurred_at", ts(self.occurred_at)),
        ])
    }
    fn from_value(value: Value, now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        let event_id = f.uuid("event_id")?;
        let deposit_id = f.string("deposit_id")?;
        let user_id = UserId::parse(f.string("user_id")?)?;
        let amount = f.decimal("amount")?;
        let currency = currency(&mut f)?;
        let deposit = DepositCompleted {
            event_id,
            deposit_id,
            user_id,
            amount: Money::positive("amount", amount, currency)?,
            payment_fingerprint: f.opt_string("payment_fingerprint")?,
            occurred_at: f.timestamp("occurred_at")?,
        };
        deposit.check(now)?;
        Ok(deposit)
    }
}

impl AvroRecord for DepositReversed {
    const KIND: EventKind = EventKind::DepositReversed;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("deposit_id", s(&self.deposit_id)),
            ("user_id", s(self.user_id.as_str())),
            ("reason", enm(&["REFUND", "CHARGEBACK"], self.reason.as_str())),
            ("occurred_at", ts(self.occurred_at)),
        ])
    }
    fn from_value(value: Value, now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        let reversal = DepositReversed {
            event_id: f.uuid("event_id")?,
            deposit_id: f.string("deposit_id")?,
            user_id: UserId::parse(f.string("user_id")?)?,
            reason: ReversalReason::parse(&f.enum_symbol("reason")?)?,
            occurred_at: f.timestamp("occurred_at")?,
        };
        reversal.check(now)?;
        Ok(reversal)
    }
}

impl AvroRecord for ReferralAttributed {
    const KIND: EventKind = EventKind::ReferralAttributed;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("referral_id", Value::Uuid(self.referral_id)),
            ("referrer_id", s(self.referrer_id.as_str())),
            ("referee_id", s(self.referee_id.as_str())),
            ("referral_code", s(&self.referral_code)),
            ("campaign_id", s(&self.campaign_id)),
            ("attribution", enm(&["CODE", "CLICK"], self.attribution.as_str())),
            ("referee_registered_at", ts(self.referee_registered_at)),
            ("occurred_at", ts(self.occurred_at)),
        ])
    }
    fn from_value(value: Value, _now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        Ok(ReferralAttributed {
            event_id: f.uuid("event_id")?,
            referral_id: f.uuid("referral_id")?,
            referrer_id: UserId::parse(f.string("referrer_id")?)?,
            referee_id: UserId::parse(f.string("referee_id")?)?,
            referral_code: f.string("referral_code")?,
            campaign_id: f.string("campaign_id")?,
            attribution: AttributionSource::parse(&f.enum_symbol("attribution")?)?,
            referee_registered_at: f.timestamp("referee_registered_at")?,
            occurred_at: f.timestamp("occurred_at")?,
        })
    }
}

impl AvroRecord for ReferralScored {
    const KIND: EventKind = EventKind::ReferralScored;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("referral_id", Value::Uuid(self.referral_id)),
            ("referrer_id", s(self.referrer_id.as_str())),
            ("referee_id", s(self.referee_id.as_str())),
            ("score", Value::Int(i32::from(self.score))),
            ("decision", enm(&["APPROVE", "REVIEW", "REJECT"], self.decision.as_str())),
            ("reasons", Value::Array(self.reasons.iter().map(|r| s(r)).collect())),
            ("rule_version", s(&self.rule_version)),
            ("occurred_at", ts(self.occurred_at)),
        ])
    }
    fn from_value(value: Value, _now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        let event_id = f.uuid("event_id")?;
        let referral_id = f.uuid("referral_id")?;
        let referrer_id = UserId::parse(f.string("referrer_id")?)?;
        let referee_id = UserId::parse(f.string("referee_id")?)?;
        let score = f.int("score")?;
        let score = u8::try_from(score)
            .ok()
            .filter(|s| *s <= 100)
            .ok_or_else(|| FieldError::new("score", format!("{score} is outside 0..=100")))?;
        Ok(ReferralScored {
            event_id,
            referral_id,
            referrer_id,
            referee_id,
            score,
            decision: f.enum_symbol("decision")?.parse().map_err(|e: String| FieldError::new("decision", e))?,
            reasons: f.strings("reasons")?,
            rule_version: f.string("rule_version")?,
            occurred_at: f.timestamp("occurred_at")?,
        })
    }
}

impl AvroRecord for RewardGranted {
    const KIND: EventKind = EventKind::RewardGranted;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("reward_id", Value::Uuid(self.reward_id)),
            ("referral_id", Value::Uuid(self.referral_id)),
            ("user_id", s(self.user_id.as_str())),
            ("role", enm(&["REFERRER", "REFEREE"], self.role.as_str())),
            ("reward_type", s(&self.reward_type)),
            ("amount", decimal_value(self.amount.amount)),
            ("currency", s(self.amount.currency.as_str())),
            ("campaign_id", s(&self.campaign_id)),
            ("qualifying_deposit_id", s(&self.qualifying_deposit_id)),
            ("granted_at", ts(self.granted_at)),
            ("level", Value::Int(i32::from(self.level))),
            (
                "milestone",
                match self.milestone {
                    Some(n) => Value::Union(1, Box::new(Value::Int(i32::try_from(n).unwrap_or(i32::MAX)))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
            ("kind", enm(&["CASH", "BONUS"], self.kind.as_str())),
            (
                "wagering_requirement",
                match self.wagering_requirement {
                    Some(w) => Value::Union(1, Box::new(decimal_value(w))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
        ])
    }
    fn from_value(value: Value, _now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        let event_id = f.uuid("event_id")?;
        let reward_id = f.uuid("reward_id")?;
        let referral_id = f.uuid("referral_id")?;
        let user_id = UserId::parse(f.string("user_id")?)?;
        let role = match f.enum_symbol("role")?.as_str() {
            "REFERRER" => Role::Referrer,
            "REFEREE" => Role::Referee,
            other => return Err(FieldError::new("role", format!("unknown role `{other}`"))),
        };
        let reward_type = f.string("reward_type")?;
        let amount = f.decimal("amount")?;
        let currency = currency(&mut f)?;
        Ok(RewardGranted {
            event_id,
            reward_id,
            referral_id,
            user_id,
            role,
            reward_type,
            amount: Money::new(amount, currency),
            campaign_id: f.string("campaign_id")?,
            qualifying_deposit_id: f.string("qualifying_deposit_id")?,
            granted_at: f.timestamp("granted_at")?,
            level: u8::try_from(f.int("level")?).map_err(|_| FieldError::new("level", "must be 1 to 255"))?,
            milestone: match f.opt_int("milestone")? {
                Some(n) => Some(u32::try_from(n).map_err(|_| FieldError::new("milestone", "must not be negative"))?),
                None => None,
            },
            kind: {
                let symbol = f.enum_symbol("kind")?;
                RewardKind::parse(&symbol).ok_or_else(|| FieldError::new("kind", format!("unknown kind `{symbol}`")))?
            },
            wagering_requirement: f.opt_decimal("wagering_requirement")?,
        })
    }
}

impl AvroRecord for RewardReversed {
    const KIND: EventKind = EventKind::RewardReversed;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("reward_id", Value::Uuid(self.reward_id)),
            ("referral_id", Value::Uuid(self.referral_id)),
            ("user_id", s(self.user_id.as_str())),
            ("amount", decimal_value(self.amount.amount)),
            ("currency", s(self.amount.currency.as_str())),
            ("reason", s(&self.reason)),
            ("deposit_id", s(&self.deposit_id)),
            ("reversed_at", ts(self.reversed_at)),
            ("assessment_event_id", opt(self.assessment_event_id.map(|u| u.to_string()).as_deref())),
        ])
    }
    fn from_value(value: Value, _now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        let event_id = f.uuid("event_id")?;
        let reward_id = f.uuid("reward_id")?;
        let referral_id = f.uuid("referral_id")?;
        let user_id = UserId::parse(f.string("user_id")?)?;
        let amount = f.decimal("amount")?;
        let currency = currency(&mut f)?;
        Ok(RewardReversed {
            event_id,
            reward_id,
            referral_id,
            user_id,
            amount: Money::new(amount, currency),
            reason: f.string("reason")?,
            deposit_id: f.string("deposit_id")?,
            reversed_at: f.timestamp("reversed_at")?,
            assessment_event_id: match f.opt_string("assessment_event_id")? {
                Some(id) => Some(Uuid::parse_str(&id).map_err(|e| FieldError::new("assessment_event_id", format!("is not a UUID: {e}")))?),
                None => None,
            },
        })
    }
}

impl AvroRecord for ReviewDecided {
    const KIND: EventKind = EventKind::ReviewDecided;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("referral_id", Value::Uuid(self.referral_id)),
            ("referee_id", s(self.referee_id.as_str())),
            ("decision", enm(&["APPROVE", "REJECT"], if self.approve { "APPROVE" } else { "REJECT" })),
            ("reviewer", s(&self.reviewer)),
            ("reason", s(&self.reason)),
            ("occurred_at", ts(self.occurred_at)),
        ])
    }
    fn from_value(value: Value, _now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        let event_id = f.uuid("event_id")?;
        let referral_id = f.uuid("referral_id")?;
        let referee_id = UserId::parse(f.string("referee_id")?)?;
        let approve = f.enum_symbol("decision")? == "APPROVE";
        let reviewer = f.string("reviewer")?;
        check_text("reviewer", &reviewer, MAX_SHORT_TEXT)?;
        Ok(ReviewDecided {
            event_id,
            referral_id,
            referee_id,
            approve,
            reviewer,
            reason: f.string("reason")?,
            occurred_at: f.timestamp("occurred_at")?,
        })
    }
}

impl AvroRecord for UserVerified {
    const KIND: EventKind = EventKind::UserVerified;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("user_id", s(self.user_id.as_str())),
            ("status", enm(&["VERIFIED", "REJECTED"], if self.verified { "VERIFIED" } else { "REJECTED" })),
            ("reason", opt(self.reason.as_deref())),
            ("occurred_at", ts(self.occurred_at)),
        ])
    }
    fn from_value(value: Value, _now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        let event_id = f.uuid("event_id")?;
        let user_id = UserId::parse(f.string("user_id")?)?;
        let verified = f.enum_symbol("status")? == "VERIFIED";
        let reason = f.opt_string("reason")?;
        if let Some(r) = &reason {
            check_text("reason", r, MAX_SHORT_TEXT)?;
        }
        Ok(UserVerified { event_id, user_id, verified, reason, occurred_at: f.timestamp("occurred_at")? })
    }
}

const PLATFORMS: [&str; 4] = ["IOS", "ANDROID", "DESKTOP", "WEB"];

impl AvroRecord for ReferralClicked {
    const KIND: EventKind = EventKind::ReferralClicked;
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", Value::Uuid(self.event_id)),
            ("click_id", s(&self.click_id)),
            ("code", s(&self.code)),
            ("referrer_id", s(self.referrer_id.as_str())),
            ("campaign_id", s(&self.campaign_id)),
            ("platform", enm(&PLATFORMS, &self.platform.as_str().to_uppercase())),
            ("source", enm(&["LINK", "SDK"], if self.from_sdk { "SDK" } else { "LINK" })),
            ("expired", Value::Boolean(self.expired)),
            ("occurred_at", ts(self.occurred_at)),
        ])
    }
    fn from_value(value: Value, now: DateTime<Utc>) -> Result<Self, FieldError> {
        let mut f = Fields::of(value)?;
        let event_id = f.uuid("event_id")?;
        let click_id = f.string("click_id")?;
        check_text("click_id", &click_id, MAX_SHORT_TEXT)?;
        let code = f.string("code")?;
        check_text("code", &code, MAX_SHORT_TEXT)?;
        let referrer_id = UserId::parse(f.string("referrer_id")?)?;
        let campaign_id = f.string("campaign_id")?;
        let symbol = f.enum_symbol("platform")?;
        let platform = refstream_core::links::Platform::parse(&symbol)
            .ok_or_else(|| FieldError::new("platform", format!("unknown platform `{symbol}`")))?;
        let from_sdk = f.enum_symbol("source")? == "SDK";
        let expired = f.boolean("expired")?;
        let occurred_at = f.timestamp("occurred_at")?;
        refstream_core::events::check_occurred_at("occurred_at", occurred_at, now)?;
        Ok(ReferralClicked { event_id, click_id, code, referrer_id, campaign_id, platform, from_sdk, expired, occurred_at })
    }
}
