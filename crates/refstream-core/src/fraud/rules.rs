//! The fraud rules. Each rule is a small pure function of the evidence and the policy that
//! either stays silent or returns one signal with its reason code, weight and a sentence for
//! reviewers. [`RULES`] lists every rule once, in the order signals and reasons are reported.

use chrono::Duration;

use super::{Evidence, FraudPolicy, Signal};

/// A rule: a signal when it fires, `None` when it stays silent.
pub type RuleFn = fn(&Evidence, &FraudPolicy) -> Option<Signal>;

pub const SELF_REFERRAL: &str = "SELF_REFERRAL";
pub const FRAUD_RING: &str = "FRAUD_RING";
pub const EMAIL_VARIANT_OF_REFERRER: &str = "EMAIL_VARIANT_OF_REFERRER";
pub const SAME_DEVICE: &str = "SAME_DEVICE";
pub const SHARED_PAYMENT_INSTRUMENT: &str = "SHARED_PAYMENT_INSTRUMENT";
pub const EMAIL_REUSED: &str = "EMAIL_REUSED";
pub const DEVICE_HAS_OTHER_ACCOUNTS: &str = "DEVICE_HAS_OTHER_ACCOUNTS";
pub const VELOCITY_DEVICE: &str = "VELOCITY_DEVICE";
pub const DISPOSABLE_EMAIL: &str = "DISPOSABLE_EMAIL";
pub const VELOCITY_REFERRER: &str = "VELOCITY_REFERRER";
pub const SAME_IP: &str = "SAME_IP";
pub const VELOCITY_IP: &str = "VELOCITY_IP";
pub const SAME_IP_PREFIX: &str = "SAME_IP_PREFIX";
pub const CLICK_FLOOD: &str = "CLICK_FLOOD";
pub const PROBABILISTIC_ATTRIBUTION: &str = "PROBABILISTIC_ATTRIBUTION";

/// Every rule, strongest first. Signals and reasons are reported in this order.
pub const RULES: &[(&str, RuleFn)] = &[
    (SELF_REFERRAL, self_referral),
    (FRAUD_RING, fraud_ring),
    (EMAIL_VARIANT_OF_REFERRER, email_variant_of_referrer),
    (SAME_DEVICE, same_device),
    (SHARED_PAYMENT_INSTRUMENT, shared_payment_instrument),
    (EMAIL_REUSED, email_reused),
    (DEVICE_HAS_OTHER_ACCOUNTS, device_has_other_accounts),
    (VELOCITY_DEVICE, velocity_device),
    (DISPOSABLE_EMAIL, disposable_email),
    (VELOCITY_REFERRER, velocity_referrer),
    (CLICK_FLOOD, click_flood),
    (SAME_IP, same_ip),
    (VELOCITY_IP, velocity_ip),
    (SAME_IP_PREFIX, same_ip_prefix),
    (PROBABILISTIC_ATTRIBUTION, probabilistic_attribution),
];

/// Rules that reject whatever the score and thresholds.
pub const ALWAYS_REJECT: &[&str] = &[SELF_REFERRAL];

/// Hard links between referrer and referee: a referral any of these flags is at least held for
/// review, whatever the score and thresholds.
pub const AT_LEAST_REVIEW: &[&str] = &[FRAUD_RING, EMAIL_VARIANT_OF_REFERRER, SAME_DEVICE, SHARED_PAYMENT_INSTRUMENT];

/// Soft rules: IP addresses are shared by households, offices and carrier NAT, and a
/// probabilistic attribution is how most app installs are matched, so these add to the score
/// but never hold a referral on their own.
pub const SOFT: &[&str] = &[SAME_IP, VELOCITY_IP, SAME_IP_PREFIX, PROBABILISTIC_ATTRIBUTION];

fn signal(code: &'static str, weight: u8, detail: impl Into<String>) -> Option<Signal> {
    Some(Signal { code, weight, detail: detail.into() })
}

/// Many clicks on the referrer's link from one network in an hour: a click farm or a script
/// pushing the link, whose signups are rarely real people.
fn click_flood(e: &Evidence, p: &FraudPolicy) -> Option<Signal> {
    if e.network_clicks_on_code < p.click_flood_per_network {
        return None;
    }
    signal(
        CLICK_FLOOD,
        45,
        format!(
            "{} clicks on the referrer's link from the referee's network within an hour (limit {})",
            e.network_clicks_on_code, p.click_flood_per_network
        ),
    )
}

/// The referee was matched to the click by signals only (IP, User-Agent, time), not by a click
/// id that came back: the referrer may not be who brought them.
fn probabilistic_attribution(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    let pct = e.probabilistic_match_pct?;
    signal(PROBABILISTIC_ATTRIBUTION, 10, format!("attributed by a probabilistic signal match ({pct}% confidence), not an exact click id"))
}

fn self_referral(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    if e.referrer_id != e.referee_id {
        return None;
    }
    signal(SELF_REFERRAL, 100, "referrer and referee are the same account")
}

fn fraud_ring(e: &Evidence, p: &FraudPolicy) -> Option<Signal> {
    if e.ring_size == 0 || e.ring_size < p.ring_min_size {
        return None;
    }
    signal(
        FRAUD_RING,
        90,
        format!(
            "referee belongs to a group of {} accounts linked by shared devices, payment instruments or emails, \
             within which referrals were made (ring threshold {})",
            e.ring_size, p.ring_min_size
        ),
    )
}

fn email_variant_of_referrer(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    if !e.email_matches_referrer {
        return None;
    }
    signal(EMAIL_VARIANT_OF_REFERRER, 70, "referee's email reaches the referrer's mailbox once normalized (dots, +tags)")
}

fn same_device(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    if !e.same_device {
        return None;
    }
    signal(SAME_DEVICE, 60, "referee registered on a device the referrer used")
}

fn shared_payment_instrument(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    if !e.shared_payment_instrument {
        return None;
    }
    signal(SHARED_PAYMENT_INSTRUMENT, 60, "referrer and referee used the same payment instrument")
}

/// Silent when the email matches the referrer's: that earlier account is the referrer, and
/// EMAIL_VARIANT_OF_REFERRER already counts the fact (with a higher weight).
fn email_reused(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    if !e.email_matches_earlier_account || e.email_matches_referrer {
        return None;
    }
    signal(EMAIL_REUSED, 50, "referee's email, once normalized, already belongs to an earlier account")
}

/// When the referee shares the referrer's device, the referrer is taken to be one of the other
/// accounts on it and is not counted again: SAME_DEVICE already covers it.
fn device_has_other_accounts(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    let (others, besides) = if e.same_device {
        (e.other_accounts_on_referee_device.saturating_sub(1), " besides the referrer")
    } else {
        (e.other_accounts_on_referee_device, "")
    };
    if others == 0 {
        return None;
    }
    signal(
        DEVICE_HAS_OTHER_ACCOUNTS,
        40,
        format!("{others} other {}{besides} registered on the referee's device", plural(others, "account")),
    )
}

fn velocity_device(e: &Evidence, p: &FraudPolicy) -> Option<Signal> {
    over_limit(e.registrations_from_device_in_window, p.velocity_per_device)?;
    signal(
        VELOCITY_DEVICE,
        40,
        format!(
            "{} registrations from the referee's device within {}, over the limit of {}",
            e.registrations_from_device_in_window,
            describe_window(p.velocity_window),
            p.velocity_per_device
        ),
    )
}

fn disposable_email(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    if !e.disposable_email {
        return None;
    }
    signal(DISPOSABLE_EMAIL, 30, "referee's email is at a disposable-email provider")
}

fn velocity_referrer(e: &Evidence, p: &FraudPolicy) -> Option<Signal> {
    over_limit(e.referrals_by_referrer_in_window, p.velocity_per_referrer)?;
    signal(
        VELOCITY_REFERRER,
        30,
        format!(
            "referrer made {} referrals within {}, over the limit of {}",
            e.referrals_by_referrer_in_window,
            describe_window(p.velocity_window),
            p.velocity_per_referrer
        ),
    )
}

fn same_ip(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    if !e.same_ip {
        return None;
    }
    signal(SAME_IP, 15, "referee registered from the referrer's IP address")
}

fn velocity_ip(e: &Evidence, p: &FraudPolicy) -> Option<Signal> {
    over_limit(e.registrations_from_ip_in_window, p.velocity_per_ip)?;
    signal(
        VELOCITY_IP,
        15,
        format!(
            "{} registrations from the referee's IP address within {}, over the limit of {}",
            e.registrations_from_ip_in_window,
            describe_window(p.velocity_window),
            p.velocity_per_ip
        ),
    )
}

/// Silent when SAME_IP fires: the same address is necessarily the same network.
fn same_ip_prefix(e: &Evidence, _: &FraudPolicy) -> Option<Signal> {
    if !e.same_ip_prefix || e.same_ip {
        return None;
    }
    signal(SAME_IP_PREFIX, 10, "referee registered from the referrer's network (/24 or /64), from another address")
}

/// `Some` when `count` exceeds `limit`: the limit itself is allowed.
fn over_limit(count: u32, limit: u32) -> Option<()> {
    (count > limit).then_some(())
}

fn plural(n: u32, noun: &str) -> String {
    if n == 1 {
        noun.to_owned()
    } else {
        format!("{noun}s")
    }
}

/// A window in the largest whole unit: "24 hours", "90 minutes", "45 seconds".
fn describe_window(window: Duration) -> String {
    let seconds = window.num_seconds();
    let (amount, unit) = if seconds != 0 && seconds % 3600 == 0 {
        (seconds / 3600, "hour")
    } else if seconds != 0 && seconds % 60 == 0 {
        (seconds / 60, "minute")
    } else {
        (seconds, "second")
    };
    let unit = if amount == 1 { unit.to_owned() } else { format!("{unit}s") };
    format!("{amount} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fraud::tests::clean;

    fn fires(rule: RuleFn, e: &Evidence) -> Option<Signal> {
        rule(e, &FraudPolicy::default())
    }

    /// Asserts the rule is silent on `quiet` and fires with `code` and `weight` on `loud`.
    fn check(rule: RuleFn, code: &str, weight: u8, quiet: &Evidence, loud: &Evidence) {
        assert_eq!(fires(rule, quiet), None, "{code} must stay silent on {quiet:?}");
        let s = fires(rule, loud).unwrap_or_else(|| panic!("{code} must fire on {loud:?}"));
        assert_eq!((s.code, s.weight), (code, weight));
        assert!(!s.detail.is_empty());
    }

    #[test]
    fn a_clean_referral_fires_nothing() {
        let e = clean();
        for (code, rule) in RULES {
            assert_eq!(fires(*rule, &e), None, "{code}");
        }
    }

    #[test]
    fn self_referral() {
        let loud = Evidence { referee_id: "referrer".into(), ..clean() };
        check(super::self_referral, SELF_REFERRAL, 100, &clean(), &loud);
    }

    #[test]
    fn fraud_ring() {
        let small = Evidence { ring_size: 2, ..clean() };
        let at_threshold = Evidence { ring_size: 3, ..clean() };
        check(super::fraud_ring, FRAUD_RING, 90, &clean(), &at_threshold);
        assert_eq!(fires(super::fraud_ring, &small), None);
        let no_threshold = FraudPolicy { ring_min_size: 0, ..FraudPolicy::default() };
        assert_eq!(super::fraud_ring(&clean(), &no_threshold), None, "size 0 means not in a ring");
    }

    #[test]
    fn email_variant_of_referrer() {
        let loud = Evidence { email_matches_referrer: true, ..clean() };
        check(super::email_variant_of_referrer, EMAIL_VARIANT_OF_REFERRER, 70, &clean(), &loud);
    }

    #[test]
    fn same_device() {
        let loud = Evidence { same_device: true, ..clean() };
        check(super::same_device, SAME_DEVICE, 60, &clean(), &loud);
    }

    #[test]
    fn shared_payment_instrument() {
        let loud = Evidence { shared_payment_instrument: true, ..clean() };
        check(super::shared_payment_instrument, SHARED_PAYMENT_INSTRUMENT, 60, &clean(), &loud);
    }

    #[test]
    fn email_reused() {
        let loud = Evidence { email_matches_earlier_account: true, ..clean() };
        let referrers = Evidence { email_matches_referrer: true, ..loud.clone() };
        check(super::email_reused, EMAIL_REUSED, 50, &referrers, &loud);
    }

    #[test]
    fn device_has_other_accounts() {
        let loud = Evidence { other_accounts_on_referee_device: 1, ..clean() };
        let only_the_referrer = Evidence { same_device: true, ..loud.clone() };
        let referrer_and_one_more = Evidence { other_accounts_on_referee_device: 2, ..only_the_referrer.clone() };
        check(super::device_has_other_accounts, DEVICE_HAS_OTHER_ACCOUNTS, 40, &clean(), &loud);
        check(super::device_has_other_accounts, DEVICE_HAS_OTHER_ACCOUNTS, 40, &only_the_referrer, &referrer_and_one_more);
        let detail = fires(super::device_has_other_accounts, &referrer_and_one_more).unwrap().detail;
        assert_eq!(detail, "1 other account besides the referrer registered on the referee's device");
    }

    #[test]
    fn velocity_device() {
        let at_limit = Evidence { registrations_from_device_in_window: 3, ..clean() };
        let over = Evidence { registrations_from_device_in_window: 4, ..clean() };
        check(super::velocity_device, VELOCITY_DEVICE, 40, &at_limit, &over);
        let detail = fires(super::velocity_device, &over).unwrap().detail;
        assert_eq!(detail, "4 registrations from the referee's device within 24 hours, over the limit of 3");
    }

    #[test]
    fn disposable_email() {
        let loud = Evidence { disposable_email: true, ..clean() };
        check(super::disposable_email, DISPOSABLE_EMAIL, 30, &clean(), &loud);
    }

    #[test]
    fn velocity_referrer() {
        let at_limit = Evidence { referrals_by_referrer_in_window: 10, ..clean() };
        let over = Evidence { referrals_by_referrer_in_window: 11, ..clean() };
        check(super::velocity_referrer, VELOCITY_REFERRER, 30, &at_limit, &over);
    }

    #[test]
    fn same_ip() {
        let loud = Evidence { same_ip: true, same_ip_prefix: true, ..clean() };
        check(super::same_ip, SAME_IP, 15, &clean(), &loud);
    }

    #[test]
    fn velocity_ip() {
        let at_limit = Evidence { registrations_from_ip_in_window: 20, ..clean() };
        let over = Evidence { registrations_from_ip_in_window: 21, ..clean() };
        check(super::velocity_ip, VELOCITY_IP, 15, &at_limit, &over);
    }

    #[test]
    fn same_ip_prefix() {
        let loud = Evidence { same_ip_prefix: true, ..clean() };
        let same_address = Evidence { same_ip: true, ..loud.clone() };
        check(super::same_ip_prefix, SAME_IP_PREFIX, 10, &same_address, &loud);
    }

    #[test]
    fn table_codes_match_signals_and_are_unique_screaming_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for (code, _) in RULES {
            assert!(seen.insert(*code), "{code} listed twice");
            assert!(code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{code}");
        }
        // Everything fires on this evidence, so each rule's signal carries its table code.
        let everything = Evidence {
            referrer_id: "x".into(),
            referee_id: "x".into(),
            same_device: true,
            same_ip: false,
            same_ip_prefix: true,
            email_matches_referrer: false,
            email_matches_earlier_account: true,
            disposable_email: true,
            referrals_by_referrer_in_window: 99,
            registrations_from_device_in_window: 99,
            registrations_from_ip_in_window: 99,
            other_accounts_on_referee_device: 5,
            shared_payment_instrument: true,
            ring_size: 9,
            probabilistic_match_pct: Some(55),
            network_clicks_on_code: 99,
        };
        let with_variants = Evidence { same_ip: true, email_matches_referrer: true, ..everything.clone() };
        for (code, rule) in RULES {
            let s = fires(*rule, &everything).or_else(|| fires(*rule, &with_variants));
            assert_eq!(s.map(|s| s.code), Some(*code));
        }
        for code in ALWAYS_REJECT.iter().chain(AT_LEAST_REVIEW).chain(SOFT) {
            assert!(seen.contains(code), "{code} is not in RULES");
        }
    }

    #[test]
    fn windows_are_described_in_whole_units() {
        assert_eq!(describe_window(Duration::hours(24)), "24 hours");
        assert_eq!(describe_window(Duration::hours(1)), "1 hour");
        assert_eq!(describe_window(Duration::minutes(90)), "90 minutes");
        assert_eq!(describe_window(Duration::seconds(45)), "45 seconds");
    }
}
