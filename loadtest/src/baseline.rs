//! The no-P2P reference a swarm run is compared with: every agent fetching the blob straight
//! from the origin's HTTP API (`GET /blobs/<digest>`), under the same caps.
//!
//! The origin's HTTP API has no rate limit of its own (its `egress_rate` shapes only swarm
//! traffic), so the caps are emulated in the client: one token bucket shared by all fetches
//! stands for the origin's upload cap, and one bucket per fetch stands for that agent's
//! download cap. The body is read in chunks, and each chunk waits until both buckets allow it,
//! so TCP flow control slows the sender to the emulated rate.
//!
//! Two modes ([`BaselineMode`]):
//! - **concurrent** (the default): all N fetches start at once and share the origin's cap.
//!   This is what a fleet without P2P does (every host pulls from the registry when a
//!   deployment rolls out), and it is the *stronger* baseline: with an uncapped origin it is never
//!   slower than fetching one after another, so the reported speed-up is not inflated.
//! - **serial**: the fetches run one after another; agent k's time is when its fetch ended.
//!   With an origin-capped link both modes finish the last agent at about N·F/U_origin.
//!
//! Run it after the swarm pull: the origin then holds the blob already, so the baseline does
//! not pay for the backend fetch the swarm run paid for (again erring towards a fast baseline).

use std::sync::Mutex;
use std::time::Duration;

use shoal_core::ratelimit::{Bucket, ByteRate};

use crate::pull::{Target, fetch_and_check};
use tokio::time::Instant;

use crate::bound;
use crate::report::Baseline;

/// How the N fetches are scheduled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BaselineMode {
    #[default]
    Concurrent,
    Serial,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BaselineOptions {
    pub mode: BaselineMode,
    /// Fetches (agents).
    pub n: usize,
    /// Emulated origin upload cap, bytes/s; shared by all fetches.
    pub origin_rate: Option<u64>,
    /// Emulated per-agent download cap, bytes/s.
    pub agent_rate: Option<u64>,
    /// Give up after this long in all.
    pub timeout: Duration,
    /// Print a line as each fetch completes.
    pub progress: bool,
}

/// Fetches `digest` from `origin_http` (e.g. `http://127.0.0.2:1234`) as `opts` says.
pub async fn measure(origin_http: &str, target: Target, opts: &BaselineOptions) -> anyhow::Result<Baseline> {
    measure_all(origin_http, &[target], opts).await
}

/// [`measure`] for a scenario of several blobs: each of the `opts.n` fetchers gets all of
/// `digests` concurrently (as an agent pulls an image's layers) through its one download cap.
pub async fn measure_all(origin_http: &str, targets: &[Target], opts: &BaselineOptions) -> anyhow::Result<Baseline> {
    let http = reqwest::Client::new();
    let base = origin_http.trim_end_matches('/');
    let origin = opts.origin_rate.map(TokenBucket::new);
    let start = Instant::now();
    let fetch = |i: usize| {
        let (http, origin) = (&http, origin.as_ref());
        async move {
            let agent = opts.agent_rate.map(TokenBucket::new);
            // The caps this fetcher's blobs share: the origin's and its own download cap.
            let pace: Vec<&TokenBucket> = [origin, agent.as_ref()].into_iter().flatten().collect();
            let pace = &pace;
            let mut bytes = 0;
            let mut ok = true;
            let all = targets.iter().map(|t| {
                let url = format!("{base}/blobs/{}", t.digest);
                async move { fetch_and_check(http, &url, t, pace).await }
            });
            for r in futures::future::join_all(all).await {
                let (b, good) = r?;
                bytes += b;
                ok &= good;
            }
            let secs = start.elapsed().as_secs_f64();
            if opts.progress {
                eprintln!("[baseline {:>4}/{}] fetch {i} done in {secs:.3}s", i + 1, opts.n);
            }
            Ok::<_, anyhow::Error>((secs, bytes, ok))
        }
    };
    let run = async {
        let mut out = Vec::with_capacity(opts.n);
        match opts.mode {
            BaselineMode::Concurrent => {
                for r in futures::future::join_all((0..opts.n).map(fetch)).await {
                    out.push(r?);
                }
            }
            BaselineMode::Serial => {
                for i in 0..opts.n {
                    out.push(fetch(i).await?);
                }
            }
        }
        Ok::<_, anyhow::Error>(out)
    };
    let results = tokio::time::timeout(opts.timeout, run)
        .await
        .map_err(|_| anyhow::anyhow!("baseline did not finish within {:?}", opts.timeout))??;
    let secs: Vec<f64> = results.iter().map(|r| r.0).collect();
    let size = results.first().map_or(0, |r| r.1);
    Ok(Baseline {
        method: format!(
            "{} fetches from the origin's HTTP API, {}, caps emulated by client token buckets",
            opts.n,
            match opts.mode {
                BaselineMode::Concurrent => "concurrent",
                BaselineMode::Serial => "one after another",
            }
        ),
        percentiles: bound::percentiles(&secs),
        verified_all: !results.is_empty() && results.iter().all(|r| r.2 && r.1 == size),
        secs,
    })
}

/// A token bucket that lets takers go into debt (`shoal_core::ratelimit::Bucket::take` on the
/// wall clock): [`TokenBucket::reserve`] always succeeds and says how long the taker must
/// wait, so concurrent takers queue up fairly behind one another and the long-run rate is
/// exactly `rate`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: ByteRate,
    /// The bucket, and its time zero (the first reservation). Short critical section, never
    /// held across an await.
    state: Mutex<(Bucket, Option<Instant>)>,
}

impl TokenBucket {
    /// A bucket refilled at `rate` bytes/s holding at most 50 ms of it (at least 64 KiB).
    /// It starts empty, so a transfer that starts at once is never ahead of `rate`.
    pub fn new(rate: u64) -> TokenBucket {
        let per_second = rate.max(1) as f64;
        let rate = ByteRate { per_second, burst: (per_second / 20.0).max(65536.0) };
        TokenBucket { rate, state: Mutex::new((Bucket::empty(rate.capacity()), None)) }
    }

    /// Takes `n` tokens at `now`; returns how long the caller must wait before going on.
    pub fn reserve(&self, n: u64, now: Instant) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (bucket, epoch) = &mut *st;
        let since = now.saturating_duration_since(*epoch.get_or_insert(now));
        bucket.take(since, self.rate.cost(n), self.rate.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_starts_empty_and_queues_debt() {
        let b = TokenBucket::new(1 << 20); // 1 MiB/s, burst 64 KiB (> 1 MiB / 20)
        let t0 = Instant::now();
        // Empty at first: even the first byte waits, so no fetch beats its cap.
        assert_eq!(b.reserve(1 << 19, t0), Duration::from_millis(500));
        // A second taker at the same instant queues behind: 1.5 s.
        assert_eq!(b.reserve(1 << 20, t0), Duration::from_millis(1500));
        // 1.5 s later the debt is paid off.
        assert_eq!(b.reserve(0, t0 + Duration::from_millis(1500)), Duration::ZERO);
    }

    #[test]
    fn bucket_refill_is_capped_at_burst() {
        let b = TokenBucket::new(1 << 20);
        let t0 = Instant::now();
        assert_eq!(b.reserve(0, t0), Duration::ZERO);
        // An idle hour banks only the 64 KiB burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.reserve(65536, later), Duration::ZERO);
        assert_eq!(b.reserve(1 << 20, later), Duration::from_secs(1));
    }

    /// A small real run: both modes fetch verified copies from an in-process origin.
    #[tokio::test]
    async fn baseline_fetches_verified_copies() {
        let cluster = crate::cluster::Cluster::builder().agents(0).start().await.unwrap();
        let data = crate::cluster::random_blob(3 << 20, 7);
        let digest = cluster.put_backend_blob(&data).unwrap();
        let generated = Target::generated(&data);
        assert_eq!(generated.digest, digest);
        let wrong = Target { check: crate::pull::Check::Source(blake3::hash(b"other bytes")), ..generated };
        for (mode, target, good) in [
            (BaselineMode::Concurrent, generated, true),
            (BaselineMode::Serial, Target::digest_only(digest), true),
            (BaselineMode::Concurrent, wrong, false),
        ] {
            let opts = BaselineOptions {
                mode,
                n: 3,
                origin_rate: Some(64 << 20),
                agent_rate: Some(64 << 20),
                timeout: Duration::from_secs(60),
                progress: false,
            };
            let b = measure(&cluster.origin_nodes[0].http, target, &opts).await.unwrap();
            assert_eq!(b.secs.len(), 3);
            assert_eq!(b.verified_all, good, "{target:?}: {b:?}");
            assert_eq!(b.percentiles.unwrap().n, 3);
        }
        cluster.shutdown().await;
    }
}
