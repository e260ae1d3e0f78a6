//! The soak view of the paced load (`--soak-window-secs`): for every window of sending, the
//! rewards' end-to-end p50/p99, each process' CPU per deposit sent, the workers' resident
//! memory and the database's size at the window's end; then the last window against the first
//! as ratios. Under a long steady load the workers' memory must stay flat and the fleet's and
//! Postgres' CPU per deposit must not grow with the tables. The devbroker is shown apart: its
//! CPU per record grows with the topic's length (librdkafka's mock cluster finds the message
//! set a fetch asks for by walking the partition's log from its start), which the fleet cannot
//! change. Printed, never asserted.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::hops::rank;
use crate::procstat;
use crate::rewards::Arrivals;

/// The processes a window reports, in column order (Postgres first: most of the CPU).
const COLUMNS: [&str; 6] = ["postgres", "reward-engine", "fraud-scorer", "outbox-relay", "attribution", "devbroker"];

/// What the machine looked like at one moment.
struct Sample {
    at: DateTime<Utc>,
    /// Process → CPU ticks so far.
    cpu: BTreeMap<&'static str, u64>,
    /// Worker → resident set, KiB.
    rss_kib: BTreeMap<&'static str, u64>,
    /// `pg_database_size` of the fleet's database.
    db_bytes: i64,
}

async fn sample(root: &std::path::Path, postgres: Option<u32>, pool: &PgPool) -> Sample {
    let workers = procstat::workers(root, &crate::PROCESSES);
    let mut cpu: BTreeMap<&'static str, u64> = workers.iter().map(|(w, u)| (*w, u.cpu_ticks)).collect();
    if let Some(pg) = postgres.and_then(procstat::postgres_usage) {
        cpu.insert("postgres", pg.cpu_ticks);
    }
    let rss_kib = workers.iter().filter(|(w, _)| crate::WORKERS.contains(w)).map(|(w, u)| (*w, u.rss_kib)).collect();
    let db_bytes = sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(pool).await.unwrap_or(0);
    Sample { at: Utc::now(), cpu, rss_kib, db_bytes }
}

/// Samples every `every` from now until [`Sampler::stop`].
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(root: PathBuf, postgres: Option<u32>, pool: PgPool, every: Duration) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut samples = vec![sample(&root, postgres, &pool).await];
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => samples.push(sample(&root, postgres, &pool).await),
                }
            }
            samples.push(sample(&root, postgres, &pool).await);
            samples
        });
        Self { stop, task }
    }

    /// Takes the last sample; returns them all.
    pub async fn stop(self) -> Samples {
        let _ = self.stop.send(());
        Samples(self.task.await.unwrap_or_default())
    }
}

/// What a [`Sampler`] took, for [`print`].
pub struct Samples(Vec<Sample>);

/// One window of sending.
struct Window {
    from_secs: i64,
    to_secs: i64,
    sent: usize,
    /// End-to-end p50 / p99 (ms) of the deposits sent in the window.
    latency: Option<(i64, i64)>,
    /// Process → CPU µs per deposit sent in the window.
    cpu_us: BTreeMap<&'static str, u64>,
    /// Worker → resident MiB at the window's end.
    rss_mib: BTreeMap<&'static str, u64>,
    db_mib: i64,
}

/// The windows between consecutive samples; a last window shorter than half of `every` (the
/// moments after the last send) is left out, as its CPU is the drain, not the load.
fn windows(samples: &[Sample], every: Duration, sent: &HashMap<String, DateTime<Utc>>, got: &Arrivals) -> Vec<Window> {
    let Some(first) = samples.first().map(|s| s.at) else { return Vec::new() };
    let min_ms = i64::try_from(every.as_millis() / 2).unwrap_or(i64::MAX);
    samples
        .windows(2)
        .filter(|w| (w[1].at - w[0].at).num_milliseconds() >= min_ms)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let in_window: Vec<&String> = sent.iter().filter(|(_, at)| **at >= a.at && **at < b.at).map(|(d, _)| d).collect();
            let mut ms: Vec<i64> =
                in_window.iter().filter_map(|d| Some((*got.by_deposit.get(*d)? - *sent.get(*d)?).num_milliseconds())).collect();
            ms.sort_unstable();
            let latency = (!ms.is_empty()).then(|| (rank(&ms, 50), rank(&ms, 99)));
            let n = u64::try_from(in_window.len()).unwrap_or(0).max(1);
            let us_per_tick = 1_000_000 / procstat::TICKS_PER_SEC;
            let cpu_us = b.cpu.iter().filter_map(|(p, after)| Some((*p, after.saturating_sub(*a.cpu.get(p)?) * us_per_tick / n))).collect();
            Window {
                from_secs: (a.at - first).num_seconds(),
                to_secs: (b.at - first).num_seconds(),
                sent: in_window.len(),
                latency,
                cpu_us,
                rss_mib: b.rss_kib.iter().map(|(w, kib)| (*w, kib / 1024)).collect(),
                db_mib: b.db_bytes / (1024 * 1024),
            }
        })
        .collect()
}

/// A column head: the worker's short name.
fn short(process: &str) -> &str {
    match process {
        "reward-engine" => "engine",
        "fraud-scorer" => "scorer",
        "outbox-relay" => "relay",
        "attribution" => "attrib.",
        other => other,
    }
}

fn ms_of_us(us: u64) -> String {
    format!("{}.{:02}", us / 1000, us % 1000 / 10)
}

fn ratio(last: u64, first: u64) -> String {
    if first == 0 {
        return "-".into();
    }
    format!("{}×", (Decimal::from(last) / Decimal::from(first)).round_dp(2))
}

/// Prints the windows between `samples` (`every` apart) of the deposits `sent` and the rewards `got`.
pub fn print(samples: &Samples, every: Duration, sent: &HashMap<String, DateTime<Utc>>, got: &Arrivals) {
    let windows = windows(&samples.0, every, sent, got);
    if windows.is_empty() {
        println!("soak: no window of the paced load was sampled");
        return;
    }
    println!();
    println!(
        "soak: the paced load window by window (CPU in ms per deposit sent in the window; resident memory and database size at its end)"
    );
    let cpu_heads: Vec<String> = COLUMNS.iter().map(|c| format!("{:>10}", short(c))).collect();
    let rss_heads: Vec<String> = crate::WORKERS.iter().map(|w| format!("{:>8}", short(w))).collect();
    println!(
        "{:<13} {:>6} {:>5} {:>5} | CPU ms/deposit:{} | RSS MiB:{} | db MiB",
        "window",
        "sent",
        "p50",
        "p99",
        cpu_heads.join(""),
        rss_heads.join("")
    );
    for w in &windows {
        let (p50, p99) = w.latency.map_or(("-".into(), "-".into()), |(a, b)| (a.to_string(), b.to_string()));
        let cpu: Vec<String> = COLUMNS.iter().map(|c| format!("{:>10}", w.cpu_us.get(c).map_or("-".into(), |us| ms_of_us(*us)))).collect();
        let rss: Vec<String> =
            crate::WORKERS.iter().map(|r| format!("{:>8}", w.rss_mib.get(r).map_or("-".into(), u64::to_string))).collect();
        println!(
            "{:<13} {:>6} {:>5} {:>5} |                {} |         {} | {:>6}",
            format!("{}–{} s", w.from_secs, w.to_secs),
            w.sent,
            p50,
            p99,
            cpu.join(""),
            rss.join(""),
            w.db_mib
        );
    }
    let (Some(first), Some(last)) = (windows.first(), windows.last()) else { return };
    if windows.len() < 2 {
        return;
    }
    let fleet = |w: &Window| -> u64 { w.cpu_us.iter().filter(|(p, _)| **p != "devbroker").map(|(_, us)| us).sum() };
    let resident = |w: &Window| -> u64 { w.rss_mib.values().sum() };
    let p99 = |w: &Window| -> u64 { w.latency.map_or(0, |(_, p)| u64::try_from(p).unwrap_or(0)) };
    println!(
        "soak: last window against the first: Postgres and the workers' CPU per deposit {}, the devbroker's {}, the workers' resident memory {}, p99 {}, database size {}",
        ratio(fleet(last), fleet(first)),
        ratio(last.cpu_us.get("devbroker").copied().unwrap_or(0), first.cpu_us.get("devbroker").copied().unwrap_or(0)),
        ratio(resident(last), resident(first)),
        ratio(p99(last), p99(first)),
        ratio(u64::try_from(last.db_mib).unwrap_or(0), u64::try_from(first.db_mib).unwrap_or(0)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn sample(secs: i64, engine_ticks: u64, engine_rss_kib: u64) -> Sample {
        Sample {
            at: at(secs),
            cpu: BTreeMap::from([("reward-engine", engine_ticks), ("devbroker", 0)]),
            rss_kib: BTreeMap::from([("reward-engine", engine_rss_kib)]),
            db_bytes: 3 * 1024 * 1024,
        }
    }

    #[test]
    fn a_window_divides_its_cpu_by_the_deposits_sent_in_it_and_drops_the_drain() {
        // Windows 0–10 s and 10–20 s, then 0.5 s of drain after the last send.
        let samples = vec![sample(0, 100, 20_480), sample(10, 300, 20_480), sample(20, 400, 40_960), sample(20, 450, 40_960)];
        let sent: HashMap<String, DateTime<Utc>> =
            (0..4).map(|i| (format!("d{i}"), at(i64::from(i) * 5))).chain([("late".to_owned(), at(15))]).collect();
        let mut got = Arrivals::default();
        for (d, s) in &sent {
            got.by_deposit.insert(d.clone(), *s + chrono::Duration::milliseconds(if d == "d3" { 90 } else { 40 }));
        }
        let w = windows(&samples, Duration::from_secs(10), &sent, &got);
        assert_eq!(w.len(), 2, "the drain after the last send is not a window");
        assert_eq!((w[0].sent, w[1].sent), (2, 3));
        // 200 ticks = 2 s over 2 deposits; 100 ticks = 1 s over 3 deposits.
        assert_eq!(w[0].cpu_us["reward-engine"], 1_000_000);
        assert_eq!(w[1].cpu_us["reward-engine"], 333_333);
        assert_eq!(w[0].latency, Some((40, 40)));
        assert_eq!(w[1].latency, Some((40, 90)));
        assert_eq!((w[0].rss_mib["reward-engine"], w[1].rss_mib["reward-engine"]), (20, 40));
        assert_eq!(w[1].db_mib, 3);
    }
}
