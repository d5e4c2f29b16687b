//! Request rate limits as pure state: [`Bucket`], a token bucket (in its GCRA form: one
//! "theoretical arrival time" instead of a token count), and [`Limiter`], a bounded map of
//! buckets by key (a tracker's per-source announce limit).
//!
//! Time is a `Duration` since an epoch the caller picks (its start), so tests and the
//! simulator drive it without a clock.
//!
//! Invariant: a bucket admits at most `burst` requests at once and `rate` per second after
//! that; a [`Limiter`] never holds more than its `max_keys` buckets, whatever the keys.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// A rate: `per_second` requests per second, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// The time one request uses up; `None` for a rate of 0 (nothing is ever admitted).
    fn interval(self) -> Option<Duration> {
        (self.per_second > 0).then(|| Duration::from_secs(1) / self.per_second)
    }
}

/// One token bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket is full again, as time since the epoch.
    full_at: Duration,
}

impl Bucket {
    /// Whether a request at `now` is admitted; takes a token if so. A `burst` of 0 counts as 1.
    pub fn admit(&mut self, now: Duration, rate: Rate) -> bool {
        let Some(t) = rate.interval() else { return false };
        let tolerance = t.saturating_mul(rate.burst.max(1) - 1);
        let start = self.full_at.max(now);
        if start - now > tolerance {
            return false;
        }
        self.full_at = start.saturating_add(t);
        true
    }

    /// Whether the bucket is full at `now` (it would forget nothing if dropped).
    pub fn is_full(&self, now: Duration) -> bool {
        self.full_at <= now
    }
}

/// Buckets by key, at most `max_keys` of them. When a new key finds the map full, buckets
/// that are full again (idle keys) are dropped, at most once per second; if none is, the new
/// key shares one overflow bucket with every other key that found no room, so the map stays
/// bounded and the overflow keys together get one key's rate.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
    overflow: Bucket,
    last_prune: Option<Duration>,
}

/// What [`Limiter::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over the rate: ask again after this long.
    No {
        retry_after: Duration,
    },
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Limiter<K> {
        Limiter {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
            overflow: Bucket::default(),
            last_prune: None,
        }
    }

    /// Admits a request of `key` at `now`, or says how long until it would be.
    pub fn admit(&mut self, key: &K, now: Duration) -> Admit {
        let rate = self.rate;
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            let due = self.last_prune.is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(1));
            if due {
                self.last_prune = Some(now);
                self.buckets.retain(|_, b| !b.is_full(now));
            }
        }
        let bucket = if self.buckets.contains_key(key) || self.buckets.len() < self.max_keys {
            self.buckets.entry(key.clone()).or_default()
        } else {
            &mut self.overflow
        };
        if bucket.admit(now, rate) {
            return Admit::Yes;
        }
        let wait = match rate.interval() {
            Some(t) => bucket.full_at.saturating_sub(now).saturating_sub(t.saturating_mul(rate.burst.max(1) - 1)),
            None => Duration::from_secs(1),
        };
        Admit::No { retry_after: wait.max(Duration::from_millis(1)) }
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Requests at the given times (ms) against one bucket, and whether each is admitted.
    fn check(rate: Rate, steps: &[(u64, bool)]) {
        let mut b = Bucket::default();
        for &(t, want) in steps {
            assert_eq!(b.admit(ms(t), rate), want, "{rate:?} at {t}ms");
        }
    }

    #[test]
    fn burst_then_rate() {
        let r = Rate { per_second: 10, burst: 3 };
        check(r, &[(0, true), (0, true), (0, true), (0, false), (50, false), (100, true), (100, false), (200, true)]);
        // Idle for long enough, the whole burst is back, and no more.
        check(r, &[(0, true), (0, true), (0, true), (10_000, true), (10_000, true), (10_000, true), (10_000, false)]);
    }

    #[test]
    fn zero_burst_is_one_and_zero_rate_is_nothing() {
        check(Rate { per_second: 1, burst: 0 }, &[(0, true), (0, false), (999, false), (1000, true)]);
        check(Rate { per_second: 0, burst: 100 }, &[(0, false), (10_000, false)]);
    }

    #[test]
    fn keys_are_limited_apart() {
        let mut l = Limiter::new(Rate { per_second: 1, burst: 2 }, 10);
        assert_eq!(l.admit(&"a", ms(0)), Admit::Yes);
        assert_eq!(l.admit(&"a", ms(0)), Admit::Yes);
        assert_eq!(l.admit(&"a", ms(0)), Admit::No { retry_after: ms(1000) });
        assert_eq!(l.admit(&"a", ms(400)), Admit::No { retry_after: ms(600) });
        assert_eq!(l.admit(&"b", ms(400)), Admit::Yes, "another key has its own bucket");
        assert_eq!(l.admit(&"a", ms(1000)), Admit::Yes);
    }

    #[test]
    fn the_map_is_bounded_and_overflow_keys_share_one_bucket() {
        let rate = Rate { per_second: 1, burst: 1 };
        let mut l = Limiter::new(rate, 3);
        for k in 0..3 {
            assert_eq!(l.admit(&k, ms(0)), Admit::Yes);
        }
        // Full, and no bucket is idle yet: new keys share the overflow bucket.
        assert_eq!(l.admit(&100, ms(10)), Admit::Yes);
        assert!(matches!(l.admit(&101, ms(10)), Admit::No { .. }), "the overflow bucket is spent");
        assert_eq!(l.len(), 3);
        // Thousands of keys later the map is still bounded.
        for k in 1000..5000 {
            let _ = l.admit(&k, ms(20));
        }
        assert_eq!(l.len(), 3);
        // Once the first keys are idle, a new key gets a bucket of its own again.
        assert_eq!(l.admit(&200, ms(5000)), Admit::Yes);
        assert_eq!(l.admit(&201, ms(5000)), Admit::Yes);
        assert!(l.len() <= 3);
    }
}
