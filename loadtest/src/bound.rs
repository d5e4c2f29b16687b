//! The arithmetic every report is judged by: the lower bound T* on the time to send one blob to
//! N peers, nearest-rank percentiles of completion times, and ratios to the bound.
//!
//! Pure functions, no I/O. The bound (ANCHORS.md, "The bound") for a blob of `F` bytes, seeds
//! with total upload `U_s`, and N agents with upload `U_i` and download `D_i`, is
//!
//! ```text
//! T* = max(F / U_s, F / min D_i, N·F / (U_s + Σ U_i))
//! ```
//!
//! A cap of `None` means "unlimited", and an unlimited term does not constrain anything, so it
//! drops out of the maximum:
//! - `F / U_s` is defined only when every seed is capped (one uncapped seed makes `U_s` infinite);
//! - `F / min D_i` takes the minimum over the capped agents only, and is undefined when none is;
//! - `N·F / (U_s + Σ U_i)` is defined only when every seed and every agent upload is capped.
//!
//! When no term is defined (nothing is capped, or there are no agents) the bound is `None`:
//! the run is limited by this machine, not by any link, and ratios to a bound are meaningless.
//! Reports then show throughput instead.
//!
//! The real harness's reports and the simulator's use these same functions.

use serde::{Deserialize, Serialize};

/// One agent's emulated link, in bytes per second; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub up: Option<u64>,
    pub down: Option<u64>,
}

/// The bound and the term that set it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    /// T* in seconds: the largest defined term.
    pub secs: f64,
    /// `F / U_s`, if every seed is capped.
    pub seed_term: Option<f64>,
    /// `F / min D_i` over the capped agents, if any is.
    pub download_term: Option<f64>,
    /// `N·F / (U_s + Σ U_i)`, if every seed and every agent upload is capped.
    pub total_upload_term: Option<f64>,
    /// Which term is the maximum: "seed upload", "agent download" or "total upload".
    pub binding: String,
}

/// Nearest-rank percentiles of a set of samples (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub n: usize,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Each percentile divided by T*.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// T* for a blob of `size` bytes, seeds with upload caps `seeds_up` and the agents' `links`.
/// `None` when no term is defined (see the module doc) or when there are no agents.
pub fn bound(size: u64, seeds_up: &[Option<u64>], links: &[Link]) -> Option<Bound> {
    // Sum of caps, or `None` if any is unlimited (or there are none: no seed means no source,
    // which we treat as "not a link limit" rather than an infinite bound).
    let u_seed = match seeds_up.iter().map(|c| c.map(|c| c as f64)).sum::<Option<f64>>() {
        Some(sum) if !seeds_up.is_empty() => Some(sum),
        _ => None,
    };
    let rates: Vec<(Option<f64>, Option<f64>)> =
        links.iter().map(|l| (l.up.map(|u| u as f64), l.down.map(|d| d as f64))).collect();
    bound_of_rates(size, u_seed, &rates)
}

/// [`bound`] over rates in bytes/s, as the simulator's configuration gives them: `seed_up` is
/// the seeds' total upload (`None`: unlimited, or no seed), `agents` each agent's
/// (upload, download).
///
/// In the simulator no schedule beats it by more than the credit the links' token buckets
/// start with (a tenth of a second, as the real limiter's), so no simulated completion time
/// is below `T*` minus that (the simulator's tests check it).
pub fn bound_of_rates(size: u64, seed_up: Option<f64>, agents: &[(Option<f64>, Option<f64>)]) -> Option<Bound> {
    if agents.is_empty() {
        return None;
    }
    let f = size as f64;
    let n = agents.len() as f64;
    let seed_term = seed_up.map(|u| div(f, u));
    let min_down = agents.iter().filter_map(|a| a.1).reduce(f64::min);
    let download_term = min_down.map(|d| div(f, d));
    let mut u_agents = Some(0.0);
    for (up, _) in agents {
        u_agents = u_agents.zip(*up).map(|(sum, u)| sum + u);
    }
    let total_upload_term = match (seed_up, u_agents) {
        (Some(s), Some(a)) => Some(div(n * f, s + a)),
        _ => None,
    };
    let terms = [("seed upload", seed_term), ("agent download", download_term), ("total upload", total_upload_term)];
    let (binding, secs) = terms.iter().filter_map(|(name, t)| t.map(|t| (*name, t))).fold(
        None,
        |best: Option<(&str, f64)>, (name, t)| match best {
            Some((_, b)) if b >= t => best,
            _ => Some((name, t)),
        },
    )?;
    Some(Bound { secs, seed_term, download_term, total_upload_term, binding: binding.to_string() })
}

/// `F / rate`, with a zero rate giving infinity (a link that moves nothing never finishes).
fn div(f: f64, rate: f64) -> f64 {
    if rate <= 0.0 { f64::INFINITY } else { f / rate }
}

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `sorted` (ascending): the smallest
/// sample such that at least p % of the samples are ≤ it, i.e. `sorted[ceil(p/100·n) - 1]`.
/// `p` ≤ 0 gives the minimum. `None` for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (p / 100.0 * n as f64).ceil().clamp(1.0, n as f64) as usize;
    Some(sorted[rank - 1])
}

/// p50/p90/p99/max (nearest rank) and mean of `samples`; `None` if empty. NaNs sort last.
pub fn percentiles(samples: &[f64]) -> Option<Percentiles> {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let p = |q| percentile(&s, q);
    Some(Percentiles {
        n: s.len(),
        min: *s.first()?,
        mean: s.iter().sum::<f64>() / s.len() as f64,
        p50: p(50.0)?,
        p90: p(90.0)?,
        p99: p(99.0)?,
        max: *s.last()?,
    })
}

/// `x / base`, `None` when `base` is not a positive finite number.
pub fn ratio(x: f64, base: f64) -> Option<f64> {
    (base.is_finite() && base > 0.0).then(|| x / base)
}

/// Each percentile as a multiple of the bound.
pub fn ratios(p: &Percentiles, bound: &Bound) -> Option<Ratios> {
    Some(Ratios {
        p50: ratio(p.p50, bound.secs)?,
        p90: ratio(p.p90, bound.secs)?,
        p99: ratio(p.p99, bound.secs)?,
        max: ratio(p.max, bound.secs)?,
    })
}

/// Aggregate delivery in bytes/s: `n` copies of `size` bytes in `secs`.
pub fn throughput(n: usize, size: u64, secs: f64) -> Option<f64> {
    ratio(n as f64 * size as f64, secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn links(n: usize, up: Option<u64>, down: Option<u64>) -> Vec<Link> {
        vec![Link { up, down }; n]
    }

    /// `(size, seeds, links) -> (secs, binding)`, or `None`.
    fn check(size: u64, seeds: &[Option<u64>], l: &[Link], expect: Option<(f64, &str)>) {
        let got = bound(size, seeds, l).map(|b| (b.secs, b.binding));
        match (got, expect) {
            (None, None) => {}
            (Some((s, b)), Some((es, eb))) => {
                assert!((s - es).abs() < 1e-9, "secs {s} != {es}");
                assert_eq!(b, eb);
            }
            (g, e) => panic!("got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn bound_total_upload_binds_for_many_agents() {
        // 10 agents and the seed at 50 MiB/s, 100 MiB: F/U_s = F/D = 2 s, N·F/(50 + 500) = 1.82 s.
        // On a tie the first term named wins.
        check(100 * MIB, &[Some(50 * MIB)], &links(10, Some(50 * MIB), Some(50 * MIB)), Some((2.0, "seed upload")));
        // A fast seed: F/U_s = 0.2, F/D = 2, N·F/(500+500) = 1 → download binds.
        check(100 * MIB, &[Some(500 * MIB)], &links(10, Some(50 * MIB), Some(50 * MIB)), Some((2.0, "agent download")));
        // Slow agent uploads, fast downloads: F/D = 1 s, N·F/(500 + 10·10) = 1.667 s binds.
        check(
            100 * MIB,
            &[Some(500 * MIB)],
            &links(10, Some(10 * MIB), Some(100 * MIB)),
            Some((1000.0 / 600.0, "total upload")),
        );
    }

    #[test]
    fn bound_uncapped_terms_drop_out() {
        // Nothing capped: no bound.
        check(100 * MIB, &[None], &links(5, None, None), None);
        // Only downloads capped: F/D.
        check(100 * MIB, &[None], &links(5, None, Some(25 * MIB)), Some((4.0, "agent download")));
        // Only the seed capped: F/U_s (total upload needs every upload capped).
        check(100 * MIB, &[Some(10 * MIB)], &links(5, None, None), Some((10.0, "seed upload")));
        // One uncapped seed among capped ones makes the seed side unlimited.
        check(100 * MIB, &[Some(10 * MIB), None], &links(5, Some(MIB), None), None);
    }

    #[test]
    fn bound_uses_the_slowest_download_and_summed_seeds() {
        let l = [Link { up: None, down: Some(100 * MIB) }, Link { up: None, down: Some(20 * MIB) }];
        check(100 * MIB, &[None], &l, Some((5.0, "agent download")));
        check(100 * MIB, &[Some(10 * MIB), Some(10 * MIB)], &links(3, None, None), Some((5.0, "seed upload")));
    }

    #[test]
    fn bound_edge_cases() {
        check(100 * MIB, &[Some(MIB)], &[], None);
        check(100 * MIB, &[], &links(2, None, None), None);
        check(0, &[Some(MIB)], &links(2, Some(MIB), Some(MIB)), Some((0.0, "seed upload")));
        let b = bound(MIB, &[Some(0)], &links(1, None, None)).unwrap();
        assert!(b.secs.is_infinite());
    }

    /// The simulator's case: 2600 agents at 300 MB/s each way and five such seeds, 3 GB.
    #[test]
    fn kraken_bound_is_ten_seconds() {
        let agents = vec![(Some(300e6), Some(300e6)); 2600];
        let b = bound_of_rates(3_000_000_000, Some(5.0 * 300e6), &agents).unwrap();
        assert!((b.secs - 10.0).abs() < 1e-9, "{b:?}");
        // One slow seed dominates.
        let b = bound_of_rates(1_000_000, Some(1e5), &agents[..2]).unwrap();
        assert!((b.secs - 10.0).abs() < 1e-9 && b.binding == "seed upload", "{b:?}");
        // Unlimited seeds: the downloads alone.
        let b = bound_of_rates(1_000_000, None, &agents[..2]).unwrap();
        assert_eq!((b.download_term, b.total_upload_term), (Some(1_000_000.0 / 300e6), None));
        assert_eq!(bound_of_rates(1, None, &[(None, None)]), None);
    }

    #[test]
    fn percentile_nearest_rank() {
        let s: Vec<f64> = (1..=10).map(f64::from).collect();
        for (p, want) in
            [(0.0, 1.0), (1.0, 1.0), (10.0, 1.0), (11.0, 2.0), (50.0, 5.0), (90.0, 9.0), (99.0, 10.0), (100.0, 10.0)]
        {
            assert_eq!(percentile(&s, p), Some(want), "p{p}");
        }
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        // 100 samples: p99 is the 99th, not the max.
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&s, 99.9), Some(100.0));
        assert_eq!(percentile(&s, 50.0), Some(50.0));
    }

    #[test]
    fn percentiles_sort_their_input() {
        let p = percentiles(&[3.0, 1.0, 2.0, 4.0]).unwrap();
        assert_eq!((p.n, p.min, p.p50, p.p90, p.p99, p.max), (4, 1.0, 2.0, 4.0, 4.0, 4.0));
        assert!((p.mean - 2.5).abs() < 1e-12);
        assert_eq!(percentiles(&[]), None);
    }

    #[test]
    fn ratios_and_throughput() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(3.0, f64::INFINITY), None);
        let p = percentiles(&[2.0, 2.2, 2.4]).unwrap();
        let b = bound(100 * MIB, &[Some(50 * MIB)], &links(3, None, None)).unwrap();
        let r = ratios(&p, &b).unwrap();
        assert!((r.p50 - 1.1).abs() < 1e-12 && (r.max - 1.2).abs() < 1e-12);
        assert_eq!(throughput(4, MIB, 2.0), Some(2.0 * MIB as f64));
        assert_eq!(throughput(4, MIB, 0.0), None);
    }
}
