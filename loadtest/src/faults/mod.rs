//! The fault matrix (`shoal-loadtest faults`): one row per fault, each a fresh cluster of the
//! real binaries ([`cluster::FaultCluster`]) pulling one random blob through every agent while
//! the fault strikes. Every row checks that
//!
//! - every surviving agent ends with the exact blob ([`pull::pull_exact`] asks again after an
//!   error, as a container runtime would);
//! - no response ever carries an unverified byte: every byte of every answer, failed ones
//!   included, is compared with the source at its offset;
//! - no process panics (no node log has "panicked");
//!
//! plus what the fault itself promises (see each [`Fault`]). It reports the agents, how many
//! completed, the bytes downloaded again (beyond what each agent lacked), and its time against
//! the fault-free row. "Mid-swarm" is when the agents together hold [`MID_SWARM`] of their
//! bytes.
//!
//! [`proxy`] is the fault-injecting HTTP proxy in front of the real S3 server (s3s-fs), and
//! [`liar`] the adversarial peers. The disk-full row mounts a small tmpfs and the partition
//! row makes network namespaces: both need root and are reported as skipped without it.

pub mod cli;
pub mod cluster;
pub mod liar;
pub mod proxy;
pub mod pull;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use shoal_core::{Digest, MetaInfo};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::random_blob;
use crate::report::human_bytes;
use cluster::{BackendSpec, ClusterSpec, FaultCluster};
use pull::{PullLog, pull_exact};

/// The share of all agents' bytes delivered when a mid-swarm fault strikes.
pub const MID_SWARM: f64 = 0.3;
/// How long a pulling client waits before asking again after an error.
const RETRY: Duration = Duration::from_millis(500);
/// Blobs of 1 MiB pulled besides the row's blob in the S3 rows.
const EXTRA_S3_BLOBS: u64 = 16;

/// One row of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// No fault: the time every other row is compared with.
    None,
    /// 20% of the agents SIGKILLed mid-swarm; half of them restarted on their stores 1 s
    /// later, which resume (re-downloading under one piece each on average).
    KillAgents,
    /// Three origins, two owners per blob: the blob's first owner SIGKILLed mid-pull and its
    /// store wiped; its replica serves.
    OriginLost,
    /// The tracker SIGKILLed mid-swarm and restarted 1 s later; swarms rebuild from announces.
    TrackerRestart,
    /// Both trackers SIGKILLed mid-swarm for good; agents finish from the origins and the
    /// peers they already know.
    TrackersDown,
    /// Both trackers SIGKILLed before any pull (the origin warm): agents finish from the
    /// blob's ring owners, which every node computes without a tracker.
    NoTrackers,
    /// The origins' S3 backend (s3s-fs behind the fault proxy) answering 503 to 5% of requests
    /// and never answering 5%; a blob whose every request fails is a 5xx at the agent, and a
    /// blob whose bytes arrive corrupt is never committed or served.
    S3Errors,
    /// Every S3 read trickled at a quarter of the blob per second.
    S3Slow,
    /// Three liars announced as seeders: one serving corrupt pieces, one stalling mid-piece,
    /// one sending garbage frames; each is dropped by every agent that met it and not redialed.
    Liars,
    /// Agent 0's store on a tmpfs too small for the blob (it holds a smaller, pinned blob first): its
    /// pull fails (507, or a response cut short once it streams) and its log says why, it still
    /// serves the smaller blob, and when the tmpfs grows it finishes. Needs root.
    DiskFull,
    /// Every node in its own network namespace; agent 0's link down mid-pull for 3 s, then up.
    /// Needs root.
    Partition,
}

impl Fault {
    pub const ALL: [Fault; 11] = [
        Fault::None,
        Fault::KillAgents,
        Fault::OriginLost,
        Fault::TrackerRestart,
        Fault::TrackersDown,
        Fault::NoTrackers,
        Fault::S3Errors,
        Fault::S3Slow,
        Fault::Liars,
        Fault::DiskFull,
        Fault::Partition,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::KillAgents => "kill-agents",
            Fault::OriginLost => "origin-lost",
            Fault::TrackerRestart => "tracker-restart",
            Fault::TrackersDown => "trackers-down",
            Fault::NoTrackers => "no-trackers",
            Fault::S3Errors => "s3-errors",
            Fault::S3Slow => "s3-slow",
            Fault::Liars => "liars",
            Fault::DiskFull => "disk-full",
            Fault::Partition => "partition",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct MatrixOptions {
    pub faults: Vec<Fault>,
    pub agents: usize,
    pub size: u64,
    /// Per-agent link cap, bytes/s; slows the pull so a fault lands mid-swarm.
    pub agent_rate: Option<u64>,
    pub origin_rate: Option<u64>,
    /// Stores and logs go in a fresh directory under this one (default /dev/shm).
    pub dir: Option<PathBuf>,
    /// Per row.
    pub timeout: Duration,
    pub seed: u64,
    pub progress: bool,
}

/// One row's outcome.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    pub fault: String,
    pub agents: usize,
    /// Agents expected to end with the blob (not killed for good).
    pub surviving: usize,
    pub completed: usize,
    /// Bytes received beyond what each agent lacked (a restarted agent's from what its store
    /// held at the kill).
    pub redownloaded: u64,
    /// From the first pull to the last surviving agent's exact copy.
    pub secs: f64,
    pub wrong_bytes: u64,
    /// Checks that failed.
    pub problems: Vec<String>,
    /// What the row observed, for the reader.
    pub notes: Vec<String>,
    /// Why the row did not run.
    pub skipped: Option<String>,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.skipped.is_none() && self.problems.is_empty()
    }
}

/// Runs every row of `o.faults` in turn (the fault-free row first, for the time ratio).
pub async fn run_matrix(o: &MatrixOptions) -> anyhow::Result<Vec<Row>> {
    let mut faults = o.faults.clone();
    if !faults.contains(&Fault::None) {
        faults.insert(0, Fault::None);
    }
    faults.sort_by_key(|f| Fault::ALL.iter().position(|a| a == f));
    faults.dedup();
    let mut rows = Vec::new();
    for (k, &f) in faults.iter().enumerate() {
        if o.progress {
            eprintln!("== [{}/{}] fault {}", k + 1, faults.len(), f.name());
        }
        let row = match run_row(f, o).await {
            Ok(r) => r,
            Err(e) => Row {
                fault: f.name().into(),
                agents: o.agents,
                problems: vec![format!("the row did not run to its end: {e:#}")],
                ..Row::default()
            },
        };
        if o.progress {
            eprintln!("{}", row_line(&row, None));
            for p in &row.problems {
                eprintln!("   FAIL: {p}");
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The matrix as a table: fault, agents, completed, bytes re-downloaded, time and its ratio to
/// the fault-free row, result; then each row's failed checks and notes.
pub fn table(rows: &[Row]) -> String {
    let base = rows.iter().find(|r| r.fault == "none" && r.passed()).map(|r| r.secs);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:>6} {:>9} {:>14} {:>8} {:>8}  result",
        "fault", "agents", "completed", "re-downloaded", "time s", "vs none"
    );
    for r in rows {
        let _ = writeln!(s, "{}", row_line(r, base));
    }
    for r in rows {
        for p in &r.problems {
            let _ = writeln!(s, "{}: FAIL: {p}", r.fault);
        }
        for n in &r.notes {
            let _ = writeln!(s, "{}: {n}", r.fault);
        }
    }
    s
}

fn row_line(r: &Row, base: Option<f64>) -> String {
    if let Some(why) = &r.skipped {
        return format!("{:<16} {:>6} {:>9} {:>14} {:>8} {:>8}  skipped: {why}", r.fault, r.agents, "-", "-", "-", "-");
    }
    let ratio = base.filter(|b| *b > 0.0 && r.secs > 0.0).map_or("-".into(), |b| format!("{:.2}×", r.secs / b));
    format!(
        "{:<16} {:>6} {:>9} {:>14} {:>8.2} {:>8}  {}",
        r.fault,
        r.agents,
        format!("{}/{}", r.completed, r.surviving),
        human_bytes(r.redownloaded),
        r.secs,
        ratio,
        if r.passed() { "ok" } else { "FAIL" }
    )
}

/// A row in progress: the cluster, the blob and every agent's pull.
struct Run {
    c: FaultCluster,
    data: Arc<Vec<u8>>,
    meta: MetaInfo,
    digest: Digest,
    http: reqwest::Client,
    deadline: Instant,
    t0: Instant,
    pulls: Vec<Option<(CancellationToken, JoinHandle<PullLog>)>>,
    /// Each agent's pull once it ended ([`Run::wait_pulls`]).
    logs: Vec<Option<PullLog>>,
    /// Agents killed and not restarted.
    gone: Vec<bool>,
    /// Bytes a killed and restarted agent's store held at the kill.
    held_at_kill: Vec<Option<u64>>,
    row: Row,
    /// A tmpfs under the row's directory, unmounted before the directory is removed.
    mount: Option<TmpfsMount>,
    _tmp: tempfile::TempDir,
}

impl Run {
    /// Starts a cluster with `spec` and one random blob of `o.size` in `place`'s backend.
    async fn start(
        fault: Fault,
        o: &MatrixOptions,
        spec: ClusterSpec,
        lab: Option<crate::netns::Lab>,
        tmp: tempfile::TempDir,
        data: Vec<u8>,
    ) -> anyhow::Result<Run> {
        let digest = Digest::of(&data);
        if matches!(spec.backend, BackendSpec::Fs) {
            let dir = tmp.path().join("backend/sha256");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(digest.hex()), &data)?;
        }
        let c = FaultCluster::start(&spec, tmp.path(), lab).await?;
        let n = spec.agents;
        Ok(Run {
            c,
            meta: MetaInfo::build(&data),
            data: Arc::new(data),
            digest,
            http: reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build()?,
            deadline: Instant::now() + o.timeout,
            t0: Instant::now(),
            pulls: (0..n).map(|_| None).collect(),
            logs: vec![None; n],
            gone: vec![false; n],
            held_at_kill: vec![None; n],
            row: Row { fault: fault.name().into(), agents: n, ..Row::default() },
            mount: None,
            _tmp: tmp,
        })
    }

    /// Has the blob's owning origin fetch it before the clock starts.
    async fn warm(&self) -> anyhow::Result<()> {
        crate::pull::warm_origins(&self.http, &self.c.agent_url(0), &[self.digest]).await
    }

    /// Starts agent `i`'s pull (again).
    fn pull(&mut self, i: usize) {
        let stop = CancellationToken::new();
        let (http, url, data, s, deadline) = (
            self.http.clone(),
            format!("{}/blobs/{}", self.c.agent_url(i), self.digest),
            self.data.clone(),
            stop.clone(),
            self.deadline,
        );
        let task = tokio::spawn(async move { pull_exact(&http, &url, data, &s, deadline, RETRY).await });
        self.pulls[i] = Some((stop, task));
    }

    fn pull_all(&mut self) {
        self.t0 = Instant::now();
        for i in 0..self.pulls.len() {
            self.pull(i);
        }
    }

    /// Bytes the running agents have received so far.
    async fn delivered(&self) -> u64 {
        let mut sum = 0;
        for i in 0..self.pulls.len() {
            if self.c.running(&format!("agent-{i}")) {
                let s = self.c.stats(i, &self.digest).await;
                sum += (s.from_origin + s.from_peers).min(self.meta.length());
            }
        }
        sum
    }

    /// Waits until the agents together hold `share` of their bytes (or every pull ended).
    async fn wait_share(&self, share: f64) -> anyhow::Result<()> {
        let want = (share * (self.meta.length() * self.pulls.len() as u64) as f64) as u64;
        loop {
            anyhow::ensure!(Instant::now() < self.deadline, "the swarm never reached {:.0}%", share * 100.0);
            if self.delivered().await >= want || self.pulls.iter().flatten().all(|(_, t)| t.is_finished()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops agent `i`'s pull and SIGKILLs it, noting what its store holds.
    async fn kill_agent(&mut self, i: usize) -> anyhow::Result<u64> {
        if let Some((stop, task)) = self.pulls[i].take() {
            stop.cancel();
            let log = task.await?;
            self.row.wrong_bytes += log.wrong_bytes;
        }
        self.c.kill(&format!("agent-{i}")).await?;
        let held = self.stored_bytes(&format!("agent-{i}"));
        Ok(held)
    }

    /// Bytes of the blob present in node `name`'s store: all of them when complete, else the
    /// pieces its `.bits` marks.
    fn stored_bytes(&self, name: &str) -> u64 {
        let Some(store) = self.c.store_dir(name) else { return 0 };
        let hex = self.digest.hex();
        if store.join("blobs").join(&hex).is_file() {
            return self.meta.length();
        }
        let bits = std::fs::read(store.join("partial").join(format!("{hex}.bits"))).unwrap_or_default();
        match shoal_core::store_files::parse_bits(&bits, self.meta.num_pieces()) {
            Some(have) => {
                self.meta.all_pieces().filter(|p| have[p.as_usize()]).map(|p| u64::from(self.meta.piece_len(p))).sum()
            }
            None => 0,
        }
    }

    /// Waits for every pull to end (each is bounded by the row's deadline).
    async fn wait_pulls(&mut self) {
        for (i, p) in self.pulls.iter_mut().enumerate() {
            if let Some((_, task)) = p.take() {
                self.logs[i] = task.await.ok();
            }
        }
    }

    /// Waits for every pull, then checks the row and stops the cluster.
    async fn finish(mut self) -> Row {
        self.wait_pulls().await;
        let logs = std::mem::take(&mut self.logs);
        let mut last = Duration::ZERO;
        for (i, log) in logs.iter().enumerate() {
            if self.gone[i] {
                continue;
            }
            self.row.surviving += 1;
            let Some(log) = log else {
                self.row.problems.push(format!("agent {i} never pulled"));
                continue;
            };
            self.row.wrong_bytes += log.wrong_bytes;
            match log.done {
                Some(t) => {
                    self.row.completed += 1;
                    last = last.max(t);
                }
                None => self.row.problems.push(format!(
                    "agent {i} did not end with the blob in {} attempts ({})",
                    log.attempts,
                    log.failure_summary()
                )),
            }
            let received = {
                let s = self.c.stats(i, &self.digest).await;
                s.from_origin + s.from_peers
            };
            let lacked = self.meta.length() - self.held_at_kill[i].unwrap_or(0);
            self.row.redownloaded += received.saturating_sub(lacked);
            if !log.failures.is_empty() {
                self.row.notes.push(format!("agent {i}: failed attempts before the end: {}", log.failure_summary()));
            }
        }
        self.row.secs = last.as_secs_f64();
        if self.row.wrong_bytes > 0 {
            self.row.problems.push(format!("{} unverified bytes served to clients", self.row.wrong_bytes));
        }
        let panics = self.c.panics();
        if !panics.is_empty() {
            self.row.problems.push(format!("panics: {}", panics.join(" | ")));
        }
        self.c.shutdown().await;
        if !self.row.problems.is_empty() {
            // Kept for the reader: the nodes' configs, logs and stores.
            let dir =
                std::mem::replace(&mut self._tmp, tempfile::TempDir::new().expect("a temporary directory")).keep();
            self.row.notes.push(format!("node logs and stores kept in {}", dir.display()));
        }
        self.row
    }
}

/// A fresh directory for one row's stores and logs.
fn row_dir(o: &MatrixOptions, fault: Fault) -> anyhow::Result<tempfile::TempDir> {
    let base = o.dir.clone().unwrap_or_else(crate::modes::default_store_base);
    std::fs::create_dir_all(&base)?;
    Ok(tempfile::Builder::new().prefix(&format!("shoal-fault-{}-", fault.name())).tempdir_in(base)?)
}

fn base_spec(o: &MatrixOptions) -> ClusterSpec {
    ClusterSpec {
        trackers: 1,
        origins: 1,
        replicas: 1,
        agents: o.agents,
        backend: BackendSpec::Fs,
        agent_rate: o.agent_rate,
        origin_rate: o.origin_rate,
        agent_store: Vec::new(),
        swarm: Vec::new(),
        download_timeout: o.timeout,
    }
}

/// Effective uid 0.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|v| v.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

async fn run_row(fault: Fault, o: &MatrixOptions) -> anyhow::Result<Row> {
    let data = random_blob(o.size, o.seed);
    let tmp = row_dir(o, fault)?;
    match fault {
        Fault::None => {
            let mut r = Run::start(fault, o, base_spec(o), None, tmp, data).await?;
            r.warm().await?;
            r.pull_all();
            Ok(r.finish().await)
        }
        Fault::KillAgents => kill_agents(o, tmp, data).await,
        Fault::OriginLost => origin_lost(o, tmp, data).await,
        Fault::TrackerRestart | Fault::TrackersDown | Fault::NoTrackers => trackers(fault, o, tmp, data).await,
        Fault::S3Errors | Fault::S3Slow => s3(fault, o, tmp, data).await,
        Fault::Liars => liars(o, tmp, data).await,
        Fault::DiskFull => disk_full(o, tmp, data).await,
        Fault::Partition => partition(o, tmp, data).await,
    }
}

async fn kill_agents(o: &MatrixOptions, tmp: tempfile::TempDir, data: Vec<u8>) -> anyhow::Result<Row> {
    let mut r = Run::start(Fault::KillAgents, o, base_spec(o), None, tmp, data).await?;
    r.warm().await?;
    r.pull_all();
    r.wait_share(MID_SWARM).await?;
    let n = o.agents;
    let k = (n / 5).max(1);
    // Victims: agents still downloading, the first k of them.
    let mut victims = Vec::new();
    for i in 0..n {
        if victims.len() < k
            && r.c.stats(i, &r.digest).await.from_origin + r.c.stats(i, &r.digest).await.from_peers < r.meta.length()
        {
            victims.push(i);
        }
    }
    let restarted: Vec<usize> = victims.iter().copied().take(k.div_ceil(2)).collect();
    let mut held = Vec::new();
    for &i in &victims {
        let h = r.kill_agent(i).await?;
        held.push((i, h));
        r.gone[i] = !restarted.contains(&i);
    }
    let at = r.t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for &i in &restarted {
        r.c.restart(&format!("agent-{i}")).await?;
        r.held_at_kill[i] = held.iter().find(|(a, _)| *a == i).map(|(_, h)| *h);
        r.pull(i);
    }
    r.row.notes.push(format!(
        "killed agents {victims:?} at {at:.1}s (their stores held {}); restarted {restarted:?} 1 s later",
        held.iter().map(|(i, h)| format!("{i}: {}", human_bytes(*h))).collect::<Vec<_>>().join(", ")
    ));
    let row = r.finish().await;
    Ok(row)
}

async fn origin_lost(o: &MatrixOptions, tmp: tempfile::TempDir, data: Vec<u8>) -> anyhow::Result<Row> {
    let spec = ClusterSpec { origins: 3, replicas: 2, ..base_spec(o) };
    let mut r = Run::start(Fault::OriginLost, o, spec, None, tmp, data).await?;
    r.warm().await?;
    let owners: Vec<String> = r.c.ring.owners(&r.digest).iter().map(|n| n.id.clone()).collect();
    let lost = owners[0].clone();
    r.pull_all();
    r.wait_share(MID_SWARM).await?;
    r.c.kill(&lost).await?;
    if let Some(store) = r.c.store_dir(&lost) {
        std::fs::remove_dir_all(&store)?;
    }
    let at = r.t0.elapsed().as_secs_f64();
    let replica = owners[1].clone();
    let sent_before = r.c.metric(&replica, "shoal_swarm_piece_bytes_sent_total").await.unwrap_or(0);
    r.wait_pulls().await;
    let sent = r.c.metric(&replica, "shoal_swarm_piece_bytes_sent_total").await.unwrap_or(0);
    r.row.notes.push(format!(
        "owners {owners:?}; {lost} killed and its store wiped at {at:.1}s; the replica {replica} then uploaded {}",
        human_bytes(sent.saturating_sub(sent_before))
    ));
    Ok(r.finish().await)
}

async fn trackers(fault: Fault, o: &MatrixOptions, tmp: tempfile::TempDir, data: Vec<u8>) -> anyhow::Result<Row> {
    let down = fault != Fault::TrackerRestart;
    let spec = ClusterSpec { trackers: if down { 2 } else { 1 }, ..base_spec(o) };
    let mut r = Run::start(fault, o, spec, None, tmp, data).await?;
    r.warm().await?;
    let names: Vec<String> = r.c.names().into_iter().filter(|n| n.starts_with("tracker")).collect();
    if fault == Fault::NoTrackers {
        for t in &names {
            r.c.kill(t).await?;
        }
        r.row.notes.push(format!("trackers {names:?} killed before the pulls"));
        r.pull_all();
        return Ok(r.finish().await);
    }
    r.pull_all();
    r.wait_share(MID_SWARM).await?;
    for t in &names {
        r.c.kill(t).await?;
    }
    let at = r.t0.elapsed().as_secs_f64();
    if down {
        r.row.notes.push(format!("trackers {names:?} killed at {at:.1}s for good"));
    } else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        r.c.restart(&names[0]).await?;
        r.row.notes.push(format!("tracker killed at {at:.1}s and restarted 1 s later"));
    }
    Ok(r.finish().await)
}

async fn s3(fault: Fault, o: &MatrixOptions, tmp: tempfile::TempDir, data: Vec<u8>) -> anyhow::Result<Row> {
    let server = crate::s3::S3Server::start(&["blobs"])?;
    let put = |bytes: &[u8]| -> anyhow::Result<Digest> {
        let d = Digest::of(bytes);
        let dir = server.data.join("blobs/sha256");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(d.hex()), bytes)?;
        Ok(d)
    };
    put(&data)?;
    // More blobs, so that a tenth of the S3 requests is more than a request or two.
    let mut extra = Vec::new();
    for k in 0..EXTRA_S3_BLOBS {
        let bytes = random_blob(1 << 20, o.seed.wrapping_add(100 + k));
        extra.push((put(&bytes)?, Arc::new(bytes)));
    }
    let poison = put(&random_blob(1 << 20, o.seed ^ 1))?;
    let corrupt = put(&random_blob(1 << 20, o.seed ^ 2))?;
    let upstream: std::net::SocketAddr = server.endpoint.trim_start_matches("http://").parse()?;
    let rules = match fault {
        Fault::S3Errors => proxy::Rules {
            error_rate: 0.05,
            hang_rate: 0.05,
            by_path: vec![(poison.hex(), proxy::Action::Error), (corrupt.hex(), proxy::Action::Corrupt)],
            seed: o.seed,
            ..proxy::Rules::default()
        },
        _ => proxy::Rules {
            slow_rate_share: 1.0,
            slow_rate: (o.size / 4).max(1 << 20),
            seed: o.seed,
            ..proxy::Rules::default()
        },
    };
    let px = proxy::FaultProxy::start(upstream, rules).await?;
    let spec =
        ClusterSpec { backend: BackendSpec::S3 { endpoint: px.endpoint(), bucket: "blobs".into() }, ..base_spec(o) };
    // Cold: the origin's fetches go through the proxy while the agents wait.
    let mut r = Run::start(fault, o, spec, None, tmp, data).await?;
    r.pull_all();
    // The extra blobs, each through one agent, all at once.
    let extra_pulls = extra.iter().enumerate().map(|(k, (d, bytes))| {
        let (http, url, bytes, deadline) =
            (r.http.clone(), format!("{}/blobs/{d}", r.c.agent_url(k % o.agents)), bytes.clone(), r.deadline);
        async move { pull_exact(&http, &url, bytes, &CancellationToken::new(), deadline, RETRY).await }
    });
    let extra_logs = futures::future::join_all(extra_pulls).await;
    let extra_done = extra_logs.iter().filter(|l| l.done.is_some()).count();
    r.row.wrong_bytes += extra_logs.iter().map(|l| l.wrong_bytes).sum::<u64>();
    let extra_failures: Vec<String> = extra_logs.iter().flat_map(|l| l.failures.iter().cloned()).collect();
    let summary = PullLog { failures: extra_failures, ..PullLog::default() }.failure_summary();
    if extra_done < extra.len() {
        r.row.problems.push(format!(
            "{} of {} more blobs never arrived exact ({summary})",
            extra.len() - extra_done,
            extra.len()
        ));
    } else {
        r.row.notes.push(format!("{} more blobs of 1 MiB arrived exact (failed attempts: {summary})", extra.len()));
    }
    if fault == Fault::S3Errors {
        // A blob S3 always fails: a 5xx at the agent (the origin's failure, not a 404 or 500),
        // and no bytes.
        let probe = |d: Digest| {
            let (http, url) = (r.http.clone(), format!("{}/blobs/{d}", r.c.agent_url(0)));
            async move {
                match tokio::time::timeout(Duration::from_secs(60), http.get(&url).send()).await {
                    Ok(Ok(resp)) => {
                        let status = resp.status().as_u16();
                        let body = resp.bytes().await.map(|b| b.len()).unwrap_or(0);
                        Ok((status, body))
                    }
                    Ok(Err(e)) => Err(format!("{e}")),
                    Err(_) => Err("no answer within 60 s".into()),
                }
            }
        };
        match probe(poison).await {
            Ok((s, _)) if matches!(s, 502..=504) => {
                r.row.notes.push(format!("a blob S3 always fails: {s} at the agent"))
            }
            other => r.row.problems.push(format!("a blob S3 always fails: expected 502, 503 or 504, got {other:?}")),
        }
        match probe(corrupt).await {
            Ok((s, _)) if s >= 500 => r.row.notes.push(format!("a blob S3 sends corrupt: {s} at the agent")),
            other => r.row.problems.push(format!("a blob S3 sends corrupt: expected a 5xx, got {other:?}")),
        }
        for k in 0..1 {
            let store = r.c.store_dir(&format!("origin-{k}")).unwrap_or_default();
            if store.join("blobs").join(corrupt.hex()).exists() {
                r.row.problems.push(format!("origin-{k} committed the corrupt blob"));
            }
        }
    }
    // Wait for the pulls, then read what the proxy did.
    let mut row = r.finish().await;
    let c = &px.counts;
    row.notes.push(format!(
        "S3 requests through the proxy: {}; 503s {}, never answered {}, trickled {}, corrupted {}",
        c.requests.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.hangs.load(Ordering::Relaxed),
        c.slow.load(Ordering::Relaxed),
        c.corrupted.load(Ordering::Relaxed)
    ));
    drop(server);
    Ok(row)
}

async fn liars(o: &MatrixOptions, tmp: tempfile::TempDir, data: Vec<u8>) -> anyhow::Result<Row> {
    let mut r = Run::start(Fault::Liars, o, base_spec(o), None, tmp, data).await?;
    r.warm().await?;
    let trackers: Vec<String> = r.c.trackers.iter().map(|a| format!("http://{a}")).collect();
    let mut liars = Vec::new();
    for (k, lie) in [liar::Lie::Corrupt, liar::Lie::Stall, liar::Lie::Garbage].into_iter().enumerate() {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 221, k as u8 + 1));
        liars.push(liar::Liar::start(lie, ip, r.meta.clone(), trackers.clone()).await?);
    }
    // Let the tracker learn of them before anyone asks.
    tokio::time::sleep(Duration::from_millis(700)).await;
    r.pull_all();
    r.wait_pulls().await;
    // What the agents did with each liar, once they are done.
    for l in &liars {
        let s = l.stats();
        r.row.notes.push(format!(
            "liar ({}): {} connections from {} agents, {} lies told, {} connections dropped by the agent, at most {} from one agent",
            l.lie.name(),
            s.total(),
            s.connections.len(),
            s.lies,
            s.dropped,
            s.max_per_peer()
        ));
        if s.lies == 0 {
            r.row.problems.push(format!("liar ({}) was never asked for a piece: the row proves nothing", l.lie.name()));
        }
        if s.dropped < s.total() {
            r.row.problems.push(format!(
                "liar ({}): {} of {} connections still open after every agent finished (not dropped)",
                l.lie.name(),
                s.total() - s.dropped,
                s.total()
            ));
        }
        if s.max_per_peer() > 2 {
            r.row.problems.push(format!(
                "liar ({}): an agent connected {} times (not blacklisted)",
                l.lie.name(),
                s.max_per_peer()
            ));
        }
    }
    let mut corrupt = 0;
    for i in 0..o.agents {
        corrupt += r.c.metric(&format!("agent-{i}"), "shoal_swarm_pieces_corrupt_total").await.unwrap_or(0);
    }
    r.row.notes.push(format!("corrupt pieces counted by the agents: {corrupt}"));
    Ok(r.finish().await)
}

/// A tmpfs of `bytes` mounted on `dir`, unmounted on drop.
pub(crate) struct TmpfsMount(PathBuf);

impl TmpfsMount {
    pub(crate) fn mount(dir: &Path, bytes: u64) -> anyhow::Result<TmpfsMount> {
        std::fs::create_dir_all(dir)?;
        run_cmd("mount", &["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", &dir.to_string_lossy()])?;
        Ok(TmpfsMount(dir.to_path_buf()))
    }

    fn resize(&self, bytes: u64) -> anyhow::Result<()> {
        run_cmd("mount", &["-o", &format!("remount,size={bytes}"), &self.0.to_string_lossy()])
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        if let Err(e) = run_cmd("umount", &["-l", &self.0.to_string_lossy()]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

fn run_cmd(prog: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(prog).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "`{prog} {}`: {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

async fn disk_full(o: &MatrixOptions, tmp: tempfile::TempDir, data: Vec<u8>) -> anyhow::Result<Row> {
    if !is_root() {
        return Ok(Row {
            fault: Fault::DiskFull.name().into(),
            agents: o.agents,
            skipped: Some("needs root to mount a tmpfs".into()),
            ..Row::default()
        });
    }
    let f = data.len() as u64;
    // Room for three quarters of the blob: the smaller blob (a quarter) and less than the
    // rest, so the pull fails even if the smaller one is evicted.
    let mount = TmpfsMount::mount(&tmp.path().join("small-disk"), (f * 3 / 4).max(1 << 20))?;
    let small = random_blob((f / 4).max(1), o.seed ^ 3);
    let small_d = Digest::of(&small);
    std::fs::create_dir_all(tmp.path().join("backend/sha256"))?;
    std::fs::write(tmp.path().join("backend/sha256").join(small_d.hex()), &small)?;
    // The smaller blob is pinned: on a disk this small the budget (a share of the
    // filesystem) would rightly evict it while the larger one downloads, and the row is about
    // serving what the node holds, not about which blob the budget keeps.
    let spec = ClusterSpec {
        agent_store: vec![(0, mount.0.join("agent-0"))],
        swarm: vec![("store".into(), serde_json::json!({ "pin": { "digests": [small_d.to_string()] } }))],
        ..base_spec(o)
    };
    let mut r = Run::start(Fault::DiskFull, o, spec, None, tmp, data).await?;
    let small = Arc::new(small);
    let small_url = format!("{}/blobs/{small_d}", r.c.agent_url(0));
    let get_small = |r: &Run| {
        let (http, url, small, deadline) = (r.http.clone(), small_url.clone(), small.clone(), r.deadline);
        async move {
            pull_exact(
                &http,
                &url,
                small,
                &CancellationToken::new(),
                deadline.min(Instant::now() + Duration::from_secs(60)),
                RETRY,
            )
            .await
        }
    };
    let first = get_small(&r).await;
    anyhow::ensure!(first.done.is_some(), "agent 0 could not pull the smaller blob first: {}", first.failure_summary());
    r.warm().await?;
    r.pull_all();
    // Until agent 0's download of the blob has failed (the disk is full).
    let mut failed = false;
    while Instant::now() < r.deadline && !failed {
        failed = r.c.metric("agent-0", "shoal_swarm_downloads_failed_total").await.unwrap_or(0) > 0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !failed {
        r.row.problems.push("agent 0's download never failed on the full disk".into());
    }
    let served = get_small(&r).await;
    r.row.wrong_bytes += served.wrong_bytes + first.wrong_bytes;
    if served.done.is_some() {
        r.row.notes.push("agent 0 still served the smaller blob it held while its disk was full".into());
    } else {
        r.row.problems.push(format!(
            "agent 0 did not serve the blob it held while its disk was full: {}",
            served.failure_summary()
        ));
    }
    let mut evictions = Vec::new();
    for reason in shoal_core::cache::Reason::ALL {
        let n = r.c.labelled_metric("agent-0", "shoal_swarm_store_evictions_total", "reason", reason.as_str()).await;
        if let Some(n @ 1..) = n {
            evictions.push(format!("{}×{n}", reason.as_str()));
        }
    }
    if !evictions.is_empty() {
        r.row.notes.push(format!("agent 0's evictions while its disk was full: {}", evictions.join(", ")));
    }
    // Space returns.
    mount.resize(f * 3)?;
    r.row.notes.push(format!("tmpfs grown to {} at {:.1}s", human_bytes(f * 3), r.t0.elapsed().as_secs_f64()));
    r.wait_pulls().await;
    // The error reaches the client as a 507 when the disk fills before the response starts,
    // and as a cut response (never a short success) once it streams; the agent logs why.
    if let Some(log0) = &r.logs[0]
        && (log0.failures.is_empty() || log0.failures.iter().any(|s| s != "507" && s != "cut"))
    {
        let why = format!("agent 0's pull should fail with 507 or a cut response, got: {}", log0.failure_summary());
        r.row.problems.push(why);
    }
    let log = std::fs::read_to_string(r.c.log_path("agent-0")).unwrap_or_default();
    if !log.contains("No space left on device") {
        r.row.problems.push("agent 0's log does not say its disk was full".into());
    }
    r.mount = Some(mount);
    Ok(r.finish().await)
}

async fn partition(o: &MatrixOptions, tmp: tempfile::TempDir, data: Vec<u8>) -> anyhow::Result<Row> {
    if let Err(e) = crate::netns::check_available() {
        return Ok(Row {
            fault: Fault::Partition.name().into(),
            agents: o.agents,
            skipped: Some(format!("{e:#}")),
            ..Row::default()
        });
    }
    let lab = crate::netns::Lab::create(1, o.agents, o.agent_rate, o.origin_rate)?;
    let mut r = Run::start(Fault::Partition, o, base_spec(o), Some(lab), tmp, data).await?;
    r.warm().await?;
    r.pull_all();
    r.wait_share(MID_SWARM).await?;
    let lab = r.c.lab().ok_or_else(|| anyhow::anyhow!("no lab"))?;
    lab.set_link("a0", false)?;
    let at = r.t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lab = r.c.lab().ok_or_else(|| anyhow::anyhow!("no lab"))?;
    lab.set_link("a0", true)?;
    r.row.notes.push(format!("agent 0's link down at {at:.1}s for 3 s"));
    Ok(r.finish().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_compares_with_the_fault_free_row() {
        let none = Row { fault: "none".into(), agents: 4, surviving: 4, completed: 4, secs: 2.0, ..Row::default() };
        let kill = Row {
            fault: "kill-agents".into(),
            agents: 4,
            surviving: 3,
            completed: 3,
            redownloaded: 1 << 20,
            secs: 3.0,
            ..Row::default()
        };
        let bad = Row { fault: "liars".into(), problems: vec!["x".into()], ..Row::default() };
        let skip = Row { fault: "partition".into(), skipped: Some("needs root".into()), ..Row::default() };
        let t = table(&[none, kill, bad, skip]);
        assert!(t.contains("1.50×"), "{t}");
        assert!(t.contains("3/3"), "{t}");
        assert!(t.contains("liars: FAIL: x"), "{t}");
        assert!(t.contains("skipped: needs root"), "{t}");
    }
}
