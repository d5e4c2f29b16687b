//! One measured run of a scenario ([`crate::scenario`]; "one blob to N agents" by default) on
//! an in-process cluster, from an options struct to a [`RunReport`]; the CLI's `local` and
//! `bench` both call [`run`], which dispatches on the mode.
//!
//! Sequence: pick a store directory (tmpfs by default), start the cluster, put the scenario's
//! random blobs in the origin backend, reset the peak-RSS counter, drive the scenario (pulls,
//! late starts, kills and restarts, sampling delivered bytes), read CPU time, then optionally
//! measure the origin-only baseline (of the first blob, scaled to all of them by fetching each
//! in turn), then shut the cluster down. CPU and RSS cover the swarm pull only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_core::Digest;
use shoal_swarm::SwarmConfig;

use crate::baseline::{self, BaselineMode, BaselineOptions};
use crate::cluster::{Cluster, random_blob};
use crate::pull::Target;
use crate::report::{self, Caps, Resources, RunReport, RunSpec, Store};
use crate::scenario::{DriveOptions, Nodes, Scenario, Stats, drive};

/// How the cluster's nodes run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every node in this process ([`crate::cluster`]).
    #[default]
    InProcess,
    /// One process per node, the real binaries ([`crate::processes`]).
    Processes,
    /// One process per node, each in its own network namespace with `tc`-capped links
    /// ([`crate::netns`]); needs root.
    Netns,
    /// Agents already running elsewhere, driven through their HTTP APIs ([`crate::remote`]).
    Remote,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub mode: Mode,
    pub agents: usize,
    pub origins: usize,
    /// The blob size of the default scenario (one blob to N agents).
    pub size: u64,
    /// What to pull and when; `None` is one blob of `size` to every agent at once.
    pub scenario: Option<Scenario>,
    /// For [`Mode::Remote`]: where the agents and the blob are.
    pub remote: Option<crate::remote::RemoteOptions>,
    /// Per-agent link cap, bytes/s (both directions).
    pub agent_rate: Option<u64>,
    /// Per-origin upload cap, bytes/s.
    pub origin_rate: Option<u64>,
    /// Stores go in a fresh directory under this one; `None` picks /dev/shm (tmpfs) when
    /// present, else the system temp directory.
    pub dir: Option<PathBuf>,
    /// For the swarm pull, and separately for the baseline.
    pub timeout: Duration,
    /// Also measure the origin-only baseline.
    pub baseline: Option<BaselineMode>,
    /// A line per completed agent on stderr.
    pub progress: bool,
    /// Print the setup lines on stdout as the run goes.
    pub verbose: bool,
    /// Leave the origins cold: their backend fetch counts in the agents' times. By default
    /// they fetch the blobs before the clock starts, as T* assumes seeds that hold them.
    pub cold_origin: bool,
    /// Swarm settings for every node (agents and origins) over the harness's own, as
    /// `--swarm key=value` gives them ([`parse_swarm_setting`]).
    pub swarm: Vec<(String, serde_json::Value)>,
    /// Mutual TLS between the nodes, with a CA made for the run (in-process mode).
    pub tls: bool,
    /// Topology zones of the agents (in-process mode): agent `i` in zone `i % zones`; the
    /// report then gives the copies each zone received from other zones. 0: none.
    pub zones: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            mode: Mode::InProcess,
            agents: 10,
            origins: 1,
            size: 256 << 20,
            scenario: None,
            remote: None,
            agent_rate: None,
            origin_rate: None,
            dir: None,
            timeout: Duration::from_secs(600),
            baseline: None,
            progress: false,
            verbose: true,
            cold_origin: false,
            swarm: Vec::new(),
            tls: false,
            zones: 0,
        }
    }
}

impl LocalOptions {
    /// The scenario to run.
    pub fn scenario(&self) -> Scenario {
        self.scenario.clone().unwrap_or_else(|| Scenario::single(self.size))
    }

    /// The drive options of the swarm pull.
    pub fn drive_options(&self, sample_every: Duration) -> DriveOptions {
        DriveOptions { timeout: self.timeout, sample_every, progress: self.progress }
    }
}

/// The default base for stores: tmpfs when this machine has /dev/shm.
pub fn default_store_base() -> PathBuf {
    if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() }
}

/// Runs the scenario once in `o.mode`.
pub async fn run(o: &LocalOptions) -> anyhow::Result<RunReport> {
    match o.mode {
        Mode::InProcess => run_local(o).await,
        Mode::Processes => crate::processes::run_processes(o).await,
        Mode::Netns => crate::netns::run_netns(o).await,
        Mode::Remote => crate::remote::run_remote(o).await,
    }
}

/// Runs the scenario once in this process and reports it. The report says whether every copy
/// verified; the caller decides whether a mismatch is an error.
pub async fn run_local(o: &LocalOptions) -> anyhow::Result<RunReport> {
    let sc = o.scenario();
    sc.validate(o.agents)?;
    let base = o.dir.clone().unwrap_or_else(default_store_base);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new().prefix("shoal-local-").tempdir_in(&base)?;
    let root = tmp.path().to_path_buf();
    let store = Store::detect(&root);
    if o.verbose {
        println!(
            "shoal local cluster: 1 tracker, {} origin(s), {} agents; {}; stores in {} ({})",
            o.origins,
            o.agents,
            sc.describe(o.agents),
            root.display(),
            store.kind,
        );
    }
    let cluster = Cluster::builder()
        .swarm(swarm_with(crate::cluster::test_swarm_config(), &o.swarm)?)
        .agents(o.agents)
        .origins(o.origins)
        .agent_rate(o.agent_rate)
        .origin_rate(o.origin_rate)
        .root(root)
        .tls(o.tls)
        .zones(o.zones)
        .start()
        .await?;
    let mut cluster = cluster;
    let res = measure(&mut cluster, o, &sc, store).await;
    cluster.shutdown().await;
    drop(tmp);
    res
}

/// Kills and restarts go through each agent's shutdown token, so a killed agent stops at
/// once and keeps its store.
impl Nodes for Cluster {
    fn agent_url(&self, i: usize) -> Option<String> {
        self.agents.get(i)?.as_ref().map(|a| format!("http://{}", a.handle.http_addr))
    }

    async fn stats(&self, i: usize, digests: &[Digest]) -> Stats {
        let mut s = Stats::default();
        if let Some(Some(a)) = self.agents.get(i) {
            for d in digests {
                if let Some(b) = a.handle.swarm.stats(d) {
                    s += Stats { from_origin: b.from_origin, from_peers: b.from_peers, uploaded: b.uploaded };
                }
            }
        }
        s
    }

    async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let n =
            self.agents.get_mut(i).and_then(Option::take).ok_or_else(|| anyhow::anyhow!("agent {i} is not running"))?;
        n.shutdown.cancel();
        let abort = n.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), n.task).await.is_err() {
            abort.abort();
        }
        Ok(())
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_agent(i, None).await
    }
}

/// What the run says about where the blobs start.
pub(crate) fn placed_line(n: usize, cold_origin: bool) -> String {
    if cold_origin {
        format!("{n} blob(s) placed in the origin backend (origin cold); every agent pulls them now\n")
    } else {
        format!(
            "{n} blob(s) placed in the origin backend and fetched by the origin (warm); every agent pulls them now\n"
        )
    }
}

/// Swarm keys the harness sets itself for each node (from its layout and `--agent-rate` /
/// `--origin-rate`), so `--swarm` may not.
const HARNESS_SWARM_KEYS: [&str; 5] = ["store_dir", "trackers", "advertise_addr", "egress_rate", "ingress_rate"];

/// One `--swarm KEY=VALUE`: a key of the `swarm:` config section and its value, read as JSON
/// when it is (numbers, booleans) and as a string otherwise (`50ms`, `8MiB`).
pub fn parse_swarm_setting(s: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{s:?}: no key"));
    }
    if HARNESS_SWARM_KEYS.contains(&key) {
        return Err(format!("swarm.{key} is set by the harness for each node"));
    }
    let value = value.trim();
    let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// `base` with `settings` applied, checked as a node checks its config: unknown keys and bad
/// values are errors.
pub fn swarm_with(base: SwarmConfig, settings: &[(String, serde_json::Value)]) -> anyhow::Result<SwarmConfig> {
    if settings.is_empty() {
        return Ok(base);
    }
    let mut v = serde_json::to_value(&base)?;
    for (k, val) in settings {
        v[k.as_str()] = val.clone();
    }
    let cfg: SwarmConfig = serde_json::from_value(v).map_err(|e| anyhow::anyhow!("--swarm: {e}"))?;
    cfg.validate().map_err(|e| anyhow::anyhow!("--swarm: {e}"))?;
    Ok(cfg)
}

/// `sizes.len()` random blobs placed in the cluster's backend.
fn place_blobs(cluster: &Cluster, sizes: &[u64]) -> anyhow::Result<Vec<Target>> {
    sizes
        .iter()
        .map(|&size| {
            let data = random_blob(size, rand::random());
            cluster.put_backend_blob(&data)?;
            Ok(Target::generated(&data))
        })
        .collect()
}

async fn measure(cluster: &mut Cluster, o: &LocalOptions, sc: &Scenario, store: Store) -> anyhow::Result<RunReport> {
    let targets = place_blobs(cluster, &sc.blobs)?;
    let digests = Target::digests(&targets);
    if !o.cold_origin {
        let agent = format!("http://{}", cluster.agent(0).http_addr);
        crate::pull::warm_origins(&reqwest::Client::new(), &agent, &digests).await?;
    }
    if o.verbose {
        println!("{}", placed_line(digests.len(), o.cold_origin));
    }
    let rss_reset = report::reset_peak_rss();
    let cpu0 = report::cpu_times();
    let (agents, timeline) =
        drive(cluster, o.agents, &targets, sc, &o.drive_options(Duration::from_millis(100))).await?;
    let cpu1 = report::cpu_times();
    let resources = Resources::between(
        cpu0,
        cpu1,
        report::peak_rss(),
        None,
        format!(
            "this one process during the swarm pull: tracker, origins, agents and the harness's HTTP clients, which hash every copy (BLAKE3); peak RSS {}",
            if rss_reset { "since just before the pull" } else { "over the process lifetime (reset not allowed)" }
        ),
    );
    let origin_uploaded = cluster.origin_uploaded();
    let baseline = match o.baseline {
        None => None,
        Some(mode) => {
            if o.verbose {
                println!("measuring the origin-only baseline ({mode:?})");
            }
            let bopts = BaselineOptions {
                mode,
                n: agents.len(),
                origin_rate: o.origin_rate,
                agent_rate: o.agent_rate,
                timeout: o.timeout,
                progress: o.progress,
            };
            Some(baseline::measure_all(&cluster.origin_nodes[0].http, &targets, &bopts).await?)
        }
    };
    let spec = RunSpec {
        scenario: sc.describe(o.agents),
        mode: "in-process".into(),
        n_origins: o.origins,
        blob_bytes: sc.total_bytes(),
        digest: digest_label(&digests),
        caps: Caps { agent_rate: o.agent_rate, origin_rate: o.origin_rate, seeding_origins: o.origins.clamp(1, 3) },
        store,
        scenario_info: Some(sc.info()),
        link_emulation: String::new(),
    };
    let mut report = RunReport::new(spec, agents, origin_uploaded, timeline, resources, baseline);
    report.tls = o.tls;
    if o.zones > 0 {
        report.zone_copies = Some(zone_copies(cluster, o.zones, sc.total_bytes()));
    }
    Ok(report)
}

/// Per zone, the bytes its agents received from other zones' peers
/// (`shoal_swarm_cross_zone_bytes_total`), in copies of `bytes`.
pub fn zone_copies(cluster: &Cluster, zones: usize, bytes: u64) -> Vec<f64> {
    let mut into = vec![0u64; zones];
    for (i, a) in cluster.agents.iter().enumerate() {
        if let Some(a) = a {
            into[i % zones] += crate::cluster::counter(&a.registry, "shoal_swarm_cross_zone_bytes_total", None);
        }
    }
    into.iter().map(|&b| b as f64 / bytes.max(1) as f64).collect()
}

/// The report's digest field: the one digest, or the digests joined by commas.
pub fn digest_label(digests: &[Digest]) -> String {
    digests.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_settings_parse_apply_and_are_checked() {
        let ok = |s: &str| parse_swarm_setting(s).unwrap();
        assert_eq!(ok("upload_backlog=50ms"), ("upload_backlog".into(), serde_json::json!("50ms")));
        assert_eq!(ok(" stripe_lookahead = 2 "), ("stripe_lookahead".into(), serde_json::json!(2)));
        for bad in ["upload_backlog", "=5", "store_dir=/tmp", "egress_rate=1MiB", "ingress_rate=1MiB"] {
            assert!(parse_swarm_setting(bad).is_err(), "{bad}");
        }
        let cfg = swarm_with(SwarmConfig::default(), &[ok("upload_backlog=50ms"), ok("stripe_lookahead=2")]).unwrap();
        assert_eq!(cfg.upload_backlog.get(), Duration::from_millis(50));
        assert_eq!(cfg.stripe_lookahead, 2);
        assert_eq!(cfg.pipeline_depth, SwarmConfig::default().pipeline_depth, "others keep their values");
        for bad in ["no_such_key=1", "upload_backlog=soon", "pipeline_depth=0", "stripe_lookahead=-1"] {
            assert!(swarm_with(SwarmConfig::default(), &[ok(bad)]).is_err(), "{bad}");
        }
    }

    /// The CI-sized real run: a few agents, a few MiB, capped, with the baseline and the
    /// written report. Correctness only: no timing assertions.
    #[tokio::test]
    async fn small_real_run_reports_consistently() {
        let out = tempfile::tempdir().unwrap();
        let o = LocalOptions {
            agents: 3,
            size: 4 << 20,
            agent_rate: Some(64 << 20),
            origin_rate: Some(64 << 20),
            dir: Some(out.path().join("stores")),
            timeout: Duration::from_secs(120),
            baseline: Some(BaselineMode::Concurrent),
            verbose: false,
            ..LocalOptions::default()
        };
        let r = run_local(&o).await.unwrap();
        assert!(r.verified_all, "{}", r.table());
        assert_eq!(r.agents.len(), 3);
        assert!(r.from_origin + r.from_peers >= 3 * (4 << 20));
        assert!(r.bound.is_some() && r.ratios.is_some() && r.speedup.is_some());
        assert!(r.baseline.as_ref().unwrap().verified_all);
        r.write(&out.path().join("report")).unwrap();
        let json = std::fs::read_to_string(out.path().join("report/report.json")).unwrap();
        let back: RunReport = serde_json::from_str(&json).unwrap();
        crate::report::assert_reports_close(&back, &r);
        let html = std::fs::read_to_string(out.path().join("report/report.html")).unwrap();
        assert!(html.contains("<svg"));
    }
}
