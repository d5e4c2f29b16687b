//! Configuration of the swarm engine, embedded in the agent's and the origin's YAML under
//! `swarm:`. Every field has a documented default; unknown keys are rejected.

use std::net::SocketAddr;
use std::path::PathBuf;

use shoal_core::Digest;
use shoal_core::net::Networks;
use shoal_core::registry::RepoName;
use shoal_runtime::{ByteSize, Duration, Percent, SizeLimit};

/// Swarm engine settings.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmConfig {
    /// Where pieces and complete blobs live. Default `./shoal-store`.
    pub store_dir: PathBuf,
    /// The store's size budget and eviction (see [`StoreConfig`]).
    pub store: StoreConfig,
    /// Tracker base URLs; a blob's tracker is chosen by hashing its digest, the others are
    /// fallbacks. Without an answer from any, an agent's download still dials the blob's
    /// owners on the origin ring and the peers it is connected to. Default: none.
    pub trackers: Vec<String>,
    /// A file holding the bearer token sent with every announce (its first line; re-read when
    /// it changes), for a tracker that trusts it to announce an address other than the one it
    /// connects from (an origin behind a Service address). Default none.
    pub tracker_token_file: Option<PathBuf>,
    /// Peer address announced to the tracker. Default: the peer listener's local address.
    pub advertise_addr: Option<SocketAddr>,
    /// This node's topology zone (a cloud zone, a rack): 1 to 63 letters, digits, `-`, `_`
    /// or `.`. Announced to the tracker, which hands out peers of the same zone first; a
    /// download then asks peers of other zones only for pieces no peer of its zone has, so
    /// a blob crosses a zone boundary about once per zone rather than once per host. The
    /// chart fills it from the node's `topology.kubernetes.io/zone` label. Default none
    /// (every peer counts as near).
    pub zone: Option<String>,
    /// The networks (CIDRs) this node dials peers in. An address outside them, from a
    /// tracker's answer or anywhere else, is never dialed, so a poisoned answer cannot turn
    /// the fleet against another host. Default: loopback, the private ranges, shared address
    /// space and link-local (`127.0.0.0/8`, `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`,
    /// `100.64.0.0/10`, `169.254.0.0/16`, `::1`, `fc00::/7`, `fe80::/10`); narrow it to the
    /// nodes' and pods' networks.
    pub peer_networks: Networks,
    /// Piece requests one connection may make per second (and at once); more are answered
    /// "busy". Default 1000.
    pub peer_request_rate: u32,
    /// Upload cap in bytes/s for the whole node. Default: unlimited.
    pub egress_rate: Option<ByteSize>,
    /// Download cap in bytes/s for the whole node. Default: unlimited.
    pub ingress_rate: Option<ByteSize>,
    /// Peer connections at most, in and out together; inbound ones take at most three
    /// quarters of them on an agent, so its dials always find a slot (an origin, which dials
    /// nobody, lets inbound take all). At most 128 accepted sockets wait for their handshake
    /// at once, and they hold no slot until it is done. Default 1024.
    pub max_connections: usize,
    /// Blob downloads running at once on this node. Another is refused until one ends (the
    /// agent answers 503 with `Retry-After`); a request for a blob already downloading joins
    /// that download and does not count. Default 128.
    pub max_downloads: usize,
    /// Peers one blob download talks to at most. Default 16.
    pub max_peers_per_blob: usize,
    /// Requests in flight to one peer for one blob. Default 4.
    pub pipeline_depth: usize,
    /// Requests in flight to one origin for one blob. Default 4.
    pub origin_pipeline_depth: usize,
    /// Requests one blob download keeps in flight over all its peers, as time at the
    /// `ingress_rate`: as many pieces as arrive in this window, and at least two peers'
    /// pipelines (2 x `pipeline_depth`). Requests beyond
    /// it wait here rather than in the uploaders' queues, where they would be answered busy
    /// or wait behind other peers' pieces. No bound without an `ingress_rate` or with `0s`.
    /// Default 100ms.
    pub request_window: Duration,
    /// Stripes after the current one whose pieces rank with it by rarity alone (the picker's
    /// `stripe_lookahead`). 0 keeps the verified prefix growing soonest, which streaming
    /// readers and the whole-blob hash follow; larger fleets may spread pieces better with 2
    /// (see BENCHMARKS.md). Default 0.
    pub stripe_lookahead: u32,
    /// Pieces one connection uploads at once. Default 8.
    pub max_uploads_per_connection: usize,
    /// Longest upload backlog a node with an `egress_rate` takes on: a request that would
    /// wait longer behind the pieces already queued at the cap is answered "busy", so the
    /// requester asks another peer instead of queueing. Short, so that a download's requests
    /// (its `request_window`) are served within the window rather than waiting behind other
    /// peers' pieces; an empty backlog always takes one piece (see BENCHMARKS.md, "The upload
    /// backlog"). Default 50ms.
    pub upload_backlog: Duration,
    /// Memory for pieces read for upload and not yet on the socket, over all connections;
    /// an upload waits for room before it reads its piece. At least 4MiB (the largest
    /// piece). Uploads sent with `sendfile` read nothing into memory and take none of it.
    /// Default 8MiB.
    pub upload_memory: ByteSize,
    /// Send piece uploads on plain TCP connections with `sendfile(2)`, from the blob's store
    /// file straight to the socket, instead of reading each piece into memory and writing
    /// it. Connections with TLS always read and encrypt. On a store whose pages are not
    /// cached (a cold disk), a runtime thread may wait on the disk inside the call. Default
    /// true.
    pub sendfile: bool,
    /// Base time a piece request may take before it is given to another peer; a capped link
    /// adds the time the pipeline needs at the cap. Default 10s.
    pub request_timeout: Duration,
    /// Deadline for connect and handshake. Default 5s.
    pub handshake_timeout: Duration,
    /// Deadline for any one socket write, and the longest silence before a connection is
    /// dropped (keep-alives go out at a third of it). Default 30s.
    pub io_timeout: Duration,
    /// How long a blob download may take before its waiters get an error. Default 30m.
    pub download_timeout: Duration,
    /// How long a peer that sent a corrupt piece or broke the protocol is shunned (what it
    /// proved: its certificate's identity with TLS, and its address; and the address if we
    /// dialed it; never the peer id it claims; at most 4096 of each at once, the soonest to
    /// expire making room). Default 5m.
    pub blacklist_duration: Duration,
    /// Threads doing disk I/O and hashing at once; also how many received pieces the
    /// connections may hold while they wait to be checked and written and their readers
    /// read on. Default 8.
    pub blocking_threads: usize,
    /// How often a seeding node re-announces each complete blob; keep it well under the
    /// tracker's peer TTL. Default 10s.
    pub seed_announce_interval: Duration,
    /// Seed of the piece picker's random tie-break (0: random per blob).
    pub picker_seed: u64,
    /// Check each downloaded blob's sha256 against its digest before it is committed. Every
    /// piece is verified against the metainfo's BLAKE3 hash either way; the sha256 guards
    /// against a metainfo that does not describe the digest's content, which only an origin
    /// or someone on the path to it can hand out. `false` saves that hash (about 0.6 ns of
    /// CPU per byte, a third of an agent's CPU in the main job; see BENCHMARKS.md) and is
    /// accepted only with a `tls` section: the metainfo then comes from an origin that
    /// proved its certificate. A registry client checks the digest again. Default true.
    pub verify_blob_digest: bool,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            store_dir: PathBuf::from("shoal-store"),
            store: StoreConfig::default(),
            trackers: Vec::new(),
            tracker_token_file: None,
            advertise_addr: None,
            zone: None,
            peer_networks: Networks::private(),
            peer_request_rate: 1000,
            egress_rate: None,
            ingress_rate: None,
            max_connections: 1024,
            max_downloads: 128,
            max_peers_per_blob: 16,
            pipeline_depth: 4,
            origin_pipeline_depth: 4,
            request_window: Duration::from_millis(100),
            stripe_lookahead: 0,
            max_uploads_per_connection: 8,
            upload_backlog: Duration::from_millis(50),
            upload_memory: ByteSize(8 << 20),
            sendfile: true,
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            download_timeout: Duration::from_secs(30 * 60),
            blacklist_duration: Duration::from_secs(300),
            blocking_threads: 8,
            seed_announce_interval: Duration::from_secs(10),
            picker_seed: 0,
            verify_blob_digest: true,
        }
    }
}

impl SwarmConfig {
    /// Checks the values that cannot be expressed in types.
    /// The checks that need the node's TLS setting: `verify_blob_digest: false` only with
    /// a `tls` section, since the metainfo must then come from an origin that proved who it is.
    pub fn validate_with_tls(&self, tls: bool) -> Result<(), String> {
        if !self.verify_blob_digest && !tls {
            return Err("swarm.verify_blob_digest: false needs a tls section (the metainfo must come from an \
                        authenticated origin)"
                .into());
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections),
            ("max_downloads", self.max_downloads),
            ("max_peers_per_blob", self.max_peers_per_blob),
            ("pipeline_depth", self.pipeline_depth),
            ("origin_pipeline_depth", self.origin_pipeline_depth),
            ("max_uploads_per_connection", self.max_uploads_per_connection),
            ("blocking_threads", self.blocking_threads),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("swarm.{name} must be at least 1"));
            }
        }
        if self.upload_memory.0 < u64::from(shoal_core::metainfo::MAX_PIECE_LEN) {
            return Err(format!(
                "swarm.upload_memory must be at least the largest piece, {} bytes",
                shoal_core::metainfo::MAX_PIECE_LEN
            ));
        }
        for t in &self.trackers {
            if !(t.starts_with("http://") || t.starts_with("https://")) {
                return Err(format!("swarm.trackers entry {t:?} must be an http:// or https:// URL"));
            }
        }
        if self.io_timeout.get() < std::time::Duration::from_secs(1) {
            return Err("swarm.io_timeout must be at least 1s".into());
        }
        if self.peer_networks.is_empty() {
            return Err("swarm.peer_networks must name at least one network".into());
        }
        if self.peer_request_rate == 0 {
            return Err("swarm.peer_request_rate must be at least 1".into());
        }
        if let Some(zone) = self.zone.as_deref().filter(|z| !shoal_core::api::is_valid_zone(z)) {
            return Err(format!("swarm.zone {zone:?} must be 1 to 63 letters, digits, '-', '_' or '.'"));
        }
        if let Some(f) = &self.tracker_token_file {
            shoal_runtime::auth::TokenSource::load(f).map_err(|e| format!("swarm.tracker_token_file {e}"))?;
        }
        self.store.validate()
    }

    /// Checks that every origin's peer address is one this node may dial.
    pub fn check_origins<'a>(
        &self,
        origins: impl IntoIterator<Item = &'a shoal_core::ring::OriginNode>,
    ) -> Result<(), String> {
        for o in origins {
            if !self.peer_networks.contains(o.peer.ip()) {
                return Err(format!(
                    "origins: {}'s peer address {} is outside swarm.peer_networks, so it would never be dialed",
                    o.id, o.peer
                ));
            }
        }
        Ok(())
    }
}

/// The store's budget and how it is kept, under `swarm.store`. A store is a cache: agents'
/// of what their host pulled, origins' of their backend (which is never deleted from).
///
/// Above `high_watermark` of `max_size` (complete blobs and partial downloads), blobs are
/// evicted least recently used first (last served to a client or a peer) until the store is
/// under `low_watermark`; when the filesystem's free space drops under `min_free`, whoever
/// filled it, they are evicted until it is back above `min_free` plus the gap between the
/// marks. Blobs being downloaded, streamed to a client or uploaded to a peer, and pinned blobs,
/// are never evicted. The policy is `shoal_core::cache`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The budget: bytes (`"50GiB"`, `53687091200`) or a percentage of the size of the
    /// filesystem holding `store_dir` (`"80%"`). A dedicated volume can be given whole to the
    /// store; on a disk shared with others, `min_free` hands room back to them. Default
    /// `"80%"`: Dragonfly's disk high-water mark, leaving a fifth of the disk to everything else.
    pub max_size: SizeLimit,
    /// Eviction starts above this share of `max_size`. The room above it absorbs downloads
    /// that start between two rounds. Default `"90%"`.
    pub high_watermark: Percent,
    /// ...and goes on until the store is at or under this share. Default `"75%"`.
    pub low_watermark: Percent,
    /// The least free space the filesystem keeps: bytes or a percentage of its size; `0`
    /// turns the floor off. Default `"10%"`.
    pub min_free: SizeLimit,
    /// Evict a complete blob unused for this long whatever the usage. Default: none.
    pub ttl: Option<Duration>,
    /// A partial download (left by a crash or a cancelled pull) nobody wrote to for this long
    /// is removed; asked for again sooner, it resumes. Default `1h`.
    pub partial_ttl: Duration,
    /// A complete blob unused for this long is closed (its file and in-memory entry) and no
    /// longer announced to the tracker; it is still served from the store when asked. Default `5m`.
    pub idle_timeout: Duration,
    /// How often the store is measured and, if needed, evicted. A download or commit that
    /// takes the store over the high mark starts a round at once. Default `10s`.
    pub check_interval: Duration,
    /// Blobs never evicted.
    pub pin: PinConfig,
}

/// Blobs kept whatever the budget says, under `swarm.store.pin`. A preheat with `"pin": true`
/// pins its blobs too (and `"pin": false` unpins them).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PinConfig {
    /// Digests. Default none.
    pub digests: Vec<Digest>,
    /// Repositories (`library/nginx`): a blob requested through one of them (the agent's
    /// `/v2/<name>/...`, an origin request whose `name` hint is one of them, a preheat of
    /// one) is pinned from then on, while the repository stays listed. Default none.
    pub repositories: Vec<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_size: SizeLimit::Percent(Percent::new(80)),
            high_watermark: Percent::new(90),
            low_watermark: Percent::new(75),
            min_free: SizeLimit::Percent(Percent::new(10)),
            ttl: None,
            partial_ttl: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(300),
            check_interval: Duration::from_secs(10),
            pin: PinConfig::default(),
        }
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), String> {
        if self.low_watermark >= self.high_watermark {
            return Err(format!(
                "swarm.store.low_watermark ({}) must be under high_watermark ({})",
                self.low_watermark, self.high_watermark
            ));
        }
        if self.max_size == SizeLimit::Bytes(ByteSize(0)) || self.max_size == SizeLimit::Percent(Percent::new(0)) {
            return Err("swarm.store.max_size must be more than 0".into());
        }
        if self.check_interval.get() < std::time::Duration::from_millis(10) {
            return Err("swarm.store.check_interval must be at least 10ms".into());
        }
        for r in &self.pin.repositories {
            RepoName::parse(r).map_err(|e| format!("swarm.store.pin.repositories entry {r:?}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(store: StoreConfig) -> SwarmConfig {
        SwarmConfig { store, ..SwarmConfig::default() }
    }

    #[test]
    fn store_section_parses_sizes_and_percentages() {
        let yaml = "store:\n  max_size: 50GiB\n  high_watermark: 95%\n  low_watermark: 80%\n  min_free: 0\n  ttl: 7d\n  pin:\n    repositories: [library/nginx]\n";
        let cfg: SwarmConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(cfg.store.max_size, SizeLimit::Bytes(ByteSize(50 << 30)));
        assert_eq!(cfg.store.high_watermark, Percent::new(95));
        assert_eq!(cfg.store.min_free, SizeLimit::Bytes(ByteSize(0)));
        assert_eq!(cfg.store.ttl, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(cfg.store.partial_ttl, Duration::from_secs(3600), "unset keys keep their defaults");
        assert_eq!(cfg.validate(), Ok(()));
        assert!(serde_yaml::from_str::<SwarmConfig>("store: { max_sise: 1GiB }").is_err(), "unknown key");
        assert!(serde_yaml::from_str::<SwarmConfig>("store: { max_size: 120% }").is_err());
    }

    #[test]
    fn sendfile_is_on_unless_turned_off() {
        assert!(SwarmConfig::default().sendfile);
        let off: SwarmConfig = serde_yaml::from_str("sendfile: false").unwrap();
        assert!(!off.sendfile);
        assert_eq!(off.validate(), Ok(()));
        for bad in ["sendfile: maybe", "sendfile: 1", "sendfile: [true]"] {
            assert!(serde_yaml::from_str::<SwarmConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_rejects_what_types_cannot() {
        let ok = SwarmConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let cases: &[(&str, SwarmConfig)] = &[
            ("swarm.pipeline_depth", SwarmConfig { pipeline_depth: 0, ..SwarmConfig::default() }),
            ("swarm.upload_memory", SwarmConfig { upload_memory: ByteSize((4 << 20) - 1), ..SwarmConfig::default() }),
            ("swarm.trackers", SwarmConfig { trackers: vec!["tracker:7600".into()], ..SwarmConfig::default() }),
            ("swarm.peer_networks", SwarmConfig { peer_networks: Networks::default(), ..SwarmConfig::default() }),
            ("swarm.peer_request_rate", SwarmConfig { peer_request_rate: 0, ..SwarmConfig::default() }),
            ("swarm.zone", SwarmConfig { zone: Some(String::new()), ..SwarmConfig::default() }),
            ("swarm.zone", SwarmConfig { zone: Some("eu west".into()), ..SwarmConfig::default() }),
            ("swarm.zone", SwarmConfig { zone: Some("z".repeat(64)), ..SwarmConfig::default() }),
            (
                "swarm.tracker_token_file /nonexistent/token",
                SwarmConfig { tracker_token_file: Some("/nonexistent/token".into()), ..SwarmConfig::default() },
            ),
            (
                "swarm.store.low_watermark",
                store(StoreConfig { low_watermark: Percent::new(90), ..StoreConfig::default() }),
            ),
            (
                "swarm.store.max_size",
                store(StoreConfig { max_size: SizeLimit::Bytes(ByteSize(0)), ..StoreConfig::default() }),
            ),
            (
                "swarm.store.check_interval",
                store(StoreConfig { check_interval: Duration::from_millis(1), ..StoreConfig::default() }),
            ),
            (
                "swarm.store.pin.repositories",
                store(StoreConfig {
                    pin: PinConfig { repositories: vec!["UPPER/case".into()], ..PinConfig::default() },
                    ..StoreConfig::default()
                }),
            ),
        ];
        for (field, cfg) in cases {
            let err = cfg.validate().expect_err(field);
            assert!(err.contains(field), "{field}: {err}");
        }
        let exact = SwarmConfig { upload_memory: ByteSize(4 << 20), ..SwarmConfig::default() };
        assert_eq!(exact.validate(), Ok(()));
        let zoned = SwarmConfig { zone: Some("europe-west4-a".into()), ..SwarmConfig::default() };
        assert_eq!(zoned.validate(), Ok(()));
    }
}
