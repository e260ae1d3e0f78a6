//! End to end, as a new user would try it: the devbroker, a real Postgres, the four workers and
//! the `links` service as processes. A referral link opened over HTTP answers 302 with a
//! `click_id`; a registration carrying only that click id is attributed to the code's owner and
//! their reward arrives on `reward-granted` after the referee's qualifying deposit; a click
//! older than the window attributes nothing; a freshly installed app that sends only its
//! signals gets back the click made seconds earlier, marked probabilistic.

use std::time::Duration;

use chrono::Utc;
use refstream_core::events::{RewardGranted, UserRegistered};
use refstream_core::UserId;
use refstream_e2e::{deposit, eventually, free_port, healthy, http, produce, producer, read_topic, spawn, Broker, Fleet, TestDb};
use refstream_runtime::codec::{encode, Decoder};
use sqlx::PgPool;
use uuid::Uuid;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36";

fn registered(user: &str, click_id: Option<&str>) -> UserRegistered {
    UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse(user).unwrap(),
        occurred_at: Utc::now(),
        referral_code: None,
        click_id: click_id.map(str::to_owned),
        platform: "ios".into(),
        device_id: Some(format!("device-{user}")),
        ip: Some(format!("198.51.{}.7", user.len() * 13).parse().unwrap()),
        email: Some(format!("{user}@example.org")),
        country: Some("PT".into()),
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Opens `/r/{code}` with `user_agent`; returns the click id of the redirect.
fn open_link(port: u16, code: &str, user_agent: &str) -> String {
    let r = http(port, "GET", &format!("/r/{code}"), &[("User-Agent", user_agent)], b"");
    assert_eq!(r.status, 302, "{r:?}");
    let location = r.header("location").expect("a Location");
    let click = location.split("click_id=").nth(1).expect("click_id in the Location").split('&').next().unwrap().to_owned();
    assert!(location.starts_with("https://apps.example/"), "{location}");
    click
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_click_attributes_the_signup_and_its_reward_arrives() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let fleet = Fleet::start(&db.url, &broker.bootstrap);
    let (links_port, links_metrics) = (free_port(), free_port());
    let links = spawn(
        "links",
        &[],
        &[
            ("REFSTREAM__DATABASE__URL".to_owned(), db.url.clone()),
            ("REFSTREAM__LINKS__LISTEN".to_owned(), format!("127.0.0.1:{links_port}")),
            ("REFSTREAM__METRICS__LISTEN".to_owned(), format!("127.0.0.1:{links_metrics}")),
            ("REFSTREAM__LINKS__COOKIE_SECURE".to_owned(), "false".to_owned()),
            ("REFSTREAM__LINKS__DESTINATIONS__IOS".to_owned(), "https://apps.example/ios".to_owned()),
            ("REFSTREAM__LINKS__DESTINATIONS__ANDROID".to_owned(), "https://apps.example/android?ref=x".to_owned()),
        ],
    );
    let p = producer(&broker.bootstrap);

    produce(&p, "user-registered", "ana", &encode(&registered("ana", None))).await;
    let pool = db.pool.clone();
    let code = db.minted_code("ana").await;
    let started = std::time::Instant::now();
    while !healthy(links_metrics) {
        assert!(started.elapsed() < Duration::from_secs(30), "links not ready: {}", links.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A friend opens ana's link on an Android phone and signs up with the click id only.
    let click = open_link(links_port, &code, ANDROID);
    produce(&p, "user-registered", "bea", &encode(&registered("bea", Some(&click)))).await;
    eventually(Duration::from_secs(60), "bea attributed to ana by her click", || {
        let pool = pool.clone();
        async move {
            count(&pool, "SELECT count(*) FROM referrals WHERE referee_id = 'bea' AND referrer_id = 'ana' AND attribution = 'CLICK'").await
                == 1
        }
    })
    .await;
    let d = deposit("bea", "dep-bea-1", "25.00");
    produce(&p, "deposit-completed", "bea", &encode(&d)).await;
    let granted = read_topic(&broker.bootstrap, "reward-granted", 1, Duration::from_secs(90));
    let rewards: Vec<RewardGranted> =
        granted.iter().map(|m| Decoder::default().decode(rdkafka::Message::payload(m).unwrap(), Utc::now()).unwrap()).collect();
    assert_eq!(rewards.len(), 1, "exactly one reward: {rewards:?}");
    assert_eq!((rewards[0].user_id.as_str(), rewards[0].qualifying_deposit_id.as_str()), ("ana", "dep-bea-1"));

    // A click made eight days before the signup (older than attribution.click_window_days).
    let old = open_link(links_port, &code, ANDROID);
    sqlx::query("UPDATE referral_clicks SET clicked_at = now() - interval '8 days' WHERE click_id = $1")
        .bind(&old)
        .execute(&db.pool)
        .await
        .unwrap();
    produce(&p, "user-registered", "cid", &encode(&registered("cid", Some(&old)))).await;
    eventually(Duration::from_secs(60), "cid registered", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM users WHERE user_id = 'cid'").await == 1 }
    })
    .await;
    // The referral would have been inserted in the same transaction as the user.
    assert_eq!(count(&db.pool, "SELECT count(*) FROM referrals WHERE referee_id = 'cid'").await, 0, "an old click attributes nothing");

    // An iPhone opens the link (the App Store drops the click id); seconds later the freshly
    // installed app claims with its signals only and gets that click back, probabilistic.
    let ios_click = open_link(links_port, &code, IPHONE);
    let body = format!(r#"{{"platform": "ios", "user_agent": "{IPHONE}"}}"#);
    let r = http(links_port, "POST", "/v1/attribution/claim", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    let answer: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(answer["click_id"], ios_click.as_str(), "{answer}");
    assert_eq!(answer["match"], "probabilistic", "{answer}");
    assert!(answer["confidence"].as_f64().is_some_and(|c| c >= 0.5), "{answer}");
    produce(&p, "user-registered", "dan", &encode(&registered("dan", Some(&ios_click)))).await;
    eventually(Duration::from_secs(60), "dan attributed, marked probabilistic", || {
        let pool = pool.clone();
        async move {
            count(
                &pool,
                "SELECT count(*) FROM referrals WHERE referee_id = 'dan' AND referrer_id = 'ana' AND click_match = 'probabilistic'",
            )
            .await
                == 1
        }
    })
    .await;
    eventually(Duration::from_secs(60), "dan's assessment weighs the probabilistic match", || {
        let pool = pool.clone();
        async move {
            count(&pool, "SELECT count(*) FROM assessments WHERE referee_id = 'dan' AND 'PROBABILISTIC_ATTRIBUTION' = ANY(reasons)").await
                == 1
        }
    })
    .await;
    // Every click was published for analytics, keyed by the referrer.
    let clicks = read_topic(&broker.bootstrap, "referral-clicked", 3, Duration::from_secs(60));
    assert_eq!(clicks.len(), 3);
    assert!(clicks.iter().all(|m| rdkafka::Message::key(m) == Some(b"ana".as_slice())));
    drop(links);
    drop(fleet);
}
