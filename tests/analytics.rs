//! The analytics worker end to end: the `analytics` binary against the devbroker and a real
//! Postgres. A small stream produced straight to the public topics, in reverse causal order
//! (rewards before the referrals they pay, a re-score before the first score, deposits before
//! signups), with duplicates and bad records, gives the hand-computed funnel; replaying from
//! offset zero, onto the same rows or onto emptied tables, leaves every row and number as it
//! was. And after the fleet has run the demo workload, the funnel's totals equal the numbers
//! `refstream summary` prints.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use analytics::report::{self, Filter, FunnelRow, Stages};
use chrono::{DateTime, Duration as Days, DurationRound, NaiveDate, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use refstream_core::campaign::Role;
use refstream_core::events::{
    AttributionSource, DepositCompleted, ReferralAttributed, ReferralClicked, ReferralScored, ReviewDecided, RewardGranted, RewardReversed,
    UserRegistered,
};
use refstream_core::lifecycle::Decision;
use refstream_core::links::Platform;
use refstream_core::{Currency, DerivedId, Money, UserId};
use refstream_e2e::{free_port, healthy, producer, spawn, worker_env, Broker, Fleet, Proc, TestDb};
use refstream_runtime::codec::encode;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn referral_id(referee: &str) -> Uuid {
    DerivedId::referral(&uid(referee))
}

fn money(amount: &str, currency: &str) -> Money {
    Money::new(amount.parse().unwrap(), Currency::parse(currency).unwrap())
}

/// Registration day 0 of the stream: a whole UTC day ten days ago (event times must not lie in
/// the future, and days must be known in advance).
fn base() -> DateTime<Utc> {
    (Utc::now() - Days::days(10)).duration_trunc(Days::days(1)).unwrap()
}

fn day(n: i64) -> NaiveDate {
    (base() + Days::days(n)).date_naive()
}

/// Day `d` at `h` o'clock.
fn at(d: i64, h: i64) -> DateTime<Utc> {
    base() + Days::days(d) + Days::hours(h)
}

struct Stream {
    /// (topic, key, payload), in the order they are produced.
    records: Vec<(&'static str, String, Vec<u8>)>,
}

impl Stream {
    fn push(&mut self, topic: &'static str, key: &str, payload: Vec<u8>) {
        self.records.push((topic, key.to_owned(), payload));
    }

    fn signup(&mut self, user: &str, platform: &str, when: DateTime<Utc>) -> Vec<u8> {
        let e = UserRegistered {
            event_id: Uuid::new_v4(),
            user_id: uid(user),
            occurred_at: when,
            referral_code: None,
            click_id: None,
            platform: platform.into(),
            device_id: None,
            ip: None,
            email: None,
            country: None,
        };
        let bytes = encode(&e);
        self.push("user-registered", user, bytes.clone());
        bytes
    }

    fn attributed(&mut self, referee: &str, referrer: &str, campaign: &str, registered: DateTime<Utc>) {
        let referral_id = referral_id(referee);
        let e = ReferralAttributed {
            event_id: DerivedId::event("referral-attributed", referral_id),
            referral_id,
            referrer_id: uid(referrer),
            referee_id: uid(referee),
            referral_code: format!("CODE-{referrer}"),
            campaign_id: campaign.into(),
            attribution: AttributionSource::Code,
            referee_registered_at: registered,
            occurred_at: registered,
        };
        self.push("referral-attributed", referee, encode(&e));
    }

    fn scored(&mut self, referee: &str, referrer: &str, decision: Decision, score: u8, revision: u32, when: DateTime<Utc>) -> Vec<u8> {
        let referral_id = referral_id(referee);
        let kind = if revision == 1 { "referral-scored".to_owned() } else { format!("referral-rescored:{revision}") };
        let e = ReferralScored {
            event_id: DerivedId::event(&kind, referral_id),
            referral_id,
            referrer_id: uid(referrer),
            referee_id: uid(referee),
            score,
            decision,
            reasons: if decision == Decision::Approve { vec![] } else { vec!["SAME_DEVICE".into()] },
            rule_version: "test".into(),
            occurred_at: when,
        };
        let bytes = encode(&e);
        self.push("referral-scored", referee, bytes.clone());
        bytes
    }

    fn review(&mut self, referee: &str, approve: bool, when: DateTime<Utc>) {
        let e = ReviewDecided {
            event_id: Uuid::new_v4(),
            referral_id: referral_id(referee),
            referee_id: uid(referee),
            approve,
            reviewer: "rev".into(),
            reason: "checked".into(),
            occurred_at: when,
        };
        self.push("review-decided", referee, encode(&e));
    }

    fn deposit(&mut self, user: &str, id: &str, amount: &str, currency: &str, when: DateTime<Utc>) {
        let e = DepositCompleted {
            event_id: Uuid::new_v4(),
            deposit_id: id.into(),
            user_id: uid(user),
            amount: money(amount, currency),
            payment_fingerprint: None,
            occurred_at: when,
        };
        self.push("deposit-completed", user, encode(&e));
    }

    #[allow(clippy::too_many_arguments)]
    fn granted(
        &mut self,
        referee: &str,
        beneficiary: &str,
        role: Role,
        amount: &str,
        currency: &str,
        deposit: &str,
        when: DateTime<Utc>,
    ) -> Vec<u8> {
        let referral_id = referral_id(referee);
        let reward_type = if role == Role::Referrer { "referrer_bonus" } else { "referee_bonus" };
        let reward_id = DerivedId::reward(referral_id, reward_type);
        let e = RewardGranted {
            event_id: DerivedId::event("reward-granted", reward_id),
            reward_id,
            referral_id,
            user_id: uid(beneficiary),
            role,
            reward_type: reward_type.into(),
            amount: money(amount, currency),
            // The reward's own campaign: the referral's counts when the referral is known.
            campaign_id: "reward-campaign".into(),
            qualifying_deposit_id: deposit.into(),
            granted_at: when,
            level: 1,
            milestone: None,
            kind: refstream_core::campaign::RewardKind::Cash,
            wagering_requirement: None,
        };
        let bytes = encode(&e);
        self.push("reward-granted", beneficiary, bytes.clone());
        bytes
    }

    fn reversed(&mut self, referee: &str, beneficiary: &str, amount: &str, currency: &str, deposit: &str, when: DateTime<Utc>) {
        let referral_id = referral_id(referee);
        let reward_id = DerivedId::reward(referral_id, "referrer_bonus");
        let e = RewardReversed {
            event_id: DerivedId::event("reward-reversed", reward_id),
            reward_id,
            referral_id,
            user_id: uid(beneficiary),
            amount: money(amount, currency),
            reason: "REFUND".into(),
            deposit_id: deposit.into(),
            reversed_at: when,
            assessment_event_id: None,
        };
        self.push("reward-reversed", beneficiary, encode(&e));
    }

    fn click(&mut self, click_id: &str, referrer: &str, campaign: &str, platform: Platform, when: DateTime<Utc>) -> Vec<u8> {
        let e = ReferralClicked {
            event_id: Uuid::new_v4(),
            click_id: click_id.into(),
            code: format!("CODE-{referrer}"),
            referrer_id: uid(referrer),
            campaign_id: campaign.into(),
            platform,
            from_sdk: false,
            expired: false,
            occurred_at: when,
        };
        let bytes = encode(&e);
        self.push("referral-clicked", referrer, bytes.clone());
        bytes
    }
}

/// The stream, in reverse causal order, with its duplicates and bad records.
///
/// Referrers alice (ios) and bob (android) and organic olga (web) sign up on days 0 and 1.
/// Campaign spring: rita (day 1, ios; APPROVE; 25 USD after 2 h; referrer 10 USD + referee
/// 5 USD), ravi (day 1, android; APPROVE then re-scored REVIEW; 50 USD after 10 h), rosa (day 1,
/// ios; REVIEW, a reviewer approves; 10 USD after 1 h, 30 USD after 5 h, 40 USD after 6 h;
/// referrer 10 USD, reversed), remy (day 2, web; REJECT; 100 EUR). Campaign default: ruth (day 2,
/// ios; REVIEW, a reviewer rejects; 20 USD after a day), rex (day 2, android; not scored), rhea
/// (day 2, ios; APPROVE; 60 USD after 3 h; referrer 8 EUR).
fn stream() -> Stream {
    let mut s = Stream { records: Vec::new() };
    // Rewards and their reversal first: their referrals are not known yet.
    let rita_reward = s.granted("rita", "alice", Role::Referrer, "10.00", "USD", "rita-1", at(1, 13));
    s.granted("rita", "rita", Role::Referee, "5.00", "USD", "rita-1", at(1, 13));
    s.reversed("rosa", "alice", "10.00", "USD", "rosa-2", at(2, 9));
    s.granted("rosa", "alice", Role::Referrer, "10.00", "USD", "rosa-2", at(1, 16));
    s.granted("rhea", "bob", Role::Referrer, "8.00", "EUR", "rhea-1", at(2, 14));
    // Scores, the re-score before the first score.
    let ravi_rescore = s.scored("ravi", "alice", Decision::Review, 45, 2, at(1, 21));
    s.scored("ravi", "alice", Decision::Approve, 5, 1, at(1, 11));
    s.scored("rita", "alice", Decision::Approve, 0, 1, at(1, 10));
    s.scored("rosa", "alice", Decision::Review, 50, 1, at(1, 10));
    s.scored("remy", "bob", Decision::Reject, 95, 1, at(2, 11));
    s.scored("ruth", "bob", Decision::Review, 60, 1, at(2, 10));
    s.scored("rhea", "bob", Decision::Approve, 10, 1, at(2, 11));
    // Deposits before the signups and referrals.
    s.deposit("rita", "rita-1", "25.00", "USD", at(1, 12));
    s.deposit("ravi", "ravi-1", "50.00", "USD", at(1, 21));
    s.deposit("rosa", "rosa-1", "10.00", "USD", at(1, 11));
    s.deposit("rosa", "rosa-3", "40.00", "USD", at(1, 16));
    s.deposit("rosa", "rosa-2", "30.00", "USD", at(1, 15));
    s.deposit("remy", "remy-1", "100.00", "EUR", at(2, 12));
    s.deposit("ruth", "ruth-1", "20.00", "USD", at(3, 10));
    s.deposit("rhea", "rhea-1", "60.00", "USD", at(2, 14));
    s.deposit("olga", "olga-1", "100.00", "USD", at(1, 12));
    // Reviewers' verdicts.
    s.review("rosa", true, at(1, 11));
    s.review("ruth", false, at(2, 12));
    // Attributions.
    for (referee, referrer, campaign, registered) in [
        ("rita", "alice", "spring", at(1, 10)),
        ("ravi", "alice", "spring", at(1, 11)),
        ("rosa", "alice", "spring", at(1, 10)),
        ("remy", "bob", "spring", at(2, 11)),
        ("ruth", "bob", "default", at(2, 10)),
        ("rex", "bob", "default", at(2, 12)),
        ("rhea", "bob", "default", at(2, 11)),
    ] {
        s.attributed(referee, referrer, campaign, registered);
    }
    // Two bad records on olga's partition, before her signup: the partition must flow on.
    s.push("user-registered", "olga", b"garbage, not Avro".to_vec());
    let nameless = UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: uid("olga"),
        occurred_at: at(1, 8),
        referral_code: None,
        click_id: None,
        platform: String::new(),
        device_id: None,
        ip: None,
        email: None,
        country: None,
    };
    s.push("user-registered", "olga", encode(&nameless));
    // Signups.
    let rita_signup = s.signup("rita", "iOS", at(1, 10));
    s.signup("ravi", "android", at(1, 11));
    s.signup("rosa", "iPhone", at(1, 10));
    s.signup("remy", "web", at(2, 11));
    s.signup("ruth", "ios", at(2, 10));
    s.signup("rex", "android", at(2, 12));
    s.signup("rhea", "ios", at(2, 11));
    s.signup("olga", "web", at(1, 8));
    s.signup("alice", "ios", at(0, 9));
    s.signup("bob", "android", at(0, 9));
    // Clicks.
    let c1 = s.click("c1", "alice", "spring", Platform::Ios, at(1, 9));
    s.click("c2", "alice", "spring", Platform::Android, at(1, 10));
    s.click("c3", "bob", "spring", Platform::Web, at(2, 10));
    s.click("c4", "bob", "default", Platform::Ios, at(2, 9));
    // Duplicates: the same records again (same event ids), and the same natural keys under new
    // event ids, later, with other content (a second registration of rita on the web, a deposit
    // id reused, a click id reused by another referrer, on another partition): the earliest wins.
    for (topic, key, bytes) in [
        ("user-registered", "rita", rita_signup),
        ("reward-granted", "alice", rita_reward),
        ("referral-scored", "ravi", ravi_rescore),
        ("referral-clicked", "alice", c1),
    ] {
        s.push(topic, key, bytes);
    }
    s.signup("rita", "web", at(1, 12));
    s.deposit("rosa", "rosa-2", "99.00", "USD", at(1, 17));
    s.click("c1", "bob", "default", Platform::Web, at(2, 9));
    s
}

fn stages(v: [i64; 10]) -> Stages {
    let [clicks, signups, attributed, approved, held, rejected, first_deposits, rewards, reversals, rewarded] = v;
    Stages { clicks, signups, attributed, approved, held, rejected, first_deposits, rewards, reversals, rewarded }
}

fn row(campaign: &str, d: i64, platform: &str, v: [i64; 10]) -> (String, NaiveDate, String, Stages) {
    (campaign.into(), day(d), platform.into(), stages(v))
}

fn rows_of(rows: &[FunnelRow]) -> Vec<(String, NaiveDate, String, Stages)> {
    rows.iter().map(|r| (r.campaign_id.clone(), r.day, r.platform.clone(), r.stages.clone())).collect()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// (currency, granted, reversed, net).
type Money4 = (String, Decimal, Decimal, Decimal);

fn money_of(rows: &[report::MoneyRow]) -> Vec<Money4> {
    rows.iter().map(|m| (m.currency.clone(), m.granted, m.reversed, m.net)).collect()
}

/// The next offset of every partition written to: (topic, partition) -> last offset + 1.
type Ends = BTreeMap<(String, i32), i64>;

/// True when the analytics worker's durable progress has reached every end in `ends`.
async fn caught_up(pool: &PgPool, ends: &Ends) -> bool {
    let progress: Vec<(String, i32, i64)> =
        sqlx::query_as("SELECT topic, partition, next_offset FROM consumer_progress WHERE consumer = 'analytics'")
            .fetch_all(pool)
            .await
            .unwrap();
    ends.iter().all(|((topic, partition), end)| progress.iter().any(|(t, p, next)| t == topic && p == partition && next >= end))
}

async fn wait_caught_up(pool: &PgPool, ends: &Ends, worker: &Proc, timeout: Duration) {
    let started = Instant::now();
    while !caught_up(pool, ends).await {
        assert!(started.elapsed() < timeout, "analytics did not catch up within {timeout:?}: {}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn start_analytics(db: &TestDb, bootstrap: &str, args: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let p = spawn("analytics", args, &worker_env(&db.url, bootstrap, port));
    let started = Instant::now();
    while !healthy(port) {
        assert!(started.elapsed() < Duration::from_secs(60), "analytics not ready: {}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    (p, port)
}

fn stop(p: &mut Proc) {
    let status = p.terminate(Duration::from_secs(20)).unwrap_or_else(|| panic!("analytics did not stop: {}", p.log_text()));
    assert!(status.success(), "analytics exited with {status}: {}", p.log_text());
}

/// Every analytics fact row, as text, table by table.
async fn facts(pool: &PgPool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for table in analytics::replay::TABLES {
        let rows: String = sqlx::query_scalar(&format!("SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM {table} t"))
            .fetch_one(pool)
            .await
            .unwrap();
        out.push((table.to_owned(), rows));
    }
    out
}

/// The full report, the spring campaign's, the day-2 iOS slice, and the leaderboard, as JSON.
async fn everything(pool: &PgPool) -> serde_json::Value {
    let spring = Filter { campaign_id: Some("spring".into()), ..Filter::default() };
    let slice = Filter { from: Some(day(2)), platform: Some("ios".into()), ..Filter::default() };
    serde_json::json!({
        "all": report::report(pool, &Filter::default()).await.unwrap(),
        "spring": report::report(pool, &spring).await.unwrap(),
        "slice": report::report(pool, &slice).await.unwrap(),
        "leaders": report::leaderboard(pool, &Filter::default(), 10).await.unwrap(),
    })
}

/// Produces `records` in order, one at a time; returns where they landed.
async fn produce_all(p: &FutureProducer, records: &[(&'static str, String, Vec<u8>)]) -> Ends {
    let mut ends = Ends::new();
    for (topic, key, payload) in records {
        let delivery = p
            .send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(20))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        let (partition, offset) = (delivery.partition, delivery.offset);
        let end = ends.entry((topic.to_string(), partition)).or_default();
        *end = (*end).max(offset + 1);
    }
    ends
}

#[tokio::test(flavor = "multi_thread")]
async fn the_funnel_from_a_shuffled_stream_and_a_replay_from_offset_zero_gives_the_same_numbers() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let (mut worker, _) = start_analytics(&db, &broker.bootstrap, &[]);
    let p = producer(&broker.bootstrap);
    let s = stream();
    let ends = produce_all(&p, &s.records).await;
    wait_caught_up(&db.pool, &ends, &worker, Duration::from_secs(90)).await;

    // Bad records are dead letters naming their reason; olga's partition flowed on past them.
    let letters: Vec<(String, String)> = sqlx::query_as(
        "SELECT reason_label, reason FROM dead_letters WHERE consumer = 'analytics' AND topic = 'user-registered' ORDER BY \"offset\"",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].0, "unknown_framing", "{letters:?}");
    assert_eq!(letters[1].0, "invalid", "{letters:?}");
    assert!(letters[1].1.contains("platform"), "{letters:?}");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM analytics_signups WHERE user_id = 'olga'").await, 1);
    // Duplicates changed nothing: rita is still an iOS signup of day 1, rosa-2 still 30 USD,
    // click c1 still alice's.
    let rita: (String, NaiveDate) =
        sqlx::query_as("SELECT platform, day FROM analytics_signups WHERE user_id = 'rita'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(rita, ("ios".to_owned(), day(1)));
    let rosa2: Decimal =
        sqlx::query_scalar("SELECT amount FROM analytics_deposits WHERE deposit_id = 'rosa-2'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(rosa2, dec("30.00"));
    assert_eq!(db.scalar_i64("SELECT count(*) FROM analytics_clicks WHERE click_id = 'c1' AND referrer_id = 'alice'").await, 1);
    // The re-score won although it was read first.
    let ravi: String = sqlx::query_scalar("SELECT decision FROM analytics_scores WHERE referral_id = $1")
        .bind(referral_id("ravi"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ravi, "REVIEW");

    // The funnel, by hand.
    let all = report::report(&db.pool, &Filter::default()).await.unwrap();
    //                                   clk sign attr appr held rej  1st  rwd  rev  rwdd
    let want = vec![
        row("none", 0, "android", [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        row("none", 0, "ios", [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        row("none", 1, "web", [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        row("spring", 1, "android", [1, 1, 1, 0, 1, 0, 1, 0, 0, 0]),
        row("spring", 1, "ios", [1, 2, 2, 2, 0, 0, 2, 3, 1, 2]),
        row("default", 2, "android", [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]),
        row("default", 2, "ios", [1, 2, 2, 1, 0, 1, 2, 1, 0, 1]),
        row("spring", 2, "web", [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]),
    ];
    assert_eq!(rows_of(&all.rows), want);
    assert_eq!(all.totals, stages([4, 10, 7, 3, 1, 2, 5, 4, 1, 3]));
    let conversion: Vec<(String, String, Option<Decimal>)> =
        all.conversion.iter().map(|c| (c.from.clone(), c.to.clone(), c.percent)).collect();
    assert_eq!(
        conversion,
        vec![
            ("clicks".into(), "signups".into(), Some(dec("250.00"))),
            ("signups".into(), "attributed".into(), Some(dec("70.00"))),
            ("attributed".into(), "approved".into(), Some(dec("42.86"))),
            ("attributed".into(), "first_deposits".into(), Some(dec("71.43"))),
            ("first_deposits".into(), "rewarded".into(), Some(dec("60.00"))),
        ]
    );
    // First qualifying deposits after registration: rita 2 h, rhea 3 h, rosa 5 h (her 10 USD is
    // below the threshold), ravi 10 h, ruth 24 h (exactly the threshold); remy paid in EUR.
    assert_eq!(all.time_to_first_deposit_p50_secs, Some(5 * 3600));
    assert_eq!(all.time_to_first_deposit_p90_secs, Some(24 * 3600));
    // Scored: rita, ravi, rosa, remy, ruth, rhea. Flagged: ravi, rosa, remy, ruth. Rejected:
    // remy (scorer), ruth (reviewer).
    assert_eq!(all.fraud_flag_percent, Some(dec("66.67")));
    assert_eq!(all.rejection_percent, Some(dec("33.33")));
    assert_eq!(
        money_of(&all.money),
        vec![("EUR".into(), dec("8.00"), dec("0"), dec("8.00")), ("USD".into(), dec("25.00"), dec("10.00"), dec("15.00"))]
    );

    let spring = report::report(&db.pool, &Filter { campaign_id: Some("spring".into()), ..Filter::default() }).await.unwrap();
    assert_eq!(spring.totals, stages([3, 4, 4, 2, 1, 1, 3, 3, 1, 2]));
    assert_eq!((spring.time_to_first_deposit_p50_secs, spring.time_to_first_deposit_p90_secs), (Some(5 * 3600), Some(10 * 3600)));
    assert_eq!((spring.fraud_flag_percent, spring.rejection_percent), (Some(dec("75.00")), Some(dec("25.00"))));
    assert_eq!(money_of(&spring.money), vec![("USD".into(), dec("25.00"), dec("10.00"), dec("15.00"))]);

    let slice = Filter { from: Some(day(2)), to: Some(day(2)), platform: Some("ios".into()), ..Filter::default() };
    let slice = report::report(&db.pool, &slice).await.unwrap();
    assert_eq!(rows_of(&slice.rows), vec![row("default", 2, "ios", [1, 2, 2, 1, 0, 1, 2, 1, 0, 1])]);
    assert_eq!(money_of(&slice.money), vec![("EUR".into(), dec("8.00"), dec("0"), dec("8.00"))]);
    let nothing = report::report(&db.pool, &Filter { to: Some(day(-1)), ..Filter::default() }).await.unwrap();
    assert_eq!((nothing.rows.len(), nothing.totals.clone()), (0, Stages::default()));
    assert!(nothing.conversion.iter().all(|c| c.percent.is_none()) && nothing.time_to_first_deposit_p50_secs.is_none());

    let leaders = report::leaderboard(&db.pool, &Filter::default(), 10).await.unwrap();
    let got: Vec<(String, i64, i64, Vec<Money4>)> =
        leaders.iter().map(|l| (l.referrer_id.clone(), l.attributed, l.rewarded, money_of(&l.earned))).collect();
    assert_eq!(
        got,
        vec![
            ("alice".into(), 3, 2, vec![("USD".into(), dec("20.00"), dec("10.00"), dec("10.00"))]),
            ("bob".into(), 4, 1, vec![("EUR".into(), dec("8.00"), dec("0"), dec("8.00"))]),
        ]
    );
    assert_eq!(report::leaderboard(&db.pool, &Filter::default(), 1).await.unwrap().len(), 1);
    let spring_leaders =
        report::leaderboard(&db.pool, &Filter { campaign_id: Some("spring".into()), ..Filter::default() }, 10).await.unwrap();
    assert_eq!(
        spring_leaders.iter().map(|l| (l.referrer_id.as_str(), l.attributed, l.rewarded)).collect::<Vec<_>>(),
        [("alice", 3, 2), ("bob", 1, 0)]
    );

    // Replay from offset zero onto the same rows: every record is applied again, nothing changes.
    let before = everything(&db.pool).await;
    let rows_before = facts(&db.pool).await;
    let applied = db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer = 'analytics'").await;
    let other = db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer <> 'analytics'").await;
    stop(&mut worker);
    let (mut worker, _) = start_analytics(&db, &broker.bootstrap, &["--replay-from-start"]);
    assert!(worker.log_text().contains("replaying from the first record"), "{}", worker.log_text());
    wait_caught_up(&db.pool, &ends, &worker, Duration::from_secs(90)).await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer = 'analytics'").await,
        applied,
        "every event applied again"
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM dead_letters WHERE consumer = 'analytics'").await, 2, "no letter twice");
    assert_eq!(everything(&db.pool).await, before);
    assert_eq!(facts(&db.pool).await, rows_before);

    // Rebuild from empty tables: the same rows, the same numbers.
    stop(&mut worker);
    let (worker, _) = start_analytics(&db, &broker.bootstrap, &["--rebuild"]);
    wait_caught_up(&db.pool, &ends, &worker, Duration::from_secs(90)).await;
    assert_eq!(db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer = 'analytics'").await, applied);
    assert_eq!(everything(&db.pool).await, before);
    assert_eq!(facts(&db.pool).await, rows_before);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer <> 'analytics'").await, other, "nobody else's rows");
    drop(worker);
}

/// After the fleet has processed the demo workload, the funnel's totals equal what
/// `refstream summary` reads from the other workers' tables.
#[tokio::test(flavor = "multi_thread")]
async fn after_the_demo_workload_the_funnel_totals_equal_the_summary() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let fleet = Fleet::start(&db.url, &broker.bootstrap);
    let (analytics, _) = start_analytics(&db, &broker.bootstrap, &[]);
    let env = worker_env(&db.url, &broker.bootstrap, free_port());
    let mut demo = spawn("refstream", &["demo", "--seed-users", "12", "--wave-size", "30", "--waves", "2"], &env);
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "refstream demo failed: {}", demo.log_text());

    let pool = db.pool.clone();
    let summary = || async {
        let n = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
        let credited: Vec<(String, Decimal)> = sqlx::query_as(
            "SELECT currency::text, sum(amount) FROM ledger_entries WHERE account LIKE 'user:%' GROUP BY currency ORDER BY currency",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        (
            n("SELECT count(*) FROM users").await.unwrap(),
            n("SELECT count(*) FROM referrals").await.unwrap(),
            n("SELECT count(*) FROM rewards").await.unwrap(),
            n("SELECT count(*) FROM rewards WHERE reversed_at IS NOT NULL").await.unwrap(),
            credited.into_iter().map(|(c, d)| (c.trim().to_owned(), d.normalize())).collect::<Vec<_>>(),
        )
    };
    let funnel = || async {
        let r = report::report(&pool, &Filter::default()).await.unwrap();
        let t = &r.totals;
        (
            t.signups,
            t.attributed,
            t.rewards,
            t.reversals,
            r.money.iter().map(|m| (m.currency.clone(), m.net.normalize())).collect::<Vec<_>>(),
        )
    };
    // The relay publishes what the demo's last wait saw committed; analytics reads it shortly after.
    let started = Instant::now();
    loop {
        let outbox = db.scalar_i64("SELECT count(*) FROM outbox").await;
        let (s, f) = (summary().await, funnel().await);
        if outbox == 0 && s == f {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the funnel does not match the summary: {f:?} vs {s:?}: {}",
            analytics.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (users, referrals, rewards, reversed, credited) = summary().await;
    assert!(
        users > 50 && referrals > 50 && rewards > 10 && reversed >= 1 && !credited.is_empty(),
        "a real workload: {users} {referrals} {rewards} {reversed}"
    );

    // Replaying the analytics worker from offset zero leaves every number as it was.
    let before =
        (report::report(&pool, &Filter::default()).await.unwrap(), report::leaderboard(&pool, &Filter::default(), 20).await.unwrap());
    let before = serde_json::to_value(&before).unwrap();
    let rows_before = facts(&pool).await;
    let ends = topic_ends(&broker.bootstrap);
    let mut analytics = analytics;
    stop(&mut analytics);
    let (analytics, _) = start_analytics(&db, &broker.bootstrap, &["--replay-from-start"]);
    wait_caught_up(&pool, &ends, &analytics, Duration::from_secs(90)).await;
    let after =
        (report::report(&pool, &Filter::default()).await.unwrap(), report::leaderboard(&pool, &Filter::default(), 20).await.unwrap());
    assert_eq!(serde_json::to_value(&after).unwrap(), before);
    assert_eq!(facts(&pool).await, rows_before);
    assert_eq!(summary().await, funnel().await);
    drop(analytics);
    drop(fleet);
}

/// The end offset of every non-empty partition of the analytics worker's topics.
fn topic_ends(bootstrap: &str) -> Ends {
    let client: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", format!("watch-{}", Uuid::new_v4())).create().unwrap();
    let mut ends = Ends::new();
    for topic in analytics::topics(&refstream_e2e::test_settings().topics) {
        let md = client.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        for p in md.topics()[0].partitions() {
            let (_, high) = client.fetch_watermarks(&topic, p.id(), Duration::from_secs(10)).unwrap();
            if high > 0 {
                ends.insert((topic.clone(), p.id()), high);
            }
        }
    }
    ends
}
