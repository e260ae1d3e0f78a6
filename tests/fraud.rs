//! Fraud rings, re-scoring, the review queue and `refstream explain`, against a real Postgres
//! (a fresh database per test). Records go through the production runtime path (decode,
//! dedupe, apply, commit); a small in-test relay moves outbox rows to the worker that consumes
//! them, as the outbox-relay and Kafka would. The last test runs the real fleet end to end.

use std::process::Command;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use refstream_core::events::{DepositCompleted, ReferralScored, UserRegistered};
use refstream_core::fraud::rules::{FRAUD_RING, SAME_DEVICE, SHARED_PAYMENT_INSTRUMENT};
use refstream_core::{Currency, DerivedId, Money, UserId};
use refstream_e2e::{bin, eventually, produce, producer, Broker, Fleet, TestDb};
use refstream_runtime::codec::{encode, Decoder};
use refstream_runtime::consumer::{apply_partition, Applied, Worker};
use refstream_runtime::Settings;
use uuid::Uuid;

/// One user's registration details.
#[derive(Clone)]
struct Person {
    id: &'static str,
    device: String,
    ip: String,
    email: String,
}

fn person(id: &'static str) -> Person {
    Person {
        id,
        device: format!("dev-{id}"),
        ip: format!("203.0.{}.{}", id.len(), id.bytes().map(u32::from).sum::<u32>() % 250 + 1),
        email: format!("{id}@example.com"),
    }
}

struct Harness {
    db: TestDb,
    settings: Settings,
    attribution: attribution::Attribution,
    scorer: fraud_scorer::FraudScorer,
    engine: reward_engine::RewardEngine,
    offset: i64,
}

fn t0() -> DateTime<Utc> {
    Utc::now() - Duration::days(3)
}

impl Harness {
    async fn new() -> Self {
        let settings = refstream_e2e::test_settings();
        Self {
            db: TestDb::new().await,
            attribution: attribution::Attribution::new(&settings).unwrap(),
            scorer: fraud_scorer::FraudScorer::new(&settings).unwrap(),
            engine: reward_engine::RewardEngine::new(&settings).unwrap(),
            settings,
            offset: 0,
        }
    }

    async fn feed<W: Worker>(db: &TestDb, offset: &mut i64, worker: &W, topic: &str, key: &str, payload: Vec<u8>) {
        *offset += 1;
        let m = refstream_e2e::record(topic, key.as_bytes(), 0, *offset, payload);
        assert_eq!(apply_partition(worker, &db.pool, &[m]).await, Applied::Committed);
    }

    /// Registers `p`, with `referrer`'s code when given, then relays what follows.
    async fn register(&mut self, p: &Person, referrer: Option<&str>, minutes: i64) {
        let code = match referrer {
            Some(r) => Some(self.code_of(r).await),
            None => None,
        };
        let e = UserRegistered {
            event_id: Uuid::new_v4(),
            user_id: UserId::parse(p.id).unwrap(),
            occurred_at: t0() + Duration::minutes(minutes),
            referral_code: code,
            click_id: None,
            platform: "android".into(),
            device_id: Some(p.device.clone()),
            ip: Some(p.ip.parse().unwrap()),
            email: Some(p.email.clone()),
            country: None,
        };
        let topic = self.settings.topics.user_registered.clone();
        Self::feed(&self.db, &mut self.offset, &self.attribution, &topic, p.id, encode(&e)).await;
        self.relay().await;
    }

    /// A deposit as both consumers of `deposit-completed` see it, scorer first or engine first.
    async fn deposit(&mut self, user: &str, id: &str, amount: &str, card: &str, scorer_first: bool) {
        let d = DepositCompleted {
            event_id: Uuid::new_v4(),
            deposit_id: id.into(),
            user_id: UserId::parse(user).unwrap(),
            amount: Money::new(amount.parse().unwrap(), Currency::USD),
            payment_fingerprint: Some(card.into()),
            occurred_at: t0() + Duration::days(1),
        };
        let topic = self.settings.topics.deposit_completed.clone();
        for to_scorer in [scorer_first, !scorer_first] {
            if to_scorer {
                Self::feed(&self.db, &mut self.offset, &self.scorer, &topic, user, encode(&d)).await;
            } else {
                Self::feed(&self.db, &mut self.offset, &self.engine, &topic, user, encode(&d)).await;
            }
            self.relay().await;
        }
    }

    /// Moves outbox rows, in id order, to the worker that consumes their topic (the relay's and
    /// Kafka's job in production), until the outbox is empty. Returns the ReferralScored seen.
    async fn relay(&mut self) -> Vec<ReferralScored> {
        let mut scored = Vec::new();
        loop {
            let rows: Vec<(i64, String, String, Vec<u8>)> =
                sqlx::query_as("SELECT id, topic, key, payload FROM outbox ORDER BY id").fetch_all(&self.db.pool).await.unwrap();
            let Some(last) = rows.last().map(|r| r.0) else {
                // The engine's settlement sweep, as its background task runs it: everything in
                // front of the scorer has been applied here, so barriers open at once.
                reward_engine::settlement::settle_all(&self.engine, &self.db.pool, &reward_engine::gate::EmptyStream).await.unwrap();
                let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic <> 'reward-granted'")
                    .fetch_one(&self.db.pool)
                    .await
                    .unwrap();
                if left == 0 {
                    return scored;
                }
                continue;
            };
            sqlx::query("DELETE FROM outbox WHERE id <= $1").bind(last).execute(&self.db.pool).await.unwrap();
            let t = self.settings.topics.clone();
            for (_, topic, key, payload) in rows {
                if topic == t.referral_attributed {
                    Self::feed(&self.db, &mut self.offset, &self.scorer, &topic, &key, payload).await;
                } else if topic == t.referral_scored || topic == t.review_decided {
                    if topic == t.referral_scored {
                        scored.push(Decoder::default().decode(&payload, Utc::now()).unwrap());
                    }
                    Self::feed(&self.db, &mut self.offset, &self.engine, &topic, &key, payload).await;
                }
            }
        }
    }

    async fn code_of(&self, user: &str) -> String {
        self.db.code_of(user).await
    }

    async fn status_of(&self, referee: &str) -> String {
        self.db.status_of(referee).await
    }

    async fn assessment_of(&self, referee: &str) -> (String, Vec<String>, i32) {
        sqlx::query_as("SELECT decision, reasons, revision FROM assessments WHERE referee_id = $1")
            .bind(referee)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn paid(&self, referee: &str) -> bool {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM rewards w JOIN referrals r USING (referral_id) WHERE r.referee_id = $1)")
            .bind(referee)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// Runs the real `refstream` binary against this database.
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin("refstream"))
            .args(args)
            .env("REFSTREAM__DATABASE__URL", &self.db.url)
            .env("REFSTREAM__TELEMETRY__LEVEL", "warn")
            .output()
            .expect("run refstream");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

/// Polls every 10 ms, at most `tries` times, until `n` sessions of this database wait for an
/// advisory lock; true when they did.
async fn advisory_waiters_reach(conn: &mut sqlx::PgConnection, n: i64, tries: usize) -> bool {
    for _ in 0..tries {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if waiting >= n {
            return true;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    false
}

fn referral_id(referee: &str) -> Uuid {
    DerivedId::referral(&UserId::parse(referee).unwrap())
}

#[tokio::test]
async fn accounts_sharing_a_device_with_referrals_between_them_are_a_ring_from_the_first_score() {
    let mut h = Harness::new().await;
    let shared = "dev-farm-phone".to_owned();
    let a = Person { device: shared.clone(), ..person("ring-a") };
    let b = Person { device: shared.clone(), ..person("ring-b") };
    let c = Person { device: shared, ..person("ring-c") };
    h.register(&a, None, 0).await;
    h.register(&b, Some("ring-a"), 10).await;
    // Two accounts on one device: held for review, not yet a ring (ring_min_size is 3).
    let (decision, reasons, _) = h.assessment_of("ring-b").await;
    assert_eq!(decision, "REVIEW");
    assert!(reasons.contains(&SAME_DEVICE.to_owned()) && !reasons.contains(&FRAUD_RING.to_owned()), "{reasons:?}");
    h.register(&c, Some("ring-b"), 20).await;
    let (decision, reasons, revision) = h.assessment_of("ring-c").await;
    assert_eq!((decision.as_str(), revision), ("REJECT", 1), "{reasons:?}");
    assert!(reasons.contains(&FRAUD_RING.to_owned()), "{reasons:?}");
    // The third account completed the ring: b's referral was re-scored and rejected.
    let (decision, reasons, revision) = h.assessment_of("ring-b").await;
    assert_eq!((decision.as_str(), revision), ("REJECT", 2));
    assert!(reasons.contains(&FRAUD_RING.to_owned()));
    assert_eq!(h.status_of("ring-b").await, "rejected", "held → rejected by the re-score");
    assert_eq!(h.status_of("ring-c").await, "rejected");
    // The device links the three accounts the scorer met: c's first assessment saw all three.
    let accounts = h
        .db
        .scalar_i64(&format!(
            "SELECT (signals->'evidence'->'component'->>'accounts')::bigint FROM assessment_history WHERE referral_id = '{}' AND revision = 1",
            referral_id("ring-c")
        ))
        .await;
    assert_eq!(accounts, 3);
    // History keeps both revisions of b's assessment.
    assert_eq!(
        h.db.scalar_i64(&format!("SELECT count(*) FROM assessment_history WHERE referral_id = '{}'", referral_id("ring-b"))).await,
        2
    );
}

/// An account attribution wrote but the scorer has not met (registered without a referral,
/// referring no one yet) links nothing, whatever it shares: the graph is what the scorer has
/// read. Its device counts once the scorer meets it, with its first referral, and the ring it
/// then completes re-scores the referral inside it.
#[tokio::test]
async fn an_account_the_scorer_has_not_met_links_nothing_until_it_refers_someone() {
    let mut h = Harness::new().await;
    let shared = "dev-lounge-tablet".to_owned();
    let w = Person { device: shared.clone(), ..person("quiet-w") };
    let a = Person { device: shared.clone(), ..person("quiet-a") };
    let b = Person { device: shared, ..person("quiet-b") };
    h.register(&w, None, 0).await;
    h.register(&a, None, 5).await;
    h.register(&b, Some("quiet-a"), 10).await;
    let (_, reasons, revision) = h.assessment_of("quiet-b").await;
    assert!(!reasons.contains(&FRAUD_RING.to_owned()) && revision == 1, "{reasons:?}");
    let component = |referee: &str, revision: i32| {
        format!(
            "SELECT (signals->'evidence'->'component'->>'accounts')::bigint FROM assessment_history WHERE referral_id = '{}' AND revision = {revision}",
            referral_id(referee)
        )
    };
    assert_eq!(h.db.scalar_i64(&component("quiet-b", 1)).await, 2, "a and b: w is on the device but not met");
    // w refers c (a device of c's own): the scorer meets w, whose device joins a and b.
    h.register(&person("quiet-c"), Some("quiet-w"), 20).await;
    let (_, reasons, revision) = h.assessment_of("quiet-b").await;
    assert!(reasons.contains(&FRAUD_RING.to_owned()) && revision == 2, "{reasons:?} (revision {revision})");
    assert_eq!(h.db.scalar_i64(&component("quiet-b", 2)).await, 3, "w, a and b");
    assert_eq!(h.status_of("quiet-b").await, "rejected");
    let (_, reasons, _) = h.assessment_of("quiet-c").await;
    assert!(!reasons.contains(&FRAUD_RING.to_owned()), "c is outside the ring: {reasons:?}");
}

/// a refers b, c and d, each on their own device: all approved. Then one card turns up in the
/// deposits of b, c and a: {a, b, c} is a ring (a referred b and c), found whatever order the
/// deposits arrive in. An eligible referral it catches is rejected; a paid one is left alone
/// and reported for review; d, outside the ring, is untouched.
async fn card_ring(order: [usize; 3]) -> Harness {
    let mut h = Harness::new().await;
    h.register(&person("a"), None, 0).await;
    for (i, referee) in ["b", "c", "d"].into_iter().enumerate() {
        h.register(&person(referee), Some("a"), 10 * (i as i64 + 1)).await;
        assert_eq!(h.status_of(referee).await, "eligible");
    }
    let deposits = [("b", "dep-b", "25.00"), ("c", "dep-c", "5.00"), ("a", "dep-a", "50.00")];
    for i in order {
        let (user, id, amount) = deposits[i];
        h.deposit(user, id, amount, "card-shared", true).await;
    }
    for referee in ["b", "c"] {
        let (decision, reasons, revision) = h.assessment_of(referee).await;
        assert_eq!(decision, "REJECT", "{referee} {order:?}: {reasons:?}");
        assert!(reasons.contains(&FRAUD_RING.to_owned()), "{referee} {order:?}: {reasons:?}");
        assert!(revision >= 2, "{referee} was re-scored");
    }
    let (decision, reasons, revision) = h.assessment_of("d").await;
    assert_eq!((decision.as_str(), revision), ("APPROVE", 1), "{reasons:?}");
    assert_eq!(h.status_of("d").await, "eligible");
    // c's deposit is too small: c was never paid and now never will be.
    assert_eq!(h.status_of("c").await, "rejected", "{order:?}");
    assert!(!h.paid("c").await);
    h
}

#[tokio::test]
async fn a_ring_that_forms_later_rescores_earlier_approvals_whatever_the_order() {
    // b's qualifying deposit first: b is paid before the ring exists (the card that makes it a
    // ring arrives after b's hold ended), so the rejection claws b's reward back.
    let h = card_ring([0, 1, 2]).await;
    assert_eq!(h.status_of("b").await, "reversed", "fraud found after payment is clawed back");
    let rescored = DerivedId::event("referral-rescored:2", referral_id("b"));
    let history: i64 = h.db.scalar_i64(&format!("SELECT count(*) FROM assessment_history WHERE event_id = '{rescored}'")).await;
    assert_eq!(history, 1, "the re-score carries its own deterministic event id");
    let clawed: i64 = h
        .db
        .scalar_i64(&format!(
            "SELECT count(*) FROM rewards WHERE referral_id = '{}' AND reversal_reason = 'FRAUD' AND reversal_assessment_event_id IS NOT NULL",
            referral_id("b")
        ))
        .await;
    assert_eq!(clawed, 1, "one clawback, naming the assessment");
    let (ok, explained) = h.cli(&["explain", "b"]);
    assert!(ok && explained.contains("clawed back"), "{explained}");

    // Every other order of the three deposits ends with the same ring and the same decisions.
    for order in [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
        let h = card_ring(order).await;
        if order[0] == 2 || (order[1] == 2 && order[0] == 1) {
            // a's card was known before b's qualifying deposit: b is never paid.
            assert_ne!(h.status_of("b").await, "rewarded", "{order:?}");
        }
    }
}

/// Two accounts a promoter referred from one device: the later one (in event time) is held
/// because another account was on its device first, in whichever order they arrive.
async fn burst(later_first: bool) -> Harness {
    let mut h = Harness::new().await;
    h.register(&person("promoter"), None, 0).await;
    let (x1, x2) = (Person { device: "dev-bot".into(), ..person("x1") }, Person { device: "dev-bot".into(), ..person("x2") });
    if later_first {
        h.register(&x2, Some("promoter"), 20).await;
        assert_eq!(h.status_of("x2").await, "eligible", "alone on its device so far");
        h.register(&x1, Some("promoter"), 10).await;
    } else {
        h.register(&x1, Some("promoter"), 10).await;
        h.register(&x2, Some("promoter"), 20).await;
    }
    h
}

#[tokio::test]
async fn an_account_arriving_late_rescores_the_later_accounts_on_its_device() {
    for later_first in [false, true] {
        let h = burst(later_first).await;
        let (decision, reasons, revision) = h.assessment_of("x2").await;
        assert_eq!(decision, "REVIEW", "later_first={later_first}: {reasons:?}");
        assert_eq!(reasons, ["DEVICE_HAS_OTHER_ACCOUNTS"]);
        assert_eq!(revision, if later_first { 2 } else { 1 });
        assert_eq!(h.status_of("x2").await, "held");
        let (decision, _, _) = h.assessment_of("x1").await;
        assert_eq!(decision, "APPROVE", "x1 was first on the device");
    }
}

#[tokio::test]
async fn the_scorer_learns_a_shared_card_from_deposits_and_holds_the_referral() {
    let mut h = Harness::new().await;
    h.register(&person("r"), None, 0).await;
    h.register(&person("e"), Some("r"), 5).await;
    assert_eq!(h.status_of("e").await, "eligible");
    h.deposit("r", "dep-r", "30.00", "card-family", true).await;
    // The scorer sees e's deposit first: it re-scores the referral before the engine could pay.
    h.deposit("e", "dep-e", "30.00", "card-family", true).await;
    let (decision, reasons, revision) = h.assessment_of("e").await;
    assert_eq!((decision.as_str(), revision), ("REVIEW", 2));
    assert!(reasons.contains(&SHARED_PAYMENT_INSTRUMENT.to_owned()), "{reasons:?}");
    assert_eq!(h.status_of("e").await, "held");
    assert!(!h.paid("e").await);
    let cause: String = sqlx::query_scalar("SELECT cause FROM referral_transitions WHERE referral_id = $1 AND to_status = 'held'")
        .bind(referral_id("e"))
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert!(cause.starts_with("re-score") && cause.contains(SHARED_PAYMENT_INSTRUMENT), "{cause}");
}

#[tokio::test]
async fn reviewers_decide_held_referrals_once_append_only_and_through_the_outbox() {
    let mut h = Harness::new().await;
    h.register(&person("p"), None, 0).await;
    // Same device as the referrer: held for review.
    h.register(&Person { device: "dev-p".into(), ..person("q") }, Some("p"), 5).await;
    h.register(&person("s"), Some("p"), 6).await;
    assert_eq!(h.status_of("q").await, "held");
    assert_eq!(h.status_of("s").await, "eligible");
    h.deposit("q", "dep-q", "40.00", "card-q", false).await;
    assert!(!h.paid("q").await, "held referrals are not paid");

    let (ok, listing) = h.cli(&["review", "list"]);
    assert!(ok, "{listing}");
    assert!(
        listing.contains("1 held referral(s)") && listing.contains(&referral_id("q").to_string()) && listing.contains("SAME_DEVICE"),
        "{listing}"
    );

    // Not held: refused with a clear error, nothing recorded.
    let (ok, err) = h.cli(&["review", "approve", &referral_id("s").to_string(), "--by", "ana", "--reason", "looks fine"]);
    assert!(!ok);
    assert!(err.contains("is eligible, not held"), "{err}");
    let (ok, err) = h.cli(&["review", "approve", &Uuid::new_v4().to_string(), "--by", "ana", "--reason", "x"]);
    assert!(!ok && err.contains("no referral"), "{err}");
    let (ok, err) = h.cli(&["review", "approve", &referral_id("q").to_string(), "--by", " ", "--reason", "x"]);
    assert!(!ok && err.contains("--by"), "{err}");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM review_decisions").await, 0);

    let q = referral_id("q").to_string();
    let (ok, out) = h.cli(&["review", "approve", &q, "--by", "ana", "--reason", "siblings sharing a tablet, verified by phone"]);
    assert!(ok, "{out}");
    // One decision per hold: a second one before the engine applied the first is refused.
    let (ok, err) = h.cli(&["review", "reject", &q, "--by", "ben", "--reason", "second opinion"]);
    assert!(!ok && err.contains("already has a decision"), "{err}");
    let row: (String, String, String, String) =
        sqlx::query_as("SELECT decision, reviewer, reason, (SELECT key FROM outbox WHERE topic = 'review-decided') FROM review_decisions")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(row, ("APPROVE".into(), "ana".into(), "siblings sharing a tablet, verified by phone".into(), "q".into()));
    let tamper = sqlx::query("UPDATE review_decisions SET reviewer = 'mallory'").execute(&h.db.pool).await;
    assert!(tamper.is_err(), "review decisions are append-only");

    // The reward engine applies it: eligible, and the recorded deposit pays at once.
    h.relay().await;
    assert_eq!(h.status_of("q").await, "rewarded");
    assert!(h.paid("q").await);
    let (ok, err) = h.cli(&["review", "reject", &q, "--by", "ben", "--reason", "too late"]);
    assert!(!ok && err.contains("is rewarded, not held"), "{err}");

    let (ok, text) = h.cli(&["explain", &q]);
    assert!(ok, "{text}");
    for expected in [
        "SAME_DEVICE",
        "+60",
        "evidence",
        "same_device",
        "pending → held",
        "held → eligible: review approved by ana",
        "eligible → rewarded",
        "APPROVE by ana: siblings sharing a tablet",
        "referrer_bonus 10.00 USD to p",
    ] {
        assert!(text.contains(expected), "explain lacks {expected:?}:\n{text}");
    }
}

#[tokio::test]
async fn explain_shows_the_ring_the_rescore_and_the_transitions() {
    let h = card_ring([1, 2, 0]).await;
    let (ok, text) = h.cli(&["explain", "c"]);
    assert!(ok, "{text}");
    for expected in [
        &referral_id("c").to_string() as &str,
        "score 100 → REJECT",
        "FRAUD_RING",
        "+90",
        "a RING",
        "assessment history",
        "#1",
        "#2",
        "deposit dep-",
        "eligible → held: re-score",
        "held → rejected: re-score",
        "rewards     none",
    ] {
        assert!(text.contains(expected), "explain lacks {expected:?}:\n{text}");
    }
    let (ok, err) = h.cli(&["explain", "nobody"]);
    assert!(!ok && err.contains("no referral"), "{err}");
}

/// The real fleet: a ring of four accounts sharing a phone and a card never gets paid, while
/// ten legitimate users behind one carrier-NAT address, referring each other, are approved and
/// paid.
#[tokio::test(flavor = "multi_thread")]
async fn end_to_end_a_ring_is_never_paid_while_users_behind_one_nat_ip_are() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let fleet = Fleet::start(&db.url, &broker.bootstrap);
    let p = producer(&broker.bootstrap);
    let now = Utc::now() - Duration::hours(2);
    let registration = |user: &str, code: Option<String>, device: &str, ip: &str| UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse(user).unwrap(),
        occurred_at: now,
        referral_code: code,
        click_id: None,
        platform: "android".into(),
        device_id: Some(device.into()),
        ip: Some(ip.parse().unwrap()),
        email: Some(format!("{user}@example.net")),
        country: Some("BR".into()),
    };
    let nat = "100.64.0.1";
    const NAT: [&str; 10] = ["nat-0", "nat-1", "nat-2", "nat-3", "nat-4", "nat-5", "nat-6", "nat-7", "nat-8", "nat-9"];
    const RING: [&str; 4] = ["ring-0", "ring-1", "ring-2", "ring-3"];
    produce(&p, "user-registered", NAT[0], &encode(&registration(NAT[0], None, "phone-nat-0", nat))).await;
    produce(&p, "user-registered", RING[0], &encode(&registration(RING[0], None, "farm-phone", "45.77.1.9"))).await;
    let (nat_code, ring_code) = (db.minted_code(NAT[0]).await, db.minted_code(RING[0]).await);
    for user in &NAT[1..] {
        produce(&p, "user-registered", user, &encode(&registration(user, Some(nat_code.clone()), &format!("phone-{user}"), nat))).await;
    }
    for user in &RING[1..] {
        produce(&p, "user-registered", user, &encode(&registration(user, Some(ring_code.clone()), "farm-phone", "45.77.1.9"))).await;
    }
    for user in NAT.iter().chain(&RING) {
        let card = if user.starts_with("ring") { "card-farm".to_owned() } else { format!("card-{user}") };
        let d = DepositCompleted {
            event_id: Uuid::new_v4(),
            deposit_id: format!("{user}-1"),
            user_id: UserId::parse(*user).unwrap(),
            amount: Money::new("30.00".parse().unwrap(), Currency::USD),
            payment_fingerprint: Some(card),
            occurred_at: now + Duration::minutes(30),
        };
        produce(&p, "deposit-completed", user, &encode(&d)).await;
    }
    let pool = db.pool.clone();
    eventually(StdDuration::from_secs(60), "the NAT users' referrals paid and the ring's decided", || {
        let pool = pool.clone();
        async move {
            let (paid, decided, deposits, outbox): (i64, i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM rewards), \
                        (SELECT count(*) FROM referrals WHERE referee_id LIKE 'ring-%' AND status IN ('held', 'rejected')), \
                        (SELECT count(*) FROM deposits), (SELECT count(*) FROM outbox)",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            paid >= 9 && decided == 3 && deposits == 14 && outbox == 0
        }
    })
    .await;
    // Let anything still in flight land before the final check.
    tokio::time::sleep(StdDuration::from_secs(2)).await;
    let statuses: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT r.referee_id, r.status, a.decision FROM referrals r JOIN assessments a USING (referral_id) ORDER BY r.referee_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (referee, status, decision) in &statuses {
        if referee.starts_with("ring") {
            assert!(status == "rejected" || status == "held", "{referee}: {status}");
            assert_ne!(decision, "APPROVE", "{referee}");
        } else {
            assert_eq!((status.as_str(), decision.as_str()), ("rewarded", "APPROVE"), "{referee}");
        }
    }
    assert_eq!(statuses.len(), 12);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM rewards r JOIN referrals f USING (referral_id) WHERE f.referee_id LIKE 'ring-%'").await,
        0
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM rewards").await, 9);
    let ring_reasons =
        db.scalar_i64("SELECT count(*) FROM assessments WHERE referee_id LIKE 'ring-%' AND 'FRAUD_RING' = ANY(reasons)").await;
    assert_eq!(ring_reasons, 3, "every ring referral ends up carrying FRAUD_RING");
    drop(fleet);
}

/// A device that crosses its velocity limit makes a cluster: every referral on it is
/// re-assessed, the first accounts of the burst included, and each revision names the input
/// event that caused it.
#[tokio::test]
async fn a_device_burst_reassesses_its_first_accounts_naming_the_event() {
    let mut h = Harness::new().await;
    h.register(&person("promoter"), None, 0).await;
    let members: Vec<Person> =
        (1..=5).map(|i| Person { device: "dev-burst".into(), ..person(["y1", "y2", "y3", "y4", "y5"][i - 1]) }).collect();
    for (i, m) in members.iter().enumerate() {
        h.register(m, Some("promoter"), 10 + i as i64 * 2).await;
    }
    let (decision, reasons, revision) = h.assessment_of("y1").await;
    assert_eq!(decision, "REVIEW", "the first account of the burst: {reasons:?}");
    assert!(reasons.contains(&"VELOCITY_DEVICE".to_owned()), "{reasons:?}");
    assert!(revision >= 2, "re-assessed");
    assert_eq!(h.status_of("y1").await, "held");
    // The revision that flagged y1 was caused by the registration that crossed the limit (y4's).
    let cause: Uuid = sqlx::query_scalar(
        "SELECT cause_event_id FROM assessment_history WHERE referral_id = $1 AND decision <> 'APPROVE' ORDER BY revision LIMIT 1",
    )
    .bind(referral_id("y1"))
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(cause, DerivedId::event("referral-attributed", referral_id("y4")));
    let first: Uuid = sqlx::query_scalar("SELECT cause_event_id FROM assessment_history WHERE referral_id = $1 AND revision = 1")
        .bind(referral_id("y1"))
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(first, DerivedId::event("referral-attributed", referral_id("y1")), "a first assessment names its own referral");
}

impl Harness {
    /// Registers `p` through attribution only: its `referral-attributed` stays in the outbox.
    async fn register_only(&mut self, p: &Person, referrer: Option<&str>, minutes: i64) {
        let code = match referrer {
            Some(r) => Some(self.code_of(r).await),
            None => None,
        };
        let e = UserRegistered {
            event_id: Uuid::new_v4(),
            user_id: UserId::parse(p.id).unwrap(),
            occurred_at: t0() + Duration::minutes(minutes),
            referral_code: code,
            click_id: None,
            platform: "android".into(),
            device_id: Some(p.device.clone()),
            ip: Some(p.ip.parse().unwrap()),
            email: Some(p.email.clone()),
            country: None,
        };
        let topic = self.settings.topics.user_registered.clone();
        Self::feed(&self.db, &mut self.offset, &self.attribution, &topic, p.id, encode(&e)).await;
    }

    /// Takes every `referral-attributed` record out of the outbox, as records of `partition`.
    async fn take_attributed(&mut self, partition: i32) -> Vec<rdkafka::message::OwnedMessage> {
        let topic = self.settings.topics.referral_attributed.clone();
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as("DELETE FROM outbox WHERE topic = $1 RETURNING key, payload")
            .bind(&topic)
            .fetch_all(&self.db.pool)
            .await
            .unwrap();
        rows.into_iter()
            .map(|(key, payload)| {
                self.offset += 1;
                refstream_e2e::record(&topic, key.as_bytes(), partition, self.offset, payload)
            })
            .collect()
    }

    async fn history_rows(&self) -> i64 {
        self.db.scalar_i64("SELECT count(*) FROM assessment_history").await
    }
}

/// A whole batch at once, as a busy partition delivers it: a device burst, a ring and clean
/// referrals are all scored in one set-based apply, each with its final verdict in its first
/// revision (the burst counted on both sides of each registration, the ring from the links of
/// the whole batch), and nothing is revised twice.
#[tokio::test]
async fn one_batch_scores_a_burst_a_ring_and_clean_referrals_in_their_first_revision() {
    let mut h = Harness::new().await;
    h.register(&person("promoter"), None, 0).await;
    h.register(&person("friend"), None, 1).await;
    let burst = ["z1", "z2", "z3", "z4", "z5"];
    for (i, id) in burst.iter().enumerate() {
        h.register_only(&Person { device: "dev-burst-batch".into(), ..person(id) }, Some("promoter"), 10 + i as i64).await;
    }
    let ring =
        [person("ra"), Person { device: person("ra").device, ..person("rb") }, Person { device: person("ra").device, ..person("rc") }];
    h.register_only(&ring[0], None, 30).await;
    h.register_only(&ring[1], Some("ra"), 31).await;
    h.register_only(&ring[2], Some("rb"), 32).await;
    let clean: Vec<&'static str> = vec!["c01", "c02", "c03", "c04", "c05", "c06", "c07", "c08"];
    for (i, id) in clean.iter().enumerate() {
        h.register_only(&person(id), Some("friend"), 200 + 60 * i as i64).await;
    }
    let records = h.take_attributed(3).await;
    assert_eq!(records.len(), burst.len() + 2 + clean.len());
    assert_eq!(apply_partition(&h.scorer, &h.db.pool, &records).await, Applied::Committed);
    h.relay().await;
    for id in burst {
        let (decision, reasons, revision) = h.assessment_of(id).await;
        assert_ne!(decision, "APPROVE", "{id}: {reasons:?}");
        assert_eq!(revision, 1, "{id}: {reasons:?}");
        assert!(reasons.contains(&"VELOCITY_DEVICE".to_owned()), "{id}: {reasons:?}");
    }
    for id in ["rb", "rc"] {
        let (decision, reasons, revision) = h.assessment_of(id).await;
        assert_eq!((decision.as_str(), revision), ("REJECT", 1), "{id}: {reasons:?}");
        assert!(reasons.contains(&FRAUD_RING.to_owned()), "{id}: {reasons:?}");
    }
    for id in &clean {
        let (decision, reasons, _) = h.assessment_of(id).await;
        assert_eq!(decision, "APPROVE", "{id}: {reasons:?}");
        assert_eq!(h.status_of(id).await, "eligible");
    }
    assert_eq!(h.history_rows().await, (burst.len() + 2 + clean.len()) as i64, "one revision each");
    // Each first revision names its own input event.
    let cause: Uuid =
        sqlx::query_scalar("SELECT cause_event_id FROM assessments WHERE referee_id = 'z1'").fetch_one(&h.db.pool).await.unwrap();
    assert_eq!(cause, DerivedId::event("referral-attributed", referral_id("z1")));
    // Replaying the batch changes nothing.
    assert_eq!(apply_partition(&h.scorer, &h.db.pool, &records).await, Applied::Committed);
    assert_eq!(h.history_rows().await, (burst.len() + 2 + clean.len()) as i64);
}

/// Two partitions applied at the same time, each adding one bridge of a ring, with no device or
/// mailbox of their own referees and no referrer in common: only the locks of the identifiers
/// their graph walks reach order them. Rings need 4 accounts
/// here. q referred c earlier, both on device D. Partition 1 brings m1, who shares c's mailbox;
/// partition 2 brings m2, who shares device D. Each batch alone sees a component of 3; together
/// {q, c, m1, m2} is a ring. The ring lock orders the two graph sections, so the later one sees
/// both bridges: every referral into the ring is rejected, q → c (scored long before) included,
/// whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_partitions_completing_a_ring_at_the_same_time_never_both_miss_it() {
    for round in 0..4 {
        let mut h = Harness::new().await;
        let mut settings = h.settings.clone();
        settings.fraud.ring_min_size = 4;
        h.scorer = fraud_scorer::FraudScorer::new(&settings).unwrap();
        let q = Person { device: "dev-d".into(), ..person("q") };
        let c = Person { device: "dev-d".into(), email: "c.mailbox@example.com".into(), ..person("c") };
        h.register(&q, None, 0).await;
        h.register(&person("r1"), None, 1).await;
        h.register(&person("r2"), None, 2).await;
        h.register(&c, Some("q"), 5).await;
        let (_, reasons, _) = h.assessment_of("c").await;
        assert!(!reasons.contains(&FRAUD_RING.to_owned()), "{reasons:?}");
        let m1 = Person { email: "c.mailbox@example.com".into(), ..person("m1") };
        let m2 = Person { device: "dev-d".into(), ..person("m2") };
        h.register_only(&m1, Some("r1"), 60).await;
        let first = h.take_attributed(1).await;
        h.register_only(&m2, Some("r2"), 61).await;
        let second = h.take_attributed(2).await;
        // Hold the ring lock (exclusively, as a walk too large to lock identifier by identifier
        // would) until both batches wait on a lock: both have written their links (not
        // committed yet) and walked the graph without each other's; only their locked walks can
        // still see the whole ring.
        let mut gate = h.db.pool.acquire().await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)").bind(fraud_scorer::RING_LOCK).execute(&mut *gate).await.unwrap();
        let release = async {
            advisory_waiters_reach(&mut gate, 2, 500).await;
            sqlx::query("SELECT pg_advisory_unlock($1)").bind(fraud_scorer::RING_LOCK).execute(&mut *gate).await.unwrap();
        };
        let (a, b, ()) =
            tokio::join!(apply_partition(&h.scorer, &h.db.pool, &first), apply_partition(&h.scorer, &h.db.pool, &second), release);
        assert_eq!((a, b), (Applied::Committed, Applied::Committed));
        h.relay().await;
        for id in ["c", "m1", "m2"] {
            let (decision, reasons, _) = h.assessment_of(id).await;
            assert_eq!(decision, "REJECT", "round {round}, {id}: {reasons:?}");
            assert!(reasons.contains(&FRAUD_RING.to_owned()), "round {round}, {id}: {reasons:?}");
        }
        // q → c was revised by one of the two inputs, committed with it.
        let cause: Uuid =
            sqlx::query_scalar("SELECT cause_event_id FROM assessments WHERE referee_id = 'c'").fetch_one(&h.db.pool).await.unwrap();
        assert!(
            [DerivedId::event("referral-attributed", referral_id("m1")), DerivedId::event("referral-attributed", referral_id("m2"))]
                .contains(&cause),
            "round {round}: {cause}"
        );
    }
}

/// Two deposit batches of different partitions linking one card to a referrer and its referee
/// at the same time: the card's lock, taken by the runtime in each batch's first statement
/// (`Worker::batch_locks`), makes the second read after the first committed, so it sees the
/// card on both accounts and holds the referral. Both are held at that lock until both wait on
/// it; without it they would link the card side by side, each missing the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_partitions_linking_one_card_at_the_same_time_never_both_miss_it() {
    let mut h = Harness::new().await;
    h.register(&person("r"), None, 0).await;
    h.register(&person("e"), Some("r"), 5).await;
    assert_eq!(h.status_of("e").await, "eligible");
    let topic = h.settings.topics.deposit_completed.clone();
    let deposit = |user: &str, partition: i32| {
        let d = DepositCompleted {
            event_id: Uuid::new_v4(),
            deposit_id: format!("dep-{user}"),
            user_id: UserId::parse(user).unwrap(),
            amount: Money::new("30.00".parse().unwrap(), Currency::USD),
            payment_fingerprint: Some("card-twins".into()),
            occurred_at: t0() + Duration::days(1),
        };
        vec![refstream_e2e::record(&topic, user.as_bytes(), partition, 1, encode(&d))]
    };
    let (of_referrer, of_referee) = (deposit("r", 1), deposit("e", 2));
    let mut gate = h.db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('payment:card-twins', $1))")
        .bind(fraud_scorer::locks::KEY_SEED)
        .execute(&mut *gate)
        .await
        .unwrap();
    let release = async {
        let both_waited = advisory_waiters_reach(&mut gate, 2, 300).await;
        sqlx::query("SELECT pg_advisory_unlock(hashtextextended('payment:card-twins', $1))")
            .bind(fraud_scorer::locks::KEY_SEED)
            .execute(&mut *gate)
            .await
            .unwrap();
        both_waited
    };
    let (a, b, both_waited) =
        tokio::join!(apply_partition(&h.scorer, &h.db.pool, &of_referrer), apply_partition(&h.scorer, &h.db.pool, &of_referee), release);
    assert!(both_waited, "each batch waits for its card's lock before it links the card");
    assert_eq!((a, b), (Applied::Committed, Applied::Committed));
    let (decision, reasons, revision) = h.assessment_of("e").await;
    assert_eq!((decision.as_str(), revision), ("REVIEW", 2), "{reasons:?}");
    assert!(reasons.contains(&SHARED_PAYMENT_INSTRUMENT.to_owned()), "{reasons:?}");
    h.relay().await;
    assert_eq!(h.status_of("e").await, "held");
}

/// The scorer has no lock for the whole graph: while one partition's batch is held in the
/// middle of its section (re-assessing a referral whose row another transaction holds, with
/// every lock of its own taken), a batch of another partition with nothing in common (devices,
/// mailboxes, components, referrer) is scored and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unrelated_partitions_are_scored_side_by_side() {
    let mut h = Harness::new().await;
    h.register(&person("p1"), None, 0).await;
    h.register(&person("p2"), None, 1).await;
    h.register(&person("s1"), Some("p1"), 10).await;
    // s3 registered before s1 on s1's device and arrives late: its batch re-assesses s1.
    h.register_only(&Person { device: "dev-s1".into(), ..person("s3") }, Some("p1"), 5).await;
    let late = h.take_attributed(1).await;
    h.register_only(&person("s2"), Some("p2"), 11).await;
    let unrelated = h.take_attributed(2).await;
    let mut holder = h.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM assessments WHERE referee_id = 's1' FOR UPDATE").execute(&mut *holder).await.unwrap();
    let held = tokio::spawn({
        let (scorer, pool) = (fraud_scorer::FraudScorer::new(&h.settings).unwrap(), h.db.pool.clone());
        async move { apply_partition(&scorer, &pool, &late).await }
    });
    let mut watch = h.db.pool.acquire().await.unwrap();
    let mut waits = false;
    for _ in 0..1000 {
        // Waiting on a row another transaction holds.
        waits = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND wait_event IN ('transactionid', 'tuple'))",
        )
        .fetch_one(&mut *watch)
        .await
        .unwrap();
        if waits {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert!(waits, "the late arrival's batch reached s1's row");
    let other = tokio::time::timeout(StdDuration::from_secs(20), apply_partition(&h.scorer, &h.db.pool, &unrelated)).await;
    assert_eq!(other.expect("the unrelated batch does not wait for the held one"), Applied::Committed);
    assert_eq!(h.assessment_of("s2").await.0, "APPROVE");
    assert!(!held.is_finished(), "the held batch still waits");
    holder.rollback().await.unwrap();
    assert_eq!(held.await.unwrap(), Applied::Committed);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM assessments WHERE referee_id = 's3'").await, 1);
}
