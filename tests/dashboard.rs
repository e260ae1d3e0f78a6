//! The dashboard in a real browser: the fleet (devbroker, Postgres, the four workers and the
//! analytics worker as processes) runs a small workload; `refstream serve` serves the
//! dashboard; headless Chromium (through chromedriver) signs in with a reviewer token, sees the
//! funnel numbers equal to the summary's, approves the held referral with its button — and the
//! reward engine makes that referral eligible. The test saves a screenshot.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use refstream_core::events::UserRegistered;
use refstream_core::UserId;
use refstream_e2e::api::{json, token, Api};
use refstream_e2e::browser::Browser;
use refstream_e2e::{deposit, eventually, free_port, produce, producer, spawn, worker_env, Broker, Fleet, TestDb};
use refstream_runtime::codec::encode;
use sqlx::PgPool;
use uuid::Uuid;

fn registered(user: &str, code: Option<&str>, device: &str) -> UserRegistered {
    UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse(user).unwrap(),
        occurred_at: Utc::now(),
        referral_code: code.map(str::to_owned),
        click_id: None,
        platform: "web".into(),
        device_id: Some(device.to_owned()),
        ip: Some(format!("203.0.113.{}", user.len() * 17 % 250).parse().unwrap()),
        email: Some(format!("{user}@example.org")),
        country: Some("GB".into()),
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Where the screenshot goes: `.local/screenshots/` of the repository.
fn screenshot_path() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir.join("dashboard.png")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reviewer_signs_in_sees_the_funnel_and_approves_a_held_referral_in_the_browser() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _fleet = Fleet::start(&db.url, &broker.bootstrap);
    let _analytics = spawn("analytics", &[], &worker_env(&db.url, &broker.bootstrap, free_port()));
    let p = producer(&broker.bootstrap);
    let pool = db.pool.clone();

    // ana invites three people: bea deposits and is rewarded, cid signs up on ana's own device
    // (held for review), dan only signs up.
    produce(&p, "user-registered", "ana", &encode(&registered("ana", None, "dev-ana"))).await;
    let code = db.minted_code("ana").await;
    produce(&p, "user-registered", "bea", &encode(&registered("bea", Some(&code), "dev-bea"))).await;
    produce(&p, "user-registered", "cid", &encode(&registered("cid", Some(&code), "dev-ana"))).await;
    produce(&p, "user-registered", "dan", &encode(&registered("dan", Some(&code), "dev-dan"))).await;
    eventually(Duration::from_secs(90), "bea eligible and cid held", || {
        let pool = pool.clone();
        async move {
            count(&pool, "SELECT count(*) FROM referrals WHERE (referee_id = 'bea' AND status = 'eligible') OR (referee_id = 'cid' AND status = 'held')")
                .await
                == 2
        }
    })
    .await;
    produce(&p, "deposit-completed", "bea", &encode(&deposit("bea", "dep-bea", "30.00"))).await;
    eventually(Duration::from_secs(90), "bea's reward", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM rewards").await == 1 }
    })
    .await;

    // The API, and the analytics worker caught up with what the summary says.
    let api = Api::start(&db.url, &[]);
    let viewer = token(&db.url, "viewer", "dash-viewer", None);
    let mut summary = json(&api.call("GET", "/v1/admin/summary", Some(&viewer), None));
    let started = std::time::Instant::now();
    loop {
        let funnel = json(&api.call("GET", "/v1/admin/funnel", Some(&viewer), None));
        let t = &funnel["totals"];
        if t["signups"] == summary["users"]
            && t["attributed"] == summary["referrals"]
            && t["rewards"] == summary["rewards_granted"]
            && t["held"] == 1
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "analytics did not catch up: funnel {funnel} vs summary {summary}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        summary = json(&api.call("GET", "/v1/admin/summary", Some(&viewer), None));
    }
    assert_eq!(
        (summary["users"].as_i64(), summary["referrals"].as_i64(), summary["rewards_granted"].as_i64()),
        (Some(4), Some(3), Some(1))
    );

    let reviewer = token(&db.url, "reviewer", "dash-reviewer", None);
    let cid: Uuid = sqlx::query_scalar("SELECT referral_id FROM referrals WHERE referee_id = 'cid'").fetch_one(&db.pool).await.unwrap();
    let browser = Browser::start();
    let url = format!("http://127.0.0.1:{}/dashboard", api.port);
    browser.open(&url);
    // A wrong token is refused on the page.
    browser.type_into("#token", &format!("rst_{}", "0".repeat(64)));
    browser.click("#sign-in");
    eventually(Duration::from_secs(15), "the refusal", || async { browser.text("#signin-error").contains("not valid") }).await;

    browser.type_into("#token", &reviewer);
    browser.click("#sign-in");
    browser.wait_for("body[data-loaded='true']", Duration::from_secs(20));
    assert_eq!(browser.text("#stage-signups"), summary["users"].to_string());
    assert_eq!(browser.text("#stage-attributed"), summary["referrals"].to_string());
    assert_eq!(browser.text("#stage-rewards"), summary["rewards_granted"].to_string());
    assert_eq!(browser.text("#stage-held"), "1");
    assert!(browser.text("#leaders").contains("ana"), "the leaderboard shows ana");
    assert!(browser.text("#queue").contains(&cid.to_string()), "the queue shows cid's referral");

    browser.click(&format!("#approve-{cid}"));
    eventually(Duration::from_secs(15), "the approval message", || async {
        browser.text("#message").contains(&format!("APPROVE recorded for {cid}"))
    })
    .await;
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let shot = screenshot_path();
    std::fs::write(&shot, &png).expect("save the screenshot");
    eprintln!("dashboard screenshot: {}", shot.display());

    // The decision reaches the reward engine through the outbox and Kafka: cid becomes eligible.
    eventually(Duration::from_secs(90), "cid eligible after the approval", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM referrals WHERE referee_id = 'cid' AND status = 'eligible'").await == 1 }
    })
    .await;
    let by: String =
        sqlx::query_scalar("SELECT reviewer FROM review_decisions WHERE referral_id = $1").bind(cid).fetch_one(&db.pool).await.unwrap();
    assert_eq!(by, "api:dash-reviewer");
    let audit: i64 =
        count(&db.pool, "SELECT count(*) FROM api_admin_actions WHERE action = 'review.approve' AND token_name = 'dash-reviewer'").await;
    assert_eq!(audit, 1);
}
