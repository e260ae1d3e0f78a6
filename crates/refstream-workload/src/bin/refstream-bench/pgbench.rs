//! The Postgres baseline: pgbench (Debian's, under /usr/lib/postgresql/*/bin) running the
//! reward transaction of `bench/pgbench/` on a database of the same Postgres as the fleet —
//! once per event (`one.sql`) and 100 events per transaction (`batch.sql`). `setup.sql` has
//! prepared 40,100 eligible referrals: 2 clients × 10,000 single events use ids 1–20,000,
//! 2 clients × 100 batches use ids 20,100–40,099, so every transaction really inserts.

use std::path::{Path, PathBuf};
use std::process::Command;

use rust_decimal::Decimal;

/// Rewards per second of each way.
pub struct Baseline {
    pub one_per_event: Decimal,
    pub batched: Decimal,
}

const CLIENTS: &str = "2";
const SINGLE_TRANSACTIONS_PER_CLIENT: u32 = 10_000;
const BATCHES_PER_CLIENT: u32 = 100;
const BATCH: u32 = 100;

fn binary() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(Result::ok)
        .map(|d| d.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| anyhow::anyhow!("pgbench not found under /usr/lib/postgresql/*/bin"))
}

/// Runs `file` with `transactions` per client; returns pgbench's transactions per second.
fn tps(url: &str, file: &Path, transactions: u32) -> anyhow::Result<Decimal> {
    let out = Command::new(binary()?)
        .args(["-n", "-c", CLIENTS, "-j", CLIENTS, "-t", &transactions.to_string(), "-f"])
        .arg(file)
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "pgbench {}: {text}{}", file.display(), String::from_utf8_lossy(&out.stderr));
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<Decimal>().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {text}"))
}

/// Both baselines, on the database at `url` prepared with `setup.sql`.
pub fn run(url: &str, dir: &Path) -> anyhow::Result<Baseline> {
    let one_per_event = tps(url, &dir.join("one.sql"), SINGLE_TRANSACTIONS_PER_CLIENT)?;
    let batched = tps(url, &dir.join("batch.sql"), BATCHES_PER_CLIENT)? * Decimal::from(BATCH);
    Ok(Baseline { one_per_event, batched })
}
