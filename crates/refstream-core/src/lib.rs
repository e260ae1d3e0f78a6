//! refstream's pure domain: identifiers, money, referral codes, the referral lifecycle,
//! campaigns and fraud rules. Nothing here performs I/O, so every rule is unit-testable and
//! deterministic: the same inputs always give the same decision.

pub mod attribution;
pub mod campaign;
pub mod campaigns;
pub mod code;
pub mod events;
pub mod fraud;
pub mod fx;
pub mod ids;
pub mod lifecycle;
pub mod links;
pub mod money;
pub mod rewards;
pub mod settlement;
pub mod validate;

pub use campaign::{Campaign, Qualification};
pub use ids::{DerivedId, UserId};
pub use lifecycle::ReferralStatus;
pub use money::{Currency, Money};
