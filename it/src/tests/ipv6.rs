//! IPv6: a tracker, an origin and three agents all on `[::1]` listen, announce and dial over
//! IPv6, and every copy of a blob pulled through them is whole.

use std::net::{IpAddr, Ipv6Addr};

use shoal_loadtest::cluster::{Cluster, counter, random_blob};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_works_on_ipv6_loopback() {
    let c = Cluster::builder().ip(IpAddr::V6(Ipv6Addr::LOCALHOST)).agents(3).origins(1).start().await.unwrap();
    assert!(c.tracker.url().starts_with("http://[::1]:"), "{}", c.tracker.url());
    assert!(c.origins[0].handle.http_addr.is_ipv6());
    let data = random_blob(8 << 20, 9);
    let d = c.put_backend_blob(&data).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    // The other two find agent 0 (and each other) through the tracker, over IPv6.
    let (one, two) = tokio::join!(c.fetch(1, &d), c.fetch(2, &d));
    assert_eq!(one.unwrap(), data);
    assert_eq!(two.unwrap(), data);
    let from_peers: u64 = c
        .agents
        .iter()
        .flatten()
        .map(|a| counter(&a.registry, "shoal_swarm_piece_bytes_received_total", Some(("source", "peer"))))
        .sum();
    assert!(from_peers > 0, "no agent received a piece from another agent");
    for a in c.agents.iter().flatten() {
        assert!(a.handle.http_addr.is_ipv6());
        assert!(a.handle.swarm.connections() > 0);
    }
    c.shutdown().await;
}
