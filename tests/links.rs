//! The `links` service as a process: the real binary against a real Postgres, driven over real
//! HTTP by the tests' own client (and, in one test, by headless Chromium following a link to a
//! signup page the test serves). Covers redirects per platform and their cookies, what a click
//! stores and publishes (through the outbox), invalid and expired codes, the landing page, the
//! app API and its errors, deferred attribution (exact, probabilistic, none), rate limits,
//! `/healthz`, `/metrics` and a bad setting.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Duration as Days, Utc};
use refstream_core::events::ReferralClicked;
use refstream_core::fraud::keyed_hash;
use refstream_core::links::{is_click_id, Platform};
use refstream_e2e::{free_port, healthy, http, spawn, HttpResponse, Proc, TestDb};
use refstream_runtime::codec::Decoder;
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde_json::Value;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1";
const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36";
const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
const IOS_STORE: &str = "https://apps.apple.com/app/id123456";
const PLAY_STORE: &str = "https://play.google.com/store/apps/details?id=com.example.app";

/// A running `links` with its ports.
struct Links {
    port: u16,
    proc: Proc,
}

impl Links {
    /// Starts `links` on `db` with `env` added, and waits until its own `/healthz` answers 200.
    fn start(db: &TestDb, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut vars: Vec<(String, String)> = vec![
            ("REFSTREAM__DATABASE__URL".into(), db.url.clone()),
            ("REFSTREAM__LINKS__LISTEN".into(), format!("127.0.0.1:{port}")),
            ("REFSTREAM__METRICS__LISTEN".into(), format!("127.0.0.1:{}", free_port())),
            ("REFSTREAM__LINKS__COOKIE_SECURE".into(), "false".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut proc = spawn("links", &[], &vars);
        let started = Instant::now();
        while !healthy(port) {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("links exited with {status}: {}", proc.log_text());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "links never became ready: {}", proc.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { port, proc }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http(self.port, "GET", path, headers, b"")
    }

    fn post_json(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        http(self.port, "POST", path, &h, body.as_bytes())
    }
}

/// The default hash key, as the service uses it (the tests do not override it).
fn hash_key() -> Vec<u8> {
    let settings = refstream_runtime::Settings::load_dev(vec![]).expect("default settings");
    settings.fraud.hash_key.expose_secret().as_bytes().to_vec()
}

/// A user who owns a fresh code; `expires_in_days` < 0 gives an expired code.
async fn seed(db: &TestDb, user: &str, expires_in_days: Option<i64>) -> String {
    let code = refstream_core::code::mint();
    let now = Utc::now();
    sqlx::query("INSERT INTO users (user_id, registered_at, platform) VALUES ($1, $2, 'ios')")
        .bind(user)
        .bind(now - Days::days(30))
        .execute(&db.pool)
        .await
        .expect("user");
    sqlx::query("INSERT INTO referral_codes (code, user_id, campaign_id, created_at, expires_at) VALUES ($1, $2, 'spring', $3, $4)")
        .bind(&code)
        .bind(user)
        .bind(now - Days::days(30))
        .bind(expires_in_days.map(|d| now + Days::days(d)))
        .execute(&db.pool)
        .await
        .expect("code");
    code
}

/// A stored click.
#[derive(Debug, sqlx::FromRow)]
struct ClickRow {
    code: String,
    referrer_id: Option<String>,
    campaign_id: Option<String>,
    platform: Option<String>,
    source: String,
    ip_hash: Option<String>,
    ip_prefix_hash: Option<String>,
    ua_hash: Option<String>,
    cookie_id: Option<String>,
    device_id: Option<String>,
    expired: bool,
}

async fn click_row(db: &TestDb, click_id: &str) -> ClickRow {
    sqlx::query_as(
        "SELECT code, referrer_id, campaign_id, platform, source, ip_hash, ip_prefix_hash, ua_hash, cookie_id, device_id, expired \
         FROM referral_clicks WHERE click_id = $1",
    )
    .bind(click_id)
    .fetch_one(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("click {click_id} is not recorded: {e}"))
}

/// The `ReferralClicked` of `click_id` in the outbox, decoded, with its topic and key.
async fn outbox_event(db: &TestDb, click_id: &str) -> (String, String, ReferralClicked) {
    let rows: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT topic, key, payload FROM outbox ORDER BY id").fetch_all(&db.pool).await.expect("outbox");
    let decoder = Decoder::new(HashMap::new());
    rows.into_iter()
        .filter_map(|(topic, key, payload)| {
            let e: ReferralClicked = decoder.decode(&payload, Utc::now()).ok()?;
            (e.click_id == click_id).then_some((topic, key, e))
        })
        .next()
        .unwrap_or_else(|| panic!("no ReferralClicked for {click_id} in the outbox"))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The value cookie `name` is set to by the answer's `Set-Cookie` headers, and the whole header.
fn set_cookie<'a>(r: &'a HttpResponse, name: &str) -> Option<(&'a str, &'a str)> {
    r.headers_named("set-cookie").into_iter().find_map(|h| {
        let value = h.strip_prefix(name)?.strip_prefix('=')?.split(';').next()?;
        Some((value, h))
    })
}

fn json(r: &HttpResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.body))
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.scalar_i64(sql).await
}

#[tokio::test(flavor = "multi_thread")]
async fn links_redirect_each_platform_and_record_the_click_with_its_event() {
    let db = TestDb::new().await;
    let code = seed(&db, "alice", None).await;
    let expired = seed(&db, "bob", Some(-1)).await;
    let links =
        Links::start(&db, &[("REFSTREAM__LINKS__DESTINATIONS__IOS", IOS_STORE), ("REFSTREAM__LINKS__DESTINATIONS__ANDROID", PLAY_STORE)]);
    let key = hash_key();

    // iOS: 302 to the App Store with the click id, both cookies set.
    let r = links.get(&format!("/r/{code}"), &[("User-Agent", IPHONE)]);
    assert_eq!(r.status, 302, "{r:?}");
    let location = r.header("location").expect("Location");
    let click_id = location.strip_prefix(&format!("{IOS_STORE}?click_id=")).unwrap_or_else(|| panic!("{location}"));
    assert!(is_click_id(click_id), "{click_id}");
    let (cookie_click, header) = set_cookie(&r, "rs_click").expect("rs_click set");
    assert_eq!(cookie_click, click_id);
    assert_eq!(header, format!("rs_click={click_id}; Path=/; Max-Age=604800; HttpOnly; SameSite=Lax"), "7 days, not Secure here");
    let (browser_id, header) = set_cookie(&r, "rs_cid").expect("rs_cid set");
    assert!(header.ends_with("Max-Age=34560000; HttpOnly; SameSite=Lax"), "{header}");

    let row = click_row(&db, click_id).await;
    assert_eq!(row.code, code);
    assert_eq!(row.referrer_id.as_deref(), Some("alice"));
    assert_eq!(row.campaign_id.as_deref(), Some("spring"));
    assert_eq!(row.platform.as_deref(), Some("ios"));
    assert_eq!(row.source, "link");
    assert!(!row.expired);
    assert_eq!(row.cookie_id.as_deref(), Some(browser_id));
    assert_eq!(row.device_id, None);
    for h in [&row.ip_hash, &row.ip_prefix_hash, &row.ua_hash] {
        assert!(h.as_deref().is_some_and(is_hex64), "{row:?}");
    }
    assert_eq!(row.ip_hash.as_deref(), Some(keyed_hash(&key, "127.0.0.1").as_str()), "hashed as attribution hashes it");
    assert_eq!(row.ip_prefix_hash.as_deref(), Some(keyed_hash(&key, "127.0.0.0/24").as_str()));
    assert_eq!(row.ua_hash.as_deref(), Some(keyed_hash(&key, IPHONE).as_str()));

    let (topic, msg_key, event) = outbox_event(&db, click_id).await;
    assert_eq!((topic.as_str(), msg_key.as_str()), ("referral-clicked", "alice"));
    assert_eq!(event.code, code);
    assert_eq!(event.referrer_id.as_str(), "alice");
    assert_eq!(event.campaign_id, "spring");
    assert_eq!(event.platform, Platform::Ios);
    assert!(!event.from_sdk && !event.expired);

    // Android, typed sloppily (lower case, a hyphen): the store URL has a query already. The
    // browser id it carries is kept, not replaced.
    let sloppy = format!("{}-{}", &code[..4], &code[4..]).to_lowercase();
    let cookie = format!("rs_cid={browser_id}; other=1");
    let r = links.get(&format!("/r/{sloppy}"), &[("User-Agent", ANDROID), ("Cookie", &cookie)]);
    assert_eq!(r.status, 302, "{r:?}");
    let location = r.header("location").expect("Location");
    let android_click = location.strip_prefix(&format!("{PLAY_STORE}&click_id=")).unwrap_or_else(|| panic!("{location}"));
    assert!(set_cookie(&r, "rs_cid").is_none(), "the browser already has an id: {r:?}");
    assert_eq!(set_cookie(&r, "rs_click").map(|c| c.0), Some(android_click));
    let row = click_row(&db, android_click).await;
    assert_eq!((row.platform.as_deref(), row.cookie_id.as_deref()), (Some("android"), Some(browser_id)));
    assert_eq!(outbox_event(&db, android_click).await.2.platform, Platform::Android);

    // Desktop has no destination here: the landing page, which records the click and sets cookies.
    let r = links.get(&format!("/r/{code}"), &[("User-Agent", WINDOWS)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("text/html")), "{r:?}");
    assert!(r.body.contains(&format!("A friend invited you with code <span class=\"code\">{code}</span>")), "{}", r.body);
    assert!(r.body.contains("Deposit at least 20.00 USD within 30 days of signing up"), "{}", r.body);
    assert!(r.body.contains("your friend gets 10.00 USD"), "{}", r.body);
    assert!(
        r.body.contains(&format!("Enter the code <span class=\"code\">{code}</span> when you sign up")),
        "no web destination: {}",
        r.body
    );
    let (landing_click, _) = set_cookie(&r, "rs_click").expect("rs_click set on the landing page");
    assert!(set_cookie(&r, "rs_cid").is_some());
    assert_eq!(click_row(&db, landing_click).await.platform.as_deref(), Some("desktop"));

    // Unknown and malformed codes: a 404 page, nothing recorded.
    let before = count(&db, "SELECT count(*) FROM referral_clicks").await;
    for path in ["/r/ZZZZZZZZ", "/r/not-a-code!", "/r/%3Cscript%3E", "/r/ABCDEFGHJK"] {
        let r = links.get(path, &[("User-Agent", IPHONE)]);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(r.body.contains("This invitation link is not valid"), "{path}: {}", r.body);
        assert!(r.header("location").is_none() && set_cookie(&r, "rs_click").is_none(), "{path}: {r:?}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM referral_clicks").await, before);
    // A link preview's HEAD records nothing either.
    let head = http(links.port, "HEAD", &format!("/r/{code}"), &[("User-Agent", IPHONE)], b"");
    assert_eq!((head.status, head.header("location"), set_cookie(&head, "rs_click").is_some()), (200, None, false), "{head:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM referral_clicks").await, before);

    // An expired code: 404, the click recorded as expired (and announced), no cookie.
    let r = links.get(&format!("/r/{expired}"), &[("User-Agent", IPHONE)]);
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("This invitation has expired"), "{}", r.body);
    assert!(r.header("location").is_none() && set_cookie(&r, "rs_click").is_none(), "{r:?}");
    let (expired_click, referrer): (String, Option<String>) =
        sqlx::query_as("SELECT click_id, referrer_id FROM referral_clicks WHERE code = $1 AND expired")
            .bind(&expired)
            .fetch_one(&db.pool)
            .await
            .expect("the expired click is recorded");
    assert_eq!(referrer.as_deref(), Some("bob"));
    assert!(outbox_event(&db, &expired_click).await.2.expired);
    assert_eq!(count(&db, "SELECT count(*) FROM outbox WHERE topic = 'referral-clicked'").await, 4);

    // Operations on the service's own port.
    assert_eq!(links.get("/healthz", &[]).status, 200);
    let metrics = links.get("/metrics", &[]);
    assert_eq!(metrics.status, 200);
    for line in [
        "refstream_links_clicks_total{outcome=\"redirect\",platform=\"ios\"} 1",
        "refstream_links_clicks_total{outcome=\"redirect\",platform=\"android\"} 1",
        "refstream_links_clicks_total{outcome=\"landing\",platform=\"desktop\"} 1",
        "refstream_links_clicks_total{outcome=\"expired\",platform=\"ios\"} 1",
        "refstream_links_rejected_total{reason=\"unknown_code\"} 4",
        "refstream_links_claims_total{match=\"none\"} 0",
    ] {
        assert!(metrics.body.contains(line), "{line} missing from:\n{}", metrics.body);
    }
    let log = links.proc.log_text();
    assert!(log.contains("click recorded"), "{log}");
    assert!(!log.contains("iPhone") && !log.contains("Pixel 8"), "no User-Agent in the log: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_report_clicks_and_bad_requests_are_named() {
    let db = TestDb::new().await;
    let code = seed(&db, "carol", None).await;
    let expired = seed(&db, "dave", Some(-2)).await;
    let links = Links::start(&db, &[]);

    let browser = "0123456789abcdef0123456789abcdef";
    let body = format!(r#"{{"code": "{code}", "platform": "android", "device_id": "dev-42", "cookie_id": "{browser}", "extra": [1, 2]}}"#);
    let r = links.post_json("/v1/clicks", &body, &[("User-Agent", "ExampleApp/2.1 okhttp/4.12")]);
    assert_eq!(r.status, 201, "{r:?}");
    let click_id = json(&r)["click_id"].as_str().expect("click_id").to_owned();
    assert!(is_click_id(&click_id), "{click_id}");
    let row = click_row(&db, &click_id).await;
    assert_eq!(row.source, "sdk");
    assert_eq!(row.platform.as_deref(), Some("android"));
    assert_eq!((row.device_id.as_deref(), row.cookie_id.as_deref()), (Some("dev-42"), Some(browser)));
    // Ids that would tie strangers together are refused: a cookie id this service never issued,
    // a placeholder device id.
    for bad in [r#""cookie_id": "ck-1""#, r#""device_id": "00000000-0000-0000-0000-000000000000""#] {
        let r = links.post_json("/v1/clicks", &format!(r#"{{"code": "{code}", {bad}}}"#), &[]);
        assert_eq!((r.status, json(&r)["error"].as_str()), (400, Some("invalid_field")), "{bad}: {r:?}");
    }
    assert_eq!(row.ua_hash.as_deref(), Some(keyed_hash(&hash_key(), "ExampleApp/2.1 okhttp/4.12").as_str()));
    let (_, key, event) = outbox_event(&db, &click_id).await;
    assert_eq!(key, "carol");
    assert!(event.from_sdk);

    // Without a platform, the reported User-Agent decides.
    let r = links.post_json("/v1/clicks", &format!(r#"{{"code": "{code}", "user_agent": "{IPHONE}"}}"#), &[]);
    assert_eq!(r.status, 201, "{r:?}");
    let id = json(&r)["click_id"].as_str().unwrap().to_owned();
    assert_eq!(click_row(&db, &id).await.platform.as_deref(), Some("ios"));

    let r = links.post_json("/v1/clicks", r#"{"code": "ZZZZZZZZ"}"#, &[]);
    assert_eq!((r.status, json(&r)["error"].as_str()), (404, Some("unknown_code")), "{r:?}");
    let r = links.post_json("/v1/clicks", r#"{"code": "??"}"#, &[]);
    assert_eq!((r.status, json(&r)["error"].as_str()), (404, Some("unknown_code")), "{r:?}");

    let r = links.post_json("/v1/clicks", &format!(r#"{{"code": "{expired}"}}"#), &[]);
    assert_eq!((r.status, json(&r)["error"].as_str()), (404, Some("expired_code")), "{r:?}");
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM referral_clicks WHERE code = '{expired}' AND expired AND source = 'sdk'")).await,
        1
    );

    let r = links.post_json("/v1/clicks", r#"{"code": "#, &[]);
    assert_eq!(r.status, 400, "{r:?}");
    let e = json(&r);
    assert_eq!(e["error"], "invalid_json");
    assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{e}");
    let r = links.post_json("/v1/clicks", r#"{"platform": "ios"}"#, &[]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(json(&r)["detail"].as_str().is_some_and(|d| d.contains("code")), "the missing field is named: {}", r.body);
    let r = links.post_json("/v1/clicks", &format!(r#"{{"code": "{code}", "platform": "palm"}}"#), &[]);
    assert_eq!((r.status, json(&r)["error"].as_str()), (400, Some("invalid_platform")), "{r:?}");
    let r = http(links.port, "POST", "/v1/clicks", &[], format!(r#"{{"code": "{code}"}}"#).as_bytes());
    assert_eq!(r.status, 415, "no JSON content type: {r:?}");

    let huge = format!(r#"{{"code": "{code}", "device_id": "{}"}}"#, "x".repeat(8192));
    let r = links.post_json("/v1/clicks", &huge, &[]);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(json(&r)["error"], "body_too_large");
    let r = links.post_json("/v1/attribution/claim", &format!(r#"{{"user_agent": "{}"}}"#, "x".repeat(8192)), &[]);
    assert_eq!(r.status, 413, "{r:?}");

    assert_eq!(count(&db, "SELECT count(*) FROM referral_clicks WHERE source = 'sdk'").await, 3, "two reports and the expired one");
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_match_exactly_by_signals_or_not_at_all() {
    let db = TestDb::new().await;
    let code = seed(&db, "erin", None).await;
    let links = Links::start(&db, &[("REFSTREAM__LINKS__DESTINATIONS__IOS", IOS_STORE)]);

    // Exact: the app has the click id (install referrer, clipboard).
    let r = links.get(&format!("/r/{code}"), &[("User-Agent", ANDROID)]);
    let android_click = set_cookie(&r, "rs_click").expect("clicked").0.to_owned();
    let r = links.post_json("/v1/attribution/claim", &format!(r#"{{"click_id": "{android_click}", "platform": "android"}}"#), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, format!(r#"{{"click_id":"{android_click}","match":"exact","confidence":1.0}}"#));
    let (method, confidence, candidates): (String, Decimal, i32) =
        sqlx::query_as("SELECT method, confidence, candidates FROM click_claims WHERE click_id = $1")
            .bind(&android_click)
            .fetch_one(&db.pool)
            .await
            .expect("the exact claim is recorded");
    assert_eq!((method.as_str(), confidence, candidates), ("exact", Decimal::new(100, 2), 1));

    // Probabilistic: an iPhone followed the link seconds ago from this address; its app has no
    // click id (the App Store dropped it) but the same address and User-Agent.
    let r = links.get(&format!("/r/{code}"), &[("User-Agent", IPHONE)]);
    assert_eq!(r.status, 302);
    let ios_click = set_cookie(&r, "rs_click").expect("clicked").0.to_owned();
    let r = links.post_json("/v1/attribution/claim", r#"{"platform": "ios"}"#, &[("User-Agent", IPHONE)]);
    assert_eq!(r.status, 200, "{r:?}");
    let answer = json(&r);
    assert_eq!(answer["match"], "probabilistic", "{answer}");
    assert_eq!(answer["click_id"], ios_click.as_str(), "{answer}");
    assert!(answer["confidence"].as_f64().is_some_and(|c| (0.5..=1.0).contains(&c)), "{answer}");
    assert!(answer["candidates"].as_u64().is_some_and(|n| n >= 1), "{answer}");
    let (method, confidence): (String, Decimal) =
        sqlx::query_as("SELECT method, confidence FROM click_claims WHERE click_id = $1 AND method = 'probabilistic'")
            .bind(&ios_click)
            .fetch_one(&db.pool)
            .await
            .expect("the probabilistic claim is recorded");
    assert_eq!((method.as_str(), confidence), ("probabilistic", Decimal::new(90, 2)));

    // An unknown click id falls back to the signals: the same ones, so the same click.
    let unknown = refstream_core::links::mint_click_id();
    let r =
        links.post_json("/v1/attribution/claim", &format!(r#"{{"click_id": "{unknown}", "platform": "ios"}}"#), &[("User-Agent", IPHONE)]);
    assert_eq!(
        (json(&r)["match"].as_str(), json(&r)["click_id"].as_str()),
        (Some("probabilistic"), Some(ios_click.as_str())),
        "{}",
        r.body
    );

    // A different app and platform: nothing.
    let r = links.post_json("/v1/attribution/claim", r#"{"platform": "desktop"}"#, &[("User-Agent", WINDOWS)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, r#"{"click_id":null,"match":"none"}"#);

    // A claim dated before the click cannot match it.
    let r = links.post_json(
        "/v1/attribution/claim",
        &format!(r#"{{"platform": "ios", "occurred_at": "{}"}}"#, (Utc::now() - Days::hours(2)).to_rfc3339()),
        &[("User-Agent", IPHONE)],
    );
    assert_eq!(json(&r)["match"], "none", "{}", r.body);
    let r = links.post_json("/v1/attribution/claim", r#"{"occurred_at": "yesterday"}"#, &[]);
    assert_eq!((r.status, json(&r)["error"].as_str()), (400, Some("invalid_json")), "{r:?}");

    assert_eq!(count(&db, "SELECT count(*) FROM click_claims").await, 3, "only matches are recorded");
    let metrics = links.get("/metrics", &[]).body;
    for line in [
        "refstream_links_claims_total{match=\"exact\"} 1",
        "refstream_links_claims_total{match=\"probabilistic\"} 2",
        "refstream_links_claims_total{match=\"none\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_and_codes_over_their_limits_get_429_with_retry_after() {
    let db = TestDb::new().await;
    let code = seed(&db, "frank", None).await;
    let links =
        Links::start(&db, &[("REFSTREAM__LINKS__RATE_LIMIT_PER_IP_PER_MIN", "5"), ("REFSTREAM__LINKS__RATE_LIMIT_PER_CODE_PER_MIN", "2")]);
    let statuses: Vec<u16> = (0..3).map(|_| links.get(&format!("/r/{code}"), &[("User-Agent", IPHONE)]).status).collect();
    assert_eq!(statuses, [200, 200, 429], "the third click on the code in a minute is refused");
    assert_eq!(links.get("/r/ZZZZZZZZ", &[]).status, 404);
    assert_eq!(links.post_json("/v1/attribution/claim", "{}", &[]).status, 200);
    let r = links.get("/r/ZZZZZZZZ", &[]);
    assert_eq!(r.status, 429, "the sixth request from the address: {r:?}");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.body.contains("Too many requests"), "{}", r.body);
    let r = links.post_json("/v1/clicks", &format!(r#"{{"code": "{code}"}}"#), &[]);
    assert_eq!((r.status, json(&r)["error"].as_str()), (429, Some("rate_limited")), "{r:?}");
    assert!(r.header("retry-after").is_some());
    assert_eq!(count(&db, "SELECT count(*) FROM referral_clicks").await, 2);
    // Operations endpoints are not limited.
    assert_eq!(links.get("/healthz", &[]).status, 200);
    let metrics = links.get("/metrics", &[]).body;
    assert!(metrics.contains("refstream_links_rejected_total{reason=\"rate_limited_code\"} 1"), "{metrics}");
    assert!(metrics.contains("refstream_links_rejected_total{reason=\"rate_limited_ip\"} 2"), "{metrics}");
}

#[test]
fn a_bad_setting_stops_links_naming_it() {
    let env = vec![("REFSTREAM__LINKS__LISTEN".to_owned(), "nonsense".to_owned())];
    let mut p = spawn("links", &[], &env);
    let status = p.child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "{}", p.log_text());
    assert!(p.log_text().contains("links.listen"), "{}", p.log_text());
    assert!(p.log_text().contains("REFSTREAM__LINKS__LISTEN"), "{}", p.log_text());
}

/// Chromium on PATH (Debian's package), or a failure telling how to get it.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("chromium is not installed: run `make test`, which installs it (apt-get install chromium)"))
}

/// What the test's signup server saw: each request line with its Cookie header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

const SIGNUP_MARKER: &str = "Create your account (served by the test)";

/// A tiny HTTP server on 127.0.0.1 that serves a signup page at `/signup` and records every
/// request; returns its port.
fn signup_server(seen: Seen) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut cookie = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("cookie") {
                        cookie = Some(value.trim().to_owned());
                    }
                }
            }
            let request_line = request_line.trim_end().to_owned();
            let (status, body) = if request_line.starts_with("GET /signup") {
                ("200 OK", format!("<!DOCTYPE html><html><head><title>Sign up</title></head><body><h1>{SIGNUP_MARKER}</h1></body></html>"))
            } else {
                ("404 Not Found", String::from("not here"))
            };
            seen.lock().unwrap().push((request_line, cookie));
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// Runs `chromium --headless --dump-dom url` with a deadline; returns the DOM it printed.
fn dump_dom(browser: &Path, url: &str, profile: &Path) -> String {
    let mut child = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", browser.display()));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s: {}", err.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let dom = out.join().unwrap_or_default();
    assert!(status.success(), "chromium exited with {status}: {}", err.join().unwrap_or_default());
    dom
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_follows_a_link_to_the_signup_page_carrying_its_click() {
    let browser = chromium();
    let db = TestDb::new().await;
    let code = seed(&db, "grace", None).await;
    let seen: Seen = Arc::default();
    let signup_port = signup_server(seen.clone());
    let signup = format!("http://127.0.0.1:{signup_port}/signup");
    let links = Links::start(&db, &[("REFSTREAM__LINKS__DESTINATIONS__DESKTOP", signup.as_str())]);
    let profile = std::env::temp_dir().join(format!("refstream-chromium-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&profile).expect("profile dir");

    let dom = tokio::task::spawn_blocking({
        let url = format!("http://127.0.0.1:{}/r/{code}", links.port);
        let profile = profile.clone();
        move || dump_dom(&browser, &url, &profile)
    })
    .await
    .expect("chromium run");
    let _ = std::fs::remove_dir_all(&profile);

    assert!(dom.contains(SIGNUP_MARKER), "the browser ended on the signup page; DOM:\n{dom}");
    let seen = seen.lock().unwrap().clone();
    let (line, cookie) = seen
        .iter()
        .find(|(line, _)| line.starts_with("GET /signup?click_id="))
        .unwrap_or_else(|| panic!("the signup server never got the click id: {seen:?}"));
    let click_id = line.strip_prefix("GET /signup?click_id=").and_then(|rest| rest.strip_suffix(" HTTP/1.1")).expect("request line");
    assert!(is_click_id(click_id), "{line}");
    let row = click_row(&db, click_id).await;
    assert_eq!((row.code.as_str(), row.platform.as_deref(), row.source.as_str()), (code.as_str(), Some("desktop"), "link"));
    let cookie = cookie.as_deref().unwrap_or_else(|| panic!("the browser sent no cookie with {line}"));
    assert!(cookie.split(';').any(|c| c.trim() == format!("rs_click={click_id}")), "rs_click is the same click: {cookie}");
    let browser_id = cookie.split(';').find_map(|c| c.trim().strip_prefix("rs_cid=")).expect("rs_cid sent");
    assert_eq!(row.cookie_id.as_deref(), Some(browser_id));
}
