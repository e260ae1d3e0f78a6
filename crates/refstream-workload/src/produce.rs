//! Producing a workload into Kafka and waiting on the fleet.
//!
//! [`Sender`] never waits for a single delivery: it hands records to librdkafka and remembers,
//! per event id, when it handed each one over (`sent_at`) and when librdkafka's delivery report
//! for it arrived (`delivered_at`, stamped inside the delivery callback). A delivery report
//! arrives after the broker acknowledged the record, so `delivered_at` is an upper bound of the
//! moment the broker accepted it, off by the callback's latency only (normally well under a
//! millisecond). [`Sender::flush`] waits for every report and fails on any failed delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use sqlx::PgPool;
use uuid::Uuid;

/// Delivery reports, as the callback records them.
#[derive(Default)]
struct Reports {
    delivered_at: HashMap<Uuid, DateTime<Utc>>,
    failures: Vec<String>,
    done: usize,
}

/// The producer's context: stamps each delivery report with the wall clock.
struct Stamping(Arc<Mutex<Reports>>);

impl ClientContext for Stamping {}

impl ProducerContext for Stamping {
    type DeliveryOpaque = Box<Uuid>;

    fn delivery(&self, result: &DeliveryResult<'_>, event_id: Box<Uuid>) {
        let now = Utc::now();
        let mut reports = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(_) => {
                reports.delivered_at.insert(*event_id, now);
            }
            Err((e, _)) => reports.failures.push(format!("event {event_id}: {e}")),
        }
        reports.done += 1;
    }
}

/// Produces without waiting for each delivery; [`Sender::flush`] waits for all of them.
pub struct Sender {
    producer: ThreadedProducer<Stamping>,
    reports: Arc<Mutex<Reports>>,
    sent: usize,
    sent_at: HashMap<Uuid, DateTime<Utc>>,
}

impl Sender {
    /// A sender over `config` (bootstrap servers and any tuning the caller chose).
    pub fn new(config: &ClientConfig) -> anyhow::Result<Self> {
        let reports = Arc::new(Mutex::new(Reports::default()));
        let producer = config.create_with_context(Stamping(Arc::clone(&reports)))?;
        Ok(Self { producer, reports, sent: 0, sent_at: HashMap::new() })
    }

    /// Hands one record to the producer (waiting while its queue is full).
    pub async fn send(&mut self, topic: &str, key: &str, payload: &[u8], event_id: Uuid) -> anyhow::Result<()> {
        loop {
            self.sent_at.insert(event_id, Utc::now());
            let record = BaseRecord::with_opaque_to(topic, Box::new(event_id)).key(key).payload(payload);
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(StdDuration::from_millis(2)).await;
                }
                Err((e, _)) => anyhow::bail!("produce to {topic}: {e}"),
            }
        }
    }

    /// Waits until every record sent so far has its delivery report; fails if any failed.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        loop {
            {
                let reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
                anyhow::ensure!(reports.failures.is_empty(), "delivery failed: {}", reports.failures.join("; "));
                if reports.done >= self.sent {
                    return Ok(());
                }
            }
            tokio::time::sleep(StdDuration::from_millis(1)).await;
        }
    }

    /// Records handed to the producer.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// When the record of `event_id` was handed to the producer.
    pub fn sent_at(&self, event_id: &Uuid) -> Option<DateTime<Utc>> {
        self.sent_at.get(event_id).copied()
    }

    /// When each record's delivery report arrived (only records delivered so far).
    pub fn delivered_at(&self) -> HashMap<Uuid, DateTime<Utc>> {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner).delivered_at.clone()
    }
}

/// Waits until every user in `users` has a referral code (attribution applied their
/// registration); returns user id → code.
pub async fn wait_for_codes(pool: &PgPool, users: &[String], timeout: StdDuration) -> anyhow::Result<HashMap<String, String>> {
    let started = Instant::now();
    loop {
        let codes: Vec<(String, String)> =
            sqlx::query_as("SELECT user_id, code FROM referral_codes WHERE user_id = ANY($1)").bind(users).fetch_all(pool).await?;
        if codes.len() == users.len() {
            return Ok(codes.into_iter().collect());
        }
        anyhow::ensure!(started.elapsed() < timeout, "only {} of {} referrers got a referral code in time", codes.len(), users.len());
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}
