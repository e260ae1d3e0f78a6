//! `refstream fraud-eval`: produces a labeled adversarial stream through a running fleet, waits
//! until the fleet is quiet, joins the labels with what the fleet decided, and prints precision,
//! recall and false-positive rate per fraud kind.
//!
//! The stream (seeded, so a run is reproducible) mixes, over a simulated month of event time:
//! - legitimate users: organic sign-ups and the people they refer, each on their own device,
//!   email, card and address; among them a carrier NAT (hundreds of users behind ONE public IP,
//!   referring each other) and an office (one /24 network, colleagues referring colleagues);
//! - fraud rings: 3–6 accounts that refer each other and share devices and/or payment cards (half
//!   of the rings share devices, half only cards, which the scorer learns at deposit time);
//! - self-referrals through a second account: the same device, a Gmail dot/plus variant of the
//!   first account's email, or the first account's card;
//! - email-variant farms: dot/plus variants of one mailbox, referred by an accomplice;
//! - device bursts: 5–8 accounts registered from one device within minutes;
//! - disposable-email farms: one promoter referring 8–14 throwaway-address accounts in a day.
//!
//! A referral counts as flagged when the fleet held or rejected it (the scorer's latest
//! assessment, or the referral's status, is not an approval), and as paid when a reward was
//! credited for it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use clap::Parser;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use refstream_core::events::{DepositCompleted, UserRegistered};
use refstream_core::{Currency, DerivedId, Money, UserId};
use refstream_runtime::codec::encode;
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Parser)]
pub struct Args {
    /// Registrations in the stream (every kind scales with it).
    #[arg(long, default_value_t = 10_000)]
    registrations: usize,
    /// Seed of the stream's randomness.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How long to wait for the fleet to go quiet.
    #[arg(long, default_value_t = 1200)]
    timeout_secs: u64,
    /// Print one JSON object with every kind's numbers as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Start the fraud scorer this many seconds after the stream starts (the running one, if
    /// any, is stopped first): the lag case. Its pid goes to `.local/fraud-scorer.pid`.
    #[arg(long)]
    scorer_delay: Option<u64>,
}

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
    const FRAUD: [Kind; 5] = [Kind::Ring, Kind::SelfReferral, Kind::EmailVariant, Kind::DeviceBurst, Kind::Disposable];
    const LEGIT: [Kind; 3] = [Kind::Legit, Kind::LegitNat, Kind::LegitOffice];

    fn name(self) -> &'static str {
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

    fn is_fraud(self) -> bool {
        Kind::FRAUD.contains(&self)
    }
}

/// One planned account.
struct Account {
    id: String,
    referrer: Option<usize>,
    /// Waves are produced one after the other: a referee needs its referrer's code.
    wave: usize,
    at: DateTime<Utc>,
    device: String,
    ip: IpAddr,
    email: String,
    /// The label of this account's referral (organic accounts have none that counts).
    kind: Kind,
    deposits: Vec<(DateTime<Utc>, Decimal, String)>,
}

const DISPOSABLE: &[&str] = &["mailinator.com", "guerrillamail.com", "10minutemail.com", "yopmail.com", "trashmail.com", "sharklasers.com"];
const FREEMAIL: &[&str] = &["gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com", "web.de"];
const NAMES: &[&str] = &["alex", "maria", "li", "sam", "noor", "jan", "ana", "kofi", "yuki", "omar", "ines", "tom", "lea", "ravi", "eva"];

/// The planned stream.
struct Plan {
    rng: StdRng,
    run: String,
    base: DateTime<Utc>,
    accounts: Vec<Account>,
    /// Legitimate accounts that may refer others (wave at most 2).
    legit_referrers: Vec<usize>,
    nat: Vec<usize>,
    office: Vec<usize>,
}

impl Plan {
    fn id(&self) -> String {
        format!("fe-{}-{}", self.run, self.accounts.len())
    }

    fn device(&mut self) -> String {
        format!("dev-{:016x}", self.rng.random::<u64>())
    }

    fn card(&mut self) -> String {
        format!("card-{:016x}", self.rng.random::<u64>())
    }

    /// An address outside the ranges the NAT and the office use.
    fn public_ip(&mut self) -> IpAddr {
        let a = self.rng.random_range(11..=223u8);
        let a = if a == 100 || a == 198 { 101 } else { a };
        IpAddr::V4(Ipv4Addr::new(a, self.rng.random(), self.rng.random(), self.rng.random_range(1..=254)))
    }

    fn name(&mut self) -> String {
        let first = NAMES[self.rng.random_range(0..NAMES.len())];
        let last = NAMES[self.rng.random_range(0..NAMES.len())];
        format!("{first}.{last}{}", self.accounts.len())
    }

    fn email(&mut self) -> String {
        let domain = FREEMAIL[self.rng.random_range(0..FREEMAIL.len())];
        format!("{}@{domain}", self.name())
    }

    fn gmail(&mut self) -> String {
        format!("{}@gmail.com", self.name())
    }

    /// A qualifying deposit amount: 20.00 to 250.00.
    fn amount(&mut self) -> Decimal {
        Decimal::new(self.rng.random_range(2_000..=25_000), 2)
    }

    fn later(&mut self, at: DateTime<Utc>, min_minutes: i64, max_minutes: i64) -> DateTime<Utc> {
        at + Duration::minutes(self.rng.random_range(min_minutes..=max_minutes))
    }

    /// A fresh account with its own device, address, email and (with probability `deposit_pct`
    /// percent) one qualifying deposit with its own card.
    fn account(&mut self, kind: Kind, referrer: Option<usize>, at: DateTime<Utc>, deposit_pct: u32) -> Account {
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

    fn push(&mut self, a: Account) -> usize {
        self.accounts.push(a);
        self.accounts.len() - 1
    }

    fn organic_time(&mut self) -> DateTime<Utc> {
        self.later(self.base, 0, 12 * 24 * 60)
    }

    fn pick(&mut self, from: &[usize]) -> usize {
        from[self.rng.random_range(0..from.len())]
    }

    /// A legitimate referral by `referrer`, registering hours to days later.
    fn legit_referee(&mut self, kind: Kind, referrer: usize) -> usize {
        let at = self.later(self.accounts[referrer].at, 60, 6 * 24 * 60);
        let deposit_pct = 85;
        let a = self.account(kind, Some(referrer), at, deposit_pct);
        let i = self.push(a);
        if self.accounts[i].wave <= 2 {
            self.legit_referrers.push(i);
        }
        i
    }

    fn organic(&mut self, deposit_pct: u32) -> usize {
        let at = self.organic_time();
        let a = self.account(Kind::Legit, None, at, deposit_pct);
        self.push(a)
    }

    fn build(seed: u64, run: String, total: usize) -> Self {
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
    fn rings(&mut self, budget: usize) {
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
    fn self_referrals(&mut self, budget: usize) {
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
    fn email_farms(&mut self, budget: usize) {
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
    fn device_bursts(&mut self, budget: usize) {
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
    fn disposable_farms(&mut self, budget: usize) {
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
fn variant(email: &str, n: usize) -> String {
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

/// Produces without waiting for each delivery; waits for all of them in `flush`.
struct Sender {
    producer: FutureProducer,
    pending: Vec<DeliveryFuture>,
    sent: usize,
    /// When each event was handed to the producer: no earlier than the broker accepted it.
    sent_at: HashMap<Uuid, DateTime<Utc>>,
}

impl Sender {
    async fn send(&mut self, topic: &str, key: &str, payload: &[u8], event_id: Uuid) -> anyhow::Result<()> {
        self.sent_at.insert(event_id, Utc::now());
        loop {
            match self.producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
                Ok(delivery) => {
                    self.pending.push(delivery);
                    self.sent += 1;
                    if self.pending.len() >= 2_000 {
                        self.flush().await?;
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => self.flush().await?,
                Err((e, _)) => anyhow::bail!("produce to {topic}: {e}"),
            }
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        for delivery in self.pending.drain(..) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => anyhow::bail!("delivery failed: {e}"),
                Err(_) => anyhow::bail!("delivery cancelled (producer closed)"),
            }
        }
        Ok(())
    }
}

async fn wait_for_codes(pool: &PgPool, users: &[String], timeout: StdDuration) -> anyhow::Result<HashMap<String, String>> {
    let started = Instant::now();
    loop {
        let codes: Vec<(String, String)> =
            sqlx::query_as("SELECT user_id, code FROM referral_codes WHERE user_id = ANY($1)").bind(users).fetch_all(pool).await?;
        if codes.len() == users.len() {
            return Ok(codes.into_iter().collect());
        }
        anyhow::ensure!(started.elapsed() < timeout, "only {} of {} referrers got a referral code in time", codes.len(), users.len());
        tokio::time::sleep(StdDuration::from_millis(300)).await;
    }
}

/// outbox rows, events the scorer and the reward engine consumed, referrals, assessments, and
/// ReferralScored + ReviewDecided events announced.
type Progress = (i64, i64, i64, i64, i64, i64);

/// Counters that reach their expected values, and stay there, once the fleet is done.
async fn progress(pool: &PgPool) -> sqlx::Result<Progress> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM pending_payouts), \
                (SELECT count(*) FROM processed_events WHERE consumer = 'fraud-scorer'), \
                (SELECT count(*) FROM processed_events WHERE consumer = 'reward-engine'), \
                (SELECT count(*) FROM referrals), (SELECT count(*) FROM assessments), \
                (SELECT count(*) FROM assessment_history) + (SELECT count(*) FROM review_decisions)",
    )
    .fetch_one(pool)
    .await
}

/// Waits until the scorer consumed every referral and deposit, the reward engine every deposit
/// and score, and the outbox is empty, stable for three seconds.
async fn wait_quiet(pool: &PgPool, baseline: Progress, deposits: i64, timeout: StdDuration) -> anyhow::Result<()> {
    let (_, scorer0, engine0, referrals0, _, scores0) = baseline;
    let started = Instant::now();
    let mut last = None;
    let mut stable_since = Instant::now();
    loop {
        let p = progress(pool).await?;
        let (outbox, scorer, engine, referrals, assessed, scores) = p;
        let settled = outbox == 0
            && referrals == assessed
            && scorer - scorer0 >= (referrals - referrals0) + deposits
            && engine - engine0 >= deposits + (scores - scores0);
        if last != Some(p) {
            last = Some(p);
            stable_since = Instant::now();
        } else if settled && stable_since.elapsed() >= StdDuration::from_secs(3) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "fleet not quiet after {timeout:?}: outbox {outbox}, scorer consumed {scorer}, engine consumed {engine}, \
             referrals {referrals}, assessed {assessed}"
        );
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
}

/// What the fleet decided about one referral.
#[derive(sqlx::FromRow)]
struct Outcome {
    referee_id: String,
    status: String,
    decision: Option<String>,
    reasons: Option<Vec<String>>,
    /// A reward is credited and not reversed.
    paid: bool,
    clawed_back: bool,
    /// When the hold of its (first) reward ended; None when nothing was ever credited.
    hold_ended_at: Option<DateTime<Utc>>,
    /// The input event behind the first assessment revision that flagged it.
    flag_cause: Option<Uuid>,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    referrals: u64,
    flagged: u64,
    held: u64,
    rejected: u64,
    paid: u64,
    clawed_back: u64,
    paid_while_known: u64,
    flagged_after_payment: u64,
    unscored: u64,
}

impl Tally {
    fn add(&mut self, o: &Outcome, known_since: &HashMap<Uuid, DateTime<Utc>>) {
        self.referrals += 1;
        let scored_flag = o.decision.as_deref().is_some_and(|d| d != "APPROVE");
        let status_flag = matches!(o.status.as_str(), "held" | "rejected");
        if scored_flag || status_flag {
            self.flagged += 1;
            if o.paid {
                self.flagged_after_payment += 1;
            }
        }
        self.clawed_back += u64::from(o.clawed_back);
        // Credited although what flagged it had reached the broker before the hold ended.
        if let (Some(hold), Some(cause)) = (o.hold_ended_at, o.flag_cause) {
            if known_since.get(&cause).is_some_and(|at| *at < hold) {
                self.paid_while_known += 1;
            }
        }
        self.held += u64::from(o.status == "held");
        self.rejected += u64::from(o.status == "rejected");
        self.paid += u64::from(o.paid);
        self.unscored += u64::from(o.decision.is_none());
    }

    fn merge(&mut self, o: &Tally) {
        self.referrals += o.referrals;
        self.flagged += o.flagged;
        self.held += o.held;
        self.rejected += o.rejected;
        self.paid += o.paid;
        self.clawed_back += o.clawed_back;
        self.paid_while_known += o.paid_while_known;
        self.flagged_after_payment += o.flagged_after_payment;
        self.unscored += o.unscored;
    }
}

/// `n / d` as a fraction with three decimals, by integer arithmetic ("-" when `d` is 0).
fn ratio(n: u64, d: u64) -> String {
    if d == 0 {
        return "-".into();
    }
    let thousandths = (n * 1000 + d / 2) / d;
    format!("{}.{:03}", thousandths / 1000, thousandths % 1000)
}

/// `n / d` as a percentage with two decimals.
fn percent(n: u64, d: u64) -> String {
    if d == 0 {
        return "-".into();
    }
    let hundredths = (n * 10_000 + d / 2) / d;
    format!("{}.{:02}%", hundredths / 100, hundredths % 100)
}

pub async fn run(args: Args, settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(args.registrations >= 200, "--registrations must be at least 200 for every kind to appear");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(settings.database_options()?).await?;
    let producer: FutureProducer = client_config(settings)
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "100000")
        .create()?;
    let mut sender = Sender { producer, pending: Vec::new(), sent: 0, sent_at: HashMap::new() };
    let late_scorer = match args.scorer_delay {
        Some(delay) => Some(tokio::spawn(start_scorer_later(StdDuration::from_secs(delay)))),
        None => None,
    };
    let timeout = StdDuration::from_secs(args.timeout_secs);
    let run = format!("{:08x}", Uuid::new_v4().as_u128() as u32);
    let mut plan = Plan::build(args.seed, run.clone(), args.registrations);
    let started = Instant::now();
    let baseline = progress(&pool).await?;

    // Registrations, wave by wave (a referee needs its referrer's code), shuffled within a wave.
    let waves = plan.accounts.iter().map(|a| a.wave).max().unwrap_or(0);
    let mut codes: HashMap<String, String> = HashMap::new();
    let mut registration_events: Vec<(String, Uuid)> = Vec::new();
    for wave in 0..=waves {
        let mut members: Vec<usize> = (0..plan.accounts.len()).filter(|&i| plan.accounts[i].wave == wave).collect();
        members.shuffle(&mut plan.rng);
        let needed: Vec<String> = members
            .iter()
            .filter_map(|&i| plan.accounts[i].referrer)
            .map(|r| plan.accounts[r].id.clone())
            .filter(|id| !codes.contains_key(id))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !needed.is_empty() {
            sender.flush().await?;
            codes.extend(wait_for_codes(&pool, &needed, timeout).await?);
        }
        let topic = settings.topics.user_registered.clone();
        for i in members {
            let a = &plan.accounts[i];
            let e = UserRegistered {
                event_id: Uuid::new_v4(),
                user_id: UserId::parse(a.id.clone())?,
                occurred_at: a.at,
                referral_code: a.referrer.map(|r| codes[&plan.accounts[r].id].clone()),
                click_id: None,
                platform: ["ios", "android", "web"][i % 3].into(),
                device_id: Some(a.device.clone()),
                ip: Some(a.ip),
                email: Some(a.email.clone()),
                country: Some("DE".into()),
            };
            sender.send(&topic, &a.id, &encode(&e), e.event_id).await?;
            registration_events.push((a.id.clone(), e.event_id));
        }
        println!("wave {wave}: registrations produced ({} so far)", sender.sent);
    }
    // Deposits, in event-time order.
    let mut deposits: Vec<(DateTime<Utc>, usize, usize)> = Vec::new();
    for (i, a) in plan.accounts.iter().enumerate() {
        for (n, (at, _, _)) in a.deposits.iter().enumerate() {
            deposits.push((*at, i, n));
        }
    }
    deposits.sort();
    let topic = settings.topics.deposit_completed.clone();
    for &(_, i, n) in &deposits {
        let a = &plan.accounts[i];
        let (at, amount, card) = &a.deposits[n];
        let e = DepositCompleted {
            event_id: Uuid::new_v4(),
            deposit_id: format!("{}-d{n}", a.id),
            user_id: UserId::parse(a.id.clone())?,
            amount: Money::new(*amount, Currency::USD),
            payment_fingerprint: Some(card.clone()),
            occurred_at: *at,
        };
        sender.send(&topic, &a.id, &encode(&e), e.event_id).await?;
    }
    sender.flush().await?;
    if let Some(task) = late_scorer {
        task.await??;
    }
    let produced = started.elapsed();
    println!(
        "{} registrations and {} deposits produced in {produced:.1?}; waiting for the fleet to go quiet",
        plan.accounts.len(),
        deposits.len()
    );
    let deposit_count = i64::try_from(deposits.len())?;
    wait_quiet(&pool, baseline, deposit_count, timeout).await?;
    let settled = started.elapsed();

    let outcomes: Vec<Outcome> = sqlx::query_as(
        "SELECT r.referee_id, r.status, a.decision, a.reasons, \
                EXISTS (SELECT 1 FROM rewards w WHERE w.referral_id = r.referral_id AND w.reversed_at IS NULL) AS paid, \
                EXISTS (SELECT 1 FROM rewards w WHERE w.referral_id = r.referral_id AND w.reversal_reason = 'FRAUD') AS clawed_back, \
                (SELECT min(w.hold_ended_at) FROM rewards w WHERE w.referral_id = r.referral_id) AS hold_ended_at, \
                (SELECT h.cause_event_id FROM assessment_history h WHERE h.referral_id = r.referral_id AND h.decision <> 'APPROVE' \
                 ORDER BY h.revision LIMIT 1) AS flag_cause \
         FROM referrals r LEFT JOIN assessments a USING (referral_id) WHERE r.referee_id LIKE $1",
    )
    .bind(format!("fe-{run}-%"))
    .fetch_all(&pool)
    .await?;
    // When the input behind each possible cause reached the broker: a deposit's own event, or
    // for a ReferralAttributed the registration it derives from.
    let mut known_since: HashMap<Uuid, DateTime<Utc>> = sender.sent_at.clone();
    for (account, event) in &registration_events {
        if let (Ok(user), Some(at)) = (UserId::parse(account.clone()), sender.sent_at.get(event)) {
            known_since.insert(DerivedId::event("referral-attributed", DerivedId::referral(&user)), *at);
        }
    }
    let labels: HashMap<&str, Kind> = plan.accounts.iter().filter(|a| a.referrer.is_some()).map(|a| (a.id.as_str(), a.kind)).collect();
    let mut tallies: BTreeMap<Kind, Tally> = BTreeMap::new();
    let mut fraud_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for o in &outcomes {
        let Some(kind) = labels.get(o.referee_id.as_str()) else { continue };
        tallies.entry(*kind).or_default().add(o, &known_since);
        if kind.is_fraud() {
            for r in o.reasons.iter().flatten() {
                *fraud_reasons.entry(r.clone()).or_default() += 1;
            }
        }
    }
    let missing = labels.len().saturating_sub(outcomes.len());
    let sizes = Sizes { registrations: plan.accounts.len(), deposits: deposits.len(), produced, settled, missing };
    report(&tallies, &fraud_reasons, &sizes, args.seed, args.json)
}

/// What the run produced and how long it took.
struct Sizes {
    registrations: usize,
    deposits: usize,
    produced: StdDuration,
    settled: StdDuration,
    missing: usize,
}

impl Kind {
    /// The kind's key in the JSON summary.
    fn key(self) -> &'static str {
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

/// `n / d` as a JSON number with three decimals (null when `d` is 0), by integer arithmetic.
fn json_ratio(n: u64, d: u64) -> serde_json::Value {
    if d == 0 {
        return serde_json::Value::Null;
    }
    let thousandths = (n * 1000 + d / 2) / d;
    serde_json::from_str(&format!("{}.{:03}", thousandths / 1000, thousandths % 1000)).unwrap_or(serde_json::Value::Null)
}

const HEADER: [&str; 10] = ["referrals", "flagged", "held", "rejected", "paid", "clawed", "paid-known", "recall", "precision", "FPR"];

fn row(name: &str, t: &Tally, rates: [String; 3]) {
    println!(
        "{:<30} {:>9} {:>8} {:>6} {:>8} {:>6} {:>7} {:>10} {:>7} {:>10} {:>7}",
        name, t.referrals, t.flagged, t.held, t.rejected, t.paid, t.clawed_back, t.paid_while_known, rates[0], rates[1], rates[2]
    );
}

fn report(
    tallies: &BTreeMap<Kind, Tally>,
    fraud_reasons: &BTreeMap<String, u64>,
    sizes: &Sizes,
    seed: u64,
    json: bool,
) -> anyhow::Result<()> {
    let get = |k: Kind| tallies.get(&k).copied().unwrap_or_default();
    let mut legit = Tally::default();
    for k in Kind::LEGIT {
        legit.merge(&get(k));
    }
    let mut fraud = Tally::default();
    for k in Kind::FRAUD {
        fraud.merge(&get(k));
    }
    println!();
    println!(
        "== refstream fraud-eval (seed {seed}): {} registrations, {} deposits; produced in {:.1?}, fleet quiet after {:.1?} ==",
        sizes.registrations, sizes.deposits, sizes.produced, sizes.settled
    );
    println!(
        "flagged = held or rejected (the scorer's latest assessment or the referral's status); paid = a reward credited and not reversed;"
    );
    println!("clawed = a reward reversed as FRAUD after payment; paid-known = credited although the event that flagged it reached the broker before the reward's hold ended.");
    println!(
        "precision of a kind = its flagged referrals / (those + every flagged legitimate referral); FPR = flagged legitimate / legitimate."
    );
    println!();
    let head = |first: &str| {
        println!(
            "{:<30} {:>9} {:>8} {:>6} {:>8} {:>6} {:>7} {:>10} {:>7} {:>10} {:>7}",
            first, HEADER[0], HEADER[1], HEADER[2], HEADER[3], HEADER[4], HEADER[5], HEADER[6], HEADER[7], HEADER[8], HEADER[9]
        );
    };
    head("fraud kind");
    let fpr = ratio(legit.flagged, legit.referrals);
    for k in Kind::FRAUD {
        let t = get(k);
        row(k.name(), &t, [ratio(t.flagged, t.referrals), ratio(t.flagged, t.flagged + legit.flagged), fpr.clone()]);
    }
    row("all fraud", &fraud, [ratio(fraud.flagged, fraud.referrals), ratio(fraud.flagged, fraud.flagged + legit.flagged), fpr.clone()]);
    println!();
    head("legitimate");
    for k in Kind::LEGIT {
        let t = get(k);
        row(k.name(), &t, ["-".into(), "-".into(), ratio(t.flagged, t.referrals)]);
    }
    row("all legitimate", &legit, ["-".into(), "-".into(), fpr]);
    let (nat, office) = (get(Kind::LegitNat), get(Kind::LegitOffice));
    let shared_ip_users = nat.referrals + office.referrals;
    let shared_ip_flagged = nat.flagged + office.flagged;
    println!();
    println!(
        "legitimate shared-IP users held or rejected: {shared_ip_flagged} of {shared_ip_users} ({})",
        percent(shared_ip_flagged, shared_ip_users)
    );
    let mut reasons: Vec<(&String, &u64)> = fraud_reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = reasons.iter().take(8).map(|(r, n)| format!("{r} ({n})")).collect();
    println!("reasons on fraud referrals: {}", top.join(", "));
    let unscored = fraud.unscored + legit.unscored;
    if sizes.missing > 0 || unscored > 0 {
        println!("WARNING: {} labeled referrals were not attributed and {unscored} not scored", sizes.missing);
    }

    // The targets, as integers: recall ≥ 0.95 is 20 × flagged ≥ 19 × referrals.
    let recall_ok = |t: Tally| t.referrals > 0 && 20 * t.flagged >= 19 * t.referrals;
    let at_most_1pct = |t: Tally| 100 * t.flagged <= t.referrals;
    let checks = [
        ("recall on fraud rings ≥ 0.95", recall_ok(get(Kind::Ring))),
        ("recall on self-referrals ≥ 0.95", recall_ok(get(Kind::SelfReferral))),
        ("recall on device bursts ≥ 0.95", recall_ok(get(Kind::DeviceBurst))),
        ("fraud rings and self-referrals paid 0", get(Kind::Ring).paid + get(Kind::SelfReferral).paid == 0),
        ("fraud paid while known 0", fraud.paid_while_known == 0),
        ("NAT users flagged ≤ 1%", at_most_1pct(nat)),
        ("office users flagged ≤ 1%", at_most_1pct(office)),
    ];
    println!();
    for (what, ok) in &checks {
        println!("target {what}: {}", if *ok { "met" } else { "MISSED" });
    }
    if json {
        let mut kinds = serde_json::Map::new();
        for k in Kind::FRAUD.into_iter().chain(Kind::LEGIT) {
            let t = get(k);
            let mut o = serde_json::json!({
                "referrals": t.referrals, "flagged": t.flagged, "held": t.held, "rejected": t.rejected,
                "paid": t.paid, "clawed_back": t.clawed_back, "paid_while_known": t.paid_while_known,
            });
            if k.is_fraud() {
                o["recall"] = json_ratio(t.flagged, t.referrals);
                o["precision"] = json_ratio(t.flagged, t.flagged + legit.flagged);
            } else {
                o["fpr"] = json_ratio(t.flagged, t.referrals);
            }
            kinds.insert(k.key().to_owned(), o);
        }
        println!("{}", serde_json::json!({"seed": seed, "kinds": kinds}));
    }
    anyhow::ensure!(checks.iter().all(|(_, ok)| *ok), "fraud-eval: a target was missed");
    Ok(())
}

/// The lag case: stops the fleet's fraud scorer (its pid in `.local/fraud-scorer.pid`), waits
/// `delay`, and starts the `fraud-scorer` binary beside this one with the same environment.
async fn start_scorer_later(delay: StdDuration) -> anyhow::Result<()> {
    let pid_file = std::path::Path::new(".local/fraud-scorer.pid");
    if let Ok(pid) = std::fs::read_to_string(pid_file) {
        let pid = pid.trim().to_owned();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..150 {
            let alive = std::process::Command::new("kill").args(["-0", &pid]).stderr(std::process::Stdio::null()).status()?.success();
            if !alive {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        }
        println!("fraud scorer {pid} stopped; starting it again in {delay:?}");
    }
    tokio::time::sleep(delay).await;
    let exe = std::env::current_exe()?.with_file_name("fraud-scorer");
    std::fs::create_dir_all(".local/logs")?;
    let log = std::fs::File::create(".local/logs/fraud-scorer.log")?;
    let child = std::process::Command::new(&exe)
        // Any free port: the fleet's own scorer may still be releasing its port.
        .env("REFSTREAM__METRICS__LISTEN", "127.0.0.1:0")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", exe.display()))?;
    std::fs::write(pid_file, child.id().to_string())?;
    println!("fraud scorer started {delay:?} after the stream began (pid {})", child.id());
    Ok(())
}
