//! Campaigns as data, end to end: two campaign files applied with `refstream campaigns apply`
//! (a two-sided GBP campaign with deposit tiers for GB web users, an iOS launch campaign in USD)
//! while the fleet runs (the four workers as processes, the devbroker, Postgres). Each referral
//! is bound to the campaign version in force at its referee's registration and pays exactly
//! what those terms say; a changed file is a new version that binds only later registrations; a
//! paused campaign binds nobody new; everything else falls to the default campaign; the ledger
//! balances per currency.

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use refstream_core::events::{DepositCompleted, UserRegistered};
use refstream_core::{Currency, Money, UserId};
use refstream_e2e::{audit, bin, eventually, produce, producer, Broker, Fleet, TestDb};
use refstream_runtime::codec::encode;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

fn registered(user: &str, code: &str, country: &str, platform: &str, n: u8) -> UserRegistered {
    UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse(user).unwrap(),
        occurred_at: Utc::now(),
        referral_code: Some(code.to_owned()),
        click_id: None,
        platform: platform.into(),
        device_id: Some(format!("device-{user}")),
        ip: Some(format!("198.51.100.{n}").parse().unwrap()),
        email: Some(format!("{user}@mail{n}.example")),
        country: Some(country.into()),
    }
}

fn deposit(user: &str, amount: &str, currency: &str) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::new_v4(),
        deposit_id: format!("dep-{user}"),
        user_id: UserId::parse(user).unwrap(),
        amount: Money::new(amount.parse().unwrap(), Currency::parse(currency).unwrap()),
        payment_fingerprint: Some(format!("card-{user}")),
        occurred_at: Utc::now(),
    }
}

fn cli(db_url: &str, args: &[&str]) -> String {
    // Changes in force at once: the test registers users right after applying them.
    let out = Command::new(bin("refstream"))
        .args(args)
        .env("REFSTREAM__DATABASE__URL", db_url)
        .env("REFSTREAM__CAMPAIGN__CHANGES_IN_FORCE_AFTER_MS", "0")
        .output()
        .expect("run refstream");
    assert!(out.status.success(), "refstream {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn campaign_file(name: &str) -> String {
    format!("{}/../deploy/campaigns/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A campaign file with `text`, in a fresh temporary path.
fn temp_campaign(text: &str) -> std::path::PathBuf {
    let file = std::env::temp_dir().join(format!("campaign-{}.toml", Uuid::new_v4().simple()));
    std::fs::write(&file, text).unwrap();
    file
}

/// Registers `user` (nobody referred it) and returns its referral code once minted.
async fn register_referrer(db: &TestDb, p: &rdkafka::producer::FutureProducer, user: &str, country: &str, platform: &str, n: u8) -> String {
    produce(p, "user-registered", user, &encode(&registered(user, "NONE0000", country, platform, n))).await;
    db.minted_code(user).await
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Registers `users` (referred by ana) and waits until each has its referral.
async fn register_all(db: &TestDb, p: &rdkafka::producer::FutureProducer, code: &str, users: &[(&str, &str, &str, u8)]) {
    for (user, country, platform, n) in users {
        produce(p, "user-registered", user, &encode(&registered(user, code, country, platform, *n))).await;
    }
    let names: Vec<String> = users.iter().map(|u| u.0.to_owned()).collect();
    let pool = db.pool.clone();
    eventually(Duration::from_secs(180), "the referrals attributed and approved", || {
        let (pool, names) = (pool.clone(), names.clone());
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM referrals WHERE referee_id = ANY($1) AND status = 'eligible'")
                .bind(&names)
                .fetch_one(&pool)
                .await
                .unwrap();
            n == i64::try_from(names.len()).unwrap()
        }
    })
    .await;
}

/// (campaign, version, reason) of `referee`'s referral.
async fn binding(pool: &PgPool, referee: &str) -> (String, i32, String) {
    sqlx::query_as("SELECT campaign_id, terms_version, campaign_reason FROM referrals WHERE referee_id = $1")
        .bind(referee)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every reward as (beneficiary, type, amount, currency, campaign, version), sorted.
async fn rewards(pool: &PgPool) -> Vec<(String, String, String, String, String, i32)> {
    let rows: Vec<(String, String, Decimal, String, String, i32)> = sqlx::query_as(
        "SELECT beneficiary_id, reward_type, amount, currency::text, campaign_id, terms_version FROM rewards ORDER BY beneficiary_id, reward_type",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(b, t, a, c, id, v)| (b, t, a.normalize().to_string(), c, id, v)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_campaigns_live_at_once_pay_exactly_their_terms_by_the_version_in_force() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _fleet = Fleet::start(&db.url, &broker.bootstrap);
    let p = producer(&broker.bootstrap);

    // A bad file is refused, naming the field; nothing is recorded.
    let bad = temp_campaign(&std::fs::read_to_string(campaign_file("gb-web-tiers.toml")).unwrap().replace("\"25.00\"", "\"-3\""));
    let out = Command::new(bin("refstream"))
        .args(["campaigns", "apply", bad.to_str().unwrap()])
        .env("REFSTREAM__DATABASE__URL", &db.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rewards[0].tiers[1].amount"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cli(&db.url, &["campaigns", "apply", &campaign_file("gb-web-tiers.toml")]).contains("version 1 recorded"));
    assert!(cli(&db.url, &["campaigns", "apply", &campaign_file("ios-launch.toml")]).contains("version 1 recorded"));
    assert!(cli(&db.url, &["campaigns", "apply", &campaign_file("ios-launch.toml")]).contains("unchanged"));

    let code = register_referrer(&db, &p, "ana", "GB", "web", 1).await;

    // GB web (tiers), iOS (launch), US web (default); gb-late registers now and deposits after
    // the campaign changed.
    register_all(
        &db,
        &p,
        &code,
        &[
            ("gb-small", "GB", "web", 11),
            ("gb-big", "GB", "web", 12),
            ("gb-late", "GB", "web", 13),
            ("io-one", "US", "ios", 14),
            ("io-low", "US", "ios", 15),
            ("us-web", "US", "web", 16),
        ],
    )
    .await;
    // A second referrer for the French friends (ana's ten referrals in a day are her limit).
    let bea = register_referrer(&db, &p, "bea", "FR", "web", 2).await;
    register_all(&db, &p, &bea, &[("eu-web", "FR", "web", 19), ("eu-low", "FR", "web", 20)]).await;
    // Deposits in EUR qualify for the (USD) default campaign through the rate table.
    assert!(cli(&db.url, &["fx", "set", "EUR", "USD", "1.10"]).contains("1 EUR = 1.10 USD"));
    assert_eq!(binding(&db.pool, "gb-small").await.0, "gb-web-tiers");
    assert_eq!(binding(&db.pool, "gb-small").await.1, 1);
    assert_eq!(binding(&db.pool, "io-one").await.0, "ios-launch");
    let (default_id, version, reason) = binding(&db.pool, "us-web").await;
    assert_eq!((default_id.as_str(), version), ("default", 0));
    assert!(reason.contains("default"), "{reason}");

    // The GB campaign changes (the friend now gets 7.00) and iOS launch is paused.
    let changed = temp_campaign(
        &std::fs::read_to_string(campaign_file("gb-web-tiers.toml")).unwrap().replace("amount = \"5.00\"", "amount = \"7.00\""),
    );
    assert!(cli(&db.url, &["campaigns", "apply", changed.to_str().unwrap(), "--by", "marketing"]).contains("version 2 recorded"));
    assert!(cli(&db.url, &["campaigns", "pause", "ios-launch"]).contains("paused"));
    register_all(&db, &p, &code, &[("gb-new", "GB", "web", 17), ("io-two", "US", "ios", 18)]).await;
    assert_eq!(binding(&db.pool, "gb-new").await.1, 2, "bound to the version in force at its registration");
    assert_eq!(binding(&db.pool, "gb-late").await.1, 1, "a referral keeps the version it was bound to");
    assert_eq!(binding(&db.pool, "io-two").await.0, "default", "a paused campaign binds nobody new");

    for (user, amount, currency) in [
        ("gb-small", "30.00", "GBP"),
        ("gb-big", "150.00", "GBP"),
        ("gb-late", "40.00", "GBP"),
        ("gb-new", "40.00", "GBP"),
        ("io-one", "60.00", "USD"),
        ("io-low", "40.00", "USD"),
        ("us-web", "25.00", "USD"),
        ("io-two", "25.00", "USD"),
        ("eu-web", "20.00", "EUR"),
        ("eu-low", "15.00", "EUR"),
    ] {
        produce(&p, "deposit-completed", user, &encode(&deposit(user, amount, currency))).await;
    }
    let started = std::time::Instant::now();
    while count(&db.pool, "SELECT count(*) FROM rewards").await != 12 {
        if started.elapsed() > Duration::from_secs(120) {
            let statuses: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT r.referee_id, r.status, (SELECT string_agg(cause, ' | ') FROM referral_transitions t WHERE t.referral_id = r.referral_id) \
                 FROM referrals r ORDER BY 1",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap();
            panic!("not every reward: {statuses:#?}\nrewards {:?}", rewards(&db.pool).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = rewards(&db.pool).await;
    let want: Vec<(String, String, String, String, String, i32)> = [
        ("ana", "referrer_bonus", "10", "GBP", "gb-web-tiers", 1), // gb-small: 30 → first tier
        ("ana", "referrer_bonus", "25", "GBP", "gb-web-tiers", 1), // gb-big: 150 → second tier
        ("ana", "referrer_bonus", "10", "GBP", "gb-web-tiers", 1), // gb-late
        ("ana", "referrer_bonus", "10", "GBP", "gb-web-tiers", 2), // gb-new
        ("ana", "referrer_bonus", "15", "USD", "ios-launch", 1),   // io-one: 60 ≥ 50
        ("ana", "referrer_bonus", "10", "USD", "default", 0),      // us-web
        ("ana", "referrer_bonus", "10", "USD", "default", 0),      // io-two (ios-launch paused)
        ("bea", "referrer_bonus", "10", "USD", "default", 0),      // eu-web: 20 EUR = 22 USD >= 20
        ("gb-big", "referee_bonus", "5", "GBP", "gb-web-tiers", 1),
        ("gb-late", "referee_bonus", "5", "GBP", "gb-web-tiers", 1), // bound before the change
        ("gb-new", "referee_bonus", "7", "GBP", "gb-web-tiers", 2),
        ("gb-small", "referee_bonus", "5", "GBP", "gb-web-tiers", 1),
    ]
    .iter()
    .map(|(b, t, a, c, id, v)| (b.to_string(), t.to_string(), a.to_string(), c.to_string(), id.to_string(), *v))
    .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted = want;
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "io-low's 40 USD is below ios-launch's 50: no reward");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM referrals WHERE referee_id = 'io-low' AND status = 'eligible'").await, 1);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM referrals WHERE referee_id = 'eu-low' AND status = 'eligible'").await,
        1,
        "15 EUR = 16.50 USD < 20"
    );
    let stamped: (Decimal, String) = sqlx::query_as(
        "SELECT w.fx_rate, w.qualifying_deposit_id FROM rewards w JOIN referrals r USING (referral_id) WHERE r.referee_id = 'eu-web'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (stamped.0.normalize().to_string().as_str(), stamped.1.as_str()),
        ("1.1", "dep-eu-web"),
        "the rate is stamped on the reward"
    );

    // The books: per currency the ledger sums to zero, and each campaign's account paid out
    // exactly its rewards.
    let imbalance =
        count(&db.pool, "SELECT count(*) FROM (SELECT currency FROM ledger_entries GROUP BY currency HAVING sum(amount) <> 0) x").await;
    assert_eq!(imbalance, 0);
    let gb: Decimal =
        sqlx::query_scalar("SELECT -sum(amount) FROM ledger_entries WHERE account = 'campaign:gb-web-tiers' AND kind <> 'fund'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(gb, Decimal::new(77, 0), "10+25+10+10 to ana, 5+5+5+7 to the friends");

    // The audit proves every reward against the terms stamped on it, the ledger and the topics.
    let (passed, report) = audit(&db.url, &broker.bootstrap);
    assert!(passed, "{report}");
    assert!(report.contains("ok    no reward exceeds its campaign's terms") && report.contains("audit passed"), "{report}");
    assert!(report.contains("12 rows"), "{report}");
    // Tampering with one reward's amount is caught, naming the reward.
    let tampered: Uuid = sqlx::query_scalar("UPDATE rewards SET amount = 12 WHERE beneficiary_id = 'gb-new' RETURNING reward_id")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (passed, report) = audit(&db.url, &broker.bootstrap);
    assert!(!passed, "{report}");
    assert!(report.contains("FAIL  no reward exceeds its campaign's terms") && report.contains(&tampered.to_string()), "{report}");
    assert!(report.contains("FAIL  every RewardGranted on Kafka has its reward row"), "{report}");
    // Its ledger entries (7 each way) no longer match its amount: the bookings, summed per
    // reward in one pass over the ledger, name it too.
    assert!(report.contains("FAIL  every reward is booked once, and every reversal books its exact negation"), "{report}");
    assert!(report.contains(&format!("{tampered}: grant entries Some(7.0000) / Some(-7.0000) for 12")), "{report}");
    sqlx::query("UPDATE rewards SET amount = 7 WHERE reward_id = $1").bind(tampered).execute(&db.pool).await.unwrap();
    // The rows every reward is explained by are never deleted, nor do their keys change
    // (rewards name their referral and deposit, ledger entries their reward, by the code that
    // writes them, not by foreign keys): the schema refuses both.
    let refusals = [
        (format!("DELETE FROM rewards WHERE reward_id = '{tampered}'"), "are never deleted"),
        ("DELETE FROM deposits WHERE deposit_id = 'dep-eu-web'".to_owned(), "are never deleted"),
        ("TRUNCATE referrals, users CASCADE".to_owned(), "are never deleted"),
        ("UPDATE referrals SET referral_id = gen_random_uuid() WHERE referee_id = 'eu-web'".to_owned(), "keys never change"),
        ("UPDATE deposits SET deposit_id = 'dep-renamed' WHERE deposit_id = 'dep-eu-web'".to_owned(), "keys never change"),
        (format!("UPDATE rewards SET reward_id = gen_random_uuid() WHERE reward_id = '{tampered}'"), "keys never change"),
    ];
    for (sql, why) in &refusals {
        let refused = sqlx::query(sql).execute(&db.pool).await.unwrap_err().to_string();
        assert!(refused.contains(why), "{sql}: {refused}");
    }
    // A booking that names no recorded reward (balanced, and balances moved with it) is caught
    // by the audit, naming the entry.
    let orphan = Uuid::new_v4();
    sqlx::query(
        "WITH e AS (INSERT INTO ledger_entries (transaction_id, account, amount, currency, reward_id, kind) \
           VALUES ($1, 'user:ana', 3, 'CHF', $1, 'grant'), ($1, 'campaign:gb-web-tiers', -3, 'CHF', $1, 'grant')) \
         INSERT INTO balances (account, currency, balance) VALUES ('user:ana', 'CHF', 3), ('campaign:gb-web-tiers', 'CHF', -3) \
         ON CONFLICT (account, currency) DO UPDATE SET balance = balances.balance + EXCLUDED.balance",
    )
    .bind(orphan)
    .execute(&db.pool)
    .await
    .unwrap();
    let (passed, report) = audit(&db.url, &broker.bootstrap);
    assert!(!passed, "{report}");
    assert!(
        report.contains("FAIL  every grant and reversal entry names a recorded reward") && report.contains(&orphan.to_string()),
        "{report}"
    );
    assert!(
        report.contains("ok    every balance equals its ledger") && report.contains("ok    no reward exceeds its campaign's terms"),
        "{report}"
    );
    // A reward whose referral and deposit were never recorded (only settlement writes rewards,
    // from rows it holds; nothing in the schema stops a hand-written one) is caught by the audit.
    let stray = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO rewards (reward_id, referral_id, reward_type, beneficiary_id, role, amount, currency, campaign_id, \
                              qualifying_deposit_id, terms_version, kind) \
         SELECT $1, gen_random_uuid(), reward_type, beneficiary_id, role, amount, currency, campaign_id, 'dep-never-recorded', \
                terms_version, kind FROM rewards WHERE reward_id = $2",
    )
    .bind(stray)
    .bind(tampered)
    .execute(&db.pool)
    .await
    .unwrap();
    let (passed, report) = audit(&db.url, &broker.bootstrap);
    assert!(!passed, "{report}");
    assert!(
        report.contains("FAIL  every reward maps to one referral and one deposit of its referee")
            && report.contains(&format!("{stray}: no referral")),
        "{report}"
    );

    let listing = cli(&db.url, &["campaigns", "list"]);
    assert!(listing.contains("gb-web-tiers") && listing.contains("ios-launch") && listing.contains("paused"), "{listing}");
    let shown = cli(&db.url, &["campaigns", "show", "gb-web-tiers"]);
    assert!(shown.contains("v2") && shown.contains("by marketing") && shown.contains("amount = \"7.00\""), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_of_three_rewards_caps_the_fourth_until_it_is_raised() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _fleet = Fleet::start(&db.url, &broker.bootstrap);
    let p = producer(&broker.bootstrap);
    let launch = std::fs::read_to_string(campaign_file("ios-launch.toml")).unwrap();
    let file = temp_campaign(&format!("{launch}\n[limits]\nmax_rewarded_referrals = 3\npay_capped_when_raised = true\n"));
    assert!(cli(&db.url, &["campaigns", "apply", file.to_str().unwrap()]).contains("version 1 recorded"));

    let code = register_referrer(&db, &p, "ana", "US", "ios", 1).await;
    let pool = db.pool.clone();
    let friends = [("f1", "US", "ios", 21), ("f2", "US", "ios", 22), ("f3", "US", "ios", 23), ("f4", "US", "ios", 24)];
    register_all(&db, &p, &code, &friends).await;
    for (user, ..) in friends {
        produce(&p, "deposit-completed", user, &encode(&deposit(user, "60.00", "USD"))).await;
    }
    eventually(Duration::from_secs(120), "three rewards and one capped referral", || {
        let pool = pool.clone();
        async move {
            count(&pool, "SELECT count(*) FROM rewards").await == 3
                && count(&pool, "SELECT count(*) FROM referrals WHERE status = 'capped'").await == 1
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&db.pool, "SELECT count(*) FROM rewards").await, 3, "never a fourth while the budget is three");
    let cause: String = sqlx::query_scalar("SELECT cause FROM referral_transitions t JOIN referrals r USING (referral_id) WHERE r.status = 'capped' AND t.to_status = 'capped'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(cause.contains("3 rewarded referrals"), "{cause}");
    let (passed, report) = audit(&db.url, &broker.bootstrap);
    assert!(passed && report.contains("ok    no campaign paid beyond its caps and budget") && report.contains("(1 limited"), "{report}");

    // The campaign raises the budget to four: the capped referral is paid, once.
    let file = temp_campaign(&format!("{launch}\n[limits]\nmax_rewarded_referrals = 4\npay_capped_when_raised = true\n"));
    assert!(cli(&db.url, &["campaigns", "apply", file.to_str().unwrap()]).contains("version 2 recorded"));
    eventually(Duration::from_secs(60), "the capped referral paid after the raise", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM rewards").await == 4 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&db.pool, "SELECT count(*) FROM rewards").await, 4);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM referrals WHERE status = 'rewarded'").await, 4);
    let moves: Vec<String> = sqlx::query_scalar("SELECT from_status || ' -> ' || to_status FROM referral_transitions WHERE from_status = 'capped' OR to_status = 'capped' ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(moves, ["eligible -> capped", "capped -> eligible"]);
}

fn verified(user: &str, ok: bool, reason: Option<&str>) -> refstream_core::events::UserVerified {
    refstream_core::events::UserVerified {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse(user).unwrap(),
        verified: ok,
        reason: reason.map(str::to_owned),
        occurred_at: Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_requiring_kyc_pays_when_the_verification_arrives_in_any_order() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _fleet = Fleet::start(&db.url, &broker.bootstrap);
    let p = producer(&broker.bootstrap);
    let launch = std::fs::read_to_string(campaign_file("ios-launch.toml")).unwrap();
    let file = temp_campaign(&format!("{launch}\n[kyc]\nreferee = true\n"));
    assert!(cli(&db.url, &["campaigns", "apply", file.to_str().unwrap()]).contains("version 1 recorded"));

    let code = register_referrer(&db, &p, "ana", "US", "ios", 1).await;
    let pool = db.pool.clone();
    register_all(&db, &p, &code, &[("k-early", "US", "ios", 31), ("k-late", "US", "ios", 32), ("k-no", "US", "ios", 33)]).await;
    // k-early is verified before depositing; k-late deposits first; k-no is rejected.
    produce(&p, "user-verified", "k-early", &encode(&verified("k-early", true, None))).await;
    produce(&p, "user-verified", "k-no", &encode(&verified("k-no", false, Some("document forged")))).await;
    for user in ["k-early", "k-late", "k-no"] {
        produce(&p, "deposit-completed", user, &encode(&deposit(user, "60.00", "USD"))).await;
    }
    eventually(Duration::from_secs(90), "k-early paid and k-no rejected", || {
        let pool = pool.clone();
        async move {
            count(&pool, "SELECT count(*) FROM rewards w JOIN referrals r USING (referral_id) WHERE r.referee_id = 'k-early'").await == 1
                && count(&pool, "SELECT count(*) FROM referrals WHERE referee_id = 'k-no' AND status = 'rejected'").await == 1
        }
    })
    .await;
    // k-late's deposit qualifies, but the referee is not verified: its reward waits.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM rewards w JOIN referrals r USING (referral_id) WHERE r.referee_id = 'k-late'").await,
        0
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM referrals WHERE referee_id = 'k-late' AND status = 'eligible'").await, 1);
    let cause: String = sqlx::query_scalar("SELECT t.cause FROM referral_transitions t JOIN referrals r USING (referral_id) WHERE r.referee_id = 'k-no' AND t.to_status = 'rejected'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(cause, "KYC rejected the referee: document forged");

    // A record that is not a UserVerified, on k-late's partition, ahead of its verification:
    // a dead letter with its reason, and the partition flows on.
    produce(&p, "user-verified", "k-late", b"not avro at all").await;
    produce(&p, "user-verified", "k-late", &encode(&verified("k-late", true, None))).await;
    eventually(Duration::from_secs(60), "k-late paid once verified", || {
        let pool = pool.clone();
        async move {
            count(&pool, "SELECT count(*) FROM rewards w JOIN referrals r USING (referral_id) WHERE r.referee_id = 'k-late'").await == 1
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&db.pool, "SELECT count(*) FROM rewards").await, 2, "k-no never paid");
    let (consumer, reason): (String, String) =
        sqlx::query_as("SELECT consumer, reason FROM dead_letters WHERE topic = 'user-verified'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(consumer, "reward-engine");
    assert!(!reason.is_empty(), "a dead letter says why");
    let (passed, report) = audit(&db.url, &broker.bootstrap);
    assert!(passed, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn referrals_whose_window_passed_without_a_qualifying_deposit_expire() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _fleet = Fleet::start(&db.url, &broker.bootstrap);
    let p = producer(&broker.bootstrap);
    let code = register_referrer(&db, &p, "ana", "US", "web", 1).await;
    let pool = db.pool.clone();
    let days_ago = |d: i64| Utc::now() - chrono::Duration::days(d);
    // Registered 31 days ago (the default window is 30 days): one deposited on day 2, one only
    // now, one never; and one registered today.
    for (user, n, at) in [
        ("old-paid", 41, days_ago(31)),
        ("old-late", 42, days_ago(31)),
        ("old-none", 43, days_ago(31)),
        ("old-back", 45, days_ago(31)),
        ("today", 44, Utc::now()),
    ] {
        let mut r = registered(user, &code, "US", "web", n);
        r.occurred_at = at;
        produce(&p, "user-registered", user, &encode(&r)).await;
    }
    eventually(Duration::from_secs(90), "five referrals scored (or expired)", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM referrals WHERE status <> 'pending'").await == 5 }
    })
    .await;
    let mut early = deposit("old-paid", "25.00", "USD");
    early.occurred_at = days_ago(29);
    produce(&p, "deposit-completed", "old-paid", &encode(&early)).await;
    produce(&p, "deposit-completed", "old-late", &encode(&deposit("old-late", "25.00", "USD"))).await;
    eventually(Duration::from_secs(90), "three expired, one rewarded", || {
        let pool = pool.clone();
        async move {
            count(&pool, "SELECT count(*) FROM referrals WHERE status = 'expired' AND referee_id IN ('old-late', 'old-none', 'old-back')")
                .await
                == 3
                && count(&pool, "SELECT count(*) FROM referrals WHERE status = 'rewarded' AND referee_id = 'old-paid'").await == 1
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM referrals WHERE referee_id = 'today' AND status = 'eligible'").await,
        1,
        "its window is open"
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM rewards").await, 1);
    // A deposit made within old-back's window, reported only now (a backfill): the referral
    // goes back to eligible and is paid — a late report never loses a reward.
    let mut backfill = deposit("old-back", "25.00", "USD");
    backfill.occurred_at = days_ago(30);
    produce(&p, "deposit-completed", "old-back", &encode(&backfill)).await;
    eventually(Duration::from_secs(60), "old-back revived and paid", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM referrals WHERE status = 'rewarded' AND referee_id = 'old-back'").await == 1 }
    })
    .await;
    let moves: Vec<String> = sqlx::query_scalar(
        "SELECT t.from_status || ' -> ' || t.to_status FROM referral_transitions t JOIN referrals r USING (referral_id) WHERE r.referee_id = 'old-back' ORDER BY t.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // Expired from where it stood (eligible, or pending when the sweep ran before its score),
    // back to that state, then paid.
    let expired_at = moves.iter().position(|m| m.ends_with("-> expired")).expect("it expired first");
    assert!(moves[expired_at + 1].starts_with("expired -> "), "{moves:?}");
    assert_eq!(moves.last().map(String::as_str), Some("eligible -> rewarded"), "{moves:?}");
    let cause: String = sqlx::query_scalar(
        "SELECT t.cause FROM referral_transitions t JOIN referrals r USING (referral_id) WHERE r.referee_id = 'old-none' AND t.to_status = 'expired'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(cause.starts_with("window of 30 days ended"), "{cause}");
}

/// A reward as (referee, beneficiary, role, type, amount, currency, campaign, version).
type RewardOf = (String, String, String, String, String, String, String, i32);

/// Every reward, sorted.
async fn rewards_by_referee(pool: &PgPool) -> Vec<RewardOf> {
    type Row = (String, String, String, String, Decimal, String, String, i32);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.referee_id, w.beneficiary_id, w.role, w.reward_type, w.amount, w.currency::text, w.campaign_id, w.terms_version \
         FROM rewards w JOIN referrals r USING (referral_id) ORDER BY 1, 2, 4",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(r, b, role, t, a, c, id, v)| (r, b, role, t, a.normalize().to_string(), c, id, v)).collect()
}

/// How many of `referees` the engine has decided to leave waiting for their KYC verdict: the
/// referral eligible, its qualifying deposit recorded (which scheduled its payout in the same
/// transaction), that payout claimed by the settlement sweep (no longer pending) and nothing
/// paid. A sweep that claims a payout either pays it or decides not to, in one transaction.
async fn awaiting_kyc(pool: &PgPool, referees: &[&str]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM referrals r WHERE r.referee_id = ANY($1) AND r.status = 'eligible' \
         AND EXISTS (SELECT 1 FROM deposits d WHERE d.user_id = r.referee_id) \
         AND NOT EXISTS (SELECT 1 FROM pending_payouts p WHERE p.referral_id = r.referral_id) \
         AND NOT EXISTS (SELECT 1 FROM rewards w WHERE w.referral_id = r.referral_id)",
    )
    .bind(referees.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until `referee`'s referral has `n` rewards.
async fn wait_rewards_of(pool: &PgPool, referee: &str, n: i64) {
    let sql = format!("SELECT count(*) FROM rewards w JOIN referrals r USING (referral_id) WHERE r.referee_id = '{referee}'");
    eventually(Duration::from_secs(60), &format!("{n} reward(s) for {referee}'s referral"), || {
        let (pool, sql) = (pool.clone(), sql.clone());
        async move { count(&pool, &sql).await == n }
    })
    .await;
}

/// Waits until the reward engine has recorded `user`'s KYC verdict.
async fn wait_verdict_of(pool: &PgPool, user: &str) {
    let sql = format!("SELECT count(*) FROM user_verifications WHERE user_id = '{user}'");
    eventually(Duration::from_secs(60), &format!("{user}'s verdict recorded"), || {
        let (pool, sql) = (pool.clone(), sql.clone());
        async move { count(&pool, &sql).await == 1 }
    })
    .await;
}

/// The issue's acceptance trial, tried as a new user would: two data campaigns live at once
/// (the GB web tiers file as shipped, and an iOS campaign with a budget of three rewarded
/// referrals that requires the referee's KYC), an exchange rate set with the CLI, a mixed stream
/// (tiers, a deposit in EUR converted to GBP, KYC verdicts before and after deposits, a fourth
/// iOS payout beyond the budget, a registration no data campaign targets), and a clean audit.
/// Every payout that could race another for a limit is made to wait for the previous outcome,
/// so which referral is capped never depends on timing.
#[tokio::test(flavor = "multi_thread")]
async fn the_new_user_trial_two_campaigns_tiers_budget_kyc_fx_and_a_clean_audit() {
    let started = std::time::Instant::now();
    let db = TestDb::new().await;
    let broker = Broker::start();
    let fleet = Fleet::start(&db.url, &broker.bootstrap);
    let p = producer(&broker.bootstrap);
    let pool = db.pool.clone();

    // The two campaigns, applied with the CLI: the shipped GB web file, and an iOS campaign
    // written by the operator with a budget of three rewarded referrals and KYC for the referee.
    assert!(cli(&db.url, &["campaigns", "apply", &campaign_file("gb-web-tiers.toml")]).contains("version 1 recorded"));
    let ios = temp_campaign(
        r#"# iOS, verified friends only: 15.00 USD to the referrer for a first deposit of 50.00, three at most.
id = "ios-verified"
name = "iOS: invite a verified friend"
priority = 20
currency = "USD"
min_deposit = "50.00"
window_days = 14

[targeting]
platforms = ["ios"]

[[rewards]]
type = "referrer_bonus"
role = "referrer"
amount = "15.00"

[limits]
max_rewarded_referrals = 3

[kyc]
referee = true
"#,
    );
    assert!(cli(&db.url, &["campaigns", "apply", ios.to_str().unwrap(), "--by", "growth"]).contains("version 1 recorded"));
    let listing = cli(&db.url, &["campaigns", "list"]);
    assert!(listing.contains("gb-web-tiers") && listing.contains("ios-verified"), "{listing}");

    // 1 EUR = 0.85 GBP, in force from now (the CLI prints when).
    let fx = cli(&db.url, &["fx", "set", "EUR", "GBP", "0.85"]);
    assert!(fx.contains("1 EUR = 0.85 GBP from "), "{fx}");
    let rate_at: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT effective_at FROM fx_rates WHERE base = 'EUR' AND quote = 'GBP'").fetch_one(&pool).await.unwrap();
    assert!(cli(&db.url, &["fx", "list"]).contains("1 EUR = 0.8500000000 GBP"), "the rate is listed");

    // ana (GB web) invites three GB web friends and one US web friend; bea (US iOS) four iOS
    // friends.
    let ana = register_referrer(&db, &p, "ana", "GB", "web", 1).await;
    let bea = register_referrer(&db, &p, "bea", "US", "ios", 2).await;
    register_all(
        &db,
        &p,
        &ana,
        &[("gb-small", "GB", "web", 51), ("gb-big", "GB", "web", 52), ("gb-eur", "GB", "web", 53), ("us-web", "US", "web", 54)],
    )
    .await;
    let ios_friends = ["io-early", "io-late", "io-three", "io-four"];
    register_all(
        &db,
        &p,
        &bea,
        &[("io-early", "US", "ios", 55), ("io-late", "US", "ios", 56), ("io-three", "US", "ios", 57), ("io-four", "US", "ios", 58)],
    )
    .await;
    for user in ["gb-small", "gb-big", "gb-eur"] {
        assert_eq!(binding(&pool, user).await.0, "gb-web-tiers", "{user}");
        assert_eq!(binding(&pool, user).await.1, 1, "{user}");
    }
    for user in ios_friends {
        assert_eq!(binding(&pool, user).await.0, "ios-verified", "{user}");
    }
    let (default_id, version, reason) = binding(&pool, "us-web").await;
    assert_eq!((default_id.as_str(), version), ("default", 0), "no data campaign targets US web");
    assert!(reason.contains("default"), "{reason}");

    // io-early's verification is recorded before its deposit is sent; the other three deposit
    // first and are verified later, one at a time.
    produce(&p, "user-verified", "io-early", &encode(&verified("io-early", true, None))).await;
    wait_verdict_of(&pool, "io-early").await;
    for (user, amount, currency) in [
        ("gb-small", "30.00", "GBP"), // tier 1: 10.00
        ("gb-big", "150.00", "GBP"),  // tier 2: 25.00
        ("gb-eur", "110.00", "EUR"),  // 93.50 GBP: tier 1 (110 unconverted would be tier 2)
        ("us-web", "25.00", "USD"),   // default campaign: 10.00 USD
        ("io-early", "60.00", "USD"), // verified already: paid
        ("io-late", "60.00", "USD"),  // waits for its verification
        ("io-three", "75.00", "USD"), // waits for its verification
        ("io-four", "80.00", "USD"),  // waits; beyond the budget once verified
    ] {
        produce(&p, "deposit-completed", user, &encode(&deposit(user, amount, currency))).await;
    }
    // Everything payable is paid (six GB rewards, one default, io-early's), and the three
    // unverified iOS referrals' payouts were settled as "wait": nothing paid, still eligible.
    eventually(Duration::from_secs(90), "the first payouts settled and three left awaiting KYC", || {
        let pool = pool.clone();
        async move {
            count(&pool, "SELECT count(*) FROM rewards").await == 8 && awaiting_kyc(&pool, &["io-late", "io-three", "io-four"]).await == 3
        }
    })
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rewards WHERE campaign_id = 'ios-verified'").await,
        1,
        "only io-early (verified) is paid"
    );
    wait_rewards_of(&pool, "io-early", 1).await;
    let metrics = refstream_e2e::http(fleet.ports[2], "GET", "/metrics", &[], b"").body;
    let waited: u64 = metrics
        .lines()
        .find(|l| l.starts_with("refstream_outcomes_total") && l.contains("outcome=\"awaiting_kyc\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no awaiting_kyc outcome in the reward engine's metrics:\n{metrics}"));
    assert!(waited >= 3, "the engine counted its KYC waits: {waited}");

    // io-late's verification arrives: it is paid, and only after the verdict was recorded.
    produce(&p, "user-verified", "io-late", &encode(&verified("io-late", true, None))).await;
    wait_rewards_of(&pool, "io-late", 1).await;
    let (verdict_at, granted_at): (chrono::DateTime<Utc>, chrono::DateTime<Utc>) = sqlx::query_as(
        "SELECT v.recorded_at, w.granted_at FROM user_verifications v, rewards w JOIN referrals r USING (referral_id) \
         WHERE v.user_id = 'io-late' AND r.referee_id = 'io-late'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(granted_at >= verdict_at, "paid at {granted_at}, before its verification was recorded at {verdict_at}");
    // io-three's: the third rewarded referral, the budget's last.
    produce(&p, "user-verified", "io-three", &encode(&verified("io-three", true, None))).await;
    wait_rewards_of(&pool, "io-three", 1).await;
    // io-four's: a fourth rewarded referral would exceed the budget of three — capped, with why.
    produce(&p, "user-verified", "io-four", &encode(&verified("io-four", true, None))).await;
    eventually(Duration::from_secs(60), "io-four capped", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM referrals WHERE referee_id = 'io-four' AND status = 'capped'").await == 1 }
    })
    .await;
    let cause: String = sqlx::query_scalar(
        "SELECT t.cause FROM referral_transitions t JOIN referrals r USING (referral_id) \
         WHERE r.referee_id = 'io-four' AND t.from_status = 'eligible' AND t.to_status = 'capped'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(cause, "campaign budget spent: 3 rewarded referrals");
    let explained = cli(&db.url, &["explain", "io-four"]);
    assert!(
        explained.contains("status      capped") && explained.contains("eligible → capped: campaign budget spent: 3 rewarded referrals"),
        "{explained}"
    );

    // Settled for good: nothing left to pay, every referral rewarded or capped.
    assert_eq!(count(&pool, "SELECT count(*) FROM pending_payouts").await, 0);
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT referee_id, status FROM referrals ORDER BY referee_id").fetch_all(&pool).await.unwrap();
    let want_statuses: Vec<(String, String)> = [
        ("gb-big", "rewarded"),
        ("gb-eur", "rewarded"),
        ("gb-small", "rewarded"),
        ("io-early", "rewarded"),
        ("io-four", "capped"),
        ("io-late", "rewarded"),
        ("io-three", "rewarded"),
        ("us-web", "rewarded"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(statuses, want_statuses);

    // Exactly what each campaign's terms say.
    let got = rewards_by_referee(&pool).await;
    let want: Vec<RewardOf> = [
        ("gb-big", "ana", "REFERRER", "referrer_bonus", "25", "GBP", "gb-web-tiers", 1), // 150 ≥ 100
        ("gb-big", "gb-big", "REFEREE", "referee_bonus", "5", "GBP", "gb-web-tiers", 1),
        ("gb-eur", "ana", "REFERRER", "referrer_bonus", "10", "GBP", "gb-web-tiers", 1), // 110 EUR = 93.50 GBP
        ("gb-eur", "gb-eur", "REFEREE", "referee_bonus", "5", "GBP", "gb-web-tiers", 1),
        ("gb-small", "ana", "REFERRER", "referrer_bonus", "10", "GBP", "gb-web-tiers", 1), // 30
        ("gb-small", "gb-small", "REFEREE", "referee_bonus", "5", "GBP", "gb-web-tiers", 1),
        ("io-early", "bea", "REFERRER", "referrer_bonus", "15", "USD", "ios-verified", 1),
        ("io-late", "bea", "REFERRER", "referrer_bonus", "15", "USD", "ios-verified", 1),
        ("io-three", "bea", "REFERRER", "referrer_bonus", "15", "USD", "ios-verified", 1),
        ("us-web", "ana", "REFERRER", "referrer_bonus", "10", "USD", "default", 0),
    ]
    .iter()
    .map(|(r, b, role, t, a, c, id, v)| {
        (r.to_string(), b.to_string(), role.to_string(), t.to_string(), a.to_string(), c.to_string(), id.to_string(), *v)
    })
    .collect();
    assert_eq!(got, want);

    // The EUR deposit's rewards carry the rate and the time it was in force from; no other does.
    type Stamp = (String, Option<Decimal>, Option<chrono::DateTime<Utc>>, String);
    let stamped: Vec<Stamp> = sqlx::query_as(
        "SELECT r.referee_id, w.fx_rate, w.fx_rate_at, w.qualifying_deposit_id FROM rewards w JOIN referrals r USING (referral_id) \
         WHERE w.fx_rate IS NOT NULL OR w.fx_rate_at IS NOT NULL ORDER BY w.reward_type",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stamped.len(), 2, "{stamped:?}");
    for (referee, rate, at, deposit_id) in &stamped {
        assert_eq!(referee, "gb-eur");
        assert_eq!(rate.map(|r| r.normalize().to_string()).as_deref(), Some("0.85"));
        assert_eq!(*at, Some(rate_at));
        assert_eq!(deposit_id, "dep-gb-eur");
    }

    // Balances: each beneficiary and each campaign's account, per currency.
    let balances: Vec<(String, String, String)> = sqlx::query_as::<_, (String, String, Decimal)>(
        "SELECT account, currency::text, balance FROM balances WHERE balance <> 0 ORDER BY account, currency",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(a, c, b)| (a, c, b.normalize().to_string()))
    .collect();
    let want_balances: Vec<(String, String, String)> = [
        ("campaign:default", "USD", "-10"),
        ("campaign:gb-web-tiers", "GBP", "4940"), // funded with its budget of 5000.00, 60 paid
        ("campaign:ios-verified", "USD", "-45"),  // no money budget: the account only pays out
        ("funding:gb-web-tiers", "GBP", "-5000"),
        ("user:ana", "GBP", "45"),
        ("user:ana", "USD", "10"),
        ("user:bea", "USD", "45"),
        ("user:gb-big", "GBP", "5"),
        ("user:gb-eur", "GBP", "5"),
        ("user:gb-small", "GBP", "5"),
    ]
    .iter()
    .map(|(a, c, b)| (a.to_string(), c.to_string(), b.to_string()))
    .collect();
    assert_eq!(balances, want_balances);

    // The RewardGranted records on Kafka match the reward rows one for one.
    type Granted = (Uuid, Uuid, String, String, String, String, String, String, String);
    let mut rows: Vec<Granted> = sqlx::query_as::<_, (Uuid, String, String, String, Decimal, String, String, String)>(
        "SELECT reward_id, beneficiary_id, role, reward_type, amount, currency::text, campaign_id, qualifying_deposit_id FROM rewards",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, b, role, t, a, c, campaign, d)| {
        (refstream_core::DerivedId::event("reward-granted", id), id, b, role, t, a.normalize().to_string(), c, campaign, d)
    })
    .collect();
    rows.sort();
    let bootstrap = broker.bootstrap.clone();
    let records = tokio::task::spawn_blocking(move || refstream_e2e::read_topic(&bootstrap, "reward-granted", 10, Duration::from_secs(60)))
        .await
        .unwrap();
    let decoder = refstream_runtime::codec::Decoder::default();
    let mut on_kafka: Vec<Granted> = records
        .iter()
        .map(|m| {
            let g: refstream_core::events::RewardGranted = decoder.decode(rdkafka::Message::payload(m).unwrap(), Utc::now()).unwrap();
            assert_eq!(rdkafka::Message::key(m), Some(g.user_id.as_str().as_bytes()), "keyed by beneficiary");
            (
                g.event_id,
                g.reward_id,
                g.user_id.to_string(),
                g.role.as_str().to_owned(),
                g.reward_type,
                g.amount.amount.normalize().to_string(),
                g.amount.currency.as_str().to_owned(),
                g.campaign_id,
                g.qualifying_deposit_id,
            )
        })
        .collect();
    on_kafka.sort();
    assert_eq!(on_kafka, rows, "RewardGranted records and reward rows, one for one");

    // The audit proves it all from Postgres and the topics.
    let (passed, report) = audit(&db.url, &broker.bootstrap);
    assert!(passed, "{report}");
    for check in [
        "ok    the ledger sums to zero per currency",
        "ok    every balance equals its ledger",
        "ok    every reward maps to one referral and one deposit of its referee, under the terms bound to it (10 rewards)",
        "ok    no reward exceeds its campaign's terms",
        "ok    no campaign paid beyond its caps and budget; a budgeted campaign's account holds its budget less what it paid, never below zero (2 limited campaign(s))",
        "ok    every RewardGranted on Kafka has its reward row and every reward its record (10 records (10 distinct), 10 rows",
        "audit passed",
    ] {
        assert!(report.contains(check), "missing `{check}`:\n{report}");
    }
    println!("{report}\ntrial took {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ladder_example_pays_levels_a_milestone_and_bonus_credit_and_the_audit_proves_them() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _fleet = Fleet::start(&db.url, &broker.bootstrap);
    let p = producer(&broker.bootstrap);
    assert!(cli(&db.url, &["campaigns", "apply", &campaign_file("ladder.toml")]).contains("version 1 recorded"));
    let shown = cli(&db.url, &["campaigns", "show", "ladder"]);
    assert!(shown.contains("[[levels]]") && shown.contains("[[milestones]]") && shown.contains("wagering = \"10\""), "{shown}");

    // amy -> bob -> cat -> {dan, eve}
    let amy = register_referrer(&db, &p, "amy", "US", "web", 1).await;
    register_all(&db, &p, &amy, &[("bob", "US", "web", 2)]).await;
    let bob = db.code_of("bob").await;
    register_all(&db, &p, &bob, &[("cat", "US", "web", 3)]).await;
    let cat = db.code_of("cat").await;
    register_all(&db, &p, &cat, &[("dan", "US", "web", 4), ("eve", "US", "web", 5)]).await;
    assert_eq!(binding(&db.pool, "dan").await.0, "ladder");
    for (user, amount) in [("dan", "25.00"), ("eve", "120.00")] {
        produce(&p, "deposit-completed", user, &encode(&deposit(user, amount, "USD"))).await;
    }
    let pool = db.pool.clone();
    eventually(Duration::from_secs(120), "dan's and eve's referrals paid", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM referrals WHERE referee_id IN ('dan', 'eve') AND status = 'rewarded'").await == 2 }
    })
    .await;
    /// (referee, beneficiary, level, milestone, kind, amount, wagering requirement)
    type Grant = (String, String, i16, Option<i32>, String, Decimal, Option<Decimal>);
    let got: Vec<Grant> = sqlx::query_as(
        "SELECT r.referee_id, w.beneficiary_id, w.level, w.milestone, w.kind, w.amount, w.wagering_requirement \
         FROM rewards w JOIN referrals r USING (referral_id) WHERE r.referee_id IN ('dan', 'eve') ORDER BY 1, 3, 4 NULLS FIRST, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    let row = |referee: &str, who: &str, level: i16, m: Option<i32>, kind: &str, amount: &str, wager: Option<&str>| {
        (referee.to_owned(), who.to_owned(), level, m, kind.to_owned(), d(amount), wager.map(d))
    };
    // Which of the two reaches cat's milestone depends on which is paid first: one of them does.
    let milestone_on: String =
        sqlx::query_scalar("SELECT r.referee_id FROM rewards w JOIN referrals r USING (referral_id) WHERE w.milestone = 2")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let mut want = vec![
        row("dan", "cat", 1, None, "CASH", "10", None),
        row("dan", "dan", 1, None, "BONUS", "5", Some("50")),
        row("dan", "bob", 2, None, "CASH", "2", None),
        row("dan", "amy", 3, None, "CASH", "1", None),
        row("eve", "cat", 1, None, "CASH", "20", None),
        row("eve", "eve", 1, None, "BONUS", "5", Some("50")),
        row("eve", "bob", 2, None, "CASH", "2", None),
        row("eve", "amy", 3, None, "CASH", "1", None),
    ];
    want.push(row(&milestone_on, "cat", 1, Some(2), "BONUS", "25", Some("125")));
    want.sort_by(|a, b| (&a.0, a.2, a.3.is_some(), &a.1).cmp(&(&b.0, b.2, b.3.is_some(), &b.1)));
    assert_eq!(got, want);
    let balance = |account: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Decimal>("SELECT COALESCE(sum(balance), 0) FROM balances WHERE account = $1")
                .bind(account)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(balance("user:cat").await, d("30"));
    assert_eq!(balance("user:cat:bonus").await, d("25"));
    assert_eq!(balance("user:bob").await, d("4"), "two level-2 rewards (cat made no deposit: bob's own referral pays nothing)");
    assert_eq!(balance("user:amy").await, d("2"), "two level-3 rewards");
    assert_eq!(balance("user:dan:bonus").await, d("5"));
    assert_eq!(
        balance("campaign:ladder").await,
        d("10000") - d("71"),
        "its budget less 10+20 cash, 5+5 and 25 bonus, 2+2 and 1+1 up the ladder"
    );
    // The budget cannot be lowered below what the campaign has paid; nothing is recorded.
    let lowered = temp_campaign(&std::fs::read_to_string(campaign_file("ladder.toml")).unwrap().replace("\"10000.00\"", "\"50.00\""));
    let out = Command::new(bin("refstream"))
        .args(["campaigns", "apply", lowered.to_str().unwrap()])
        .env("REFSTREAM__DATABASE__URL", &db.url)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("`limits.budget`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM campaign_versions WHERE campaign_id = 'ladder'").await, 1);
    // Lowered to what is left to pay plus some: the account is debited by the difference.
    let lowered = temp_campaign(&std::fs::read_to_string(campaign_file("ladder.toml")).unwrap().replace("\"10000.00\"", "\"100.00\""));
    assert!(cli(&db.url, &["campaigns", "apply", lowered.to_str().unwrap()]).contains("version 2 recorded"));
    assert_eq!(balance("campaign:ladder").await, d("29"));

    let (passed, report) = audit(&db.url, &broker.bootstrap);
    assert!(passed, "{report}");
    assert!(report.contains("ok    no reward exceeds its campaign's terms"), "{report}");
}
