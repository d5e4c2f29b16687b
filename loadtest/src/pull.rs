//! One workload: every agent of a cluster fetches the same blob at once, hashing what it
//! receives; the result says how long each took and where its bytes came from.
//!
//! [`pull_all_with`] also samples the bytes the agents have received so far (for the
//! delivered-bytes-over-time plot) and can print a line as each agent completes. The sampling
//! loop and the wait are both bounded by the timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use shoal_core::{Digest, DigestHasher};
use tokio::time::Instant;

use crate::cluster::Cluster;

/// One agent's pull.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentPull {
    pub agent: usize,
    pub secs: f64,
    pub bytes: u64,
    /// The sha256 of what the agent's API returned matched the digest.
    pub verified: bool,
    pub from_origin: u64,
    pub from_peers: u64,
    pub uploaded: u64,
    /// When this agent started pulling, seconds after the run began (late joiners start later);
    /// `secs` counts from here.
    #[serde(default)]
    pub started_secs: f64,
    /// It joined late (`--late-join`).
    #[serde(default)]
    pub late: bool,
    /// When it was killed (`--churn`), seconds after the run began.
    #[serde(default)]
    pub killed_secs: Option<f64>,
    /// When it was restarted on its store, seconds after the run began.
    #[serde(default)]
    pub restarted_secs: Option<f64>,
    /// It got every blob (false only for an agent killed and not restarted before it finished).
    #[serde(default = "yes")]
    pub finished: bool,
}

fn yes() -> bool {
    true
}

impl AgentPull {
    /// A pull with no scenario events: started at once, finished.
    pub fn plain(agent: usize, secs: f64, bytes: u64, verified: bool) -> AgentPull {
        AgentPull {
            agent,
            secs,
            bytes,
            verified,
            from_origin: 0,
            from_peers: 0,
            uploaded: 0,
            started_secs: 0.0,
            late: false,
            killed_secs: None,
            restarted_secs: None,
            finished: true,
        }
    }
}

/// How [`pull_all_with`] observes a pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Sample the agents' received bytes this often; no timeline if `None`.
    pub sample_every: Option<Duration>,
    /// Print a line to stderr as each agent completes.
    pub progress: bool,
}

/// Bytes all agents had received (from origins and peers) `secs` after the pull began.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub secs: f64,
    pub delivered: u64,
}

/// A pull's per-agent results and, if asked for, its timeline.
#[derive(Clone, Debug, Default)]
pub struct PullRun {
    pub agents: Vec<AgentPull>,
    pub timeline: Vec<Sample>,
}

/// Every agent of `cluster` pulls `digest` concurrently through its HTTP API.
pub async fn pull_all(cluster: &Cluster, digest: Digest, timeout: Duration) -> anyhow::Result<Vec<AgentPull>> {
    Ok(pull_all_with(cluster, digest, timeout, &PullOptions::default()).await?.agents)
}

/// [`pull_all`] with a timeline and progress lines, as `opts` asks.
pub async fn pull_all_with(
    cluster: &Cluster,
    digest: Digest,
    timeout: Duration,
    opts: &PullOptions,
) -> anyhow::Result<PullRun> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let n_running = cluster.agents.iter().flatten().count();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, a) in cluster.agents.iter().enumerate() {
        let Some(a) = a else { continue };
        let url = format!("http://{}/blobs/{digest}", a.handle.http_addr);
        let http = http.clone();
        let done = done.clone();
        let progress = opts.progress;
        tasks.push(async move {
            let (bytes, got) = fetch_and_hash(&http, &url, i).await?;
            let secs = start.elapsed().as_secs_f64();
            if progress {
                let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                eprintln!("[{k:>4}/{n_running}] agent {i} done in {secs:.3}s");
            }
            Ok::<_, anyhow::Error>((i, secs, bytes, got == digest))
        });
    }
    let mut timeline = Vec::new();
    let all = futures::future::join_all(tasks);
    let results = match opts.sample_every {
        None => tokio::time::timeout(timeout, all).await.ok(),
        Some(every) => {
            let every = every.max(Duration::from_millis(1));
            let mut all = std::pin::pin!(all);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            // Bounded: the deadline ends the loop at the latest.
            loop {
                tokio::select! {
                    r = &mut all => break Some(r),
                    () = &mut deadline => break None,
                    _ = tick.tick() => timeline.push(Sample {
                        secs: start.elapsed().as_secs_f64(),
                        delivered: delivered(cluster, &digest),
                    }),
                }
            }
        }
    };
    let results = results.ok_or_else(|| anyhow::anyhow!("pull did not finish within {timeout:?}"))?;
    let mut out = Vec::new();
    for r in results {
        let (i, secs, bytes, verified) = r?;
        let s = cluster.agent(i).swarm.stats(&digest).unwrap_or_default();
        out.push(AgentPull {
            from_origin: s.from_origin,
            from_peers: s.from_peers,
            uploaded: s.uploaded,
            ..AgentPull::plain(i, secs, bytes, verified)
        });
    }
    if opts.sample_every.is_some() {
        let secs = out.iter().map(|p| p.secs).fold(0.0, f64::max);
        timeline.push(Sample { secs, delivered: out.iter().map(|p| p.from_origin + p.from_peers).sum() });
    }
    Ok(PullRun { agents: out, timeline })
}

/// Bytes the running agents of `cluster` have received for `digest` so far.
fn delivered(cluster: &Cluster, digest: &Digest) -> u64 {
    cluster
        .agents
        .iter()
        .flatten()
        .filter_map(|a| a.handle.swarm.stats(digest))
        .map(|s| s.from_origin + s.from_peers)
        .sum()
}

/// GETs `url` from agent `i` and returns how many bytes its body had and their sha256,
/// without keeping the body.
pub async fn fetch_and_hash(http: &reqwest::Client, url: &str, i: usize) -> anyhow::Result<(u64, Digest)> {
    let resp = http.get(url).send().await?;
    anyhow::ensure!(resp.status().is_success(), "agent {i}: GET {url}: {}", resp.status());
    let mut hasher = DigestHasher::new();
    let mut bytes = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((bytes, hasher.finish()))
}

/// Has the origins fetch `digests` from their backend before the clock starts, so a run
/// measures the swarm from seeds that hold the blob (what T* assumes): a `HEAD` of each blob
/// on an agent, which waits for the owning origin's metainfo without downloading anything.
pub async fn warm_origins(http: &reqwest::Client, agent_url: &str, digests: &[Digest]) -> anyhow::Result<()> {
    for d in digests {
        let url = format!("{agent_url}/blobs/{d}");
        let resp = http.head(&url).send().await?;
        anyhow::ensure!(resp.status().is_success(), "warming the origin: HEAD {url}: {}", resp.status());
    }
    Ok(())
}
