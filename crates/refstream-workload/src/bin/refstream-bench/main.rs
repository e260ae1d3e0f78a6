//! `refstream-bench` (run by `make bench`): drives the bench workload through a running fleet
//! (settings from the environment, as every binary), reads RewardGranted back from Kafka, and
//! prints one table: registrations/s, burst rewards/s with end-to-end p50/p99, paced p50/p99,
//! each worker's and Postgres' CPU seconds and peak RSS, and the pgbench baselines of the same
//! reward transaction on the same Postgres with the ratios, each against the target.
//! It fails only when a reward was lost or repeated: timings are printed, never asserted.

mod hops;
mod pgbench;
mod procstat;
mod profile;
mod report;
mod rewards;
mod soak;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use refstream_core::events::DepositCompleted;
use refstream_runtime::codec::encode;
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use refstream_workload::bench::{deposit, registration, Person, Shape};
use refstream_workload::produce::{wait_for_codes, Sender};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::report::Measured;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2_875)]
    referrers: usize,
    /// Referees (default: the burst plus the paced phase's deposits).
    #[arg(long)]
    referees: Option<usize>,
    /// Qualifying deposits pushed at once.
    #[arg(long, default_value_t = 20_000)]
    burst: usize,
    /// Deposits per second in the paced phase.
    #[arg(long, default_value_t = 300)]
    pace: u64,
    /// Length of the paced phase.
    #[arg(long, default_value_t = 20)]
    paced_secs: u64,
    /// The repository: where `bench/pgbench/` and the fleet's `.local/<worker>.pid` are.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Postgres URL of a migrated database prepared with `bench/pgbench/setup.sql` (pgbench is
    /// skipped without it).
    #[arg(long)]
    pgbench_url: Option<String>,
    /// Also print the paced load window by window, one window per this many seconds: latency,
    /// CPU per deposit, resident memory and database size (for a long paced load: `make bench-soak`).
    #[arg(long)]
    soak_window_secs: Option<u64>,
    /// Only produce the registrations and return once attribution has recorded every referral,
    /// without waiting for a scorer (`scripts/scorer-ab.sh` then scores them with each binary).
    #[arg(long)]
    attribute_only: bool,
}

pub const WORKERS: [&str; 4] = ["attribution", "fraud-scorer", "reward-engine", "outbox-relay"];

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// `n` per second over `d`, whole.
fn per_second(n: usize, d: Duration) -> Decimal {
    let ms = Decimal::from(d.as_millis().max(1));
    (Decimal::from(n) * Decimal::from(1000) / ms).round()
}

/// Where the registrations phase ends: when every referee is scored (an assessment), or, for
/// `--attribute-only`, attributed (a referral).
#[derive(Clone, Copy)]
enum Until {
    Scored,
    Attributed,
}

impl Until {
    fn table(self) -> &'static str {
        match self {
            Until::Scored => "assessments",
            Until::Attributed => "referrals",
        }
    }
}

/// Produces the referrers and then every referee; returns referees attributed and scored (or
/// only attributed) per second (from the first referee's registration to the last row).
async fn registrations(
    sender: &mut Sender,
    pool: &PgPool,
    settings: &Settings,
    shape: &Shape,
    cpu: &mut PhaseCpu<'_>,
    until: Until,
) -> anyhow::Result<Decimal> {
    let topic = &settings.topics.user_registered;
    for p in &shape.referrers {
        let e = registration(p, None)?;
        sender.send(topic, &p.id, &encode(&e), e.event_id).await?;
    }
    sender.flush().await?;
    let ids: Vec<String> = shape.referrers.iter().map(|p| p.id.clone()).collect();
    let codes = wait_for_codes(pool, &ids, Duration::from_secs(600)).await?;
    let counted = format!("SELECT count(*) FROM {}", until.table());
    let want = count(pool, &counted).await? + i64::try_from(shape.referees.len())?;
    cpu.start();
    let started = Instant::now();
    for p in &shape.referees {
        let code = p.referrer.map(|r| codes[&shape.referrers[r].id].clone());
        let e = registration(p, code)?;
        sender.send(topic, &p.id, &encode(&e), e.event_id).await?;
    }
    sender.flush().await?;
    wait_for_rows(pool, &counted, want, i64::try_from(shape.referees.len())?, started).await?;
    cpu.stop().await?;
    let done = match until {
        Until::Scored => "attributed and scored",
        Until::Attributed => "attributed",
    };
    println!("registrations: {} referees {done} in {:.1?}", shape.referees.len(), started.elapsed());
    Ok(per_second(shape.referees.len(), started.elapsed()))
}

/// Waits until `counted` (a count of a whole table) reaches `want` rows, `expected` of them
/// written since `started`.
/// Each count reads the whole table and competes with the fleet for Postgres, so the pause
/// between counts is half the time the rest should take at the rate so far, between 50 ms (the
/// measure's resolution at the end) and 1 s: about fifteen counts in a phase of ten seconds
/// instead of one every 50 ms (130).
async fn wait_for_rows(pool: &PgPool, counted: &str, want: i64, expected: i64, started: Instant) -> anyhow::Result<()> {
    loop {
        let have = count(pool, counted).await?;
        if have >= want {
            return Ok(());
        }
        let elapsed = started.elapsed();
        anyhow::ensure!(elapsed < Duration::from_secs(1800), "referees not counted in 30 minutes ({counted})");
        let done = u32::try_from((expected - (want - have)).max(1)).unwrap_or(u32::MAX);
        let left = u32::try_from(want - have).unwrap_or(u32::MAX);
        let pause = (elapsed / done).saturating_mul(left) / 2;
        tokio::time::sleep(pause.clamp(Duration::from_millis(50), Duration::from_secs(1))).await;
    }
}

/// Waits, between two phases and outside both, until the reward engine has applied every score
/// (no referral is `pending` any more), so that the next phase starts from a quiet fleet instead
/// of sharing the machine with the end of this one; returns how long that took. The
/// registrations end with the last assessment, and the engine's move of the last referrals to
/// `eligible` follows it by the relay's and the engine's hop.
async fn wait_for_scores_applied(pool: &PgPool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while count(pool, "SELECT count(*) FROM referrals WHERE status = 'pending'").await? > 0 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "referrals still pending 10 minutes after their assessments");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

/// CPU seconds of every process of the fleet (the broker included) and of Postgres over one
/// phase, Postgres' also split by the worker whose connections used it (each worker names its
/// connections: `application_name`), beside the CPU seconds the machine had and how many of them
/// the hypervisor took (steal): says whether a phase was short of CPU or waited on something
/// else, which worker's statements Postgres' share was, and how much of a slow run was the
/// host's.
pub struct PhaseCpu<'a> {
    root: &'a Path,
    postgres: Option<u32>,
    pool: PgPool,
    before: BTreeMap<&'static str, procstat::Usage>,
    backends_before: BTreeMap<u32, u64>,
    stolen_before: Option<u64>,
    started: Instant,
    /// CPU seconds by process, then Postgres' by the worker whose connections used them
    /// (`postgres for <worker>`; `postgres for the rest`: its own processes — autovacuum, the WAL
    /// writer — the bench's connections and backends that ended).
    pub used: Vec<(String, String)>,
    pub available: String,
}

/// The processes whose CPU a phase reports: the workers and the devbroker (absent with another broker).
pub(crate) const PROCESSES: [&str; 5] = ["attribution", "fraud-scorer", "reward-engine", "outbox-relay", "devbroker"];

impl<'a> PhaseCpu<'a> {
    fn new(root: &'a Path, postgres: Option<u32>, pool: &PgPool) -> Self {
        Self {
            root,
            postgres,
            pool: pool.clone(),
            before: BTreeMap::new(),
            backends_before: BTreeMap::new(),
            stolen_before: None,
            started: Instant::now(),
            used: Vec::new(),
            available: String::new(),
        }
    }

    fn snapshot(&self) -> BTreeMap<&'static str, procstat::Usage> {
        let mut all = procstat::workers(self.root, &PROCESSES);
        if let Some(pg) = self.postgres.and_then(procstat::postgres_usage) {
            all.insert("postgres", pg);
        }
        all
    }

    fn backends(&self) -> BTreeMap<u32, u64> {
        self.postgres.map(procstat::backend_ticks).unwrap_or_default()
    }

    fn start(&mut self) {
        self.before = self.snapshot();
        self.backends_before = self.backends();
        self.stolen_before = procstat::stolen_ticks();
        self.started = Instant::now();
    }

    /// Ends the phase begun at [`PhaseCpu::start`].
    async fn stop(&mut self) -> anyhow::Result<()> {
        let elapsed = self.started.elapsed();
        let after = self.snapshot();
        let backends_after = self.backends();
        self.used = self.before.iter().filter_map(|(name, b)| Some(((*name).to_owned(), b.cpu_secs_until(after.get(name)?)))).collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ms = elapsed.as_millis() * cores as u128;
        let stolen = match (self.stolen_before, procstat::stolen_ticks()) {
            (Some(b), Some(a)) => format!(", {} of them stolen by the hypervisor", procstat::secs(a.saturating_sub(b))),
            _ => String::new(),
        };
        self.available = format!("{}.{:02} CPU-s ({cores} cores){stolen}", ms / 1000, ms % 1000 / 10);
        // Which worker each live backend serves; a backend that started during the phase used
        // all its ticks in it.
        let names: Vec<(i32, String)> =
            sqlx::query_as("SELECT pid, application_name FROM pg_stat_activity WHERE backend_type = 'client backend'")
                .fetch_all(&self.pool)
                .await?;
        let name_of: BTreeMap<u32, &str> =
            names.iter().filter_map(|(pid, name)| Some((u32::try_from(*pid).ok()?, name.as_str()))).collect();
        let mut by_worker: BTreeMap<&str, u64> = WORKERS.iter().map(|w| (*w, 0)).collect();
        for (pid, ticks) in &backends_after {
            if let Some(used) = name_of.get(pid).and_then(|n| by_worker.get_mut(n)) {
                *used += ticks.saturating_sub(self.backends_before.get(pid).copied().unwrap_or(0));
            }
        }
        let total = match (self.before.get("postgres"), after.get("postgres")) {
            (Some(b), Some(a)) => a.cpu_ticks.saturating_sub(b.cpu_ticks),
            _ => 0,
        };
        let rest = total.saturating_sub(by_worker.values().sum());
        self.used.extend(by_worker.into_iter().map(|(w, t)| (format!("postgres for {w}"), procstat::secs(t))));
        self.used.push(("postgres for the rest".to_owned(), procstat::secs(rest)));
        Ok(())
    }
}

/// A referee's deposit, built and Avro-encoded.
type Encoded<'p> = (&'p Person, DepositCompleted, Vec<u8>);

/// Builds and encodes `p`'s deposit.
fn encoded(p: &Person) -> anyhow::Result<Encoded<'_>> {
    let d = deposit(p)?;
    let payload = encode(&d);
    Ok((p, d, payload))
}

/// Produces the deposits of `records`, `gap` apart (all at once when `gap` is zero), while
/// a reader thread collects their rewards; returns the send times and what arrived. Prints how
/// long handing them to the producer and their delivery to the broker took.
async fn deposits<'p>(
    sender: &mut Sender,
    settings: &Settings,
    records: impl ExactSizeIterator<Item = anyhow::Result<Encoded<'p>>>,
    gap: Duration,
) -> anyhow::Result<(HashMap<String, DateTime<Utc>>, rewards::Arrivals)> {
    let want = records.len();
    let consumer = rewards::reader(settings)?;
    // Fifteen minutes for the rewards after the last deposit is sent.
    let timeout = Duration::from_secs(900) + gap * u32::try_from(want)?;
    let reading = std::thread::spawn(move || rewards::read(&consumer, want, timeout));
    let mut sent = HashMap::with_capacity(want);
    let started = tokio::time::Instant::now();
    for (i, record) in records.enumerate() {
        let (p, d, payload) = record?;
        if !gap.is_zero() {
            tokio::time::sleep_until(started + gap * u32::try_from(i)?).await;
        }
        sender.send(&settings.topics.deposit_completed, &p.id, &payload, d.event_id).await?;
        sent.insert(d.deposit_id, sender.sent_at(&d.event_id).unwrap_or_else(Utc::now));
    }
    let handed = started.elapsed();
    sender.flush().await?;
    println!(
        "deposits: {} handed to the producer in {handed:.1?}, all acknowledged by the broker after {:.1?}",
        sent.len(),
        started.elapsed()
    );
    let got = tokio::task::spawn_blocking(move || reading.join()).await?.map_err(|_| anyhow::anyhow!("reward reader panicked"))?;
    Ok((sent, got))
}

/// Each measured phase of writes (the burst, pgbench) starts from a checkpoint, as in a
/// long-running Postgres: the WAL files the phases before wrote are recycled instead of new
/// ones created (on this VM a new file's pages cost Postgres a tenth of its burst CPU), and no
/// phase pays for another's dirty buffers.
async fn checkpoint(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CHECKPOINT").execute(pool).await?;
    Ok(())
}

/// The postmaster of the Postgres behind `pool` (the parent of our backend).
async fn postmaster(pool: &PgPool) -> anyhow::Result<Option<u32>> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await?;
    Ok(u32::try_from(backend).ok().and_then(procstat::parent))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(settings.database_options()?).await?;
    let mut sender = Sender::new(
        client_config(&settings).set("enable.idempotence", "true").set("linger.ms", "2").set("queue.buffering.max.messages", "200000"),
    )?;
    let paced_n = usize::try_from(args.pace * args.paced_secs)?;
    let referees = args.referees.unwrap_or(args.burst + paced_n);
    anyhow::ensure!(args.burst <= referees, "--burst must not exceed --referees");
    let run = format!("{:06x}", uuid::Uuid::new_v4().as_u128() as u32 & 0xff_ffff);
    // The k-th referee of a referrer registers 2k + 1 days after the start: start early enough
    // that the last registers before now, and late enough that every referral's window (30 days
    // by default) is still open when its deposit arrives, as in a live program (a referral
    // whose window had passed would be expired by the engine's expiry sweep and revived by its
    // late-reported deposit, which is not the load being measured).
    let last_k = i64::try_from(referees.saturating_sub(1) / args.referrers.max(1))?;
    let shape = Shape::new(&run, args.referrers, referees, Utc::now() - chrono::Duration::days(2 * last_k + 2));
    let postgres = postmaster(&pool).await?;
    let root = args.root.as_path();

    let profiling = profile::available(&pool).await;
    if profiling {
        profile::report_and_reset(&pool, "before the bench", 0).await?;
    }

    // 1. Registrations.
    let mut registration_cpu = PhaseCpu::new(root, postgres, &pool);
    if args.attribute_only {
        registrations(&mut sender, &pool, &settings, &shape, &mut registration_cpu, Until::Attributed).await?;
        return Ok(());
    }
    let registrations = registrations(&mut sender, &pool, &settings, &shape, &mut registration_cpu, Until::Scored).await?;
    let applied = wait_for_scores_applied(&pool).await?;
    println!("registrations: the engine applied the last scores {applied:.1?} after the last assessment");
    if profiling {
        profile::report_and_reset(&pool, "registrations", 25).await?;
    }

    // 2. The burst: qualifying deposits pushed at once.
    checkpoint(&pool).await?;
    // Built and encoded before the clock starts: the bench measures the fleet, not the workload.
    let records = shape.referees[..args.burst].iter().map(encoded).collect::<anyhow::Result<Vec<_>>>()?;
    let mut burst_cpu = PhaseCpu::new(root, postgres, &pool);
    burst_cpu.start();
    let (burst_sent, burst) = deposits(&mut sender, &settings, records.into_iter().map(Ok), Duration::ZERO).await?;
    burst_cpu.stop().await?;
    // From the first deposit handed to the producer to the last reward read back.
    let first = burst_sent.values().min().copied().unwrap_or_else(Utc::now);
    let last = burst.by_deposit.values().max().copied().unwrap_or_else(Utc::now);
    let burst_time = (last - first).to_std().unwrap_or_default();
    println!("burst: {} of {} rewards back in {burst_time:.1?}", burst.by_deposit.len(), args.burst);
    if profiling {
        profile::report_and_reset(&pool, "the burst", 25).await?;
    }

    // 3. The paced load: the remaining referees' deposits at `pace` per second.
    let gap = Duration::from_micros(1_000_000 / args.pace.max(1));
    let soak_window = args.soak_window_secs.map(|s| Duration::from_secs(s.max(1)));
    let sampler = soak_window.map(|every| soak::Sampler::start(root.to_path_buf(), postgres, pool.clone(), every));
    let mut paced_cpu = PhaseCpu::new(root, postgres, &pool);
    paced_cpu.start();
    let (paced_sent, paced) = deposits(&mut sender, &settings, shape.referees[args.burst..].iter().map(encoded), gap).await?;
    paced_cpu.stop().await?;
    let soak_samples = match sampler {
        Some(s) => Some(s.stop().await),
        None => None,
    };
    println!("paced: {} of {} rewards back", paced.by_deposit.len(), referees - args.burst);
    if profiling {
        profile::report_and_reset(&pool, "the paced load", 25).await?;
    }
    let peak = procstat::workers(root, &WORKERS);
    // What the settlement gate added at the paced load: from the hold's end to its barrier
    // opening (the scorer, caught up, applying what had arrived by then).
    let paced_ids: Vec<&String> = paced_sent.keys().collect();
    let gate: (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), 0)::int8, \
                COALESCE(percentile_disc(0.99) WITHIN GROUP (ORDER BY ms), 0)::int8 \
         FROM (SELECT extract(epoch FROM b.opened_at - b.hold_ended_at) * 1000 AS ms FROM rewards w \
               JOIN settlement_barriers b USING (barrier_id) WHERE w.qualifying_deposit_id = ANY($1)) g",
    )
    .bind(&paced_ids)
    .fetch_one(&pool)
    .await?;

    // Exactly once: every deposit's reward arrived, none twice; the database agrees.
    let rows = count(&pool, &format!("SELECT count(*) FROM rewards WHERE beneficiary_id LIKE 'bn-{run}-%'")).await?;
    let doubles =
        count(&pool, "SELECT count(*) FROM (SELECT 1 FROM rewards GROUP BY referral_id, reward_type HAVING count(*) > 1) d").await?;

    // pgbench on the same Postgres, after the fleet is done with it.
    checkpoint(&pool).await?;
    let baseline = match &args.pgbench_url {
        Some(url) => Some(pgbench::run(url, &Path::new(root).join("bench/pgbench"))?),
        None => None,
    };

    let counted = rewards::tally(&[&burst, &paced]);
    if counted.reread > 0 {
        println!("(the paced reader started {} records early: the broker's end offsets lagged what it had served)", counted.reread);
    }
    let m = Measured {
        referrers: args.referrers,
        referees,
        burst_n: args.burst,
        pace: args.pace,
        registrations,
        registration_cpu: registration_cpu.used,
        registration_cpu_available: registration_cpu.available,
        burst_rate: per_second(burst.by_deposit.len(), burst_time),
        burst_latency: rewards::percentiles(&burst_sent, &burst),
        paced_latency: rewards::percentiles(&paced_sent, &paced),
        gate,
        baseline,
        burst_cpu: burst_cpu.used,
        paced_cpu: paced_cpu.used,
        paced_cpu_available: paced_cpu.available,
        peak,
        expected: referees,
        distinct: counted.distinct,
        repeated_events: counted.repeated_events,
        repeated_rewards: counted.repeated_rewards,
        rows,
        doubles,
    };
    report::print(&m);
    let by_window = rewards::p99_by_window(&paced_sent, &paced, chrono::Duration::seconds(5));
    let by_window: Vec<String> = by_window.iter().enumerate().map(|(i, ms)| format!("{}–{} s {ms} ms", i * 5, i * 5 + 5)).collect();
    println!("paced p99 by when the deposit was sent: {}", by_window.join(", "));
    if let Some(b) = hops::measure(&pool, &paced_sent, &paced).await? {
        hops::print(&b);
    }
    if let (Some(samples), Some(every)) = (&soak_samples, soak_window) {
        soak::print(samples, every, &paced_sent, &paced);
    }
    anyhow::ensure!(m.exactly_once(), "a reward was lost or repeated");
    Ok(())
}
