//! Integration tests of the workers' effects against a real Postgres (a fresh database per
//! test): records go through the same runtime path as in production — decode, validate,
//! dedupe, apply, dead-letter, commit — only Kafka is left out.

use chrono::{DateTime, Duration, Utc};
use rdkafka::message::OwnedMessage;
use refstream_core::events::{DepositCompleted, DepositReversed, ReferralScored, ReversalReason, ReviewDecided, UserRegistered};
use refstream_core::lifecycle::Decision;
use refstream_core::{Currency, DerivedId, Money, UserId};
use refstream_e2e::TestDb;
use refstream_runtime::codec::{encode, AvroRecord};
use refstream_runtime::consumer::{apply_partition, Applied, Worker};
use refstream_runtime::Settings;
use reward_engine::gate::EmptyStream;
use rust_decimal::Decimal;
use uuid::Uuid;

struct Harness {
    db: TestDb,
    settings: Settings,
    offset: i64,
}

impl Harness {
    async fn new() -> Self {
        Self { db: TestDb::new().await, settings: refstream_e2e::test_settings(), offset: 0 }
    }

    fn message(&mut self, topic: &str, key: &str, payload: Vec<u8>) -> OwnedMessage {
        self.offset += 1;
        refstream_e2e::record(topic, key.as_bytes(), 0, self.offset, payload)
    }

    async fn feed<W: Worker>(&mut self, worker: &W, topic: &str, records: Vec<(String, Vec<u8>)>) {
        self.apply(worker, topic, records).await;
        self.settle().await;
    }

    /// Applies one batch of one partition, without the settlement sweep.
    async fn apply<W: Worker>(&mut self, worker: &W, topic: &str, records: Vec<(String, Vec<u8>)>) {
        let msgs: Vec<OwnedMessage> = records.into_iter().map(|(k, p)| self.message(topic, &k, p)).collect();
        assert_eq!(apply_partition(worker, &self.db.pool, &msgs).await, Applied::Committed);
    }

    /// What the engine's background sweep does, with no broker: nothing is in front of a
    /// scorer (these tests feed scores directly), so the relay's job on referral-attributed is
    /// done by deleting those rows, and every barrier opens at once.
    async fn settle(&self) -> usize {
        sqlx::query("DELETE FROM outbox WHERE topic = 'referral-attributed'").execute(&self.db.pool).await.unwrap();
        reward_engine::settlement::settle_all(&self.engine(), &self.db.pool, &EmptyStream).await.unwrap()
    }

    async fn register(&mut self, user: &str, code: Option<&str>, device: &str) {
        let w = attribution::Attribution::new(&self.settings).unwrap();
        let topic = self.settings.topics.user_registered.clone();
        self.feed(&w, &topic, vec![(user.into(), encode(&registration(user, code, None, device)))]).await;
    }

    async fn code_of(&self, user: &str) -> String {
        self.db.code_of(user).await
    }

    fn engine(&self) -> reward_engine::RewardEngine {
        reward_engine::RewardEngine::new(&self.settings).unwrap()
    }

    async fn score(&mut self, referee: &str, referrer: &str, decision: Decision) {
        let (w, topic) = (self.engine(), self.settings.topics.referral_scored.clone());
        self.feed(&w, &topic, vec![scored(referee, referrer, decision)]).await;
    }

    async fn deposit_event(&mut self, d: &DepositCompleted, copies: usize) {
        let (w, topic) = (self.engine(), self.settings.topics.deposit_completed.clone());
        let bytes = encode(d);
        self.feed(&w, &topic, (0..copies).map(|_| (d.user_id.to_string(), bytes.clone())).collect()).await;
    }

    async fn deposit(&mut self, user: &str, id: &str, amount: &str) {
        self.deposit_event(&deposit(user, id, amount, t0() + Duration::days(1), "card-1"), 1).await;
    }

    async fn balance(&self, account: &str) -> Decimal {
        sqlx::query_scalar("SELECT COALESCE((SELECT balance FROM balances WHERE account = $1 AND currency = 'USD'), 0)")
            .bind(account)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn status_of(&self, referee: &str) -> String {
        self.db.status_of(referee).await
    }

    async fn assert_books_balance(&self) {
        let imbalance = self
            .db
            .scalar_i64("SELECT count(*) FROM (SELECT currency FROM ledger_entries GROUP BY currency HAVING sum(amount) <> 0) x")
            .await;
        assert_eq!(imbalance, 0, "ledger must sum to zero per currency");
        let drift = self
            .db
            .scalar_i64(
                "SELECT count(*) FROM balances b LEFT JOIN (SELECT account, currency, sum(amount) s FROM ledger_entries GROUP BY 1, 2) l \
                 USING (account, currency) WHERE b.balance <> COALESCE(l.s, 0)",
            )
            .await;
        assert_eq!(drift, 0, "every balance equals the sum of its entries");
    }

    /// Referrer `r` and referee `e` (registered with r's code, on different devices).
    async fn referral(&mut self, r: &str, e: &str) {
        self.register(r, None, &format!("dev-{r}")).await;
        let code = self.code_of(r).await;
        self.register(e, Some(&code), &format!("dev-{e}")).await;
        assert_eq!(self.status_of(e).await, "pending");
    }
}

fn registration(user: &str, code: Option<&str>, click: Option<&str>, device: &str) -> UserRegistered {
    UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse(user).unwrap(),
        occurred_at: t0(),
        referral_code: code.map(str::to_owned),
        click_id: click.map(str::to_owned),
        platform: "web".into(),
        device_id: Some(device.into()),
        ip: Some("203.0.113.9".parse().unwrap()),
        email: Some(format!("{user}@example.com")),
        country: None,
    }
}

/// The scorer's verdict on `referee` (referred by `referrer`), keyed as the scorer keys it.
fn scored(referee: &str, referrer: &str, decision: Decision) -> (String, Vec<u8>) {
    let referee_id = UserId::parse(referee).unwrap();
    let s = ReferralScored {
        event_id: Uuid::new_v4(),
        referral_id: DerivedId::referral(&referee_id),
        referrer_id: UserId::parse(referrer).unwrap(),
        referee_id,
        score: 0,
        decision,
        reasons: vec![],
        rule_version: "test".into(),
        occurred_at: t0(),
    };
    (referee.to_owned(), encode(&s))
}

fn t0() -> DateTime<Utc> {
    Utc::now() - Duration::days(2)
}

fn deposit(user: &str, id: &str, amount: &str, at: DateTime<Utc>, card: &str) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::new_v4(),
        deposit_id: id.into(),
        user_id: UserId::parse(user).unwrap(),
        amount: Money::new(amount.parse().unwrap(), Currency::USD),
        payment_fingerprint: Some(card.into()),
        occurred_at: at,
    }
}

fn usd(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[tokio::test]
async fn score_then_deposit_pays_once_and_books_balance() {
    let mut h = Harness::new().await;
    h.referral("r1", "e1").await;
    h.score("e1", "r1", Decision::Approve).await;
    assert_eq!(h.status_of("e1").await, "eligible");
    let d = deposit("e1", "d1", "25.00", t0() + Duration::days(1), "card-e1");
    h.deposit_event(&d, 3).await; // the same event delivered three times
    h.deposit_event(&DepositCompleted { event_id: Uuid::new_v4(), ..d.clone() }, 1).await; // same deposit, new event id
    h.deposit("e1", "d2", "80.00").await; // a second qualifying deposit
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 1);
    assert_eq!(h.balance("user:r1").await, usd("10"));
    assert_eq!(h.balance("campaign:default").await, usd("-10"));
    assert_eq!(h.status_of("e1").await, "rewarded");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM outbox WHERE topic = 'reward-granted' AND key = 'r1'").await, 1);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer = 'reward-engine'").await, 4);
    h.assert_books_balance().await;
}

/// Past `kafka.dedupe_retention_hours` the runtime forgets an event id: a redelivered deposit
/// is applied again, and the deposit's own key stops a second reward.
#[tokio::test]
async fn a_deposit_redelivered_after_its_id_was_forgotten_pays_nothing_more() {
    let mut h = Harness::new().await;
    h.referral("r1", "e1").await;
    h.score("e1", "r1", Decision::Approve).await;
    let d = deposit("e1", "d1", "25.00", t0() + Duration::days(1), "card-e1");
    h.deposit_event(&d, 1).await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 1);
    let retention = h.settings.kafka.dedupe_retention_hours;
    sqlx::query("UPDATE processed_events SET processed_at = now() - make_interval(hours => $1 + 1) WHERE consumer = 'reward-engine'")
        .bind(retention)
        .execute(&h.db.pool)
        .await
        .unwrap();
    let pruned = refstream_runtime::consumer::prune_processed_events(&h.db.pool, "reward-engine", retention, None).await.unwrap();
    assert_eq!(pruned.deleted, 2, "the score's and the deposit's ids");
    let remembered = format!("SELECT count(*) FROM processed_events WHERE consumer = 'reward-engine' AND event_id = '{}'", d.event_id);
    assert_eq!(h.db.scalar_i64(&remembered).await, 0);

    h.deposit_event(&d, 1).await;
    assert_eq!(h.db.scalar_i64(&remembered).await, 1, "applied again: the runtime no longer knew it");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM deposits").await, 1);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 1);
    assert_eq!(h.balance("user:r1").await, usd("10"));
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM outbox WHERE topic = 'reward-granted'").await, 1);
    h.assert_books_balance().await;
}

#[tokio::test]
async fn deposit_before_score_pays_when_approved() {
    let mut h = Harness::new().await;
    h.referral("r2", "e2").await;
    h.deposit("e2", "d1", "20.00").await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 0, "pending referrals are not paid");
    h.score("e2", "r2", Decision::Approve).await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 1);
    assert_eq!(h.balance("user:r2").await, usd("10"));
    h.assert_books_balance().await;
}

#[tokio::test]
async fn deposits_that_do_not_qualify_pay_nothing() {
    let mut h = Harness::new().await;
    h.referral("r3", "e3").await;
    h.score("e3", "r3", Decision::Approve).await;
    h.deposit("e3", "small", "19.99").await;
    h.deposit_event(&deposit("e3", "late", "50", t0() + Duration::days(31), "c"), 1).await;
    let mut eur = deposit("e3", "eur", "50", t0() + Duration::days(1), "c");
    eur.amount.currency = Currency::parse("EUR").unwrap();
    h.deposit_event(&eur, 1).await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 0);
    assert_eq!(h.status_of("e3").await, "eligible");
    h.deposit("e3", "ok", "20.00").await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards WHERE qualifying_deposit_id = 'ok'").await, 1);
}

#[tokio::test]
async fn rejected_referrals_are_never_paid() {
    let mut h = Harness::new().await;
    h.referral("r4", "e4").await;
    h.score("e4", "r4", Decision::Reject).await;
    h.deposit("e4", "d1", "100").await;
    h.score("e4", "r4", Decision::Approve).await; // a late contrary score cannot revive it
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 0);
    assert_eq!(h.status_of("e4").await, "rejected");
}

#[tokio::test]
async fn refund_reverses_with_compensating_entries() {
    let mut h = Harness::new().await;
    h.referral("r5", "e5").await;
    h.score("e5", "r5", Decision::Approve).await;
    h.deposit("e5", "d1", "30").await;
    assert_eq!(h.balance("user:r5").await, usd("10"));
    let rev = DepositReversed {
        event_id: Uuid::new_v4(),
        deposit_id: "d1".into(),
        user_id: UserId::parse("e5").unwrap(),
        reason: ReversalReason::Chargeback,
        occurred_at: t0() + Duration::days(2),
    };
    let (w, topic) = (h.engine(), h.settings.topics.deposit_reversed.clone());
    h.feed(&w, &topic, vec![("e5".into(), encode(&rev)), ("e5".into(), encode(&rev))]).await;
    assert_eq!(h.balance("user:r5").await, usd("0"));
    assert_eq!(h.status_of("e5").await, "reversed");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM ledger_entries").await, 4, "two entries to grant, two to reverse");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM outbox WHERE topic = 'reward-reversed'").await, 1);
    h.assert_books_balance().await;
}

#[tokio::test]
async fn a_reversal_before_its_deposit_keeps_the_deposit_from_qualifying() {
    let mut h = Harness::new().await;
    h.referral("r6", "e6").await;
    h.score("e6", "r6", Decision::Approve).await;
    let rev = DepositReversed {
        event_id: Uuid::new_v4(),
        deposit_id: "d1".into(),
        user_id: UserId::parse("e6").unwrap(),
        reason: ReversalReason::Refund,
        occurred_at: t0() + Duration::days(2),
    };
    let (w, topic) = (h.engine(), h.settings.topics.deposit_reversed.clone());
    h.feed(&w, &topic, vec![("e6".into(), encode(&rev))]).await;
    h.deposit("e6", "d1", "30").await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 0);
}

#[tokio::test]
async fn a_card_shared_with_the_referrer_sends_the_referral_to_review() {
    let mut h = Harness::new().await;
    h.referral("r7", "e7").await;
    h.deposit_event(&deposit("r7", "rd", "50", t0(), "shared-card"), 1).await;
    h.score("e7", "r7", Decision::Approve).await;
    h.deposit_event(&deposit("e7", "d1", "50", t0() + Duration::days(1), "shared-card"), 1).await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 0);
    assert_eq!(h.status_of("e7").await, "held");
    // A reviewer approves: the recorded deposit pays at once.
    let review = ReviewDecided {
        event_id: Uuid::new_v4(),
        referral_id: DerivedId::referral(&UserId::parse("e7").unwrap()),
        referee_id: UserId::parse("e7").unwrap(),
        approve: true,
        reviewer: "ana".into(),
        reason: "family card, verified".into(),
        occurred_at: t0(),
    };
    let (w, topic) = (h.engine(), h.settings.topics.review_decided.clone());
    h.feed(&w, &topic, vec![("e7".into(), encode(&review))]).await;
    assert_eq!(h.status_of("e7").await, "rewarded");
    assert_eq!(h.balance("user:r7").await, usd("10"));
}

#[tokio::test]
async fn attribution_refuses_unknown_codes_and_second_attributions() {
    let mut h = Harness::new().await;
    h.referral("r8", "e8").await;
    h.register("stray", Some("ZZZZ9999"), "dev-s").await;
    // The same referee registering again (new event id) is not referred twice.
    let code = h.code_of("r8").await;
    h.register("e8", Some(&code), "dev-e8").await;
    h.register("r9", None, "dev-r9").await;
    let code9 = h.code_of("r9").await;
    h.register("e8", Some(&code9), "dev-e8").await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM referrals").await, 1);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM referral_codes").await, 4, "one code per user: r8, e8, stray, r9");
    let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM referral_codes").fetch_all(&h.db.pool).await.unwrap();
    assert!(codes.iter().all(|c| refstream_core::code::normalize(c).as_deref() == Some(c.as_str())));
}

#[tokio::test]
async fn attribution_decides_a_whole_batch_as_it_would_one_event_at_a_time() {
    let mut h = Harness::new().await;
    h.register("r1", None, "dev-r1").await;
    let code = h.code_of("r1").await;
    sqlx::query("INSERT INTO referral_clicks (click_id, code, clicked_at) VALUES ('c_00000000000000000000000001', $1, $2)")
        .bind(&code)
        .bind(t0() - Duration::hours(1))
        .execute(&h.db.pool)
        .await
        .unwrap();
    let typed = format!("{}-{}", code[..4].to_lowercase(), &code[4..]);
    let w = attribution::Attribution::new(&h.settings).unwrap();
    let topic = h.settings.topics.user_registered.clone();
    let batch = [
        registration("e1", Some(&code), None, "dev-e1"),
        registration("e1", Some(&code), None, "dev-second"), // the same user again: the first event wins
        registration("e2", None, Some("c_00000000000000000000000001"), "dev-e2"),
        registration("e3", None, Some("c_00000000000000000000000404"), "dev-e3"),
        registration("e4", Some("not a code!"), None, "dev-e4"),
        registration("e5", None, None, "dev-e5"),
        registration("e6", Some(&typed), None, "dev-e6"),
    ];
    h.apply(&w, &topic, batch.iter().map(|e| (e.user_id.to_string(), encode(e))).collect()).await;
    let referrals: Vec<(String, String, String)> =
        sqlx::query_as("SELECT referee_id, referrer_id, attribution FROM referrals ORDER BY referee_id")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    let expected = [("e1", "CODE"), ("e2", "CLICK"), ("e6", "CODE")].map(|(e, a)| (e.to_owned(), "r1".to_owned(), a.to_owned()));
    assert_eq!(referrals, expected.to_vec());
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM users").await, 7);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM users WHERE user_id = 'e1' AND device_id = 'dev-e1'").await, 1);
    assert_eq!(h.db.scalar_i64("SELECT count(DISTINCT code) FROM referral_codes").await, 7, "one code per user");
    // Each new user's row is written with its outcome (not written, then updated).
    let labels: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT user_id, attribution FROM users WHERE user_id IN ('e1', 'e2', 'e3', 'e6') ORDER BY user_id")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    let label = |u: &str, l: &str| (u.to_owned(), Some(l.to_owned()));
    assert_eq!(labels, [label("e1", "attributed"), label("e2", "attributed"), label("e3", "awaiting_click"), label("e6", "attributed")]);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM users WHERE attribution IS NULL AND user_id LIKE 'e%'").await, 0);
    let announced: Vec<String> =
        sqlx::query_scalar("SELECT key FROM outbox WHERE topic = 'referral-attributed' ORDER BY key").fetch_all(&h.db.pool).await.unwrap();
    assert_eq!(announced, ["e1", "e2", "e6"], "one ReferralAttributed per referral, in the same transaction");
    assert_eq!(
        h.db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer = 'attribution'").await,
        8,
        "every event applied once, duplicates of a user included"
    );
}

#[tokio::test]
async fn bad_records_become_dead_letters_and_the_partition_flows_on() {
    let mut h = Harness::new().await;
    h.referral("r10", "e10").await;
    h.score("e10", "r10", Decision::Approve).await;
    let w = h.engine();
    let topic = h.settings.topics.deposit_completed.clone();
    let good = deposit("e10", "d1", "25", t0() + Duration::days(1), "c");
    let mut negative = encode(&deposit("e10", "neg", "1", t0(), "c"));
    // Flip the amount's sign byte is fiddly; write a zero amount instead via a valid record.
    negative.truncate(negative.len() - 3);
    h.feed(&w, &topic, vec![("e10".into(), b"not avro".to_vec()), ("e10".into(), negative), ("e10".into(), encode(&good))]).await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM dead_letters").await, 2);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM outbox WHERE topic = 'deposit-completed.dlq'").await, 2);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 1, "the good record after the bad ones was applied");
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY \"offset\"").fetch_all(&h.db.pool).await.unwrap();
    assert!(reasons[0].contains("unknown framing"), "{reasons:?}");
    assert!(reasons[1].contains("malformed") || reasons[1].contains("truncated"), "{reasons:?}");
}

#[tokio::test]
async fn event_ids_are_deterministic_for_derived_records() {
    let referee = UserId::parse("x").unwrap();
    let id = DerivedId::referral(&referee);
    let scored = ReferralScored {
        event_id: DerivedId::event("referral-scored", id),
        referral_id: id,
        referrer_id: UserId::parse("y").unwrap(),
        referee_id: referee,
        score: 0,
        decision: Decision::Approve,
        reasons: vec![],
        rule_version: "v".into(),
        occurred_at: t0(),
    };
    assert_eq!(scored.event_id(), DerivedId::event("referral-scored", DerivedId::referral(&UserId::parse("x").unwrap())));
}

/// With a settlement delay, a reward waits for it; a card the referrer used that arrives in
/// the meantime (another partition, processed later) holds the referral instead of paying.
#[tokio::test]
async fn settlement_delay_pays_when_due_and_catches_a_late_shared_card() {
    let mut h = Harness::new().await;
    h.settings = Settings::load_dev(vec![("REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS".into(), "1".into())]).unwrap();
    h.referral("r20", "e20").await;
    h.referral("r21", "e21").await;
    h.score("e20", "r20", Decision::Approve).await;
    h.score("e21", "r21", Decision::Approve).await;
    h.deposit_event(&deposit("e20", "d20", "50", t0() + Duration::days(1), "card-e20"), 1).await;
    h.deposit_event(&deposit("e21", "d21", "50", t0() + Duration::days(1), "card-shared"), 1).await;
    // The referrer's earlier deposit with the same card is processed after the referee's.
    h.deposit_event(&deposit("r21", "dr21", "50", t0(), "card-shared"), 1).await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 0, "nothing pays before the delay");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM pending_payouts").await, 2);
    assert_eq!(h.settle().await, 0, "not due yet");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(h.settle().await, 2);
    assert_eq!(h.status_of("e20").await, "rewarded");
    assert_eq!(h.balance("user:r20").await, usd("10"));
    assert_eq!(h.status_of("e21").await, "held", "the shared card holds it for review");
    assert_eq!(h.balance("user:r21").await, usd("0"));
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM pending_payouts").await, 0);
    // A second sweep finds nothing; exactly one reward, stamped with its barrier and hold end.
    assert_eq!(h.settle().await, 0);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards WHERE barrier_id IS NOT NULL AND hold_ended_at IS NOT NULL").await, 1);
    h.assert_books_balance().await;
}

/// A paid referral the scorer rejects later is clawed back exactly once, through compensating
/// entries and a RewardReversed naming the assessment; a REVIEW after payment only lists it.
#[tokio::test]
async fn fraud_found_after_payment_is_clawed_back_once() {
    let mut h = Harness::new().await;
    h.referral("r30", "e30").await;
    h.referral("r31", "e31").await;
    for (e, r) in [("e30", "r30"), ("e31", "r31")] {
        h.score(e, r, Decision::Approve).await;
        h.deposit(e, &format!("d-{e}"), "40").await;
        assert_eq!(h.status_of(e).await, "rewarded");
    }
    h.score("e30", "r30", Decision::Reject).await;
    h.score("e30", "r30", Decision::Reject).await; // a second rejecting revision: nothing more
    h.score("e31", "r31", Decision::Review).await;
    assert_eq!(h.status_of("e30").await, "reversed");
    assert_eq!(h.status_of("e31").await, "rewarded", "REVIEW after payment keeps the money by default");
    assert_eq!(h.balance("user:r30").await, usd("0"));
    assert_eq!(h.balance("user:r31").await, usd("10"));
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards WHERE reversal_reason = 'FRAUD'").await, 1);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM ledger_entries WHERE kind = 'reverse'").await, 2);
    let payloads: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE topic = 'reward-reversed'").fetch_all(&h.db.pool).await.unwrap();
    assert_eq!(payloads.len(), 1);
    let reversed: refstream_core::events::RewardReversed =
        refstream_runtime::codec::Decoder::default().decode(&payloads[0], Utc::now()).unwrap();
    assert_eq!(reversed.reason, "FRAUD");
    assert!(reversed.assessment_event_id.is_some(), "the clawback names the assessment that caused it");
    // A later refund of the same deposit finds nothing left to take back.
    let rev = DepositReversed {
        event_id: Uuid::new_v4(),
        deposit_id: "d-e30".into(),
        user_id: UserId::parse("e30").unwrap(),
        reason: ReversalReason::Refund,
        occurred_at: t0() + Duration::days(3),
    };
    let (w, topic) = (h.engine(), h.settings.topics.deposit_reversed.clone());
    h.feed(&w, &topic, vec![("e30".into(), encode(&rev))]).await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM ledger_entries WHERE kind = 'reverse'").await, 2);
    h.assert_books_balance().await;
}

/// The set-based path: one batch of many deposits and one of many scores pay each referral
/// exactly once, and a batch replayed pays nothing more.
#[tokio::test]
async fn large_batches_pay_each_referral_once() {
    let mut h = Harness::new().await;
    let n = 60;
    for i in 0..n {
        h.referral(&format!("br{i}"), &format!("be{i}")).await;
    }
    let scores: Vec<(String, Vec<u8>)> = (0..n).map(|i| scored(&format!("be{i}"), &format!("br{i}"), Decision::Approve)).collect();
    let (w, topic) = (h.engine(), h.settings.topics.referral_scored.clone());
    h.feed(&w, &topic, scores).await;
    let deposits: Vec<(String, Vec<u8>)> = (0..n)
        .flat_map(|i| {
            let d = deposit(&format!("be{i}"), &format!("bd{i}"), "25", t0() + Duration::days(1), &format!("card-{i}"));
            [(format!("be{i}"), encode(&d)), (format!("be{i}"), encode(&d))]
        })
        .collect();
    let topic = h.settings.topics.deposit_completed.clone();
    h.feed(&w, &topic, deposits.clone()).await;
    h.feed(&w, &topic, deposits).await;
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, n);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM referrals WHERE status = 'rewarded'").await, n);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM outbox WHERE topic = 'reward-granted'").await, n);
    assert_eq!(h.balance("campaign:default").await, usd("-600"));
    h.assert_books_balance().await;
}

/// A backlog settled by several transactions at once (`settlement.concurrency`), in batches
/// smaller than the backlog, with referrers shared across batches so concurrent transactions
/// credit the same balances: each referral is paid once and every balance equals its entries.
#[tokio::test]
async fn concurrent_settlement_transactions_pay_a_backlog_once() {
    let mut h = Harness::new().await;
    h.settings = refstream_runtime::Settings::load_dev(vec![
        ("REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS".into(), "0".into()),
        ("REFSTREAM__SETTLEMENT__BATCH_SIZE".into(), "7".into()),
        ("REFSTREAM__SETTLEMENT__CONCURRENCY".into(), "4".into()),
    ])
    .unwrap();
    let (referrers, per_referrer) = (6, 16);
    for r in 0..referrers {
        h.register(&format!("cr{r}"), None, &format!("dev-cr{r}")).await;
    }
    let w = attribution::Attribution::new(&h.settings).unwrap();
    let topic = h.settings.topics.user_registered.clone();
    let mut registrations = Vec::new();
    for r in 0..referrers {
        let code = h.code_of(&format!("cr{r}")).await;
        for e in 0..per_referrer {
            let referee = format!("ce{r}x{e}");
            registrations.push((referee.clone(), encode(&registration(&referee, Some(&code), None, &format!("dev-{referee}")))));
        }
    }
    h.feed(&w, &topic, registrations).await;
    let referees: Vec<(String, String)> =
        (0..referrers).flat_map(|r| (0..per_referrer).map(move |e| (format!("ce{r}x{e}"), format!("cr{r}")))).collect();
    let engine = h.engine();
    let scores: Vec<(String, Vec<u8>)> = referees.iter().map(|(e, r)| scored(e, r, Decision::Approve)).collect();
    let scored = h.settings.topics.referral_scored.clone();
    h.feed(&engine, &scored, scores).await;
    // Every deposit recorded before the sweep runs: the whole backlog is open at once.
    let deposits: Vec<(String, Vec<u8>)> = referees
        .iter()
        .enumerate()
        .map(|(i, (e, _))| (e.clone(), encode(&deposit(e, &format!("cd{i}"), "25", t0() + Duration::days(1), &format!("card-c{i}")))))
        .collect();
    let deposited = h.settings.topics.deposit_completed.clone();
    h.apply(&engine, &deposited, deposits).await;
    let n = i64::try_from(referees.len()).unwrap();
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM pending_payouts").await, n);
    assert_eq!(h.settle().await, referees.len());
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, n);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM referrals WHERE status = 'rewarded'").await, n);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM outbox WHERE topic = 'reward-granted'").await, n);
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM pending_payouts").await, 0);
    for r in 0..referrers {
        assert_eq!(h.balance(&format!("user:cr{r}")).await, usd("10") * Decimal::from(per_referrer), "referrer cr{r}");
    }
    assert_eq!(h.balance("campaign:default").await, usd("-10") * Decimal::from(n));
    h.assert_books_balance().await;
}

/// Sets `worker`'s durable progress on a partition, as its batch's commit would.
async fn progress(pool: &sqlx::PgPool, worker: &str, topic: &str, partition: i32, next: i64) {
    sqlx::query(
        "INSERT INTO consumer_progress (consumer, topic, partition, next_offset) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
    )
    .bind(worker)
    .bind(topic)
    .bind(partition)
    .bind(next)
    .execute(pool)
    .await
    .unwrap();
}

/// A stream position fixed by the test: where `user-registered`, `deposit-completed` and
/// `referral-attributed` end.
struct FixedStream(refstream_core::settlement::Position);

impl reward_engine::gate::EndOffsets for FixedStream {
    async fn end_offsets(&self, topics: &[String]) -> anyhow::Result<refstream_core::settlement::Position> {
        Ok(self.0.iter().filter(|((t, _), _)| topics.contains(t)).map(|(k, v)| (k.clone(), *v)).collect())
    }
}

/// The gate in Postgres: a payout whose hold ended waits until attribution, the relay and the
/// scorer have applied what had arrived by then, and the scorer's latest assessment, committed
/// meanwhile, decides it.
#[tokio::test]
async fn the_gate_waits_for_the_scorer_and_applies_its_latest_assessment() {
    let mut h = Harness::new().await;
    h.referral("r40", "e40").await;
    h.referral("r41", "e41").await;
    h.score("e40", "r40", Decision::Approve).await;
    h.score("e41", "r41", Decision::Approve).await;
    let engine = h.engine();
    let pool = h.db.pool.clone();
    let ends = FixedStream(
        [(("user-registered".to_owned(), 0), 4), (("deposit-completed".to_owned(), 0), 2), (("referral-attributed".to_owned(), 3), 7)]
            .into_iter()
            .collect(),
    );
    // Deposits applied without the harness's settling.
    for (e, d) in [("e40", "d40"), ("e41", "d41")] {
        let msg = h.message("deposit-completed", e, encode(&deposit(e, d, "30", t0() + Duration::days(1), &format!("c-{e}"))));
        assert_eq!(apply_partition(&engine, &pool, &[msg]).await, Applied::Committed);
    }
    let sweep = || reward_engine::settlement::sweep(&engine, &pool, &ends);
    let stage = || h.db.scalar_i64("SELECT count(*) FROM settlement_barriers WHERE stage = 'open'");
    // The harness registered through attribution at partition 0 offsets 1..4 (next 5 ≥ 4):
    // attribution covers; a referral-attributed row is still waiting for the relay.
    sqlx::query("INSERT INTO outbox (topic, key, payload, event_id) VALUES ('referral-attributed', 'e41', '\\x00', gen_random_uuid())")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(sweep().await.unwrap(), (0, 1));
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM settlement_barriers WHERE stage = 'relay'").await, 1);
    sqlx::query("DELETE FROM outbox WHERE topic = 'referral-attributed'").execute(&pool).await.unwrap();
    assert_eq!(sweep().await.unwrap(), (0, 1), "the scorer has applied nothing yet");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 0);
    progress(&pool, "fraud-scorer", "referral-attributed", 3, 7).await;
    assert_eq!(sweep().await.unwrap(), (0, 1), "still behind on deposit-completed");
    // Meanwhile the scorer learned something about e41 and committed a rejecting revision.
    sqlx::query(
        "INSERT INTO assessments (referral_id, referrer_id, referee_id, score, decision, reasons, rule_version, revision) \
         VALUES ($1, 'r41', 'e41', 90, 'REJECT', ARRAY['FRAUD_RING'], 'test', 2)",
    )
    .bind(DerivedId::referral(&UserId::parse("e41").unwrap()))
    .execute(&pool)
    .await
    .unwrap();
    progress(&pool, "fraud-scorer", "deposit-completed", 0, 2).await;
    assert_eq!(sweep().await.unwrap(), (2, 0), "the barrier opens and both payouts settle");
    assert_eq!(stage().await, 1);
    assert_eq!(h.status_of("e40").await, "rewarded");
    assert_eq!(h.status_of("e41").await, "rejected", "the scorer's latest assessment applies before paying");
    assert_eq!(h.balance("user:r41").await, usd("0"));
    let held: i64 = h
        .db
        .scalar_i64("SELECT count(*) FROM rewards w JOIN settlement_barriers b USING (barrier_id) WHERE w.hold_ended_at = b.hold_ended_at")
        .await;
    assert_eq!(held, 1);
    h.assert_books_balance().await;
}

/// A barrier covers every payout due by its moment, whenever the payout was committed: one whose
/// hold ended before a barrier's moment settles behind that barrier, with no barrier of its own,
/// and one due after it waits for a barrier that covers it. A payout scheduled after its
/// deposit's hold (the referral was still pending then and is approved later) is due when it is
/// scheduled, so it waits for the stream up to then, not for the barrier that covered the deposit.
#[tokio::test]
async fn a_barrier_covers_the_payouts_due_by_its_moment() {
    let mut h = Harness::new().await;
    for n in 50..53 {
        h.referral(&format!("r{n}"), &format!("e{n}")).await;
    }
    let engine = h.engine();
    let pool = h.db.pool.clone();
    let referral = |e: &str| DerivedId::referral(&UserId::parse(e).unwrap());
    let barrier_of = |e: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT w.barrier_id FROM rewards w JOIN referrals r USING (referral_id) WHERE r.referee_id = $1")
                .bind(e)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let stream = |end: i64| FixedStream([(("deposit-completed".to_owned(), 0), end)].into_iter().collect());
    // Records applied without the harness's settling (which opens every barrier at once).
    let mut records = Vec::new();
    for (e, r) in [("e50", "r50"), ("e51", "r51")] {
        records.push(h.message("referral-scored", e, scored(e, r, Decision::Approve).1));
    }
    for (e, d) in [("e50", "d50"), ("e51", "d51"), ("e52", "d52")] {
        let bytes = encode(&deposit(e, d, "30", t0() + Duration::days(1), &format!("c-{e}")));
        records.push(h.message("deposit-completed", e, bytes));
    }
    records.push(h.message("referral-scored", "e52", scored("e52", "r52", Decision::Approve).1));
    let mut records = records.into_iter();
    let barriers = || h.db.scalar_i64("SELECT count(*) FROM settlement_barriers");
    let mut apply = || {
        let (engine, pool, msg) = (&engine, &pool, records.next().unwrap());
        async move { assert_eq!(apply_partition(engine, pool, &[msg]).await, Applied::Committed) }
    };
    apply().await;
    apply().await;
    apply().await; // d50
    let sweep = |end: i64| {
        let (engine, pool) = (&engine, &pool);
        async move { reward_engine::settlement::sweep(engine, pool, &stream(end)).await.unwrap() }
    };
    assert_eq!(sweep(1).await, (0, 1), "d50's barrier waits for the scorer");
    // d51 recorded by a transaction that began before the barrier's moment and committed after
    // it was captured: due before the moment, so the barrier covers it and none is made for it.
    apply().await;
    sqlx::query(
        "UPDATE pending_payouts SET due_at = (SELECT hold_ended_at FROM settlement_barriers) - interval '1 millisecond' \
         WHERE referral_id = $1",
    )
    .bind(referral("e51"))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(sweep(1).await, (0, 1));
    assert_eq!(barriers().await, 1, "a covered payout makes no barrier");
    progress(&pool, "fraud-scorer", "deposit-completed", 0, 1).await;
    assert_eq!(sweep(1).await, (2, 0), "the barrier opens and both settle behind it");
    let first = barrier_of("e50").await;
    assert_eq!(barrier_of("e51").await, first);
    // d52's referral is still pending when its deposit's hold ends: a new barrier covers it
    // (the scorer has read the stream's end already, so it opens at once), and nothing is paid.
    apply().await;
    assert_eq!(sweep(1).await, (1, 0));
    assert_eq!(barriers().await, 2);
    assert_eq!(h.status_of("e52").await, "pending");
    // Approved later: the payout is due at the approval, after every barrier so far, so it
    // waits for one that covers the stream up to then.
    apply().await;
    let after_every_barrier: bool = sqlx::query_scalar(
        "SELECT p.due_at > (SELECT max(hold_ended_at) FROM settlement_barriers) FROM pending_payouts p WHERE p.referral_id = $1",
    )
    .bind(referral("e52"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(after_every_barrier, "a payout scheduled late is due when scheduled");
    assert_eq!(sweep(2).await, (0, 1), "the stream has grown since: its barrier waits for the scorer");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards").await, 2);
    progress(&pool, "fraud-scorer", "deposit-completed", 0, 2).await;
    assert_eq!(sweep(2).await, (1, 0));
    assert_eq!(h.status_of("e52").await, "rewarded");
    assert!(barrier_of("e52").await > first);
    assert_eq!(barriers().await, 3);
    h.assert_books_balance().await;
}

/// The gauges of payouts waiting on the gate count each payout on the first barrier that covers
/// it, when no open barrier does: a payout an open barrier covers settles, and one no barrier
/// covers yet waits for the next capture, not on a stage.
#[tokio::test]
async fn waiting_payouts_count_on_the_first_barrier_that_covers_them() {
    let mut h = Harness::new().await;
    for n in 60..64 {
        h.referral(&format!("r{n}"), &format!("e{n}")).await;
    }
    let pool = h.db.pool.clone();
    sqlx::query(
        "INSERT INTO settlement_barriers (hold_ended_at, stage, upstream, opened_at) VALUES \
         (now() - interval '3 seconds', 'open', '{}', now()), (now() - interval '2 seconds', 'scorer', '{}', NULL), \
         (now() - interval '1 second', 'relay', '{}', NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Due before the open barrier, before the scorer-stage one, before the relay-stage one, after all.
    for (e, ago) in [("e60", 3.5), ("e61", 2.5), ("e62", 1.5), ("e63", 0.5)] {
        sqlx::query("INSERT INTO pending_payouts (referral_id, due_at) VALUES ($1, now() - make_interval(secs => $2))")
            .bind(DerivedId::referral(&UserId::parse(e).unwrap()))
            .bind(ago)
            .execute(&pool)
            .await
            .unwrap();
    }
    reward_engine::gate::record_waiting(&pool).await.unwrap();
    let waiting = |stage: &str| refstream_runtime::metrics::GATE_WAITING.with_label_values(&[stage]).get();
    assert_eq!((waiting("attribution"), waiting("relay"), waiting("scorer")), (0, 1, 1));
    assert_eq!(refstream_runtime::metrics::GATE_WAIT_SECONDS.with_label_values(&["scorer"]).get(), 2);
}

/// Stores a data campaign's next version, in force since before the harness's registrations (as
/// `refstream campaigns apply` records it, backdated: the harness's events are two days old).
async fn campaign_in_force(h: &Harness, toml_text: &str) {
    let d: refstream_core::campaigns::Definition = toml::from_str(toml_text).unwrap();
    d.validate().unwrap();
    sqlx::query(
        "INSERT INTO campaign_versions (campaign_id, version, definition, active, effective_from, change, changed_by) \
         VALUES ($1, (SELECT COALESCE(max(version), 0) + 1 FROM campaign_versions WHERE campaign_id = $1), $2, true, \
                 now() - interval '10 days', 'applied', 'test')",
    )
    .bind(&d.id)
    .bind(serde_json::to_value(&d).unwrap())
    .execute(&h.db.pool)
    .await
    .unwrap();
}

const LADDER: &str = r#"
id = "ladder"
name = "Ladder: two-sided, multi-level, a milestone"
currency = "USD"
min_deposit = "20"
window_days = 30
[[rewards]]
type = "referrer_bonus"
role = "referrer"
amount = "10"
[[rewards]]
type = "welcome_bonus"
role = "referee"
amount = "5"
kind = "bonus"
wagering = "10"
[[levels]]
amount = "2"
[[levels]]
amount = "1"
[[milestones]]
referrals = 2
amount = "50"
kind = "bonus"
wagering = "5"
"#;

#[tokio::test]
async fn multi_level_milestone_and_bonus_rewards_are_paid_once_to_the_right_balances() {
    let mut h = Harness::new().await;
    campaign_in_force(&h, LADDER).await;
    // amy -> bob -> cat -> {dan, eve, fay}: cat's referrals pay bob (level 2) and amy (level 3).
    h.referral("amy", "bob").await;
    let cat_code = {
        let code = h.code_of("bob").await;
        h.register("cat", Some(&code), "dev-cat").await;
        h.code_of("cat").await
    };
    for u in ["dan", "eve", "fay"] {
        h.register(u, Some(&cat_code), &format!("dev-{u}")).await;
    }
    let bound: i64 = h.db.scalar_i64("SELECT count(*) FROM referrals WHERE campaign_id = 'ladder' AND terms_version = 1").await;
    assert_eq!(bound, 5, "every referral bound to the data campaign");
    for (e, r) in [("cat", "bob"), ("dan", "cat"), ("eve", "cat"), ("fay", "cat")] {
        h.score(e, r, Decision::Approve).await;
    }
    // dan: cat 10 cash, dan 5 bonus, bob 2 (level 2), amy 1 (level 3); delivered twice.
    let d = deposit("dan", "d-dan", "25", t0() + Duration::days(1), "card-dan");
    h.deposit_event(&d, 2).await;
    // eve: the same, and cat's second rewarded referral reaches the milestone (50 bonus).
    h.deposit("eve", "d-eve", "30").await;
    h.deposit_event(&deposit("eve", "d-eve", "30", t0() + Duration::days(1), "card-1"), 1).await;
    /// (type, beneficiary, referee, level, milestone, kind, amount, wagering requirement)
    type Reward = (String, String, String, i16, Option<i32>, String, Decimal, Option<Decimal>);
    let rows: Vec<Reward> = sqlx::query_as(
        "SELECT w.reward_type, w.beneficiary_id, r.referee_id, w.level, w.milestone, w.kind, w.amount, w.wagering_requirement \
         FROM rewards w JOIN referrals r USING (referral_id) ORDER BY r.referee_id, w.level, w.reward_type",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    let row = |t: &str, who: &str, referee: &str, level: i16, m: Option<i32>, kind: &str, amount: &str, wager: Option<&str>| {
        (t.to_owned(), who.to_owned(), referee.to_owned(), level, m, kind.to_owned(), usd(amount), wager.map(usd))
    };
    assert_eq!(
        rows,
        vec![
            row("referrer_bonus", "cat", "dan", 1, None, "CASH", "10", None),
            row("welcome_bonus", "dan", "dan", 1, None, "BONUS", "5", Some("50")),
            row("level_2", "bob", "dan", 2, None, "CASH", "2", None),
            row("level_3", "amy", "dan", 3, None, "CASH", "1", None),
            row("milestone_2", "cat", "eve", 1, Some(2), "BONUS", "50", Some("250")),
            row("referrer_bonus", "cat", "eve", 1, None, "CASH", "10", None),
            row("welcome_bonus", "eve", "eve", 1, None, "BONUS", "5", Some("50")),
            row("level_2", "bob", "eve", 2, None, "CASH", "2", None),
            row("level_3", "amy", "eve", 3, None, "CASH", "1", None),
        ]
    );
    // Cash and bonus in their own balances; the campaign paid everything.
    assert_eq!(h.balance("user:cat").await, usd("20"));
    assert_eq!(h.balance("user:cat:bonus").await, usd("50"));
    assert_eq!(h.balance("user:dan:bonus").await, usd("5"));
    assert_eq!(h.balance("user:dan").await, usd("0"));
    assert_eq!(h.balance("user:bob").await, usd("4"));
    assert_eq!(h.balance("user:amy").await, usd("2"));
    assert_eq!(h.balance("campaign:ladder").await, usd("-86"));
    // RewardGranted says what each grant is.
    let payloads: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE topic = 'reward-granted'").fetch_all(&h.db.pool).await.unwrap();
    assert_eq!(payloads.len(), 9);
    let granted: Vec<refstream_core::events::RewardGranted> =
        payloads.iter().map(|p| refstream_runtime::codec::Decoder::default().decode(p, Utc::now()).unwrap()).collect();
    let milestone = granted.iter().find(|g| g.milestone == Some(2)).expect("the milestone is announced");
    assert_eq!(
        (milestone.user_id.as_str(), milestone.kind, milestone.wagering_requirement),
        ("cat", refstream_core::campaign::RewardKind::Bonus, Some(usd("250")))
    );
    assert_eq!(granted.iter().filter(|g| g.level == 3).map(|g| g.user_id.as_str()).collect::<Vec<_>>(), ["amy", "amy"]);

    // eve's deposit is refunded: her referral's rewards go back, the milestone with them.
    let rev = DepositReversed {
        event_id: Uuid::new_v4(),
        deposit_id: "d-eve".into(),
        user_id: UserId::parse("eve").unwrap(),
        reason: ReversalReason::Refund,
        occurred_at: t0() + Duration::days(2),
    };
    let (w, topic) = (h.engine(), h.settings.topics.deposit_reversed.clone());
    h.feed(&w, &topic, vec![("eve".into(), encode(&rev))]).await;
    assert_eq!(h.balance("user:cat:bonus").await, usd("0"));
    assert_eq!(h.balance("user:bob").await, usd("2"));
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards WHERE reversed_at IS NOT NULL").await, 5);
    // fay is cat's second standing referral again: the milestone was paid once, ever.
    h.deposit("fay", "d-fay", "40").await;
    assert_eq!(h.status_of("fay").await, "rewarded");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards WHERE milestone IS NOT NULL").await, 1);
    assert_eq!(h.balance("user:cat").await, usd("20"));
    assert_eq!(h.balance("user:cat:bonus").await, usd("0"));
    h.assert_books_balance().await;
}

impl Harness {
    async fn verdict(&mut self, user: &str, verified: bool, hours_after_t0: i64) {
        let v = refstream_core::events::UserVerified {
            event_id: Uuid::new_v4(),
            user_id: UserId::parse(user).unwrap(),
            verified,
            reason: (!verified).then(|| "document mismatch".to_owned()),
            occurred_at: t0() + Duration::hours(hours_after_t0),
        };
        let (w, topic) = (self.engine(), self.settings.topics.user_verified.clone());
        self.feed(&w, &topic, vec![(user.into(), encode(&v))]).await;
    }
}

/// A campaign paying 10 USD to the referrer on a first deposit of at least 20 within
/// `window_days` of the referee's registration, with `tail` (its `[kyc]` or `[limits]`).
fn referrer_bonus(id: &str, window_days: u32, tail: &str) -> String {
    format!(
        "id = \"{id}\"\nname = \"10 to the referrer\"\ncurrency = \"USD\"\nmin_deposit = \"20\"\nwindow_days = {window_days}\n\
         [[rewards]]\ntype = \"referrer_bonus\"\nrole = \"referrer\"\namount = \"10\"\n{tail}"
    )
}

#[tokio::test]
async fn kyc_verdicts_arriving_in_any_order_end_the_same() {
    let mut h = Harness::new().await;
    campaign_in_force(&h, &referrer_bonus("verified-only", 30, "[kyc]\nreferee = true\n")).await;
    h.referral("kr", "kx").await;
    let code = h.code_of("kr").await;
    h.register("ky", Some(&code), "dev-ky").await;
    for e in ["kx", "ky"] {
        h.score(e, "kr", Decision::Approve).await;
        h.deposit(e, &format!("d-{e}"), "25").await;
        assert_eq!(h.status_of(e).await, "eligible", "waits for the referee's verification");
    }
    // kx: REJECTED (hour 1) arrives first and rejects; VERIFIED (hour 2), the later verdict,
    // undoes it and the referral pays.
    h.verdict("kx", false, 1).await;
    assert_eq!(h.status_of("kx").await, "rejected");
    h.verdict("kx", true, 2).await;
    assert_eq!(h.status_of("kx").await, "rewarded");
    // ky: the same two verdicts arrive the other way round: the same end.
    h.verdict("ky", true, 2).await;
    h.verdict("ky", false, 1).await;
    assert_eq!(h.status_of("ky").await, "rewarded");
    assert_eq!(h.balance("user:kr").await, usd("20"));
    let undone: Vec<String> = sqlx::query_scalar(
        "SELECT t.from_status || ' -> ' || t.to_status FROM referral_transitions t JOIN referrals r USING (referral_id) \
         WHERE r.referee_id = 'kx' ORDER BY t.id",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(undone, ["pending -> eligible", "eligible -> rejected", "rejected -> eligible", "eligible -> rewarded"]);
    // A fraud rejection is never undone by a verification.
    h.register("kz", Some(&code), "dev-kz").await;
    h.score("kz", "kr", Decision::Reject).await;
    h.verdict("kz", false, 1).await;
    h.verdict("kz", true, 2).await;
    assert_eq!(h.status_of("kz").await, "rejected");
    h.assert_books_balance().await;
}

const CAPPED_LADDER: &str = r#"
id = "capped-ladder"
name = "10 to the referrer, 2 to theirs, a budget"
currency = "USD"
min_deposit = "20"
window_days = 30
[[rewards]]
type = "referrer_bonus"
role = "referrer"
amount = "10"
[[levels]]
amount = "2"
[limits]
budget = "12"
pay_capped_when_raised = true
"#;

#[tokio::test]
async fn a_capped_referral_is_released_only_when_its_whole_cost_fits_the_raised_budget() {
    let mut h = Harness::new().await;
    campaign_in_force(&h, CAPPED_LADDER).await;
    // root -> ref -> {e1, e2}: each of ref's referrals costs 10 + 2 (root's level 2).
    h.referral("root", "ref").await;
    let code = h.code_of("ref").await;
    for e in ["e1", "e2"] {
        h.register(e, Some(&code), &format!("dev-{e}")).await;
        h.score(e, "ref", Decision::Approve).await;
    }
    h.deposit("e1", "d-e1", "25").await;
    h.deposit("e2", "d-e2", "25").await;
    assert_eq!((h.status_of("e1").await, h.status_of("e2").await), ("rewarded".to_owned(), "capped".to_owned()));
    // Raised to 22: the referrer's 10 would fit, the whole 12 does not. It stays capped, once,
    // however many sweeps run (never released only to be capped again).
    campaign_in_force(&h, &CAPPED_LADDER.replace("budget = \"12\"", "budget = \"22\"")).await;
    for _ in 0..3 {
        h.settle().await;
    }
    assert_eq!(h.status_of("e2").await, "capped");
    let moves = "SELECT count(*) FROM referral_transitions t JOIN referrals r USING (referral_id) WHERE r.referee_id = 'e2' AND 'capped' IN (t.from_status, t.to_status)";
    assert_eq!(h.db.scalar_i64(moves).await, 1);
    // Raised to 24: it fits whole, and is paid once.
    campaign_in_force(&h, &CAPPED_LADDER.replace("budget = \"12\"", "budget = \"24\"")).await;
    h.settle().await;
    assert_eq!(h.status_of("e2").await, "rewarded");
    assert_eq!(h.balance("user:root").await, usd("4"));
    assert_eq!(h.balance("user:ref").await, usd("20"));
    h.assert_books_balance().await;
}

#[tokio::test]
async fn a_referrers_third_referral_is_capped_from_what_was_paid_before_and_others_are_not() {
    let mut h = Harness::new().await;
    campaign_in_force(&h, &referrer_bonus("referrer-cap", 30, "[limits]\nper_referrer = 2\n")).await;
    h.register("pr", None, "dev-pr").await;
    h.register("qr", None, "dev-qr").await;
    let (pr, qr) = (h.code_of("pr").await, h.code_of("qr").await);
    for (e, code, referrer) in [("p1", &pr, "pr"), ("p2", &pr, "pr"), ("p3", &pr, "pr"), ("q1", &qr, "qr")] {
        h.register(e, Some(code), &format!("dev-{e}")).await;
        h.score(e, referrer, Decision::Approve).await;
    }
    // Each deposit settles on its own: the third reads the referrer's two paid referrals back
    // from the rewards (what earlier transactions committed), not from its own batch.
    for e in ["p1", "p2", "p3", "q1"] {
        h.deposit(e, &format!("d-{e}"), "25").await;
    }
    let statuses = [h.status_of("p1").await, h.status_of("p2").await, h.status_of("p3").await, h.status_of("q1").await];
    assert_eq!(statuses, ["rewarded", "rewarded", "capped", "rewarded"]);
    let reason: String = sqlx::query_scalar(
        "SELECT t.cause FROM referral_transitions t JOIN referrals r USING (referral_id) WHERE r.referee_id = 'p3' AND t.to_status = 'capped'",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert!(reason.contains("referrer cap: 2"), "{reason}");
    assert_eq!(h.balance("user:pr").await, usd("20"));
    assert_eq!(h.balance("user:qr").await, usd("10"));
    h.assert_books_balance().await;
}

/// A campaign of [`referrer_bonus`] paying at most `max` rewarded referrals in all, releasing
/// the capped ones when a version raises it.
fn one_reward(max: u32) -> String {
    referrer_bonus("one-reward", 30, &format!("[limits]\nmax_rewarded_referrals = {max}\npay_capped_when_raised = true\n"))
}

#[tokio::test]
async fn a_capped_referral_is_paid_once_a_reversal_frees_the_room_it_needs_and_only_then() {
    let mut h = Harness::new().await;
    campaign_in_force(&h, &one_reward(1)).await;
    h.register("or", None, "dev-or").await;
    let code = h.code_of("or").await;
    for e in ["o1", "o2"] {
        h.register(e, Some(&code), &format!("dev-{e}")).await;
        h.score(e, "or", Decision::Approve).await;
    }
    h.deposit("o1", "d-o1", "25").await;
    h.deposit("o2", "d-o2", "25").await;
    assert_eq!((h.status_of("o1").await, h.status_of("o2").await), ("rewarded".to_owned(), "capped".to_owned()));
    // One engine's sweeps: the first walks the capped referrals and keeps what it saw; those
    // after it find nothing changed (no new version, no reversal) and leave it capped.
    let (engine, pool) = (h.engine(), h.db.pool.clone());
    for _ in 0..3 {
        reward_engine::settlement::settle_all(&engine, &pool, &EmptyStream).await.unwrap();
    }
    assert_eq!(h.status_of("o2").await, "capped");
    // o1's deposit is charged back: its reward is reversed, and the room it used pays o2, once.
    let rev = DepositReversed {
        event_id: Uuid::new_v4(),
        deposit_id: "d-o1".into(),
        user_id: UserId::parse("o1").unwrap(),
        reason: ReversalReason::Chargeback,
        occurred_at: t0() + Duration::days(2),
    };
    let (w, topic) = (h.engine(), h.settings.topics.deposit_reversed.clone());
    h.apply(&w, &topic, vec![("o1".into(), encode(&rev))]).await;
    assert_eq!(h.status_of("o1").await, "reversed");
    // The same engine sees the campaign's reversed rewards grow and walks its capped referrals again.
    for _ in 0..2 {
        reward_engine::settlement::settle_all(&engine, &pool, &EmptyStream).await.unwrap();
    }
    assert_eq!(h.status_of("o2").await, "rewarded");
    assert_eq!(h.balance("user:or").await, usd("10"), "10 granted, 10 reversed, 10 granted");
    assert_eq!(h.db.scalar_i64("SELECT count(*) FROM rewards WHERE reversed_at IS NULL").await, 1);
    h.assert_books_balance().await;
}

#[tokio::test]
async fn a_campaign_with_a_window_shorter_than_the_defaults_expires_its_referrals_by_its_own_window() {
    let mut h = Harness::new().await;
    // A referral made before the campaign (the default's 30 days) and one bound to a campaign
    // of one day, both registered two days ago: the sweep reads back as far as the shortest
    // window any campaign has, and expires only the one whose own window ended.
    h.register("wr", None, "dev-wr").await;
    let code = h.code_of("wr").await;
    h.register("w-default", Some(&code), "dev-w-default").await;
    campaign_in_force(&h, &referrer_bonus("short-window", 1, "")).await;
    h.register("w-short", Some(&code), "dev-w-short").await;
    for e in ["w-default", "w-short"] {
        h.score(e, "wr", Decision::Approve).await;
    }
    let (engine, pool) = (h.engine(), h.db.pool.clone());
    // The first round captures where deposits end; the next expires what had expired by then.
    for _ in 0..2 {
        reward_engine::expiry::sweep(&engine, &pool, &EmptyStream).await.unwrap();
    }
    assert_eq!((h.status_of("w-default").await, h.status_of("w-short").await), ("eligible".to_owned(), "expired".to_owned()));
    let cause: String = sqlx::query_scalar(
        "SELECT t.cause FROM referral_transitions t JOIN referrals r USING (referral_id) WHERE r.referee_id = 'w-short' AND t.to_status = 'expired'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(cause.starts_with("window of 1 days ended"), "{cause}");
}

#[tokio::test]
async fn a_foreign_deposit_converts_at_the_latest_rate_of_either_direction_in_force_at_its_time() {
    let mut h = Harness::new().await;
    h.referral("fr", "fe").await;
    h.score("fe", "fr", Decision::Approve).await;
    // EUR/USD 1.00 long before the deposit, USD/EUR 0.80 (1.25 the other way) just before it,
    // EUR/USD 0.50 after it: the deposit's 18 EUR are 22.50 USD, over the 20 USD threshold.
    for (base, quote, rate, at) in [
        ("EUR", "USD", "1.00", t0() - Duration::days(10)),
        ("USD", "EUR", "0.80", t0() + Duration::hours(12)),
        ("EUR", "USD", "0.50", t0() + Duration::days(5)),
    ] {
        sqlx::query("INSERT INTO fx_rates (base, quote, rate, effective_at, recorded_by) VALUES ($1, $2, $3::numeric, $4, 'test')")
            .bind(base)
            .bind(quote)
            .bind(rate)
            .bind(at)
            .execute(&h.db.pool)
            .await
            .unwrap();
    }
    let mut eur = deposit("fe", "d-eur", "18", t0() + Duration::days(1), "c");
    eur.amount.currency = Currency::parse("EUR").unwrap();
    h.deposit_event(&eur, 1).await;
    assert_eq!(h.status_of("fe").await, "rewarded");
    let (rate, rate_at): (Decimal, DateTime<Utc>) =
        sqlx::query_as("SELECT fx_rate, fx_rate_at FROM rewards WHERE qualifying_deposit_id = 'd-eur'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(rate, Decimal::new(125, 2));
    assert!((rate_at - (t0() + Duration::hours(12))).num_seconds().abs() < 5, "{rate_at}");
}

#[tokio::test]
async fn a_raise_releases_a_capped_referral_under_an_engine_that_already_walked_the_campaign() {
    let mut h = Harness::new().await;
    campaign_in_force(&h, &one_reward(1)).await;
    h.register("vr", None, "dev-vr").await;
    let code = h.code_of("vr").await;
    for e in ["v1", "v2"] {
        h.register(e, Some(&code), &format!("dev-{e}")).await;
        h.score(e, "vr", Decision::Approve).await;
        h.deposit(e, &format!("d-{e}"), "25").await;
    }
    assert_eq!(h.status_of("v2").await, "capped");
    // One engine walks the campaign's capped referrals and keeps what it saw.
    let (engine, pool) = (h.engine(), h.db.pool.clone());
    for _ in 0..2 {
        reward_engine::settlement::settle_all(&engine, &pool, &EmptyStream).await.unwrap();
    }
    assert_eq!(h.status_of("v2").await, "capped");
    // A new version raises the cap: the same engine sees the version change and pays v2, once.
    campaign_in_force(&h, &one_reward(2)).await;
    for _ in 0..2 {
        reward_engine::settlement::settle_all(&engine, &pool, &EmptyStream).await.unwrap();
    }
    assert_eq!(h.status_of("v2").await, "rewarded");
    assert_eq!(h.balance("user:vr").await, usd("20"));
    h.assert_books_balance().await;
}
