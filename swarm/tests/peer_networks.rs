//! A tracker's answer cannot make a node dial outside its `peer_networks`: a fake tracker
//! hands out one peer inside them and one outside, on loopback listeners the test watches.
//! Nor can the fallback with every tracker down: of the blob's owners on the origin ring,
//! only those inside are dialed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::post;
use shoal_core::api::{AnnounceResponse, PeerInfo};
use shoal_core::ring::{OriginNode, Ring};
use shoal_core::{MetaInfo, PeerId};
use shoal_swarm::{Role, Swarm, SwarmConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// A ring whose only origin listens nowhere the tests look (a closed port on loopback).
fn no_owners() -> Ring {
    let origin =
        OriginNode { id: "origin-0".into(), http: "http://127.0.0.1:9".into(), peer: "127.0.0.1:9".parse().unwrap() };
    Ring::new(vec![origin], 1).unwrap()
}

fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| f.get_metric()[0].get_counter().get_value())
        .unwrap_or(0.0)
}

/// With every tracker down, an agent dials its blob's owners on the ring; an owner outside
/// `peer_networks` is not dialed all the same.
#[tokio::test]
async fn with_every_tracker_down_owners_outside_the_peer_networks_are_not_dialed() {
    let outside = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let inside = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin =
        |id: &str, peer: std::net::SocketAddr| OriginNode { id: id.into(), http: format!("http://{peer}"), peer };
    // Two replicas of two origins: both own every blob.
    let ring = Ring::new(
        vec![origin("origin-in", inside.local_addr().unwrap()), origin("origin-out", outside.local_addr().unwrap())],
        2,
    )
    .unwrap();
    // A tracker that is down: its port is closed.
    let down = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracker_url = format!("http://{}", down.local_addr().unwrap());
    drop(down);

    let dir = tempfile::tempdir().unwrap();
    let cfg = SwarmConfig {
        store_dir: dir.path().to_path_buf(),
        trackers: vec![tracker_url],
        peer_networks: shoal_core::net::Networks(vec!["127.0.0.1/32".parse().unwrap()]),
        handshake_timeout: shoal_runtime::Duration::from_millis(300),
        ..SwarmConfig::default()
    };
    let registry = prometheus::Registry::new();
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let swarm = Swarm::start(cfg, listener, &registry, Role::Agent { origins: ring }, None, shutdown.clone()).unwrap();
    let s = swarm.clone();
    tokio::spawn(async move { s.download(MetaInfo::build(b"a blob only the ring knows")).await });

    // The owner inside is dialed although no tracker answers.
    tokio::time::timeout(WAIT, inside.accept()).await.expect("the owner inside is dialed").unwrap();
    tokio::time::timeout(WAIT, async {
        while counter(&registry, "shoal_swarm_announce_failures_total") < 2.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("two announce rounds without a tracker");
    let dialed = tokio::time::timeout(Duration::from_millis(200), outside.accept()).await;
    assert!(dialed.is_err(), "the owner outside peer_networks was dialed");
    shutdown.cancel();
}

#[tokio::test]
async fn a_poisoned_handout_outside_the_peer_networks_is_never_dialed() {
    let outside = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let inside = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = |addr, origin| PeerInfo { peer_id: Some(PeerId([7; 16])), addr, complete: true, origin, zone: None };
    let answer = AnnounceResponse {
        peers: vec![peer(outside.local_addr().unwrap(), true), peer(inside.local_addr().unwrap(), false)],
        interval_ms: 100,
        imports: None,
    };
    let announces = Arc::new(AtomicUsize::new(0));
    let counted = announces.clone();
    let tracker = axum::Router::new().route(
        "/announce",
        post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            async move { axum::Json(answer) }
        }),
    );
    let tracker_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracker_url = format!("http://{}", tracker_listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(tracker_listener, tracker).with_graceful_shutdown(async move { stop.cancelled().await }).await
    });

    let dir = tempfile::tempdir().unwrap();
    let cfg = SwarmConfig {
        store_dir: dir.path().to_path_buf(),
        trackers: vec![tracker_url],
        peer_networks: shoal_core::net::Networks(vec!["127.0.0.1/32".parse().unwrap()]),
        handshake_timeout: shoal_runtime::Duration::from_millis(300),
        ..SwarmConfig::default()
    };
    let registry = prometheus::Registry::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let swarm =
        Swarm::start(cfg, listener, &registry, Role::Agent { origins: no_owners() }, None, shutdown.clone()).unwrap();
    let meta = MetaInfo::build(b"a blob no peer here has");
    let s = swarm.clone();
    tokio::spawn(async move { s.download(meta).await });

    // The inside peer is dialed: the answer was used.
    tokio::time::timeout(WAIT, inside.accept()).await.expect("the inside peer is dialed").unwrap();
    // A second announce starts only once the first round's dials are over.
    tokio::time::timeout(WAIT, async {
        while announces.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a second announce");
    let dialed = tokio::time::timeout(Duration::from_millis(200), outside.accept()).await;
    assert!(dialed.is_err(), "the address outside peer_networks was dialed");
    let refused = counter(&registry, "shoal_swarm_peers_outside_networks_total");
    assert!(refused >= 2.0, "{refused}");
    shutdown.cancel();
}

/// A node with a `tracker_token_file` sends its token with every announce.
#[tokio::test]
async fn announces_carry_the_tracker_token() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let tracker = axum::Router::new().route(
        "/announce",
        post(move |headers: axum::http::HeaderMap| {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            s.lock().unwrap().push(auth);
            async { axum::Json(AnnounceResponse { peers: Vec::new(), interval_ms: 100, imports: None }) }
        }),
    );
    let tracker_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracker_url = format!("http://{}", tracker_listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(tracker_listener, tracker).with_graceful_shutdown(async move { stop.cancelled().await }).await
    });
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "origin-secret\n").unwrap();
    let cfg = SwarmConfig {
        store_dir: dir.path().join("store"),
        trackers: vec![tracker_url],
        tracker_token_file: Some(token),
        ..SwarmConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let swarm =
        Swarm::start(cfg, listener, &prometheus::Registry::new(), Role::Origin, None, shutdown.clone()).unwrap();
    let s2 = swarm.clone();
    tokio::spawn(async move { s2.download(MetaInfo::build(b"announced")).await });
    tokio::time::timeout(WAIT, async {
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("an announce");
    assert_eq!(seen.lock().unwrap()[0], "Bearer origin-secret");
    shutdown.cancel();
}
