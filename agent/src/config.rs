//! The agent's configuration (YAML). Unknown keys are rejected; [`Config::validate`] runs
//! before any port is bound.

use std::net::SocketAddr;

use shoal_core::ring::{OriginNode, Ring};
use shoal_runtime::{ConfigError, Duration, LogFormat, Tls, TlsConfig};
use shoal_swarm::SwarmConfig;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP API (blobs, Registry v2, preheat, debug; health and metrics too). Default
    /// 127.0.0.1:7700.
    pub listen: SocketAddr,
    /// A second listener serving only `/health`, `/ready` and `/metrics`, so probes and
    /// Prometheus reach the agent while `listen` stays on the node's loopback. Default none.
    pub metrics_listen: Option<SocketAddr>,
    /// Peer (wire protocol) port. Default 127.0.0.1:7701.
    pub peer_listen: SocketAddr,
    /// The origin cluster; every agent and tracker lists the same nodes.
    pub origins: Vec<OriginNode>,
    /// How many origins own each blob. Default 3.
    pub origin_replicas: usize,
    /// How long to wait for an origin to fetch a blob from its backend. Default 10m.
    pub origin_fetch_timeout: Duration,
    /// How long in-flight responses may run after SIGTERM. Default 20s.
    pub shutdown_grace: Duration,
    /// How long a registry tag's digest, resolved through the origins, is reused before it
    /// is asked again; `0s` asks every time. Default 30s.
    pub tag_ttl: Duration,
    /// Prefetches (`POST /preheat` with `prefetch`) running in the background at once;
    /// another is answered 503 with `Retry-After` until one ends. Default 4.
    pub max_prefetches: usize,
    /// `text` or `json` log lines on stderr. Default `text`.
    pub log_format: LogFormat,
    /// Networks (CIDRs) whose callers may use the API (blobs, `/v2/`, preheat, stat, debug);
    /// others get 403. Default `[127.0.0.0/8, ::1]`: only the node itself. Add the node's pod
    /// network when pods reach the agent (keep loopback in the list for the node).
    pub api_networks: shoal_core::net::Networks,
    /// Who may start a preheat (`POST /preheat`): bearer tokens from a file, client
    /// certificate identities. The caller's token is passed on to the origins. Default:
    /// anyone who may use the API.
    pub auth: shoal_runtime::AuthConfig,
    /// The HTTP server's deadlines and connection cap.
    pub http: shoal_runtime::HttpConfig,
    /// Mutual TLS on every link to other nodes: the peer port, the origins' and trackers' APIs
    /// (their URLs then start with `https://`). Default none: plaintext, with a loud warning.
    pub tls: Option<TlsConfig>,
    /// Serve the API on `listen` over TLS too, with the certificate of `tls`; clients must
    /// present one as `tls.http_client_auth` says. Default false: containerd and dockerd
    /// expect a plain HTTP mirror on the node's loopback.
    pub api_tls: bool,
    pub swarm: SwarmConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7700".parse().expect("valid"),
            peer_listen: "127.0.0.1:7701".parse().expect("valid"),
            metrics_listen: None,
            origins: Vec::new(),
            origin_replicas: 3,
            origin_fetch_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(20),
            tag_ttl: Duration::from_secs(30),
            max_prefetches: 4,
            log_format: LogFormat::Text,
            api_networks: shoal_core::net::Networks::loopback(),
            auth: shoal_runtime::AuthConfig::default(),
            http: shoal_runtime::HttpConfig::default(),
            tls: None,
            api_tls: false,
            swarm: SwarmConfig::default(),
        }
    }
}

/// A checked configuration: the ring is built, the TLS files are loaded.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    pub config: Config,
    pub ring: Ring,
    /// The preheat check, its tokens file read.
    pub auth: shoal_runtime::Authorizer,
    pub tls: Option<Tls>,
}

impl Config {
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        if self.origins.is_empty() {
            return Err(ConfigError::Invalid("origins: at least one origin is required".into()));
        }
        let ring = Ring::new(self.origins.clone(), self.origin_replicas)
            .map_err(|e| ConfigError::Invalid(format!("origins: {e}")))?;
        self.swarm.validate().map_err(ConfigError::Invalid)?;
        self.http.validate().map_err(ConfigError::Invalid)?;
        if self.max_prefetches == 0 {
            return Err(ConfigError::Invalid("max_prefetches must be at least 1".into()));
        }
        if let Some(m) = self.metrics_listen
            && (m == self.listen || m == self.peer_listen)
        {
            return Err(ConfigError::Invalid(format!("metrics_listen {m}: already taken by listen or peer_listen")));
        }
        let advertise = self.swarm.advertise_addr.unwrap_or(self.peer_listen);
        if advertise.ip().is_unspecified() {
            return Err(ConfigError::Invalid(format!(
                "swarm.advertise_addr is required when peer_listen is {}: peers cannot dial it",
                self.peer_listen
            )));
        }
        self.swarm.validate_with_tls(self.tls.is_some()).map_err(ConfigError::Invalid)?;
        if self.api_tls && self.tls.is_none() {
            return Err(ConfigError::Invalid("api_tls: needs a tls section".into()));
        }
        let urls = self.origins.iter().map(|o| (format!("origins[{}].http", o.id), o.http.as_str()));
        let trackers =
            self.swarm.trackers.iter().enumerate().map(|(i, t)| (format!("swarm.trackers[{i}]"), t.as_str()));
        let tls = shoal_runtime::tls::validate(self.tls.as_ref(), urls.chain(trackers))?;
        let auth = self.auth.load().map_err(ConfigError::Invalid)?;
        Ok(ValidConfig { config: self, ring, auth, tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINS: &str = "origins: [{ id: o0, http: 'http://o0:7800', peer: '10.0.0.1:7801' }]\n";

    fn check(yaml: &str) -> Result<ValidConfig, String> {
        let cfg: Config = shoal_runtime::config::parse(&format!("{ORIGINS}{yaml}")).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn an_unspecified_peer_listen_needs_an_advertise_addr() {
        let err = check("peer_listen: 0.0.0.0:7701").unwrap_err();
        assert!(err.contains("swarm.advertise_addr is required when peer_listen is 0.0.0.0:7701"), "{err}");
        let err = check("peer_listen: '[::]:7701'\nswarm: { advertise_addr: '[::]:7701' }").unwrap_err();
        assert!(err.contains("swarm.advertise_addr"), "{err}");
        let ok = check("peer_listen: 0.0.0.0:7701\nswarm: { advertise_addr: 10.1.2.3:7701 }").unwrap();
        assert_eq!(ok.config.swarm.advertise_addr, Some("10.1.2.3:7701".parse().unwrap()));
        check("peer_listen: 10.1.2.3:7701").unwrap();
    }

    #[test]
    fn metrics_listen_is_its_own_port() {
        let ok = check("listen: 127.0.0.1:7700\nmetrics_listen: '[::]:7702'\npeer_listen: 10.1.2.3:7701").unwrap();
        assert_eq!(ok.config.metrics_listen, Some("[::]:7702".parse().unwrap()));
        let err =
            check("listen: 127.0.0.1:7700\nmetrics_listen: 127.0.0.1:7700\npeer_listen: 10.1.2.3:7701").unwrap_err();
        assert!(err.contains("metrics_listen 127.0.0.1:7700: already taken"), "{err}");
    }

    #[test]
    fn tls_is_checked_with_the_urls_of_other_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = shoal_runtime::tls::test_ca::TestCa::new("test");
        let tls = ca.write(dir.path(), "agent", &ca.issue("spiffe://shoal/agent")).unwrap();
        let section = format!(
            "tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\n",
            tls.ca_file.display(),
            tls.cert_file.display(),
            tls.key_file.display()
        );
        let https = "origins: [{ id: o0, http: 'https://o0:7800', peer: '10.0.0.1:7801' }]\n";
        let parse = |yaml: &str| -> Result<ValidConfig, String> {
            let cfg: Config = shoal_runtime::config::parse(yaml).map_err(|e| e.to_string())?;
            cfg.validate().map_err(|e| e.to_string())
        };
        let ok = parse(&format!("{https}{section}swarm: {{ trackers: ['https://t:7600'] }}")).unwrap();
        assert_eq!(ok.tls.unwrap().identity().as_str(), "spiffe://shoal/agent");
        let err = parse(&format!("{ORIGINS}{section}")).unwrap_err();
        assert!(err.contains("origins[o0].http") && err.contains("https://"), "{err}");
        let err = parse(&format!("{https}{section}swarm: {{ trackers: ['http://t:7600'] }}")).unwrap_err();
        assert!(err.contains("swarm.trackers[0]"), "{err}");
        let err = parse(https).unwrap_err();
        assert!(err.contains("tls is not configured"), "{err}");
        let err = check("api_tls: true").unwrap_err();
        assert!(err.contains("api_tls: needs a tls section"), "{err}");
        let err = check("swarm: { verify_blob_digest: false }").unwrap_err();
        assert!(err.contains("verify_blob_digest: false needs a tls section"), "{err}");
        parse(&format!("{https}{section}swarm: {{ trackers: ['https://t:7600'], verify_blob_digest: false }}"))
            .unwrap();
        std::fs::write(&tls.cert_file, "not a certificate").unwrap();
        let err = parse(&format!("{https}{section}")).unwrap_err();
        assert!(err.contains("tls:") && err.contains("agent.crt"), "{err}");
    }
}
