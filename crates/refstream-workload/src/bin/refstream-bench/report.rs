//! The bench's one table: every measure with the target beside it and whether this run
//! met it. Rates and ratios are `Decimal` (no float arithmetic in this workspace).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::pgbench::Baseline;
use crate::procstat::Usage;
use crate::WORKERS;

/// Everything one run measured.
pub struct Measured {
    pub referrers: usize,
    pub referees: usize,
    pub burst_n: usize,
    pub pace: u64,
    /// Referees attributed and scored per second.
    pub registrations: Decimal,
    /// CPU seconds per process during the registrations, and what the machine had.
    pub registration_cpu: Vec<(String, String)>,
    pub registration_cpu_available: String,
    /// RewardGranted per second during the burst.
    pub burst_rate: Decimal,
    /// End-to-end p50 / p99 in ms.
    pub burst_latency: Option<(i64, i64)>,
    pub paced_latency: Option<(i64, i64)>,
    /// The settlement gate's wait at the paced load, p50 / p99 in ms.
    pub gate: (i64, i64),
    pub baseline: Option<Baseline>,
    /// CPU seconds per process during the burst.
    pub burst_cpu: Vec<(String, String)>,
    pub paced_cpu: Vec<(String, String)>,
    pub paced_cpu_available: String,
    /// Worker usage at the end (peak RSS).
    pub peak: BTreeMap<&'static str, Usage>,
    pub expected: usize,
    pub distinct: usize,
    pub repeated_events: usize,
    pub repeated_rewards: usize,
    pub rows: i64,
    pub doubles: i64,
}

impl Measured {
    pub fn exactly_once(&self) -> bool {
        self.distinct == self.expected
            && self.repeated_rewards == 0
            && i64::try_from(self.expected).is_ok_and(|e| e == self.rows)
            && self.doubles == 0
    }
}

const RSS_TARGET_KIB: u64 = 64 * 1024;

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    }
}

fn line(measure: &str, value: &str, target: &str, ok: Option<bool>) {
    println!("{measure:<56} {value:>16}   {target:<12} {}", verdict(ok));
}

fn ms(v: Option<(i64, i64)>, p99: bool) -> (String, Option<i64>) {
    match v {
        Some((p50, p99v)) => {
            let x = if p99 { p99v } else { p50 };
            (format!("{x} ms"), Some(x))
        }
        None => ("-".into(), None),
    }
}

pub fn print(m: &Measured) {
    println!();
    println!(
        "== refstream bench: {} referrers, {} referees; burst of {} deposits, then {} at {}/s ==",
        m.referrers,
        m.referees,
        m.burst_n,
        m.referees - m.burst_n,
        m.pace
    );
    line("measure", "value", "target", None);
    line(
        "registrations → attributed and scored",
        &format!("{}/s", m.registrations),
        "≥ 3000/s",
        Some(m.registrations >= Decimal::from(3000)),
    );
    for (name, cpu) in &m.registration_cpu {
        line(&format!("{name}: CPU during the registrations"), &format!("{cpu} CPU-s"), "", None);
    }
    line("the machine had, during the registrations", &m.registration_cpu_available, "", None);
    line("burst: RewardGranted on Kafka", &format!("{}/s", m.burst_rate), "", None);
    line("burst: end-to-end p50", &ms(m.burst_latency, false).0, "", None);
    line("burst: end-to-end p99", &ms(m.burst_latency, true).0, "", None);
    let (paced_p99, p99) = ms(m.paced_latency, true);
    line("paced: end-to-end p50", &ms(m.paced_latency, false).0, "", None);
    line("paced: end-to-end p99", &paced_p99, "≤ 100 ms", Some(p99.is_some_and(|v| v <= 100)));
    line("paced: settlement gate wait p50", &format!("{} ms", m.gate.0), "", None);
    line("paced: settlement gate wait p99", &format!("{} ms", m.gate.1), "", None);
    if let Some(b) = &m.baseline {
        line("pgbench: reward transaction once per event", &format!("{}/s", b.one_per_event.round()), "", None);
        line("pgbench: 100 rewards per transaction", &format!("{}/s", b.batched.round()), "", None);
        let ratio = |d: Decimal| if d.is_zero() { Decimal::ZERO } else { (m.burst_rate / d).round_dp(2) };
        let (batched, one) = (ratio(b.batched), ratio(b.one_per_event));
        line("ratio burst / pgbench batched", &format!("{batched}×"), "≥ 0.3×", Some(batched >= Decimal::new(3, 1)));
        line("ratio burst / pgbench once per event", &format!("{one}×"), "≥ 5×", Some(one >= Decimal::from(5)));
    } else {
        line("pgbench", "skipped", "", None);
    }
    for (name, cpu) in &m.burst_cpu {
        line(&format!("{name}: CPU during the burst"), &format!("{cpu} CPU-s"), "", None);
    }
    for (name, cpu) in &m.paced_cpu {
        line(&format!("{name}: CPU during the paced load"), &format!("{cpu} CPU-s"), "", None);
    }
    line("the machine had, during the paced load", &m.paced_cpu_available, "", None);
    for w in WORKERS {
        match m.peak.get(w) {
            Some(u) => {
                line(&format!("{w}: peak RSS"), &format!("{} MiB", u.peak_rss_mib()), "< 64 MiB", Some(u.peak_rss_kib < RSS_TARGET_KIB))
            }
            None => line(&format!("{w}: peak RSS"), "-", "< 64 MiB", None),
        }
    }
    line(
        "exactly once: distinct rewards received",
        &format!("{} of {}", m.distinct, m.expected),
        &format!("= {}", m.expected),
        Some(m.exactly_once()),
    );
    println!(
        "  relay resends dropped by event id: {}; a reward id under two event ids: {}; reward rows: {}; (referral, type) doubles: {}",
        m.repeated_events, m.repeated_rewards, m.rows, m.doubles
    );
}
