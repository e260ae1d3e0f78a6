//! An in-memory rate limiter: at most `limit` requests per key in a fixed window that starts
//! at the key's first request. Memory is bounded: windows that ended are evicted once per
//! window length, and no more than `max_keys` keys are tracked; while the table is full of
//! live windows a new key is refused until the next eviction (the limiter fails closed, so a
//! flood from many addresses cannot get past it). Time is passed in, so tests need no sleeps.
//! Limits hold per process: several `links` replicas each allow `limit`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A refused request: how long until the window that refused it frees up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds for a `Retry-After` header, rounded up and at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
}

#[derive(Debug)]
struct Table<K> {
    windows: HashMap<K, Window>,
    next_sweep: Instant,
}

/// Requests per key per window.
#[derive(Debug)]
pub struct Limiter<K> {
    limit: u32,
    window: Duration,
    max_keys: usize,
    table: Mutex<Table<K>>,
}

impl<K: Hash + Eq> Limiter<K> {
    /// `limit` requests per `window` per key, tracking at most `max_keys` keys; `now` starts
    /// the eviction clock.
    pub fn new(limit: u32, window: Duration, max_keys: usize, now: Instant) -> Self {
        Self {
            limit: limit.max(1),
            window,
            max_keys: max_keys.max(1),
            table: Mutex::new(Table { windows: HashMap::new(), next_sweep: now + window }),
        }
    }

    /// Counts one request of `key` at `now`; `Err` when it is over the limit.
    pub fn check(&self, key: K, now: Instant) -> Result<(), Limited> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if now >= table.next_sweep {
            let window = self.window;
            table.windows.retain(|_, w| now.saturating_duration_since(w.started) < window);
            table.next_sweep = now + window;
        }
        let next_sweep = table.next_sweep;
        let full = table.windows.len() >= self.max_keys;
        match table.windows.get_mut(&key) {
            Some(w) if now.saturating_duration_since(w.started) >= self.window => {
                *w = Window { started: now, count: 1 };
                Ok(())
            }
            Some(w) if w.count < self.limit => {
                w.count += 1;
                Ok(())
            }
            Some(w) => Err(Limited { retry_after: (w.started + self.window).saturating_duration_since(now) }),
            None if full => Err(Limited { retry_after: next_sweep.saturating_duration_since(now) }),
            None => {
                table.windows.insert(key, Window { started: now, count: 1 });
                Ok(())
            }
        }
    }

    /// Keys currently tracked.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn the_request_after_the_limit_is_refused_until_the_window_ends() {
        let t0 = Instant::now();
        let l = Limiter::new(5, MIN, 100, t0);
        for s in 0..5 {
            assert_eq!(l.check("a", at(t0, s)), Ok(()));
        }
        let refused = l.check("a", at(t0, 20)).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(40));
        assert_eq!(refused.retry_after_secs(), 40);
        assert!(l.check("a", at(t0, 59)).is_err(), "still the same window");
        assert_eq!(l.check("a", at(t0, 60)), Ok(()), "a new window");
    }

    #[test]
    fn keys_are_counted_apart() {
        let t0 = Instant::now();
        let l = Limiter::new(1, MIN, 100, t0);
        assert_eq!(l.check("a", t0), Ok(()));
        assert!(l.check("a", t0).is_err());
        assert_eq!(l.check("b", t0), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_a_whole_second() {
        let t0 = Instant::now();
        let l = Limiter::new(1, MIN, 100, t0);
        l.check("a", t0).unwrap();
        let refused = l.check("a", t0 + Duration::from_millis(59_500)).unwrap_err();
        assert_eq!(refused.retry_after_secs(), 1);
        assert_eq!(Limited { retry_after: Duration::ZERO }.retry_after_secs(), 1);
    }

    #[test]
    fn stale_keys_are_evicted_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let l = Limiter::new(10, MIN, 3, t0);
        for k in 0..3 {
            l.check(k, at(t0, 1)).unwrap();
        }
        let refused = l.check(99, at(t0, 2)).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(58), "a new key waits for the next eviction");
        assert_eq!(l.tracked(), 3);
        // The eviction at t0 + 60 s keeps only windows that have not ended (none: they began at 1 s).
        assert_eq!(l.check(99, at(t0, 61)), Ok(()));
        assert_eq!(l.tracked(), 1);
        for k in 0..1000 {
            let _ = l.check(k, at(t0, 62));
        }
        assert_eq!(l.tracked(), 3);
    }

    #[test]
    fn live_windows_survive_an_eviction() {
        let t0 = Instant::now();
        let l = Limiter::new(2, MIN, 10, t0);
        l.check("busy", at(t0, 50)).unwrap();
        l.check("busy", at(t0, 55)).unwrap();
        l.check("other", at(t0, 1)).unwrap();
        // The sweep at 60 s keeps both: "other" runs 1 s – 61 s, "busy" 50 s – 110 s.
        assert!(l.check("busy", at(t0, 60)).is_err(), "busy's window is full");
        assert_eq!(l.tracked(), 2);
        assert!(l.check("busy", at(t0, 121)).is_ok());
        assert_eq!(l.tracked(), 1, "the sweep at 121 s evicted `other`");
    }
}
