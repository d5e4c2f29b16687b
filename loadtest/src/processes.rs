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
use crate::pull::{AgentPull, Sample};
use crate::report::{self, Caps, Resources, RunReport, RunSpec, Store};
use crate::run::{LocalOptions, default_store_base};

/// The binaries this mode starts.
pub const BINARIES: [&str; 3] = ["shoal-tracker", "shoal-origin", "shoal-agent"];

/// Runs the scenario with one process per node.
pub async fn run_processes(o: &LocalOptions) -> anyhow::Result<RunReport> {
    let bin_dir = binaries_dir()?;
    let base = o.dir.clone().unwrap_or_else(default_store_base);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new().prefix("shoal-procs-").tempdir_in(&base)?;
    let root = tmp.path().to_path_buf();
    let store = Store::detect(&root);
    if o.verbose {
        println!(
            "shoal processes: 1 tracker, {} origin(s), {} agents as separate processes from {}, blob {} ({}), stores and logs in {} ({})",
            o.origins,
            o.agents,
            bin_dir.display(),
            shoal_runtime::ByteSize(o.size),
            o.size,
            root.display(),
            store.kind
        );
    }
    let mut procs = Procs::default();
    let res = async {
        let layout = Layout::new(o.origins, o.agents);
        layout.start(&bin_dir, &root, o, &mut procs).await?;
        measure(&layout, &root, o, store, &procs).await
    }
    .await;
    procs.stop().await;
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
struct Layout {
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
        let at = |k: usize, (h, p): (u16, u16)| (SocketAddr::new(proc_ip(k), h), SocketAddr::new(proc_ip(k), p));
        Layout {
            tracker: SocketAddr::new(proc_ip(0), TRACKER_PORT),
            origins: (0..n_origins).map(|i| at(1 + i, ORIGIN_PORTS)).collect(),
            agents: (0..n_agents).map(|i| at(1 + n_origins + i, AGENT_PORTS)).collect(),
        }
    }

    fn origin_list(&self) -> serde_json::Value {
        self.origins
            .iter()
            .enumerate()
            .map(|(i, (h, p))| json!({ "id": format!("origin-{i}"), "http": format!("http://{h}"), "peer": p.to_string() }))
            .collect()
    }

    /// Writes the configs and starts every node, waiting until each is ready.
    async fn start(&self, bin: &Path, root: &Path, o: &LocalOptions, procs: &mut Procs) -> anyhow::Result<()> {
        let replicas = o.origins.clamp(1, 3);
        let trackers = json!([format!("http://{}", self.tracker)]);
        let rate = |r: Option<u64>| r.map_or(serde_json::Value::Null, |r| json!(r.to_string()));
        let tracker = json!({
            "listen": self.tracker.to_string(),
            "origins": self.origin_list(),
            "origin_replicas": replicas,
            "announce_interval": "1s",
            "peer_ttl": "10s",
        });
        procs.spawn(bin, "shoal-tracker", "tracker", root, &tracker).await?;
        wait_ready(&format!("http://{}", self.tracker)).await.context("tracker")?;
        let backend = root.join("backend");
        std::fs::create_dir_all(backend.join("sha256"))?;
        for (i, (h, p)) in self.origins.iter().enumerate() {
            let mut swarm = json!({
                "store_dir": root.join(format!("origin-{i}")),
                "trackers": trackers,
                "seed_announce_interval": "2s",
            });
            if let Some(r) = o.origin_rate {
                swarm["egress_rate"] = rate(Some(r));
            }
            let cfg = json!({
                "listen": h.to_string(),
                "peer_listen": p.to_string(),
                "id": format!("origin-{i}"),
                "origins": self.origin_list(),
                "origin_replicas": replicas,
                "backend": { "type": "fs", "root": backend, "layout": "flat" },
                "metainfo_wait": "500ms",
                "swarm": swarm,
            });
            procs.spawn(bin, "shoal-origin", &format!("origin-{i}"), root, &cfg).await?;
        }
        for (i, (h, p)) in self.agents.iter().enumerate() {
            let mut swarm = json!({
                "store_dir": root.join(format!("agent-{i}")),
                "trackers": trackers,
                "seed_announce_interval": "2s",
                "download_timeout": format!("{}s", o.timeout.as_secs().max(1)),
            });
            if let Some(r) = o.agent_rate {
                swarm["egress_rate"] = rate(Some(r));
                swarm["ingress_rate"] = rate(Some(r));
            }
            let cfg = json!({
                "listen": h.to_string(),
                "peer_listen": p.to_string(),
                "origins": self.origin_list(),
                "origin_replicas": replicas,
                "swarm": swarm,
            });
            procs.spawn(bin, "shoal-agent", &format!("agent-{i}"), root, &cfg).await?;
        }
        for (h, _) in self.origins.iter().chain(&self.agents) {
            wait_ready(&format!("http://{h}")).await?;
        }
        Ok(())
    }
}

async fn measure(l: &Layout, root: &Path, o: &LocalOptions, store: Store, procs: &Procs) -> anyhow::Result<RunReport> {
    let data = random_blob(o.size, rand::random());
    let digest = Digest::of(&data);
    std::fs::write(root.join("backend").join("sha256").join(digest.hex()), &data)?;
    drop(data);
    if o.verbose {
        println!("blob {digest} placed in the origin backend; every agent pulls it now\n");
    }
    let http = reqwest::Client::new();
    let cpu0 = procs.cpu_secs();
    let start = Instant::now();
    let n = l.agents.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let pulls = futures::future::join_all(l.agents.iter().enumerate().map(|(i, (h, _))| {
        let (http, done) = (&http, &done);
        async move {
            let url = format!("http://{h}/blobs/{digest}");
            let (bytes, got) = crate::pull::fetch_and_hash(http, &url, i).await?;
            let secs = start.elapsed().as_secs_f64();
            if o.progress {
                let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                eprintln!("[{k:>4}/{n}] agent {i} done in {secs:.3}s");
            }
            Ok::<_, anyhow::Error>((i, secs, bytes, got == digest))
        }
    }));
    // Sample delivered bytes from the agents' debug endpoints while the pulls run.
    let mut timeline = Vec::new();
    let mut pulls = std::pin::pin!(pulls);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = tokio::time::sleep(o.timeout);
    tokio::pin!(deadline);
    // Bounded by the deadline.
    let results = loop {
        tokio::select! {
            r = &mut pulls => break r,
            () = &mut deadline => anyhow::bail!("pull did not finish within {:?}", o.timeout),
            _ = tick.tick() => {
                let secs = start.elapsed().as_secs_f64();
                let mut delivered = 0;
                for (h, _) in &l.agents {
                    if let Ok(s) = debug_stats(&http, *h, digest).await {
                        delivered += s.from_origin + s.from_peers;
                    }
                }
                timeline.push(Sample { secs, delivered });
            }
        }
    };
    let cpu1 = procs.cpu_secs();
    let mut agents = Vec::new();
    for r in results {
        let (i, secs, bytes, verified) = r?;
        let s = debug_stats(&http, l.agents[i].0, digest).await.unwrap_or_default();
        agents.push(AgentPull {
            agent: i,
            secs,
            bytes,
            verified,
            from_origin: s.from_origin,
            from_peers: s.from_peers,
            uploaded: s.uploaded,
        });
    }
    let max_secs = agents.iter().map(|a| a.secs).fold(0.0, f64::max);
    timeline.push(Sample { secs: max_secs, delivered: agents.iter().map(|a| a.from_origin + a.from_peers).sum() });
    let mut origin_uploaded = 0;
    for (h, _) in &l.origins {
        origin_uploaded += metric(&http, *h, "shoal_swarm_piece_bytes_sent_total").await.unwrap_or(0);
    }
    let (user, sys) = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (Some(b.0 - a.0), Some(b.1 - a.1)),
        _ => (None, None),
    };
    let rss: Vec<(String, u64)> = procs.peak_rss();
    let max_agent = rss.iter().filter(|(n, _)| n.starts_with("agent")).map(|(_, r)| *r).max();
    let resources = Resources {
        cpu_secs: user.zip(sys).map(|(u, s)| u + s),
        user_secs: user,
        sys_secs: sys,
        peak_rss_bytes: (!rss.is_empty()).then(|| rss.iter().map(|(_, r)| r).sum()),
        max_agent_rss_bytes: max_agent,
        note: "the cluster's processes (tracker, origins, agents), not the harness; CPU during the swarm pull; peak RSS is the sum of each process's lifetime peak".into(),
    };
    let baseline = match o.baseline {
        None => None,
        Some(mode) => {
            let bopts = BaselineOptions {
                mode,
                n: agents.len(),
                origin_rate: o.origin_rate,
                agent_rate: o.agent_rate,
                timeout: o.timeout,
                progress: o.progress,
            };
            Some(baseline::measure(&format!("http://{}", l.origins[0].0), digest, &bopts).await?)
        }
    };
    let spec = RunSpec {
        scenario: "one blob to N agents".into(),
        mode: "processes".into(),
        n_origins: o.origins,
        blob_bytes: o.size,
        digest: digest.to_string(),
        caps: Caps { agent_rate: o.agent_rate, origin_rate: o.origin_rate, seeding_origins: o.origins.clamp(1, 3) },
        store,
    };
    Ok(RunReport::new(spec, agents, origin_uploaded, timeline, resources, baseline))
}

/// An agent's `/debug/blobs/<digest>` answer.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize)]
struct DebugStats {
    from_origin: u64,
    from_peers: u64,
    uploaded: u64,
}

async fn debug_stats(http: &reqwest::Client, h: SocketAddr, d: Digest) -> anyhow::Result<DebugStats> {
    let resp = http.get(format!("http://{h}/debug/blobs/{d}")).send().await?;
    anyhow::ensure!(resp.status().is_success(), "{}", resp.status());
    Ok(resp.json().await?)
}

/// Sums the samples of counter `name` in a node's `/metrics`.
async fn metric(http: &reqwest::Client, h: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let text = http.get(format!("http://{h}/metrics")).send().await?.text().await?;
    Ok(sum_metric(&text, name))
}

/// Sums every sample of `name` (any labels) in Prometheus text format.
pub fn sum_metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum::<f64>() as u64
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
    ) -> anyhow::Result<()> {
        let cfg_path = root.join(format!("{name}.yaml"));
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(cfg)?)?;
        let log = std::fs::File::create(root.join(format!("{name}.log")))?;
        let child = Command::new(bin_dir.join(bin))
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
