//! The `shoal-loadtest sim` subcommand: builds a [`SimConfig`] from flags, runs it, prints the
//! table and optionally writes the harness's report (`--report`) or the simulator's own JSON;
//! or, with `--validate`, simulates real runs from their reports and prints the comparison.
//! Kept here so `main.rs` only dispatches.

use std::path::PathBuf;
use std::time::Instant;

use shoal_runtime::ByteSize;

use super::{CpuModel, SimConfig, SimReport, Validation, run};
use crate::report::{self, Resources};

/// Flags of `shoal-loadtest sim`.
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Kraken's benchmark: 2,600 hosts, two 1.5 GB layers, 300 MB/s, 5 origins (other flags
    /// still override the seed, latency and policy knobs).
    #[arg(long)]
    pub kraken: bool,
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
    /// Size of each layer.
    #[arg(long, default_value = "256MiB")]
    pub size: ByteSize,
    /// Layers of that size, pulled at once.
    #[arg(long, default_value_t = 1)]
    pub layers: usize,
    /// Upload and download cap of every host, bytes/s ("0" for unlimited).
    #[arg(long, default_value = "300MB")]
    pub rate: ByteSize,
    /// Origins (each holds the image from the start).
    #[arg(long, default_value_t = 1)]
    pub origins: usize,
    /// Origins owning each layer (default: the origins' `origin_replicas`).
    #[arg(long)]
    pub origin_replicas: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// One-way latency of each host to the fabric, microseconds.
    #[arg(long, default_value_t = 100.0)]
    pub latency_us: f64,
    /// Agent: peers dialed per blob at most (default: the swarm's).
    #[arg(long)]
    pub max_peers_per_blob: Option<usize>,
    /// Picker pipeline depth per peer and per origin (default: the swarm's).
    #[arg(long)]
    pub pipeline: Option<usize>,
    #[arg(long)]
    pub origin_pipeline: Option<usize>,
    /// Tracker: peers per handout (default: the tracker's).
    #[arg(long)]
    pub max_peers: Option<usize>,
    /// Tracker: announce interval, seconds (default: the tracker's).
    #[arg(long)]
    pub announce_interval: Option<f64>,
    /// Experiment: origins send the piece they have sent the fewest times first.
    #[arg(long)]
    pub origin_priority: bool,
    /// Experiment: a cancelled upload still waiting for egress tokens gives them back.
    #[arg(long)]
    pub refund_cancelled: bool,
    /// Whole-blob sha256 rate of the commit, bytes/s (e.g. "1.65GiB"); not modeled by default.
    #[arg(long)]
    pub commit_rate: Option<ByteSize>,
    /// Experiment: at most this many uploads in flight per host (beyond: busy), on top of
    /// the upload backlog bound.
    #[arg(long)]
    pub max_uploads_per_host: Option<usize>,
    /// The swarm's `request_window` in milliseconds (default its default): requests in flight
    /// per download are what arrives in it at the download cap.
    #[arg(long)]
    pub request_window_ms: Option<u64>,
    /// For comparison: no request window, only the per-peer pipeline caps (the swarm before it).
    #[arg(long, conflicts_with = "request_window_ms")]
    pub no_request_window: bool,
    /// The swarm's `stripe_lookahead` (default its default; 0 is strict stripe order).
    #[arg(long)]
    pub stripe_lookahead: Option<u32>,
    /// Longest upload backlog of a capped host, milliseconds (the swarm's `upload_backlog`;
    /// default its default).
    #[arg(long)]
    pub upload_backlog_ms: Option<u64>,
    /// For comparison: no upload backlog bound (the swarm before it).
    #[arg(long, conflicts_with = "upload_backlog_ms")]
    pub no_upload_backlog: bool,
    /// For comparison: origins serve every request a permit allows (no `SeedBudget`).
    #[arg(long)]
    pub no_super_seeding: bool,
    /// For comparison: a busy reject is treated like `NotHave` (no back-off); implies
    /// `--no-upload-backlog`.
    #[arg(long)]
    pub no_busy_backoff: bool,
    /// Topology zones of the agents (agent `i` in zone `i % zones`; origins in none): the
    /// table then shows the copies of the image that crossed into each zone. 0: no zones.
    #[arg(long, default_value_t = 0)]
    pub zones: usize,
    /// Write the simulator's report (config, per-host results, percentiles) here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the harness's `report.json` and `report.html` (as `local --report`) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Simulate each of these real runs' `report.json` (`local --report DIR`) with the same
    /// agents, blob and caps, and print real against simulated completion times.
    #[arg(long, num_args = 1..)]
    pub validate: Vec<PathBuf>,
    /// With `--validate`: simulate each real run with this many seeds (from `--seed` on) and
    /// compare it with their mean.
    #[arg(long, default_value_t = 5)]
    pub seeds: usize,
    /// With `--validate`: the simulated hosts share one CPU with this machine's measured
    /// costs (`CpuModel::measured`), as the real in-process cluster does.
    #[arg(long)]
    pub shared_cpu: bool,
    /// With `--validate`: the simulated hosts share the machine's cores at the CPU cost per
    /// delivered byte that these other real runs' `report.json` measured
    /// (`CpuModel::calibrated`), instead of `--shared-cpu`'s fixed costs. With several, each
    /// validated run takes the cost at its own number of agents, interpolated linearly between
    /// the calibrations' (the cost per byte grows with the agents sharing the cores). Where
    /// the reports have the agents' store write time, each run's own replaces the
    /// calibrations' (it swings with the machine's fresh memory from run to run).
    #[arg(long, num_args = 1.., conflicts_with = "shared_cpu")]
    pub cpu_from: Vec<PathBuf>,
}

impl SimArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> SimConfig {
        let rate = (self.rate.0 > 0).then_some(self.rate.0 as f64);
        let base = if self.kraken {
            SimConfig::kraken()
        } else {
            SimConfig {
                hosts: self.hosts,
                origins: self.origins,
                layers: vec![self.size.0; self.layers.max(1)],
                agent_up: rate,
                agent_down: rate,
                origin_up: rate,
                origin_down: rate,
                ..SimConfig::default()
            }
        };
        SimConfig {
            seed: self.seed,
            latency: self.latency_us * 1e-6,
            origin_replicas: self.origin_replicas.unwrap_or(base.origin_replicas),
            max_peers_per_blob: self.max_peers_per_blob.unwrap_or(base.max_peers_per_blob),
            pipeline_depth: self.pipeline.unwrap_or(base.pipeline_depth),
            origin_pipeline_depth: self.origin_pipeline.unwrap_or(base.origin_pipeline_depth),
            max_peers: self.max_peers.unwrap_or(base.max_peers),
            announce_interval: self.announce_interval.unwrap_or(base.announce_interval),
            origin_fewest_copies_first: self.origin_priority,
            refund_cancelled: self.refund_cancelled,
            commit_rate: self.commit_rate.map(|r| r.0 as f64),
            super_seeding: !self.no_super_seeding,
            max_uploads_per_host: self.max_uploads_per_host,
            stripe_lookahead: self.stripe_lookahead.unwrap_or(base.stripe_lookahead),
            request_window: seconds_setting(self.no_request_window, self.request_window_ms, base.request_window),
            busy_backoff: !self.no_busy_backoff,
            zones: self.zones,
            // The swarm before the back-off had no backlog bound either, and a busy treated as
            // `NotHave` hides the peer's piece for good, which the bound's rejects would stall on.
            upload_backlog: seconds_setting(
                self.no_upload_backlog || self.no_busy_backoff,
                self.upload_backlog_ms,
                base.upload_backlog,
            ),
            ..base
        }
    }
}

/// A swarm duration setting in seconds from its flags: `None` when switched `off`, else the
/// milliseconds given, else `default`.
fn seconds_setting(off: bool, ms: Option<u64>, default: Option<f64>) -> Option<f64> {
    if off { None } else { ms.map_or(default, |ms| Some(ms as f64 / 1000.0)) }
}

/// Runs `shoal-loadtest sim`.
///
/// # Errors
/// If the JSON report cannot be written.
pub fn main(args: &SimArgs) -> anyhow::Result<()> {
    if !args.validate.is_empty() {
        return validate(args);
    }
    let cfg = args.config();
    let started = Instant::now();
    let cpu0 = report::cpu_times();
    let report = run(&cfg);
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = report::cpu_times();
    print!("{}", report.table(&cfg));
    println!("wall clock {wall:.1} s");
    if let Some(dir) = &args.report {
        let resources = Resources::between(
            cpu0,
            cpu1,
            report::peak_rss(),
            None,
            format!("the simulator process, {wall:.1} s wall clock; times are virtual"),
        );
        let rr = report.run_report(&cfg, resources);
        print!("{}", rr.summary());
        rr.write(dir)?;
        println!("report written to {}", dir.display());
    }
    if let Some(path) = &args.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            config: &'a SimConfig,
            wall_secs: f64,
            report: &'a SimReport,
        }
        let out = Out { config: &cfg, wall_secs: wall, report: &report };
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(())
}

/// `--validate`: one row per real report, each simulated with seeds `--seed` to
/// `--seed + --seeds - 1` and `--commit-rate`; the row shows the simulations' mean.
fn validate(args: &SimArgs) -> anyhow::Result<()> {
    let read = |path: &PathBuf| -> anyhow::Result<report::RunReport> {
        let file = if path.is_dir() { path.join("report.json") } else { path.clone() };
        let text = std::fs::read(&file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
        serde_json::from_slice(&text).map_err(|e| anyhow::anyhow!("parsing {}: {e}", file.display()))
    };
    // With every calibration's store writes known, they come out of its cost, and each
    // validated run that knows its own puts those back in: the part of the cost that swings
    // with this machine's fresh memory is taken from the run itself.
    let mut calibrations = Vec::new();
    let mut without_stores = Vec::new();
    for path in &args.cpu_from {
        let cal = read(path)?;
        let m = CpuModel::calibrated(&cal)?;
        let store = CpuModel::store_secs_per_byte(&cal);
        println!(
            "CPU from {} (N = {}): {:.2} ns per delivered byte on {} core(s){}",
            path.display(),
            cal.n_agents,
            1e9 / m.piece_rate,
            m.cores,
            store.map_or(String::new(), |s| format!(", {:.2} of them writing the stores", 1e9 * s)),
        );
        calibrations.push((cal.n_agents, m));
        if let Some(s) = store {
            without_stores.push((cal.n_agents, m.minus_per_byte(s)));
        }
    }
    let mut rows = Vec::new();
    for path in &args.validate {
        let real = read(path)?;
        let own_store = CpuModel::store_secs_per_byte(&real);
        let cpu = if calibrations.is_empty() {
            args.shared_cpu.then(|| CpuModel::measured(real.machine.cores))
        } else if let Some(s) = own_store.filter(|_| without_stores.len() == calibrations.len()) {
            println!("{}: the stores took {:.2} ns per delivered byte in this run", path.display(), 1e9 * s);
            Some(CpuModel::at_agents(&without_stores, real.n_agents).plus_per_byte(s))
        } else {
            Some(CpuModel::at_agents(&calibrations, real.n_agents))
        };
        let seeds: Vec<u64> = (args.seed..).take(args.seeds.max(1)).collect();
        rows.push(Validation::of(&real, &seeds, args.commit_rate.map(|r| r.0 as f64), cpu)?);
    }
    print!("{}", Validation::table(&rows));
    let worst = rows.iter().map(Validation::worst_gap).fold(0.0, f64::max);
    println!("largest gap of a simulated percentile to the real one: {:.1}%", 100.0 * worst);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}
