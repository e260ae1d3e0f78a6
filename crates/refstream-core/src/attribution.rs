//! Attribution decisions: which code a registration claims, and whether that code's owner
//! referred it or why nobody did. Pure functions of what the attribution worker loaded for
//! its batch, so a registration is decided the same way whatever batch it lands in.

use chrono::{DateTime, Utc};

use crate::code;
use crate::events::AttributionSource;

/// Why a registration produced no referral (metrics and logs name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReferral {
    /// No code and no click: an organic signup.
    NoCode,
    /// A code that is malformed or belongs to nobody, or a click id refstream never issued.
    UnknownCode,
    /// The user's own code.
    OwnCode,
    /// The code had expired when the user registered.
    Expired,
    /// The user already has a referral.
    AlreadyReferred,
    /// The user was registered before (another event for the same user id).
    AlreadyRegistered,
}

impl NoReferral {
    pub fn label(self) -> &'static str {
        match self {
            Self::NoCode => "organic",
            Self::UnknownCode => "unknown_code",
            Self::OwnCode => "own_code",
            Self::Expired => "expired_code",
            Self::AlreadyReferred => "already_referred",
            Self::AlreadyRegistered => "duplicate_registration",
        }
    }
}

/// The code a registration claims and how it came by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub code: String,
    pub source: AttributionSource,
}

/// What a registration claims: its typed code when that reads as a code, else the code of the
/// link its click id was issued for (`click_code` resolves click ids).
pub fn claim(
    referral_code: Option<&str>,
    click_id: Option<&str>,
    click_code: impl Fn(&str) -> Option<String>,
) -> Result<Claim, NoReferral> {
    if let Some(code) = referral_code.and_then(code::normalize) {
        return Ok(Claim { code, source: AttributionSource::Code });
    }
    match click_id {
        Some(click) => click_code(click).map(|code| Claim { code, source: AttributionSource::Click }).ok_or(NoReferral::UnknownCode),
        None if referral_code.is_some() => Err(NoReferral::UnknownCode),
        None => Err(NoReferral::NoCode),
    }
}

/// A code's owner as stored: who owns it, the campaign it belongs to, when it stops attributing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeOwner {
    pub user_id: String,
    pub campaign_id: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Whether the owner of the claimed code (`None`: nobody owns it) referred `referee`, who
/// registered at `registered_at`.
pub fn referrer<'a>(owner: Option<&'a CodeOwner>, referee: &str, registered_at: DateTime<Utc>) -> Result<&'a CodeOwner, NoReferral> {
    let owner = owner.ok_or(NoReferral::UnknownCode)?;
    if owner.user_id == referee {
        return Err(NoReferral::OwnCode);
    }
    if owner.expires_at.is_some_and(|x| x < registered_at) {
        return Err(NoReferral::Expired);
    }
    Ok(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn owner(user: &str, expires: Option<&str>) -> CodeOwner {
        CodeOwner { user_id: user.into(), campaign_id: "default".into(), expires_at: expires.map(at) }
    }

    #[test]
    fn a_typed_code_wins_over_a_click_and_is_normalized() {
        let c = claim(Some(" abcd-2345 "), Some("click-1"), |_| Some("ZZZZ9999".into())).unwrap();
        assert_eq!(c, Claim { code: "ABCD2345".into(), source: AttributionSource::Code });
    }

    #[test]
    fn a_click_resolves_to_its_links_code() {
        let c = claim(None, Some("click-1"), |id| (id == "click-1").then(|| "ABCD2345".into())).unwrap();
        assert_eq!(c.source, AttributionSource::Click);
        assert_eq!(claim(None, Some("click-2"), |_| None), Err(NoReferral::UnknownCode));
    }

    #[test]
    fn an_unreadable_code_without_a_click_is_unknown_and_nothing_is_organic() {
        assert_eq!(claim(Some("not a code!"), None, |_| None), Err(NoReferral::UnknownCode));
        assert_eq!(claim(None, None, |_| None), Err(NoReferral::NoCode));
    }

    #[test]
    fn the_owner_refers_unless_it_is_the_referee_or_the_code_expired() {
        let t = at("2026-01-10T00:00:00Z");
        assert_eq!(referrer(None, "u2", t), Err(NoReferral::UnknownCode));
        assert_eq!(referrer(Some(&owner("u2", None)), "u2", t), Err(NoReferral::OwnCode));
        assert_eq!(referrer(Some(&owner("u1", Some("2026-01-09T00:00:00Z"))), "u2", t), Err(NoReferral::Expired));
        assert_eq!(referrer(Some(&owner("u1", Some("2026-01-10T00:00:00Z"))), "u2", t).unwrap().user_id, "u1");
        assert_eq!(referrer(Some(&owner("u1", None)), "u2", t).unwrap().user_id, "u1");
    }
}
