//! `refstream-bench` (run by `make bench`): drives the bench workload through a running fleet
//! (settings from the environment, as every binary), reads RewardGranted back from Kafka, and
//! prints registrations/s, burst rewards/s with end-to-end p50/p99, paced p50/p99, each worker's
//! CPU seconds and peak RSS, and the pgbench baselines of the same reward transaction on the
//! same Postgres, with the ratios. It checks that every reward arrived exactly once. Timings are
//! printed, never asserted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use refstream_core::events::RewardGranted;
use refstream_runtime::codec::{encode, Decoder};
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use refstream_workload::bench::{deposit, registration, Shape};
use refstream_workload::produce::{wait_for_codes, Sender};
use sqlx::PgPool;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2_875)]
    referrers: usize,
    #[arg(long, default_value_t = 23_000)]
    referees: usize,
    /// Deposits pushed at once.
    #[arg(long, default_value_t = 20_000)]
    burst: usize,
    /// Deposits per second in the paced phase (the rest of the referees).
    #[arg(long, default_value_t = 300)]
    pace: u64,
    /// Where the pgbench files and the fleet's pid files are (`bench/pgbench`, `.local`).
    #[arg(long, default_value = ".")]
    root: String,
    /// Postgres URL of an empty, migrated database for pgbench (skipped when absent).
    #[arg(long)]
    pgbench_url: Option<String>,
}

/// Per-worker CPU seconds (utime + stime) and peak RSS (VmHWM, KiB) from /proc.
fn proc_stats(pid: &str) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    #[allow(clippy::cast_precision_loss, clippy::float_arithmetic)]
    Some((ticks as f64 / 100.0, hwm))
}

const WORKERS: [&str; 4] = ["attribution", "fraud-scorer", "reward-engine", "outbox-relay"];

fn worker_stats(root: &str) -> BTreeMap<&'static str, (f64, u64)> {
    WORKERS
        .iter()
        .filter_map(|w| {
            let pid = std::fs::read_to_string(Path::new(root).join(format!(".local/{w}.pid"))).ok()?;
            Some((*w, proc_stats(pid.trim())?))
        })
        .collect()
}

/// A reader of reward-granted positioned at the topic's current end.
fn reader(settings: &Settings) -> anyhow::Result<BaseConsumer> {
    let topic = &settings.topics.reward_granted;
    let consumer: BaseConsumer = client_config(settings)
        .set("group.id", format!("bench-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads RewardGranted until `want` distinct rewards arrived; returns when each deposit's
/// reward was received, and how many records repeated an event id already seen.
fn read_rewards(consumer: &BaseConsumer, want: usize, timeout: Duration) -> (HashMap<String, DateTime<Utc>>, usize) {
    let decoder = Decoder::default();
    let mut received: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut seen = BTreeSet::new();
    let mut repeats = 0;
    let started = Instant::now();
    while received.len() < want && started.elapsed() < timeout {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        let now = Utc::now();
        let Ok(g) = decoder.decode::<RewardGranted>(m.payload().unwrap_or_default(), now) else { continue };
        if !seen.insert(g.event_id) {
            repeats += 1;
            continue;
        }
        received.insert(g.qualifying_deposit_id, now);
    }
    (received, repeats)
}

/// p50 and p99 of end-to-end latencies in milliseconds.
fn percentiles(sent: &HashMap<String, DateTime<Utc>>, received: &HashMap<String, DateTime<Utc>>) -> (i64, i64) {
    let mut ms: Vec<i64> = received.iter().filter_map(|(d, at)| Some((*at - *sent.get(d)?).num_milliseconds())).collect();
    ms.sort_unstable();
    if ms.is_empty() {
        return (0, 0);
    }
    let at = |q: usize| ms[(ms.len() * q / 100).min(ms.len() - 1)];
    (at(50), at(99))
}

/// Runs pgbench with `file` (`clients` × `transactions`); returns transactions per second.
fn pgbench(url: &str, file: &Path, transactions: u32) -> anyhow::Result<f64> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(Result::ok)
        .map(|d| d.path().join("bin/pgbench"))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("pgbench not found under /usr/lib/postgresql"))?;
    let out = std::process::Command::new(bin)
        .args(["-n", "-c", "2", "-j", "2", "-t", &transactions.to_string(), "-f"])
        .arg(file)
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "pgbench {}: {}{}", file.display(), text, String::from_utf8_lossy(&out.stderr));
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {text}"))?;
    Ok(tps)
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

#[allow(clippy::cast_precision_loss, clippy::float_arithmetic)]
fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

#[tokio::main]
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss, clippy::too_many_lines)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(settings.database_options()?).await?;
    let producer: FutureProducer = client_config(&settings)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let mut sender = Sender { producer, pending: Vec::new(), sent: 0, sent_at: HashMap::new() };
    let run = format!("{:06x}", uuid::Uuid::new_v4().as_u128() as u32 & 0xff_ffff);
    let shape = Shape::new(&run, args.referrers, args.referees, Utc::now() - chrono::Duration::days(60));
    anyhow::ensure!(args.burst <= args.referees, "--burst must not exceed --referees");
    let t = settings.topics.clone();

    // 1. Registrations: the referrers, their codes, then every referee.
    for p in &shape.referrers {
        sender.send(&t.user_registered, &p.id, &encode(&registration(p, None)?), uuid::Uuid::new_v4()).await?;
    }
    sender.flush().await?;
    let ids: Vec<String> = shape.referrers.iter().map(|p| p.id.clone()).collect();
    let codes = wait_for_codes(&pool, &ids, Duration::from_secs(600)).await?;
    let assessed0 = count(&pool, "SELECT count(*) FROM assessments").await?;
    let started = Instant::now();
    for p in &shape.referees {
        let code = p.referrer.map(|r| codes[&shape.referrers[r].id].clone());
        sender.send(&t.user_registered, &p.id, &encode(&registration(p, code)?), uuid::Uuid::new_v4()).await?;
    }
    sender.flush().await?;
    let want = assessed0 + i64::try_from(shape.referees.len())?;
    while count(&pool, "SELECT count(*) FROM assessments").await? < want {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "referrals not scored in 30 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let registrations = per_second(shape.referees.len(), started.elapsed());
    println!("registrations: {} referees attributed and scored in {:.1?}", shape.referees.len(), started.elapsed());

    // 2. The burst: qualifying deposits pushed at once.
    let consumer = reader(&settings)?;
    let before = worker_stats(&args.root);
    let mut sent: HashMap<String, DateTime<Utc>> = HashMap::new();
    let burst_started = Utc::now();
    for p in &shape.referees[..args.burst] {
        let d = deposit(p)?;
        sent.insert(d.deposit_id.clone(), Utc::now());
        sender.send(&t.deposit_completed, &p.id, &encode(&d), d.event_id).await?;
    }
    sender.flush().await?;
    let (burst_received, burst_repeats) = tokio::task::block_in_place(|| read_rewards(&consumer, args.burst, Duration::from_secs(900)));
    let last = burst_received.values().max().copied().unwrap_or_else(Utc::now);
    let burst_time = (last - burst_started).to_std().unwrap_or_default();
    let burst_rate = per_second(burst_received.len(), burst_time);
    let (burst_p50, burst_p99) = percentiles(&sent, &burst_received);
    let after = worker_stats(&args.root);
    println!("burst: {} of {} rewards back in {burst_time:.1?}", burst_received.len(), args.burst);

    // 3. Paced load: the remaining referees' deposits at `pace` per second.
    let paced: Vec<_> = shape.referees[args.burst..].to_vec();
    let gap = Duration::from_micros(1_000_000 / args.pace.max(1));
    let paced_started = tokio::time::Instant::now();
    let mut paced_sent = HashMap::new();
    let reading = {
        let settings = settings.clone();
        let n = paced.len();
        std::thread::spawn(move || -> anyhow::Result<(HashMap<String, DateTime<Utc>>, usize)> {
            let consumer = reader(&settings)?;
            Ok(read_rewards(&consumer, n, Duration::from_secs(300)))
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // the reader is assigned before the first deposit
    for (i, p) in paced.iter().enumerate() {
        tokio::time::sleep_until(paced_started + Duration::from_secs(2) + gap * u32::try_from(i)?).await;
        let d = deposit(p)?;
        paced_sent.insert(d.deposit_id.clone(), Utc::now());
        sender.send(&t.deposit_completed, &p.id, &encode(&d), d.event_id).await?;
        sender.flush().await?;
    }
    let (paced_received, paced_repeats) = reading.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let (paced_p50, paced_p99) = percentiles(&paced_sent, &paced_received);
    let peak = worker_stats(&args.root);
    // What the settlement gate added: from the hold's end to the barrier opening (the scorer,
    // caught up, applying what had arrived by then).
    let paced_ids: Vec<String> = paced_sent.keys().cloned().collect();
    let (gate_p50, gate_p99): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), 0)::int8, COALESCE(percentile_disc(0.99) WITHIN GROUP (ORDER BY ms), 0)::int8 \
         FROM (SELECT extract(epoch FROM b.opened_at - b.hold_ended_at) * 1000 AS ms FROM rewards w \
               JOIN settlement_barriers b USING (barrier_id) WHERE w.qualifying_deposit_id = ANY($1)) g",
    )
    .bind(&paced_ids)
    .fetch_one(&pool)
    .await?;

    // Exactly once: every deposit's reward arrived, none twice; the database agrees.
    let rewards = count(&pool, &format!("SELECT count(*) FROM rewards WHERE beneficiary_id LIKE 'bn-{run}-%'")).await?;
    let doubles =
        count(&pool, "SELECT count(*) FROM (SELECT 1 FROM rewards GROUP BY referral_id, reward_type HAVING count(*) > 1) d").await?;
    let expected = args.referees;
    let exactly_once = burst_received.len() + paced_received.len() == expected && rewards == i64::try_from(expected)? && doubles == 0;

    // pgbench on the same Postgres.
    let (one, batched) = match &args.pgbench_url {
        Some(url) => {
            let dir = Path::new(&args.root).join("bench/pgbench");
            (Some(pgbench(url, &dir.join("one.sql"), 10_000)?), Some(pgbench(url, &dir.join("batch.sql"), 100)? * 100.0))
        }
        None => (None, None),
    };

    println!();
    println!(
        "== refstream bench: {} referrers, {} referees, burst of {}, then {} deposits at {}/s ==",
        args.referrers,
        args.referees,
        args.burst,
        paced.len(),
        args.pace
    );
    println!("{:<44} {:>14} {:>12}", "measure", "value", "target");
    println!("{:<44} {:>14.0} {:>12}", "registrations → scored (referees/s)", registrations, "≥ 3000");
    println!("{:<44} {:>14.0} {:>12}", "burst: RewardGranted on Kafka (rewards/s)", burst_rate, "");
    println!("{:<44} {:>11} ms {:>12}", "burst: end-to-end p50", burst_p50, "");
    println!("{:<44} {:>11} ms {:>12}", "burst: end-to-end p99", burst_p99, "");
    println!("{:<44} {:>11} ms {:>12}", "paced: end-to-end p50", paced_p50, "");
    println!("{:<44} {:>11} ms {:>12}", "paced: end-to-end p99", paced_p99, "≤ 100 ms");
    println!("{:<44} {:>11} ms {:>12}", "paced: settlement gate wait p50", gate_p50, "");
    println!("{:<44} {:>11} ms {:>12}", "paced: settlement gate wait p99", gate_p99, "");
    if let (Some(one), Some(batched)) = (one, batched) {
        println!("{:<44} {:>14.0} {:>12}", "pgbench: reward transaction once per event /s", one, "");
        println!("{:<44} {:>14.0} {:>12}", "pgbench: in batches of 100 (rewards/s)", batched, "");
        println!("{:<44} {:>14.2} {:>12}", "ratio burst / batched pgbench", burst_rate / batched, "≥ 0.30");
        println!("{:<44} {:>14.2} {:>12}", "ratio burst / one-per-event pgbench", burst_rate / one, "≥ 5");
    }
    for w in WORKERS {
        let cpu = match (before.get(w), after.get(w)) {
            (Some(b), Some(a)) => format!("{:.1}", a.0 - b.0),
            _ => "-".into(),
        };
        let rss = peak.get(w).map_or("-".into(), |s| format!("{:.1}", s.1 as f64 / 1024.0));
        println!("{:<44} {:>8} CPU-s {:>6} MiB peak RSS (target < 64)", format!("{w} during the burst"), cpu, rss);
    }
    println!(
        "exactly once: {} rewards expected, {} received ({} repeated event ids dropped), {} rows, {} doubles: {}",
        expected,
        burst_received.len() + paced_received.len(),
        burst_repeats + paced_repeats,
        rewards,
        doubles,
        if exactly_once { "ok" } else { "FAILED" }
    );
    anyhow::ensure!(exactly_once, "a reward was lost or repeated");
    Ok(())
}
