//! What every mode of a measured run shares: the [`Mode`] itself, the [`LocalOptions`] each
//! mode's runner takes ([`crate::run`] in-process, [`crate::processes`], [`crate::netns`],
//! [`crate::remote`]), and the helpers they all use: where stores go, the `--swarm KEY=VALUE`
//! settings checked as a node checks its config, and the report's setup lines and labels.
//!
//! Nothing here starts a node; [`crate::run::run`] dispatches on the mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_core::Digest;
use shoal_swarm::SwarmConfig;

use crate::baseline::BaselineMode;
use crate::scenario::{DriveOptions, Scenario};

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
}
