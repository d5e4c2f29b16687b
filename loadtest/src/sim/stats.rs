//! Percentiles and the theoretical bound of a run, kept small and local to the simulator.
//!
//! The bound is the one of ANCHORS.md: for a blob of `F` bytes sent to `N` peers with upload
//! `U_i` and download `D_i` from seeds of total upload `U_s`,
//! `T* = max(F / U_s, F / min D_i, N·F / (U_s + Σ U_i))`. No schedule can beat it by more
//! than the credit the links' token buckets start with (a tenth of a second, as the real
//! limiter's), so no simulated completion time is below `T*` minus that (the tests check it).
//! These helpers may later be unified with the harness's own report code.

/// The nearest-rank percentile `p` (0–100) of `sorted`, which must be sorted ascending;
/// 0 for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The bound `T*` in seconds for `size` bytes to every agent; `None` rates are unlimited.
/// `agents` holds each agent's (upload, download) in bytes/s, `seed_up` the total upload of
/// the seeds.
pub fn bound(size: u64, seed_up: Option<f64>, agents: &[(Option<f64>, Option<f64>)]) -> f64 {
    let f = size as f64;
    let n = agents.len() as f64;
    let mut t: f64 = 0.0;
    if let Some(us) = seed_up {
        t = t.max(f / us);
    }
    let min_down = agents.iter().filter_map(|a| a.1).fold(f64::INFINITY, f64::min);
    if min_down.is_finite() {
        t = t.max(f / min_down);
    }
    let sum_up: Option<f64> = agents.iter().map(|a| a.0).sum();
    if let (Some(us), Some(su)) = (seed_up, sum_up) {
        t = t.max(n * f / (us + su));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 99.9), 100.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 0.0), 7.0);
    }

    #[test]
    fn kraken_bound_is_ten_seconds() {
        let agents = vec![(Some(300e6), Some(300e6)); 2600];
        let t = bound(3_000_000_000, Some(5.0 * 300e6), &agents);
        assert!((t - 10.0).abs() < 1e-9, "{t}");
        // One slow seed dominates.
        let t = bound(1_000_000, Some(1e5), &agents[..2]);
        assert!((t - 10.0).abs() < 1e-9, "{t}");
    }
}
