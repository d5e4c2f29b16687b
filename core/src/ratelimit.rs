//! The one token bucket of Shoal, as pure state: [`Bucket`], in its GCRA form (one time, when
//! the bucket is full again, instead of a token count), and [`Limiter`], a bounded map of
//! buckets by key (a tracker's per-source announce limit).
//!
//! A bucket is driven three ways: [`Bucket::admit`] (a request is let through or refused, as
//! the tracker's announces and a peer's piece requests), [`Bucket::try_take`] (the same for a
//! cost of any size), and [`Bucket::take`] (always granted, going into debt that the caller
//! waits off: the swarm's bandwidth limiter, the load-test baseline's caps and the
//! simulator's links, which wrap it in a clock or in virtual time). Costs are durations: the
//! time the tokens take to come back. [`ByteRate`] turns bytes into them.
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

/// One token bucket. Full at the epoch unless made with [`Bucket::empty`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket is full again, as time since the epoch.
    full_at: Duration,
}

/// A byte rate for [`Bucket::take`]: `per_second` bytes per second, `burst` bytes at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ByteRate {
    pub per_second: f64,
    pub burst: f64,
}

impl ByteRate {
    /// What `n` bytes cost: the time the bucket takes to earn them back.
    pub fn cost(self, n: u64) -> Duration {
        seconds(n as f64 / self.per_second)
    }

    /// What the bucket holds when full, as time.
    pub fn capacity(self) -> Duration {
        seconds(self.burst / self.per_second)
    }
}

/// `s` seconds; a time too large (or a rate of 0) is forever.
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

impl Bucket {
    /// A bucket that is empty at the epoch, so even the first taker waits for its tokens.
    pub fn empty(capacity: Duration) -> Bucket {
        Bucket { full_at: capacity }
    }

    /// Whether a request at `now` is admitted; takes a token if so. A `burst` of 0 counts as 1.
    pub fn admit(&mut self, now: Duration, rate: Rate) -> bool {
        let Some(t) = rate.interval() else { return false };
        self.try_take(now, t, t.saturating_mul(rate.burst.max(1))).is_ok()
    }

    /// Takes `cost` at `now` if the bucket, holding at most `capacity`, has it; else leaves
    /// the bucket alone and says how long until it would.
    pub fn try_take(&mut self, now: Duration, cost: Duration, capacity: Duration) -> Result<(), Duration> {
        let end = self.full_at.max(now).saturating_add(cost);
        if end - now > capacity {
            return Err(end - now - capacity);
        }
        self.full_at = end;
        Ok(())
    }

    /// Takes `cost` at `now` whatever the bucket holds, going into debt; returns how long the
    /// taker waits until the debt is paid (zero when there was none). Concurrent takers so
    /// queue up behind one another and the long-run rate is exact.
    pub fn take(&mut self, now: Duration, cost: Duration, capacity: Duration) -> Duration {
        self.full_at = self.full_at.max(now).saturating_add(cost);
        (self.full_at - now).saturating_sub(capacity)
    }

    /// Gives `cost` back at `now` (a grant that was not used), up to a full bucket.
    pub fn give_back(&mut self, now: Duration, cost: Duration) {
        self.full_at = self.full_at.saturating_sub(cost).max(now);
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
        let wait = match rate.interval() {
            Some(t) => match bucket.try_take(now, t, t.saturating_mul(rate.burst.max(1))) {
                Ok(()) => return Admit::Yes,
                Err(wait) => wait,
            },
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

    /// `(now ms, bytes) -> wait ms` against one debt bucket of 1000 B/s holding 100 B.
    fn check_debt(mut b: Bucket, steps: &[(u64, u64, u64)]) {
        let rate = ByteRate { per_second: 1000.0, burst: 100.0 };
        for &(t, n, wait) in steps {
            assert_eq!(b.take(ms(t), rate.cost(n), rate.capacity()), ms(wait), "{n} B at {t}ms");
        }
    }

    #[test]
    fn debt_is_waited_off_in_order() {
        // Full at first: the burst passes at once, then each taker queues behind the last.
        check_debt(Bucket::default(), &[(0, 100, 0), (0, 500, 500), (0, 500, 1000), (1000, 0, 0), (1000, 100, 100)]);
        // A large taker is granted at once and owes the rest.
        check_debt(Bucket::default(), &[(0, 5000, 4900), (4900, 0, 0), (4900, 1, 1)]);
        // Idle for long, the bucket banks its burst and no more.
        check_debt(Bucket::default(), &[(0, 100, 0), (60_000, 100, 0), (60_000, 100, 100)]);
        // Empty at first: even the first byte waits.
        let rate = ByteRate { per_second: 1000.0, burst: 100.0 };
        check_debt(Bucket::empty(rate.capacity()), &[(0, 500, 500), (0, 1000, 1500), (1500, 0, 0), (1600, 100, 0)]);
    }

    #[test]
    fn try_take_leaves_a_short_bucket_alone() {
        let mut b = Bucket::default();
        let (cost, cap) = (ms(40), ms(100));
        for (t, want) in [(0, Ok(())), (0, Ok(())), (0, Err(ms(20))), (20, Ok(())), (20, Err(ms(40))), (60, Ok(()))] {
            assert_eq!(b.try_take(ms(t), cost, cap), want, "at {t}ms");
        }
        assert!(!b.is_full(ms(60)) && b.is_full(ms(160)));
        b.give_back(ms(60), ms(40));
        assert_eq!(b.try_take(ms(60), cost, cap), Ok(()), "a refund can be taken again");
        b.give_back(ms(60), ms(1000));
        assert!(b.is_full(ms(60)), "no more than a full bucket comes back");
        assert_eq!(ByteRate { per_second: 0.0, burst: 1.0 }.cost(1), Duration::MAX, "a rate of 0 never refills");
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
