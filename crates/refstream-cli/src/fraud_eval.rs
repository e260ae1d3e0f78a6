//! `refstream fraud-eval`: produces a labeled adversarial stream through a running fleet, waits
//! until the fleet is quiet, joins the labels with what the fleet decided, and prints precision,
//! recall and false-positive rate per fraud kind.
//!
//! The stream (seeded, so a run is reproducible) mixes, over a simulated month of event time:
//! - legitimate users: organic sign-ups and the people they refer, each on their own device,
//!   email, card and address; among them a carrier NAT (hundreds of users behind ONE public IP,
//!   referring each other) and an office (one /24 network, colleagues referring colleagues);
//! - fraud rings: 3–6 accounts that refer each other and share devices and/or payment cards (half
//!   of the rings share devices, half only cards, which the scorer learns at deposit time);
//! - self-referrals through a second account: the same device, a Gmail dot/plus variant of the
//!   first account's email, or the first account's card;
//! - email-variant farms: dot/plus variants of one mailbox, referred by an accomplice;
//! - device bursts: 5–8 accounts registered from one device within minutes;
//! - disposable-email farms: one promoter referring 8–14 throwaway-address accounts in a day.
//!
//! A referral counts as flagged when the fleet held or rejected it (the scorer's latest
//! assessment, or the referral's status, is not an approval), and as paid when a reward was
//! credited for it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use refstream_workload::adversarial::{Kind, Plan};
use refstream_workload::produce::Sender;
use refstream_workload::stream::{self, Topics};
use uuid::Uuid;

#[derive(Parser)]
pub struct Args {
    /// Registrations in the stream (every kind scales with it).
    #[arg(long, default_value_t = 10_000)]
    registrations: usize,
    /// Seed of the stream's randomness.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How long to wait for the fleet to go quiet.
    #[arg(long, default_value_t = 1200)]
    timeout_secs: u64,
    /// Print one JSON object with every kind's numbers as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// The lag case: start the fraud scorer this many seconds after the stream begins (a
    /// running one, found through `.local/fraud-scorer.pid`, is stopped before the stream; run
    /// the fleet with `FLEET_SKIP=fraud-scorer` to have none). The started scorer is the
    /// `fraud-scorer` binary beside this one, with this environment; its pid goes to
    /// `.local/fraud-scorer.pid`, so `scripts/fleet.sh down` stops it.
    #[arg(long, value_name = "SECS")]
    scorer_delay: Option<u64>,
    /// The metrics address of the scorer `--scorer-delay` starts.
    #[arg(long, default_value = "127.0.0.1:9102")]
    scorer_listen: String,
}

/// What the fleet decided about one referral.
#[derive(sqlx::FromRow)]
struct Outcome {
    referee_id: String,
    status: String,
    decision: Option<String>,
    reasons: Option<Vec<String>>,
    /// A reward is credited and not reversed.
    paid: bool,
    clawed_back: bool,
    /// When the hold of its last credited reward ended (reversed or not); None when nothing
    /// was ever credited. A cause known before this is known before some reward's hold ended.
    last_hold_ended_at: Option<DateTime<Utc>>,
    /// The input event behind the first assessment revision that flagged it.
    flag_cause: Option<Uuid>,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    referrals: u64,
    flagged: u64,
    held: u64,
    rejected: u64,
    paid: u64,
    clawed_back: u64,
    paid_while_known: u64,
    flagged_after_payment: u64,
    unscored: u64,
    /// Referrals the scorer flagged, and those of them whose first flagging revision names an
    /// input this run produced (`paid_while_known` can only be judged for these).
    scorer_flagged: u64,
    traced: u64,
}

impl Outcome {
    /// The scorer's latest assessment flags it, or the referral is held or rejected.
    fn flagged(&self) -> bool {
        self.scored_flag() || matches!(self.status.as_str(), "held" | "rejected")
    }

    fn scored_flag(&self) -> bool {
        self.decision.as_deref().is_some_and(|d| d != "APPROVE")
    }
}

impl Tally {
    fn add(&mut self, o: &Outcome, known_since: &HashMap<Uuid, DateTime<Utc>>) {
        self.referrals += 1;
        let scored_flag = o.scored_flag();
        if o.flagged() {
            self.flagged += 1;
            if o.paid {
                self.flagged_after_payment += 1;
            }
        }
        self.clawed_back += u64::from(o.clawed_back);
        // Credited although what flagged it had reached the broker before the hold ended.
        let known = o.flag_cause.and_then(|cause| known_since.get(&cause));
        if let (Some(hold), Some(at)) = (o.last_hold_ended_at, known) {
            if *at < hold {
                self.paid_while_known += 1;
            }
        }
        self.scorer_flagged += u64::from(scored_flag);
        self.traced += u64::from(scored_flag && known.is_some());
        self.held += u64::from(o.status == "held");
        self.rejected += u64::from(o.status == "rejected");
        self.paid += u64::from(o.paid);
        self.unscored += u64::from(o.decision.is_none());
    }

    fn merge(&mut self, o: &Tally) {
        self.referrals += o.referrals;
        self.flagged += o.flagged;
        self.held += o.held;
        self.rejected += o.rejected;
        self.paid += o.paid;
        self.clawed_back += o.clawed_back;
        self.paid_while_known += o.paid_while_known;
        self.flagged_after_payment += o.flagged_after_payment;
        self.unscored += o.unscored;
        self.scorer_flagged += o.scorer_flagged;
        self.traced += o.traced;
    }
}

/// `n / d` as a fraction with three decimals, by integer arithmetic ("-" when `d` is 0).
fn ratio(n: u64, d: u64) -> String {
    if d == 0 {
        return "-".into();
    }
    let thousandths = (n * 1000 + d / 2) / d;
    format!("{}.{:03}", thousandths / 1000, thousandths % 1000)
}

/// `n / d` as a percentage with two decimals.
fn percent(n: u64, d: u64) -> String {
    if d == 0 {
        return "-".into();
    }
    let hundredths = (n * 10_000 + d / 2) / d;
    format!("{}.{:02}%", hundredths / 100, hundredths % 100)
}

pub async fn run(args: Args, settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(args.registrations >= 200, "--registrations must be at least 200 for every kind to appear");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(settings.database_options()?).await?;
    let mut sender = Sender::new(
        client_config(settings).set("enable.idempotence", "true").set("linger.ms", "10").set("queue.buffering.max.messages", "100000"),
    )?;
    let timeout = StdDuration::from_secs(args.timeout_secs);
    let run = format!("{:08x}", Uuid::new_v4().as_u128() as u32);
    let mut plan = Plan::build(args.seed, run.clone(), args.registrations);
    if args.scorer_delay.is_some() {
        stop_running_scorer().await?;
    }
    let baseline = stream::progress(&pool).await?;
    let started = Instant::now();
    let late_scorer = args.scorer_delay.map(|delay| tokio::spawn(start_scorer_later(StdDuration::from_secs(delay), args.scorer_listen)));
    let topics = Topics { user_registered: &settings.topics.user_registered, deposit_completed: &settings.topics.deposit_completed };
    let produced = stream::produce(&mut plan, &mut sender, &pool, &topics, timeout, |wave, sent| {
        println!("wave {wave}: registrations produced ({sent} so far)");
    })
    .await?;
    let produced_in = started.elapsed();
    println!(
        "{} registrations and {} deposits produced in {produced_in:.1?} (the deposits in {} ms); waiting for the fleet to go quiet",
        produced.registrations.len(),
        produced.deposits.len(),
        produced.deposits_took.as_millis()
    );
    if let Some(task) = late_scorer {
        task.await??;
    }
    stream::wait_quiet(&pool, baseline, i64::try_from(produced.deposits.len())?, timeout).await?;
    let settled = started.elapsed();

    let outcomes: Vec<Outcome> = sqlx::query_as(
        "SELECT r.referee_id, r.status, a.decision, a.reasons, \
                EXISTS (SELECT 1 FROM rewards w WHERE w.referral_id = r.referral_id AND w.reversed_at IS NULL) AS paid, \
                EXISTS (SELECT 1 FROM rewards w WHERE w.referral_id = r.referral_id AND w.reversal_reason = 'FRAUD') AS clawed_back, \
                (SELECT max(w.hold_ended_at) FROM rewards w WHERE w.referral_id = r.referral_id) AS last_hold_ended_at, \
                (SELECT h.cause_event_id FROM assessment_history h WHERE h.referral_id = r.referral_id AND h.decision <> 'APPROVE' \
                 ORDER BY h.revision LIMIT 1) AS flag_cause \
         FROM referrals r LEFT JOIN assessments a USING (referral_id) WHERE r.referee_id LIKE $1",
    )
    .bind(format!("fe-{run}-%"))
    .fetch_all(&pool)
    .await?;
    let known_since = produced.known_since(&sender);
    let labels: HashMap<&str, Kind> = plan.accounts.iter().filter(|a| a.referrer.is_some()).map(|a| (a.id.as_str(), a.kind)).collect();
    let mut tallies: BTreeMap<Kind, Tally> = BTreeMap::new();
    let mut fraud_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut legit_flags: BTreeMap<String, u64> = BTreeMap::new();
    for o in &outcomes {
        let Some(kind) = labels.get(o.referee_id.as_str()) else { continue };
        tallies.entry(*kind).or_default().add(o, &known_since);
        if kind.is_fraud() {
            for r in o.reasons.iter().flatten() {
                *fraud_reasons.entry(r.clone()).or_default() += 1;
            }
        } else if o.flagged() {
            let why = o.reasons.as_deref().unwrap_or_default().join("+");
            *legit_flags
                .entry(format!("{} {why} ({}, {})", kind.key(), o.decision.as_deref().unwrap_or("unscored"), o.status))
                .or_default() += 1;
        }
    }
    let missing = labels.len().saturating_sub(outcomes.len());
    let sizes = Sizes { registrations: plan.accounts.len(), deposits: produced.deposits.len(), produced: produced_in, settled, missing };
    report(&tallies, &fraud_reasons, &legit_flags, &sizes, args.seed, args.json)
}

/// What the run produced and how long it took.
struct Sizes {
    registrations: usize,
    deposits: usize,
    produced: StdDuration,
    settled: StdDuration,
    missing: usize,
}

/// `n / d` as a JSON number with three decimals (null when `d` is 0), by integer arithmetic.
fn json_ratio(n: u64, d: u64) -> serde_json::Value {
    if d == 0 {
        return serde_json::Value::Null;
    }
    let thousandths = (n * 1000 + d / 2) / d;
    serde_json::from_str(&format!("{}.{:03}", thousandths / 1000, thousandths % 1000)).unwrap_or(serde_json::Value::Null)
}

const HEADER: [&str; 10] = ["referrals", "flagged", "held", "rejected", "paid", "clawed", "paid-known", "recall", "precision", "FPR"];

fn row(name: &str, t: &Tally, rates: [String; 3]) {
    println!(
        "{:<30} {:>9} {:>8} {:>6} {:>8} {:>6} {:>7} {:>10} {:>7} {:>10} {:>7}",
        name, t.referrals, t.flagged, t.held, t.rejected, t.paid, t.clawed_back, t.paid_while_known, rates[0], rates[1], rates[2]
    );
}

fn report(
    tallies: &BTreeMap<Kind, Tally>,
    fraud_reasons: &BTreeMap<String, u64>,
    legit_flags: &BTreeMap<String, u64>,
    sizes: &Sizes,
    seed: u64,
    json: bool,
) -> anyhow::Result<()> {
    let get = |k: Kind| tallies.get(&k).copied().unwrap_or_default();
    let mut legit = Tally::default();
    for k in Kind::LEGIT {
        legit.merge(&get(k));
    }
    let mut fraud = Tally::default();
    for k in Kind::FRAUD {
        fraud.merge(&get(k));
    }
    println!();
    println!(
        "== refstream fraud-eval (seed {seed}): {} registrations, {} deposits; produced in {:.1?}, fleet quiet after {:.1?} ==",
        sizes.registrations, sizes.deposits, sizes.produced, sizes.settled
    );
    println!(
        "flagged = held or rejected (the scorer's latest assessment or the referral's status); paid = a reward credited and not reversed;"
    );
    println!("clawed = a reward reversed as FRAUD after payment; paid-known = credited although the event that flagged it reached the broker before the reward's hold ended.");
    println!(
        "precision of a kind = its flagged referrals / (those + every flagged legitimate referral); FPR = flagged legitimate / legitimate."
    );
    println!();
    let head = |first: &str| {
        println!(
            "{:<30} {:>9} {:>8} {:>6} {:>8} {:>6} {:>7} {:>10} {:>7} {:>10} {:>7}",
            first, HEADER[0], HEADER[1], HEADER[2], HEADER[3], HEADER[4], HEADER[5], HEADER[6], HEADER[7], HEADER[8], HEADER[9]
        );
    };
    head("fraud kind");
    let fpr = ratio(legit.flagged, legit.referrals);
    for k in Kind::FRAUD {
        let t = get(k);
        row(k.name(), &t, [ratio(t.flagged, t.referrals), ratio(t.flagged, t.flagged + legit.flagged), fpr.clone()]);
    }
    row("all fraud", &fraud, [ratio(fraud.flagged, fraud.referrals), ratio(fraud.flagged, fraud.flagged + legit.flagged), fpr.clone()]);
    println!();
    head("legitimate");
    for k in Kind::LEGIT {
        let t = get(k);
        row(k.name(), &t, ["-".into(), "-".into(), ratio(t.flagged, t.referrals)]);
    }
    row("all legitimate", &legit, ["-".into(), "-".into(), fpr]);
    let (nat, office) = (get(Kind::LegitNat), get(Kind::LegitOffice));
    let shared_ip_users = nat.referrals + office.referrals;
    let shared_ip_flagged = nat.flagged + office.flagged;
    println!();
    println!(
        "legitimate shared-IP users held or rejected: {shared_ip_flagged} of {shared_ip_users} ({})",
        percent(shared_ip_flagged, shared_ip_users)
    );
    let mut reasons: Vec<(&String, &u64)> = fraud_reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = reasons.iter().take(8).map(|(r, n)| format!("{r} ({n})")).collect();
    println!("reasons on fraud referrals: {}", top.join(", "));
    if !legit_flags.is_empty() {
        let each: Vec<String> = legit_flags.iter().map(|(why, n)| format!("{n} × {why}")).collect();
        println!("flagged legitimate referrals (kind, reasons, decision, status): {}", each.join("; "));
    }
    println!(
        "referrals the scorer flagged whose flagging input is traced to this stream (paid-known judges these): {} of {}",
        fraud.traced + legit.traced,
        fraud.scorer_flagged + legit.scorer_flagged
    );
    let unscored = fraud.unscored + legit.unscored;
    if sizes.missing > 0 || unscored > 0 {
        println!("WARNING: {} labeled referrals were not attributed and {unscored} not scored", sizes.missing);
    }

    // The targets, as integers: recall ≥ 0.95 is 20 × flagged ≥ 19 × referrals.
    let recall_ok = |t: Tally| t.referrals > 0 && 20 * t.flagged >= 19 * t.referrals;
    let at_most_1pct = |t: Tally| 100 * t.flagged <= t.referrals;
    let checks = [
        ("recall on fraud rings ≥ 0.95", recall_ok(get(Kind::Ring))),
        ("recall on self-referrals ≥ 0.95", recall_ok(get(Kind::SelfReferral))),
        ("recall on device bursts ≥ 0.95", recall_ok(get(Kind::DeviceBurst))),
        ("fraud rings and self-referrals paid 0", get(Kind::Ring).paid + get(Kind::SelfReferral).paid == 0),
        ("fraud paid while known 0", fraud.paid_while_known == 0),
        ("NAT users flagged ≤ 1%", at_most_1pct(nat)),
        ("office users flagged ≤ 1%", at_most_1pct(office)),
    ];
    println!();
    for (what, ok) in &checks {
        println!("target {what}: {}", if *ok { "met" } else { "MISSED" });
    }
    if json {
        let mut kinds = serde_json::Map::new();
        for k in Kind::FRAUD.into_iter().chain(Kind::LEGIT) {
            let t = get(k);
            let mut o = serde_json::json!({
                "referrals": t.referrals, "flagged": t.flagged, "held": t.held, "rejected": t.rejected,
                "paid": t.paid, "clawed_back": t.clawed_back, "paid_while_known": t.paid_while_known,
            });
            if k.is_fraud() {
                o["recall"] = json_ratio(t.flagged, t.referrals);
                o["precision"] = json_ratio(t.flagged, t.flagged + legit.flagged);
            } else {
                o["fpr"] = json_ratio(t.flagged, t.referrals);
            }
            kinds.insert(k.key().to_owned(), o);
        }
        println!("{}", serde_json::json!({"seed": seed, "kinds": kinds}));
    }
    anyhow::ensure!(checks.iter().all(|(_, ok)| *ok), "fraud-eval: a target was missed");
    Ok(())
}

const SCORER_PID: &str = ".local/fraud-scorer.pid";

/// True when process `pid` exists.
fn alive(pid: &str) -> bool {
    Command::new("kill").args(["-0", pid]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Stops the scorer named by `.local/fraud-scorer.pid`, if it runs, and waits until it exited.
async fn stop_running_scorer() -> anyhow::Result<()> {
    let Ok(pid) = std::fs::read_to_string(SCORER_PID) else { return Ok(()) };
    let pid = pid.trim().to_owned();
    if !alive(&pid) {
        return Ok(());
    }
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let started = Instant::now();
    while alive(&pid) {
        anyhow::ensure!(started.elapsed() < StdDuration::from_secs(30), "fraud scorer {pid} did not stop within 30 s");
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    println!("fraud scorer {pid} stopped before the stream");
    Ok(())
}

/// The lag case: after `delay`, starts the `fraud-scorer` binary beside this one, with this
/// environment and its metrics on `listen`; its pid goes to `.local/fraud-scorer.pid`.
async fn start_scorer_later(delay: StdDuration, listen: String) -> anyhow::Result<()> {
    tokio::time::sleep(delay).await;
    let exe = std::env::current_exe()?.with_file_name("fraud-scorer");
    std::fs::create_dir_all(".local/logs")?;
    let log = std::fs::File::create(".local/logs/fraud-scorer.log")?;
    let child = Command::new(&exe)
        .env("REFSTREAM__METRICS__LISTEN", &listen)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", exe.display()))?;
    std::fs::write(Path::new(SCORER_PID), child.id().to_string())?;
    println!("fraud scorer started {delay:?} after the stream began (pid {}, metrics on {listen})", child.id());
    Ok(())
}
