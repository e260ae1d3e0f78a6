//! CPU seconds and peak and current memory of processes, from `/proc` (Linux only; a process that is gone
//! or unreadable is simply absent from the result).

use std::collections::BTreeMap;
use std::path::Path;

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ, 100 on every Linux we run on).
pub const TICKS_PER_SEC: u64 = 100;

/// What one process has used so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// utime + stime, in clock ticks (for Postgres also its reaped backends' cutime + cstime).
    pub cpu_ticks: u64,
    /// VmHWM: the peak resident set, KiB.
    pub peak_rss_kib: u64,
    /// VmRSS: the resident set now, KiB.
    pub rss_kib: u64,
}

impl Usage {
    /// CPU seconds between `self` (earlier) and `later`, with two decimals.
    pub fn cpu_secs_until(&self, later: &Usage) -> String {
        secs(later.cpu_ticks.saturating_sub(self.cpu_ticks))
    }

    /// The peak RSS in MiB with one decimal.
    pub fn peak_rss_mib(&self) -> String {
        format!("{}.{}", self.peak_rss_kib / 1024, self.peak_rss_kib % 1024 * 10 / 1024)
    }
}

/// The fields of `/proc/PID/stat` after the command name (field 3, `state`, is index 0).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Non-numeric fields (the state letter) become 0; only numeric ones are read.
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

/// utime + stime (+ cutime + cstime when `with_children`), ticks.
fn cpu_ticks(pid: u32, with_children: bool) -> Option<u64> {
    let f = stat_fields(pid)?;
    let own = f.get(11)? + f.get(12)?;
    Some(if with_children { own + f.get(13)? + f.get(14)? } else { own })
}

/// A process' usage with `cpu_ticks` and its resident set (VmHWM, VmRSS), read from one
/// `/proc/PID/status`.
fn with_memory(pid: u32, cpu_ticks: u64) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> Option<u64> { status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok() };
    Some(Usage { cpu_ticks, peak_rss_kib: kib("VmHWM:")?, rss_kib: kib("VmRSS:")? })
}

/// The usage of one process.
pub fn usage(pid: u32) -> Option<Usage> {
    with_memory(pid, cpu_ticks(pid, false)?)
}

/// Ticks the hypervisor took from this machine's CPUs so far (the `steal` column of the `cpu`
/// line of `/proc/stat`): time the machine's processes were ready to run and no core ran them.
pub fn stolen_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find(|l| l.starts_with("cpu "))?.split_whitespace().nth(8)?.parse().ok()
}

/// Ticks as seconds with two decimals.
pub fn secs(ticks: u64) -> String {
    format!("{}.{:02}", ticks / TICKS_PER_SEC, ticks % TICKS_PER_SEC * 100 / TICKS_PER_SEC)
}

/// The parent of `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    u32::try_from(*stat_fields(pid)?.get(1)?).ok()
}

/// A Postgres instance's CPU: the postmaster with every backend it reaped, plus the live
/// backends. Peak RSS is the postmaster's own.
pub fn postgres_usage(postmaster: u32) -> Option<Usage> {
    let ticks = cpu_ticks(postmaster, true)? + backend_ticks(postmaster).values().sum::<u64>();
    with_memory(postmaster, ticks)
}

/// The CPU ticks of each live process the postmaster started (its backends and auxiliary
/// processes), by pid.
pub fn backend_ticks(postmaster: u32) -> BTreeMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return BTreeMap::new() };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&pid| parent(pid) == Some(postmaster))
        .filter_map(|pid| Some((pid, cpu_ticks(pid, false)?)))
        .collect()
}

/// The fleet's workers: name → usage, pids read from `<root>/.local/<worker>.pid`.
pub fn workers(root: &Path, names: &[&'static str]) -> BTreeMap<&'static str, Usage> {
    names
        .iter()
        .filter_map(|w| {
            let pid = std::fs::read_to_string(root.join(format!(".local/{w}.pid"))).ok()?.trim().parse().ok()?;
            Some((*w, usage(pid)?))
        })
        .collect()
}
