//! Bad input: every kind of malformed or invalid record ends as a dead letter with its reason
//! (a `dead_letters` row and a `<topic>.dlq` outbox record), the partition keeps flowing, and
//! an operator can list and re-drive dead letters with `refstream dlq`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::message::{Message, OwnedMessage};
use refstream_core::events::{DepositCompleted, UserRegistered};
use refstream_core::{Currency, Money, UserId};
use refstream_e2e::{bin, read_topic, Broker, TestDb};
use refstream_runtime::codec::{encode, fingerprint, EventKind};
use refstream_runtime::consumer::{apply_partition, Applied};
use rust_decimal::Decimal;
use uuid::Uuid;

/// A hand-written Avro encoder for DepositCompleted, so tests can write what refstream's own
/// encoder never would (empty ids, invalid UTF-8, oversized strings).
struct RawDeposit {
    event_id: Vec<u8>,
    deposit_id: Vec<u8>,
    user_id: Vec<u8>,
    unscaled: i128,
    currency: Vec<u8>,
    occurred_at: i64,
}

fn zigzag(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    zigzag(out, b.len() as i64);
    out.extend_from_slice(b);
}

impl RawDeposit {
    fn good(user: &str) -> Self {
        Self {
            event_id: Uuid::new_v4().to_string().into_bytes(),
            deposit_id: format!("dep-{}", Uuid::new_v4()).into_bytes(),
            user_id: user.as_bytes().to_vec(),
            unscaled: 250_000,
            currency: b"USD".to_vec(),
            occurred_at: Utc::now().timestamp_millis(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0xC3, 0x01];
        out.extend_from_slice(&fingerprint(EventKind::DepositCompleted));
        bytes(&mut out, &self.event_id);
        bytes(&mut out, &self.deposit_id);
        bytes(&mut out, &self.user_id);
        let full = self.unscaled.to_be_bytes();
        bytes(&mut out, &full[7..]);
        bytes(&mut out, &self.currency);
        zigzag(&mut out, 0); // payment_fingerprint: null
        zigzag(&mut out, self.occurred_at);
        out
    }
}

fn message(topic: &str, offset: i64, payload: Vec<u8>) -> OwnedMessage {
    refstream_e2e::record(topic, b"u-1", 3, offset, payload)
}

fn registered(user: &str) -> UserRegistered {
    UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse(user).unwrap(),
        occurred_at: Utc::now(),
        referral_code: None,
        click_id: None,
        platform: "web".into(),
        device_id: None,
        ip: None,
        email: None,
        country: None,
    }
}

fn deposit(user: &str, amount: Decimal, at: DateTime<Utc>) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::new_v4(),
        deposit_id: format!("d-{}", Uuid::new_v4()),
        user_id: UserId::parse(user).unwrap(),
        amount: Money::new(amount, Currency::USD),
        payment_fingerprint: None,
        occurred_at: at,
    }
}

#[tokio::test]
async fn every_kind_of_bad_deposit_is_a_dead_letter_with_its_reason() {
    let db = TestDb::new().await;
    let settings = refstream_e2e::test_settings();
    let attribution = attribution::Attribution::new(&settings).unwrap();
    let reg = message("user-registered", 0, encode(&registered("u-1")));
    assert_eq!(apply_partition(&attribution, &db.pool, &[reg]).await, Applied::Committed);

    let engine = reward_engine::RewardEngine::new(&settings).unwrap();
    let good = encode(&deposit("u-1", Decimal::new(25, 0), Utc::now()));
    let mut unknown_fp = good.clone();
    unknown_fp[4] ^= 0x5a;
    let mut bad_currency = good.clone();
    let pos = bad_currency.windows(3).position(|w| w == b"USD").unwrap();
    bad_currency[pos..pos + 3].copy_from_slice(b"XYZ");
    let raw = |f: &dyn Fn(&mut RawDeposit)| {
        let mut r = RawDeposit::good("u-1");
        f(&mut r);
        r.encode()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated Avro", good[..good.len() - 4].to_vec(), "malformed"),
        ("unknown framing", b"{\"user_id\":\"u-1\"}".to_vec(), "unknown framing"),
        ("unknown fingerprint", unknown_fp, "unknown schema fingerprint"),
        ("wrong schema", encode(&registered("u-1")), "wrong schema"),
        ("zero amount", encode(&deposit("u-1", Decimal::ZERO, Utc::now())), "must be positive"),
        ("negative amount", encode(&deposit("u-1", Decimal::new(-5, 0), Utc::now())), "must be positive"),
        ("over-precise amount", raw(&|r| r.unscaled = 10_i128.pow(19)), "precision"),
        ("unknown currency", bad_currency, "ISO 4217"),
        ("empty user id", raw(&|r| r.user_id = Vec::new()), "user_id"),
        ("string over 64 KiB", raw(&|r| r.deposit_id = vec![b'x'; 70 * 1024]), "64 KiB"),
        ("invalid UTF-8", raw(&|r| r.deposit_id = vec![0xff, 0xfe, 0x41]), "malformed"),
        ("event far in the future", encode(&deposit("u-1", Decimal::new(25, 0), Utc::now() + chrono::Duration::days(30))), "future"),
    ];
    let mut records: Vec<OwnedMessage> =
        cases.iter().enumerate().map(|(i, (_, p, _))| message("deposit-completed", i as i64, p.clone())).collect();
    records.push(message("deposit-completed", cases.len() as i64, good));
    assert_eq!(apply_partition(&engine, &db.pool, &records).await, Applied::Committed);
    // Redelivery of the same positions stores and announces nothing twice.
    assert_eq!(apply_partition(&engine, &db.pool, &records).await, Applied::Committed);

    let letters: Vec<(i64, String)> =
        sqlx::query_as("SELECT \"offset\", reason FROM dead_letters ORDER BY \"offset\"").fetch_all(&db.pool).await.unwrap();
    assert_eq!(letters.len(), cases.len(), "{letters:#?}");
    for ((name, _, want), (offset, reason)) in cases.iter().zip(&letters) {
        assert!(reason.contains(want), "{name} (offset {offset}): reason `{reason}` should mention `{want}`");
    }
    let dlq: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'deposit-completed.dlq' AND headers ? 'reason'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(dlq as usize, cases.len());
    assert_eq!(db.scalar_i64("SELECT count(*) FROM deposits").await, 1, "the good record after the bad ones was applied");
}

#[tokio::test]
async fn a_deposit_for_an_unknown_user_is_held_then_dead_lettered_but_never_lost() {
    let db = TestDb::new().await;
    let settings = refstream_e2e::test_settings();
    let engine = reward_engine::RewardEngine::new(&settings).unwrap();
    let orphan = deposit("ghost", Decimal::new(30, 0), Utc::now());
    let late = deposit("late-user", Decimal::new(30, 0), Utc::now());
    let records = vec![message("deposit-completed", 0, encode(&orphan)), message("deposit-completed", 1, encode(&late))];
    assert_eq!(apply_partition(&engine, &db.pool, &records).await, Applied::Committed);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM unmatched_deposits").await, 2);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM deposits").await, 2, "recorded, not lost");

    // Within the hold nothing is dead-lettered; the late user's registration releases its hold.
    assert_eq!(reward_engine::unmatched::sweep(&db.pool, Duration::from_secs(3600)).await.unwrap(), (0, 0));
    let attribution = attribution::Attribution::new(&settings).unwrap();
    assert_eq!(
        apply_partition(&attribution, &db.pool, &[message("user-registered", 0, encode(&registered("late-user")))]).await,
        Applied::Committed
    );
    assert_eq!(reward_engine::unmatched::sweep(&db.pool, Duration::from_secs(3600)).await.unwrap(), (1, 0));

    // Past the hold, the still-unknown one becomes a dead letter.
    assert_eq!(reward_engine::unmatched::sweep(&db.pool, Duration::ZERO).await.unwrap(), (0, 1));
    let reason: String = sqlx::query_scalar("SELECT reason FROM dead_letters").fetch_one(&db.pool).await.unwrap();
    assert!(reason.contains("ghost") && reason.contains("never registered"), "{reason}");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM outbox WHERE topic = 'deposit-completed.dlq'").await, 1);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM deposits").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_list_and_replay_dead_letters() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let settings = refstream_e2e::test_settings();
    let engine = reward_engine::RewardEngine::new(&settings).unwrap();
    assert_eq!(apply_partition(&engine, &db.pool, &[message("deposit-completed", 7, b"garbage".to_vec())]).await, Applied::Committed);
    let id: i64 = sqlx::query_scalar("SELECT id FROM dead_letters").fetch_one(&db.pool).await.unwrap();

    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin("refstream"))
            .args(args)
            .env("REFSTREAM__DATABASE__URL", &db.url)
            .env("REFSTREAM__KAFKA__BROKERS", &broker.bootstrap)
            .output()
            .unwrap();
        assert!(out.status.success(), "refstream {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(&["dlq", "list"]);
    assert!(listed.contains("deposit-completed[3]@7") && listed.contains("unknown framing"), "{listed}");
    let replayed = run(&["dlq", "replay", &id.to_string()]);
    assert!(replayed.contains("replayed"), "{replayed}");
    let records = read_topic(&broker.bootstrap, "deposit-completed", 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload(), Some(&b"garbage"[..]));
    assert_eq!(records[0].key(), Some(&b"u-1"[..]));
    assert!(run(&["dlq", "list"]).contains(" yes "));
}
