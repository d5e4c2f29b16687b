//! The store as a cache, across real nodes: a full store settles under its low mark keeping
//! the most recently used blobs and the one being served, and peers fetch what it evicted
//! elsewhere; evictions are announced to the tracker; last uses survive a restart; a short
//! file left by a power loss is not served; an origin evicts from its store and never from its
//! backend, and starts without opening its store.

use std::time::Duration;

use shoal_core::Digest;
use shoal_core::api::SwarmSize;
use shoal_loadtest::cluster::{Cluster, counter, mib, random_blob};
use shoal_runtime::{ByteSize, SizeLimit};
use shoal_swarm::StoreConfig;

/// A budget of `max` bytes (marks at 90% and 75%), no free-space floor, and no round but the
/// ones a test runs or a commit past the high mark starts.
fn budget(max: u64) -> StoreConfig {
    StoreConfig {
        max_size: SizeLimit::Bytes(ByteSize(max)),
        min_free: SizeLimit::Bytes(ByteSize(0)),
        check_interval: shoal_runtime::Duration::from_secs(3600),
        ..StoreConfig::default()
    }
}

/// Restarts agent `i` on its store with `store` as its store settings.
async fn restart_with(c: &mut Cluster, i: usize, store: StoreConfig) {
    let mut cfg = c.agent_config(i);
    cfg.swarm.store = store;
    c.start_agent(i, Some(cfg)).await.unwrap();
}

async fn swarm_size(tracker: &str, d: &Digest) -> SwarmSize {
    reqwest::get(format!("{tracker}/blobs/{d}/peers")).await.unwrap().json().await.unwrap()
}

/// Waits (boundedly) until `cond` holds.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until agent `i` has committed every blob of `ds` (a response ends with the last
/// piece, just before the commit).
async fn committed(c: &Cluster, i: usize, ds: &[Digest]) {
    let store = c.agent(i).swarm.store().clone();
    eventually("the blobs are committed", async || ds.iter().all(|d| store.contains(d))).await;
}

/// Agent 0 pulls a 32 MiB blob, then twelve of 4 MiB, then the fourth small one again: 80 MiB.
/// Restarted with a budget of 80 MiB (marks at 72 and 60 MiB) while a client streams the big
/// blob, the oldest it holds, a round evicts the least recently used small blobs until the
/// store is under 60 MiB. The streamed blob survives and streams whole; the most recently used
/// survive; the tracker stops handing agent 0 out for what it evicted; another agent fetches
/// the evicted blobs from the others, and agent 0 uploads none of their bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_settles_under_its_low_mark_keeping_recent_and_served_blobs() {
    let mut c = Cluster::builder().agents(3).origins(1).start().await.unwrap();
    restart_with(&mut c, 0, budget(1 << 40)).await;
    let big = random_blob(mib(32), 100);
    let small: Vec<Vec<u8>> = (0..12).map(|k| random_blob(mib(4), 200 + k)).collect();
    let big_d = c.put_backend_blob(&big).unwrap();
    let ds: Vec<Digest> = small.iter().map(|b| c.put_backend_blob(b).unwrap()).collect();
    for (d, data) in std::iter::once((&big_d, &big)).chain(ds.iter().zip(&small)) {
        assert_eq!(&c.fetch(1, d).await.unwrap(), data, "agent 1");
        assert_eq!(&c.fetch(0, d).await.unwrap(), data, "agent 0");
    }
    assert_eq!(c.fetch(0, &ds[3]).await.unwrap(), small[3]);
    committed(&c, 0, &[&[big_d][..], &ds].concat()).await;
    let before = c.agent(0).swarm.store().used();
    assert_eq!(before, mib(80));

    restart_with(&mut c, 0, budget(mib(80))).await;
    // A client starts reading the big blob and holds the response open.
    let url = format!("http://{}/blobs/{big_d}", c.agent(0).http_addr);
    let mut held = reqwest::get(&url).await.unwrap();
    assert_eq!(held.status(), 200);
    let mut streamed = held.chunk().await.unwrap().expect("a first chunk").to_vec();

    let r = c.agent(0).swarm.store_round().await;
    let store = c.agent(0).swarm.store();
    let evicted: Vec<usize> = (0..12).filter(|&k| !store.contains(&ds[k])).collect();
    eprintln!(
        "eviction: {} MiB before, {} MiB after; marks {} / {} MiB; evicted small blobs {evicted:?}; kept the 32 MiB blob being served and small blobs {:?}",
        r.used_before >> 20,
        r.used_after >> 20,
        r.high >> 20,
        r.low >> 20,
        (0..12).filter(|k| !evicted.contains(k)).collect::<Vec<_>>(),
    );
    assert_eq!((r.used_before, r.high, r.low), (mib(80), mib(72), mib(60)));
    assert!(r.used_after <= r.low, "{} over the low mark {}", r.used_after, r.low);
    assert!(store.contains(&big_d), "the blob being served survives though it was the least recently used");
    // Least recently used first: 0, 1, 2, 4, 5 (3 was pulled again last).
    assert_eq!(evicted, [0, 1, 2, 4, 5]);
    assert_eq!(r.used_after, mib(60));
    while let Some(chunk) = held.chunk().await.unwrap() {
        streamed.extend_from_slice(&chunk);
    }
    assert!(streamed == big, "the served blob streamed whole");
    let registry = &c.agents[0].as_ref().unwrap().registry;
    assert_eq!(counter(registry, "shoal_swarm_store_evictions_total", Some(("reason", "size"))), 5);

    // The tracker no longer hands agent 0 out for what it evicted: agent 1 and the origin are
    // left.
    let tracker = c.tracker.url();
    for k in &evicted {
        let d = ds[*k];
        eventually("the tracker forgets agent 0", async || swarm_size(&tracker, &d).await.seeders == 2).await;
    }
    // Agent 2 fetches the evicted blobs from the others; agent 0 has none of them to give.
    let sent_before = counter(registry, "shoal_swarm_piece_bytes_sent_total", None);
    for k in &evicted {
        assert_eq!(c.fetch(2, &ds[*k]).await.unwrap(), small[*k]);
    }
    assert_eq!(counter(registry, "shoal_swarm_piece_bytes_sent_total", None), sent_before);
    c.shutdown().await;
}

/// An eviction is announced: the tracker (with a peer TTL of a minute, so nothing expires
/// during the test) stops listing the agent for that blob at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_is_announced_to_the_tracker() {
    let mut c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    let tcfg = shoal_tracker::Config {
        origins: c.origin_nodes.clone(),
        origin_replicas: 1,
        peer_ttl: shoal_runtime::Duration::from_secs(60),
        // The agent connects from 127.0.0.1, not from the 127.x address it announces (and
        // stops): as the cluster's own tracker, this one trusts loopback callers.
        trusted_networks: shoal_core::net::Networks::loopback(),
        ..shoal_tracker::Config::default()
    }
    .validate()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracker = shoal_tracker::Tracker::start(tcfg, listener, prometheus::Registry::new()).await.unwrap();
    let with_tracker = |c: &Cluster, store: StoreConfig| {
        let mut cfg = c.agent_config(0);
        cfg.swarm.trackers = vec![tracker.url()];
        cfg.swarm.store = store;
        cfg
    };
    let cfg = with_tracker(&c, budget(1 << 40));
    c.start_agent(0, Some(cfg)).await.unwrap();
    let data = random_blob(mib(2), 7);
    let d = c.put_backend_blob(&data).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    let url = tracker.url();
    eventually("the agent is listed", async || swarm_size(&url, &d).await.seeders == 1).await;

    // Restarted with a TTL of a second: past it, the blob goes.
    let cfg = with_tracker(&c, StoreConfig { ttl: Some(shoal_runtime::Duration::from_secs(1)), ..budget(1 << 40) });
    c.start_agent(0, Some(cfg)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.agent(0).swarm.store_round().await.evicted, [d]);
    eventually("the tracker forgets the agent", async || swarm_size(&url, &d).await == SwarmSize::default()).await;
    let registry = &c.agents[0].as_ref().unwrap().registry;
    assert_eq!(counter(registry, "shoal_swarm_store_evictions_total", Some(("reason", "ttl"))), 1);
    tracker.stop().await.unwrap();
    c.shutdown().await;
}

/// Last uses are written when an agent stops and read when it starts: pulled in the order
/// a, b, c, then a again, a restart with room for two evicts b, the least recently used,
/// not a, the first stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_of_last_uses_survives_a_restart() {
    let mut c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    restart_with(&mut c, 0, budget(1 << 40)).await;
    let blobs: Vec<Vec<u8>> = (0..3).map(|k| random_blob(mib(4), 300 + k)).collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| c.put_backend_blob(b).unwrap()).collect();
    for k in [0, 1, 2, 0] {
        assert_eq!(c.fetch(0, &ds[k]).await.unwrap(), blobs[k]);
    }
    committed(&c, 0, &ds).await;
    // Room for two: above 10.8 MiB, down to 9 MiB.
    restart_with(&mut c, 0, budget(mib(12))).await;
    let r = c.agent(0).swarm.store_round().await;
    assert_eq!(r.evicted, [ds[1]]);
    c.shutdown().await;
}

/// A complete blob whose file is short after a power loss (simulated: truncated while the
/// agent is down) is not served: the agent drops it and downloads it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_blob_is_not_served_after_a_power_loss() {
    let mut c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    let data = random_blob(mib(3), 11);
    let d = c.put_backend_blob(&data).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    committed(&c, 0, &[d]).await;
    c.stop_agent(0).await;
    let path = c.root().join("agent-0").join("blobs").join(d.hex());
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(mib(1) + 17).unwrap();
    c.start_agent(0, None).await.unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    let registry = &c.agents[0].as_ref().unwrap().registry;
    assert_eq!(counter(registry, "shoal_swarm_store_evictions_total", Some(("reason", "corrupt"))), 1);
    committed(&c, 0, &[d]).await;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), mib(3), "downloaded again whole");
    c.shutdown().await;
}

/// An origin's store is a cache of its backend: with a 12 MiB budget and six blobs of 4 MiB
/// pulled through it, it evicts to stay within its marks, every blob stays in the backend, and
/// an evicted blob is fetched from the backend again when asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_evicts_from_its_store_never_from_its_backend() {
    let mut swarm = shoal_loadtest::cluster::test_swarm_config();
    swarm.store = StoreConfig { check_interval: shoal_runtime::Duration::from_millis(100), ..budget(mib(12)) };
    let c = Cluster::builder().agents(1).origins(1).swarm(swarm).start().await.unwrap();
    let blobs: Vec<Vec<u8>> = (0..6).map(|k| random_blob(mib(4), 400 + k)).collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| c.put_backend_blob(b).unwrap()).collect();
    for (d, b) in ds.iter().zip(&blobs) {
        assert_eq!(&c.fetch(0, d).await.unwrap(), b);
    }
    let origin = &c.origins[0].handle.swarm;
    eventually("the origin's store is within its budget", async || origin.store().used() <= mib(9)).await;
    let evicted: Vec<&Digest> = ds.iter().filter(|d| !origin.store().contains(d)).collect();
    assert!(evicted.len() >= 3, "{} evicted", evicted.len());
    for (d, b) in ds.iter().zip(&blobs) {
        let kept = std::fs::read(c.root().join("backend").join("sha256").join(d.hex())).unwrap();
        assert!(kept == *b, "{d} changed in the backend");
    }
    let url = format!("http://{}/blobs/{}", c.origins[0].handle.http_addr, evicted[0]);
    let again = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(Digest::of(&again), *evicted[0], "fetched from the backend again");
    assert!(counter(&c.origins[0].registry, "shoal_swarm_store_evictions_total", Some(("reason", "size"))) >= 3);
    c.shutdown().await;
}

/// An origin starts on a store of stored blobs without opening any, and serves at once while
/// its tracker does not answer; it announces them in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_starts_without_opening_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = shoal_swarm::Store::open(&store_dir, shoal_swarm::blocking::Blocking::new(2)).unwrap();
    let mut ds = Vec::new();
    for k in 0..5u8 {
        let data = vec![k; 1000];
        let meta = shoal_core::MetaInfo::build(&data);
        let staged = store.tmp_path();
        std::fs::write(&staged, &data).unwrap();
        store.commit_verified(meta.clone(), staged).await.unwrap();
        ds.push(meta.digest());
    }
    drop(store);
    // A tracker that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = shoal_origin::Config {
        backend: shoal_origin::backend::BackendConfig::Fs(shoal_origin::backend::fs::FsConfig {
            root: dir.path().join("backend"),
            ..Default::default()
        }),
        swarm: shoal_swarm::SwarmConfig {
            store_dir,
            trackers: vec![format!("http://{}", silent.local_addr().unwrap())],
            ..shoal_swarm::SwarmConfig::default()
        },
        ..shoal_origin::Config::default()
    }
    .validate()
    .unwrap();
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let listeners = shoal_origin::Listeners { http: bind().await, peer: bind().await };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (origin, serve) =
        shoal_origin::start(cfg, listeners, prometheus::Registry::new(), shutdown.clone()).await.unwrap();
    let task = tokio::spawn(serve);
    assert_eq!(origin.swarm.open_blobs(), 0, "no stored blob is opened at start");
    let meta: shoal_core::MetaInfo = reqwest::get(format!("http://{}/blobs/{}/metainfo", origin.http_addr, ds[0]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta.digest(), ds[0]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A repository listed in `swarm.store.pin.repositories` pins the blobs requested through it
/// (the agent's `/v2/<name>/blobs/...`); they survive a round that evicts everything else,
/// and are released once the repository leaves the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_repository_keeps_what_was_pulled_through_it() {
    let mut c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    let pinning = |max: u64, repos: &[&str]| {
        let mut s = budget(max);
        s.pin.repositories = repos.iter().map(|r| r.to_string()).collect();
        s
    };
    restart_with(&mut c, 0, pinning(1 << 40, &["library/app"])).await;
    let (kept, other) = (random_blob(mib(4), 500), random_blob(mib(4), 501));
    let (kd, od) = (c.put_backend_blob(&kept).unwrap(), c.put_backend_blob(&other).unwrap());
    let agent = format!("http://{}", c.agent(0).http_addr);
    for (name, d, data) in [("library/app", kd, &kept), ("library/other", od, &other)] {
        let got = reqwest::get(format!("{agent}/v2/{name}/blobs/{d}")).await.unwrap().bytes().await.unwrap();
        assert!(got == *data);
    }
    committed(&c, 0, &[kd, od]).await;
    assert!(c.agent(0).swarm.store().is_pinned(&kd));
    assert!(!c.agent(0).swarm.store().is_pinned(&od));

    // A budget that holds nothing: the pinned blob stays.
    restart_with(&mut c, 0, pinning(1, &["library/app"])).await;
    let r = c.agent(0).swarm.store_round().await;
    assert_eq!(r.evicted, [od]);
    assert!(r.short > 0, "the pinned blob keeps the store above its low mark");
    assert!(c.agent(0).swarm.store().contains(&kd));
    // The repository leaves the list: the pin goes with it.
    restart_with(&mut c, 0, pinning(1, &[])).await;
    assert_eq!(c.agent(0).swarm.store_round().await.evicted, [kd]);
    c.shutdown().await;
}
