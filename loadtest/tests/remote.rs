//! Remote mode against an in-process cluster started here: the harness is given only the
//! agents' and the origin's URLs, uploads a file through the origin's PUT API and has every
//! agent fetch it through the swarm.

use std::time::Duration;

use shoal_loadtest::cluster::{Cluster, random_blob};
use shoal_loadtest::modes::{LocalOptions, Mode};
use shoal_loadtest::remote::RemoteOptions;
use shoal_loadtest::run::run;

#[tokio::test]
async fn remote_agents_pull_an_uploaded_blob() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::builder()
        .agents(3)
        .agent_rate(Some(32 << 20))
        .origin_rate(Some(32 << 20))
        .root(dir.path().join("cluster"))
        .start()
        .await
        .unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, random_blob(3 << 20, 11)).unwrap();
    let agents_at: Vec<String> =
        cluster.agents.iter().flatten().map(|a| format!("http://{}", a.handle.http_addr)).collect();
    let origin = cluster.origin_nodes[0].http.clone();
    let o = LocalOptions {
        mode: Mode::Remote,
        agents: agents_at.len(),
        remote: Some(RemoteOptions {
            agents_at,
            origin: Some(origin.clone()),
            origin_metrics: Some(format!("{origin}/metrics")),
            upload: Some(file),
            ..RemoteOptions::default()
        }),
        agent_rate: Some(32 << 20),
        origin_rate: Some(32 << 20),
        timeout: Duration::from_secs(60),
        verbose: false,
        ..LocalOptions::default()
    };
    let r = run(&o).await.unwrap();
    assert!(r.verified_all, "{}", r.table());
    assert_eq!(r.mode, "remote");
    assert_eq!(r.blob_bytes, 3 << 20);
    assert_eq!(r.agents.len(), 3);
    // Sources come from the agents' own APIs: every agent received the whole blob.
    assert!(r.agents.iter().all(|a| a.from_origin + a.from_peers == 3 << 20), "{}", r.table());
    assert!(r.origin_uploaded > 0, "{}", r.table());

    // A second run names the blob by digest; the size is asked of the first agent.
    let digest: shoal_core::Digest = r.digest.parse().unwrap();
    let mut o2 = o.clone();
    if let Some(rem) = o2.remote.as_mut() {
        rem.upload = None;
        rem.digest = Some(digest);
    }
    let r2 = run(&o2).await.unwrap();
    assert!(r2.verified_all && r2.blob_bytes == 3 << 20, "{}", r2.table());
    cluster.shutdown().await;
}
