//! The simulator's own properties: it replays exactly for a seed, every agent finishes with
//! at least the whole image, and no completion beats the bound `T*`, which no schedule can.

use shoal_loadtest::sim::{SimConfig, run};

fn small(seed: u64) -> SimConfig {
    SimConfig { hosts: 20, layers: vec![32 << 20], seed, check_invariants: true, ..SimConfig::default() }
}

#[test]
fn same_seed_same_result_other_seed_differs() {
    let a = run(&small(7));
    let b = run(&small(7));
    assert_eq!(a, b);
    let c = run(&small(8));
    assert_ne!(a.hosts, c.hosts);
}

#[test]
fn every_host_completes_with_the_whole_image_and_never_beats_the_bound() {
    let cfg = SimConfig { hosts: 30, origins: 2, layers: vec![24 << 20, 10 << 20], ..small(3) };
    let r = run(&cfg);
    assert_eq!(r.hosts.len(), 30);
    let size = cfg.total_size();
    for (i, h) in r.hosts.iter().enumerate() {
        assert!(h.received >= size, "host {i} received {} < {size}", h.received);
        assert!(h.done > 0.0, "host {i} never finished");
        assert!(h.done >= r.bound, "host {i} finished at {} before the bound {}", h.done, r.bound);
    }
    assert!(r.p50 <= r.p99 && r.p99 <= r.max);
    // Every byte received was uploaded by someone; some uploads are still on the way at the end.
    let received: u64 = r.hosts.iter().map(|h| h.received).sum();
    assert!(received <= r.origin_bytes + r.peer_bytes);
    assert!(received >= size * 30);
}

#[test]
fn bound_holds_with_slow_origins_and_unlimited_links() {
    // The origin's upload dominates the bound here.
    let cfg = SimConfig { hosts: 10, origin_up: Some(50e6), ..small(5) };
    let r = run(&cfg);
    assert!((r.bound - (32 << 20) as f64 / 50e6).abs() < 1e-9, "{}", r.bound);
    assert!(r.hosts.iter().all(|h| h.done >= r.bound));
    // No caps at all: latency alone bounds the run, and it still completes.
    let cfg = SimConfig { hosts: 10, agent_up: None, agent_down: None, origin_up: None, origin_down: None, ..small(5) };
    let r = run(&cfg);
    assert_eq!(r.bound, 0.0);
    assert!(r.hosts.iter().all(|h| h.done > 0.0));
}

#[test]
fn origin_priority_experiment_completes_and_replays() {
    let cfg = SimConfig { hosts: 25, origin_fewest_copies_first: true, ..small(11) };
    let r = run(&cfg);
    assert!(r.hosts.iter().all(|h| h.done >= r.bound && h.received >= cfg.total_size()));
    assert_eq!(r, run(&cfg));
}

#[test]
fn kraken_preset_matches_the_published_setup() {
    let k = SimConfig::kraken();
    assert_eq!((k.hosts, k.origins, k.total_size()), (2600, 5, 3_000_000_000));
    assert!((k.bound() - 10.0).abs() < 1e-9);
}
