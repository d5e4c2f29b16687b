//! A deterministic discrete-event simulator of a Shoal swarm in virtual time.
//!
//! Every simulated agent downloads through the real [`shoal_core::picker::Picker`], fed the
//! same events in the same order as `swarm/src/download.rs` feeds it (bitfield on open, `have`,
//! piece verified, rejected, timed out), and fills a peer's pipeline on each of them exactly as
//! the download actor does. Around it the simulator models, rather than runs, the rest:
//! - **Links** as the real bandwidth limiter (`swarm/src/limiter.rs`): per host one egress and
//!   one ingress token bucket with a burst of a tenth of a second, which grants a whole piece
//!   at once and sleeps off the debt. A debt bucket is a FIFO server, so a piece waits in the
//!   sender's egress queue, travels for the path latency, then waits in the receiver's
//!   ingress queue. This needs no rate recomputation, so a run costs O(log events) per event.
//! - **Connections** as in `swarm/src/conn.rs`: one per host pair shared by every blob, at most
//!   `max_uploads_per_connection` uploads in flight on it (a request beyond is rejected as
//!   busy), at most `max_connections` per host (a dial beyond fails). A cancel that reaches the
//!   sender while its piece waits for egress tokens drops the piece, but the tokens stay spent,
//!   as the real limiter never refunds them.
//! - **The tracker** with the real handout policy ([`tracker`]) and the real ring
//!   (`shoal_core::ring::Ring::owners`) choosing each blob's origins, announce interval and
//!   `max_peers`; agents dial up to `max_peers_per_blob` handed-out peers and every origin.
//!
//! Determinism: time is integer nanoseconds; the event queue is ordered by (time, sequence);
//! all randomness comes from `StdRng`s seeded from [`SimConfig::seed`]; no hash map is ever
//! iterated. The same configuration therefore gives bit-identical results.

pub mod cli;
mod engine;
pub mod stats;
pub mod tracker;

use serde::Serialize;

/// Everything a run depends on.
#[derive(Clone, Debug, Serialize)]
pub struct SimConfig {
    /// Downloading agents.
    pub hosts: usize,
    /// Origins; each holds every layer from t = 0.
    pub origins: usize,
    /// Size of each layer (blob) in bytes; all layers are pulled at once.
    pub layers: Vec<u64>,
    /// Agent egress and ingress caps in bytes/s; `None` is unlimited.
    pub agent_up: Option<f64>,
    pub agent_down: Option<f64>,
    /// Origin egress and ingress caps in bytes/s.
    pub origin_up: Option<f64>,
    pub origin_down: Option<f64>,
    /// One-way latency from each host to the fabric, seconds; a path costs two of them.
    pub latency: f64,
    /// Seed of every random choice of the run (pickers, tracker, start jitter).
    pub seed: u64,
    /// Agents start within this many seconds of t = 0 (uniformly), so announces do not all
    /// reach the tracker in host order.
    pub start_jitter: f64,
    /// Tracker: peers per handout at most (ring owners come on top).
    pub max_peers: usize,
    /// Tracker: seconds between announces of a downloading agent.
    pub announce_interval: f64,
    /// Origins owning each blob (the origins' `origin_replicas`).
    pub origin_replicas: usize,
    /// Agent: peers dialed per blob at most, origins not counted.
    pub max_peers_per_blob: usize,
    /// Picker: requests in flight per peer and per origin.
    pub pipeline_depth: usize,
    pub origin_pipeline_depth: usize,
    /// Picker: endgame threshold.
    pub endgame_pieces: u32,
    /// Uploads in flight per connection; a request beyond is rejected as busy.
    pub max_uploads_per_connection: usize,
    /// Connections per host; a dial to a full host fails.
    pub max_connections: usize,
    /// Agent request timeout in seconds (the drain time of a full pipeline is added, as the
    /// download actor does).
    pub request_timeout: f64,
    /// Rate of the whole-blob sha256 check before a blob counts as complete, bytes/s (the
    /// agent's commit; about 1.65 GiB/s per core on this machine); `None` skips it. Pieces
    /// arriving meanwhile are still counted; the blob's seeding starts at once, as the
    /// pieces are already served while it commits.
    pub commit_rate: Option<f64>,
    /// Experiment, not what the real actor does: while more than `endgame_pieces` pieces are
    /// missing, the actor does not ask the picker for requests when it is in endgame (every
    /// piece its peers have is already requested), so no duplicate goes out mid-download.
    pub late_endgame: bool,
    /// Experiment, not what the real limiter does: a cancel that stops an upload still
    /// waiting for egress tokens gives its tokens back, so later uploads go sooner.
    pub refund_cancelled: bool,
    /// Experiment, not what the real origin does: an origin sends its queued uploads one at
    /// a time, the piece it has sent the fewest times first, instead of in arrival order.
    pub origin_fewest_copies_first: bool,
    /// Run `Picker::check_invariants` after every picker event (slow; small runs only).
    pub check_invariants: bool,
}

impl Default for SimConfig {
    /// The defaults of the real services (swarm, tracker and origin configs).
    fn default() -> Self {
        SimConfig {
            hosts: 20,
            origins: 1,
            layers: vec![256 << 20],
            agent_up: Some(300e6),
            agent_down: Some(300e6),
            origin_up: Some(300e6),
            origin_down: Some(300e6),
            latency: 100e-6,
            seed: 1,
            start_jitter: 1e-3,
            max_peers: 50,
            announce_interval: 3.0,
            origin_replicas: 3,
            max_peers_per_blob: 16,
            pipeline_depth: 4,
            origin_pipeline_depth: 4,
            endgame_pieces: 3,
            max_uploads_per_connection: 8,
            max_connections: 1024,
            request_timeout: 10.0,
            origin_fewest_copies_first: false,
            commit_rate: None,
            refund_cancelled: false,
            late_endgame: false,
            check_invariants: false,
        }
    }
}

impl SimConfig {
    /// Kraken's published benchmark: 2,600 hosts pull a 3 GB image of two 1.5 GB layers,
    /// 300 MB/s per host, 5 origins.
    pub fn kraken() -> SimConfig {
        SimConfig { hosts: 2600, origins: 5, layers: vec![1_500_000_000; 2], ..SimConfig::default() }
    }

    /// Bytes of the whole image.
    pub fn total_size(&self) -> u64 {
        self.layers.iter().sum()
    }

    /// The bound `T*` of this configuration (see [`stats::bound`]).
    pub fn bound(&self) -> f64 {
        let seed_up = self.origin_up.map(|u| u * self.origins as f64);
        stats::bound(self.total_size(), seed_up, &vec![(self.agent_up, self.agent_down); self.hosts])
    }
}

/// What one agent did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostResult {
    /// Virtual seconds from t = 0 until its last layer was complete.
    pub done: f64,
    /// Piece bytes that reached it (duplicates included).
    pub received: u64,
    /// Of which from origins.
    pub from_origin: u64,
    /// Piece bytes it uploaded.
    pub uploaded: u64,
}

/// The outcome of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    pub hosts: Vec<HostResult>,
    /// Completion-time percentiles in seconds.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// The bound `T*` in seconds.
    pub bound: f64,
    /// Bytes uploaded by origins and by agents.
    pub origin_bytes: u64,
    pub peer_bytes: u64,
    /// Piece bytes received beyond one copy per host (endgame duplicates, late arrivals).
    pub duplicate_bytes: u64,
    /// Requests that timed out, were rejected busy, and were cancelled before sending.
    pub timeouts: u64,
    pub busy_rejects: u64,
    pub cancelled: u64,
    /// Dials refused because the target had `max_connections` connections.
    pub refused_dials: u64,
    /// Events processed.
    pub events: u64,
}

impl SimReport {
    /// A readable table of the run.
    pub fn table(&self, cfg: &SimConfig) -> String {
        let b = self.bound;
        let r = |x: f64| if b > 0.0 { x / b } else { f64::NAN };
        let mut s = String::new();
        s += &format!(
            "simulated: {} agents, {} origins, layers {:?} bytes, agent up/down {:?}/{:?} B/s, origin up {:?} B/s, seed {}\n",
            cfg.hosts, cfg.origins, cfg.layers, cfg.agent_up, cfg.agent_down, cfg.origin_up, cfg.seed
        );
        s += &format!("bound T* = {b:.3} s\n");
        s += "          time (s)   ratio to T*\n";
        for (name, v) in
            [("p50", self.p50), ("p90", self.p90), ("p99", self.p99), ("p99.9", self.p999), ("max", self.max)]
        {
            s += &format!("{name:>7}  {v:>10.3}   {:>8.3}\n", r(v));
        }
        let total = (self.origin_bytes + self.peer_bytes).max(1) as f64;
        s += &format!(
            "uploaded: origins {:.3} GB ({:.2} copies of the image, {:.1}%), peers {:.3} GB\n",
            self.origin_bytes as f64 / 1e9,
            self.origin_bytes as f64 / cfg.total_size().max(1) as f64,
            100.0 * self.origin_bytes as f64 / total,
            self.peer_bytes as f64 / 1e9
        );
        s += &format!(
            "duplicates {:.3} GB; timeouts {}, busy rejects {}, cancelled {}, refused dials {}; {} events\n",
            self.duplicate_bytes as f64 / 1e9,
            self.timeouts,
            self.busy_rejects,
            self.cancelled,
            self.refused_dials,
            self.events
        );
        s
    }
}

/// Runs the simulation to completion (every agent has every layer).
///
/// # Panics
/// If the configuration has no agents, no origins or no layers, or if the swarm stalls
/// (a bug in the model or the picker: the event queue drains with agents incomplete).
pub fn run(cfg: &SimConfig) -> SimReport {
    assert!(cfg.hosts > 0 && cfg.origins > 0 && !cfg.layers.is_empty(), "empty simulation");
    let mut sim = engine::Sim::new(cfg);
    sim.run();
    sim.report()
}
