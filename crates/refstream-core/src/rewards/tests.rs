//! Grants by example, and over random referral graphs (with cycles) and random payment orders
//! with duplicates: multi-level never pays anyone twice for one referral nor around a cycle,
//! and under the reward keys every reward and milestone is paid exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Duration;
use proptest::prelude::*;

use super::*;
use crate::campaign::{Kyc, LevelReward, Milestone, RewardSpec, Tier};
use crate::money::Currency;

fn gbp(s: &str) -> Money {
    Money::new(s.parse().unwrap(), Currency::parse("GBP").unwrap())
}

fn campaign() -> Campaign {
    let bonus = Credit { kind: RewardKind::Bonus, wagering_multiple: Some(Decimal::new(10, 0)) };
    Campaign {
        id: "c".into(),
        rewards: vec![
            RewardSpec {
                reward_type: "referrer_bonus".into(),
                role: Role::Referrer,
                amount: gbp("10"),
                tiers: vec![
                    Tier { min_deposit: "20".parse().unwrap(), amount: gbp("10") },
                    Tier { min_deposit: "100".parse().unwrap(), amount: gbp("25") },
                ],
                credit: Credit::CASH,
            },
            RewardSpec { reward_type: "referee_bonus".into(), role: Role::Referee, amount: gbp("5"), tiers: vec![], credit: bonus },
        ],
        min_deposit: "20".parse().unwrap(),
        currency: Currency::parse("GBP").unwrap(),
        window: Duration::days(30),
        kyc: Kyc::default(),
        levels: vec![
            LevelReward { level: 2, amount: gbp("2"), credit: Credit::CASH },
            LevelReward { level: 3, amount: gbp("1"), credit: Credit::CASH },
        ],
        milestones: vec![Milestone { referrals: 3, amount: gbp("50"), credit: bonus }],
    }
}

fn parents(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(child, parent)| ((*child).to_owned(), (*parent).to_owned())).collect()
}

#[test]
fn a_referral_pays_its_tier_both_sides_the_upline_and_the_milestone_it_reaches() {
    let c = campaign();
    let up = upline("eve", "bob", &parents(&[("bob", "amy"), ("amy", "zed"), ("zed", "old")]), c.levels.len());
    assert_eq!(up, ["amy", "zed"], "two levels above the referrer, no more");
    let g = grants(&c, Paid { referrer: "bob", referee: "eve", upline: &up, deposit: "150".parse().unwrap(), rewarded_before: 2 });
    type Seen<'a> = (&'a str, &'a str, u8, Option<u32>, String, RewardKind, Option<Decimal>);
    let got: Vec<Seen<'_>> = g
        .iter()
        .map(|g| {
            (g.reward_type.as_str(), g.beneficiary.as_str(), g.level, g.milestone, g.amount.to_string(), g.kind, g.wagering_requirement)
        })
        .collect();
    let fifty = Some(Decimal::new(50, 0));
    assert_eq!(
        got,
        vec![
            ("referrer_bonus", "bob", 1, None, gbp("25").to_string(), RewardKind::Cash, None),
            ("referee_bonus", "eve", 1, None, gbp("5").to_string(), RewardKind::Bonus, fifty),
            ("level_2", "amy", 2, None, gbp("2").to_string(), RewardKind::Cash, None),
            ("level_3", "zed", 3, None, gbp("1").to_string(), RewardKind::Cash, None),
            ("milestone_3", "bob", 1, Some(3), gbp("50").to_string(), RewardKind::Bonus, Some(Decimal::new(500, 0))),
        ]
    );
    assert_eq!(g.iter().map(|g| g.amount.amount).sum::<Decimal>(), "83".parse().unwrap(), "what the payment costs the campaign");
    let fourth = grants(&c, Paid { referrer: "bob", referee: "eve", upline: &up, deposit: "20".parse().unwrap(), rewarded_before: 3 });
    assert!(fourth.iter().all(|g| g.milestone.is_none()), "the milestone is the 3rd referral's only");
}

#[test]
fn the_upline_stops_at_a_cycle_and_never_reaches_the_referee() {
    assert_eq!(upline("eve", "bob", &parents(&[("bob", "amy"), ("amy", "bob")]), 4), ["amy"]);
    assert_eq!(upline("eve", "bob", &parents(&[("bob", "eve")]), 4), Vec::<String>::new(), "the referee referred the referrer");
    assert_eq!(upline("eve", "bob", &parents(&[("bob", "bob")]), 4), Vec::<String>::new());
    assert_eq!(upline("eve", "bob", &parents(&[]), 4), Vec::<String>::new());
}

proptest! {
    /// Any referral graph, including cycles and self-referral: the upline follows the chain,
    /// holds no one twice, never the referee or the referrer, and no more than asked.
    #[test]
    fn multi_level_never_pays_twice_or_around_a_cycle(
        edges in proptest::collection::vec((0u8..8, 0u8..8), 0..16),
        referee in 0u8..8,
        referrer in 0u8..8,
        levels in 0usize..6,
    ) {
        let name = |u: u8| format!("u{u}");
        let parent_of: HashMap<String, String> = edges.iter().map(|(c, p)| (name(*c), name(*p))).collect();
        let (referee, referrer) = (name(referee), name(referrer));
        let up = upline(&referee, &referrer, &parent_of, levels);
        prop_assert!(up.len() <= levels);
        let distinct: BTreeSet<&String> = up.iter().collect();
        prop_assert_eq!(distinct.len(), up.len(), "someone twice: {:?}", up);
        prop_assert!(!up.contains(&referee) && !up.contains(&referrer));
        let mut child = &referrer;
        for a in &up {
            prop_assert_eq!(parent_of.get(child), Some(a), "follows the chain");
            child = a;
        }
        let mut c = campaign();
        c.levels = (0..levels).map(|i| LevelReward { level: u8::try_from(i + 2).unwrap(), amount: gbp("1"), credit: Credit::CASH }).collect();
        let g = grants(&c, Paid { referrer: &referrer, referee: &referee, upline: &up, deposit: "20".parse().unwrap(), rewarded_before: 0 });
        let level_beneficiaries: BTreeSet<&str> = g.iter().filter(|g| g.level > 1).map(|g| g.beneficiary.as_str()).collect();
        prop_assert_eq!(level_beneficiaries.len(), g.iter().filter(|g| g.level > 1).count());
        let types: BTreeSet<&str> = g.iter().map(|g| g.reward_type.as_str()).collect();
        prop_assert_eq!(types.len(), g.len(), "reward types are unique per referral");
    }

    /// Payments of one referrer's referrals in any order, each delivered up to three times:
    /// inserted as the engine does — own rewards under (referral, type), then milestones only for
    /// referrals whose own rewards went in, under (referrer, milestone) — every referral reward
    /// is credited once, and the milestone once exactly when the referrer reached it.
    #[test]
    fn rewards_and_milestones_are_paid_exactly_once_whatever_the_order(
        order in proptest::collection::vec((0u8..6, 1u8..4), 1..24),
    ) {
        let c = campaign();
        let mut by_key: BTreeMap<(u8, String), Grant> = BTreeMap::new();
        let mut milestones: BTreeSet<u32> = BTreeSet::new();
        for (referral, times) in order {
            for _ in 0..times {
                let rewarded_before = u32::try_from(by_key.keys().filter(|(_, t)| t == "referrer_bonus").count()).unwrap();
                let referee = format!("e{referral}");
                let (own, milestone): (Vec<Grant>, Vec<Grant>) =
                    grants(&c, Paid { referrer: "bob", referee: &referee, upline: &[], deposit: "20".parse().unwrap(), rewarded_before })
                        .into_iter()
                        .partition(|g| g.milestone.is_none());
                let mut inserted_own = false;
                for g in own {
                    if let std::collections::btree_map::Entry::Vacant(slot) = by_key.entry((referral, g.reward_type.clone())) {
                        inserted_own = true;
                        slot.insert(g);
                    }
                }
                // A milestone goes in only with its referral's own rewards, and conflicts on
                // (referrer, milestone) as well as (referral, type).
                for g in milestone.into_iter().filter(|_| inserted_own) {
                    let m = g.milestone.unwrap();
                    if milestones.insert(m) {
                        by_key.insert((referral, g.reward_type.clone()), g);
                    }
                }
            }
        }
        let referrals = by_key.keys().filter(|(_, t)| t == "referrer_bonus").count();
        prop_assert_eq!(by_key.keys().filter(|(_, t)| t == "referee_bonus").count(), referrals);
        let paid: Vec<&Grant> = by_key.values().filter(|g| g.milestone.is_some()).collect();
        prop_assert_eq!(paid.len(), usize::from(referrals >= 3), "milestone at the 3rd referral, once");
    }
}
