//! The settlement gate's barriers in Postgres (the protocol itself is
//! `refstream_core::settlement`). When payouts' holds end, one barrier captures the stream's
//! position at that moment (end offsets of `user-registered`, `deposit-completed` and
//! `user-verified`, read from the broker after the moment was taken, so they include
//! everything that had arrived by then). It covers every payout due by its moment, committed
//! before or after it: nothing is written to a payout to join it (migration 20261211100000).
//! The barrier then advances only on durable facts: attribution's and
//! the scorer's `consumer_progress` (committed with their effects), and the outbox (a row is
//! gone only once the relay's delivery report confirmed it). It opens when the scorer has
//! applied everything that had arrived when the holds ended, whatever its lag, and the engine
//! itself has applied every KYC verdict that had.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use refstream_core::settlement::{barrier_at, behind, step, Barrier, Captured, Position, Progress, Stage, Step};
use refstream_runtime::metrics::{GATE_BEHIND, GATE_STALLED, GATE_WAITING, GATE_WAIT_SECONDS, PROGRESS};
use refstream_runtime::Settings;
use serde_json::{json, Value as Json};
use sqlx::{PgConnection, PgPool};

use crate::RewardEngine;

/// The workers whose durable progress the gate waits on (their `Worker::name`).
pub const ATTRIBUTION: &str = "attribution";
pub const SCORER: &str = "fraud-scorer";
/// The reward engine itself: it applies the KYC verdicts (`user-verified`).
pub const ENGINE: &str = "reward-engine";

/// Where the stream ends now, per partition of the given topics.
pub trait EndOffsets: Send + Sync {
    fn end_offsets(&self, topics: &[String]) -> impl Future<Output = anyhow::Result<Position>> + Send;
}

/// End offsets read from the Kafka cluster: ListOffsets for the latest offset, one request for
/// all partitions. Partition lists come from metadata, refreshed every 30 s (a topic that grows
/// partitions is seen within that) and whenever a lookup fails.
pub struct KafkaEndOffsets {
    consumer: Arc<BaseConsumer>,
    timeout: Duration,
    partitions: Arc<Mutex<PartitionCache>>,
}

/// Partition ids per topic, with when they were read.
type PartitionCache = BTreeMap<String, (Instant, Vec<i32>)>;

const METADATA_TTL: Duration = Duration::from_secs(30);

impl KafkaEndOffsets {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let mut cfg = refstream_runtime::consumer::client_config(settings);
        // Never subscribes or commits: only asks the cluster where partitions end.
        cfg.set("group.id", format!("{}-gate", settings.group_id("reward-engine")));
        let consumer: BaseConsumer =
            cfg.create().map_err(|e| anyhow::anyhow!("cannot create the Kafka client of the settlement gate (kafka.brokers): {e}"))?;
        Ok(Self { consumer: Arc::new(consumer), timeout: Duration::from_secs(10), partitions: Arc::default() })
    }
}

fn partitions_of(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let t = metadata.topics().iter().find(|t| t.name() == topic).ok_or_else(|| anyhow::anyhow!("topic {topic} not found"))?;
    anyhow::ensure!(!t.partitions().is_empty(), "topic {topic} has no partitions (yet)");
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

impl EndOffsets for KafkaEndOffsets {
    async fn end_offsets(&self, topics: &[String]) -> anyhow::Result<Position> {
        let (consumer, timeout, topics, cache) = (self.consumer.clone(), self.timeout, topics.to_vec(), self.partitions.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<Position> {
            let mut tpl = TopicPartitionList::new();
            for topic in &topics {
                let cached = cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(topic)
                    .filter(|(at, _)| at.elapsed() < METADATA_TTL)
                    .map(|(_, p)| p.clone());
                let partitions = match cached {
                    Some(p) => p,
                    None => {
                        let p = partitions_of(&consumer, topic, timeout)?;
                        cache.lock().unwrap_or_else(|e| e.into_inner()).insert(topic.clone(), (Instant::now(), p.clone()));
                        p
                    }
                };
                for p in partitions {
                    tpl.add_partition_offset(topic, p, Offset::End)?;
                }
            }
            let wanted = tpl.count();
            let looked_up = consumer.offsets_for_times(tpl, timeout).map_err(|e| e.to_string()).and_then(|ends| {
                let mut position = Position::new();
                for e in ends.elements() {
                    e.error().map_err(|e| e.to_string())?;
                    match e.offset() {
                        Offset::Offset(n) => position.insert((e.topic().to_owned(), e.partition()), n),
                        // A partition without an end would never be waited for: refuse.
                        other => return Err(format!("no end offset for {}[{}]: {other:?}", e.topic(), e.partition())),
                    };
                }
                if position.len() == wanted {
                    Ok(position)
                } else {
                    Err(format!("{} of {wanted} partitions answered", position.len()))
                }
            });
            match looked_up {
                Ok(position) => Ok(position),
                Err(e) => {
                    cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    Err(anyhow::anyhow!("end offsets of {topics:?}: {e}"))
                }
            }
        })
        .await?
    }
}

/// A stream with nothing in it: every barrier opens as soon as it is made. For driving the
/// engine without a broker (its integration tests feed records straight to it).
pub struct EmptyStream;

impl EndOffsets for EmptyStream {
    async fn end_offsets(&self, _topics: &[String]) -> anyhow::Result<Position> {
        Ok(Position::new())
    }
}

fn to_json(p: &Position) -> Json {
    Json::Array(p.iter().map(|((t, part), end)| json!([t, part, end])).collect())
}

fn from_json(v: &Json) -> Position {
    let mut p = Position::new();
    for item in v.as_array().into_iter().flatten() {
        if let (Some(t), Some(part), Some(end)) = (item[0].as_str(), item[1].as_i64(), item[2].as_i64()) {
            p.insert((t.to_owned(), i32::try_from(part).unwrap_or(i32::MAX)), end);
        }
    }
    p
}

/// A row of the capture's first statement: the moment, whether a payout no barrier covers is
/// due, whether one an open barrier covers waits, and (when one is due) whether a
/// `referral-attributed` row is in the outbox beside a progress row of attribution (absent:
/// none yet).
#[derive(sqlx::FromRow)]
struct DueAndProgress {
    now: DateTime<Utc>,
    due: bool,
    covered: bool,
    unpublished: Option<bool>,
    topic: Option<String>,
    partition: Option<i32>,
    next_offset: Option<i64>,
}

/// Makes a barrier for the payouts whose hold has ended and that no barrier covers yet (each was
/// due after the latest barrier's moment); returns whether payouts an open barrier already
/// covers are waiting (committed after that barrier was captured, or opened by another
/// engine): they settle without another barrier opening.
///
/// In the statement that takes the hold's moment, before the one ListOffsets request
/// (`user-registered`, `deposit-completed`, `user-verified` and `referral-attributed`), it reads
/// attribution's durable progress and whether the outbox holds a `referral-attributed` row,
/// from that statement's snapshot (progress read earlier only makes the check below stricter):
/// when
/// attribution had covered the registrations and the relay had published everything, the
/// barrier starts at the scorer stage ([`refstream_core::settlement::barrier_at`]), saving the
/// two stages' round trips whenever no registration is in flight. No transaction is needed
/// around the steps: each read is one statement, and the barrier is written after the ends were
/// read. A round with nothing due costs one statement.
pub async fn capture<E: EndOffsets>(conn: &mut PgConnection, engine: &RewardEngine, ends: &E) -> anyhow::Result<bool> {
    // In one statement: the moment, whether a payout's hold had ended by then that no barrier
    // covers, whether one an open barrier covers waits, and (only when one is due) attribution's
    // progress and whether the outbox holds a referral-attributed row, from the statement's one
    // snapshot: every referral-attributed row committed with the progress read is either seen
    // in the outbox or was deleted (published) before it. Then (below) the ends, read after the
    // moment and after that snapshot. Whether a covered payout waits is the oldest payout's due
    // time against the latest open barrier's moment (one index probe): as an EXISTS, the planner
    // read the queue from its start until it met a covered payout, all of it when none was.
    let t = &engine.topics;
    let found: Vec<DueAndProgress> = sqlx::query_as(
        "WITH c AS (SELECT n.now, \
                  EXISTS (SELECT 1 FROM pending_payouts WHERE due_at <= n.now AND due_at > \
                          (SELECT COALESCE(max(hold_ended_at), '-infinity') FROM settlement_barriers)) AS due, \
                  COALESCE((SELECT min(due_at) FROM pending_payouts) <= \
                          (SELECT max(hold_ended_at) FROM settlement_barriers WHERE stage = 'open'), false) AS covered \
                  FROM (SELECT clock_timestamp() AS now) n) \
         SELECT c.now, c.due, c.covered, o.unpublished, p.topic, p.partition, p.next_offset FROM c \
         LEFT JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM outbox WHERE topic = $2) AS unpublished WHERE c.due) o ON true \
         LEFT JOIN LATERAL (SELECT topic, partition, next_offset FROM consumer_progress WHERE c.due AND consumer = $1) p ON true",
    )
    .bind(ATTRIBUTION)
    .bind(&t.referral_attributed)
    .fetch_all(&mut *conn)
    .await?;
    let Some(first) = found.first() else {
        return Ok(false);
    };
    let (now, due, covered) = (first.now, first.due, first.covered);
    if !due {
        return Ok(covered);
    }
    let unpublished = first.unpublished.unwrap_or(true);
    let rows: Vec<(String, i32, i64)> = found.into_iter().filter_map(|r| Some((r.topic?, r.partition?, r.next_offset?))).collect();
    let attribution: Position = rows.into_iter().map(|(t, p, n)| ((t, p), n)).collect();
    // Read after `now`: the ends include everything the broker had accepted by then.
    let all = ends
        .end_offsets(&[t.user_registered.clone(), t.deposit_completed.clone(), t.user_verified.clone(), t.referral_attributed.clone()])
        .await?;
    let of = |topic: &String| -> Position { all.iter().filter(|((t, _), _)| t == topic).map(|(k, v)| (k.clone(), *v)).collect() };
    let at = Captured {
        registrations: of(&t.user_registered),
        deposits: of(&t.deposit_completed),
        verifications: of(&t.user_verified),
        attributed: of(&t.referral_attributed),
    };
    let barrier = barrier_at(at, &attribution, unpublished);
    let upstream = json!({
        "registrations": to_json(&barrier.registrations),
        "deposits": to_json(&barrier.deposits),
        "verifications": to_json(&barrier.verifications),
    });
    // The barrier covers every payout due by the moment. (A concurrent engine may capture one
    // too: two barriers of nearly the same moment, each opening on its own.)
    sqlx::query("INSERT INTO settlement_barriers (hold_ended_at, stage, upstream, scored) VALUES ($1, $2, $3, $4)")
        .bind(now)
        .bind(barrier.stage.as_str())
        .bind(upstream)
        .bind(barrier.attributed.as_ref().map(to_json))
        .execute(&mut *conn)
        .await?;
    Ok(covered)
}

#[derive(sqlx::FromRow)]
struct BarrierRow {
    barrier_id: i64,
    hold_ended_at: DateTime<Utc>,
    stage: String,
    upstream: Json,
    outbox_through: Option<i64>,
    scored: Option<Json>,
    /// Every gated worker's durable progress (the same on every row).
    progress: Json,
}

impl BarrierRow {
    fn barrier(&self) -> Barrier {
        Barrier {
            stage: Stage::parse(&self.stage).unwrap_or(Stage::Attribution),
            registrations: from_json(&self.upstream["registrations"]),
            deposits: from_json(&self.upstream["deposits"]),
            outbox_through: self.outbox_through,
            attributed: self.scored.as_ref().map(from_json),
            // Barriers captured before the KYC gate existed have none: nothing to wait for.
            verifications: from_json(&self.upstream["verifications"]),
        }
    }
}

/// The durable progress of each worker, from `[consumer, topic, partition, next_offset]` rows.
fn progress_by_worker(rows: &Json) -> BTreeMap<String, Position> {
    let mut by_worker: BTreeMap<String, Position> = BTreeMap::new();
    for row in rows.as_array().into_iter().flatten() {
        if let (Some(worker), Some(topic), Some(partition), Some(next)) =
            (row[0].as_str(), row[1].as_str(), row[2].as_i64(), row[3].as_i64())
        {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            by_worker.entry(worker.to_owned()).or_default().insert((topic.to_owned(), partition), next);
        }
    }
    by_worker
}

/// What the barriers not yet open are waiting on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Barriers still closed after this advance.
    pub closed: usize,
    /// Barriers opened by this advance.
    pub opened: usize,
    /// Payouts an open barrier covers are waiting (the capture's finding, before this advance).
    pub covered: bool,
}

/// Moves every closed barrier as far as the workers' durable progress allows.
///
/// The closed barriers and the workers' progress are read by one statement (the progress is
/// read only when a barrier is closed, and from the same snapshot: progress only grows, and
/// every barrier read was committed before it).
pub async fn advance<E: EndOffsets>(conn: &mut PgConnection, engine: &RewardEngine, ends: &E) -> anyhow::Result<Waiting> {
    let rows: Vec<BarrierRow> = sqlx::query_as(
        "SELECT barrier_id, hold_ended_at, stage, upstream, outbox_through, scored, \
                (SELECT COALESCE(json_agg(json_build_array(consumer, topic, partition, next_offset)), '[]') \
                 FROM consumer_progress WHERE consumer = ANY($1)) AS progress \
         FROM settlement_barriers WHERE stage <> 'open' ORDER BY barrier_id",
    )
    .bind([ATTRIBUTION, SCORER, ENGINE])
    .fetch_all(&mut *conn)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(Waiting::default());
    };
    let mut progress = progress_by_worker(&first.progress);
    let mut take = |worker: &str| progress.remove(worker).unwrap_or_default();
    let (attribution, scorer, own) = (take(ATTRIBUTION), take(SCORER), take(ENGINE));
    let progress = Progress { attribution: &attribution, scorer: &scorer, engine: &own };
    let ra = &engine.topics.referral_attributed;
    let mut waiting = Waiting::default();
    for row in &rows {
        let mut b = row.barrier();
        loop {
            let published = match (b.stage, b.outbox_through) {
                (Stage::Relay, Some(through)) => {
                    sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE topic = $1 AND id <= $2)")
                        .bind(ra)
                        .bind(through)
                        .fetch_one(&mut *conn)
                        .await?
                }
                _ => false,
            };
            match step(&b, progress, published) {
                Step::Wait => break,
                Step::CaptureOutbox => {
                    let through: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM outbox WHERE topic = $1")
                        .bind(ra)
                        .fetch_one(&mut *conn)
                        .await?;
                    sqlx::query("UPDATE settlement_barriers SET stage = 'relay', outbox_through = $2 WHERE barrier_id = $1")
                        .bind(row.barrier_id)
                        .bind(through)
                        .execute(&mut *conn)
                        .await?;
                    b.stage = Stage::Relay;
                    b.outbox_through = Some(through);
                }
                Step::CaptureAttributed => {
                    let attributed = ends.end_offsets(std::slice::from_ref(ra)).await?;
                    sqlx::query("UPDATE settlement_barriers SET stage = 'scorer', scored = $2 WHERE barrier_id = $1")
                        .bind(row.barrier_id)
                        .bind(to_json(&attributed))
                        .execute(&mut *conn)
                        .await?;
                    b.stage = Stage::Scorer;
                    b.attributed = Some(attributed);
                }
                Step::Open => {
                    sqlx::query("UPDATE settlement_barriers SET stage = 'open', opened_at = now() WHERE barrier_id = $1")
                        .bind(row.barrier_id)
                        .execute(&mut *conn)
                        .await?;
                    b.stage = Stage::Open;
                    waiting.opened += 1;
                    break;
                }
            }
        }
        if b.stage != Stage::Open {
            waiting.closed += 1;
        }
    }
    // Metrics: what the oldest closed barrier waits on, and for how long.
    if let Some(oldest) = rows.first() {
        let b = oldest.barrier();
        GATE_BEHIND.with_label_values(&[ATTRIBUTION]).set(behind(&attribution, &b.registrations));
        let scorer_behind = behind(&scorer, &b.deposits) + b.attributed.as_ref().map_or(0, |a| behind(&scorer, a));
        GATE_BEHIND.with_label_values(&[SCORER]).set(scorer_behind);
        GATE_BEHIND.with_label_values(&[ENGINE]).set(behind(&own, &b.verifications));
        let waited = (Utc::now() - oldest.hold_ended_at).num_seconds().max(0);
        GATE_STALLED.set(i64::from(waited > i64::try_from(engine.gate_alert.as_secs()).unwrap_or(i64::MAX)));
        if waited > i64::try_from(engine.gate_alert.as_secs()).unwrap_or(i64::MAX) {
            tracing::warn!(barrier = oldest.barrier_id, waited_secs = waited, stage = %oldest.stage, "payouts wait on a lagging pipeline in front of the scorer");
        }
    }
    for (worker, position) in [(ATTRIBUTION, &attribution), (SCORER, &scorer)] {
        for ((topic, partition), next) in position {
            PROGRESS.with_label_values(&[worker, topic, &partition.to_string()]).set(*next);
        }
    }
    Ok(waiting)
}

/// Refreshes the gauges of payouts waiting on closed barriers, per stage: a payout waits on the
/// first barrier that covers it when no open one does (the closed barriers after the latest
/// open one, each counting the payouts due since the one before it).
pub async fn record_waiting(pool: &PgPool) -> sqlx::Result<()> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "WITH open AS (SELECT COALESCE(max(hold_ended_at), '-infinity') AS t FROM settlement_barriers WHERE stage = 'open'), \
              closed AS (SELECT b.stage, b.hold_ended_at, \
                                COALESCE(lag(b.hold_ended_at) OVER (ORDER BY b.hold_ended_at, b.barrier_id), open.t) AS after \
                         FROM settlement_barriers b, open WHERE b.stage <> 'open' AND b.hold_ended_at > open.t) \
         SELECT c.stage, sum(w.n)::int8, COALESCE(extract(epoch FROM now() - min(c.hold_ended_at) FILTER (WHERE w.n > 0))::int8, 0) \
         FROM closed c CROSS JOIN LATERAL \
              (SELECT count(*) AS n FROM pending_payouts p WHERE p.due_at > c.after AND p.due_at <= c.hold_ended_at) w \
         GROUP BY c.stage HAVING sum(w.n) > 0",
    )
    .fetch_all(pool)
    .await?;
    for stage in [Stage::Attribution, Stage::Relay, Stage::Scorer] {
        let (count, age) = rows.iter().find(|(s, _, _)| s == stage.as_str()).map_or((0, 0), |(_, c, a)| (*c, *a));
        GATE_WAITING.with_label_values(&[stage.as_str()]).set(count);
        GATE_WAIT_SECONDS.with_label_values(&[stage.as_str()]).set(age);
    }
    if rows.is_empty() {
        GATE_STALLED.set(0);
    }
    Ok(())
}

/// Deletes open barriers opened more than `keep` ago, except the latest open one: it covers
/// every payout the older ones covered (rewards keep their barrier id and hold end for the audit).
pub async fn forget_old(pool: &PgPool, keep: Duration) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM settlement_barriers b WHERE b.stage = 'open' AND b.opened_at < now() - make_interval(secs => $1) \
         AND b.hold_ended_at < (SELECT max(hold_ended_at) FROM settlement_barriers WHERE stage = 'open')",
    )
    .bind(keep.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}
