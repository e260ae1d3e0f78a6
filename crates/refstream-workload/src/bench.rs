//! The bench's workload shape: many referrers, tens of thousands of referees each with their own
//! device, address, email and card (no fraud signal fires), registered over a few days of event
//! time, and one qualifying deposit per referee. Deterministic for a run id.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Duration, Utc};
use refstream_core::events::{DepositCompleted, UserRegistered};
use refstream_core::{Currency, Money, UserId};
use rust_decimal::Decimal;
use uuid::Uuid;

/// One account of the bench.
#[derive(Debug, Clone)]
pub struct Person {
    pub id: String,
    /// Index of the referrer in [`Shape::referrers`].
    pub referrer: Option<usize>,
    pub at: DateTime<Utc>,
    pub n: u32,
}

/// The planned population.
#[derive(Debug, Clone)]
pub struct Shape {
    pub referrers: Vec<Person>,
    pub referees: Vec<Person>,
}

impl Shape {
    /// `referrers` organic users and `referees` referred round-robin by them (at most
    /// `referees / referrers + 1` each, spread over days so no velocity limit is reached).
    pub fn new(run: &str, referrers: usize, referees: usize, base: DateTime<Utc>) -> Self {
        let person = |kind: &str, i: usize, referrer: Option<usize>, at: DateTime<Utc>| Person {
            id: format!("bn-{run}-{kind}{i}"),
            referrer,
            at,
            n: u32::try_from(i).unwrap_or(u32::MAX),
        };
        let referrers: Vec<Person> = (0..referrers).map(|i| person("r", i, None, base)).collect();
        let referees = (0..referees)
            .map(|j| {
                let r = j % referrers.len();
                // The k-th referee of a referrer registers k × 2 days after the referrer.
                let k = i64::try_from(j / referrers.len()).unwrap_or(0);
                person("e", j, Some(r), base + Duration::days(2 * k + 1) + Duration::seconds(i64::try_from(j % 3600).unwrap_or(0)))
            })
            .collect();
        Self { referrers, referees }
    }
}

/// An address of its own for account `n` of a kind (10.x.y.z for referees, 172.16+ for referrers).
fn address(n: u32, referee: bool) -> IpAddr {
    let [_, b, c, d] = n.to_be_bytes();
    if referee {
        IpAddr::V4(Ipv4Addr::new(10, b, c, d))
    } else {
        IpAddr::V4(Ipv4Addr::new(172, 16 + (b % 16), c, d))
    }
}

/// The registration of `p`, with its referrer's code when it has one.
pub fn registration(p: &Person, code: Option<String>) -> anyhow::Result<UserRegistered> {
    let referee = p.referrer.is_some();
    Ok(UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse(p.id.clone())?,
        occurred_at: p.at,
        referral_code: code,
        click_id: None,
        platform: ["ios", "android", "web"][(p.n % 3) as usize].into(),
        device_id: Some(format!("dev-{}", p.id)),
        ip: Some(address(p.n, referee)),
        email: Some(format!("{}@example.com", p.id)),
        country: Some("GB".into()),
    })
}

/// A qualifying first deposit of `p` (50.00 USD with its own card, an hour after registering).
pub fn deposit(p: &Person) -> anyhow::Result<DepositCompleted> {
    Ok(DepositCompleted {
        event_id: Uuid::new_v4(),
        deposit_id: format!("{}-d", p.id),
        user_id: UserId::parse(p.id.clone())?,
        amount: Money::new(Decimal::new(5000, 2), Currency::USD),
        payment_fingerprint: Some(format!("card-{}", p.id)),
        occurred_at: p.at + Duration::hours(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_referee_has_its_own_signals_and_no_referrer_reaches_the_velocity_limit() {
        let base = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let s = Shape::new("t", 10, 95, base);
        let mut per_referrer = std::collections::BTreeMap::<usize, Vec<DateTime<Utc>>>::new();
        for e in &s.referees {
            per_referrer.entry(e.referrer.unwrap()).or_default().push(e.at);
        }
        for times in per_referrer.values() {
            for w in times.windows(2) {
                assert!(w[1] - w[0] >= Duration::hours(24), "referrals of one referrer are days apart");
            }
        }
        let ips: std::collections::BTreeSet<_> = s.referees.iter().map(|p| registration(p, None).unwrap().ip).collect();
        assert_eq!(ips.len(), 95);
    }
}
