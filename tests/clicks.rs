//! Attribution by referral-link clicks against a real Postgres: a registration waits for a
//! click recorded after it and is attributed when the click lands, the touch policy and the
//! click window decide between touches, and how a referral was attributed (a probabilistic
//! match, a click flood from one network) reaches the fraud scorer. Records go through the
//! runtime's production path (decode, dedupe, apply, commit); only Kafka is left out, its job
//! done by moving outbox rows to their consumer.

use chrono::{DateTime, Duration, DurationRound, Utc};
use refstream_core::events::{ReferralClicked, UserRegistered};
use refstream_core::links::Platform;
use refstream_core::UserId;
use refstream_e2e::TestDb;
use refstream_runtime::codec::encode;
use refstream_runtime::consumer::{apply_partition, Applied, Worker};
use refstream_runtime::Settings;
use uuid::Uuid;

struct Harness {
    db: TestDb,
    settings: Settings,
    attribution: attribution::Attribution,
    scorer: fraud_scorer::FraudScorer,
    offset: i64,
}

/// A click id of the shape the links service issues, from a readable name (distinct names give
/// distinct ids).
fn cid(name: &str) -> String {
    let digits: String = name.bytes().map(|b| char::from(b'0' + b % 10)).collect();
    let hash = name.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("c_{:0>26}", format!("{}{}", hash % 1_000_000_000, digits).chars().take(26).collect::<String>())
}

/// Registration time of the referees: a whole second (timestamps round-trip through millis).
fn t0() -> DateTime<Utc> {
    (Utc::now() - Duration::days(1)).duration_trunc(Duration::seconds(1)).unwrap()
}

impl Harness {
    async fn new(env: &[(&str, &str)]) -> Self {
        let mut vars: Vec<(String, String)> = vec![("REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS".into(), "0".into())];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let settings = Settings::load_dev(vars).unwrap();
        Self {
            db: TestDb::new().await,
            attribution: attribution::Attribution::new(&settings).unwrap(),
            scorer: fraud_scorer::FraudScorer::new(&settings).unwrap(),
            settings,
            offset: 0,
        }
    }

    async fn feed(db: &TestDb, offset: &mut i64, worker: &impl Worker, topic: &str, key: &str, payload: Vec<u8>) {
        *offset += 1;
        let m = refstream_e2e::record(topic, key.as_bytes(), 0, *offset, payload);
        assert_eq!(apply_partition(worker, &db.pool, &[m]).await, Applied::Committed);
    }

    async fn register(&mut self, user: &str, code: Option<&str>, click: Option<&str>, at: DateTime<Utc>) {
        let e = UserRegistered {
            event_id: Uuid::new_v4(),
            user_id: UserId::parse(user).unwrap(),
            occurred_at: at,
            referral_code: code.map(str::to_owned),
            click_id: click.map(str::to_owned),
            platform: "ios".into(),
            device_id: Some(format!("dev-{user}")),
            // A network of its own per user: no IP signal between these referrers and referees.
            ip: Some(format!("10.{}.{}.7", user.bytes().map(u32::from).sum::<u32>() % 250, user.len()).parse().unwrap()),
            email: Some(format!("{user}@example.com")),
            country: None,
        };
        let topic = self.settings.topics.user_registered.clone();
        Self::feed(&self.db, &mut self.offset, &self.attribution, &topic, user, encode(&e)).await;
        self.relay().await;
    }

    /// Records a click on `code` as the links service does (row first, then its event), at
    /// `at`, from network `net`.
    async fn click(&mut self, click_id: &str, code: &str, at: DateTime<Utc>, net: &str) {
        let referrer: String =
            sqlx::query_scalar("SELECT user_id FROM referral_codes WHERE code = $1").bind(code).fetch_one(&self.db.pool).await.unwrap();
        sqlx::query(
            "INSERT INTO referral_clicks (click_id, code, clicked_at, referrer_id, campaign_id, platform, ip_hash, ip_prefix_hash) \
             VALUES ($1, $2, $3, $4, 'default', 'ios', $5, $6)",
        )
        .bind(click_id)
        .bind(code)
        .bind(at)
        .bind(&referrer)
        .bind(format!("ip-{click_id}"))
        .bind(net)
        .execute(&self.db.pool)
        .await
        .unwrap();
        let e = ReferralClicked {
            event_id: Uuid::new_v4(),
            click_id: click_id.into(),
            code: code.into(),
            referrer_id: UserId::parse(referrer.clone()).unwrap(),
            campaign_id: "default".into(),
            platform: Platform::Ios,
            from_sdk: false,
            expired: false,
            occurred_at: at,
        };
        let topic = self.settings.topics.referral_clicked.clone();
        Self::feed(&self.db, &mut self.offset, &self.attribution, &topic, &referrer, encode(&e)).await;
        self.relay().await;
    }

    /// Moves referral-attributed outbox rows to the scorer (the relay's and Kafka's job).
    async fn relay(&mut self) {
        let rows: Vec<(i64, String, Vec<u8>)> =
            sqlx::query_as("SELECT id, key, payload FROM outbox WHERE topic = 'referral-attributed' ORDER BY id")
                .fetch_all(&self.db.pool)
                .await
                .unwrap();
        for (id, key, payload) in rows {
            sqlx::query("DELETE FROM outbox WHERE id = $1").bind(id).execute(&self.db.pool).await.unwrap();
            let topic = self.settings.topics.referral_attributed.clone();
            Self::feed(&self.db, &mut self.offset, &self.scorer, &topic, &key, payload).await;
        }
    }

    async fn code_of(&self, user: &str) -> String {
        self.db.code_of(user).await
    }

    /// (referrer, attribution, click_id, click_match, touch) of `referee`'s referral.
    async fn referral(&self, referee: &str) -> Option<(String, String, Option<String>, Option<String>, String)> {
        sqlx::query_as("SELECT referrer_id, attribution, click_id, click_match, touch FROM referrals WHERE referee_id = $1")
            .bind(referee)
            .fetch_optional(&self.db.pool)
            .await
            .unwrap()
    }

    /// How attribution decided `user` (`users.attribution`).
    async fn attribution_of(&self, user: &str) -> String {
        sqlx::query_scalar("SELECT attribution FROM users WHERE user_id = $1").bind(user).fetch_one(&self.db.pool).await.unwrap()
    }

    async fn reasons(&self, referee: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT reasons FROM assessments WHERE referee_id = $1").bind(referee).fetch_one(&self.db.pool).await.unwrap()
    }
}

#[tokio::test]
async fn a_registration_waits_for_its_click_and_is_attributed_when_it_lands() {
    let mut h = Harness::new(&[]).await;
    h.register("r1", None, None, t0() - Duration::days(1)).await;
    let code = h.code_of("r1").await;
    // The app registered before the click it carries was recorded.
    h.register("e1", None, Some(cid("c-late").as_str()), t0()).await;
    h.register("e2", None, Some(cid("c-too-late").as_str()), t0()).await;
    assert_eq!(h.referral("e1").await, None, "nothing to attribute yet");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM users WHERE click_id IS NOT NULL").await, 2, "both wait, with their click ids");

    h.click(&cid("c-late"), &code, t0() + Duration::minutes(3), "net-a").await;
    let (referrer, source, click, matched, touch) = h.referral("e1").await.expect("attributed when the click landed");
    assert_eq!(
        (referrer.as_str(), source.as_str(), click.as_deref(), matched.as_deref()),
        ("r1", "CLICK", Some(cid("c-late").as_str()), Some("exact"))
    );
    assert_eq!(touch, format!("only touch: click {} (exact)", cid("c-late")));
    assert_eq!(h.attribution_of("e1").await, "attributed");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM assessments WHERE referee_id = 'e1'").await, 1, "announced and scored");

    // Recorded 11 minutes after the registration: beyond attribution.click_wait_secs.
    h.click(&cid("c-too-late"), &code, t0() + Duration::minutes(11), "net-b").await;
    assert_eq!(h.referral("e2").await, None);
    assert_eq!(h.attribution_of("e2").await, "click_outside_window", "decided, with the reason");
    // Neither the same click again nor a re-delivery attributes anything twice.
    h.click(&cid("c-late-2"), &code, t0() + Duration::minutes(4), "net-a").await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM referrals").await, 1);
}

#[tokio::test]
async fn the_touch_policy_and_the_click_window_decide_between_touches() {
    for (policy, winner) in [("last", "ra"), ("first", "rb")] {
        let mut h = Harness::new(&[("REFSTREAM__CAMPAIGN__TOUCH", policy)]).await;
        h.register("ra", None, None, t0() - Duration::days(2)).await;
        h.register("rb", None, None, t0() - Duration::days(2)).await;
        let (code_a, code_b) = (h.code_of("ra").await, h.code_of("rb").await);
        h.click(&cid("c-b"), &code_b, t0() - Duration::hours(5), "net-b").await;
        h.register("e1", Some(&code_a), Some(cid("c-b").as_str()), t0()).await;
        let (referrer, _, _, _, touch) = h.referral("e1").await.unwrap();
        assert_eq!(referrer, winner, "touch = {policy}: {touch}");
        assert!(touch.starts_with(&format!("{policy}_touch:")), "{touch}");

        // A click older than attribution.click_window_days (7) attributes nothing.
        h.click(&cid("c-old"), &code_b, t0() - Duration::days(7) - Duration::minutes(1), "net-c").await;
        h.register("e2", None, Some(cid("c-old").as_str()), t0()).await;
        assert_eq!(h.referral("e2").await, None);
    }
}

#[tokio::test]
async fn how_a_referral_was_attributed_reaches_the_fraud_scorer() {
    let mut h = Harness::new(&[]).await;
    h.register("r1", None, None, t0() - Duration::days(1)).await;
    let code = h.code_of("r1").await;
    h.click(&cid("c-app"), &code, t0() - Duration::minutes(30), "net-a").await;
    // The app was handed c-app by a signal match (POST /v1/attribution/claim), 60% sure.
    sqlx::query("INSERT INTO click_claims (claim_id, click_id, method, confidence, candidates) VALUES ($1, $2, 'probabilistic', 0.60, 1)")
        .bind(Uuid::new_v4())
        .bind(cid("c-app"))
        .execute(&h.db.pool)
        .await
        .unwrap();
    h.register("e1", None, Some(cid("c-app").as_str()), t0()).await;
    let (_, _, _, matched, _) = h.referral("e1").await.unwrap();
    assert_eq!(matched.as_deref(), Some("probabilistic"));
    let confidence: String =
        sqlx::query_scalar("SELECT match_confidence::text FROM referrals WHERE referee_id = 'e1'").fetch_one(&h.db.pool).await.unwrap();
    assert_eq!(confidence, "0.60");
    assert_eq!(h.reasons("e1").await, ["PROBABILISTIC_ATTRIBUTION"]);
    assert_eq!(h.db.status_of("e1").await, "pending", "a probabilistic match alone holds nothing (the engine is not running here)");

    // 24 clicks on r1's link from one network within the hour, then the referee's own.
    for i in 0..24 {
        h.click(&cid(&format!("c-farm-{i}")), &code, t0() - Duration::minutes(50) + Duration::minutes(i), "net-farm").await;
    }
    h.click(&cid("c-farm-referee"), &code, t0() - Duration::minutes(5), "net-farm").await;
    h.register("e2", None, Some(cid("c-farm-referee").as_str()), t0()).await;
    let network: i32 =
        sqlx::query_scalar("SELECT network_clicks FROM referrals WHERE referee_id = 'e2'").fetch_one(&h.db.pool).await.unwrap();
    assert_eq!(network, 25);
    assert_eq!(h.reasons("e2").await, ["CLICK_FLOOD"]);
    let decision: String =
        sqlx::query_scalar("SELECT decision FROM assessments WHERE referee_id = 'e2'").fetch_one(&h.db.pool).await.unwrap();
    assert_eq!(decision, "REVIEW");
}

#[tokio::test]
async fn codes_of_a_campaign_limited_program_expire() {
    let mut h = Harness::new(&[("REFSTREAM__CAMPAIGN__CODE_VALID_DAYS", "1")]).await;
    // One instant for the whole test: t0() moves with the clock and the test compares equality.
    let t = t0();
    h.register("r1", None, None, t - Duration::days(2)).await;
    h.register("r2", None, None, t - Duration::hours(12)).await;
    let expires: DateTime<Utc> =
        sqlx::query_scalar("SELECT expires_at FROM referral_codes WHERE user_id = 'r1'").fetch_one(&h.db.pool).await.unwrap();
    assert_eq!(expires, t - Duration::days(1), "a day after its owner registered");
    let (old, fresh) = (h.code_of("r1").await, h.code_of("r2").await);
    h.register("e1", Some(&old), None, t).await;
    assert_eq!(h.referral("e1").await, None, "the code expired before e1 registered");
    h.register("e2", Some(&fresh), None, t).await;
    assert_eq!(h.referral("e2").await.map(|r| r.0).as_deref(), Some("r2"));
}

#[tokio::test]
async fn a_wait_for_a_click_that_never_lands_ends_and_a_foreign_click_id_never_waits() {
    let mut h = Harness::new(&[("REFSTREAM__CAMPAIGN__TOUCH", "first")]).await;
    h.register("r1", None, None, t0() - Duration::days(1)).await;
    let code = h.code_of("r1").await;
    // Under `first` a click could beat the typed code, so e1 waits for the click it carries.
    h.register("e1", Some(&code), Some(cid("never").as_str()), t0()).await;
    h.register("e2", None, Some(cid("never-2").as_str()), t0()).await;
    assert_eq!(h.attribution_of("e1").await, "awaiting_click");
    // An id of a shape refstream never issues cannot be recorded later: decided at once.
    h.register("e3", None, Some("undefined"), t0()).await;
    assert_eq!(h.attribution_of("e3").await, "unknown_code");

    // Registered a day ago: the wait (10 minutes) is long over.
    assert_eq!(h.attribution.end_overdue_waits(&h.db.pool).await.unwrap(), 2);
    assert_eq!(h.referral("e1").await.map(|r| r.0).as_deref(), Some("r1"), "decided without the click: the typed code");
    assert_eq!(h.attribution_of("e1").await, "attributed");
    assert_eq!(h.attribution_of("e2").await, "unknown_code");
    let announced: i64 = h.db.scalar_i64("SELECT count(*) FROM outbox WHERE topic = 'referral-attributed' AND key = 'e1'").await;
    assert_eq!(announced, 1, "announced in the sweep's transaction");
    // A click arriving now changes nothing: both are decided.
    h.click(&cid("never-2"), &code, t0() + Duration::minutes(1), "net-a").await;
    assert_eq!(h.referral("e2").await, None);
    assert_eq!(h.attribution.end_overdue_waits(&h.db.pool).await.unwrap(), 0);
}

#[tokio::test]
async fn a_bad_referral_clicked_record_becomes_a_dead_letter_and_the_partition_flows_on() {
    let mut h = Harness::new(&[]).await;
    h.register("r1", None, None, t0() - Duration::days(1)).await;
    let code = h.code_of("r1").await;
    h.register("e1", None, Some(cid("good").as_str()), t0()).await;
    let topic = h.settings.topics.referral_clicked.clone();
    // A record that is not Avro, then one whose click id is longer than any id: both rejected.
    let long = ReferralClicked {
        event_id: Uuid::new_v4(),
        click_id: "c".repeat(200),
        code: code.clone(),
        referrer_id: UserId::parse("r1").unwrap(),
        campaign_id: "default".into(),
        platform: Platform::Web,
        from_sdk: false,
        expired: false,
        occurred_at: t0(),
    };
    Harness::feed(&h.db, &mut h.offset, &h.attribution, &topic, "r1", b"{\"not\": \"avro\"}".to_vec()).await;
    Harness::feed(&h.db, &mut h.offset, &h.attribution, &topic, "r1", encode(&long)).await;
    let reasons: Vec<(String, String)> =
        sqlx::query_as("SELECT reason_label, reason FROM dead_letters WHERE consumer = 'attribution' ORDER BY \"offset\"")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "unknown_framing", "{reasons:?}");
    assert!(reasons[1].1.contains("click_id"), "the reason names the field: {reasons:?}");
    // The partition flows on: the next good click still attributes its waiting registration.
    h.click(&cid("good"), &code, t0() + Duration::minutes(1), "net-a").await;
    assert_eq!(h.referral("e1").await.map(|r| r.0).as_deref(), Some("r1"));
}
