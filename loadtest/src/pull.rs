//! One workload: every agent of a cluster fetches the same blob at once, hashing what it
//! receives; the result says how long each took and where its bytes came from.
//!
//! [`pull_all_with`] also samples the bytes the agents have received so far (for the
//! delivered-bytes-over-time plot) and can print a line as each agent completes. The sampling
//! loop and the wait are both bounded by the timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use shoal_core::{Digest, DigestHasher};
use tokio::time::Instant;

use crate::baseline::TokenBucket;
use crate::cluster::Cluster;

/// One agent's pull.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentPull {
    pub agent: usize,
    pub secs: f64,
    pub bytes: u64,
    /// What the agent's API returned hashed to what its [`Target`] says.
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
            let (bytes, verified) = fetch_and_check(&http, &url, &Target::digest_only(digest), &[])
                .await
                .with_context(|| format!("agent {i}"))?;
            let secs = start.elapsed().as_secs_f64();
            if progress {
                let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                eprintln!("[{k:>4}/{n_running}] agent {i} done in {secs:.3}s");
            }
            Ok::<_, anyhow::Error>((i, secs, bytes, verified))
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

/// A blob a run pulls, and how the harness checks each copy of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub digest: Digest,
    pub check: Check,
}

/// What a copy must hash to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The BLAKE3 hash of the bytes the harness generated. A copy that hashes to it is the
    /// source, whose sha256 is the digest; BLAKE3 costs a fraction of sha256's CPU, and on
    /// one machine the checking clients share the cores with the agents they measure (which
    /// check sha256 themselves before committing a blob).
    Source(blake3::Hash),
    /// The sha256 digest itself, for blobs the harness did not generate (remote mode).
    Digest,
}

impl Target {
    /// A blob the harness generated as `data`.
    pub fn generated(data: &[u8]) -> Target {
        Target { digest: Digest::of(data), check: Check::Source(blake3::hash(data)) }
    }

    /// A blob known only by its digest.
    pub fn digest_only(digest: Digest) -> Target {
        Target { digest, check: Check::Digest }
    }

    /// The digests of `targets`, in order.
    pub fn digests(targets: &[Target]) -> Vec<Digest> {
        targets.iter().map(|t| t.digest).collect()
    }
}

/// A copy's running hash and what it must come to.
pub(crate) enum CopyHasher {
    Blake3(Box<blake3::Hasher>, blake3::Hash),
    Sha256(DigestHasher, Digest),
}

impl CopyHasher {
    pub(crate) fn new(target: &Target) -> CopyHasher {
        match target.check {
            Check::Source(want) => CopyHasher::Blake3(Box::default(), want),
            Check::Digest => CopyHasher::Sha256(DigestHasher::new(), target.digest),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            CopyHasher::Blake3(h, _) => {
                h.update(data);
            }
            CopyHasher::Sha256(h, _) => h.update(data),
        }
    }

    pub(crate) fn matches(self) -> bool {
        match self {
            CopyHasher::Blake3(h, want) => h.finalize() == want,
            CopyHasher::Sha256(h, want) => h.finish() == want,
        }
    }
}

/// GETs `url` and returns how many bytes its body had and whether they hash to what `target`
/// says, without keeping the body. Each chunk then waits until every bucket in `pace` allows
/// it (the serial baseline's emulated caps; empty for a swarm pull), so TCP flow control
/// slows the sender to their rate.
pub async fn fetch_and_check(
    http: &reqwest::Client,
    url: &str,
    target: &Target,
    pace: &[&TokenBucket],
) -> anyhow::Result<(u64, bool)> {
    let resp = http.get(url).send().await?;
    anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let mut hasher = CopyHasher::new(target);
    let mut bytes = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let n = chunk.len() as u64;
        bytes += n;
        hasher.update(&chunk);
        let now = Instant::now();
        let wait = pace.iter().map(|b| b.reserve(n, now)).max().unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    Ok((bytes, hasher.matches()))
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

#[cfg(test)]
mod tests {
    use shoal_core::Digest;

    use super::{CopyHasher, Target};

    fn check(target: &Target, chunks: &[&[u8]]) -> bool {
        let mut h = CopyHasher::new(target);
        for c in chunks {
            h.update(c);
        }
        h.matches()
    }

    #[test]
    fn a_copy_matches_only_its_source() {
        let data = b"the source bytes of a blob".as_slice();
        for target in [Target::generated(data), Target::digest_only(Digest::of(data))] {
            assert!(check(&target, &[data]), "{target:?}");
            assert!(check(&target, &[&data[..5], &data[5..]]), "{target:?}: split into chunks");
            assert!(!check(&target, &[&data[..data.len() - 1]]), "{target:?}: truncated");
            assert!(!check(&target, &[data, b"x"]), "{target:?}: extra byte");
            let mut flipped = data.to_vec();
            flipped[3] ^= 1;
            assert!(!check(&target, &[&flipped]), "{target:?}: one bit flipped");
        }
    }
}
