//! Producing a workload into Kafka and waiting on the fleet: a producer that does not wait for
//! each delivery (and remembers when each event was handed over), and the lookups a generator
//! needs between waves.

use std::collections::HashMap;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sqlx::PgPool;
use uuid::Uuid;

/// Produces without waiting for each delivery; waits for all of them in `flush`.
pub struct Sender {
    pub producer: FutureProducer,
    pub pending: Vec<DeliveryFuture>,
    pub sent: usize,
    /// When each event was handed to the producer: no earlier than the broker accepted it.
    pub sent_at: HashMap<Uuid, DateTime<Utc>>,
}

impl Sender {
    pub async fn send(&mut self, topic: &str, key: &str, payload: &[u8], event_id: Uuid) -> anyhow::Result<()> {
        self.sent_at.insert(event_id, Utc::now());
        loop {
            match self.producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
                Ok(delivery) => {
                    self.pending.push(delivery);
                    self.sent += 1;
                    if self.pending.len() >= 2_000 {
                        self.flush().await?;
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => self.flush().await?,
                Err((e, _)) => anyhow::bail!("produce to {topic}: {e}"),
            }
        }
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        for delivery in self.pending.drain(..) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => anyhow::bail!("delivery failed: {e}"),
                Err(_) => anyhow::bail!("delivery cancelled (producer closed)"),
            }
        }
        Ok(())
    }
}

pub async fn wait_for_codes(pool: &PgPool, users: &[String], timeout: StdDuration) -> anyhow::Result<HashMap<String, String>> {
    let started = Instant::now();
    loop {
        let codes: Vec<(String, String)> =
            sqlx::query_as("SELECT user_id, code FROM referral_codes WHERE user_id = ANY($1)").bind(users).fetch_all(pool).await?;
        if codes.len() == users.len() {
            return Ok(codes.into_iter().collect());
        }
        anyhow::ensure!(started.elapsed() < timeout, "only {} of {} referrers got a referral code in time", codes.len(), users.len());
        tokio::time::sleep(StdDuration::from_millis(300)).await;
    }
}
