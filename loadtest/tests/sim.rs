//! The simulator's own properties: it replays exactly for a seed, every agent finishes with
//! at least the whole image, and no completion beats the bound `T*`, which no schedule can,
//! by more than the credit the links' token buckets start with (a tenth of a second, as in
//! the real limiter);
//! it models the origins' super-seeding and the swarm's upload backlog bound; and it agrees
//! with a small real run.

use std::time::Duration;

use shoal_loadtest::modes::LocalOptions;
use shoal_loadtest::report::{Resources, RunReport};
use shoal_loadtest::run::run_local;
use shoal_loadtest::sim::{CpuModel, SimConfig, SimReport, Validation, run};

/// What a completion may beat `T*` by: the links' buckets start with a tenth of a second of
/// credit (at least 64 KiB; the caps here are fast enough that a tenth of a second is more).
const CREDIT: f64 = 0.1 + 1e-6;

fn small(seed: u64) -> SimConfig {
    SimConfig { hosts: 20, layers: vec![32 << 20], seed, check_invariants: true, ..SimConfig::default() }
}

/// The harness report of a run, with the fields that depend on the wall clock zeroed.
fn report_json(r: &SimReport, cfg: &SimConfig) -> String {
    let mut rr: RunReport = r.run_report(cfg, Resources::default());
    rr.unix_time = 0;
    serde_json::to_string(&rr).unwrap()
}

/// Every agent done no earlier than the bound, with at least the whole image.
fn assert_valid(r: &SimReport, cfg: &SimConfig) {
    assert_eq!(r.hosts.len(), cfg.hosts);
    for (i, h) in r.hosts.iter().enumerate() {
        assert!(h.done >= r.bound - CREDIT && h.done > 0.0, "host {i} done at {} (bound {})", h.done, r.bound);
        assert!(h.received >= cfg.total_size(), "host {i} received {}", h.received);
    }
}

#[test]
fn same_seed_same_report_other_seed_differs_but_valid() {
    let cfg = small(7);
    let a = run(&cfg);
    let b = run(&cfg);
    assert_eq!(a, b);
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    assert_eq!(report_json(&a, &cfg), report_json(&b, &cfg));
    let other = small(8);
    let c = run(&other);
    assert_ne!(a.hosts, c.hosts);
    assert_ne!(report_json(&a, &cfg), report_json(&c, &other));
    assert_valid(&a, &cfg);
    assert_valid(&c, &other);
}

#[test]
fn report_has_the_harness_format() {
    let cfg = small(2);
    let r = run(&cfg);
    let rr = r.run_report(&cfg, Resources::default());
    assert_eq!((rr.mode.as_str(), rr.n_agents, rr.blob_bytes), ("simulated", 20, 32 << 20));
    assert!(rr.verified_all);
    let p = rr.percentiles.unwrap();
    assert_eq!((p.p50, p.p99, p.max), (r.p50, r.p99, r.max));
    assert!((rr.bound.as_ref().unwrap().secs - r.bound).abs() < 1e-9);
    assert_eq!(rr.origin_uploaded, r.origin_bytes);
    assert!(rr.timeline.windows(2).all(|w| w[0].secs < w[1].secs && w[0].delivered <= w[1].delivered));
    let dir = tempfile::tempdir().unwrap();
    rr.write(dir.path()).unwrap();
    let back: RunReport = serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!((back.n_agents, back.origin_uploaded), (rr.n_agents, rr.origin_uploaded));
    assert!(std::fs::read_to_string(dir.path().join("report.html")).unwrap().contains("<svg"));
}

#[test]
fn slow_origin_super_seeds_about_one_copy() {
    // The origin is the bottleneck: without super-seeding it sends pieces that agents then
    // also get from each other.
    let cfg = SimConfig { hosts: 20, origin_up: Some(30e6), check_invariants: false, ..small(4) };
    let size = cfg.total_size() as f64;
    let seeded = run(&cfg);
    assert_valid(&seeded, &cfg);
    let copies = seeded.origin_bytes as f64 / size;
    assert!((1.0..1.1).contains(&copies), "origin sent {copies:.2} copies");
    assert!(seeded.busy_rejects > 0);
    // The swarm before super-seeding and the back-off, which had no upload backlog bound
    // either (with busy treated as `NotHave`, the bound's rejects would hide pieces for good).
    let plain_cfg = SimConfig { super_seeding: false, busy_backoff: false, upload_backlog: None, ..cfg.clone() };
    let plain = run(&plain_cfg);
    assert_valid(&plain, &plain_cfg);
    let plain_copies = plain.origin_bytes as f64 / size;
    assert!(plain_copies > copies + 0.2, "without super-seeding {plain_copies:.2} copies, with {copies:.2}");
    assert!(seeded.max < plain.max, "super-seeding {} s, without {} s", seeded.max, plain.max);
}

/// A shared CPU a quarter busy (4 hosts at 16 MiB/s, 3.71 ns per byte, two cores) delays the
/// last host by less than that host's own CPU work. A core is taken when a piece is ready for
/// it, in that order: booking a core at the moment a piece arrives for when its ingress
/// tokens allow (up to a piece's transfer time later) held the core idle meanwhile and made
/// this run 15% slower than without the CPU (+0.30 s against 0.12 s of work per host).
#[test]
fn a_lightly_loaded_cpu_delays_a_host_by_less_than_its_own_work() {
    let mib = (1u64 << 20) as f64;
    let cfg = |seed, cpu| SimConfig {
        hosts: 4,
        origins: 1,
        origin_replicas: 1,
        layers: vec![32 << 20],
        agent_up: Some(16.0 * mib),
        agent_down: Some(16.0 * mib),
        origin_up: Some(16.0 * mib),
        origin_down: None,
        seed,
        cpu,
        ..SimConfig::default()
    };
    let cpu = CpuModel { cores: 2, piece_rate: 1e9 / 3.71, blob_rate: f64::INFINITY };
    let work = 32.0 * mib / cpu.piece_rate;
    let seeds = 1..=8u64;
    let delay: f64 = seeds.clone().map(|s| run(&cfg(s, Some(cpu))).max - run(&cfg(s, None)).max).sum::<f64>() / 8.0;
    assert!(delay < work, "the CPU delays the last host by {delay:.3} s on average, its own work is {work:.3} s");
}

/// A real in-process run of 4 agents pulling 32 MiB (32 pieces) at 16 MiB/s (T* = 2 s) and the
/// mean of eight simulations of it with the shared CPU agree within 25%. On this machine
/// (2026-12-02, `CpuModel::measured` at 3.71 ns per byte) the simulations give p50 2.04 s, max
/// 2.07 s (2.04-2.11 s over the seeds) and origin copies 1.04, and real runs came out at max
/// 1.97-2.39 s with 1.00-1.06 copies: gaps of -13.5% to +5.5%, the real runs the more spread.
/// With the cost re-measured on 2026-12-06 (2.78 ns per byte): real max 2.195 s, simulated
/// 2.069 s (1.999-2.122 s), -5.7%.
/// Smaller setups are poor probes: at 4 MiB/s a run of 8 MiB is over before the swarm settles,
/// and its tail is made of busy back-offs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agrees_with_a_small_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let o = LocalOptions {
        agents: 4,
        size: 32 << 20,
        agent_rate: Some(16 << 20),
        origin_rate: Some(16 << 20),
        dir: Some(dir.path().to_path_buf()),
        timeout: Duration::from_secs(60),
        verbose: false,
        ..LocalOptions::default()
    };
    let real = run_local(&o).await.unwrap();
    assert!(real.verified_all, "{}", real.table());
    let seeds: Vec<u64> = (1..=8).collect();
    let v = Validation::of(&real, &seeds, None, Some(CpuModel::measured(real.machine.cores))).unwrap();
    let table = Validation::table(std::slice::from_ref(&v));
    println!("{table}");
    assert!(v.worst_gap() <= 0.25, "{table}");
    // One piece is 0.03 copies.
    assert!((v.sim_origin_copies - v.real_origin_copies).abs() <= 0.4, "{table}");
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
        assert!(h.done >= r.bound - CREDIT, "host {i} finished at {} before the bound {}", h.done, r.bound);
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
    assert!(r.hosts.iter().all(|h| h.done >= r.bound - CREDIT));
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
    assert!(r.hosts.iter().all(|h| h.done >= r.bound - CREDIT && h.received >= cfg.total_size()));
    assert_eq!(r, run(&cfg));
}

#[test]
fn bounded_uploads_per_host_experiment_completes_without_timeouts() {
    let cfg = SimConfig { hosts: 25, max_uploads_per_host: Some(4), ..small(12) };
    let r = run(&cfg);
    assert_valid(&r, &cfg);
    assert_eq!(r.timeouts, 0);
    assert!(r.busy_rejects > 0);
    assert_eq!(r, run(&cfg));
}

#[test]
fn defaults_are_the_services() {
    let swarm = shoal_swarm::SwarmConfig::default();
    let tracker = shoal_tracker::Config::default();
    let sim = SimConfig::default();
    assert_eq!(sim.max_peers, tracker.max_peers);
    assert_eq!(sim.announce_interval, tracker.announce_interval.get().as_secs_f64());
    assert_eq!(sim.origin_replicas, shoal_origin::config::Config::default().origin_replicas);
    assert_eq!(sim.max_peers_per_blob, swarm.max_peers_per_blob);
    assert_eq!(sim.max_connections, swarm.max_connections);
    assert_eq!(sim.request_timeout, swarm.request_timeout.get().as_secs_f64());
    assert_eq!(sim.request_window, Some(swarm.request_window.get().as_secs_f64()));
    // And the settings the downloads are built from are the swarm's where the run sets none.
    let built = sim.swarm_config();
    assert_eq!(built.download_timeout, swarm.download_timeout);
    assert_eq!(built.request_timeout, swarm.request_timeout);
    assert_eq!(built.request_window, swarm.request_window);
    assert_eq!(sim.upload_backlog, Some(swarm.upload_backlog.get().as_secs_f64()));
    assert_eq!(sim.max_uploads_per_connection, swarm.max_uploads_per_connection);
    assert_eq!((sim.pipeline_depth, sim.origin_pipeline_depth), (swarm.pipeline_depth, swarm.origin_pipeline_depth));
}

#[test]
fn upload_backlog_bound_rejects_busy_only_on_capped_links() {
    // Capped: queues at the cap are bounded (the default 50 ms), so requests beyond are answered busy and
    // taken elsewhere; every agent still gets the whole image, no request times out.
    let cfg = SimConfig { hosts: 25, ..small(13) };
    let r = run(&cfg);
    assert_valid(&r, &cfg);
    assert!(r.backlog_rejects > 0 && r.backlog_rejects <= r.busy_rejects);
    assert_eq!(r.timeouts, 0);
    assert_eq!(r, run(&cfg));
    // Off, or nothing capped: no backlog rejects.
    let off = SimConfig { upload_backlog: None, ..cfg.clone() };
    let r = run(&off);
    assert_valid(&r, &off);
    assert_eq!(r.backlog_rejects, 0);
    let uncapped = SimConfig { agent_up: None, agent_down: None, origin_up: None, origin_down: None, ..cfg };
    assert_eq!(run(&uncapped).backlog_rejects, 0);
}

#[test]
fn kraken_preset_matches_the_published_setup() {
    let k = SimConfig::kraken();
    assert_eq!((k.hosts, k.origins, k.total_size()), (2600, 5, 3_000_000_000));
    assert!((k.bound() - 10.0).abs() < 1e-9);
}

/// The hosts' shared CPU as the bottleneck (25 agents on two cores at 4.24 ns per byte, as a
/// real in-process run measured) left every agent missing only the last stripe, which only the
/// origin held, with nothing in flight: the slots the request window freed went back only to
/// the peers that had just delivered, which had nothing more to give, and the origin was never
/// asked again. The simulation stalled ("simulation stalled" after 162 virtual seconds); the
/// download actor had the same hole. Both now ask every peer when the one that delivered
/// takes nothing.
#[test]
fn a_freed_request_slot_goes_to_a_peer_that_can_use_it() {
    let rate = Some(f64::from(50u32 << 20));
    let cfg = SimConfig {
        hosts: 25,
        origins: 1,
        layers: vec![256 << 20],
        agent_up: rate,
        agent_down: rate,
        origin_up: rate,
        origin_down: None,
        origin_replicas: 1,
        announce_interval: 1.0,
        seed: 1,
        cpu: Some(CpuModel { cores: 2, piece_rate: 1e9 / 4.24, blob_rate: f64::INFINITY }),
        ..SimConfig::default()
    };
    let r = run(&cfg);
    assert_valid(&r, &cfg);
    assert!(r.max < 4.0 * cfg.bound(), "max {} s, bound {} s", r.max, cfg.bound());
}

/// With zones, a blob crosses into each zone about once, far below once per host: only a
/// zone's gateways ask other zones' peers, each for its own share of the pieces, and agents
/// ask origins only for pieces no peer has. A correctness bound on bytes, not a timing.
#[test]
fn with_zones_a_blob_crosses_into_each_zone_far_less_than_once_per_host() {
    let cfg = SimConfig { hosts: 60, layers: vec![32 << 20], zones: 3, seed: 3, ..SimConfig::default() };
    let r = run(&cfg);
    assert_valid(&r, &cfg);
    let copies = r.zone_copies(&cfg);
    assert_eq!(copies.len(), 3);
    for (z, c) in copies.iter().enumerate() {
        // 20 agents per zone: once per host would be 20 copies (without zones about 13 of
        // them come from the other two zones); with zones 1.6 to 2.2, origins' bytes
        // included. The layer takes 0.16 s, less than a gateway waits to announce again
        // (`handout::SHARE_REFRESH`), so the shares of the zone's first gateways, cut when
        // they were fewer, overlap for the whole run.
        assert!(*c >= 1.0 - 1e-9, "zone {z} got {c} copies: each zone needs the whole image once");
        assert!(*c < 2.5, "zone {z}: {c} copies of the image crossed into it ({copies:?})");
    }
    // Without zones nothing is counted, and a zoned run still replays exactly.
    assert!(run(&SimConfig { zones: 0, ..cfg.clone() }).zone_ingress.is_empty());
    assert_eq!(run(&cfg), r);
}

/// A zone larger than its gateways imports each piece about once, through the gateway whose
/// share it is: 3 zones of 100 agents, a 256 MiB layer (BENCHMARKS.md, "Zones").
#[test]
fn a_large_zone_takes_each_piece_about_once() {
    let cfg = SimConfig { hosts: 300, layers: vec![256 << 20], zones: 3, seed: 1, ..SimConfig::default() };
    let r = run(&cfg);
    assert_valid(&r, &cfg);
    let copies = r.zone_copies(&cfg);
    assert!(copies.iter().all(|c| (1.0 - 1e-9..1.5).contains(c)), "{copies:?}");
}

/// A zone of fewer askers than gateway slots splits the pieces among the gateways it has:
/// with 4 agents per zone, shares of 16 left 12 shares to nobody until the download stalled
/// and fell back (1.88 T* against 1.13 without zones). Virtual time, so deterministic.
#[test]
fn a_small_zone_is_about_as_fast_as_no_zones() {
    let rate = Some(f64::from(50u32 << 20));
    let cfg = SimConfig {
        hosts: 12,
        layers: vec![64 << 20],
        agent_up: rate,
        agent_down: rate,
        origin_up: rate,
        zones: 3,
        seed: 1,
        ..SimConfig::default()
    };
    let zoned = run(&cfg);
    assert_valid(&zoned, &cfg);
    let plain = run(&SimConfig { zones: 0, ..cfg.clone() });
    assert!(zoned.max < 1.1 * plain.max, "zoned {} s, unzoned {} s (bound {} s)", zoned.max, plain.max, cfg.bound());
    let copies = zoned.zone_copies(&cfg);
    assert!(copies.iter().all(|c| (1.0 - 1e-9..1.5).contains(c)), "{copies:?}");
}
