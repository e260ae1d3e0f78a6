//! The pure decisions of the analytics worker: how a signup's platform is named, which of two
//! records about one referral wins (the same total order the database upserts use, so the winner
//! never depends on the order they were read in), whether a deposit can qualify, and how a
//! conversion is turned into a percentage. No I/O; every function is deterministic.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use refstream_core::events::{ReferralScored, ReviewDecided};
use refstream_core::lifecycle::Decision;
use refstream_core::{Campaign, Money, Qualification};
use rust_decimal::{Decimal, RoundingStrategy};

/// The campaign a signup counts under when nobody referred it.
pub const NO_CAMPAIGN: &str = "none";

/// A signup's platform as the report names it: `ios`, `android`, `desktop` or `web` when the
/// signup service's text reads as one of them (`iPhone` is `ios`), else that text trimmed and
/// lower-cased.
pub fn platform(raw: &str) -> String {
    match refstream_core::links::Platform::parse(raw) {
        Some(p) => p.as_str().to_owned(),
        None => raw.trim().to_lowercase(),
    }
}

/// How strict a decision is: a re-assessment never loosens, so the strictest is the latest.
pub fn strictness(d: Decision) -> i16 {
    match d {
        Decision::Approve => 0,
        Decision::Review => 1,
        Decision::Reject => 2,
    }
}

/// The order in which scores of one referral supersede each other: strictness, then event
/// time, then score, then event id (the columns `analytics_scores`' upsert compares, in order).
pub fn score_order(a: &ReferralScored, b: &ReferralScored) -> Ordering {
    (strictness(a.decision), a.occurred_at, a.score, a.event_id).cmp(&(strictness(b.decision), b.occurred_at, b.score, b.event_id))
}

/// The order in which a reviewer's verdicts on one referral supersede each other: event time,
/// then event id.
pub fn review_order(a: &ReviewDecided, b: &ReviewDecided) -> Ordering {
    (a.occurred_at, a.event_id).cmp(&(b.occurred_at, b.event_id))
}

/// True when a deposit of `amount` is in the campaign's currency and at least its threshold:
/// whether it is inside the referral's window is decided when the report reads it.
pub fn qualifying_amount(campaign: &Campaign, amount: &Money) -> bool {
    // The window is left out here: a deposit "made at registration" is always inside it.
    let at: DateTime<Utc> = DateTime::<Utc>::UNIX_EPOCH;
    campaign.qualifies(amount, at, at) == Qualification::Qualifies
}

/// `part` as a percentage of `whole`, rounded half away from zero to two decimals; `None` when
/// `whole` is zero.
pub fn percent(part: i64, whole: i64) -> Option<Decimal> {
    if whole == 0 {
        return None;
    }
    let p = Decimal::from(part) * Decimal::ONE_HUNDRED / Decimal::from(whole);
    let mut p = p.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    p.rescale(2);
    Some(p)
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use refstream_core::{Currency, UserId};
    use uuid::Uuid;

    use super::*;

    fn scored(decision: Decision, secs: i64, score: u8) -> ReferralScored {
        ReferralScored {
            event_id: Uuid::new_v4(),
            referral_id: Uuid::nil(),
            referrer_id: UserId::parse("a").unwrap(),
            referee_id: UserId::parse("b").unwrap(),
            score,
            decision,
            reasons: vec![],
            rule_version: "v".into(),
            occurred_at: DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap(),
        }
    }

    #[test]
    fn platforms_are_named_like_clicks() {
        assert_eq!(platform("iOS"), "ios");
        assert_eq!(platform(" iPhone "), "ios");
        assert_eq!(platform("ANDROID"), "android");
        assert_eq!(platform("web"), "web");
        assert_eq!(platform(" SmartTV "), "smarttv");
    }

    #[test]
    fn the_strictest_score_wins_whatever_its_time_and_the_reading_order() {
        let approve_late = scored(Decision::Approve, 100, 0);
        let review_early = scored(Decision::Review, 0, 45);
        let reject = scored(Decision::Reject, 50, 90);
        let all = [approve_late, review_early, reject.clone()];
        // Every reading order gives the same winner.
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let winner = order.iter().map(|i| &all[*i]).max_by(|a, b| score_order(a, b)).unwrap();
            assert_eq!(winner, &reject);
        }
        // Same strictness: the later one.
        let (a, b) = (scored(Decision::Review, 0, 45), scored(Decision::Review, 10, 40));
        assert_eq!(score_order(&a, &b), Ordering::Less);
    }

    #[test]
    fn the_later_review_wins() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let review = |approve: bool, secs: i64| ReviewDecided {
            event_id: Uuid::new_v4(),
            referral_id: Uuid::nil(),
            referee_id: UserId::parse("b").unwrap(),
            approve,
            reviewer: "r".into(),
            reason: String::new(),
            occurred_at: at + Duration::seconds(secs),
        };
        let (approve, reject) = (review(true, 0), review(false, 5));
        assert_eq!(review_order(&approve, &reject), Ordering::Less);
    }

    #[test]
    fn deposits_qualify_by_currency_and_threshold() {
        let c = Campaign::default_referrer_bonus();
        let usd = |s: &str| Money::new(s.parse().unwrap(), Currency::USD);
        assert!(qualifying_amount(&c, &usd("20.00")));
        assert!(!qualifying_amount(&c, &usd("19.9999")));
        assert!(!qualifying_amount(&c, &Money::new(Decimal::new(50, 0), Currency::parse("EUR").unwrap())));
    }

    #[test]
    fn percentages_round_half_away_from_zero_to_two_decimals() {
        assert_eq!(percent(1, 0), None);
        assert_eq!(percent(0, 3), Some(Decimal::ZERO));
        assert_eq!(percent(2, 3).unwrap().to_string(), "66.67");
        assert_eq!(percent(1, 3).unwrap().to_string(), "33.33");
        assert_eq!(percent(1, 8).unwrap().to_string(), "12.50");
        assert_eq!(percent(5, 2).unwrap().to_string(), "250.00");
        assert_eq!(percent(1, 1).unwrap().to_string(), "100.00");
    }
}
