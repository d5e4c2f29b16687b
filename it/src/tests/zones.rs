//! Zone-aware peer choice in a real cluster: with `swarm.zone` set, a download asks peers of
//! other zones only for pieces no peer of its own zone has, so a blob crosses into a zone
//! about once rather than once per agent. Measured with the agents' own
//! `shoal_swarm_cross_zone_bytes_total`. Byte counts only, no timings.

use shoal_loadtest::cluster::{Cluster, counter, mib, random_blob};

const CROSS: &str = "shoal_swarm_cross_zone_bytes_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_crosses_into_a_zone_about_once() {
    // Agents 0, 2, 4 in zone-0 and 1, 3, 5 in zone-1; the origin in none. Capped links, so
    // that connections are set up long before a request window's worth of pieces arrives.
    let c = Cluster::builder().agents(6).zones(2).agent_rate(Some(mib(16))).start().await.unwrap();
    let size = mib(8);
    let data = random_blob(size, 11);
    let d = c.put_backend_blob(&data).unwrap();
    let cross = |i: usize| counter(&c.agents[i].as_ref().unwrap().registry, CROSS, None);

    // Zone 0 pulls first, all at once: nobody in zone 1 has anything to give.
    let (a, b, e) = tokio::join!(c.fetch(0, &d), c.fetch(2, &d), c.fetch(4, &d));
    for got in [a, b, e] {
        assert_eq!(got.unwrap(), data);
    }
    // Then zone 1, one agent after the other: the first gets the blob from zone 0 (one copy
    // crosses), the others from it.
    for i in [1, 3, 5] {
        assert_eq!(c.fetch(i, &d).await.unwrap(), data);
    }
    let into_zone0: u64 = [0, 2, 4].iter().map(|&i| cross(i)).sum();
    let later: u64 = cross(3) + cross(5);
    let into_zone1 = cross(1) + later;
    assert_eq!(into_zone0, 0, "zone 0 had no other zone to take from");
    assert!(cross(1) <= size, "the first of its zone takes at most one copy: {}", cross(1));
    // Without zones the second and third would take most of their copies from zone 0's three
    // agents (about 1.35 copies together); here at most what they asked before agent 1's
    // bitfield arrived, within one request window.
    assert!(later < size, "agents 3 and 5 took {later} bytes from zone 0 (blob {size})");
    assert!(into_zone1 < 2 * size, "{into_zone1} bytes crossed into zone 1 (blob {size}), fewer than its 3 agents");
    // Every agent's received bytes count the same way with or without zones.
    let received: u64 = (0..6)
        .map(|i| counter(&c.agents[i].as_ref().unwrap().registry, "shoal_swarm_piece_bytes_received_total", None))
        .sum();
    assert!(received >= 6 * size, "{received}");
    c.shutdown().await;
}
