//! `refstream demo`: drives a realistic workload through a running fleet — waves of users
//! referring each other (referral chains), qualifying and too-small deposits, the same
//! DepositCompleted delivered several times, a second qualifying deposit, an unknown code, a
//! refund, and a few fraud cases (a ring sharing a phone and a card, self-referrals through a
//! second account) — waits until the pipeline is quiet, and prints the summary.

use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use refstream_core::events::{DepositCompleted, DepositReversed, ReversalReason, UserRegistered};
use refstream_core::{Currency, Money, UserId};
use refstream_runtime::codec::encode;
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Parser)]
pub struct Args {
    /// Users in the first, organic wave; each later wave is referred by the one before.
    #[arg(long, default_value_t = 40)]
    seed_users: usize,
    /// Referred users per wave.
    #[arg(long, default_value_t = 120)]
    wave_size: usize,
    /// Waves of referred users (chains are this deep).
    #[arg(long, default_value_t = 2)]
    waves: usize,
    /// How long to wait for the pipeline to go quiet.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Seed of the workload's randomness.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

struct Driver {
    producer: FutureProducer,
    settings: Settings,
    rng: StdRng,
    run: String,
    sent: usize,
}

impl Driver {
    async fn send(&mut self, topic: &str, key: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.producer
            .send(FutureRecord::to(topic).key(key).payload(&payload), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
        self.sent += 1;
        Ok(())
    }

    async fn register(&mut self, user: &str, code: Option<String>) -> anyhow::Result<()> {
        let n: u32 = self.rng.random_range(1..250);
        let ip = format!("198.51.{}.{n}", self.rng.random_range(0..200));
        self.register_as(user, code, &format!("device-{}", Uuid::new_v4()), &ip, &format!("{user}@example.com")).await
    }

    async fn register_as(&mut self, user: &str, code: Option<String>, device: &str, ip: &str, email: &str) -> anyhow::Result<()> {
        let e = UserRegistered {
            event_id: Uuid::new_v4(),
            user_id: UserId::parse(user)?,
            occurred_at: Utc::now(),
            referral_code: code,
            click_id: None,
            platform: ["ios", "android", "web"][self.rng.random_range(0..3)].into(),
            device_id: Some(device.into()),
            ip: Some(ip.parse()?),
            email: Some(email.into()),
            country: Some("DE".into()),
        };
        let topic = self.settings.topics.user_registered.clone();
        self.send(&topic, user, encode(&e)).await
    }

    async fn deposit(&mut self, user: &str, deposit_id: &str, amount: &str, copies: usize) -> anyhow::Result<()> {
        self.deposit_with(user, deposit_id, amount, copies, &format!("card-{}", Uuid::new_v4())).await
    }

    async fn deposit_with(&mut self, user: &str, deposit_id: &str, amount: &str, copies: usize, card: &str) -> anyhow::Result<()> {
        let e = DepositCompleted {
            event_id: Uuid::new_v4(),
            deposit_id: deposit_id.into(),
            user_id: UserId::parse(user)?,
            amount: Money::new(amount.parse::<Decimal>()?, Currency::USD),
            payment_fingerprint: Some(card.into()),
            occurred_at: Utc::now(),
        };
        let topic = self.settings.topics.deposit_completed.clone();
        let bytes = encode(&e);
        for _ in 0..copies {
            self.send(&topic, user, bytes.clone()).await?;
        }
        Ok(())
    }
}

async fn codes_of(pool: &PgPool, users: &[String], timeout: Duration) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    loop {
        let codes: Vec<(String, String)> =
            sqlx::query_as("SELECT user_id, code FROM referral_codes WHERE user_id = ANY($1)").bind(users).fetch_all(pool).await?;
        if codes.len() == users.len() {
            return Ok(codes.into_iter().map(|(_, c)| c).collect());
        }
        anyhow::ensure!(started.elapsed() < timeout, "only {} of {} users got a referral code in time", codes.len(), users.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A few fraud cases the scorer must catch: a ring of four accounts on one phone paying with
/// one card (rejected), a second account registered with a Gmail variant of the first one's
/// address and one on the first one's phone (held for review). Returns the deposits sent.
async fn fraud_cases(d: &mut Driver, pool: &PgPool, timeout: Duration) -> anyhow::Result<i64> {
    let run = d.run.clone();
    let (leader, first, twin) = (format!("demo-{run}-ring-0"), format!("demo-{run}-sam"), format!("demo-{run}-kim"));
    let phone = format!("phone-{run}-farm");
    d.register_as(&leader, None, &phone, "203.0.113.50", &format!("{leader}@example.com")).await?;
    d.register_as(&first, None, &format!("phone-{run}-sam"), "203.0.113.60", &format!("sam.lee.{run}@gmail.com")).await?;
    d.register_as(&twin, None, &format!("phone-{run}-kim"), "203.0.113.70", &format!("kim.{run}@example.com")).await?;
    let mut codes = Vec::new();
    for user in [&leader, &first, &twin] {
        codes.extend(codes_of(pool, std::slice::from_ref(user), timeout).await?);
    }
    let mut deposits = 0;
    for i in 1..=3 {
        let member = format!("demo-{run}-ring-{i}");
        d.register_as(&member, Some(codes[0].clone()), &phone, "203.0.113.50", &format!("{member}@example.com")).await?;
    }
    for i in 0..=3 {
        let member = format!("demo-{run}-ring-{i}");
        d.deposit_with(&member, &format!("{member}-dep-1"), "50.00", 1, &format!("card-{run}-farm")).await?;
        deposits += 1;
    }
    let variant = format!("demo-{run}-sam-2");
    d.register_as(&variant, Some(codes[1].clone()), &format!("phone-{run}-sam-2"), "198.51.7.7", &format!("samlee.{run}+bonus@gmail.com"))
        .await?;
    let second = format!("demo-{run}-kim-2");
    d.register_as(&second, Some(codes[2].clone()), &format!("phone-{run}-kim"), "203.0.113.70", &format!("kim.other.{run}@example.com"))
        .await?;
    for user in [variant, second] {
        d.deposit(&user, &format!("{user}-dep-1"), "30.00", 1).await?;
        deposits += 1;
    }
    Ok(deposits)
}

/// Waits until every input was consumed, no payout waits to settle and the outbox is empty,
/// stable for two seconds.
pub async fn wait_quiet(pool: &PgPool, expected_deposits: i64, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = None;
    let mut stable_since = Instant::now();
    loop {
        let snapshot: (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM deposits), (SELECT count(*) FROM outbox) + (SELECT count(*) FROM pending_payouts), (SELECT count(*) FROM referrals), \
             (SELECT count(*) FROM assessments), (SELECT count(*) FROM processed_events)",
        )
        .fetch_one(pool)
        .await?;
        let settled = snapshot.0 >= expected_deposits && snapshot.1 == 0 && snapshot.2 == snapshot.3;
        if last != Some(snapshot) {
            last = Some(snapshot);
            stable_since = Instant::now();
        } else if settled && stable_since.elapsed() >= Duration::from_secs(2) {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < timeout, "pipeline not quiet after {timeout:?}: {snapshot:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: Args, settings: &Settings) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(settings.database_options()?).await?;
    let producer: FutureProducer = client_config(settings).set("enable.idempotence", "true").set("linger.ms", "5").create()?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut d = Driver {
        producer,
        settings: settings.clone(),
        rng: StdRng::seed_from_u64(args.seed),
        run: format!("{:x}", Uuid::new_v4().as_u128() as u32),
        sent: 0,
    };
    let started = Instant::now();

    let mut wave: Vec<String> = (0..args.seed_users).map(|i| format!("demo-{}-w0-{i}", d.run)).collect();
    for u in wave.clone() {
        d.register(&u, None).await?;
    }
    let mut deposits_expected = 0_i64;
    let mut duplicate_deliveries = 0;
    for w in 1..=args.waves {
        let codes = codes_of(&pool, &wave, timeout).await?;
        let next: Vec<String> = (0..args.wave_size).map(|i| format!("demo-{}-w{w}-{i}", d.run)).collect();
        for u in &next {
            let code = codes[d.rng.random_range(0..codes.len())].clone();
            d.register(u, Some(code)).await?;
        }
        for (i, u) in next.iter().enumerate() {
            match i % 10 {
                // Too small to qualify.
                0 => d.deposit(u, &format!("{u}-dep-1"), "5.00", 1).await?,
                // Never deposits.
                1 => continue,
                // The same DepositCompleted delivered three times.
                2 | 3 => {
                    d.deposit(u, &format!("{u}-dep-1"), "25.00", 3).await?;
                    duplicate_deliveries += 2;
                }
                // A second qualifying deposit later.
                4 => {
                    d.deposit(u, &format!("{u}-dep-1"), "40.00", 1).await?;
                    d.deposit(u, &format!("{u}-dep-2"), "60.00", 1).await?;
                    deposits_expected += 1;
                }
                _ => d.deposit(u, &format!("{u}-dep-1"), "20.00", 1).await?,
            }
            deposits_expected += 1;
        }
        wave = next;
    }
    deposits_expected += fraud_cases(&mut d, &pool, timeout).await?;
    // Users arriving with codes nobody owns.
    for i in 0..5 {
        d.register(&format!("demo-{}-stray-{i}", d.run), Some("ZZZZ9999".into())).await?;
    }
    // One refund of a paid referral's deposit.
    if let Some(u) = wave.get(5) {
        wait_quiet(&pool, deposits_expected, timeout).await?;
        let r = DepositReversed {
            event_id: Uuid::new_v4(),
            deposit_id: format!("{u}-dep-1"),
            user_id: UserId::parse(u.clone())?,
            reason: ReversalReason::Refund,
            occurred_at: Utc::now(),
        };
        let topic = settings.topics.deposit_reversed.clone();
        d.send(&topic, u, encode(&r)).await?;
    }
    d.producer.flush(Duration::from_secs(10))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_quiet(&pool, deposits_expected, timeout).await?;
    println!();
    println!("== refstream demo: {} records produced in {:.1?} ==", d.sent, started.elapsed());
    println!("duplicate deliveries sent  {duplicate_deliveries} (suppressed by event-id dedupe)");
    crate::summary::print(&pool).await
}
