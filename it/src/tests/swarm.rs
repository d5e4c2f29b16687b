//! Many agents pull one blob: everyone gets the exact bytes and peers carry most of them.

use std::time::Duration;

use shoal_loadtest::cluster::{Cluster, mib, random_blob};
use shoal_loadtest::pull::pull_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_agents_get_exact_bytes_and_origin_uploads_under_three_copies() {
    let c = Cluster::builder().agents(10).start().await.unwrap();
    let size = mib(64);
    let data = random_blob(size, 1);
    let d = c.put_backend_blob(&data).unwrap();
    let pulls = pull_all(&c, d, Duration::from_secs(300)).await.unwrap();
    assert_eq!(pulls.len(), 10);
    for p in &pulls {
        assert!(p.verified, "agent {} got bytes that do not match {d}", p.agent);
        assert_eq!(p.bytes, size, "agent {}", p.agent);
        assert_eq!(p.from_origin + p.from_peers, size, "agent {} counted each new piece once", p.agent);
    }
    let origin_up = c.origin_uploaded();
    assert!(origin_up < 3 * size, "origin uploaded {origin_up} bytes, over 3x the blob ({size})");
    let from_peers: u64 = pulls.iter().map(|p| p.from_peers).sum();
    assert!(from_peers > 5 * size, "only {from_peers} bytes came from peers");
    // A second pull is served from the agent's store: no new swarm traffic.
    let before = c.origin_uploaded();
    assert_eq!(c.fetch(3, &d).await.unwrap(), data);
    assert_eq!(c.origin_uploaded(), before);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_and_empty_blobs_are_one_piece() {
    let c = Cluster::builder().agents(2).start().await.unwrap();
    for data in [Vec::new(), b"hello".to_vec()] {
        let d = c.put_backend_blob(&data).unwrap();
        assert_eq!(c.fetch(0, &d).await.unwrap(), data);
        assert_eq!(c.fetch(1, &d).await.unwrap(), data);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_origins_form_a_ring_and_agents_pull_from_it() {
    let c = Cluster::builder().agents(3).origins(2).start().await.unwrap();
    let data = random_blob(mib(8), 7);
    let d = c.put_backend_blob(&data).unwrap();
    let pulls = pull_all(&c, d, Duration::from_secs(120)).await.unwrap();
    assert!(pulls.iter().all(|p| p.verified && p.bytes == data.len() as u64));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_health_and_its_own_metrics() {
    let c = Cluster::builder().agents(2).start().await.unwrap();
    let data = random_blob(mib(2), 21);
    let d = c.put_backend_blob(&data).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    // The response ends with the last piece; the commit (synced to disk) follows.
    wait_committed(&c, 0, &d).await;
    let http = reqwest::Client::new();
    let nodes = [
        (c.agent(0).http_addr, "shoal_swarm_downloads_completed_total 1"),
        (c.agent(1).http_addr, "shoal_swarm_downloads_completed_total 0"),
        (c.origins[0].handle.http_addr, "shoal_origin_fetches_total{result=\"ok\"} 1"),
        (c.tracker.addr(), "shoal_tracker_announces_total"),
    ];
    for (addr, expect) in nodes {
        let health = http.get(format!("http://{addr}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{addr}");
        let ready = http.get(format!("http://{addr}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 200, "{addr}");
        let metrics = http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains(expect), "{addr} metrics lack {expect:?}:\n{metrics}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_responses_then_stops() {
    use shoal_runtime::Phase;
    let mut c = Cluster::builder().agents(1).start().await.unwrap();
    let data = random_blob(mib(64), 23);
    let d = c.put_backend_blob(&data).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap().len(), data.len());
    let admin = c.agent(0).admin.clone();
    let mut phases = admin.watch_phase();
    // Hold a response open: headers read, body not consumed, so the server cannot finish it.
    let url = format!("http://{}/blobs/{d}", c.agent(0).http_addr);
    let held = reqwest::get(url).await.unwrap();
    assert_eq!(held.status(), 200);
    let node = c.agents[0].take().unwrap();
    node.shutdown.cancel();
    let ten = Duration::from_secs(10);
    tokio::time::timeout(ten, phases.wait_for(|x| *x == Phase::Draining)).await.expect("never drained").unwrap();
    assert!(!node.task.is_finished(), "server stopped with a response in flight");
    // Reading the rest of the body lets the drain finish.
    assert_eq!(held.bytes().await.unwrap().len(), data.len());
    tokio::time::timeout(ten, phases.wait_for(|x| *x == Phase::Stopped)).await.expect("never stopped").unwrap();
    node.task.await.unwrap().unwrap();
    c.shutdown().await;
}

/// A GET of a blob the agent does not hold yet answers while it downloads: the first verified
/// piece reaches the client before the blob is complete, and the body is the exact blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_streams_before_the_download_completes() {
    // 48 pieces in three stripes through a 12 MiB/s origin: about four seconds for the whole
    // blob, and the first stripe, which holds the first piece, is done in a third of that.
    let c = Cluster::builder().agents(1).origin_rate(Some(mib(12))).start().await.unwrap();
    let data = random_blob(mib(48), 31);
    let d = c.put_backend_blob(&data).unwrap();
    let url = format!("http://{}/blobs/{d}", c.agent(0).http_addr);
    let mut resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(mib(48)));
    let first = resp.chunk().await.unwrap().expect("a first chunk");
    let stats = c.agent(0).swarm.stats(&d).expect("the agent downloads the blob");
    assert!(!stats.complete, "the first chunk arrived only after the whole blob was done");
    let mut got = first.to_vec();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert!(got == data, "streamed body differs from the blob");
    wait_committed(&c, 0, &d).await;
    assert!(c.agent(0).swarm.stats(&d).unwrap().complete);
    // Range reads through the registry API stream too, from the stored blob now.
    let range = reqwest::Client::new()
        .get(format!("http://{}/v2/any/name/blobs/{d}", c.agent(0).http_addr))
        .header("range", "bytes=5000000-5000099")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.bytes().await.unwrap(), &data[5_000_000..5_000_100]);
    c.shutdown().await;
}

/// When the download fails part way, the streamed body ends in an error, never in a short
/// success; every byte that did arrive is the blob's own. A download that fails before its
/// first piece is an error status instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_of_a_failing_download_ends_in_an_error() {
    let mut swarm = shoal_loadtest::cluster::test_swarm_config();
    swarm.download_timeout = shoal_runtime::Duration::from_millis(2500);
    // 64 pieces in 4 stripes through a 16 MiB/s origin: the first stripe, which holds the
    // first piece, is in after about a second; the timeout strikes at about 40 MiB.
    let c = Cluster::builder().agents(1).origin_rate(Some(mib(16))).swarm(swarm).start().await.unwrap();
    let data = random_blob(mib(64), 32);
    let d = c.put_backend_blob(&data).unwrap();
    let url = format!("http://{}/v2/x/blobs/{d}", c.agent(0).http_addr);
    let mut resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
    let mut got = Vec::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => panic!("the body ended cleanly after {} of {} bytes", got.len(), data.len()),
            Err(e) => break e,
        }
    };
    assert!(!got.is_empty() && got.len() < data.len(), "{} bytes, then {err}", got.len());
    assert!(got[..] == data[..got.len()], "streamed bytes differ from the blob");
    // A new request after the failure starts the download again; one that cannot get its
    // first piece in time is answered with the download's error.
    let mut swarm = shoal_loadtest::cluster::test_swarm_config();
    swarm.download_timeout = shoal_runtime::Duration::from_millis(300);
    let slow = Cluster::builder().agents(1).origin_rate(Some(mib(1))).swarm(swarm).start().await.unwrap();
    let big = random_blob(mib(64), 33);
    let d = slow.put_backend_blob(&big).unwrap();
    let resp = reqwest::get(format!("http://{}/blobs/{d}", slow.agent(0).http_addr)).await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(resp.text().await.unwrap().contains("timed out"));
    slow.shutdown().await;
    c.shutdown().await;
}

/// With every tracker down, downloads go on: from the blob's owners on the origin ring, which
/// every agent computes itself, and from the peers an agent is already connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_go_on_with_every_tracker_down() {
    use shoal_loadtest::cluster::counter;
    let mut swarm = shoal_loadtest::cluster::test_swarm_config();
    swarm.download_timeout = shoal_runtime::Duration::from_secs(20);
    // A capped origin, as in a fleet: a peer that has the blob is the faster source.
    let mut c = Cluster::builder().agents(2).origin_rate(Some(mib(16))).swarm(swarm).start().await.unwrap();
    // With the tracker up, agent 1 meets agent 0 through a first blob.
    let first = random_blob(mib(4), 41);
    let d = c.put_backend_blob(&first).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), first);
    assert_eq!(c.fetch(1, &d).await.unwrap(), first);
    assert!(c.agent(1).swarm.stats(&d).unwrap().from_peers > 0, "agent 1 is connected to agent 0");

    c.tracker.halt().await.unwrap();
    let data = random_blob(mib(16), 42);
    let d = c.put_backend_blob(&data).unwrap();
    // Agent 0 gets it from the blob's owner, agent 1 from agent 0 above all.
    assert!(c.fetch(0, &d).await.unwrap() == data, "agent 0's copy differs");
    assert!(c.fetch(1, &d).await.unwrap() == data, "agent 1's copy differs");
    let stats = c.agent(1).swarm.stats(&d).unwrap();
    assert!(stats.from_peers > 0, "agent 1 used the peer it knew: {stats:?}");
    for (i, agent) in c.agents.iter().flatten().enumerate() {
        let failures = counter(&agent.registry, "shoal_swarm_announce_failures_total", None);
        assert!(failures > 0, "agent {i} announced to no tracker");
    }
    c.shutdown().await;
}

/// Waits (boundedly) until agent `i` has committed `d`: a response ends with the last piece,
/// and the commit, synced to disk, follows it.
async fn wait_committed(c: &Cluster, i: usize, d: &shoal_core::Digest) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !c.agent(i).swarm.store().contains(d) {
        assert!(tokio::time::Instant::now() < deadline, "{d} not committed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
