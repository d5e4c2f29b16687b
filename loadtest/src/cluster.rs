//! An in-process Shoal cluster: every node binds `127.0.0.x:0` on its own loopback address,
//! so each looks like a host; each node has its own Prometheus registry and store.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let mut c = shoal_loadtest::cluster::Cluster::builder().agents(10).start().await?;
//! # Ok(()) }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use shoal_core::ring::OriginNode;
use shoal_core::{Digest, MIB};
use shoal_runtime::tls::test_ca::TestCa;
use shoal_runtime::{ByteSize, Duration, TlsConfig};
use shoal_swarm::SwarmConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    pub agents: usize,
    pub origins: usize,
    /// Per-agent upload and download caps in bytes/s (link emulation).
    pub agent_rate: Option<u64>,
    /// Per-origin upload cap in bytes/s.
    pub origin_rate: Option<u64>,
    /// Directory for stores and the backend; a temporary one if `None`.
    pub root: Option<PathBuf>,
    /// Swarm settings every node starts from.
    pub swarm: SwarmConfig,
    /// The origins' backend; a local directory under the root if `None`.
    pub backend: Option<shoal_origin::backend::BackendConfig>,
    /// One address for every node (each on its own ports), such as `::1`; `None` gives each
    /// node its own 127.0.0.0/8 address ([`host_ip`]).
    pub ip: Option<IpAddr>,
    /// Mutual TLS on every link between nodes, with certificates from a CA made for the run
    /// ([`Cluster::ca`]). The agents' APIs stay plain HTTP, as in a deployment.
    pub tls: bool,
    /// Topology zones of the agents: agent `i` is in [`zone_name`]`(i % zones)` (its
    /// `swarm.zone`); 0 sets none. Origins are in no zone.
    pub zones: usize,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            agents: 3,
            origins: 1,
            agent_rate: None,
            origin_rate: None,
            root: None,
            swarm: test_swarm_config(),
            backend: None,
            ip: None,
            tls: false,
            zones: 0,
        }
    }
}

/// Swarm settings suited to a cluster on one machine: short announce and timeouts, and no
/// free-space floor, since every node shares one filesystem whose fill is not the test's.
pub fn test_swarm_config() -> SwarmConfig {
    SwarmConfig {
        seed_announce_interval: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(5),
        download_timeout: Duration::from_secs(600),
        store: shoal_swarm::StoreConfig {
            min_free: shoal_runtime::SizeLimit::Bytes(ByteSize(0)),
            ..shoal_swarm::StoreConfig::default()
        },
        ..SwarmConfig::default()
    }
}

impl ClusterBuilder {
    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }
    pub fn origins(mut self, n: usize) -> Self {
        self.origins = n;
        self
    }
    pub fn agent_rate(mut self, r: Option<u64>) -> Self {
        self.agent_rate = r;
        self
    }
    pub fn origin_rate(mut self, r: Option<u64>) -> Self {
        self.origin_rate = r;
        self
    }
    pub fn root(mut self, p: PathBuf) -> Self {
        self.root = Some(p);
        self
    }
    pub fn backend(mut self, b: shoal_origin::backend::BackendConfig) -> Self {
        self.backend = Some(b);
        self
    }
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    pub fn zones(mut self, n: usize) -> Self {
        self.zones = n;
        self
    }

    pub fn swarm(mut self, s: SwarmConfig) -> Self {
        self.swarm = s;
        self
    }

    pub async fn start(self) -> anyhow::Result<Cluster> {
        Cluster::start(self).await
    }
}

/// A running node's handle.
pub struct Node<T> {
    pub handle: T,
    pub registry: prometheus::Registry,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub struct Cluster {
    pub builder: ClusterBuilder,
    pub tracker: shoal_tracker::Tracker,
    pub origins: Vec<Node<shoal_origin::Origin>>,
    pub origin_nodes: Vec<OriginNode>,
    /// `None` while an agent is stopped.
    pub agents: Vec<Option<Node<shoal_agent::Agent>>>,
    /// Each agent's HTTP and peer addresses, which a restart binds again if they are free (as
    /// a host's agent comes back on its ports).
    agent_addrs: Vec<Option<(SocketAddr, SocketAddr)>>,
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    http: reqwest::Client,
    /// The run's CA, with `tls`.
    pub ca: Option<TestCa>,
}

/// The loopback address of host `k`: 127.0.0.(k+2) for small `k`, then on into 127.0.x.y;
/// never 127.0.0.1.
pub fn host_ip(k: usize) -> IpAddr {
    let n = k as u32 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250 + 1) as u8))
}

async fn bind(ip: IpAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(ip, 0)).await.with_context(|| format!("binding {ip}:0"))
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    async fn start(b: ClusterBuilder) -> anyhow::Result<Cluster> {
        let (root, tmp) = match &b.root {
            Some(p) => (p.clone(), None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(root.join("backend"))?;
        let ca = b.tls.then(|| TestCa::new("shoal load test"));
        let tls_for = |name: &str| -> anyhow::Result<Option<TlsConfig>> {
            let Some(ca) = &ca else { return Ok(None) };
            Ok(Some(ca.write(&root.join("tls"), name, &ca.issue(&identity(name)))?))
        };
        let scheme = if b.tls { "https" } else { "http" };
        // Origins: bind first so the ring can name their addresses.
        let mut origin_listeners = Vec::new();
        let mut origin_nodes = Vec::new();
        for i in 0..b.origins {
            let ip = b.ip.unwrap_or(host_ip(1000 + i));
            let (http, peer) = (bind(ip).await?, bind(ip).await?);
            origin_nodes.push(OriginNode {
                id: format!("origin-{i}"),
                http: format!("{scheme}://{}", http.local_addr()?),
                peer: peer.local_addr()?,
            });
            origin_listeners.push(shoal_origin::Listeners { http, peer });
        }
        let tcfg = shoal_tracker::Config {
            origins: origin_nodes.clone(),
            origin_replicas: b.origins.clamp(1, 3),
            announce_interval: Duration::from_millis(1000),
            peer_ttl: Duration::from_secs(10),
            // Every node is on loopback and connects to the tracker from 127.0.0.1 (or ::1),
            // not from the address it announces; on one shared address, all of them are
            // one host.
            trusted_networks: shoal_core::net::Networks::loopback(),
            max_peers_per_host: if b.ip.is_some() { shoal_tracker::store::MAX_PEERS_PER_BLOB } else { 8 },
            tls: tls_for("tracker")?,
            ..shoal_tracker::Config::default()
        }
        .validate()?;
        let tracker =
            shoal_tracker::Tracker::start(tcfg, bind(b.ip.unwrap_or(host_ip(999))).await?, prometheus::Registry::new())
                .await?;
        let mut origins = Vec::new();
        for (i, l) in origin_listeners.into_iter().enumerate() {
            let cfg = shoal_origin::Config {
                id: format!("origin-{i}"),
                origins: origin_nodes.clone(),
                origin_replicas: b.origins.clamp(1, 3),
                backend: b.backend.clone().unwrap_or_else(|| {
                    shoal_origin::backend::BackendConfig::Fs(shoal_origin::backend::fs::FsConfig {
                        root: root.join("backend"),
                        ..Default::default()
                    })
                }),
                metainfo_wait: Duration::from_millis(500),
                tls: tls_for(&format!("origin-{i}"))?,
                swarm: SwarmConfig {
                    store_dir: root.join(format!("origin-{i}")),
                    trackers: vec![tracker.url()],
                    egress_rate: b.origin_rate.map(ByteSize),
                    ..b.swarm.clone()
                },
                ..shoal_origin::Config::default()
            }
            .validate()?;
            let registry = prometheus::Registry::new();
            let shutdown = CancellationToken::new();
            let (handle, serve) = shoal_origin::start(cfg, l, registry.clone(), shutdown.clone()).await?;
            origins.push(Node { handle, registry, shutdown, task: tokio::spawn(serve) });
        }
        let mut c = Cluster {
            tracker,
            origins,
            origin_nodes,
            agents: Vec::new(),
            agent_addrs: Vec::new(),
            root,
            _tmp: tmp,
            http: reqwest::Client::new(),
            builder: b,
            ca,
        };
        // The harness calls the origins as a node would.
        if let Some(cfg) = c.tls_config("harness")? {
            c.http = shoal_runtime::Tls::load(&cfg)?.http_client(reqwest::Client::builder()).build()?;
        }
        for i in 0..c.builder.agents {
            let node = c.start_agent_node(i, None).await?;
            c.agent_addrs.push(Some((node.handle.http_addr, node.handle.swarm.advertise_addr())));
            c.agents.push(Some(node));
        }
        Ok(c)
    }

    /// A TLS config for a node called `name`, its certificate from the run's CA naming
    /// [`identity`]`(name)`; `None` without `tls`. Written under `<root>/tls/`.
    pub fn tls_config(&self, name: &str) -> anyhow::Result<Option<TlsConfig>> {
        let Some(ca) = &self.ca else { return Ok(None) };
        Ok(Some(ca.write(&self.root.join("tls"), name, &ca.issue(&identity(name)))?))
    }

    /// The agent config for agent `i`.
    pub fn agent_config(&self, i: usize) -> shoal_agent::Config {
        let b = &self.builder;
        let tls = self.tls_config(&format!("agent-{i}")).expect("writing the agent's certificate");
        shoal_agent::Config {
            tls,
            origins: self.origin_nodes.clone(),
            origin_replicas: b.origins.clamp(1, 3),
            swarm: SwarmConfig {
                store_dir: self.root.join(format!("agent-{i}")),
                trackers: vec![self.tracker.url()],
                egress_rate: b.agent_rate.map(ByteSize),
                ingress_rate: b.agent_rate.map(ByteSize),
                zone: (b.zones > 0).then(|| zone_name(i % b.zones)),
                ..b.swarm.clone()
            },
            ..shoal_agent::Config::default()
        }
    }

    async fn start_agent_node(
        &self,
        i: usize,
        cfg: Option<shoal_agent::Config>,
    ) -> anyhow::Result<Node<shoal_agent::Agent>> {
        let cfg = cfg.unwrap_or_else(|| self.agent_config(i)).validate()?;
        let ip = self.builder.ip.unwrap_or(host_ip(i + 1));
        // The same ports as before, unless another process took one meanwhile.
        let again = match self.agent_addrs.get(i).copied().flatten() {
            Some((http, peer)) => match (TcpListener::bind(http).await, TcpListener::bind(peer).await) {
                (Ok(http), Ok(peer)) => Some(shoal_agent::Listeners { http, peer }),
                _ => None,
            },
            None => None,
        };
        let listeners = match again {
            Some(l) => l,
            None => shoal_agent::Listeners { http: bind(ip).await?, peer: bind(ip).await? },
        };
        let registry = prometheus::Registry::new();
        let shutdown = CancellationToken::new();
        let (handle, serve) = shoal_agent::start(cfg, listeners, registry.clone(), shutdown.clone()).await?;
        Ok(Node { handle, registry, shutdown, task: tokio::spawn(serve) })
    }

    /// Stops agent `i` (its store stays).
    pub async fn stop_agent(&mut self, i: usize) {
        if let Some(n) = self.agents[i].take() {
            n.shutdown.cancel();
            let _ = n.task.await;
        }
    }

    /// (Re)starts agent `i` on its store and its addresses, optionally with another config.
    pub async fn start_agent(&mut self, i: usize, cfg: Option<shoal_agent::Config>) -> anyhow::Result<()> {
        self.stop_agent(i).await;
        let node = self.start_agent_node(i, cfg).await?;
        self.agents[i] = Some(node);
        Ok(())
    }

    pub fn agent(&self, i: usize) -> &shoal_agent::Agent {
        &self.agents[i].as_ref().expect("agent is running").handle
    }

    /// The harness's HTTP client: with `tls`, it presents a certificate from the run's CA.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Puts a blob into the origins' backend directory (as an operator would into S3).
    pub fn put_backend_blob(&self, data: &[u8]) -> anyhow::Result<Digest> {
        let d = Digest::of(data);
        let dir = self.root.join("backend").join("sha256");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(d.hex()), data)?;
        Ok(d)
    }

    /// Fetches a blob through agent `i`'s HTTP API.
    pub async fn fetch(&self, i: usize, d: &Digest) -> anyhow::Result<Vec<u8>> {
        let url = format!("http://{}/blobs/{d}", self.agent(i).http_addr);
        let resp = self.http.get(&url).send().await?;
        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        Ok(resp.bytes().await?.to_vec())
    }

    /// Counter `name` summed over the live agents (`shoal_swarm_store_write_seconds_total`,
    /// `shoal_swarm_digest_read_back_bytes_total`).
    pub fn agents_counter(&self, name: &str) -> f64 {
        self.agents.iter().flatten().map(|a| counter_value(&a.registry, name, None)).sum()
    }

    /// Bytes all origins uploaded to peers.
    pub fn origin_uploaded(&self) -> u64 {
        self.origins.iter().map(|o| counter(&o.registry, "shoal_swarm_piece_bytes_sent_total", None)).sum()
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        for i in 0..self.agents.len() {
            self.stop_agent(i).await;
        }
        for o in self.origins.drain(..) {
            o.shutdown.cancel();
            let _ = o.task.await;
        }
        let _ = self.tracker.stop().await;
    }
}

/// The certificate identity the harness gives node `name`: `spiffe://shoal/<name>`.
pub fn identity(name: &str) -> String {
    format!("spiffe://shoal/{name}")
}

/// The name of zone `z` in a cluster with zones.
pub fn zone_name(z: usize) -> String {
    format!("zone-{z}")
}

/// Reads a counter (summing its label sets, or the one with `label` = value) from a registry.
pub fn counter(registry: &prometheus::Registry, name: &str, label: Option<(&str, &str)>) -> u64 {
    counter_value(registry, name, label) as u64
}

/// [`counter`] without rounding, for counters of seconds.
pub fn counter_value(registry: &prometheus::Registry, name: &str, label: Option<(&str, &str)>) -> f64 {
    let mut total = 0.0;
    for mf in registry.gather() {
        if mf.name() != name {
            continue;
        }
        for m in mf.get_metric() {
            if let Some((k, v)) = label
                && !m.get_label().iter().any(|l| l.name() == k && l.value() == v)
            {
                continue;
            }
            total += m.get_counter().get_value();
        }
    }
    total
}

/// A blob of `size` pseudo-random bytes.
pub fn random_blob(size: u64, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; size as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Convenience: `n` MiB.
pub const fn mib(n: u64) -> u64 {
    n * MIB
}
