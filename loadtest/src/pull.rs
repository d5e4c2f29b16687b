//! One workload: every agent of a cluster fetches the same blob at once, hashing what it
//! receives; the result says how long each took and where its bytes came from.

use std::time::Duration;

use futures::StreamExt;
use shoal_core::{Digest, DigestHasher};
use tokio::time::Instant;

use crate::cluster::Cluster;

/// One agent's pull.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AgentPull {
    pub agent: usize,
    pub secs: f64,
    pub bytes: u64,
    /// The sha256 of what the agent's API returned matched the digest.
    pub verified: bool,
    pub from_origin: u64,
    pub from_peers: u64,
    pub uploaded: u64,
}

/// Every agent of `cluster` pulls `digest` concurrently through its HTTP API.
pub async fn pull_all(cluster: &Cluster, digest: Digest, timeout: Duration) -> anyhow::Result<Vec<AgentPull>> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, a) in cluster.agents.iter().enumerate() {
        let Some(a) = a else { continue };
        let url = format!("http://{}/blobs/{digest}", a.handle.http_addr);
        let http = http.clone();
        tasks.push(async move {
            let resp = http.get(&url).send().await?;
            anyhow::ensure!(resp.status().is_success(), "agent {i}: GET {url}: {}", resp.status());
            let mut hasher = DigestHasher::new();
            let mut bytes = 0u64;
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                bytes += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Ok::<_, anyhow::Error>((i, start.elapsed().as_secs_f64(), bytes, hasher.finish() == digest))
        });
    }
    let results = tokio::time::timeout(timeout, futures::future::join_all(tasks))
        .await
        .map_err(|_| anyhow::anyhow!("pull did not finish within {timeout:?}"))?;
    let mut out = Vec::new();
    for r in results {
        let (i, secs, bytes, verified) = r?;
        let s = cluster.agent(i).swarm.stats(&digest).unwrap_or_default();
        out.push(AgentPull {
            agent: i,
            secs,
            bytes,
            verified,
            from_origin: s.from_origin,
            from_peers: s.from_peers,
            uploaded: s.uploaded,
        });
    }
    Ok(out)
}
