//! A peer that serves corrupt pieces is detected, blacklisted, and costs no wrong byte.

use std::time::Duration;

use shoal_core::MetaInfo;
use shoal_loadtest::cluster::{Cluster, counter, host_ip, mib, random_blob};
use shoal_loadtest::pull::pull_all;

use crate::evil_peer::EvilPeer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_peer_is_blacklisted_and_everyone_still_gets_exact_bytes() {
    let c = Cluster::builder().agents(4).start().await.unwrap();
    let data = random_blob(mib(16), 3);
    let meta = MetaInfo::build(&data);
    let d = c.put_backend_blob(&data).unwrap();
    let evil = EvilPeer::start(host_ip(500), meta, c.tracker.url()).await.unwrap();
    // Let the tracker learn of the evil seeder before anyone asks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pulls = pull_all(&c, d, Duration::from_secs(120)).await.unwrap();
    for p in &pulls {
        assert!(p.verified, "agent {} served bytes that do not match", p.agent);
        assert_eq!(p.bytes, data.len() as u64);
    }
    assert!(evil.served() > 0, "the evil peer was never asked, so the test proves nothing");
    let corrupt: u64 =
        c.agents.iter().flatten().map(|a| counter(&a.registry, "shoal_swarm_pieces_corrupt_total", None)).sum();
    assert!(corrupt > 0, "no agent counted a corrupt piece");
    // Each agent drops the evil peer after its first bad piece (pipelined requests may
    // already be in flight), so it can serve only a few pieces per agent.
    assert!(evil.served() <= 4 * 8, "evil peer served {} pieces: not blacklisted", evil.served());
    c.shutdown().await;
}
