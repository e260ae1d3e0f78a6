//! The consumer runtime applies at most `kafka.batches_in_flight` partitions' batches at once,
//! and a partition that waited for a slot loses nothing: the real runtime (`consumer::run`)
//! reads a backlog spread over four partitions from the devbroker and applies it into a real
//! Postgres through a probe worker that counts the batches it is inside at any moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::producer::FutureRecord;
use refstream_e2e::{eventually, producer, Broker, TestDb};
use refstream_runtime::consumer::{self, Batch, Inbound, Rejection, Worker};
use refstream_runtime::http::Health;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PARTITIONS: i32 = 4;
const PER_PARTITION: usize = 40;

/// Events are uuids in text; applying a batch takes a while, so batches of different partitions
/// overlap whenever the runtime lets them.
#[derive(Default)]
struct Probe {
    topic: String,
    inside: AtomicUsize,
    most_inside: AtomicUsize,
    applied: Mutex<Vec<Uuid>>,
}

impl Worker for Probe {
    type Event = Uuid;

    fn name(&self) -> &'static str {
        "probe"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }

    fn decode(&self, record: &Inbound<'_>, _now: DateTime<Utc>) -> Result<Uuid, Rejection> {
        std::str::from_utf8(record.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Rejection { label: "invalid", reason: "not a uuid".into() })
    }

    fn event_id(&self, event: &Uuid) -> Uuid {
        *event
    }

    async fn apply(&self, batch: &mut Batch<'_>, events: &[Uuid]) -> sqlx::Result<()> {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_inside.fetch_max(now, Ordering::SeqCst);
        sqlx::query("SELECT pg_sleep(0.1)").execute(&mut *batch.conn).await?;
        self.applied.lock().unwrap().extend_from_slice(events);
        self.inside.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Runs the probe over a backlog of `PARTITIONS` × `PER_PARTITION` events with `slots` batches
/// in flight (batches of at most 5 records); returns the most batches it was ever inside at
/// once, after checking that every event was applied exactly once.
async fn most_in_flight(slots: usize) -> usize {
    let broker = Broker::start();
    let db = TestDb::new().await;
    let settings = refstream_runtime::Settings::load_dev(vec![
        ("REFSTREAM__KAFKA__BROKERS".into(), broker.bootstrap.clone()),
        ("REFSTREAM__DATABASE__URL".into(), db.url.clone()),
        ("REFSTREAM__KAFKA__BATCHES_IN_FLIGHT".into(), slots.to_string()),
        ("REFSTREAM__KAFKA__BATCH_MAX_RECORDS".into(), "5".into()),
        ("REFSTREAM__KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
    ])
    .expect("settings");
    let topic = settings.topics.deposit_completed.clone();
    let p = producer(&broker.bootstrap);
    let mut sent = Vec::new();
    for partition in 0..PARTITIONS {
        for _ in 0..PER_PARTITION {
            let id = Uuid::new_v4();
            let payload = id.to_string();
            p.send(FutureRecord::to(&topic).partition(partition).key("k").payload(&payload), Duration::from_secs(20))
                .await
                .expect("produce");
            sent.push(id);
        }
    }

    let probe = Arc::new(Probe { topic, ..Probe::default() });
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let (probe, settings, pool, stop) = (probe.clone(), settings.clone(), db.pool.clone(), stop.clone());
        async move { consumer::run(probe, &settings, pool, Health::starting(), stop).await }
    });
    eventually(Duration::from_secs(120), "every event applied", || {
        let (probe, want) = (probe.clone(), sent.len());
        async move { probe.applied.lock().unwrap().len() >= want }
    })
    .await;
    stop.cancel();
    run.await.expect("runtime task").expect("runtime");

    let mut applied = probe.applied.lock().unwrap().clone();
    applied.sort();
    sent.sort();
    assert_eq!(applied, sent, "every event applied exactly once");
    let recorded = db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer = 'probe'").await;
    assert_eq!(recorded, sent.len() as i64, "every event's id recorded once");
    probe.most_inside.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_applies_one_partition_at_a_time() {
    assert_eq!(most_in_flight(1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_slots_apply_three_of_four_partitions_at_once() {
    assert_eq!(most_in_flight(3).await, 3);
}
