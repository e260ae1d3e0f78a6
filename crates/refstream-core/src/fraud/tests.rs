//! Scoring tests: the decision rules and their guarantees, as examples and as properties.

use proptest::prelude::*;

use super::rules::*;
use super::*;
use crate::lifecycle::{on_score, ReferralStatus};

/// A referral with nothing suspicious about it.
pub(crate) fn clean() -> Evidence {
    Evidence {
        referrer_id: "referrer".into(),
        referee_id: "referee".into(),
        referrals_by_referrer_in_window: 1,
        registrations_from_device_in_window: 1,
        registrations_from_ip_in_window: 1,
        ..Evidence::default()
    }
}

/// Thresholds that would hold or reject anything they could.
fn strictest() -> FraudPolicy {
    FraudPolicy { review_at: 0, reject_at: 0, ..FraudPolicy::default() }
}

/// Thresholds that would approve anything they could.
fn most_lenient() -> FraudPolicy {
    FraudPolicy { review_at: u8::MAX, reject_at: u8::MAX, ..FraudPolicy::default() }
}

fn rank(decision: Decision) -> u8 {
    match decision {
        Decision::Approve => 0,
        Decision::Review => 1,
        Decision::Reject => 2,
    }
}

/// Each hard link to the referrer, alone on an otherwise clean referral.
fn hard_links() -> Vec<(&'static str, Evidence)> {
    vec![
        ("device", Evidence { same_device: true, ..clean() }),
        ("card", Evidence { shared_payment_instrument: true, ..clean() }),
        ("email variant", Evidence { email_matches_referrer: true, ..clean() }),
        ("ring", Evidence { ring_size: 3, ..clean() }),
    ]
}

#[test]
fn a_clean_referral_is_approved_with_score_zero() {
    let a = assess(&clean(), &FraudPolicy::default());
    assert_eq!((a.score, a.decision), (0, Decision::Approve));
    assert!(a.signals.is_empty());
    assert_eq!(a.rule_version, RULE_VERSION);
}

#[test]
fn accounts_sharing_a_device_or_card_with_their_referrer_never_receive_a_reward_without_a_reviewers_approval() {
    for (what, evidence) in hard_links() {
        for policy in [FraudPolicy::default(), most_lenient()] {
            let a = assess(&evidence, &policy);
            assert_ne!(a.decision, Decision::Approve, "{what} under {policy:?}: {a:?}");
            assert_ne!(on_score(a.decision).to, ReferralStatus::Eligible, "{what}");
        }
        // A ring (weight 90) is rejected outright under the default thresholds; the other links
        // alone are for a reviewer to judge.
        let expected = if what == "ring" { Decision::Reject } else { Decision::Review };
        assert_eq!(assess(&evidence, &FraudPolicy::default()).decision, expected, "{what}");
    }
}

#[test]
fn ip_signals_alone_never_hold_a_referral() {
    let office = Evidence { same_ip: true, same_ip_prefix: true, registrations_from_ip_in_window: 500, ..clean() };
    for policy in [FraudPolicy::default(), strictest()] {
        let a = assess(&office, &policy);
        assert_eq!(a.reasons(), [SAME_IP, VELOCITY_IP]);
        assert_eq!((a.score, a.decision), (30, Decision::Approve), "{policy:?}");
    }
    let carrier = Evidence { same_ip_prefix: true, ..clean() };
    assert_eq!(assess(&carrier, &strictest()).decision, Decision::Approve);
}

#[test]
fn ip_signals_still_add_to_other_signals() {
    let disposable = Evidence { disposable_email: true, ..clean() };
    assert_eq!(assess(&disposable, &FraudPolicy::default()).decision, Decision::Approve);
    let disposable_same_ip = Evidence { same_ip: true, ..disposable };
    let a = assess(&disposable_same_ip, &FraudPolicy::default());
    assert_eq!((a.score, a.decision), (45, Decision::Review));
}

#[test]
fn a_probabilistic_match_alone_never_holds_and_a_click_flood_does() {
    let probabilistic = Evidence { probabilistic_match_pct: Some(60), ..clean() };
    let a = assess(&probabilistic, &strictest());
    assert_eq!((a.reasons(), a.decision), (vec![PROBABILISTIC_ATTRIBUTION.to_owned()], Decision::Approve));
    let flood = Evidence { network_clicks_on_code: 20, ..clean() };
    let a = assess(&flood, &FraudPolicy::default());
    assert_eq!((a.reasons(), a.score, a.decision), (vec![CLICK_FLOOD.to_owned()], 45, Decision::Review));
    assert!(assess(&Evidence { network_clicks_on_code: 19, ..clean() }, &FraudPolicy::default()).signals.is_empty());
    let both = Evidence { probabilistic_match_pct: Some(60), network_clicks_on_code: 25, ..clean() };
    assert_eq!(assess(&both, &FraudPolicy::default()).score, 55);
}

#[test]
fn self_referral_is_always_rejected() {
    let e = Evidence { referee_id: "referrer".into(), ..clean() };
    for policy in [FraudPolicy::default(), most_lenient()] {
        let a = assess(&e, &policy);
        assert_eq!((a.score, a.decision), (100, Decision::Reject));
        assert_eq!(a.reasons(), [SELF_REFERRAL]);
    }
}

#[test]
fn a_ring_is_always_at_least_reviewed() {
    let e = Evidence { ring_size: 5, ..clean() };
    assert_eq!(assess(&e, &most_lenient()).decision, Decision::Review);
    assert_eq!(assess(&e, &FraudPolicy::default()).decision, Decision::Reject, "90 is over the default 80");
}

#[test]
fn scores_add_up_cap_at_100_and_follow_the_thresholds() {
    let e = Evidence { same_device: true, shared_payment_instrument: true, ..clean() };
    let a = assess(&e, &FraudPolicy::default());
    assert_eq!((a.score, a.decision), (100, Decision::Reject));
    assert_eq!(a.reasons(), [SAME_DEVICE, SHARED_PAYMENT_INSTRUMENT]);

    let reused = Evidence { email_matches_earlier_account: true, ..clean() };
    let a = assess(&reused, &FraudPolicy::default());
    assert_eq!((a.score, a.decision), (50, Decision::Review));
    let lenient = FraudPolicy { review_at: 60, ..FraudPolicy::default() };
    assert_eq!(assess(&reused, &lenient).decision, Decision::Approve, "a medium signal follows the thresholds");
}

#[test]
fn reasons_follow_the_rule_table() {
    let e = Evidence { same_ip: true, disposable_email: true, same_device: true, ring_size: 4, ..clean() };
    let a = assess(&e, &FraudPolicy::default());
    assert_eq!(a.reasons(), [FRAUD_RING, SAME_DEVICE, DISPOSABLE_EMAIL, SAME_IP]);
    assert!(a.fired(SAME_DEVICE));
    assert!(!a.fired(SELF_REFERRAL));
    assert!(a.signals.iter().all(|s| !s.detail.is_empty()));
}

#[test]
fn policy_validation() {
    assert_eq!(FraudPolicy::default().validate(), Ok(()));
    let p = FraudPolicy { review_at: 90, ..FraudPolicy::default() };
    assert_eq!(p.validate(), Err(PolicyError::ThresholdsOutOfOrder { review_at: 90, reject_at: 80 }));
    let p = FraudPolicy { ring_min_size: 1, ..FraudPolicy::default() };
    assert_eq!(p.validate(), Err(PolicyError::RingTooSmall(1)));
    let p = FraudPolicy { velocity_per_device: 0, ..FraudPolicy::default() };
    assert_eq!(p.validate(), Err(PolicyError::ZeroVelocityLimit("velocity_per_device")));
    let p = FraudPolicy { velocity_window: Duration::zero(), ..FraudPolicy::default() };
    assert_eq!(p.validate(), Err(PolicyError::EmptyWindow));
}

fn any_evidence() -> impl Strategy<Value = Evidence> {
    (prop_oneof![9 => Just("referee"), 1 => Just("referrer")], any::<[bool; 8]>(), (0u32..40, 0u32..10, 0u32..60, 0u32..6, 0u32..8))
        .prop_map(|(referee, flags, counts)| Evidence {
            referrer_id: "referrer".into(),
            referee_id: referee.into(),
            same_device: flags[0],
            same_ip: flags[1],
            same_ip_prefix: flags[2],
            email_matches_referrer: flags[3],
            email_matches_earlier_account: flags[4],
            disposable_email: flags[5],
            shared_payment_instrument: flags[6],
            referrals_by_referrer_in_window: counts.0,
            registrations_from_device_in_window: counts.1,
            registrations_from_ip_in_window: counts.2,
            other_accounts_on_referee_device: counts.3,
            ring_size: if flags[7] { counts.4 } else { 0 },
            probabilistic_match_pct: flags[1].then_some(60),
            network_clicks_on_code: counts.2,
        })
}

fn any_policy() -> impl Strategy<Value = FraudPolicy> {
    (any::<u8>(), any::<u8>(), 0u32..6, 0u32..30, 0u32..10, 0u32..50, 1i64..72).prop_map(
        |(review_at, reject_at, ring_min_size, per_referrer, per_device, per_ip, hours)| FraudPolicy {
            review_at,
            reject_at,
            ring_min_size,
            velocity_per_referrer: per_referrer,
            velocity_per_device: per_device,
            velocity_per_ip: per_ip,
            velocity_window: Duration::hours(hours),
            click_flood_per_network: 20,
        },
    )
}

/// `e` with one more reason for suspicion: field `which` set or increased by `by`.
fn strengthen(e: &Evidence, which: u8, by: u32) -> Evidence {
    let mut e = e.clone();
    match which {
        0 => e.referee_id = e.referrer_id.clone(),
        1 => e.same_device = true,
        2 => e.same_ip = true,
        3 => e.same_ip_prefix = true,
        4 => e.email_matches_referrer = true,
        5 => e.email_matches_earlier_account = true,
        6 => e.disposable_email = true,
        7 => e.shared_payment_instrument = true,
        8 => e.referrals_by_referrer_in_window += by,
        9 => e.registrations_from_device_in_window += by,
        10 => e.registrations_from_ip_in_window += by,
        11 => e.other_accounts_on_referee_device += by,
        _ => e.ring_size += by,
    }
    e
}

proptest! {
    #[test]
    fn assess_is_deterministic(e in any_evidence(), p in any_policy()) {
        prop_assert_eq!(assess(&e, &p), assess(&e.clone(), &p.clone()));
    }

    #[test]
    fn score_is_the_capped_sum_of_weights(e in any_evidence(), p in any_policy()) {
        let a = assess(&e, &p);
        prop_assert!(a.score <= 100);
        let total: u32 = a.signals.iter().map(|s| u32::from(s.weight)).sum();
        prop_assert_eq!(u32::from(a.score), total.min(100));
        prop_assert_eq!(a.reasons().len(), a.signals.len());
    }

    #[test]
    fn a_referral_with_only_ip_signals_is_always_approved(
        same_ip in any::<bool>(),
        same_ip_prefix in any::<bool>(),
        from_ip in 0u32..1000,
        p in any_policy(),
    ) {
        let e = Evidence {
            same_ip,
            same_ip_prefix,
            registrations_from_ip_in_window: from_ip,
            referrals_by_referrer_in_window: 0,
            registrations_from_device_in_window: 0,
            ..clean()
        };
        let a = assess(&e, &p);
        prop_assert!(a.signals.iter().all(|s| SOFT.contains(&s.code)), "{:?}", a.reasons());
        prop_assert_eq!(a.decision, Decision::Approve);
    }

    #[test]
    fn a_hard_link_is_never_approved_whatever_the_policy(
        e in any_evidence(),
        p in any_policy(),
        which in 0usize..4,
    ) {
        let mut e = e;
        match which {
            0 => e.same_device = true,
            1 => e.shared_payment_instrument = true,
            2 => e.email_matches_referrer = true,
            _ => e.ring_size = p.ring_min_size.max(1),
        }
        prop_assert_ne!(assess(&e, &p).decision, Decision::Approve);
    }

    #[test]
    fn adding_a_signal_never_lowers_the_score_or_the_decision(
        e in any_evidence(),
        p in any_policy(),
        which in 0u8..13,
        by in 1u32..20,
    ) {
        let before = assess(&e, &p);
        let after = assess(&strengthen(&e, which, by), &p);
        prop_assert!(after.score >= before.score, "{:?} -> {:?}", before, after);
        prop_assert!(rank(after.decision) >= rank(before.decision), "{:?} -> {:?}", before, after);
    }
}
