//! Reading RewardGranted back from Kafka as an outside consumer would: from the topic's end at
//! the moment the reader is made, each record stamped with the wall clock when it arrived, and
//! every repeat counted (the same event id again is a relay resend; the same reward id under
//! another event id would be a reward paid twice).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use refstream_core::events::RewardGranted;
use refstream_runtime::codec::Decoder;
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use uuid::Uuid;

use crate::hops::rank;

/// What came back.
#[derive(Default)]
pub struct Arrivals {
    /// Qualifying deposit id → when its reward arrived.
    pub by_deposit: HashMap<String, DateTime<Utc>>,
    /// Qualifying deposit id → when the relay produced its reward (the record's CreateTime).
    pub produced: HashMap<String, DateTime<Utc>>,
    /// Distinct reward ids (the phase is complete when it has them all).
    pub reward_ids: HashSet<Uuid>,
    /// Every record read: (event id, reward id, partition, offset); [`tally`] counts repeats.
    pub records: Vec<(Uuid, Uuid, i32, i64)>,
}

/// Rewards counted over several phases' readers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub distinct: usize,
    /// A record at a new position with an event id already read: a relay resend.
    pub repeated_events: usize,
    /// A new event id for a reward id already read: a reward announced twice.
    pub repeated_rewards: usize,
    /// The same record (same partition and offset) read again by a later phase's reader,
    /// which started at an end offset the broker reported behind what it had already served.
    pub reread: usize,
}

/// Counts the records of every phase once: a record at a position already read is a re-read,
/// not a second delivery.
pub fn tally(phases: &[&Arrivals]) -> Tally {
    let mut positions: HashSet<(i32, i64)> = HashSet::new();
    let mut events: HashSet<Uuid> = HashSet::new();
    let mut rewards: HashSet<Uuid> = HashSet::new();
    let mut t = Tally::default();
    for (event, reward, partition, offset) in phases.iter().flat_map(|p| &p.records) {
        if !positions.insert((*partition, *offset)) {
            t.reread += 1;
        } else if !events.insert(*event) {
            t.repeated_events += 1;
        } else if !rewards.insert(*reward) {
            t.repeated_rewards += 1;
        } else {
            t.distinct += 1;
        }
    }
    t
}

/// A reader of reward-granted assigned to every partition at its current end, fetching with the
/// fleet's `kafka.fetch_wait_max_ms` (at most 5 ms) so arrival times are padded by the fetch wait
/// no more than a worker's are.
pub fn reader(settings: &Settings) -> anyhow::Result<BaseConsumer> {
    let topic = &settings.topics.reward_granted;
    let consumer: BaseConsumer = client_config(settings)
        .set("group.id", format!("bench-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", settings.kafka.fetch_wait_max_ms.min(5).to_string())
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads until `want` distinct rewards arrived (or `timeout`), then one more second to catch
/// repeats. Blocking: run it on a thread of its own.
pub fn read(consumer: &BaseConsumer, want: usize, timeout: Duration) -> Arrivals {
    let decoder = Decoder::default();
    let mut got = Arrivals::default();
    let mut events = HashSet::new();
    let started = Instant::now();
    // Nothing awaited (a phase of no deposits): only the second for repeats.
    let mut complete_at: Option<Instant> = (want == 0).then(Instant::now);
    while started.elapsed() < timeout && complete_at.is_none_or(|at| at.elapsed() < Duration::from_secs(1)) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else { continue };
        let now = Utc::now();
        let Ok(g) = decoder.decode::<RewardGranted>(m.payload().unwrap_or_default(), now) else { continue };
        got.records.push((g.event_id, g.reward_id, m.partition(), m.offset()));
        if events.insert(g.event_id) && got.reward_ids.insert(g.reward_id) {
            if let Some(at) = m.timestamp().to_millis().and_then(DateTime::from_timestamp_millis) {
                got.produced.insert(g.qualifying_deposit_id.clone(), at);
            }
            got.by_deposit.insert(g.qualifying_deposit_id, now);
        }
        if complete_at.is_none() && got.reward_ids.len() >= want {
            complete_at = Some(Instant::now());
        }
    }
    got
}

/// p50 and p99 (nearest rank) of arrival − send, in milliseconds; None without arrivals.
pub fn percentiles(sent: &HashMap<String, DateTime<Utc>>, got: &Arrivals) -> Option<(i64, i64)> {
    let mut ms: Vec<i64> = got.by_deposit.iter().filter_map(|(d, at)| Some((*at - *sent.get(d)?).num_milliseconds())).collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort_unstable();
    Some((rank(&ms, 50), rank(&ms, 99)))
}

/// p99 of arrival − send (ms) over each `window` of send times, from the first send: says
/// whether the slow rewards cluster (after the burst, while Postgres vacuums it) or are spread.
pub fn p99_by_window(sent: &HashMap<String, DateTime<Utc>>, got: &Arrivals, window: chrono::Duration) -> Vec<i64> {
    let Some(first) = sent.values().min().copied() else { return Vec::new() };
    let mut windows: Vec<Vec<i64>> = Vec::new();
    for (d, at) in &got.by_deposit {
        let Some(s) = sent.get(d) else { continue };
        let i = usize::try_from((*s - first).num_milliseconds() / window.num_milliseconds().max(1)).unwrap_or(0);
        if windows.len() <= i {
            windows.resize_with(i + 1, Vec::new);
        }
        windows[i].push((*at - *s).num_milliseconds());
    }
    windows
        .into_iter()
        .map(|mut ms| {
            ms.sort_unstable();
            if ms.is_empty() {
                0
            } else {
                rank(&ms, 99)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_read_again_at_its_position_is_not_a_second_delivery() {
        let (e1, e2, e3, r1, r2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let burst = Arrivals { records: vec![(e1, r1, 0, 10)], ..Arrivals::default() };
        let paced = Arrivals { records: vec![(e1, r1, 0, 10), (e1, r1, 0, 11), (e2, r1, 1, 3), (e3, r2, 1, 4)], ..Arrivals::default() };
        assert_eq!(tally(&[&burst, &paced]), Tally { distinct: 2, repeated_events: 1, repeated_rewards: 1, reread: 1 });
    }
}
