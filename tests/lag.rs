//! Lag does not change money (the settlement gate): one seeded adversarial stream of the
//! workload generator (`refstream fraud-eval`: rings, self-referrals, device bursts and
//! legitimate users) runs three times, each on its own database, devbroker and fleet, all at
//! once: with the scorer running normally; with the scorer started two minutes after the stream
//! (`--scorer-delay 120`); and with the scorer killed (`kill -9`) mid-stream and restarted. All
//! three must end with exactly the same, non-empty set of referrals paid (a reward credited and
//! not reversed).
//!
//! Why they must agree: the settlement delay (10 s) outlasts producing the deposits (checked
//! below), and registrations precede deposits, so every input of the stream reached the broker
//! before any payout's hold ended. The gate then lets a payout through only once the scorer has
//! applied all of it, whatever its lag: every run decides each payout on the same evidence.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use refstream_e2e::{bin, free_port, spawn, worker_env, Broker, Fleet, TestDb, WORKERS};

const REGISTRATIONS: &str = "300";
const SEED: &str = "5";
const SETTLE_DELAY_SECS: u64 = 10;

#[derive(Clone, Copy, Debug)]
enum Scorer {
    Normal,
    StartedLate,
    KilledMidStream,
}

fn env_for(db: &TestDb, broker: &Broker, port: u16) -> Vec<(String, String)> {
    let mut env = worker_env(&db.url, &broker.bootstrap, port);
    env.retain(|(k, _)| k != "REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS");
    env.push(("REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS".into(), SETTLE_DELAY_SECS.to_string()));
    env
}

/// Waits until the scorer has committed some assessments, kills it with SIGKILL, and starts a
/// new one a few seconds later. Returns how many events the scorer had applied when killed.
async fn kill_scorer_mid_stream(db: &TestDb, broker: &Broker, fleet: &mut Fleet, scorer: usize) -> i64 {
    let started = Instant::now();
    while db.scalar_i64("SELECT count(*) FROM assessments").await < 20 {
        assert!(started.elapsed() < Duration::from_secs(120), "the scorer assessed nothing in 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.procs[scorer].kill9();
    let applied = db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer = 'fraud-scorer'").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.procs[scorer] = spawn("fraud-scorer", &[], &env_for(db, broker, free_port()));
    applied
}

/// Runs the stream against a fresh stack; returns the referees paid, without the run prefix.
async fn run(how: Scorer) -> BTreeSet<String> {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let workers: Vec<&str> = WORKERS.iter().copied().filter(|w| !matches!(how, Scorer::StartedLate) || *w != "fraud-scorer").collect();
    let ports: Vec<u16> = workers.iter().map(|_| free_port()).collect();
    let procs = workers.iter().zip(&ports).map(|(w, port)| spawn(w, &[], &env_for(&db, &broker, *port))).collect();
    let mut fleet = Fleet { procs, ports };
    fleet.wait_ready(Duration::from_secs(60));

    let dir = std::env::temp_dir().join(format!("refstream-lag-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join(".local")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["fraud-eval", "--registrations", REGISTRATIONS, "--seed", SEED, "--timeout-secs", "400"];
    if let Scorer::StartedLate = how {
        args.extend(["--scorer-delay", "120", "--scorer-listen", &listen]);
    }
    let mut cmd = Command::new(bin("refstream"));
    cmd.args(&args).current_dir(&dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env_for(&db, &broker, 0) {
        cmd.env(k, v);
    }
    let eval = cmd.spawn().unwrap();
    let applied_at_kill = match how {
        Scorer::KilledMidStream => {
            let scorer = fleet.procs.iter().position(|p| p.name == "fraud-scorer").unwrap();
            Some(kill_scorer_mid_stream(&db, &broker, &mut fleet, scorer).await)
        }
        _ => None,
    };
    let out = tokio::task::spawn_blocking(move || eval.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Ok(pid) = std::fs::read_to_string(dir.join(".local/fraud-scorer.pid")) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
    assert!(
        stdout.contains("== refstream fraud-eval"),
        "{how:?}: fraud-eval did not finish: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The premise of the comparison: every deposit reached the broker before any hold ended.
    let deposits_ms: u64 = stdout
        .split("(the deposits in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{how:?}: no deposit timing in: {stdout}"));
    assert!(deposits_ms < SETTLE_DELAY_SECS * 1000, "{how:?}: producing the deposits took {deposits_ms} ms, longer than the hold");
    if let Some(applied) = applied_at_kill {
        let total = db.scalar_i64("SELECT count(*) FROM processed_events WHERE consumer = 'fraud-scorer'").await;
        assert!(applied < total, "{how:?}: the scorer was killed after it had applied the whole stream ({applied} of {total})");
    }

    let paid: Vec<String> =
        sqlx::query_scalar("SELECT r.referee_id FROM rewards w JOIN referrals r USING (referral_id) WHERE w.reversed_at IS NULL")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let clawed = db.scalar_i64("SELECT count(*) FROM rewards WHERE reversal_reason = 'FRAUD'").await;
    assert_eq!(clawed, 0, "{how:?}: all evidence preceded every hold's end, so nothing is paid and then clawed back");
    // Referee ids are fe-<run>-<n>: the run differs, the account number is the stream's.
    paid.iter().map(|id| id.rsplit('-').next().unwrap_or_default().to_owned()).collect()
}

/// Each run on a thread and runtime of its own, so that one run's blocking waits (process
/// start, readiness) never hold up the others.
fn run_on_thread(how: Scorer) -> std::thread::JoinHandle<BTreeSet<String>> {
    std::thread::spawn(move || tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(run(how)))
}

#[test]
fn the_same_stream_pays_the_same_referrals_whatever_the_scorers_lag() {
    let runs = [Scorer::Normal, Scorer::StartedLate, Scorer::KilledMidStream].map(|how| (how, run_on_thread(how)));
    let [normal, late, killed] = runs.map(|(how, t)| t.join().unwrap_or_else(|_| panic!("{how:?} run failed (see its panic above)")));
    assert!(normal.len() > 50, "the stream pays its legitimate referrals: {}", normal.len());
    assert_eq!(normal, late, "scorer started two minutes after the stream");
    assert_eq!(normal, killed, "scorer killed and restarted mid-stream");
}
