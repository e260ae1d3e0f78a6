//! Where the paced load's end-to-end time went. Each paced reward's path is cut at the moments
//! the bench can see: the deposit sent, the commit of the engine's transaction that recorded it,
//! its hold's end (the moment of the first open barrier that covered it), the barrier's opening,
//! the commit of the settlement transaction that granted it, the relay's produce (the record's
//! Kafka CreateTime) and the bench's read. A barrier covers the payouts due by its moment, also
//! those committed after it was captured or opened: its moment and opening, when before the
//! deposit's commit, count as the commit (those hops took no time). Commit times need `track_commit_timestamp = on` (`make
//! bench` starts Postgres with it); without it the transactions' start times stand in. Kafka's
//! stamps are whole milliseconds, so a hop is approximate to about a millisecond; the hops of
//! one reward add up to its end-to-end time. Printed, never asserted.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::rewards::Arrivals;

/// The hops, in path order.
pub const HOPS: [&str; 6] = [
    "sent → engine commits the deposit",
    "committed → hold ends (a barrier covers it)",
    "hold ends → barrier opens (the gate)",
    "barrier opens → reward committed",
    "committed → relay produces",
    "produced → read back",
];

/// Each hop's p50 and p99 over all rewards, and its mean over the slowest 1% end to end, in µs.
pub struct Breakdown {
    pub rewards: usize,
    pub p50: [i64; 6],
    pub p99: [i64; 6],
    pub tail_mean: [i64; 6],
}

type Stamps = (String, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, DateTime<Utc>);

/// Reads the database's stamps for the rewards in `got` and cuts each reward's path into hops.
pub async fn measure(pool: &PgPool, sent: &HashMap<String, DateTime<Utc>>, got: &Arrivals) -> anyhow::Result<Option<Breakdown>> {
    let ids: Vec<&String> = got.by_deposit.keys().collect();
    let stamps: Vec<Stamps> = sqlx::query_as(
        "WITH c AS (SELECT current_setting('track_commit_timestamp') = 'on' AS on) \
         SELECT d.deposit_id, \
                COALESCE(CASE WHEN c.on THEN pg_xact_commit_timestamp(d.xmin) END, d.recorded_at), \
                w.hold_ended_at, b.opened_at, \
                COALESCE(CASE WHEN c.on THEN pg_xact_commit_timestamp(w.xmin) END, w.granted_at) \
         FROM rewards w JOIN deposits d ON d.deposit_id = w.qualifying_deposit_id \
         LEFT JOIN settlement_barriers b ON b.barrier_id = w.barrier_id CROSS JOIN c \
         WHERE w.qualifying_deposit_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut paths: Vec<(i64, [i64; 6])> = Vec::with_capacity(stamps.len());
    for (deposit, recorded, hold_ended, opened, granted) in stamps {
        let (Some(sent_at), Some(read_at), Some(produced), Some(hold_ended), Some(opened)) =
            (sent.get(&deposit), got.by_deposit.get(&deposit), got.produced.get(&deposit), hold_ended, opened)
        else {
            continue;
        };
        // The barrier's moment and opening, when before the deposit's commit, count as it.
        let hold_ended = hold_ended.max(recorded);
        let marks = [*sent_at, recorded, hold_ended, opened.max(hold_ended), granted, *produced, *read_at];
        let mut hops = [0i64; 6];
        for (i, hop) in hops.iter_mut().enumerate() {
            *hop = (marks[i + 1] - marks[i]).num_microseconds().unwrap_or(0);
        }
        paths.push(((*read_at - *sent_at).num_microseconds().unwrap_or(0), hops));
    }
    Ok(breakdown(paths))
}

/// Nearest-rank percentile `q` (0–100) of sorted, non-empty `v`.
pub fn rank(v: &[i64], q: usize) -> i64 {
    v[(v.len() * q).div_ceil(100).clamp(1, v.len()) - 1]
}

/// Per-hop percentiles of `paths` (end-to-end µs, hops µs), and the hops' means over the
/// slowest 1% end to end.
fn breakdown(mut paths: Vec<(i64, [i64; 6])>) -> Option<Breakdown> {
    if paths.is_empty() {
        return None;
    }
    let mut b = Breakdown { rewards: paths.len(), p50: [0; 6], p99: [0; 6], tail_mean: [0; 6] };
    for hop in 0..6 {
        let mut v: Vec<i64> = paths.iter().map(|(_, h)| h[hop]).collect();
        v.sort_unstable();
        b.p50[hop] = rank(&v, 50);
        b.p99[hop] = rank(&v, 99);
    }
    paths.sort_unstable_by_key(|(total, _)| std::cmp::Reverse(*total));
    let tail = &paths[..paths.len().div_ceil(100)];
    for hop in 0..6 {
        let n = i64::try_from(tail.len()).unwrap_or(1);
        b.tail_mean[hop] = tail.iter().map(|(_, h)| h[hop]).sum::<i64>() / n;
    }
    Some(b)
}

fn ms(us: i64) -> String {
    format!("{} ms", Decimal::new(us, 3).round_dp(1))
}

/// Prints the breakdown under the main table.
pub fn print(b: &Breakdown) {
    println!();
    println!("paced: where the time went ({} rewards; slowest 1% = the rewards at or past the p99)", b.rewards);
    println!("{:<46} {:>10} {:>10} {:>16}", "hop", "p50", "p99", "slowest 1% mean");
    for (i, name) in HOPS.iter().enumerate() {
        println!("{name:<46} {:>10} {:>10} {:>16}", ms(b.p50[i]), ms(b.p99[i]), ms(b.tail_mean[i]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_mean_is_taken_over_the_slowest_rewards_end_to_end() {
        // 200 rewards: 197 fast ones spend 10 ms in the first hop; three slow ones spend 80 to
        // 95 ms in the gate instead. The slowest 1% (two rewards) must blame the gate.
        let mut paths: Vec<(i64, [i64; 6])> = (0..197).map(|_| (10_000, [10_000, 0, 0, 0, 0, 0])).collect();
        paths.push((80_000, [0, 0, 80_000, 0, 0, 0]));
        paths.push((90_000, [0, 0, 90_000, 0, 0, 0]));
        paths.push((95_000, [0, 0, 95_000, 0, 0, 0]));
        let b = breakdown(paths).expect("paths");
        assert_eq!(b.rewards, 200);
        assert_eq!(b.p50[0], 10_000);
        assert_eq!(b.tail_mean[2], 92_500);
        assert_eq!(b.tail_mean[0], 0);
        assert_eq!(b.p99[2], 80_000);
    }

    #[test]
    fn no_rewards_no_breakdown() {
        assert!(breakdown(Vec::new()).is_none());
    }
}
