//! Identifiers. User ids are validated newtypes; every id refstream derives (referrals, rewards,
//! ledger transactions, outgoing event ids) is a UUIDv5 of its natural key, so a replay of the
//! same input derives the same id and downstream consumers can drop relay duplicates.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validate::{check_text, FieldError};

/// Longest user id accepted; longer ids are rejected as invalid input.
pub const MAX_USER_ID_LEN: usize = 128;

/// A user id as the platform issues it: non-empty, at most 128 characters, no control
/// characters. Opaque otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Validates `raw` as a user id.
    pub fn parse(raw: impl Into<String>) -> Result<Self, FieldError> {
        let raw = raw.into();
        check_text("user_id", &raw, MAX_USER_ID_LEN)?;
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> Self {
        value.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The namespace of every id refstream derives. Changing it would change every derived id:
/// never do.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_2b0c_6a51_4c0e_9a3e_52f4_1d7a_c001);

/// Deterministic ids derived from natural keys.
pub struct DerivedId;

impl DerivedId {
    /// A referral is identified by its referee: a user is referred at most once.
    pub fn referral(referee: &UserId) -> Uuid {
        Uuid::new_v5(&NAMESPACE, format!("referral:{referee}").as_bytes())
    }

    /// A reward is identified by its referral and its type, the pair that is unique in `rewards`.
    pub fn reward(referral_id: Uuid, reward_type: &str) -> Uuid {
        Uuid::new_v5(&NAMESPACE, format!("reward:{referral_id}:{reward_type}").as_bytes())
    }

    /// The event id of a derived record: one per (kind, subject), so a resend carries the same id.
    pub fn event(kind: &str, subject: Uuid) -> Uuid {
        Uuid::new_v5(&NAMESPACE, format!("event:{kind}:{subject}").as_bytes())
    }

    /// The ledger transaction that books `what` (for example "grant" or "reverse") of a reward.
    pub fn ledger_transaction(what: &str, reward_id: Uuid) -> Uuid {
        Uuid::new_v5(&NAMESPACE, format!("ledger:{what}:{reward_id}").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rejects_empty_control_and_long() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("   ").is_err());
        assert!(UserId::parse("a\u{0}b").is_err());
        assert!(UserId::parse("x".repeat(MAX_USER_ID_LEN + 1)).is_err());
        assert_eq!(UserId::parse("u-1").unwrap().as_str(), "u-1");
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = UserId::parse("alice").unwrap();
        let b = UserId::parse("bob").unwrap();
        assert_eq!(DerivedId::referral(&a), DerivedId::referral(&a));
        assert_ne!(DerivedId::referral(&a), DerivedId::referral(&b));
        let r = DerivedId::referral(&a);
        assert_ne!(DerivedId::reward(r, "referrer_bonus"), DerivedId::reward(r, "referee_bonus"));
        assert_ne!(DerivedId::event("granted", r), DerivedId::event("reversed", r));
    }
}
