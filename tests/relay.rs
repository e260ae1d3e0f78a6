//! The outbox relay with real processes: one active relay per shard with a standby that takes
//! over when it dies; no row skipped when a lower id commits after a higher one; one key's
//! rows commit — and are published — in the order of their ids; a backlog relayed in many small
//! claims sends every row once, each key's rows in id order.

use std::time::Duration;

use rdkafka::message::Message;
use refstream_e2e::{free_port, healthy, read_topic, spawn, worker_env, Broker, Proc, TestDb};
use refstream_runtime::outbox::{enqueue, OutboxMessage};
use serde_json::json;
use uuid::Uuid;

fn row(topic: &str, key: &str, body: &str) -> OutboxMessage {
    OutboxMessage { topic: topic.into(), key: key.into(), payload: body.as_bytes().to_vec(), event_id: Uuid::new_v4(), headers: json!({}) }
}

async fn put(db: &TestDb, rows: &[OutboxMessage]) {
    let mut tx = db.pool.begin().await.unwrap();
    enqueue(&mut tx, 0, rows).await.unwrap();
    tx.commit().await.unwrap();
}

fn relay(db: &TestDb, broker: &Broker) -> (Proc, u16) {
    relay_with(db, broker, &[])
}

fn relay_with(db: &TestDb, broker: &Broker, settings: &[(&str, &str)]) -> (Proc, u16) {
    let port = free_port();
    let mut env = worker_env(&db.url, &broker.bootstrap, port);
    env.extend(settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let p = spawn("outbox-relay", &[], &env);
    let started = std::time::Instant::now();
    while !healthy(port) {
        assert!(started.elapsed() < Duration::from_secs(30), "relay not ready: {}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    (p, port)
}

fn bodies(bootstrap: &str, topic: &str, want: usize) -> Vec<String> {
    read_topic(bootstrap, topic, want, Duration::from_secs(30))
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_relay_takes_over_when_the_active_one_dies() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let (mut first, _) = relay(&db, &broker);
    std::thread::sleep(Duration::from_millis(500));
    let (mut second, _) = relay(&db, &broker);
    put(&db, &[row("reward-granted", "k", "one")]).await;
    assert_eq!(bodies(&broker.bootstrap, "reward-granted", 1), vec!["one"]);
    let (active, standby) = if first.log_text().contains("active relay") { (&mut first, &mut second) } else { (&mut second, &mut first) };
    assert!(!standby.log_text().contains("active relay"), "two active relays: {}", standby.log_text());
    active.kill9();
    put(&db, &[row("reward-granted", "k", "two")]).await;
    let got = bodies(&broker.bootstrap, "reward-granted", 2);
    assert_eq!(got, vec!["one", "two"]);
    assert!(standby.log_text().contains("active relay"), "the standby never took over: {}", standby.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lower_id_committed_after_a_higher_one_is_not_skipped() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let (_relay, _) = relay(&db, &broker);
    let mut slow = db.pool.begin().await.unwrap();
    enqueue(&mut slow, 0, &[row("reward-granted", "slow-key", "lower id, committed last")]).await.unwrap();
    put(&db, &[row("reward-granted", "fast-key", "higher id, committed first")]).await;
    assert_eq!(bodies(&broker.bootstrap, "reward-granted", 1), vec!["higher id, committed first"]);
    slow.commit().await.unwrap();
    let mut got = bodies(&broker.bootstrap, "reward-granted", 2);
    got.sort();
    assert_eq!(got, vec!["higher id, committed first", "lower id, committed last"]);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test]
async fn one_keys_rows_commit_in_the_order_of_their_ids() {
    let db = TestDb::new().await;
    let mut first = db.pool.begin().await.unwrap();
    enqueue(&mut first, 0, &[row("t", "same-key", "first")]).await.unwrap();
    let pool = db.pool.clone();
    let second = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        enqueue(&mut tx, 0, &[row("t", "same-key", "second")]).await.unwrap();
        tx.commit().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!second.is_finished(), "a second writer of the same key must wait for the first to commit");
    // Another key is not held up.
    put(&db, &[row("t", "other-key", "independent")]).await;
    first.commit().await.unwrap();
    second.await.unwrap();
    let order: Vec<String> = sqlx::query_scalar("SELECT convert_from(payload, 'UTF8') FROM outbox WHERE key = 'same-key' ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(order, vec!["first", "second"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn small_claims_publish_every_row_once_and_each_key_in_id_order() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    // A lower id that commits last, so later claims pass it by before it is visible.
    let mut slow = db.pool.begin().await.unwrap();
    enqueue(&mut slow, 0, &[row("reward-granted", "late", "late-0")]).await.unwrap();
    let rows: Vec<OutboxMessage> =
        (0..40).map(|i| row("reward-granted", &format!("k{}", i % 4), &format!("k{}-{:02}", i % 4, i / 4))).collect();
    for chunk in rows.chunks(5) {
        put(&db, chunk).await;
    }
    // Claims of three rows: the 40 rows take 14 claims.
    let (_relay, _) = relay_with(&db, &broker, &[("REFSTREAM__RELAY__BATCH_SIZE", "3")]);
    let first = read_topic(&broker.bootstrap, "reward-granted", 40, Duration::from_secs(30));
    assert_eq!(first.len(), 40, "the 40 committed rows, each once");
    slow.commit().await.unwrap();
    let all = read_topic(&broker.bootstrap, "reward-granted", 41, Duration::from_secs(30));
    let mut by_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for m in &all {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        by_key.entry(key).or_default().push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    }
    assert_eq!(all.len(), 41, "every row once: {by_key:?}");
    for (key, got) in &by_key {
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(got, &sorted, "key {key}: published out of id order or twice");
    }
    assert_eq!(by_key["late"], vec!["late-0"]);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM outbox").await, 0);
}
