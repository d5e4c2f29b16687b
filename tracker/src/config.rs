//! The tracker's configuration: the raw YAML form [`Config`] and the resolved form
//! [`ValidConfig`].
//!
//! Invariant: a [`ValidConfig`] is only made by [`Config::validate`]. Holding one means every
//! limit is sane and the origin ring is built, so `run` has nothing left to reject.
//! Validation binds no port and reads no file.
//!
//! Example (every key is optional, shown with its default except `origins`):
//!
//! ```yaml
//! listen: 127.0.0.1:7600
//! peer_ttl: 30s
//! announce_interval: 3s
//! max_peers: 50
//! origin_replicas: 3
//! shutdown_grace: 10s
//! log_format: text
//! trusted_networks: []
//! auth: { tokens_file: null, identities: [] }
//! announce_rate: 200
//! announce_burst: 2000
//! max_peers_per_host: 8
//! max_blobs_per_host: 100000
//! http: { header_read_timeout: 15s, body_idle_timeout: 30s, write_timeout: 30s, max_connections: 4096 }
//! origins:
//!   - { id: origin-0, http: "http://origin-0:7602", peer: "10.0.0.10:7603" }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use shoal_core::net::Networks;
use shoal_core::ratelimit::Rate;
use shoal_core::ring::{OriginNode, Ring, RingError};
use shoal_runtime::{AuthConfig, Authorizer, Duration, HttpConfig, LogFormat, Tls, TlsConfig};

use crate::store::MAX_PEERS_PER_BLOB;

/// Tracker settings as written in YAML. Unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP API (`POST /announce`) and of `/health`, `/ready`, `/metrics`.
    /// Default `127.0.0.1:7600`. A deployment sets `0.0.0.0:7600` or `[::]:7600`.
    pub listen: SocketAddr,
    /// A peer that has not announced for this long is dropped and never handed out again.
    /// It must be at least twice `announce_interval`, so one lost announce does not drop a
    /// live peer. Default `30s`.
    pub peer_ttl: Duration,
    /// How long nodes are told to wait before their next announce (`interval_ms` in every
    /// answer). Default `3s`.
    pub announce_interval: Duration,
    /// How many announced peers one answer holds at most. Ring owners are appended after
    /// them. Default `50`.
    pub max_peers: usize,
    /// The origins. Each blob's owners on the rendezvous ring are added to every answer as
    /// seeds of last resort. Default: none.
    pub origins: Vec<OriginNode>,
    /// How many origins own each blob. It only applies when `origins` is not empty.
    /// Default `3`.
    pub origin_replicas: usize,
    /// After SIGTERM, how long in-flight requests may take before the tracker exits anyway.
    /// Default `10s`.
    pub shutdown_grace: Duration,
    /// `text` or `json` log lines on stderr. Default `text`.
    pub log_format: LogFormat,
    /// Callers in these networks (CIDRs) may announce any address; everyone else announces
    /// only its own (the connection's remote IP; any port). Default none.
    pub trusted_networks: Networks,
    /// Callers presenting an allowed bearer token or client certificate may announce any
    /// address too (origins behind a Service address do). Default: nobody by credentials.
    pub auth: AuthConfig,
    /// Announces per second one untrusted source (an IPv4 address, an IPv6 /64) may send;
    /// more are answered 429. Default 200.
    pub announce_rate: u32,
    /// Announces one untrusted source may send at once, beyond the rate. Default 2000 (a
    /// seeder re-announces every stored blob at once).
    pub announce_burst: u32,
    /// Peers recorded at one IP address per blob at most, so fake seeders from one host
    /// cannot crowd out the real ones. Default 8.
    pub max_peers_per_host: usize,
    /// Blobs one IP address may be recorded in at most (configured origins excepted), so
    /// one host cannot fill the store. Default 100000.
    pub max_blobs_per_host: usize,
    /// The HTTP server's deadlines and connection cap.
    pub http: HttpConfig,
    /// Serve the API over TLS; clients (agents, origins) present a certificate as
    /// `tls.http_client_auth` says. Default none: plaintext, with a loud warning.
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            peer_ttl: Duration::from_secs(30),
            announce_interval: Duration::from_secs(3),
            max_peers: 50,
            origins: Vec::new(),
            origin_replicas: 3,
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Text,
            trusted_networks: Networks::default(),
            auth: AuthConfig::default(),
            announce_rate: 200,
            announce_burst: 2000,
            max_peers_per_host: 8,
            max_blobs_per_host: 100_000,
            http: HttpConfig::default(),
            tls: None,
        }
    }
}

/// A checked configuration, the only input `run` accepts.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    listen: SocketAddr,
    peer_ttl: std::time::Duration,
    announce_interval: std::time::Duration,
    max_peers: usize,
    ring: Option<Arc<Ring>>,
    shutdown_grace: std::time::Duration,
    log_format: LogFormat,
    trusted_networks: Networks,
    auth: Authorizer,
    announce_rate: Rate,
    max_peers_per_host: usize,
    max_blobs_per_host: usize,
    http: HttpConfig,
    tls: Option<Tls>,
}

/// Why a configuration is rejected. Each message names the key to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("max_peers must be at least 1")]
    MaxPeersZero,
    #[error("max_peers is {max_peers}, above the per-blob limit of {limit}")]
    MaxPeersTooLarge { max_peers: usize, limit: usize },
    #[error("announce_interval must be at least 1ms")]
    IntervalTooShort,
    #[error("peer_ttl ({ttl:?}) must be at least twice announce_interval ({interval:?})")]
    TtlTooShort { ttl: std::time::Duration, interval: std::time::Duration },
    #[error("origin_replicas must be at least 1")]
    ReplicasZero,
    #[error("origins {first:?} and {second:?} share the peer address {addr}")]
    SharedOriginAddr { first: String, second: String, addr: SocketAddr },
    #[error("invalid origins")]
    Ring(#[from] RingError),
    #[error("{0}")]
    Invalid(String),
    #[error("tls: {0}")]
    Tls(String),
}

impl From<ConfigError> for shoal_runtime::ConfigError {
    /// The message and its cause in one line, as every binary prints a bad config.
    fn from(e: ConfigError) -> Self {
        match std::error::Error::source(&e) {
            Some(cause) => shoal_runtime::ConfigError::Invalid(format!("{e}: {cause}")),
            None => shoal_runtime::ConfigError::Invalid(e.to_string()),
        }
    }
}

impl Config {
    /// Checks every limit and builds the origin ring.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        if self.max_peers == 0 {
            return Err(ConfigError::MaxPeersZero);
        }
        if self.max_peers > MAX_PEERS_PER_BLOB {
            return Err(ConfigError::MaxPeersTooLarge { max_peers: self.max_peers, limit: MAX_PEERS_PER_BLOB });
        }
        let interval = self.announce_interval.get();
        // Nodes are told the interval in whole milliseconds, and 0 would mean "announce
        // continuously".
        if interval < std::time::Duration::from_millis(1) {
            return Err(ConfigError::IntervalTooShort);
        }
        let ttl = self.peer_ttl.get();
        if ttl < interval.saturating_mul(2) {
            return Err(ConfigError::TtlTooShort { ttl, interval });
        }
        if self.origin_replicas == 0 {
            return Err(ConfigError::ReplicasZero);
        }
        // Handouts identify origins by peer address, so two origins on one address would be
        // one peer with two ring positions.
        for (i, a) in self.origins.iter().enumerate() {
            if let Some(b) = self.origins[..i].iter().find(|b| b.peer == a.peer) {
                return Err(ConfigError::SharedOriginAddr { first: b.id.clone(), second: a.id.clone(), addr: a.peer });
            }
        }
        if self.announce_rate == 0 {
            return Err(ConfigError::Invalid("announce_rate must be at least 1".into()));
        }
        if self.max_peers_per_host == 0 || self.max_blobs_per_host == 0 {
            return Err(ConfigError::Invalid("max_peers_per_host and max_blobs_per_host must be at least 1".into()));
        }
        self.http.validate().map_err(ConfigError::Invalid)?;
        let auth = self.auth.load().map_err(ConfigError::Invalid)?;
        let ring =
            if self.origins.is_empty() { None } else { Some(Arc::new(Ring::new(self.origins, self.origin_replicas)?)) };
        let tls = self.tls.as_ref().map(Tls::load).transpose().map_err(|e| ConfigError::Tls(e.to_string()))?;
        Ok(ValidConfig {
            listen: self.listen,
            peer_ttl: ttl,
            announce_interval: interval,
            max_peers: self.max_peers,
            ring,
            shutdown_grace: self.shutdown_grace.get(),
            log_format: self.log_format,
            trusted_networks: self.trusted_networks,
            auth,
            announce_rate: Rate { per_second: self.announce_rate, burst: self.announce_burst },
            max_peers_per_host: self.max_peers_per_host,
            max_blobs_per_host: self.max_blobs_per_host,
            http: self.http,
            tls,
        })
    }
}

impl ValidConfig {
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn peer_ttl(&self) -> std::time::Duration {
        self.peer_ttl
    }

    pub fn announce_interval(&self) -> std::time::Duration {
        self.announce_interval
    }

    /// `announce_interval` as the wire carries it. It is at least 1 and saturates at
    /// `u64::MAX`.
    pub fn interval_ms(&self) -> u64 {
        u64::try_from(self.announce_interval.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn max_peers(&self) -> usize {
        self.max_peers
    }

    /// The origin ring, or `None` when no origins are configured.
    pub fn ring(&self) -> Option<&Arc<Ring>> {
        self.ring.as_ref()
    }

    /// The loaded TLS files, when `tls` is set.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    pub fn shutdown_grace(&self) -> std::time::Duration {
        self.shutdown_grace
    }

    /// Callers that may announce any address by their network.
    pub fn trusted_networks(&self) -> &Networks {
        &self.trusted_networks
    }

    /// Callers that may announce any address by their credentials (never the open check).
    pub fn auth(&self) -> &Authorizer {
        &self.auth
    }

    /// The per-source announce rate of untrusted callers.
    pub fn announce_rate(&self) -> Rate {
        self.announce_rate
    }

    pub fn max_peers_per_host(&self) -> usize {
        self.max_peers_per_host
    }

    pub fn max_blobs_per_host(&self) -> usize {
        self.max_blobs_per_host
    }

    pub fn http(&self) -> &HttpConfig {
        &self.http
    }

    /// The `log_format` key: read by the binary before it installs its log subscriber.
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ValidConfig, String> {
        let raw: Config = shoal_runtime::config::parse(yaml).map_err(|e| e.to_string())?;
        raw.validate().map_err(|e| e.to_string())
    }

    fn check_err(yaml: &str, expect: &str) {
        let err = parse(yaml).expect_err(yaml);
        assert!(err.contains(expect), "{yaml:?}: {err:?} does not contain {expect:?}");
    }

    #[test]
    fn empty_gives_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen(), "127.0.0.1:7600".parse().unwrap());
        assert_eq!(c.peer_ttl(), std::time::Duration::from_secs(30));
        assert_eq!(c.announce_interval(), std::time::Duration::from_secs(3));
        assert_eq!(c.interval_ms(), 3000);
        assert_eq!(c.max_peers(), 50);
        assert!(c.ring().is_none());
        assert_eq!(c.shutdown_grace(), std::time::Duration::from_secs(10));
        assert_eq!(Config::default().origin_replicas, 3);
    }

    #[test]
    fn full_config_with_origins() {
        let c = parse(
            "listen: '[::]:7600'\npeer_ttl: 1m\nannounce_interval: 250ms\nmax_peers: 8\norigin_replicas: 2\n\
             shutdown_grace: 2s\norigins:\n\
             - { id: o0, http: 'http://o0:7602', peer: '10.0.0.10:7603' }\n\
             - { id: o1, http: 'http://o1:7602', peer: '[fd00::11]:7603' }\n\
             - { id: o2, http: 'http://o2:7602', peer: '10.0.0.12:7603' }\n",
        )
        .unwrap();
        assert_eq!(c.listen(), "[::]:7600".parse().unwrap());
        assert_eq!(c.interval_ms(), 250);
        assert_eq!(c.max_peers(), 8);
        let ring = c.ring().unwrap();
        assert_eq!(ring.nodes().len(), 3);
        assert_eq!(ring.replicas(), 2);
        assert_eq!(c.shutdown_grace(), std::time::Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_are_named() {
        check_err("max_peer: 5", "unknown field `max_peer`");
        check_err("origins: [{ id: a, http: 'http://a', peer: '1.2.3.4:5', weight: 2 }]", "unknown field `weight`");
    }

    #[test]
    fn bad_values() {
        check_err("max_peers: 0", "max_peers must be at least 1");
        check_err("max_peers: 10001", "above the per-blob limit");
        check_err("announce_interval: 0s", "announce_interval must be at least 1ms");
        check_err("peer_ttl: 5s", "peer_ttl (5s) must be at least twice announce_interval (3s)");
        check_err("origin_replicas: 0", "origin_replicas must be at least 1");
        check_err("peer_ttl: soon", "peer_ttl");
        check_err("listen: localhost", "listen");
        check_err("announce_rate: 0", "announce_rate must be at least 1");
        check_err("max_peers_per_host: 0", "max_peers_per_host");
        check_err("trusted_networks: ['10.0.0.1/8']", "host bits");
        check_err("auth: { tokens_file: /nonexistent/tokens }", "/nonexistent/tokens");
        check_err("http: { max_connections: 0 }", "http.max_connections");
    }

    #[test]
    fn trust_and_announce_limits() {
        let c = parse("trusted_networks: ['10.0.0.0/8', 'fd00::/8']\nannounce_rate: 5\nannounce_burst: 9\n").unwrap();
        assert!(c.trusted_networks().contains("10.1.1.1".parse().unwrap()));
        assert!(!c.trusted_networks().contains("192.168.1.1".parse().unwrap()));
        assert_eq!(c.announce_rate(), Rate { per_second: 5, burst: 9 });
        assert!(c.auth().is_open(), "no credentials configured: nobody is trusted by them");
        let d = parse("").unwrap();
        assert!(d.trusted_networks().is_empty());
        assert_eq!((d.max_peers_per_host(), d.max_blobs_per_host()), (8, 100_000));
    }

    #[test]
    fn ttl_of_exactly_two_intervals_is_accepted() {
        parse("peer_ttl: 6s\nannounce_interval: 3s").unwrap();
    }

    #[test]
    fn bad_origins() {
        let two = |a: &str, b: &str| {
            format!(
                "origins:\n- {{ id: {a}, http: 'http://a', peer: '10.0.0.1:1' }}\n\
                 - {{ id: {b}, http: 'http://b', peer: '10.0.0.2:1' }}\n"
            )
        };
        let err = Config {
            origins: shoal_runtime::config::parse::<Config>(&two("o", "o")).unwrap().origins,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err, ConfigError::Ring(RingError::DuplicateId("o".into())));
        check_err(
            "origins:\n- { id: a, http: 'http://a', peer: '10.0.0.1:1' }\n- { id: b, http: 'http://b', peer: '10.0.0.1:1' }",
            "origins \"a\" and \"b\" share the peer address 10.0.0.1:1",
        );
        parse(&two("a", "b")).unwrap();
    }
}
