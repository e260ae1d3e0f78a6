//! The outbox relay with real processes: one active relay per lane with a standby that takes
//! over every lane when it dies; no row skipped when a lower id commits after a higher one; one
//! key's rows commit — and are published — in the order of their ids; a backlog relayed in many
//! small claims sends every row once, each key's rows in id order; a key's rows share one lane,
//! a lane held elsewhere holds up no other, and a changed lane count is picked up while running.

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
    enqueue(&mut tx, rows).await.unwrap();
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
    // One row in every lane: the standby must take over all of them.
    let lanes = keys_per_lane(&db).await;
    let rows: Vec<OutboxMessage> = lanes.iter().map(|keys| row("reward-granted", &keys[0], &format!("two-{}", keys[0]))).collect();
    put(&db, &rows).await;
    // Records of different keys sit in different partitions: compared as a set, each once.
    let mut got = bodies(&broker.bootstrap, "reward-granted", 1 + lanes.len());
    got.sort();
    let mut want: Vec<String> = rows.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
    want.push("one".into());
    want.sort();
    assert_eq!(got, want);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(standby.log_text().matches("active relay for this shard").count(), lanes.len(), "{}", standby.log_text());
}

/// For each lane (`outbox_shards()` of them), keys whose rows go to it.
async fn keys_per_lane(db: &TestDb) -> Vec<Vec<String>> {
    let lanes = db.scalar_i64("SELECT outbox_shards()::int8").await;
    let pairs: Vec<(String, i32)> = sqlx::query_as("SELECT 'key-' || i, outbox_shard('key-' || i) FROM generate_series(1, 200) AS i")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut by_lane = vec![Vec::new(); usize::try_from(lanes).unwrap()];
    for (key, lane) in pairs {
        by_lane[usize::try_from(lane).unwrap()].push(key);
    }
    assert!(by_lane.iter().all(|keys| keys.len() >= 5), "200 keys leave a lane nearly empty: {by_lane:?}");
    by_lane
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lane_held_by_another_relay_holds_up_no_other_lane() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let lanes = keys_per_lane(&db).await;
    // Every row of a key goes to the one lane its key hashes to.
    let rows: Vec<OutboxMessage> = lanes
        .iter()
        .flat_map(|keys| keys[..3].iter())
        .flat_map(|k| (0..3).map(move |n| row("reward-granted", k, &format!("{k}-{n}"))))
        .collect();
    put(&db, &rows).await;
    // A writer that names another lane (one built before lanes, during a rolling deploy) does not
    // split a key across lanes: Postgres sets the lane from the key.
    let straggler = &lanes[1][0];
    sqlx::query("INSERT INTO outbox (shard, topic, key, payload, event_id) VALUES (0, 'reward-granted', $1, $2, gen_random_uuid())")
        .bind(straggler)
        .bind(format!("{straggler}-3").into_bytes())
        .execute(&db.pool)
        .await
        .unwrap();
    let rows: Vec<OutboxMessage> = rows.into_iter().chain([row("reward-granted", straggler, &format!("{straggler}-3"))]).collect();
    assert_eq!(db.scalar_i64("SELECT count(*) FROM (SELECT key FROM outbox GROUP BY key HAVING count(DISTINCT shard) > 1) k").await, 0);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM outbox WHERE shard <> outbox_shard(key)").await, 0);
    // Another relay (this test's session) is active for lane 1.
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(x'52454c59'::int, 1)").execute(&mut *holder).await.unwrap();
    let (relay, _) = relay(&db, &broker);
    let held = lanes[1][..3].len() * 3 + 1;
    let first = bodies(&broker.bootstrap, "reward-granted", rows.len() - held);
    assert_eq!(first.len(), rows.len() - held, "every lane but the held one relayed: {first:?}");
    assert!(first.iter().all(|b| !lanes[1].iter().any(|k| b.starts_with(&format!("{k}-")))), "{first:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.scalar_i64("SELECT count(*) FROM outbox").await, i64::try_from(held).unwrap());
    // The other relay goes away: this relay's standby for lane 1 takes it over.
    sqlx::query("SELECT pg_advisory_unlock(x'52454c59'::int, 1)").execute(&mut *holder).await.unwrap();
    let all = read_topic(&broker.bootstrap, "reward-granted", rows.len(), Duration::from_secs(30));
    assert_eq!(all.len(), rows.len(), "{}", relay.log_text());
    let mut by_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for m in &all {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        by_key.entry(key).or_default().push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    }
    for (key, got) in &by_key {
        let n = if key == straggler { 4 } else { 3 };
        assert_eq!(got, &(0..n).map(|n| format!("{key}-{n}")).collect::<Vec<_>>(), "key {key} out of order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_lane_count_is_picked_up_while_running() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let (relay, _) = relay(&db, &broker);
    put(&db, &[row("reward-granted", "before", "before")]).await;
    assert_eq!(bodies(&broker.bootstrap, "reward-granted", 1), vec!["before"]);
    // What a migration to eight lanes does, with a row waiting in the outbox.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await.unwrap();
    sqlx::query("CREATE OR REPLACE FUNCTION outbox_shards() RETURNS int LANGUAGE plpgsql STABLE PARALLEL SAFE AS 'BEGIN RETURN 8; END'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET shard = outbox_shard(key) WHERE shard <> outbox_shard(key)").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let high: Vec<String> =
        sqlx::query_scalar("SELECT 'key-' || i FROM generate_series(1, 200) AS i WHERE outbox_shard('key-' || i) >= 4 LIMIT 5")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(high.len(), 5);
    put(&db, &high.iter().map(|k| row("reward-granted", k, k)).collect::<Vec<_>>()).await;
    let mut got = bodies(&broker.bootstrap, "reward-granted", 6);
    got.sort();
    let mut want: Vec<String> = high.clone();
    want.push("before".into());
    want.sort();
    assert_eq!(got, want, "{}", relay.log_text());
    assert!(relay.log_text().contains("lane count changed"), "{}", relay.log_text());
    assert_eq!(db.scalar_i64("SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lower_id_committed_after_a_higher_one_is_not_skipped() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let (_relay, _) = relay(&db, &broker);
    let mut slow = db.pool.begin().await.unwrap();
    enqueue(&mut slow, &[row("reward-granted", "slow-key", "lower id, committed last")]).await.unwrap();
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
    enqueue(&mut first, &[row("t", "same-key", "first")]).await.unwrap();
    let pool = db.pool.clone();
    let second = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        enqueue(&mut tx, &[row("t", "same-key", "second")]).await.unwrap();
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
    enqueue(&mut slow, &[row("reward-granted", "late", "late-0")]).await.unwrap();
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
