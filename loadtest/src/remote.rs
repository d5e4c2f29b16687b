//! Remote mode: drives agents already running elsewhere (e.g. a Kubernetes DaemonSet) through
//! their HTTP APIs, the same way the local modes drive theirs.
//!
//! The blob must be in the origins' backend already: either named (`--digest`, with `--size`
//! or else the size a `HEAD /blobs/<digest>` on the first agent answers), or uploaded first
//! (`--upload FILE`) with `PUT /blobs/<digest>` to the origin given by `--origin`. Every agent
//! is then asked for it with `GET /blobs/<digest>`, which downloads it through the swarm; the
//! harness times each and checks the sha256 of what comes back (it did not generate the blob).
//!
//! Where each agent's bytes came from is read from its `GET /debug/blobs/<digest>` (exact, per
//! blob) or, if that does not answer, from the growth of the `source`-labelled
//! `shoal_swarm_piece_bytes_received_total` counter in its `/metrics` during the run. The
//! origin's uploaded bytes come from `--origin-metrics` (a `/metrics` URL) when given. The caps
//! are whatever the operator declares with `--agent-rate`/`--origin-rate` (used for T* only);
//! the harness cannot see the real links. Remote agents cannot be killed or restarted, so
//! churn is refused; late joining works.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use shoal_core::{Digest, DigestHasher};

use crate::baseline::{self, BaselineOptions};
use crate::modes::LocalOptions;
use crate::pull::Target;
use crate::report::{Caps, Resources, RunReport, RunSpec, Store};
use crate::scenario::{BlobSet, Nodes, Scenario, Stats, drive};

/// Where the remote agents and the blob are.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// Each agent's HTTP API base URL, e.g. `http://10.0.0.5:7700`.
    pub agents_at: Vec<String>,
    /// An origin's HTTP API base URL, for `--upload` and the baseline.
    pub origin: Option<String>,
    /// An origin's `/metrics` URL.
    pub origin_metrics: Option<String>,
    /// The blob to pull, already in the backend.
    pub digest: Option<Digest>,
    /// Its size; asked of the first agent if `None`.
    pub size: Option<u64>,
    /// A file to upload to `origin` first; its digest and size are then the blob's.
    pub upload: Option<PathBuf>,
}

/// The metric a node counts received piece bytes in, by `source` ("origin" or "peer").
const RECEIVED: &str = "shoal_swarm_piece_bytes_received_total";
const SENT: &str = "shoal_swarm_piece_bytes_sent_total";

struct RemoteAgents {
    urls: Vec<String>,
    http: reqwest::Client,
    /// Each agent's `/metrics` counters when the run began, if they answered.
    before: Vec<Option<Stats>>,
}

impl RemoteAgents {
    async fn metrics(&self, i: usize) -> Option<Stats> {
        let text = self.get_text(&format!("{}/metrics", self.urls[i])).await?;
        Some(Stats {
            from_origin: crate::processes::labelled_metric(&text, RECEIVED, "source", "origin"),
            from_peers: crate::processes::labelled_metric(&text, RECEIVED, "source", "peer"),
            uploaded: crate::processes::sum_metric(&text, SENT),
        })
    }

    async fn get_text(&self, url: &str) -> Option<String> {
        let r = self.http.get(url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.text().await.ok()
    }
}

impl Nodes for RemoteAgents {
    fn agent_url(&self, i: usize) -> Option<String> {
        self.urls.get(i).cloned()
    }

    async fn stats(&self, i: usize, digests: &[Digest]) -> Stats {
        let mut s = Stats::default();
        let mut all = true;
        for d in digests {
            let url = format!("{}/debug/blobs/{d}", self.urls[i]);
            match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => match r.json::<Stats>().await {
                    Ok(b) => s += b,
                    Err(_) => all = false,
                },
                // Not seen yet: nothing received.
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {}
                _ => all = false,
            }
        }
        if all {
            return s;
        }
        match (self.before[i], self.metrics(i).await) {
            (Some(b), Some(now)) => Stats {
                from_origin: now.from_origin.saturating_sub(b.from_origin),
                from_peers: now.from_peers.saturating_sub(b.from_peers),
                uploaded: now.uploaded.saturating_sub(b.uploaded),
            },
            _ => s,
        }
    }

    async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::bail!("remote agent {i} cannot be killed by the harness")
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::bail!("remote agent {i} cannot be restarted by the harness")
    }
}

/// Uploads `path` to `origin` with `PUT /blobs/<digest>`; returns its digest and size.
pub async fn upload(http: &reqwest::Client, origin: &str, path: &std::path::Path) -> anyhow::Result<(Digest, u64)> {
    // Hashed in a first pass, streamed in a second, so no file is held in memory.
    let mut hasher = DigestHasher::new();
    let mut f = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let size = f.metadata().await?.len();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finish();
    let file = tokio::fs::File::open(path).await?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let url = format!("{}/blobs/{digest}", origin.trim_end_matches('/'));
    let resp = http
        .put(&url)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "PUT {url}: {}: {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    Ok((digest, size))
}

/// The blob's size from `HEAD <agent>/blobs/<digest>`.
async fn head_size(http: &reqwest::Client, agent: &str, digest: Digest) -> anyhow::Result<u64> {
    let url = format!("{agent}/blobs/{digest}");
    let resp = http.head(&url).send().await.with_context(|| format!("HEAD {url}"))?;
    anyhow::ensure!(resp.status().is_success(), "HEAD {url}: {}", resp.status());
    resp.headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("HEAD {url}: no Content-Length"))
}

/// Runs the pull on the remote agents and reports it.
pub async fn run_remote(o: &LocalOptions) -> anyhow::Result<RunReport> {
    let r = o.remote.clone().ok_or_else(|| anyhow::anyhow!("--mode remote needs --agents-at"))?;
    anyhow::ensure!(!r.agents_at.is_empty(), "--mode remote needs --agents-at URL,URL,...");
    let urls: Vec<String> = r.agents_at.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
    for u in &urls {
        anyhow::ensure!(u.starts_with("http://") || u.starts_with("https://"), "{u:?} is not an http(s) URL");
    }
    let requested = o.scenario();
    anyhow::ensure!(requested.churn.is_none(), "--churn needs agents the harness runs; remote agents cannot be killed");
    anyhow::ensure!(
        requested.set == BlobSet::Single,
        "--mode remote pulls the one blob named by --digest or --upload, not --layers or --blobs"
    );
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
    let (digest, size) = match (&r.upload, r.digest) {
        (Some(path), None) => {
            let origin = r.origin.as_deref().ok_or_else(|| anyhow::anyhow!("--upload needs --origin URL"))?;
            let (d, s) = upload(&http, origin, path).await?;
            if o.verbose {
                println!("uploaded {} to {origin} as {d} ({s} bytes)", path.display());
            }
            (d, s)
        }
        (None, Some(d)) => match r.size {
            Some(s) => (d, s),
            None => (d, head_size(&http, &urls[0], d).await?),
        },
        (Some(_), Some(_)) => anyhow::bail!("give --digest or --upload, not both"),
        (None, None) => anyhow::bail!("--mode remote needs --digest sha256:... (with --size) or --upload FILE"),
    };
    let sc = Scenario { set: BlobSet::Single, blobs: vec![size], late: requested.late, churn: None };
    sc.validate(urls.len())?;
    let n = urls.len();
    let mut nodes = RemoteAgents { urls, http: http.clone(), before: Vec::new() };
    for i in 0..n {
        let m = nodes.metrics(i).await;
        nodes.before.push(m);
    }
    let origin_sent = |text: Option<String>| text.map(|t| crate::processes::sum_metric(&t, SENT));
    let origin_before = match &r.origin_metrics {
        Some(u) => origin_sent(nodes.get_text(u).await),
        None => None,
    };
    if o.verbose {
        println!("{} remote agents pull {digest} ({size} bytes) now\n", n);
    }
    let (agents, timeline) =
        drive(&mut nodes, n, &[Target::digest_only(digest)], &sc, &o.drive_options(Duration::from_millis(250))).await?;
    let origin_after = match &r.origin_metrics {
        Some(u) => origin_sent(nodes.get_text(u).await),
        None => None,
    };
    let origin_uploaded = origin_before.zip(origin_after).map_or(0, |(b, a)| a.saturating_sub(b));
    let baseline = match (o.baseline, &r.origin) {
        (Some(mode), Some(origin)) => {
            let bopts = BaselineOptions {
                mode,
                n,
                origin_rate: o.origin_rate,
                agent_rate: o.agent_rate,
                timeout: o.timeout,
                progress: o.progress,
            };
            Some(baseline::measure(origin, Target::digest_only(digest), &bopts).await?)
        }
        (Some(_), None) => anyhow::bail!("--baseline in remote mode needs --origin URL"),
        (None, _) => None,
    };
    let spec = RunSpec {
        scenario: sc.describe(n),
        mode: "remote".into(),
        n_origins: 1,
        blob_bytes: size,
        digest: digest.to_string(),
        caps: Caps { agent_rate: o.agent_rate, origin_rate: o.origin_rate, seeding_origins: 1 },
        store: Store { path: "remote agents".into(), fs_type: None, kind: "remote".into() },
        scenario_info: Some(sc.info()),
        link_emulation: "remote (real links; caps as declared)".into(),
    };
    let resources = Resources {
        note: format!(
            "remote agents: not measured by the harness; origin uploaded bytes {}",
            if r.origin_metrics.is_some() { "from --origin-metrics" } else { "unknown (no --origin-metrics)" }
        ),
        ..Resources::default()
    };
    Ok(RunReport::new(spec, agents, origin_uploaded, timeline, resources, baseline))
}
