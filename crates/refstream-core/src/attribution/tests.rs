use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

const T: &str = "2026-01-10T12:00:00Z";
const CODE_A: &str = "AAAA2345";
const CODE_B: &str = "BBBB2345";

fn owners() -> HashMap<String, CodeOwner> {
    let o = |u: &str| CodeOwner { user_id: u.into(), campaign_id: "default".into(), expires_at: None };
    HashMap::from([(CODE_A.to_owned(), o("ra")), (CODE_B.to_owned(), o("rb"))])
}

fn rules(policy: TouchPolicy) -> TouchRules {
    TouchRules { policy, click_window: Duration::days(7), click_wait: Duration::minutes(10) }
}

/// A click id of the shape refstream issues, from a short name.
fn cid(name: &str) -> &'static str {
    let digits: String = name.bytes().map(|b| char::from(b'0' + b % 10)).collect();
    Box::leak(format!("c_{digits:0>26}").into_boxed_str())
}

fn click(id: &str, code: &str, mins_before: i64) -> Click {
    Click {
        click_id: cid(id).into(),
        code: code.into(),
        clicked_at: at(T) - Duration::minutes(mins_before),
        expired: false,
        matched: ClickMatch::Exact,
    }
}

fn reg<'a>(typed: Option<&'a str>, click_id: Option<&'a str>) -> Registration<'a> {
    Registration { user_id: "u1", registered_at: at(T), typed_code: typed, click_id }
}

fn run(r: Registration, carried: Option<&Click>, related: &[Click], policy: TouchPolicy) -> Decision {
    let o = owners();
    decide(r, carried, related, |c| o.get(c), rules(policy))
}

fn won(d: Decision) -> Won {
    match d {
        Decision::Attribute(w) => w,
        other => panic!("expected an attribution, got {other:?}"),
    }
}

#[test]
fn a_typed_code_is_normalized_and_attributes_to_its_owner() {
    let w = won(run(reg(Some(" aaaa-2345 "), None), None, &[], TouchPolicy::Last));
    assert_eq!((w.code.as_str(), w.source, w.owner.user_id.as_str()), (CODE_A, AttributionSource::Code, "ra"));
    assert_eq!(w.touch, "only touch: code typed at registration");
}

#[test]
fn a_click_alone_attributes_to_its_links_owner() {
    let c = click("c1", CODE_B, 60);
    let w = won(run(reg(None, Some(cid("c1"))), Some(&c), &[], TouchPolicy::Last));
    assert_eq!((w.source, w.owner.user_id.as_str()), (AttributionSource::Click, "rb"));
    assert_eq!(w.click.unwrap().click_id, cid("c1"));
}

#[test]
fn the_touch_policy_decides_between_a_code_and_a_click() {
    let c = click("c1", CODE_B, 60);
    let last = won(run(reg(Some(CODE_A), Some(cid("c1"))), Some(&c), &[], TouchPolicy::Last));
    assert_eq!(last.owner.user_id, "ra", "the code typed at signup is the last touch");
    assert!(last.touch.starts_with("last_touch: code typed at registration"), "{}", last.touch);
    let first = won(run(reg(Some(CODE_A), Some(cid("c1"))), Some(&c), &[], TouchPolicy::First));
    assert_eq!(first.owner.user_id, "rb");
    assert!(first.touch.starts_with(&format!("first_touch: click {}", cid("c1"))), "{}", first.touch);
}

#[test]
fn several_clicks_of_one_cookie_or_device_are_ordered_by_time() {
    let carried = click("c2", CODE_A, 30);
    let related = [click("c1", CODE_B, 120), click("c3", CODE_B, 5)];
    assert_eq!(won(run(reg(None, Some(cid("c2"))), Some(&carried), &related, TouchPolicy::Last)).click.unwrap().click_id, cid("c3"));
    assert_eq!(won(run(reg(None, Some(cid("c2"))), Some(&carried), &related, TouchPolicy::First)).click.unwrap().click_id, cid("c1"));
}

#[test]
fn a_click_outside_the_window_attributes_nothing() {
    let old = click("c1", CODE_A, 7 * 24 * 60 + 1);
    assert_eq!(run(reg(None, Some(cid("c1"))), Some(&old), &[], TouchPolicy::Last), Decision::NoReferral(NoReferral::ClickOutsideWindow));
    let edge = click("c1", CODE_A, 7 * 24 * 60);
    assert_eq!(won(run(reg(None, Some(cid("c1"))), Some(&edge), &[], TouchPolicy::Last)).owner.user_id, "ra");
    // A click recorded after the registration (it raced ahead) counts within the wait.
    let late = click("c1", CODE_A, -9);
    assert_eq!(won(run(reg(None, Some(cid("c1"))), Some(&late), &[], TouchPolicy::Last)).owner.user_id, "ra");
    let too_late = click("c1", CODE_A, -11);
    assert_eq!(
        run(reg(None, Some(cid("c1"))), Some(&too_late), &[], TouchPolicy::Last),
        Decision::NoReferral(NoReferral::ClickOutsideWindow)
    );
}

#[test]
fn an_unrecorded_click_waits_unless_a_typed_code_wins_anyway() {
    assert_eq!(run(reg(None, Some(cid("c9"))), None, &[], TouchPolicy::Last), Decision::AwaitClick);
    assert_eq!(run(reg(Some(CODE_A), Some(cid("c9"))), None, &[], TouchPolicy::First), Decision::AwaitClick);
    let early = won(run(reg(Some(CODE_A), Some(cid("c9"))), None, &[], TouchPolicy::Last));
    assert_eq!(early.owner.user_id, "ra");
    assert!(early.touch.contains(&format!("over click {} not recorded yet", cid("c9"))), "{}", early.touch);
    // A typed code that cannot attribute (nobody's, the user's own) does not stop the wait.
    assert_eq!(run(reg(Some("ZZZZ9999"), Some(cid("c9"))), None, &[], TouchPolicy::Last), Decision::AwaitClick);
    let own = Registration { user_id: "ra", ..reg(Some(CODE_A), Some(cid("c9"))) };
    assert_eq!(run(own, None, &[], TouchPolicy::Last), Decision::AwaitClick);
    // A click id refstream never issues is unknown at once; the typed code still counts.
    assert_eq!(run(reg(None, Some("clk-1")), None, &[], TouchPolicy::First), Decision::NoReferral(NoReferral::UnknownCode));
    assert_eq!(won(run(reg(Some(CODE_A), Some("undefined")), None, &[], TouchPolicy::First)).owner.user_id, "ra");
}

#[test]
fn when_the_wait_is_over_the_registration_is_decided_without_its_click() {
    let o = owners();
    let after = |typed, policy| decide_without_click(reg(typed, Some(cid("c9"))), &[], |c| o.get(c), rules(policy));
    assert_eq!(won(after(Some(CODE_A), TouchPolicy::First)).owner.user_id, "ra");
    assert_eq!(after(None, TouchPolicy::Last), Decision::NoReferral(NoReferral::UnknownCode));
}

proptest! {
    /// A registration decided when its click lands is decided as if the click had been there
    /// from the start: waiting never changes the outcome.
    #[test]
    fn waiting_for_the_click_decides_as_having_it(
        typed in proptest::sample::select(vec![None, Some(CODE_A), Some("ZZZZ9999"), Some("bad!")]),
        mins in prop_oneof![-10i64..10, -9i64..20_000],
        first in any::<bool>(),
        own in any::<bool>(),
    ) {
        let policy = if first { TouchPolicy::First } else { TouchPolicy::Last };
        let c = click("c1", CODE_B, mins);
        let user = if own { "rb" } else { "u1" };
        let r = Registration { user_id: user, ..reg(typed, Some(cid("c1"))) };
        let with_click = run(r, Some(&c), &[], policy);
        // The winner is the same; only the recorded explanation says the click was not known.
        let winner = |d: Decision| match d {
            Decision::Attribute(w) => Some((w.code, w.source, w.click, w.owner)),
            _ => None,
        };
        match run(r, None, &[], policy) {
            Decision::AwaitClick => {}
            early => {
                prop_assert_eq!(winner(early.clone()), winner(with_click.clone()));
                if winner(early.clone()).is_none() {
                    prop_assert_eq!(early, with_click);
                }
            }
        }
    }
}

#[test]
fn expired_own_and_unknown_codes_never_attribute_and_say_why() {
    let mut o = owners();
    o.get_mut(CODE_A).unwrap().expires_at = Some(at(T) - Duration::hours(1));
    let d = decide(reg(Some(CODE_A), None), None, &[], |c| o.get(c), rules(TouchPolicy::Last));
    assert_eq!(d, Decision::NoReferral(NoReferral::Expired));
    let mut expired_click = click("c1", CODE_B, 5);
    expired_click.expired = true;
    assert_eq!(run(reg(None, Some(cid("c1"))), Some(&expired_click), &[], TouchPolicy::Last), Decision::NoReferral(NoReferral::Expired));
    let own = Registration { user_id: "ra", ..reg(Some(CODE_A), None) };
    assert_eq!(run(own, None, &[], TouchPolicy::Last), Decision::NoReferral(NoReferral::OwnCode));
    assert_eq!(run(reg(Some("ZZZZ9999"), None), None, &[], TouchPolicy::Last), Decision::NoReferral(NoReferral::UnknownCode));
    assert_eq!(run(reg(Some("not a code!"), None), None, &[], TouchPolicy::Last), Decision::NoReferral(NoReferral::UnknownCode));
    assert_eq!(run(reg(None, None), None, &[], TouchPolicy::Last), Decision::NoReferral(NoReferral::NoCode));
}

#[test]
fn an_expired_touch_gives_way_to_a_valid_one() {
    let mut o = owners();
    o.get_mut(CODE_A).unwrap().expires_at = Some(at(T) - Duration::hours(1));
    let c = click("c1", CODE_B, 120);
    let d = decide(reg(Some(CODE_A), Some(cid("c1"))), Some(&c), &[], |x| o.get(x), rules(TouchPolicy::Last));
    assert_eq!(won(d).owner.user_id, "rb");
}

proptest! {
    /// The decision does not depend on the order in which related clicks were loaded.
    #[test]
    fn related_click_order_does_not_matter(mins in proptest::collection::vec(-9i64..20_000, 1..6), first in any::<bool>()) {
        let policy = if first { TouchPolicy::First } else { TouchPolicy::Last };
        let clicks: Vec<Click> = mins.iter().enumerate()
            .map(|(i, m)| click(&format!("c{i}"), if i % 2 == 0 { CODE_A } else { CODE_B }, *m)).collect();
        let mut reversed = clicks.clone();
        reversed.reverse();
        let a = run(reg(Some(CODE_A), Some(cid("c0"))), Some(&clicks[0]), &clicks, policy);
        let b = run(reg(Some(CODE_A), Some(cid("c0"))), Some(&clicks[0]), &reversed, policy);
        prop_assert_eq!(a, b);
    }
}
