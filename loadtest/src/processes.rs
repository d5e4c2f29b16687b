//! Multi-process mode: the same scenario as [`crate::run`], but every node is a real binary
//! (`shoal-tracker`, `shoal-origin`, `shoal-agent`) in its own process on its own loopback
//! address, configured by a generated YAML file, so the run includes each process's own
//! runtime, allocator and syscalls the way a fleet would.
//!
//! The binaries are looked for next to the running executable (`cargo build --release
//! --workspace` puts them all in `target/release`). Nodes live on 127.0.200.x with fixed ports
//! (tracker .1:7600, then the origins on 7800/7801, then the agents on 7700/7701), a range the in-process
//! harness does not use, so no port needs to be discovered. Configs are written as JSON, which
//! is YAML. Per-agent sources come from each agent's `GET /debug/blobs/<digest>`; the origin's
//! uploaded bytes from its `/metrics`; CPU-seconds and peak RSS from `/proc/<pid>` of the
//! children. Every child is stopped with SIGTERM (by its pid), then killed if it lingers; every
//! wait is bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use shoal_core::Digest;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::baseline::{self, BaselineOptions};
use crate::cluster::random_blob;
use crate::modes::{LocalOptions, default_store_base};
use crate::pull::Target;
use crate::report::{
    self, Caps, DIGEST_READ_BACK, LINK_AGENT_LIMITER, Resources, RunReport, RunSpec, STORE_WRITE_SECONDS, Store,
};
use crate::scenario::{Nodes, Scenario, Stats, drive};

/// The binaries this mode starts.
pub const BINARIES: [&str; 3] = ["shoal-tracker", "shoal-origin", "shoal-agent"];

/// Runs the scenario with one process per node.
pub async fn run_processes(o: &LocalOptions) -> anyhow::Result<RunReport> {
    let layout = Layout::new(o.origins, o.agents);
    run_with(o, layout, &Launch::Loopback).await
}

/// How the children are started.
pub(crate) enum Launch {
    /// Directly, on loopback addresses; the nodes' own limiters cap the links.
    Loopback,
    /// Each under `ip netns exec <ns>`; `tc` caps the links, so the nodes get no limits.
    Netns { tracker: String, origins: Vec<String>, agents: Vec<String> },
}

impl Launch {
    fn netns_of(&self, name: &str) -> Option<&str> {
        let Launch::Netns { tracker, origins, agents } = self else { return None };
        let idx = |p: &str| name.strip_prefix(p).and_then(|k| k.parse::<usize>().ok());
        if name == "tracker" {
            Some(tracker)
        } else if let Some(k) = idx("origin-") {
            origins.get(k).map(String::as_str)
        } else {
            idx("agent-").and_then(|k| agents.get(k)).map(String::as_str)
        }
    }

    fn limiter(&self) -> bool {
        matches!(self, Launch::Loopback)
    }
}

/// Starts the nodes of `layout` as `launch` says, drives the scenario and reports it.
pub(crate) async fn run_with(o: &LocalOptions, layout: Layout, launch: &Launch) -> anyhow::Result<RunReport> {
    let sc = o.scenario();
    sc.validate(o.agents)?;
    let bin_dir = binaries_dir()?;
    let base = o.dir.clone().unwrap_or_else(default_store_base);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new().prefix("shoal-procs-").tempdir_in(&base)?;
    let root = tmp.path().to_path_buf();
    let store = Store::detect(&root);
    if o.verbose {
        println!(
            "shoal processes{}: 1 tracker, {} origin(s), {} agents as separate processes from {}; {}; stores and logs in {} ({})",
            if launch.limiter() { "" } else { " in network namespaces" },
            o.origins,
            o.agents,
            bin_dir.display(),
            sc.describe(o.agents),
            root.display(),
            store.kind
        );
    }
    let mut c = ProcCluster {
        layout,
        procs: Procs::default(),
        bin_dir,
        root: root.clone(),
        launch,
        agent_cfgs: Vec::new(),
        http: reqwest::Client::new(),
    };
    let res = async {
        c.start(o).await?;
        measure(&mut c, o, &sc, store).await
    }
    .await;
    c.procs.stop().await;
    if res.is_err() {
        eprintln!("node logs are in {}", root.display());
        std::mem::forget(tmp);
    }
    res
}

/// The directory holding the three service binaries, or an error that says how to build them.
pub fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the current executable")?;
    let dir = exe.parent().context("the executable has no directory")?.to_path_buf();
    // Test binaries live in target/<profile>/deps; the services one level up.
    for d in [dir.clone(), dir.parent().map(Path::to_path_buf).unwrap_or_default()] {
        if BINARIES.iter().all(|b| d.join(b).is_file()) {
            return Ok(d);
        }
    }
    let missing: Vec<&str> = BINARIES.iter().copied().filter(|b| !dir.join(b).is_file()).collect();
    anyhow::bail!(
        "--mode processes needs {} next to {}; build them with `cargo build --release --workspace`",
        missing.join(", "),
        exe.display()
    )
}

/// Where each node listens.
pub(crate) struct Layout {
    tracker: SocketAddr,
    /// (http, peer) per origin.
    origins: Vec<(SocketAddr, SocketAddr)>,
    /// (http, peer) per agent.
    agents: Vec<(SocketAddr, SocketAddr)>,
}

const TRACKER_PORT: u16 = 7600;
const AGENT_PORTS: (u16, u16) = (7700, 7701);
const ORIGIN_PORTS: (u16, u16) = (7800, 7801);
/// Hard-coded: how long a node may take to answer `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard-coded: how long a node may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The address of node `k` of this mode: 127.0.200.(k+1), then on into 127.0.201.x.
fn proc_ip(k: usize) -> IpAddr {
    let k = k as u32;
    IpAddr::V4(Ipv4Addr::new(127, 0, (200 + k / 250) as u8, (k % 250 + 1) as u8))
}

impl Layout {
    fn new(n_origins: usize, n_agents: usize) -> Layout {
        let ip = |k: usize| proc_ip(k);
        Layout::at(ip(0), (0..n_origins).map(|i| ip(1 + i)), (0..n_agents).map(|i| ip(1 + n_origins + i)))
    }

    /// The tracker, origins and agents on the given addresses, on this mode's fixed ports.
    pub(crate) fn at(
        tracker: IpAddr,
        origins: impl Iterator<Item = IpAddr>,
        agents: impl Iterator<Item = IpAddr>,
    ) -> Layout {
        let at = |ip: IpAddr, (h, p): (u16, u16)| (SocketAddr::new(ip, h), SocketAddr::new(ip, p));
        Layout {
            tracker: SocketAddr::new(tracker, TRACKER_PORT),
            origins: origins.map(|ip| at(ip, ORIGIN_PORTS)).collect(),
            agents: agents.map(|ip| at(ip, AGENT_PORTS)).collect(),
        }
    }

    fn origin_list(&self) -> serde_json::Value {
        self.origins
            .iter()
            .enumerate()
            .map(|(i, (h, p))| json!({ "id": format!("origin-{i}"), "http": format!("http://{h}"), "peer": p.to_string() }))
            .collect()
    }
}

/// A running multi-process cluster.
pub(crate) struct ProcCluster<'a> {
    layout: Layout,
    procs: Procs,
    bin_dir: PathBuf,
    root: PathBuf,
    launch: &'a Launch,
    /// Each agent's config, to restart it with.
    agent_cfgs: Vec<serde_json::Value>,
    http: reqwest::Client,
}

/// The peer and API networks of a lab's nodes: loopback, where nodes connect to each other
/// (and the harness to the agents) on 127.x, and the netns lab's 198.18.0.0/15, which is
/// outside the default peer networks and whose harness drives the agents from there.
pub(crate) fn lab_networks() -> serde_json::Value {
    json!(["127.0.0.0/8", "::1", "198.18.0.0/15"])
}

/// The networks a lab's tracker trusts to announce any address: nodes on loopback connect to
/// it from 127.0.0.1, not from the 127.x address they announce (in namespaces they connect
/// from their own, and need no trust).
pub(crate) fn trusted_networks() -> serde_json::Value {
    json!(["127.0.0.0/8", "::1"])
}

impl ProcCluster<'_> {
    fn origin_list(&self) -> serde_json::Value {
        self.layout.origin_list()
    }

    async fn spawn(&mut self, bin: &str, name: &str, cfg: &serde_json::Value) -> anyhow::Result<()> {
        let netns = self.launch.netns_of(name).map(str::to_string);
        self.procs.spawn(&self.bin_dir, bin, name, &self.root, cfg, netns.as_deref()).await
    }

    /// Writes the configs and starts every node, waiting until each is ready.
    async fn start(&mut self, o: &LocalOptions) -> anyhow::Result<()> {
        let l = &self.layout;
        let replicas = o.origins.clamp(1, 3);
        let trackers = json!([format!("http://{}", l.tracker)]);
        let limiter = self.launch.limiter();
        let rate = |r: Option<u64>| r.filter(|_| limiter).map(|r| json!(r.to_string()));
        let lab_networks = lab_networks();
        let tracker = json!({
            "listen": l.tracker.to_string(),
            "origins": self.origin_list(),
            "origin_replicas": replicas,
            "announce_interval": "1s",
            "peer_ttl": "10s",
            "trusted_networks": trusted_networks(),
        });
        let tracker_url = format!("http://{}", l.tracker);
        let backend = self.root.join("backend");
        std::fs::create_dir_all(backend.join("sha256"))?;
        let mut origin_cfgs = Vec::new();
        for (i, (h, p)) in l.origins.iter().enumerate() {
            let mut swarm = json!({
                "store_dir": self.root.join(format!("origin-{i}")),
                "trackers": trackers,
                "seed_announce_interval": "2s",
                "peer_networks": lab_networks,
            });
            if let Some(r) = rate(o.origin_rate) {
                swarm["egress_rate"] = r;
            }
            for (k, v) in &o.swarm {
                swarm[k.as_str()] = v.clone();
            }
            origin_cfgs.push(json!({
                "listen": h.to_string(),
                "peer_listen": p.to_string(),
                "id": format!("origin-{i}"),
                "origins": self.origin_list(),
                "origin_replicas": replicas,
                "backend": { "type": "fs", "root": backend, "layout": "flat" },
                "metainfo_wait": "500ms",
                "swarm": swarm,
            }));
        }
        let mut agent_cfgs = Vec::new();
        for (i, (h, p)) in l.agents.iter().enumerate() {
            let mut swarm = json!({
                "store_dir": self.root.join(format!("agent-{i}")),
                "trackers": trackers,
                "seed_announce_interval": "2s",
                "download_timeout": format!("{}s", o.timeout.as_secs().max(1)),
                "peer_networks": lab_networks,
            });
            if let Some(r) = rate(o.agent_rate) {
                swarm["egress_rate"] = r.clone();
                swarm["ingress_rate"] = r;
            }
            for (k, v) in &o.swarm {
                swarm[k.as_str()] = v.clone();
            }
            agent_cfgs.push(json!({
                "listen": h.to_string(),
                "peer_listen": p.to_string(),
                "origins": self.origin_list(),
                "origin_replicas": replicas,
                "api_networks": lab_networks,
                "swarm": swarm,
            }));
        }
        let urls: Vec<String> = l.origins.iter().chain(&l.agents).map(|(h, _)| format!("http://{h}")).collect();
        self.spawn("shoal-tracker", "tracker", &tracker).await?;
        wait_ready(&tracker_url).await.context("tracker")?;
        for (i, cfg) in origin_cfgs.iter().enumerate() {
            self.spawn("shoal-origin", &format!("origin-{i}"), cfg).await?;
        }
        for (i, cfg) in agent_cfgs.iter().enumerate() {
            self.spawn("shoal-agent", &format!("agent-{i}"), cfg).await?;
        }
        self.agent_cfgs = agent_cfgs;
        for u in &urls {
            wait_ready(u).await?;
        }
        Ok(())
    }
}

/// Kills are SIGKILL to the agent's process; a restart runs the same binary on the same
/// config and store and waits until it is ready.
impl Nodes for ProcCluster<'_> {
    fn agent_url(&self, i: usize) -> Option<String> {
        let name = format!("agent-{i}");
        self.procs.children.iter().any(|(n, _)| *n == name).then(|| format!("http://{}", self.layout.agents[i].0))
    }

    async fn stats(&self, i: usize, digests: &[Digest]) -> Stats {
        let mut s = Stats::default();
        for d in digests {
            if let Ok(b) = debug_stats(&self.http, self.layout.agents[i].0, *d).await {
                s += b;
            }
        }
        s
    }

    async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.procs.kill(&format!("agent-{i}")).await
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let cfg = self.agent_cfgs.get(i).cloned().ok_or_else(|| anyhow::anyhow!("no agent {i}"))?;
        self.spawn("shoal-agent", &format!("agent-{i}"), &cfg).await?;
        wait_ready(&format!("http://{}", self.layout.agents[i].0)).await
    }
}

async fn measure(c: &mut ProcCluster<'_>, o: &LocalOptions, sc: &Scenario, store: Store) -> anyhow::Result<RunReport> {
    let mut targets = Vec::new();
    for &size in &sc.blobs {
        let data = random_blob(size, rand::random());
        let target = Target::generated(&data);
        std::fs::write(c.root.join("backend").join("sha256").join(target.digest.hex()), &data)?;
        targets.push(target);
    }
    let digests = Target::digests(&targets);
    if !o.cold_origin {
        crate::pull::warm_origins(&c.http, &format!("http://{}", c.layout.agents[0].0), &digests).await?;
    }
    if o.verbose {
        println!("{}", crate::modes::placed_line(digests.len(), o.cold_origin));
    }
    let cpu0 = c.procs.cpu_secs();
    let written0 = agents_metric(c, STORE_WRITE_SECONDS).await;
    let read_back0 = agents_metric(c, DIGEST_READ_BACK).await;
    let (agents, timeline) = drive(c, o.agents, &targets, sc, &o.drive_options(Duration::from_millis(250))).await?;
    let cpu1 = c.procs.cpu_secs();
    let written = agents_metric(c, STORE_WRITE_SECONDS).await - written0;
    let read_back = (agents_metric(c, DIGEST_READ_BACK).await - read_back0) as u64;
    let mut origin_uploaded = 0;
    for (h, _) in &c.layout.origins {
        origin_uploaded += metric(&c.http, *h, "shoal_swarm_piece_bytes_sent_total").await.unwrap_or(0);
    }
    let rss: Vec<(String, u64)> = c.procs.peak_rss();
    let max_agent = rss.iter().filter(|(n, _)| n.starts_with("agent")).map(|(_, r)| *r).max();
    let mut resources = Resources::between(
        cpu0,
        cpu1,
        (!rss.is_empty()).then(|| rss.iter().map(|(_, r)| r).sum()),
        max_agent,
        format!(
            "the cluster's processes (tracker, origins, agents), not the harness; CPU during the swarm pull{}; peak RSS is the sum of each process's lifetime peak",
            if sc.churn.is_some() { " (a killed process's CPU is not counted)" } else { "" }
        ),
    );
    resources.store_write_secs = Some(written);
    resources.digest_read_back = Some(read_back);
    let baseline = match o.baseline {
        None => None,
        Some(mode) => {
            let bopts = BaselineOptions {
                mode,
                n: agents.len(),
                // Emulated in every mode: in netns mode the harness's traffic is exempt from tc.
                origin_rate: o.origin_rate,
                agent_rate: o.agent_rate,
                timeout: o.timeout,
                progress: o.progress,
            };
            let url = baseline_origin_url(c);
            Some(baseline::measure_all(&url, &targets, &bopts).await?)
        }
    };
    let spec = RunSpec {
        scenario: sc.describe(o.agents),
        mode: if c.launch.limiter() { "processes" } else { "netns" }.into(),
        n_origins: o.origins,
        blob_bytes: sc.total_bytes(),
        digest: crate::modes::digest_label(&digests),
        caps: Caps { agent_rate: o.agent_rate, origin_rate: o.origin_rate, seeding_origins: o.origins.clamp(1, 3) },
        store,
        scenario_info: Some(sc.info()),
        link_emulation: if c.launch.limiter() { LINK_AGENT_LIMITER.into() } else { crate::netns::LINK_TC.into() },
    };
    Ok(RunReport::new(spec, agents, origin_uploaded, timeline, resources, baseline))
}

/// Where the baseline fetches from: the first origin's HTTP API.
fn baseline_origin_url(c: &ProcCluster<'_>) -> String {
    format!("http://{}", c.layout.origins[0].0)
}

/// An agent's byte counts for one blob, from its `/debug/blobs/<digest>`.
async fn debug_stats(http: &reqwest::Client, h: SocketAddr, d: Digest) -> anyhow::Result<Stats> {
    let resp = http.get(format!("http://{h}/debug/blobs/{d}")).send().await?;
    anyhow::ensure!(resp.status().is_success(), "{}", resp.status());
    Ok(resp.json().await?)
}

/// Sums the samples of counter `name` in a node's `/metrics`.
async fn metric(http: &reqwest::Client, h: SocketAddr, name: &str) -> anyhow::Result<u64> {
    Ok(metric_value(http, h, name).await? as u64)
}

/// [`metric`] without rounding, for counters of seconds.
async fn metric_value(http: &reqwest::Client, h: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = http.get(format!("http://{h}/metrics")).send().await?.text().await?;
    Ok(metric_samples(&text, name, None))
}

/// Counter `name` summed over the agents' `/metrics` (an agent that does not answer counts
/// 0).
async fn agents_metric(c: &ProcCluster<'_>, name: &str) -> f64 {
    let mut total = 0.0;
    for (h, _) in &c.layout.agents {
        total += metric_value(&c.http, *h, name).await.unwrap_or(0.0);
    }
    total
}

/// Sums every sample of `name` (any labels) in Prometheus text format.
pub fn sum_metric(text: &str, name: &str) -> u64 {
    metric_samples(text, name, None) as u64
}

/// Sums the samples of counter `name` whose label `key` is `value`, in Prometheus text format.
pub fn labelled_metric(text: &str, name: &str, key: &str, value: &str) -> u64 {
    metric_samples(text, name, Some(&format!("{key}=\"{value}\""))) as u64
}

/// Sums the samples of `name`, all of them or those carrying the label pair `want`
/// (`key="value"`).
fn metric_samples(text: &str, name: &str, want: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            match want {
                None if !(rest.starts_with('{') || rest.starts_with(' ')) => return None,
                None => {}
                Some(want) => {
                    let (labels, _) = rest.strip_prefix('{')?.split_once('}')?;
                    labels.split(',').any(|kv| kv.trim() == want).then_some(())?;
                }
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum::<f64>()
}

/// Polls `<base>/ready` until it answers 200, for at most [`READY_TIMEOUT`].
async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{base} was not ready within {READY_TIMEOUT:?}")
}

/// The children, by name.
#[derive(Default)]
struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    async fn spawn(
        &mut self,
        bin_dir: &Path,
        bin: &str,
        name: &str,
        root: &Path,
        cfg: &serde_json::Value,
        netns: Option<&str>,
    ) -> anyhow::Result<()> {
        let cfg_path = root.join(format!("{name}.yaml"));
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(cfg)?)?;
        // Appended to, so a restarted node's log follows its first life's.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join(format!("{name}.log")))?;
        let mut cmd = match netns {
            // `ip netns exec` execs the binary, so the child's pid is the node's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin_dir.join(bin));
                c
            }
            None => Command::new(bin_dir.join(bin)),
        };
        let child = cmd
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin} for {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Summed (user, system) CPU-seconds of the children so far.
    fn cpu_secs(&self) -> Option<(f64, f64)> {
        let mut total = (0.0, 0.0);
        for (_, c) in &self.children {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id()?)).ok()?;
            let (u, s) = report::parse_stat_times(&stat)?;
            total = (total.0 + u, total.1 + s);
        }
        Some(total)
    }

    /// Each child's peak RSS (`VmHWM`).
    fn peak_rss(&self) -> Vec<(String, u64)> {
        self.children
            .iter()
            .filter_map(|(n, c)| {
                let status = std::fs::read_to_string(format!("/proc/{}/status", c.id()?)).ok()?;
                Some((n.clone(), report::proc_kib(&status, "VmHWM:")?))
            })
            .collect()
    }

    /// SIGKILL to the child called `name` (by its pid), waited for, and forgotten.
    async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let k = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
        let (_, mut c) = self.children.remove(k);
        c.start_kill()?;
        tokio::time::timeout(STOP_TIMEOUT, c.wait())
            .await
            .map_err(|_| anyhow::anyhow!("{name} did not exit within {STOP_TIMEOUT:?} of SIGKILL"))??;
        Ok(())
    }

    /// SIGTERM to each child by pid, then a bounded wait, then SIGKILL for what is left.
    async fn stop(&mut self) {
        for (_, c) in &self.children {
            if let Some(pid) = c.id() {
                let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            }
        }
        for (name, c) in &mut self.children {
            if tokio::time::timeout(STOP_TIMEOUT, c.wait()).await.is_err() {
                eprintln!("{name} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it");
                let _ = c.kill().await;
            }
        }
        self.children.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_label_sets() {
        let text = "# HELP shoal_swarm_piece_bytes_sent_total x\n\
                    shoal_swarm_piece_bytes_sent_total{peer=\"a\"} 100\n\
                    shoal_swarm_piece_bytes_sent_total{peer=\"b\"} 23\n\
                    shoal_swarm_piece_bytes_sent_total_other 5\n";
        assert_eq!(sum_metric(text, "shoal_swarm_piece_bytes_sent_total"), 123);
        assert_eq!(sum_metric("x 1\n", "y"), 0);
    }

    #[test]
    fn labelled_metric_picks_one_source() {
        const RECEIVED: &str = "shoal_swarm_piece_bytes_received_total";
        let text = "# TYPE shoal_swarm_piece_bytes_received_total counter\n\
                    shoal_swarm_piece_bytes_received_total{source=\"origin\"} 100\n\
                    shoal_swarm_piece_bytes_received_total{source=\"peer\"} 23\n";
        assert_eq!(labelled_metric(text, RECEIVED, "source", "origin"), 100);
        assert_eq!(labelled_metric(text, RECEIVED, "source", "peer"), 23);
        assert_eq!(labelled_metric(text, RECEIVED, "source", "other"), 0);
    }

    #[test]
    fn layout_addresses_are_distinct() {
        let l = Layout::new(2, 300);
        let mut ips: Vec<IpAddr> =
            std::iter::once(l.tracker.ip()).chain(l.origins.iter().chain(&l.agents).map(|a| a.0.ip())).collect();
        let n = ips.len();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), n);
        assert!(ips.iter().all(|ip| ip.is_loopback()));
    }
}
