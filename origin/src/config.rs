//! The origin's configuration (YAML). Unknown keys are rejected; [`Config::validate`] runs
//! before any port is bound.

use std::net::SocketAddr;

use shoal_core::ring::{OriginNode, Ring};
use shoal_runtime::{ByteSize, ConfigError, Duration};
use shoal_swarm::SwarmConfig;

use crate::backend::BackendConfig;
use crate::upstream::{PullThroughConfig, ValidPullThrough};

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP API (metainfo, blobs, uploads, health, metrics). Default 127.0.0.1:7800.
    pub listen: SocketAddr,
    /// Peer (wire protocol) port. Default 127.0.0.1:7801.
    pub peer_listen: SocketAddr,
    /// This origin's id in the ring. Default `origin-0`.
    pub id: String,
    /// The whole origin cluster, this node included; empty means a cluster of one.
    pub origins: Vec<OriginNode>,
    /// How many origins own each blob. Default 3.
    pub origin_replicas: usize,
    /// Where blobs come from and uploads go. Default: a local directory.
    pub backend: BackendConfig,
    /// Backend fetches at once. Default 16.
    pub max_concurrent_fetches: usize,
    /// How long a metainfo request waits for a fetch before answering 202. Default 2s.
    pub metainfo_wait: Duration,
    /// How long a failed fetch is remembered, so a missing blob does not hammer the backend.
    /// Default 15s.
    pub failure_ttl: Duration,
    /// Largest upload accepted. Default 64GiB.
    pub max_upload: ByteSize,
    /// How long in-flight responses may run after SIGTERM. Default 20s.
    pub shutdown_grace: Duration,
    /// Upstream registries blobs and tags are pulled from when the backend lacks them.
    /// Default: none (a miss is a 404).
    pub pull_through: PullThroughConfig,
    /// How many blobs one preheat fetches at once. Default 4.
    pub preheat_concurrency: usize,
    pub swarm: SwarmConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7800".parse().expect("valid"),
            peer_listen: "127.0.0.1:7801".parse().expect("valid"),
            id: "origin-0".into(),
            origins: Vec::new(),
            origin_replicas: 3,
            backend: BackendConfig::default(),
            max_concurrent_fetches: 16,
            metainfo_wait: Duration::from_secs(2),
            failure_ttl: Duration::from_secs(15),
            max_upload: ByteSize(64 << 30),
            shutdown_grace: Duration::from_secs(20),
            pull_through: PullThroughConfig::default(),
            preheat_concurrency: 4,
            swarm: SwarmConfig { store_dir: "shoal-origin-store".into(), ..SwarmConfig::default() },
        }
    }
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    pub config: Config,
    /// The ring, when a cluster is configured.
    pub ring: Option<Ring>,
    /// The checked `pull_through:` section, when it lists upstreams.
    pub pull_through: Option<ValidPullThrough>,
}

impl Config {
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        if self.id.is_empty() {
            return Err(ConfigError::Invalid("id must not be empty".into()));
        }
        if self.max_concurrent_fetches == 0 {
            return Err(ConfigError::Invalid("max_concurrent_fetches must be at least 1".into()));
        }
        let ring = if self.origins.is_empty() {
            None
        } else {
            if !self.origins.iter().any(|o| o.id == self.id) {
                return Err(ConfigError::Invalid(format!("origins: this origin's id {:?} is not listed", self.id)));
            }
            Some(
                Ring::new(self.origins.clone(), self.origin_replicas)
                    .map_err(|e| ConfigError::Invalid(format!("origins: {e}")))?,
            )
        };
        if self.preheat_concurrency == 0 {
            return Err(ConfigError::Invalid("preheat_concurrency must be at least 1".into()));
        }
        let pull_through = self.pull_through.validate()?;
        let pull_through = (!pull_through.upstreams.is_empty()).then_some(pull_through);
        self.swarm.validate().map_err(ConfigError::Invalid)?;
        Ok(ValidConfig { config: self, ring, pull_through })
    }
}
