//! Lag does not change money (the settlement gate): one seeded adversarial stream
//! (`refstream fraud-eval`, rings, self-referrals, bursts and legitimate users) runs three times,
//! each on its own database, broker and fleet, at once: with the scorer running normally; with
//! the scorer started two minutes after the stream; and with the scorer killed (`kill -9`) and
//! restarted mid-stream. All three must end with exactly the same set of referrals paid.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use refstream_e2e::{bin, free_port, spawn, worker_env, Broker, Fleet, TestDb, WORKERS};

const REGISTRATIONS: &str = "300";
const SEED: &str = "5";

#[derive(Clone, Copy, Debug)]
enum Scorer {
    Normal,
    StartedLate,
    KilledMidStream,
}

/// Runs the stream against a fresh stack; returns the referees paid, without the run prefix.
async fn run(how: Scorer) -> BTreeSet<String> {
    let db = TestDb::new().await;
    let broker = Broker::start();
    // The hold outlasts the time it takes to produce the stream, so in every run each payout's
    // hold ends after the whole stream reached the broker: the gate then makes the scorer apply
    // all of it first, however late it starts.
    let env_for = |port: u16| {
        let mut env = worker_env(&db.url, &broker.bootstrap, port);
        env.retain(|(k, _)| k != "REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS");
        env.push(("REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS".into(), "20".into()));
        env
    };
    let ports: Vec<u16> = WORKERS.iter().map(|_| free_port()).collect();
    let procs = WORKERS.iter().zip(&ports).map(|(w, port)| spawn(w, &[], &env_for(*port))).collect();
    let mut fleet = Fleet { procs, ports };
    fleet.wait_ready(Duration::from_secs(60));
    let env = env_for(0);
    let dir = std::env::temp_dir().join(format!("refstream-lag-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join(".local")).unwrap();
    let scorer = fleet.procs.iter().position(|p| p.name == "fraud-scorer").unwrap();
    let mut args = vec!["fraud-eval", "--registrations", REGISTRATIONS, "--seed", SEED, "--timeout-secs", "400"];
    if let Scorer::StartedLate = how {
        std::fs::write(dir.join(".local/fraud-scorer.pid"), fleet.procs[scorer].child.id().to_string()).unwrap();
        args.extend(["--scorer-delay", "120"]);
    }
    let mut cmd = Command::new(bin("refstream"));
    cmd.args(&args).current_dir(&dir).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let eval = cmd.spawn().unwrap();
    if let Scorer::KilledMidStream = how {
        tokio::time::sleep(Duration::from_secs(2)).await;
        fleet.procs[scorer].kill9();
        tokio::time::sleep(Duration::from_secs(4)).await;
        fleet.procs[scorer] = spawn("fraud-scorer", &[], &env_for(free_port()));
    }
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
    let paid: Vec<String> =
        sqlx::query_scalar("SELECT r.referee_id FROM rewards w JOIN referrals r USING (referral_id) WHERE w.reversed_at IS NULL")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let clawed: i64 = db.scalar_i64("SELECT count(*) FROM rewards WHERE reversal_reason = 'FRAUD'").await;
    assert_eq!(clawed, 0, "{how:?}: nothing visible before payout is paid and then clawed back");
    // Referee ids are fe-<run>-<n>: the run differs, the account number is the stream's.
    paid.iter().map(|id| id.rsplit('-').next().unwrap_or_default().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_stream_pays_the_same_referrals_whatever_the_scorers_lag() {
    let (normal, late, killed) = tokio::join!(run(Scorer::Normal), run(Scorer::StartedLate), run(Scorer::KilledMidStream));
    assert!(normal.len() > 50, "the stream pays its legitimate referrals: {}", normal.len());
    assert_eq!(normal, late, "scorer started two minutes after the stream");
    assert_eq!(normal, killed, "scorer killed and restarted mid-stream");
}
