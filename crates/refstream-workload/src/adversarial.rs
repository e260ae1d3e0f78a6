//! The labeled adversarial stream `refstream fraud-eval` measures the fraud rules with: a seeded
//! plan of accounts (legitimate users, a carrier NAT, an office network, fraud rings,
//! self-referrals, email-variant farms, device bursts and disposable-address farms), each
//! account's referral labeled with its kind. The same seed always plans the same stream.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

/// The label of an account's referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ring,
    SelfReferral,
    EmailVariant,
    DeviceBurst,
    Disposable,
    Legit,
    LegitNat,
    LegitOffice,
}

impl Kind {
    pub const FRAUD: [Kind; 5] = [Kind::Ring, Kind::SelfReferral, Kind::EmailVariant, Kind::DeviceBurst, Kind::Disposable];
    pub const LEGIT: [Kind; 3] = [Kind::Legit, Kind::LegitNat, Kind::LegitOffice];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ring => "fraud ring",
            Kind::SelfReferral => "self-referral (2nd account)",
            Kind::EmailVariant => "email dot/plus variants",
            Kind::DeviceBurst => "burst from one device",
            Kind::Disposable => "disposable email",
            Kind::Legit => "ordinary",
            Kind::LegitNat => "behind one NAT IP",
            Kind::LegitOffice => "office /24 network",
        }
    }

    pub fn is_fraud(self) -> bool {
        Kind::FRAUD.contains(&self)
    }
}

/// One planned account.
pub struct Account {
    pub id: String,
    pub referrer: Option<usize>,
    /// Waves are produced one after the other: a referee needs its referrer's code.
    pub wave: usize,
    pub at: DateTime<Utc>,
    pub device: String,
    pub ip: IpAddr,
    pub email: String,
    /// The label of this account's referral (organic accounts have none that counts).
    pub kind: Kind,
    pub deposits: Vec<(DateTime<Utc>, Decimal, String)>,
}

pub const DISPOSABLE: &[&str] =
    &["mailinator.com", "guerrillamail.com", "10minutemail.com", "yopmail.com", "trashmail.com", "sharklasers.com"];
pub const FREEMAIL: &[&str] = &["gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com", "web.de"];
pub const NAMES: &[&str] =
    &["alex", "maria", "li", "sam", "noor", "jan", "ana", "kofi", "yuki", "omar", "ines", "tom", "lea", "ravi", "eva"];

/// The planned stream.
pub struct Plan {
    pub rng: StdRng,
    pub run: String,
    pub base: DateTime<Utc>,
    pub accounts: Vec<Account>,
    /// Legitimate accounts that may refer others (wave at most 2).
    pub legit_referrers: Vec<usize>,
    pub nat: Vec<usize>,
    pub office: Vec<usize>,
}

impl Plan {
    pub fn id(&self) -> String {
        format!("fe-{}-{}", self.run, self.accounts.len())
    }

    pub fn device(&mut self) -> String {
        format!("dev-{:016x}", self.rng.random::<u64>())
    }

    pub fn card(&mut self) -> String {
        format!("card-{:016x}", self.rng.random::<u64>())
    }

    /// An address outside the ranges the NAT and the office use.
    pub fn public_ip(&mut self) -> IpAddr {
        let a = self.rng.random_range(11..=223u8);
        let a = if a == 100 || a == 198 { 101 } else { a };
        IpAddr::V4(Ipv4Addr::new(a, self.rng.random(), self.rng.random(), self.rng.random_range(1..=254)))
    }

    pub fn name(&mut self) -> String {
        let first = NAMES[self.rng.random_range(0..NAMES.len())];
        let last = NAMES[self.rng.random_range(0..NAMES.len())];
        format!("{first}.{last}{}", self.accounts.len())
    }

    pub fn email(&mut self) -> String {
        let domain = FREEMAIL[self.rng.random_range(0..FREEMAIL.len())];
        format!("{}@{domain}", self.name())
    }

    pub fn gmail(&mut self) -> String {
        format!("{}@gmail.com", self.name())
    }

    /// A qualifying deposit amount: 20.00 to 250.00.
    pub fn amount(&mut self) -> Decimal {
        Decimal::new(self.rng.random_range(2_000..=25_000), 2)
    }

    pub fn later(&mut self, at: DateTime<Utc>, min_minutes: i64, max_minutes: i64) -> DateTime<Utc> {
        at + Duration::minutes(self.rng.random_range(min_minutes..=max_minutes))
    }

    /// A fresh account with its own device, address, email and (with probability `deposit_pct`
    /// percent) one qualifying deposit with its own card.
    pub fn account(&mut self, kind: Kind, referrer: Option<usize>, at: DateTime<Utc>, deposit_pct: u32) -> Account {
        let wave = referrer.map_or(0, |r| self.accounts[r].wave + 1);
        let mut a = Account {
            id: self.id(),
            referrer,
            wave,
            at,
            device: self.device(),
            ip: self.public_ip(),
            email: self.email(),
            kind,
            deposits: Vec::new(),
        };
        if self.rng.random_range(0..100) < deposit_pct {
            let (when, amount, card) = (self.later(at, 10, 2 * 24 * 60), self.amount(), self.card());
            a.deposits.push((when, amount, card));
        }
        a
    }

    pub fn push(&mut self, a: Account) -> usize {
        self.accounts.push(a);
        self.accounts.len() - 1
    }

    pub fn organic_time(&mut self) -> DateTime<Utc> {
        self.later(self.base, 0, 12 * 24 * 60)
    }

    pub fn pick(&mut self, from: &[usize]) -> usize {
        from[self.rng.random_range(0..from.len())]
    }

    /// A legitimate referral by `referrer`, registering hours to days later.
    pub fn legit_referee(&mut self, kind: Kind, referrer: usize) -> usize {
        let at = self.later(self.accounts[referrer].at, 60, 6 * 24 * 60);
        let deposit_pct = 85;
        let a = self.account(kind, Some(referrer), at, deposit_pct);
        let i = self.push(a);
        if self.accounts[i].wave <= 2 {
            self.legit_referrers.push(i);
        }
        i
    }

    pub fn organic(&mut self, deposit_pct: u32) -> usize {
        let at = self.organic_time();
        let a = self.account(Kind::Legit, None, at, deposit_pct);
        self.push(a)
    }

    pub fn build(seed: u64, run: String, total: usize) -> Self {
        let mut p = Plan {
            rng: StdRng::seed_from_u64(seed),
            run,
            // The latest event is at most 12 + 3 × 6 + 5 days after the base, plus 3 days to a
            // deposit: everything stays in the past.
            base: Utc::now() - Duration::days(45),
            accounts: Vec::new(),
            legit_referrers: Vec::new(),
            nat: Vec::new(),
            office: Vec::new(),
        };
        let share = |pct: usize| total * pct / 100;

        // Legitimate organic users: the referrers of everyone else.
        for _ in 0..share(20).max(1) {
            let i = p.organic(50);
            p.legit_referrers.push(i);
        }
        // Fraud, sized by its share of the registrations.
        p.rings(share(6));
        p.self_referrals(share(6));
        p.email_farms(share(3));
        p.device_bursts(share(4));
        p.disposable_farms(share(3));
        // Legitimate users behind one carrier NAT address, and in one office network.
        let nat_ip = IpAddr::V4(Ipv4Addr::new(100, 64, 3, 7));
        for _ in 0..share(8) {
            let referrer =
                if !p.nat.is_empty() && p.rng.random_bool(0.5) { p.pick(&p.nat.clone()) } else { p.pick(&p.legit_referrers.clone()) };
            let i = p.legit_referee(Kind::LegitNat, referrer);
            p.accounts[i].ip = nat_ip;
            if p.accounts[i].wave <= 2 {
                p.nat.push(i);
            }
        }
        for _ in 0..share(5) {
            let referrer =
                if !p.office.is_empty() && p.rng.random_bool(0.7) { p.pick(&p.office.clone()) } else { p.pick(&p.legit_referrers.clone()) };
            let i = p.legit_referee(Kind::LegitOffice, referrer);
            p.accounts[i].ip = IpAddr::V4(Ipv4Addr::new(198, 18, 7, p.rng.random_range(1..=254)));
            if p.accounts[i].wave <= 2 {
                p.office.push(i);
            }
        }
        // Everyone else: ordinary referred users.
        while p.accounts.len() < total {
            let referrer = p.pick(&p.legit_referrers.clone());
            p.legit_referee(Kind::Legit, referrer);
        }
        p
    }

    /// Rings of 3–6 accounts referring each other, one cluster of shared identifiers. Half are
    /// phone farms: the accounts take turns on one or two devices and pay with one or two cards.
    /// Half have a device each and share only cards (learned at deposit time): one card, or two
    /// with the first account paying with both.
    pub fn rings(&mut self, budget: usize) {
        let mut used = 0;
        while used + 3 <= budget {
            let size = self.rng.random_range(3..=6).min(budget - used);
            used += size;
            let devices_shared = self.rng.random_bool(0.5);
            let devices: Vec<String> = (0..self.rng.random_range(1..=2)).map(|_| self.device()).collect();
            let cards: Vec<String> = (0..self.rng.random_range(1..=2)).map(|_| self.card()).collect();
            // Which card member m pays with; both patterns keep the whole ring one component.
            let card_of = |m: usize| if devices_shared { (m / 2) % cards.len() } else { m % cards.len() };
            let mut members: Vec<usize> = Vec::new();
            for m in 0..size {
                let (referrer, at) = match m {
                    0 => (None, self.organic_time()),
                    _ => {
                        let eligible: Vec<usize> = members.iter().copied().filter(|&i| self.accounts[i].wave < 2).collect();
                        let r = self.pick(&eligible);
                        (Some(r), self.later(self.accounts[r].at, 10, 2 * 24 * 60))
                    }
                };
                let mut a = self.account(Kind::Ring, referrer, at, 0);
                if devices_shared {
                    a.device = devices[m % devices.len()].clone();
                }
                let when = self.later(at, 30, 24 * 60);
                let amount = self.amount();
                a.deposits.push((when, amount, cards[card_of(m)].clone()));
                if m == 0 && !devices_shared && cards.len() == 2 {
                    let (when, amount) = (self.later(when, 5, 60), self.amount());
                    a.deposits.push((when, amount, cards[1].clone()));
                }
                members.push(self.push(a));
            }
        }
    }

    /// A person's first account and a second one referred by it, linked by the same device, a
    /// Gmail variant of the first email, or the first account's card.
    pub fn self_referrals(&mut self, budget: usize) {
        for n in 0..budget / 2 {
            let first = if self.rng.random_bool(0.5) {
                self.organic(100)
            } else {
                let r = self.pick(&self.legit_referrers.clone());
                self.legit_referee(Kind::Legit, r)
            };
            self.accounts[first].email = self.gmail();
            if self.accounts[first].deposits.is_empty() {
                let (when, amount, card) = (self.later(self.accounts[first].at, 10, 24 * 60), self.amount(), self.card());
                self.accounts[first].deposits.push((when, amount, card));
            }
            let at = self.later(self.accounts[first].at, 60, 5 * 24 * 60);
            let mut second = self.account(Kind::SelfReferral, Some(first), at, 80);
            second.ip = self.accounts[first].ip;
            match n % 3 {
                0 => second.device = self.accounts[first].device.clone(),
                1 => second.email = variant(&self.accounts[first].email, n),
                _ => {
                    let card = self.accounts[first].deposits[0].2.clone();
                    let (when, amount) = (self.later(at, 2 * 24 * 60 + 60, 3 * 24 * 60), self.amount());
                    second.deposits = vec![(when, amount, card)];
                }
            }
            self.push(second);
        }
    }

    /// A mailbox registered once for real, then 3–5 dot/plus variants of it referred by an
    /// accomplice.
    pub fn email_farms(&mut self, budget: usize) {
        let mut used = 0;
        while used + 5 <= budget {
            let base = self.organic(50);
            self.accounts[base].email = self.gmail();
            let accomplice = self.organic(50);
            let variants = self.rng.random_range(3..=5);
            used += 2 + variants;
            for v in 0..variants {
                let at = self.later(self.accounts[base].at.max(self.accounts[accomplice].at), 30, 3 * 24 * 60);
                let mut a = self.account(Kind::EmailVariant, Some(accomplice), at, 70);
                a.email = variant(&self.accounts[base].email, v + 1);
                self.push(a);
            }
        }
    }

    /// A promoter and 5–8 accounts registered from one device, minutes apart.
    pub fn device_bursts(&mut self, budget: usize) {
        let mut used = 0;
        while used + 6 <= budget {
            let promoter = self.organic(50);
            let size = self.rng.random_range(5..=8);
            used += 1 + size;
            let (device, ip) = (self.device(), self.public_ip());
            let mut at = self.later(self.accounts[promoter].at, 60, 6 * 60);
            for _ in 0..size {
                at = self.later(at, 1, 4);
                let mut a = self.account(Kind::DeviceBurst, Some(promoter), at, 60);
                a.device = device.clone();
                a.ip = ip;
                self.push(a);
            }
        }
    }

    /// A promoter referring 8–14 accounts with throwaway addresses within a day.
    pub fn disposable_farms(&mut self, budget: usize) {
        let mut used = 0;
        while used + 9 <= budget {
            let promoter = self.organic(50);
            let size = self.rng.random_range(8..=14);
            used += 1 + size;
            let start = self.accounts[promoter].at;
            for _ in 0..size {
                let at = self.later(start, 60, 20 * 60);
                let mut a = self.account(Kind::Disposable, Some(promoter), at, 60);
                let domain = DISPOSABLE[self.rng.random_range(0..DISPOSABLE.len())];
                a.email = format!("{:x}@{domain}", self.rng.random::<u32>());
                self.push(a);
            }
        }
    }
}

/// A variant of a Gmail address that reaches the same mailbox: dots moved, a +tag, or
/// googlemail.com.
pub fn variant(email: &str, n: usize) -> String {
    let (local, _) = email.split_once('@').unwrap_or((email, "gmail.com"));
    let plain: String = local.chars().filter(|c| *c != '.').collect();
    match n % 4 {
        0 => format!("{plain}+promo{n}@gmail.com"),
        1 => {
            let dotted: Vec<String> = plain.chars().map(String::from).collect();
            format!("{}@gmail.com", dotted.join("."))
        }
        2 => format!("{}@googlemail.com", local.to_uppercase()),
        _ => format!("{}.{}+{n}@gmail.com", &plain[..1], &plain[1..]),
    }
}

impl Kind {
    /// The kind's key in the JSON summary.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Ring => "fraud_ring",
            Kind::SelfReferral => "self_referral",
            Kind::EmailVariant => "email_variant",
            Kind::DeviceBurst => "device_burst",
            Kind::Disposable => "disposable_email",
            Kind::Legit => "legit",
            Kind::LegitNat => "legit_nat",
            Kind::LegitOffice => "legit_office",
        }
    }
}
