//! Attribution decisions: which touch (a code typed at signup, the click the registration
//! carries, or another click of the same cookie or device) wins a registration under the
//! campaign's touch policy, and whether that code's owner referred it or why nobody did.
//! Pure functions of what the attribution worker loaded, with every time taken from the
//! events themselves (registration time, click time), so a registration is decided the same
//! way whatever batch it lands in and however late its click is read.

use chrono::{DateTime, Duration, Utc};

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
    /// The code had expired when the user clicked or registered.
    Expired,
    /// The only click was made outside the attribution window of the registration.
    ClickOutsideWindow,
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
            Self::ClickOutsideWindow => "click_outside_window",
            Self::AlreadyReferred => "already_referred",
            Self::AlreadyRegistered => "duplicate_registration",
        }
    }

    /// When several touches fail, the reason reported is the most telling one.
    fn rank(self) -> u8 {
        match self {
            Self::Expired => 5,
            Self::OwnCode => 4,
            Self::ClickOutsideWindow => 3,
            Self::UnknownCode => 2,
            _ => 0,
        }
    }
}

/// Which touch wins when a registration has several: the campaign's `touch` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchPolicy {
    First,
    Last,
}

impl TouchPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "first" => Some(Self::First),
            "last" => Some(Self::Last),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Last => "last",
        }
    }
}

/// How the click a registration carries was matched to the device that registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickMatch {
    /// The click id came back as issued (a link's URL, the install referrer, an SDK).
    Exact,
    /// The app was handed the click id by a signal match; `confidence_pct` of 100.
    Probabilistic { confidence_pct: u8 },
}

impl ClickMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Probabilistic { .. } => "probabilistic",
        }
    }
}

/// A recorded click, as attribution loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub click_id: String,
    pub code: String,
    pub clicked_at: DateTime<Utc>,
    /// The code had expired when the click was made (recorded, never attributes).
    pub expired: bool,
    pub matched: ClickMatch,
}

/// A code's owner as stored: who owns it, the campaign it belongs to, when it stops attributing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeOwner {
    pub user_id: String,
    pub campaign_id: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A registration as far as attribution is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub user_id: &'a str,
    pub registered_at: DateTime<Utc>,
    pub typed_code: Option<&'a str>,
    pub click_id: Option<&'a str>,
}

/// The rules of the program that decide between touches.
#[derive(Debug, Clone, Copy)]
pub struct TouchRules {
    pub policy: TouchPolicy,
    /// A click counts when made at most this long before the registration.
    pub click_window: Duration,
    /// ... or at most this long after it: a click recorded after the registration raced ahead.
    pub click_wait: Duration,
}

/// What the winning touch was, with the click behind it if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Won {
    pub code: String,
    pub source: AttributionSource,
    pub click: Option<Click>,
    pub owner: CodeOwner,
    /// Which touch won and why, for the referral row and reviewers.
    pub touch: String,
}

/// The outcome for one registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Attribute(Won),
    /// The click id is not recorded (yet): decided when its click lands.
    AwaitClick,
    NoReferral(NoReferral),
}

/// One candidate touch.
struct Touch {
    code: String,
    at: DateTime<Utc>,
    click: Option<Click>,
}

/// Decides a registration. `carried` is the click its click id resolves to (`None`: not
/// recorded), `related` the other clicks of the carried click's cookie or the registration's
/// device, `owner` resolves codes to their owners. A click id without the shape refstream
/// issues (`links::is_click_id`) is unknown at once; a well-formed one not recorded yet makes
/// the registration wait, see [`decide_without_click`] for when the wait ends.
pub fn decide<'o>(
    reg: Registration<'_>,
    carried: Option<&Click>,
    related: &[Click],
    owner: impl Fn(&str) -> Option<&'o CodeOwner>,
    rules: TouchRules,
) -> Decision {
    // A click id refstream never issues can never be recorded: nothing to wait for.
    let bogus_click = reg.click_id.is_some_and(|c| !crate::links::is_click_id(c));
    let reg = if bogus_click { Registration { click_id: None, ..reg } } else { reg };
    let typed = reg.typed_code.and_then(code::normalize);
    let typed_attributes = typed.as_deref().and_then(&owner).is_some_and(|o| refusal(o, &reg, reg.registered_at).is_none());
    if reg.click_id.is_some() && carried.is_none() && (!typed_attributes || rules.policy == TouchPolicy::First) {
        // Under `last` a typed code that attributes is the latest touch whatever the click;
        // otherwise the click may win, so the registration waits for it rather than being
        // decided without it (the same outcome whichever of the two is read first).
        return Decision::AwaitClick;
    }
    let mut failed = if (reg.typed_code.is_some() && typed.is_none()) || bogus_click { Some(NoReferral::UnknownCode) } else { None };
    let mut fail = |why: NoReferral| {
        if failed.is_none_or(|f| why.rank() > f.rank()) {
            failed = Some(why);
        }
    };
    let mut touches: Vec<Touch> = Vec::new();
    if let Some(code) = typed {
        touches.push(Touch { code, at: reg.registered_at, click: None });
    }
    let earliest = reg.registered_at - rules.click_window;
    let latest = reg.registered_at + rules.click_wait;
    let mut seen = std::collections::HashSet::new();
    for c in carried.into_iter().chain(related) {
        if !seen.insert(c.click_id.as_str()) {
            continue;
        }
        if c.clicked_at < earliest || c.clicked_at > latest {
            fail(NoReferral::ClickOutsideWindow);
        } else if c.expired {
            fail(NoReferral::Expired);
        } else {
            // A click recorded after the registration was made before it (it raced behind): it
            // counts as made at the registration, so it never comes after a code typed there.
            touches.push(Touch { code: c.code.clone(), at: c.clicked_at.min(reg.registered_at), click: Some(c.clone()) });
        }
    }
    let mut valid: Vec<(Touch, &CodeOwner)> = Vec::new();
    for t in touches {
        match owner(&t.code) {
            None => fail(NoReferral::UnknownCode),
            Some(o) => match refusal(o, &reg, t.at) {
                Some(why) => fail(why),
                None => valid.push((t, o)),
            },
        }
    }
    // Order by time; at equal times a click counts as earlier than the code typed at signup, and
    // clicks by id, so the order the clicks were loaded in never matters.
    let key = |t: &Touch| (t.at, t.click.is_none(), t.click.as_ref().map(|c| c.click_id.clone()));
    valid.sort_by_key(|(t, _)| key(t));
    let count = valid.len();
    let pick = match rules.policy {
        TouchPolicy::First => valid.into_iter().next(),
        TouchPolicy::Last => valid.into_iter().last(),
    };
    let Some((t, o)) = pick else {
        return Decision::NoReferral(failed.unwrap_or(NoReferral::NoCode));
    };
    let what = match &t.click {
        Some(c) => format!("click {} ({})", c.click_id, c.matched.as_str()),
        None => "code typed at registration".to_owned(),
    };
    let touch = if let (Some(id), None) = (reg.click_id, carried) {
        format!("last_touch: {what}, over click {id} not recorded yet (a code typed at signup is later than any click)")
    } else if count == 1 {
        format!("only touch: {what}")
    } else {
        format!(
            "{}_touch: {what}, {} of {count} valid touches",
            rules.policy.as_str(),
            if rules.policy == TouchPolicy::First { "earliest" } else { "latest" }
        )
    };
    let source = if t.click.is_some() { AttributionSource::Click } else { AttributionSource::Code };
    Decision::Attribute(Won { code: t.code, source, click: t.click, owner: o.clone(), touch })
}

/// Why the owner `o` of a code does not refer `reg` through a touch at `at` (their own code, or
/// one expired by the touch or the registration), or `None` when they do.
fn refusal(o: &CodeOwner, reg: &Registration<'_>, at: DateTime<Utc>) -> Option<NoReferral> {
    if o.user_id == reg.user_id {
        Some(NoReferral::OwnCode)
    } else if o.expires_at.is_some_and(|x| x < reg.registered_at || x < at) {
        Some(NoReferral::Expired)
    } else {
        None
    }
}

/// Decides a registration whose click never landed (its wait is over): as if it carried no
/// click id, reporting an unknown click rather than an organic signup when nothing else
/// attributes it.
pub fn decide_without_click<'o>(
    reg: Registration<'_>,
    related: &[Click],
    owner: impl Fn(&str) -> Option<&'o CodeOwner>,
    rules: TouchRules,
) -> Decision {
    let carried_an_id = reg.click_id.is_some();
    match decide(Registration { click_id: None, ..reg }, None, related, owner, rules) {
        Decision::NoReferral(NoReferral::NoCode) if carried_an_id => Decision::NoReferral(NoReferral::UnknownCode),
        other => other,
    }
}

#[cfg(test)]
mod tests;
