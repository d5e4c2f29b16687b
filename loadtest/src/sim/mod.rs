//! A deterministic discrete-event simulator of a Shoal swarm in virtual time.
//!
//! Every simulated download is the real actor's [`shoal_core::download::DownloadState`], built
//! with the swarm's own `download_options`, fed the same events as `swarm/src/download.rs`
//! feeds it (bitfield on open, `have`, piece verified, rejected, ticks) and ticked on the same
//! 100 ms grid, so the simulator runs the agents' decisions rather than a copy of them;
//! uploads are admitted by the real serving rule (`seeding::admit_upload`) and handouts composed
//! by the tracker's `handout::compose`. Around them the simulator models, rather than runs, the
//! rest:
//! - **Links** as the real bandwidth limiter (`swarm/src/limiter.rs`): per host one egress and
//!   one ingress token bucket with a burst of a tenth of a second, which grants a whole piece
//!   at once and sleeps off the debt. A debt bucket is a FIFO server, so a piece waits in the
//!   sender's egress queue, travels for the path latency, then waits in the receiver's
//!   ingress queue. This needs no rate recomputation, so a run costs O(log events) per event.
//! - **Connections** as in `swarm/src/conn.rs`: one per host pair shared by every blob, at most
//!   `max_uploads_per_connection` uploads in flight on it (a request beyond is rejected as
//!   busy), at most `max_connections` per host (a dial beyond fails). A host with an egress
//!   cap bounds its upload backlog with the swarm's rule (`seeding::admits_upload`): a request is answered busy
//!   when the bytes admitted and still waiting for egress tokens, over all its connections,
//!   plus this piece exceed `egress rate × upload_backlog` (an empty backlog admits one
//!   piece); the bytes leave the backlog when their tokens are granted or the upload is
//!   cancelled. A cancel that reaches the
//!   sender while its piece waits for egress tokens drops the piece, but the tokens stay spent,
//!   as the real limiter never refunds them.
//! - **Origins** super-seed with the real [`shoal_core::seeding::SeedBudget`]: each piece once
//!   before any twice, a request beyond the budget answered with a seeding reject, which
//!   defers the piece at that origin (`Picker::request_deferred`); a full backlog is a plain
//!   busy reject (`Picker::request_busy`). Either leaves that peer alone for
//!   [`shoal_core::seeding::BUSY_BACKOFF`], ended on the actor's next 100 ms tick, as
//!   `swarm/src/download.rs` does. Request deadlines also expire on those ticks.
//! - **The tracker** with the real handout policy ([`tracker`]) and the real ring
//!   (`shoal_core::ring::Ring::owners`) choosing each blob's origins, announce interval and
//!   `max_peers`; agents dial up to `max_peers_per_blob` handed-out peers and every origin.
//!
//! Determinism: time is integer nanoseconds; the event queue is ordered by (time, sequence);
//! all randomness comes from `StdRng`s seeded from [`SimConfig::seed`]; no hash map is ever
//! iterated. The same configuration therefore gives bit-identical results.

pub mod cli;
mod engine;
pub mod tracker;

use serde::Serialize;

use crate::bound;
use crate::pull::{AgentPull, Sample};
use crate::report::{Caps, Resources, RunReport, RunSpec, Store};

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
    /// Longest upload backlog of a host with an egress cap, seconds (the swarm's
    /// `upload_backlog`, whole milliseconds): a request that would take the bytes waiting for
    /// egress tokens beyond `cap × upload_backlog` is rejected as busy. `None` turns the bound
    /// off (the swarm before it, for comparison).
    pub upload_backlog: Option<f64>,
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
    /// Experiment, not what the real limiter does: a cancel that stops an upload still
    /// waiting for egress tokens gives its tokens back, so later uploads go sooner.
    pub refund_cancelled: bool,
    /// Experiment, not what the real swarm does: at most this many uploads in flight per host
    /// over all its connections (a request beyond is rejected busy), so no egress queue grows
    /// deeper than that many pieces. Counts pieces where [`SimConfig::upload_backlog`] (the
    /// real bound) counts bytes against the cap; applies on top of it.
    pub max_uploads_per_host: Option<usize>,
    /// The swarm's `request_window`, seconds: a download keeps at most the pieces that arrive
    /// in it at the agent's download cap in flight (`picker::window_pieces`); `None` leaves
    /// only the per-peer pipeline caps (the swarm before the window).
    pub request_window: Option<f64>,
    /// The swarm's `stripe_lookahead`: stripes after the current one that rank with it.
    pub stripe_lookahead: u32,
    /// Experiment, not what the real origin does: an origin sends its queued uploads one at
    /// a time, the piece it has sent the fewest times first, instead of in arrival order.
    pub origin_fewest_copies_first: bool,
    /// One CPU shared by every host, as when the whole cluster runs in one process on one
    /// machine (`local`); `None` gives each host its own CPU that never limits it (a data
    /// center).
    pub cpu: Option<CpuModel>,
    /// Origins super-seed (`SeedBudget`), as the real ones do; `false` serves every request
    /// an upload permit allows (the swarm before super-seeding, for comparison).
    pub super_seeding: bool,
    /// A busy reject defers the piece and backs the peer off for `BUSY_BACKOFF`, as the real
    /// actor does; `false` treats it like `NotHave` (for comparison).
    pub busy_backoff: bool,
    /// Run `Picker::check_invariants` after every picker event (slow; small runs only).
    pub check_invariants: bool,
    /// Topology zones of the agents (`swarm.zone`): agent `i` is in zone `i % zones`; 0
    /// sets none. Origins are in no zone, so every byte they send crosses into a zone.
    pub zones: usize,
}

impl Default for SimConfig {
    /// The defaults of the real services (swarm, tracker and origin configs).
    fn default() -> Self {
        let swarm = shoal_swarm::SwarmConfig::default();
        let tracker = shoal_tracker::Config::default();
        let origin = shoal_origin::config::Config::default();
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
            max_peers: tracker.max_peers,
            announce_interval: tracker.announce_interval.get().as_secs_f64(),
            origin_replicas: origin.origin_replicas,
            max_peers_per_blob: swarm.max_peers_per_blob,
            pipeline_depth: swarm.pipeline_depth,
            origin_pipeline_depth: swarm.origin_pipeline_depth,
            endgame_pieces: shoal_core::picker::PickerOptions::default().endgame_pieces,
            max_uploads_per_connection: swarm.max_uploads_per_connection,
            upload_backlog: Some(swarm.upload_backlog.get().as_secs_f64()),
            max_connections: swarm.max_connections,
            request_timeout: swarm.request_timeout.get().as_secs_f64(),
            origin_fewest_copies_first: false,
            commit_rate: None,
            refund_cancelled: false,
            max_uploads_per_host: None,
            request_window: Some(swarm.request_window.get().as_secs_f64()),
            stripe_lookahead: swarm.stripe_lookahead,
            super_seeding: true,
            busy_backoff: true,
            cpu: None,
            check_invariants: false,
            zones: 0,
        }
    }
}

impl SimConfig {
    /// Kraken's published benchmark: 2,600 hosts pull a 3 GB image of two 1.5 GB layers,
    /// 300 MB/s per host, 5 origins.
    pub fn kraken() -> SimConfig {
        SimConfig { hosts: 2600, origins: 5, layers: vec![1_500_000_000; 2], ..SimConfig::default() }
    }

    /// The swarm settings of every simulated agent: the swarm's defaults with this run's
    /// picker, window and timeout settings, which the downloads are built from exactly as the
    /// real actor builds them (`shoal_swarm::download::download_options`).
    pub fn swarm_config(&self) -> shoal_swarm::SwarmConfig {
        let secs = |s: f64| shoal_runtime::Duration(std::time::Duration::from_secs_f64(s));
        shoal_swarm::SwarmConfig {
            pipeline_depth: self.pipeline_depth,
            origin_pipeline_depth: self.origin_pipeline_depth,
            max_peers_per_blob: self.max_peers_per_blob,
            stripe_lookahead: self.stripe_lookahead,
            request_window: secs(self.request_window.unwrap_or(0.0)),
            request_timeout: secs(self.request_timeout),
            ..shoal_swarm::SwarmConfig::default()
        }
    }

    /// Agent `i`'s zone (see [`SimConfig::zones`]).
    pub fn zone_of(&self, i: usize) -> Option<u32> {
        (self.zones > 0).then(|| (i % self.zones) as u32)
    }

    /// Bytes of the whole image.
    pub fn total_size(&self) -> u64 {
        self.layers.iter().sum()
    }

    /// The bound `T*` of this configuration (see [`crate::bound::bound_of_rates`]); 0 when nothing is capped.
    pub fn bound(&self) -> f64 {
        let seed_up = self.origin_up.map(|u| u * self.origins as f64);
        bound::bound_of_rates(self.total_size(), seed_up, &vec![(self.agent_up, self.agent_down); self.hosts])
            .map_or(0.0, |b| b.secs)
    }
}

/// The machine's cores as FIFO servers: every piece a host takes in costs `len / piece_rate`
/// of one core after it passed the ingress bucket, taken in the order pieces pass it (the
/// sender's read and send, the receiver's copy, BLAKE3 check and store, all on loopback),
/// and a completed blob costs `size / blob_rate` (the whole-blob sha256 of the commit, then
/// serving it over HTTP to a client that hashes it again); the commit's `commit_rate` is
/// then not applied.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CpuModel {
    pub cores: usize,
    /// Bytes/s of one core per piece byte delivered.
    pub piece_rate: f64,
    /// Bytes/s of one core per completed blob byte.
    pub blob_rate: f64,
}

impl CpuModel {
    /// This machine's cost, measured on 2026-12-06 (sendfile uploads, pooled read buffers)
    /// with `local --agents 10 --size 256MiB --agent-rate 50MiB --origin-rate 50MiB` on a
    /// 2-core Xeon: 7.47 CPU-seconds for the 2.5 GiB of pieces its agents received, 2.78 ns
    /// per byte, of which 0.29 writing warm store pages; all of it charged per piece byte as
    /// [`CpuModel::calibrated`] does. (On 2026-12-02, before those changes: 3.71 ns. The
    /// same calibration of the build with pieces verified while the next are read, on a
    /// 2-core AMD VM: 2.85 ns, 0.41 of it store writes; BENCHMARKS.md, "Validation".)
    pub fn measured(cores: usize) -> CpuModel {
        CpuModel { cores: cores.max(1), piece_rate: 1e9 / 2.78, blob_rate: f64::INFINITY }
    }

    /// The cost the real run `cal` measured: its CPU-seconds over the piece bytes its agents
    /// received, on its cores, all of it charged per piece byte (the agents hash the blob and
    /// serve it to the streaming clients while its pieces arrive, so nothing is left for the
    /// commit). `cal` is a calibration run, not one of those being validated.
    pub fn calibrated(cal: &RunReport) -> anyhow::Result<CpuModel> {
        let cpu = cal.resources.cpu_secs.ok_or_else(|| anyhow::anyhow!("the calibration run has no CPU figure"))?;
        let bytes: u64 = cal.agents.iter().map(|a| a.from_origin + a.from_peers).sum();
        anyhow::ensure!(cpu > 0.0 && bytes > 0, "the calibration run moved nothing");
        Ok(CpuModel { cores: cal.machine.cores.max(1), piece_rate: bytes as f64 / cpu, blob_rate: f64::INFINITY })
    }

    /// The seconds per received byte the run `r`'s agents spent writing pieces into their
    /// stores (`resources.store_write_secs`), if the report has them. On a VM that hands free
    /// memory back to its hypervisor this part swings several-fold between runs of one setup
    /// (see BENCHMARKS.md, "Fresh memory"), the rest of the cost does not.
    pub fn store_secs_per_byte(r: &RunReport) -> Option<f64> {
        let bytes: u64 = r.agents.iter().map(|a| a.from_origin + a.from_peers).sum();
        r.resources.store_write_secs.filter(|_| bytes > 0).map(|w| w / bytes as f64)
    }

    /// This model without `secs` per byte (the calibration's own store writes, say), never
    /// below a tenth of its cost.
    pub fn minus_per_byte(self, secs: f64) -> CpuModel {
        let per_byte = 1.0 / self.piece_rate;
        CpuModel { piece_rate: 1.0 / (per_byte - secs).max(per_byte / 10.0), ..self }
    }

    /// This model with `secs` more per byte (a validated run's own store writes, say).
    pub fn plus_per_byte(self, secs: f64) -> CpuModel {
        CpuModel { piece_rate: 1.0 / (1.0 / self.piece_rate + secs.max(0.0)), ..self }
    }

    /// The cost at `n` agents from calibrations made at other numbers of agents: the cost per
    /// byte interpolated linearly in the number of agents between the two nearest
    /// calibrations, the nearest one's outside their range. `cals` is (agents, model) pairs,
    /// not empty, all from one machine.
    pub fn at_agents(cals: &[(usize, CpuModel)], n: usize) -> CpuModel {
        let mut cals = cals.to_vec();
        cals.sort_by_key(|(k, _)| *k);
        let cores = cals[0].1.cores;
        let Some(i) = cals.iter().position(|(k, _)| *k >= n) else { return cals[cals.len() - 1].1 };
        if cals[i].0 == n || i == 0 {
            return cals[i].1;
        }
        let ((a, ma), (b, mb)) = (cals[i - 1], cals[i]);
        let w = (n - a) as f64 / (b - a) as f64;
        let per_byte = (1.0 - w) / ma.piece_rate + w / mb.piece_rate;
        CpuModel { cores, piece_rate: 1.0 / per_byte, blob_rate: ma.blob_rate.min(mb.blob_rate) }
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
    /// Of the busy rejects, those for a full upload backlog.
    pub backlog_rejects: u64,
    pub cancelled: u64,
    /// Dials refused because the target had `max_connections` connections.
    pub refused_dials: u64,
    /// Origins that own some layer (the seeds of the bound).
    pub seeding_origins: usize,
    /// Share of its capacity each class of link used from t = 0 until the last agent was
    /// done: what saturates. `None` for unlimited links.
    pub origin_up_use: Option<f64>,
    pub agent_up_use: Option<f64>,
    pub agent_down_use: Option<f64>,
    /// Per zone (with [`SimConfig::zones`]): piece bytes its agents received from other
    /// zones' agents, and from origins; together, what crossed into the zone.
    pub zone_ingress: Vec<(u64, u64)>,
    /// Piece bytes delivered to agents (duplicates included) over virtual time.
    pub timeline: Vec<(f64, u64)>,
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
            "duplicates {:.3} GB; timeouts {}, busy rejects {} ({} for a full upload backlog), cancelled {}, refused dials {}; {} events\n",
            self.duplicate_bytes as f64 / 1e9,
            self.timeouts,
            self.busy_rejects,
            self.backlog_rejects,
            self.cancelled,
            self.refused_dials,
            self.events
        );
        if !self.zone_ingress.is_empty() {
            let copies = self.zone_copies(cfg);
            s += &format!(
                "zones: {}; copies of the image into each zone (from other zones' agents + from origins): ",
                cfg.zones
            );
            let size = cfg.total_size().max(1) as f64;
            let parts: Vec<String> = self
                .zone_ingress
                .iter()
                .zip(&copies)
                .map(|(&(far, origin), c)| format!("{c:.2} ({:.2} + {:.2})", far as f64 / size, origin as f64 / size))
                .collect();
            s += &parts.join(", ");
            let hosts_per_zone = cfg.hosts as f64 / cfg.zones as f64;
            s += &format!(
                "; max {:.2} copies per zone, {:.4} per host\n",
                copies.iter().copied().fold(0.0, f64::max),
                copies.iter().copied().fold(0.0, f64::max) / hosts_per_zone
            );
        }
        let pct = |u: Option<f64>| u.map_or("unlimited".to_string(), |u| format!("{:.1}%", 100.0 * u));
        s += &format!(
            "link use until the last agent was done: origin upload {}, agent upload {}, agent download {}\n",
            pct(self.origin_up_use),
            pct(self.agent_up_use),
            pct(self.agent_down_use)
        );
        s
    }
}

impl SimReport {
    /// Per zone, the copies of the image that crossed into it: the bytes its agents received
    /// from other zones' agents and from origins, over the image size.
    pub fn zone_copies(&self, cfg: &SimConfig) -> Vec<f64> {
        let size = cfg.total_size().max(1) as f64;
        self.zone_ingress.iter().map(|&(far, origin)| (far + origin) as f64 / size).collect()
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

impl SimReport {
    /// The run in the harness's report format, so a simulated run renders (table, JSON, HTML)
    /// and compares like a real one. Every simulated copy is whole and its pieces verified by
    /// construction, so `bytes` is the image and `verified` holds; the machine and resources
    /// are those of the process that ran the simulation.
    pub fn run_report(&self, cfg: &SimConfig, resources: Resources) -> RunReport {
        let size = cfg.total_size();
        let agents = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| AgentPull {
                from_origin: h.from_origin,
                from_peers: h.received - h.from_origin,
                uploaded: h.uploaded,
                ..AgentPull::plain(i, h.done, size, true)
            })
            .collect();
        let spec = RunSpec {
            scenario: format!(
                "simulated: {} layer(s) of {:?} bytes to {} agents, seed {}",
                cfg.layers.len(),
                cfg.layers,
                cfg.hosts,
                cfg.seed
            ),
            mode: "simulated".into(),
            n_origins: cfg.origins,
            blob_bytes: size,
            digest: engine::layer_digests(cfg.layers.len())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            caps: Caps {
                agent_rate: cfg.agent_up.map(|r| r as u64),
                origin_rate: cfg.origin_up.map(|r| r as u64),
                seeding_origins: self.seeding_origins,
            },
            store: Store { path: String::new(), fs_type: None, kind: "none (simulated)".into() },
            ..RunSpec::default()
        };
        let timeline = self.timeline.iter().map(|&(secs, delivered)| Sample { secs, delivered }).collect();
        RunReport::new(spec, agents, self.origin_bytes, timeline, resources, None)
    }
}

/// The simulated counterpart of a real run: the same agents, origins, blob and caps, and the
/// in-process cluster's settings (`cluster::test_swarm_config`, a 1 s announce interval,
/// uncapped origin download), with the agent's whole-blob commit at `commit_rate`.
///
/// With `cpu`, the hosts share that CPU (e.g. [`CpuModel::measured`] with the real run's cores).
pub fn config_of(real: &RunReport, seed: u64, commit_rate: Option<f64>, cpu: Option<CpuModel>) -> SimConfig {
    let agent = real.caps.agent_rate.map(|r| r as f64);
    SimConfig {
        hosts: real.n_agents,
        origins: real.n_origins.max(1),
        layers: vec![real.blob_bytes],
        agent_up: agent,
        agent_down: agent,
        origin_up: real.caps.origin_rate.map(|r| r as f64),
        origin_down: None,
        origin_replicas: real.n_origins.clamp(1, 3),
        announce_interval: 1.0,
        commit_rate,
        seed,
        cpu,
        ..SimConfig::default()
    }
}

/// One row of a validation: a real run and the mean of its simulations.
#[derive(Clone, Debug, Serialize)]
pub struct Validation {
    pub n_agents: usize,
    pub blob_bytes: u64,
    /// Simulations (seeds 1..=k or as given) whose mean the `sim_*` figures are.
    pub seeds: usize,
    pub bound: f64,
    pub real_p50: f64,
    pub real_p90: f64,
    pub real_max: f64,
    pub sim_p50: f64,
    pub sim_p90: f64,
    pub sim_max: f64,
    /// The smallest and largest `max` of the simulations.
    pub sim_max_range: (f64, f64),
    pub real_origin_copies: f64,
    pub sim_origin_copies: f64,
}

impl Validation {
    /// Simulates `real` once per seed and pairs it with the mean of those simulations: one
    /// seed is one draw of the tie-breaks and handouts, as one real run is one draw of the
    /// scheduler's, so a single seed can sit at either end of the model's own spread.
    pub fn of(
        real: &RunReport,
        seeds: &[u64],
        commit_rate: Option<f64>,
        cpu: Option<CpuModel>,
    ) -> anyhow::Result<Validation> {
        let p = real.percentiles.ok_or_else(|| anyhow::anyhow!("the real report has no completion times"))?;
        anyhow::ensure!(!seeds.is_empty(), "a validation needs at least one seed");
        let sims: Vec<SimReport> = seeds.iter().map(|&seed| run(&config_of(real, seed, commit_rate, cpu))).collect();
        let mean = |f: &dyn Fn(&SimReport) -> f64| sims.iter().map(f).sum::<f64>() / sims.len() as f64;
        let f = real.blob_bytes.max(1) as f64;
        Ok(Validation {
            n_agents: real.n_agents,
            blob_bytes: real.blob_bytes,
            seeds: seeds.len(),
            bound: sims[0].bound,
            real_p50: p.p50,
            real_p90: p.p90,
            real_max: p.max,
            sim_p50: mean(&|s| s.p50),
            sim_p90: mean(&|s| s.p90),
            sim_max: mean(&|s| s.max),
            sim_max_range: (
                sims.iter().map(|s| s.max).fold(f64::INFINITY, f64::min),
                sims.iter().map(|s| s.max).fold(0.0, f64::max),
            ),
            real_origin_copies: real.origin_uploaded as f64 / f,
            sim_origin_copies: mean(&|s| s.origin_bytes as f64 / f),
        })
    }

    /// The largest relative gap of the simulated percentiles to the real ones.
    pub fn worst_gap(&self) -> f64 {
        [(self.sim_p50, self.real_p50), (self.sim_p90, self.real_p90), (self.sim_max, self.real_max)]
            .iter()
            .map(|(s, r)| ((s - r) / r).abs())
            .fold(0.0, f64::max)
    }

    /// A table of validations, one row each.
    pub fn table(rows: &[Validation]) -> String {
        let mut s = String::from(
            "   N   blob MiB   T* (s)   real p50/p90/max (s)    sim p50/p90/max (s)   gap p50/p90/max   sim max range (s)   origin copies real/sim\n",
        );
        for v in rows {
            let gap = |s: f64, r: f64| 100.0 * (s - r) / r;
            s += &format!(
                "{:>4}   {:>8}   {:>6.3}   {:>6.3} {:>6.3} {:>6.3}   {:>6.3} {:>6.3} {:>6.3}   {:>+5.1}% {:>+5.1}% {:>+5.1}%   {:>6.3}-{:<6.3} ({})   {:.2} / {:.2}\n",
                v.n_agents,
                v.blob_bytes >> 20,
                v.bound,
                v.real_p50,
                v.real_p90,
                v.real_max,
                v.sim_p50,
                v.sim_p90,
                v.sim_max,
                gap(v.sim_p50, v.real_p50),
                gap(v.sim_p90, v.real_p90),
                gap(v.sim_max, v.real_max),
                v.sim_max_range.0,
                v.sim_max_range.1,
                v.seeds,
                v.real_origin_copies,
                v.sim_origin_copies
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::CpuModel;
    use crate::report::tests::sample_report;

    #[test]
    fn calibration_charges_the_runs_cpu_per_received_byte() {
        let mut r = sample_report(true);
        // 12 MiB received (4 + 4 + 4) for 1.0 CPU-second.
        let m = CpuModel::calibrated(&r).unwrap();
        assert_eq!(m.piece_rate, (12u64 << 20) as f64);
        assert_eq!(m.cores, r.machine.cores.max(1));
        assert!(m.blob_rate.is_infinite(), "nothing is left for the commit");
        r.resources.cpu_secs = None;
        assert!(CpuModel::calibrated(&r).is_err());
        r.resources.cpu_secs = Some(1.0);
        r.agents.clear();
        assert!(CpuModel::calibrated(&r).is_err());
    }

    /// A run's store writes come out of its calibration and another run's go in: 12 MiB
    /// received for 1.0 CPU-s, of which 0.25 s writing the stores.
    #[test]
    fn store_writes_move_between_runs() {
        let r = sample_report(true);
        let bytes = (12u64 << 20) as f64;
        let store = CpuModel::store_secs_per_byte(&r).unwrap();
        assert!((store - 0.25 / bytes).abs() < 1e-15);
        let cal = CpuModel::calibrated(&r).unwrap();
        let without = cal.minus_per_byte(store);
        assert!((1.0 / without.piece_rate - 0.75 / bytes).abs() < 1e-15);
        let slow = without.plus_per_byte(2.0 * store);
        assert!((1.0 / slow.piece_rate - 1.25 / bytes).abs() < 1e-15);
        assert_eq!(cal.minus_per_byte(10.0 / bytes).piece_rate, cal.piece_rate * 10.0, "a tenth of the cost stays");
        let mut old = r.clone();
        old.resources.store_write_secs = None;
        assert_eq!(CpuModel::store_secs_per_byte(&old), None);
    }

    #[test]
    fn the_cost_at_a_number_of_agents_comes_from_the_nearest_calibrations() {
        let at = |ns_per_byte: f64| CpuModel { cores: 2, piece_rate: 1e9 / ns_per_byte, blob_rate: f64::INFINITY };
        let cals = [(25, at(4.0)), (10, at(3.0))];
        let cases = [(10, 3.0), (25, 4.0), (4, 3.0), (50, 4.0), (16, 3.4), (20, 3.0 + 10.0 / 15.0)];
        for (n, want) in cases {
            let m = CpuModel::at_agents(&cals, n);
            assert!((1e9 / m.piece_rate - want).abs() < 1e-9, "N = {n}: {} ns/B, want {want}", 1e9 / m.piece_rate);
            assert_eq!(m.cores, 2);
        }
        assert_eq!(CpuModel::at_agents(&cals[..1], 3), cals[0].1, "one calibration serves every N");
    }
}
