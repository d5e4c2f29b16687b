//! Token-bucket bandwidth limits: one for egress and one for ingress per node.
//!
//! A caller asks for `n` bytes before sending (or after reading) them. Tokens refill at `rate`
//! bytes per second up to `burst`. A request larger than what is available is granted at once
//! and puts the bucket into debt that the caller then sleeps off, so a 4 MiB piece never
//! waits forever behind a smaller burst and concurrent callers share the rate fairly on
//! average. The bucket is `shoal_core::ratelimit::Bucket`; this module is its clock.

use std::sync::Arc;

use parking_lot::Mutex;
use shoal_core::ratelimit::{Bucket, ByteRate};
use tokio::time::Instant;

/// A shared token bucket; `None` rate means unlimited.
#[derive(Clone)]
pub struct Limiter {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    rate: ByteRate,
    /// The bucket's time zero.
    epoch: Instant,
    /// Short critical section; never held across an await.
    bucket: Mutex<Bucket>,
}

impl Limiter {
    pub fn unlimited() -> Limiter {
        Limiter { inner: None }
    }

    /// A bucket of `rate` bytes/s with a burst of a tenth of a second (at least 64 KiB).
    pub fn new(rate: Option<u64>) -> Limiter {
        match rate {
            None | Some(0) => Limiter::unlimited(),
            Some(r) => {
                let per_second = r as f64;
                let rate = ByteRate { per_second, burst: (per_second / 10.0).max(64.0 * 1024.0) };
                Limiter {
                    inner: Some(Arc::new(Inner { rate, epoch: Instant::now(), bucket: Mutex::new(Bucket::default()) })),
                }
            }
        }
    }

    #[allow(clippy::cast_possible_truncation)] // The rate was made from a u64.
    pub fn rate(&self) -> Option<u64> {
        self.inner.as_ref().map(|b| b.rate.per_second as u64)
    }

    /// Waits until `n` bytes may pass.
    pub async fn acquire(&self, n: usize) {
        let Some(inner) = &self.inner else { return };
        let now = Instant::now().duration_since(inner.epoch);
        let wait = inner.bucket.lock().take(now, inner.rate.cost(n as u64), inner.rate.capacity());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_is_enforced_in_virtual_time() {
        let l = Limiter::new(Some(1_000_000));
        let start = Instant::now();
        // Burst is 100 KB; then 1.9 MB more at 1 MB/s takes 1.9 s.
        for _ in 0..20 {
            l.acquire(100_000).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((1.85..=1.95).contains(&took), "took {took}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let l = Limiter::new(Some(1_000_000));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let l = l.clone();
            // Test-only: every handle is awaited below.
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    l.acquire(100_000).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed().as_secs_f64();
        assert!((1.8..=2.0).contains(&took), "took {took}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let l = Limiter::new(None);
        let start = Instant::now();
        l.acquire(usize::MAX / 2).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
