//! HTTP-level tests: a real tracker on `127.0.0.1:0`, driven with reqwest.
//!
//! Invariant: every test starts its own tracker with its own registry and stops it, so tests
//! share nothing and may run in parallel.

use std::net::SocketAddr;

use shoal_core::api::{AnnounceRequest, AnnounceResponse, ErrorBody, PeerInfo};
use shoal_core::handout::Imports;
use shoal_core::ring::Ring;
use shoal_core::{Digest, PeerId};
use shoal_runtime::Phase;

use crate::{Config, Tracker};

/// A tracker that trusts its loopback callers, so a test announces any address.
async fn start(config: Config) -> Tracker {
    start_as_is(Config { trusted_networks: shoal_core::net::Networks::loopback(), ..config }).await
}

/// A tracker with exactly `config`.
async fn start_as_is(config: Config) -> Tracker {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Tracker::start(config.validate().unwrap(), listener, prometheus::Registry::new()).await.unwrap()
}

async fn post(t: &Tracker, req: &AnnounceRequest, token: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut post = reqwest::Client::new().post(format!("{}/announce", t.url())).json(req);
    if let Some(tok) = token {
        post = post.bearer_auth(tok);
    }
    let res = post.send().await.unwrap();
    (res.status().as_u16(), res.headers().clone(), res.text().await.unwrap())
}

fn announce_req(n: u8, addr: &str, complete: bool) -> AnnounceRequest {
    AnnounceRequest {
        blob: Digest::of(b"layer"),
        peer_id: PeerId([n; 16]),
        addr: addr.parse().unwrap(),
        complete,
        origin: false,
        stopped: false,
        zone: None,
    }
}

async fn announce(http: &reqwest::Client, t: &Tracker, req: &AnnounceRequest) -> AnnounceResponse {
    let res = http.post(format!("{}/announce", t.url())).json(req).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn post_raw(t: &Tracker, body: impl Into<reqwest::Body>) -> (u16, ErrorBody) {
    let res = reqwest::Client::new().post(format!("{}/announce", t.url())).body(body).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

fn origins_yaml() -> &'static str {
    "origins:\n\
     - { id: o0, http: 'http://127.0.0.1:1', peer: '127.0.0.10:7603' }\n\
     - { id: o1, http: 'http://127.0.0.1:2', peer: '127.0.0.11:7603' }\n\
     - { id: o2, http: 'http://127.0.0.1:3', peer: '127.0.0.12:7603' }\n\
     origin_replicas: 1\nannounce_interval: 2s\n"
}

#[tokio::test]
async fn three_peers_get_each_other_seeders_first_then_the_origin() {
    let config: Config = shoal_runtime::config::parse(origins_yaml()).unwrap();
    let ring = Ring::new(config.origins.clone(), 1).unwrap();
    let owner = ring.owners(&Digest::of(b"layer"))[0].peer;
    let t = start(config).await;
    let http = reqwest::Client::new();

    let a = announce_req(1, "127.0.0.2:7603", false);
    let b = announce_req(2, "[fd00::2]:7603", true);
    let c = announce_req(3, "127.0.0.4:7603", false);

    let first = announce(&http, &t, &a).await;
    assert_eq!(first.interval_ms, 2000);
    let origin_only = PeerInfo { peer_id: None, addr: owner, complete: false, origin: true, zone: None };
    assert_eq!(first.peers, vec![origin_only.clone()]);

    announce(&http, &t, &b).await;
    let got = announce(&http, &t, &c).await;
    let peer = |r: &AnnounceRequest| PeerInfo {
        peer_id: Some(r.peer_id),
        addr: r.addr,
        complete: r.complete,
        origin: false,
        zone: None,
    };
    assert_eq!(got.peers, vec![peer(&b), peer(&a), origin_only.clone()]);

    // A re-announce never lists the asker itself.
    let again = announce(&http, &t, &a).await;
    let addrs: Vec<SocketAddr> = again.peers.iter().map(|p| p.addr).collect();
    assert_eq!(addrs, vec![b.addr, c.addr, owner]);

    t.stop().await.unwrap();
}

/// A zone is recorded and handed out; an invalid one is refused before the store sees it.
#[tokio::test]
async fn zones_are_handed_out_and_invalid_ones_refused() {
    let t = start(Config::default()).await;
    let a = AnnounceRequest { zone: Some("zone-a".into()), ..announce_req(1, "127.0.0.1:7001", true) };
    let (status, _, body) = post(&t, &a, None).await;
    assert_eq!(status, 200, "{body}");
    let b = AnnounceRequest { zone: Some("zone-a".into()), ..announce_req(2, "127.0.0.1:7002", false) };
    let (_, _, body) = post(&t, &b, None).await;
    let answer: AnnounceResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.peers.len(), 1, "{answer:?}");
    assert_eq!(answer.peers[0].zone.as_deref(), Some("zone-a"));
    // b is its zone's first incomplete asker: a gateway, told its share; a seeder is told none,
    // and an asker without a zone is told nothing (no `imports` in the body).
    // Alone in its zone so far: one share, every piece; and told to come back soon, as its
    // share narrows when more gateways come.
    let share = Imports::Share { slot: 0, of: 1 };
    assert_eq!(answer.imports, Some(share), "{body}");
    assert_eq!(answer.interval_ms, 250, "{body}");
    assert!(body.contains(r#""imports":{"share":{"slot":0,"of":1}}"#), "{body}");
    let (_, _, body) = post(&t, &a, None).await;
    assert!(body.contains(r#""imports":"none""#), "{body}");
    assert!(body.contains(r#""interval_ms":3000"#), "not a gateway: the configured interval: {body}");
    let (_, _, body) = post(&t, &announce_req(4, "127.0.0.1:7004", false), None).await;
    assert!(!body.contains("imports"), "{body}");
    let bad = AnnounceRequest { zone: Some("zone a".into()), ..announce_req(3, "127.0.0.1:7003", false) };
    let (status, body) = post_raw(&t, serde_json::to_string(&bad).unwrap()).await;
    assert_eq!((status, body.code.as_str()), (400, "BAD_REQUEST"));
    assert!(body.message.contains("invalid zone"), "{body:?}");
}

#[tokio::test]
async fn garbage_gets_a_400_with_an_error_body() {
    let t = start(Config::default()).await;
    let (status, body) = post_raw(&t, "not json").await;
    assert_eq!((status, body.code.as_str()), (400, "BAD_REQUEST"));
    assert!(body.message.starts_with("invalid announce"), "{body:?}");

    let bad_digest =
        r#"{"blob":"sha256:abc","peer_id":"00000000000000000000000000000000","addr":"127.0.0.1:1","complete":false}"#;
    let (status, body) = post_raw(&t, bad_digest).await;
    assert_eq!((status, body.code.as_str()), (400, "BAD_REQUEST"));
    assert!(body.message.contains("digest hex has length 3"), "{body:?}");

    let mut extra = serde_json::to_value(announce_req(1, "127.0.0.2:1", false)).unwrap();
    extra["colour"] = "blue".into();
    let (status, body) = post_raw(&t, extra.to_string()).await;
    assert_eq!(status, 400);
    assert!(body.message.contains("unknown field `colour`"), "{body:?}");

    let (status, body) = post_raw(&t, vec![b' '; crate::http::MAX_ANNOUNCE_BODY + 1]).await;
    assert_eq!((status, body.code.as_str()), (413, "PAYLOAD_TOO_LARGE"));

    let res = reqwest::get(format!("{}/announce", t.url())).await.unwrap();
    assert_eq!(res.status(), 405);
    t.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_endpoint_has_the_tracker_series() {
    let t = start(Config::default()).await;
    let http = reqwest::Client::new();
    announce(&http, &t, &announce_req(1, "127.0.0.2:7603", true)).await;
    announce(&http, &t, &announce_req(2, "127.0.0.3:7603", false)).await;
    announce(&http, &t, &announce_req(3, "0.0.0.0:7603", false)).await;
    post_raw(&t, "{").await;

    let text = http.get(format!("{}/metrics", t.url())).send().await.unwrap().text().await.unwrap();
    for line in [
        "shoal_tracker_announces_total{result=\"stored\"} 2",
        "shoal_tracker_announces_total{result=\"unusable_addr\"} 1",
        "shoal_tracker_announces_total{result=\"bad_request\"} 1",
        "shoal_tracker_announces_total{result=\"swarm_full\"} 0",
        "shoal_tracker_peers_tracked 2",
        "shoal_tracker_blobs_tracked 1",
        "shoal_tracker_handout_size_count 3",
        "shoal_tracker_handout_size_sum 3",
        "shoal_tracker_expired_peers_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    t.stop().await.unwrap();
}

#[tokio::test]
async fn phases_follow_the_lifecycle_and_stop_closes_the_port() {
    let t = start(Config::default()).await;
    let mut phases = t.watch_phase();
    assert_eq!(*phases.borrow_and_update(), Phase::Ready);
    let base = t.url();
    assert_eq!(reqwest::get(format!("{base}/ready")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{base}/health")).await.unwrap().status(), 200);

    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while phases.changed().await.is_ok() {
            seen.push(*phases.borrow_and_update());
            if seen.last() == Some(&Phase::Stopped) {
                break;
            }
        }
        seen
    });
    t.stop().await.unwrap();
    assert_eq!(seen.await.unwrap(), vec![Phase::Draining, Phase::Stopped]);
    assert!(reqwest::get(format!("{base}/health")).await.is_err(), "port still open after stop");
}

#[tokio::test]
async fn run_returns_when_cancelled() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = prometheus::Registry::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running =
        tokio::spawn(crate::run(Config::default().validate().unwrap(), listener, registry.clone(), shutdown.clone()));
    let res = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(registry.gather().iter().any(|m| m.name() == "shoal_tracker_announces_total"));
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), running).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn two_trackers_in_one_process_keep_separate_metrics() {
    let (a, b) = (start(Config::default()).await, start(Config::default()).await);
    let http = reqwest::Client::new();
    announce(&http, &a, &announce_req(1, "127.0.0.2:7603", true)).await;
    let text = http.get(format!("{}/metrics", b.url())).send().await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l == "shoal_tracker_announces_total{result=\"stored\"} 0"), "{text}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn peers_endpoint_counts_the_live_swarm() {
    let config = shoal_runtime::config::parse(
        "origins: [{ id: o0, http: 'http://127.0.0.1:1', peer: '127.0.0.4:7603' }]\norigin_replicas: 1\n",
    )
    .unwrap();
    let t = start(config).await;
    let http = reqwest::Client::new();
    let url = format!("{}/blobs/{}/peers", t.url(), Digest::of(b"layer"));
    let size = |v: serde_json::Value| (v["seeders"].as_u64(), v["downloaders"].as_u64(), v["origins"].as_u64());
    let empty: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(size(empty), (Some(0), Some(0), Some(0)));
    announce(&http, &t, &announce_req(1, "127.0.0.2:7603", false)).await;
    announce(&http, &t, &announce_req(2, "127.0.0.3:7603", true)).await;
    let mut origin = announce_req(3, "127.0.0.4:7603", true);
    origin.origin = true;
    announce(&http, &t, &origin).await;
    let got: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(size(got), (Some(2), Some(1), Some(1)));
    let bad = http.get(format!("{}/blobs/sha256:nothex/peers", t.url())).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    t.stop().await.unwrap();
}

/// An untrusted node announces its own address only: another one is refused with 403, and
/// nothing is recorded for it.
#[tokio::test]
async fn an_announce_for_someone_elses_address_is_refused() {
    let t = start_as_is(Config::default()).await;
    let victim = announce_req(1, "127.0.0.9:7603", true);
    let (status, _, body) = post(&t, &victim, None).await;
    assert_eq!(status, 403, "{body}");
    let body: ErrorBody = serde_json::from_str(&body).unwrap();
    assert_eq!(body.code, "DENIED");
    assert!(body.message.contains("127.0.0.9:7603") && body.message.contains("127.0.0.1"), "{body:?}");
    // Its own address, on any port, is fine; the refused one was never recorded.
    let own = announce_req(2, "127.0.0.1:7603", false);
    let (status, _, body) = post(&t, &own, None).await;
    assert_eq!(status, 200, "{body}");
    let answer: AnnounceResponse = serde_json::from_str(&body).unwrap();
    assert!(answer.peers.is_empty(), "{answer:?}");
    let text = reqwest::get(format!("{}/metrics", t.url())).await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l == "shoal_tracker_announces_total{result=\"denied\"} 1"), "{text}");
    t.stop().await.unwrap();
}

/// A node that evicted a blob says so with a `stopped` announce of its own address, which an
/// untrusted caller may send like any announce; a stop for another node's address is refused
/// like an announce for it, so nobody can take a node out of a swarm.
#[tokio::test]
async fn a_stopped_announce_is_accepted_from_the_announcing_node_only() {
    let t = start_as_is(Config::default()).await;
    let own = announce_req(1, "127.0.0.1:7603", true);
    assert_eq!(post(&t, &own, None).await.0, 200);
    let other = announce_req(3, "127.0.0.1:7604", false);
    let answer: AnnounceResponse = serde_json::from_str(&post(&t, &other, None).await.2).unwrap();
    assert_eq!(answer.peers.iter().map(|p| p.peer_id).collect::<Vec<_>>(), vec![Some(own.peer_id)]);
    // Someone else's stop for the node (another address) is refused and changes nothing.
    let forged =
        AnnounceRequest { stopped: true, complete: false, addr: "127.0.0.9:7603".parse().unwrap(), ..own.clone() };
    let (status, _, body) = post(&t, &forged, None).await;
    assert_eq!(status, 403, "{body}");
    let answer: AnnounceResponse = serde_json::from_str(&post(&t, &other, None).await.2).unwrap();
    assert_eq!(answer.peers.len(), 1, "{answer:?}");
    // The node's own stop is accepted, and it is no longer handed out.
    let stopped = AnnounceRequest { stopped: true, complete: false, ..own };
    let (status, _, body) = post(&t, &stopped, None).await;
    assert_eq!(status, 200, "{body}");
    let answer: AnnounceResponse = serde_json::from_str(&post(&t, &other, None).await.2).unwrap();
    assert!(answer.peers.is_empty(), "{answer:?}");
    let text = reqwest::get(format!("{}/metrics", t.url())).await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l == "shoal_tracker_announces_total{result=\"stopped\"} 1"), "{text}");
    t.stop().await.unwrap();
}

/// A caller with an allowed bearer token is trusted to announce for others (an origin behind
/// a Service address); a token that is not allowed is refused outright.
#[tokio::test]
async fn a_token_makes_a_caller_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "origin-token\n").unwrap();
    let config = Config {
        auth: shoal_runtime::AuthConfig { tokens_file: Some(file), identities: Vec::new() },
        ..Config::default()
    };
    let t = start_as_is(config).await;
    let elsewhere = announce_req(1, "10.1.2.3:7801", true);
    assert_eq!(post(&t, &elsewhere, Some("origin-token")).await.0, 200);
    let (status, _, body) = post(&t, &elsewhere, Some("guessed")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(post(&t, &elsewhere, None).await.0, 403);
    let (status, _, body) = post(&t, &announce_req(2, "127.0.0.1:7701", false), None).await;
    assert_eq!(status, 200);
    let answer: AnnounceResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.peers.iter().map(|p| p.addr).collect::<Vec<_>>(), vec![elsewhere.addr]);
    t.stop().await.unwrap();
}

/// One source past its burst is answered 429 with `Retry-After`; trusted callers are not
/// limited.
#[tokio::test]
async fn announces_are_rate_limited_per_source() {
    let config = Config { announce_rate: 1, announce_burst: 3, ..Config::default() };
    let t = start_as_is(config.clone()).await;
    let own = announce_req(1, "127.0.0.1:7701", false);
    for _ in 0..3 {
        assert_eq!(post(&t, &own, None).await.0, 200);
    }
    let (status, headers, body) = post(&t, &own, None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers[reqwest::header::RETRY_AFTER], "1");
    assert!(body.contains("RATE_LIMITED"), "{body}");
    t.stop().await.unwrap();

    let trusted = start(config).await;
    for _ in 0..10 {
        assert_eq!(post(&trusted, &own, None).await.0, 200);
    }
    trusted.stop().await.unwrap();
}
