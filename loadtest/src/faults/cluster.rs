//! The fault matrix's cluster: the real `shoal-tracker`, `shoal-origin` and `shoal-agent`
//! binaries, one process per node, as in [`crate::processes`], plus what the faults need:
//! several trackers, a ring of origins with replicas, an S3 backend behind an address the
//! harness chooses, an agent's store placed elsewhere (a small tmpfs), SIGKILL and restart of
//! any node, an origin's store wiped, and optionally every node in its own network namespace
//! ([`crate::netns::Lab`]) so a link can be cut.
//!
//! Nodes live on 127.0.220.x (the tracker .1, .2, ..., then the origins, then the agents) on
//! fixed ports, a range neither the in-process harness nor `--mode processes` uses. Each
//! node's log is `<root>/<name>.log`, appended across restarts, so a panic in any life of any
//! node is found by [`FaultCluster::panics`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use shoal_core::Digest;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::netns::Lab;
use crate::scenario::Stats;

const TRACKER_PORT: u16 = 7600;
const ORIGIN_PORTS: (u16, u16) = (7800, 7801);
const AGENT_PORTS: (u16, u16) = (7700, 7701);
/// Hard-coded: how long a node may take to answer `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard-coded: how long a node may take to exit after a signal.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the origins' blobs are.
#[derive(Clone, Debug)]
pub enum BackendSpec {
    /// A directory under the run's root (`backend/sha256/<hex>`).
    Fs,
    /// An S3 bucket at `endpoint` (s3s-fs, or the fault proxy in front of it), flat layout.
    S3 { endpoint: String, bucket: String },
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub trackers: usize,
    pub origins: usize,
    /// Owners per blob on the origin ring.
    pub replicas: usize,
    pub agents: usize,
    pub backend: BackendSpec,
    /// Per-agent link cap, bytes/s, by the agents' own limiters (ignored in a [`Lab`], where
    /// `tc` caps the links).
    pub agent_rate: Option<u64>,
    /// Per-origin upload cap, bytes/s.
    pub origin_rate: Option<u64>,
    /// Agents whose store is elsewhere than `<root>/agent-<i>`.
    pub agent_store: Vec<(usize, PathBuf)>,
    /// Swarm settings for every node, as `--swarm` gives them.
    pub swarm: Vec<(String, serde_json::Value)>,
    /// The agents' `download_timeout`.
    pub download_timeout: Duration,
}

/// A node's place and how to start it again.
struct NodeProc {
    name: String,
    bin: &'static str,
    cfg: serde_json::Value,
    child: Option<Child>,
}

/// A running cluster of node processes.
pub struct FaultCluster {
    pub root: PathBuf,
    bin_dir: PathBuf,
    nodes: Vec<NodeProc>,
    pub trackers: Vec<SocketAddr>,
    /// (http, peer) per origin.
    pub origins: Vec<(SocketAddr, SocketAddr)>,
    /// (http, peer) per agent.
    pub agents: Vec<(SocketAddr, SocketAddr)>,
    pub ring: shoal_core::ring::Ring,
    lab: Option<Lab>,
    http: reqwest::Client,
}

/// The loopback address of node `k` of a fault run: 127.0.220.(k+1).
fn fault_ip(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 220 + (k / 250) as u8, (k % 250 + 1) as u8))
}

impl FaultCluster {
    /// Starts every node of `spec` under `root` (configs, stores and logs go there) and waits
    /// until each is ready. With `lab`, each node runs in its namespace (one tracker only).
    pub async fn start(spec: &ClusterSpec, root: &Path, lab: Option<Lab>) -> anyhow::Result<FaultCluster> {
        Self::start_with(spec, root, lab, &[]).await
    }

    /// [`FaultCluster::start`], with `agent_set` applied to every agent's config: dotted
    /// paths (`store.max_size`) and their values.
    pub async fn start_with(
        spec: &ClusterSpec,
        root: &Path,
        lab: Option<Lab>,
        agent_set: &[(String, serde_json::Value)],
    ) -> anyhow::Result<FaultCluster> {
        let bin_dir = crate::processes::binaries_dir()?;
        let (t, o) = (spec.trackers, spec.origins);
        anyhow::ensure!(t >= 1 && o >= 1 && spec.replicas >= 1, "a cluster needs a tracker and an origin");
        let ip = |k: usize| match &lab {
            // The lab numbers its nodes tracker, origins, agents from .2 on.
            Some(l) => l.ip(2 + k),
            None => fault_ip(k),
        };
        anyhow::ensure!(lab.is_none() || t == 1, "a network-namespace run has one tracker");
        let trackers: Vec<SocketAddr> = (0..t).map(|k| SocketAddr::new(ip(k), TRACKER_PORT)).collect();
        let at = |k: usize, (h, p): (u16, u16)| (SocketAddr::new(ip(k), h), SocketAddr::new(ip(k), p));
        let origins: Vec<_> = (0..o).map(|k| at(t + k, ORIGIN_PORTS)).collect();
        let agents: Vec<_> = (0..spec.agents).map(|k| at(t + o + k, AGENT_PORTS)).collect();
        let origin_nodes: Vec<shoal_core::ring::OriginNode> = origins
            .iter()
            .enumerate()
            .map(|(i, (h, p))| shoal_core::ring::OriginNode {
                id: format!("origin-{i}"),
                http: format!("http://{h}"),
                peer: *p,
            })
            .collect();
        let ring = shoal_core::ring::Ring::new(origin_nodes.clone(), spec.replicas)?;
        let origin_list = serde_json::to_value(&origin_nodes)?;
        let tracker_urls: Vec<String> = trackers.iter().map(|a| format!("http://{a}")).collect();
        let swarm = |store: &Path, rate_out: Option<u64>, rate_in: Option<u64>| {
            let mut s = json!({
                "store_dir": store,
                "trackers": tracker_urls,
                "seed_announce_interval": "2s",
                "peer_networks": crate::processes::lab_networks(),
            });
            if lab.is_none() {
                if let Some(r) = rate_out {
                    s["egress_rate"] = json!(r.to_string());
                }
                if let Some(r) = rate_in {
                    s["ingress_rate"] = json!(r.to_string());
                }
            }
            for (k, v) in &spec.swarm {
                s[k.as_str()] = v.clone();
            }
            s
        };
        let mut nodes = Vec::new();
        for (k, a) in trackers.iter().enumerate() {
            let cfg = json!({
                "listen": a.to_string(),
                "origins": origin_list,
                "origin_replicas": spec.replicas,
                "announce_interval": "1s",
                "peer_ttl": "10s",
                "trusted_networks": crate::processes::trusted_networks(),
            });
            nodes.push(NodeProc { name: format!("tracker-{k}"), bin: "shoal-tracker", cfg, child: None });
        }
        let backend = match &spec.backend {
            BackendSpec::Fs => {
                let dir = root.join("backend");
                std::fs::create_dir_all(dir.join("sha256"))?;
                json!({ "type": "fs", "root": dir, "layout": "flat" })
            }
            BackendSpec::S3 { endpoint, bucket } => json!({
                "type": "s3",
                "bucket": bucket,
                "endpoint_url": endpoint,
                "access_key_id": crate::s3::ACCESS_KEY,
                "secret_access_key": crate::s3::SECRET_KEY,
                "layout": "flat",
            }),
        };
        for (i, (h, p)) in origins.iter().enumerate() {
            let mut s = swarm(&root.join(format!("origin-{i}")), spec.origin_rate, None);
            s.as_object_mut().map(|m| m.remove("ingress_rate"));
            let cfg = json!({
                "listen": h.to_string(),
                "peer_listen": p.to_string(),
                "id": format!("origin-{i}"),
                "origins": origin_list,
                "origin_replicas": spec.replicas,
                "backend": backend,
                "metainfo_wait": "500ms",
                "swarm": s,
            });
            nodes.push(NodeProc { name: format!("origin-{i}"), bin: "shoal-origin", cfg, child: None });
        }
        for (i, (h, p)) in agents.iter().enumerate() {
            let store = spec
                .agent_store
                .iter()
                .find(|(k, _)| *k == i)
                .map_or_else(|| root.join(format!("agent-{i}")), |(_, p)| p.clone());
            let mut s = swarm(&store, spec.agent_rate, spec.agent_rate);
            s["download_timeout"] = json!(format!("{}s", spec.download_timeout.as_secs().max(1)));
            let mut cfg = json!({
                "listen": h.to_string(),
                "peer_listen": p.to_string(),
                "origins": origin_list,
                "origin_replicas": spec.replicas,
                "api_networks": crate::processes::lab_networks(),
                "swarm": s,
            });
            for (path, v) in agent_set {
                set_path(&mut cfg, path, v.clone());
            }
            nodes.push(NodeProc { name: format!("agent-{i}"), bin: "shoal-agent", cfg, child: None });
        }
        let mut c = FaultCluster {
            root: root.to_path_buf(),
            bin_dir,
            nodes,
            trackers,
            origins,
            agents,
            ring,
            lab,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        };
        // A port another cluster on this machine holds would make its process answer for ours.
        if c.lab.is_none() {
            for n in &c.nodes {
                for key in ["listen", "peer_listen"] {
                    if let Some(addr) =
                        n.cfg.get(key).and_then(|v| v.as_str()).and_then(|a| a.parse::<SocketAddr>().ok())
                    {
                        std::net::TcpListener::bind(addr).with_context(|| {
                            format!("{}'s {key} {addr} is taken: is another cluster (a soak, say) running?", n.name)
                        })?;
                    }
                }
            }
        }
        let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
        for name in &names {
            c.spawn(name).await?;
            // Trackers first, so the origins' first announces land.
            if name.starts_with("tracker") {
                c.wait_ready(name).await?;
            }
        }
        for name in &names {
            c.wait_ready(name).await?;
        }
        Ok(c)
    }

    /// The lab the nodes run in, if any.
    pub fn lab(&self) -> Option<&Lab> {
        self.lab.as_ref()
    }

    fn node(&mut self, name: &str) -> anyhow::Result<&mut NodeProc> {
        self.nodes.iter_mut().find(|n| n.name == name).ok_or_else(|| anyhow::anyhow!("no node {name}"))
    }

    /// The base URL of a node's HTTP API (a tracker's only API).
    pub fn url(&self, name: &str) -> anyhow::Result<String> {
        let idx = |p: &str| name.strip_prefix(p).and_then(|k| k.parse::<usize>().ok());
        let addr = if let Some(k) = idx("tracker-") {
            self.trackers.get(k).copied()
        } else if let Some(k) = idx("origin-") {
            self.origins.get(k).map(|a| a.0)
        } else {
            idx("agent-").and_then(|k| self.agents.get(k)).map(|a| a.0)
        };
        addr.map(|a| format!("http://{a}")).ok_or_else(|| anyhow::anyhow!("no node {name}"))
    }

    /// Agent `i`'s base URL.
    pub fn agent_url(&self, i: usize) -> String {
        format!("http://{}", self.agents[i].0)
    }

    /// Starts node `name` (again) on its config and store.
    pub async fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        let netns = self.netns_of(name);
        let (bin_dir, root) = (self.bin_dir.clone(), self.root.clone());
        let node = self.node(name)?;
        anyhow::ensure!(node.child.is_none(), "{name} is already running");
        let cfg_path = root.join(format!("{name}.yaml"));
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&node.cfg)?)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join(format!("{name}.log")))?;
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin_dir.join(node.bin));
                c
            }
            None => Command::new(bin_dir.join(node.bin)),
        };
        let child = cmd
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} for {name}", node.bin))?;
        node.child = Some(child);
        Ok(())
    }

    fn netns_of(&self, name: &str) -> Option<String> {
        let lab = self.lab.as_ref()?;
        let short = if name.starts_with("tracker") {
            "t".to_string()
        } else if let Some(k) = name.strip_prefix("origin-") {
            format!("o{k}")
        } else {
            format!("a{}", name.strip_prefix("agent-")?)
        };
        Some(lab.ns(&short))
    }

    /// Polls `/ready` of node `name` until it answers 200.
    pub async fn wait_ready(&self, name: &str) -> anyhow::Result<()> {
        let url = format!("{}/ready", self.url(name)?);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(&url).timeout(Duration::from_secs(2)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("{name} was not ready within {READY_TIMEOUT:?}; its log is {}", self.log_path(name).display())
    }

    /// Starts node `name` again and waits until it is ready.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.spawn(name).await?;
        self.wait_ready(name).await
    }

    /// SIGKILL to node `name`, waited for.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let node = self.node(name)?;
        let mut child = node.child.take().ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
        child.start_kill()?;
        tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("{name} did not exit within {STOP_TIMEOUT:?} of SIGKILL"))??;
        Ok(())
    }

    /// Whether node `name` is running.
    pub fn running(&self, name: &str) -> bool {
        self.nodes.iter().any(|n| n.name == name && n.child.is_some())
    }

    /// The pid of node `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.nodes.iter().find(|n| n.name == name)?.child.as_ref()?.id()
    }

    /// Every node's name, in start order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Node `name`'s store directory.
    pub fn store_dir(&self, name: &str) -> Option<PathBuf> {
        let n = self.nodes.iter().find(|n| n.name == name)?;
        n.cfg["swarm"]["store_dir"].as_str().map(PathBuf::from)
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.log"))
    }

    /// What agent `i` has received and sent for `digest` since it (re)started.
    pub async fn stats(&self, i: usize, digest: &Digest) -> Stats {
        let url = format!("{}/debug/blobs/{digest}", self.agent_url(i));
        match self.http.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            _ => Stats::default(),
        }
    }

    /// The sum of counter `name` in node `node`'s `/metrics`, if it answers.
    pub async fn metric(&self, node: &str, name: &str) -> Option<u64> {
        let text = self.http.get(format!("{}/metrics", self.url(node).ok()?)).send().await.ok()?.text().await.ok()?;
        Some(crate::processes::sum_metric(&text, name))
    }

    /// The sum of counter `name`'s samples labelled `key="value"` in node `node`'s `/metrics`.
    pub async fn labelled_metric(&self, node: &str, name: &str, key: &str, value: &str) -> Option<u64> {
        let text = self.http.get(format!("{}/metrics", self.url(node).ok()?)).send().await.ok()?.text().await.ok()?;
        Some(crate::processes::labelled_metric(&text, name, key, value))
    }

    /// The lines of every node's log that report a panic.
    pub fn panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(self.log_path(&n.name)).unwrap_or_default();
            out.extend(text.lines().filter(|l| l.contains("panicked")).map(|l| format!("{}: {l}", n.name)));
        }
        out
    }

    /// SIGTERM to every node, then SIGKILL to what lingers.
    pub async fn stop(&mut self) {
        for n in &self.nodes {
            if let Some(pid) = n.child.as_ref().and_then(Child::id) {
                let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take()
                && tokio::time::timeout(STOP_TIMEOUT, c.wait()).await.is_err()
            {
                let _ = c.kill().await;
            }
        }
    }

    /// Stops the nodes, then removes the lab's namespaces and links.
    pub async fn shutdown(mut self) {
        self.stop().await;
        drop(self.lab.take());
    }
}

/// Sets the value at a dotted `path` of a JSON object, making the objects on the way.
fn set_path(v: &mut serde_json::Value, path: &str, value: serde_json::Value) {
    let mut cur = v;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let obj = cur.as_object_mut().expect("made an object above");
        if parts.peek().is_none() {
            obj.insert(p.to_string(), value);
            return;
        }
        cur = obj.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_set_nested_keys() {
        let mut v = json!({ "swarm": { "store_dir": "/x" } });
        set_path(&mut v, "swarm.pipeline_depth", json!(4));
        set_path(&mut v, "store.max_size", json!("48MiB"));
        assert_eq!(v, json!({ "swarm": { "store_dir": "/x", "pipeline_depth": 4 }, "store": { "max_size": "48MiB" } }));
    }

    #[test]
    fn fault_addresses_are_loopback_and_distinct() {
        let ips: std::collections::HashSet<IpAddr> = (0..300).map(fault_ip).collect();
        assert_eq!(ips.len(), 300);
        assert!(ips.iter().all(IpAddr::is_loopback));
    }
}
