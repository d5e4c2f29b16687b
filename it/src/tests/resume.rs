//! An agent stopped mid-download resumes and fetches only the pieces it lacked.

use std::time::Duration;

use shoal_loadtest::cluster::{Cluster, mib, random_blob};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_downloads_only_missing_pieces() {
    // A slow origin so the download is caught in the middle.
    let mut c = Cluster::builder().agents(1).origin_rate(Some(mib(16))).start().await.unwrap();
    let size = mib(32);
    let data = random_blob(size, 9);
    let d = c.put_backend_blob(&data).unwrap();
    let url = format!("http://{}/blobs/{d}", c.agent(0).http_addr);
    let first = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let got = c.agent(0).swarm.stats(&d).map(|s| s.from_origin + s.from_peers).unwrap_or(0);
        if got >= mib(8) {
            break got;
        }
        assert!(tokio::time::Instant::now() < deadline, "download made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(before < size, "download finished before it could be interrupted");
    c.stop_agent(0).await;
    let _ = first.await;
    c.start_agent(0, None).await.unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    let after = c.agent(0).swarm.stats(&d).unwrap();
    let second = after.from_origin + after.from_peers;
    assert!(second > 0, "nothing was downloaded after the restart");
    assert!(second + before <= size, "restart fetched {second} bytes after {before} were stored: pieces fetched twice");
    c.shutdown().await;
}
