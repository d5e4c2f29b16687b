//! The origin's configuration (YAML). Unknown keys are rejected; [`Config::validate`] runs
//! before any port is bound.

use std::net::SocketAddr;

use shoal_core::ring::{OriginNode, Ring};
use shoal_runtime::{ByteSize, ConfigError, Duration, LogFormat, Tls, TlsConfig};
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
    /// This origin's id in the ring. Default `origin-0`. When `peer_listen` is an unspecified
    /// address (`0.0.0.0`, `[::]`) and `swarm.advertise_addr` is unset, this origin advertises
    /// the `peer` of its own `origins` entry.
    pub id: String,
    /// The whole origin cluster, this node included; empty means a cluster of one.
    pub origins: Vec<OriginNode>,
    /// How many origins own each blob. Default 3.
    pub origin_replicas: usize,
    /// Where blobs come from and uploads go. Default: a local directory.
    pub backend: BackendConfig,
    /// Backend fetches at once. Default 16.
    pub max_concurrent_fetches: usize,
    /// Longest a fetch may spend reading its object from the backend or an upstream; past it
    /// the fetch fails (504, remembered for `failure_ttl`) and frees its slot, so a stalled
    /// object does not hold one for good. Size it for the largest blob at the slowest read
    /// rate you accept. Default 30m.
    pub fetch_timeout: Duration,
    /// How long a metainfo request waits for a fetch before answering 202. Default 2s.
    pub metainfo_wait: Duration,
    /// How long a failed fetch is remembered, so a missing blob does not hammer the backend.
    /// Default 15s.
    pub failure_ttl: Duration,
    /// Largest upload accepted. Default 64GiB.
    pub max_upload: ByteSize,
    /// Uploads (`PUT /blobs/<digest>`) staged at once; another is answered 503 with
    /// `Retry-After` until one ends. Default 16.
    pub max_uploads: usize,
    /// How long in-flight responses may run after SIGTERM. Default 20s.
    pub shutdown_grace: Duration,
    /// Upstream registries blobs and tags are pulled from when the backend lacks them.
    /// Default: none (a miss is a 404).
    pub pull_through: PullThroughConfig,
    /// How many blobs one preheat fetches at once. Default 4.
    pub preheat_concurrency: usize,
    /// Preheat jobs running at once; another `POST /preheat` is answered 503 with
    /// `Retry-After` until one ends (a push notification's preheat waits for one instead).
    /// Default 8.
    pub max_preheats: usize,
    /// `text` or `json` log lines on stderr. Default `text`.
    pub log_format: LogFormat,
    /// Registry push notifications (`POST /notifications`): agent prefetch rules. Default:
    /// no prefetch.
    pub notifications: crate::notify::NotifyConfig,
    /// Who may upload (`PUT /blobs`), preheat (`POST /preheat`) and notify
    /// (`POST /notifications`): bearer tokens from a file, client certificate identities.
    /// Default: anyone (a lab's setting; the origin warns at start).
    pub auth: shoal_runtime::AuthConfig,
    /// The HTTP server's deadlines and connection cap.
    pub http: shoal_runtime::HttpConfig,
    /// Mutual TLS on every link to other nodes: the peer port, this API (clients present a
    /// certificate as `tls.http_client_auth` says), and the calls to other origins and the
    /// trackers (their URLs then start with `https://`). Default none: plaintext, with a loud
    /// warning.
    pub tls: Option<TlsConfig>,
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
            fetch_timeout: Duration::from_secs(30 * 60),
            metainfo_wait: Duration::from_secs(2),
            failure_ttl: Duration::from_secs(15),
            max_upload: ByteSize(64 << 30),
            max_uploads: 16,
            shutdown_grace: Duration::from_secs(20),
            pull_through: PullThroughConfig::default(),
            preheat_concurrency: 4,
            max_preheats: 8,
            log_format: LogFormat::Text,
            notifications: crate::notify::NotifyConfig::default(),
            auth: shoal_runtime::AuthConfig::default(),
            http: shoal_runtime::HttpConfig::default(),
            tls: None,
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
    /// The check of the protected endpoints, its tokens file read.
    pub auth: shoal_runtime::Authorizer,
    /// The loaded TLS files, when `tls` is set.
    pub tls: Option<Tls>,
}

impl Config {
    pub fn validate(mut self) -> Result<ValidConfig, ConfigError> {
        if self.id.is_empty() {
            return Err(ConfigError::Invalid("id must not be empty".into()));
        }
        for (key, n) in [
            ("max_concurrent_fetches", self.max_concurrent_fetches),
            ("max_uploads", self.max_uploads),
            ("max_preheats", self.max_preheats),
        ] {
            if n == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if self.fetch_timeout.get().is_zero() {
            return Err(ConfigError::Invalid("fetch_timeout must be more than 0s".into()));
        }
        let ring = if self.origins.is_empty() {
            None
        } else {
            let Some(me) = self.origins.iter().find(|o| o.id == self.id) else {
                return Err(ConfigError::Invalid(format!("origins: this origin's id {:?} is not listed", self.id)));
            };
            // Listening on every interface, the origin announces the address the others know it by.
            if self.swarm.advertise_addr.is_none() && self.peer_listen.ip().is_unspecified() {
                self.swarm.advertise_addr = Some(me.peer);
            }
            Some(
                Ring::new(self.origins.clone(), self.origin_replicas)
                    .map_err(|e| ConfigError::Invalid(format!("origins: {e}")))?,
            )
        };
        if self.preheat_concurrency == 0 {
            return Err(ConfigError::Invalid("preheat_concurrency must be at least 1".into()));
        }
        self.notifications.validate().map_err(ConfigError::Invalid)?;
        let auth = self.auth.load().map_err(ConfigError::Invalid)?;
        let pull_through = self.pull_through.validate()?;
        let pull_through = (!pull_through.upstreams.is_empty()).then_some(pull_through);
        self.swarm.validate().map_err(ConfigError::Invalid)?;
        self.http.validate().map_err(ConfigError::Invalid)?;
        if self.swarm.advertise_addr.unwrap_or(self.peer_listen).ip().is_unspecified() {
            return Err(ConfigError::Invalid(format!(
                "swarm.advertise_addr is required when peer_listen is {} and no `origins` entry names this origin",
                self.peer_listen
            )));
        }
        self.swarm.validate_with_tls(self.tls.is_some()).map_err(ConfigError::Invalid)?;
        let urls = self.origins.iter().map(|o| (format!("origins[{}].http", o.id), o.http.as_str()));
        let trackers =
            self.swarm.trackers.iter().enumerate().map(|(i, t)| (format!("swarm.trackers[{i}]"), t.as_str()));
        let tls = shoal_runtime::tls::validate(self.tls.as_ref(), urls.chain(trackers))?;
        Ok(ValidConfig { config: self, ring, pull_through, auth, tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINS: &str = "origins:\n\
        - { id: o0, http: 'http://o0:7800', peer: '10.0.0.1:7801' }\n\
        - { id: o1, http: 'http://o1:7800', peer: '10.0.0.2:7801' }\n";

    fn check(yaml: &str) -> Result<ValidConfig, String> {
        let cfg: Config = shoal_runtime::config::parse(yaml).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())
    }

    fn advertise(yaml: &str) -> Option<SocketAddr> {
        check(yaml).unwrap().config.swarm.advertise_addr
    }

    #[test]
    fn listening_everywhere_advertises_the_own_ring_entry() {
        let any = "peer_listen: 0.0.0.0:7801\n";
        assert_eq!(advertise(&format!("{ORIGINS}id: o1\n{any}")), Some("10.0.0.2:7801".parse().unwrap()));
        let set = format!("{ORIGINS}id: o1\n{any}swarm: {{ advertise_addr: 10.9.9.9:1 }}\n");
        assert_eq!(advertise(&set), Some("10.9.9.9:1".parse().unwrap()));
        assert_eq!(advertise(&format!("{ORIGINS}id: o1\npeer_listen: 10.0.0.2:7801\n")), None);
        let err = check(any).unwrap_err();
        assert!(err.contains("swarm.advertise_addr is required when peer_listen is 0.0.0.0:7801"), "{err}");
    }
}
