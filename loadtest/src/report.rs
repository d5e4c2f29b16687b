//! One run's results and their three renderings: a terminal table, a JSON file and a
//! self-contained HTML page with SVG plots drawn by `plotters`.
//!
//! A [`RunReport`] is built once from raw measurements ([`RunReport::new`]); every derived
//! figure (percentiles, the bound, ratios, speed-up, throughput) is computed there from the
//! functions in [`crate::bound`], so the three outputs cannot disagree. The JSON form
//! round-trips, so reports can be compared later (e.g. a simulated run against a real one).
//!
//! Machine and process figures come from `/proc` (Linux only; absent values are `None`):
//! CPU-seconds are `utime + stime` of this process from `/proc/self/stat` (in USER_HZ = 100
//! ticks, which Linux fixes for its user ABI), and peak RSS is `VmHWM` from `/proc/self/status`,
//! reset before the run by writing `5` to `/proc/self/clear_refs` where the kernel allows it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::bound::{self, Bound, Link, Percentiles, Ratios};
use crate::pull::{AgentPull, Sample};
use crate::scenario::ScenarioInfo;

/// Everything measured and derived for one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// What was run, e.g. "one blob to N agents".
    pub scenario: String,
    /// "in-process" or "processes".
    pub mode: String,
    /// Seconds since the Unix epoch when the report was made.
    pub unix_time: u64,
    pub machine: Machine,
    pub store: Store,
    pub n_agents: usize,
    pub n_origins: usize,
    pub blob_bytes: u64,
    pub digest: String,
    pub caps: Caps,
    /// Per agent, in agent order.
    pub agents: Vec<AgentPull>,
    /// Every agent got every byte, and each copy matched the blob (`pull::Check`).
    pub verified_all: bool,
    /// Of the agents' completion times.
    pub percentiles: Option<Percentiles>,
    /// T*; `None` when nothing is capped.
    pub bound: Option<Bound>,
    /// Percentiles over T*.
    pub ratios: Option<Ratios>,
    pub baseline: Option<Baseline>,
    /// Baseline time until every agent is done over the swarm's.
    pub speedup: Option<f64>,
    /// N·F over the time until every agent is done, bytes/s.
    pub aggregate_bytes_per_sec: Option<f64>,
    /// Bytes the origins sent to peers.
    pub origin_uploaded: u64,
    /// Bytes agents received from origins, summed.
    pub from_origin: u64,
    /// Bytes agents received from other agents, summed.
    pub from_peers: u64,
    pub resources: Resources,
    /// Delivered bytes over time (may be empty).
    pub timeline: Vec<Sample>,
    /// The scenario in detail (blobs, late joiners, churn) and what T* covers in it.
    #[serde(default)]
    pub scenario_info: Option<ScenarioInfo>,
    /// Whether the links between nodes ran mutual TLS (`--tls`).
    #[serde(default)]
    pub tls: bool,
    /// How the link caps were applied: "agent limiter" (the nodes' own token buckets) or
    /// "tc htb" (a real qdisc on each namespace's link).
    #[serde(default = "agent_limiter")]
    pub link_emulation: String,
    /// With zones (`local --zones`): per zone, the copies of the pulled bytes its agents
    /// received from peers of other zones (their `shoal_swarm_cross_zone_bytes_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_copies: Option<Vec<f64>>,
}

fn agent_limiter() -> String {
    LINK_AGENT_LIMITER.into()
}

/// [`RunReport::link_emulation`] when the nodes' own limiters cap the links.
pub const LINK_AGENT_LIMITER: &str = "agent limiter";

/// The emulated links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Per agent, bytes/s, applied to both upload and download.
    pub agent_rate: Option<u64>,
    /// Per origin upload, bytes/s.
    pub origin_rate: Option<u64>,
    /// Origins that seed the blob (the ring's replicas), used for `U_seed`.
    pub seeding_origins: usize,
}

/// The machine the run used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub mem_total_bytes: Option<u64>,
    pub kernel: Option<String>,
}

/// Where the nodes' stores lived.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Store {
    pub path: String,
    /// The file system type of the mount holding `path`, from `/proc/mounts`.
    pub fs_type: Option<String>,
    /// "tmpfs" (memory: measures the swarm) or "disk" (shares this machine's one disk).
    pub kind: String,
}

/// What the cluster cost this machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// User + system CPU-seconds during the run.
    pub cpu_secs: Option<f64>,
    pub user_secs: Option<f64>,
    pub sys_secs: Option<f64>,
    /// Peak resident set size, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// The largest agent process's peak RSS (multi-process mode only).
    #[serde(default)]
    pub max_agent_rss_bytes: Option<u64>,
    /// Seconds the agents spent writing verified pieces into their stores during the pull
    /// (`shoal_swarm_store_write_seconds_total`), part of `cpu_secs` on tmpfs. It swings
    /// between runs on a VM that hands free memory back to its hypervisor (free page
    /// reporting): every fresh page the stores touch then faults there too.
    #[serde(default)]
    pub store_write_secs: Option<f64>,
    /// Bytes the agents read back from their stores during the pull for the whole-blob
    /// sha256 (`shoal_swarm_digest_read_back_bytes_total`): what no streaming client fed it.
    #[serde(default)]
    pub digest_read_back: Option<u64>,
    /// Whose processes these figures cover.
    pub note: String,
}

impl Resources {
    /// The CPU used between two [`cpu_times`] readings (user, system), with the peak RSS
    /// figures and whose processes they cover. A missing reading leaves the CPU unknown.
    pub fn between(
        before: Option<(f64, f64)>,
        after: Option<(f64, f64)>,
        peak_rss_bytes: Option<u64>,
        max_agent_rss_bytes: Option<u64>,
        note: String,
    ) -> Resources {
        let (user, sys) = match (before, after) {
            (Some(a), Some(b)) => (Some(b.0 - a.0), Some(b.1 - a.1)),
            _ => (None, None),
        };
        Resources {
            cpu_secs: user.zip(sys).map(|(u, s)| u + s),
            user_secs: user,
            sys_secs: sys,
            peak_rss_bytes,
            max_agent_rss_bytes,
            store_write_secs: None,
            digest_read_back: None,
            note,
        }
    }
}

/// The no-P2P reference: every agent fetching straight from the origin with the same caps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// How it was measured (see `crate::baseline`).
    pub method: String,
    /// Per-agent completion times since the baseline began.
    pub secs: Vec<f64>,
    pub percentiles: Option<Percentiles>,
    /// Every fetched copy matched the digest.
    pub verified_all: bool,
}

/// Raw inputs of a run; [`RunReport::new`] derives the rest.
#[derive(Clone, Debug, Default)]
pub struct RunSpec {
    pub scenario: String,
    pub mode: String,
    pub n_origins: usize,
    pub blob_bytes: u64,
    pub digest: String,
    pub caps: Caps,
    pub store: Store,
    pub scenario_info: Option<ScenarioInfo>,
    /// Empty means [`LINK_AGENT_LIMITER`].
    pub link_emulation: String,
}

impl RunReport {
    /// Derives every figure from the raw measurements.
    pub fn new(
        spec: RunSpec,
        agents: Vec<AgentPull>,
        origin_uploaded: u64,
        timeline: Vec<Sample>,
        resources: Resources,
        baseline: Option<Baseline>,
    ) -> RunReport {
        let finished: Vec<&AgentPull> = agents.iter().filter(|a| a.finished).collect();
        let secs: Vec<f64> = finished.iter().map(|a| a.secs).collect();
        let percentiles = bound::percentiles(&secs);
        let links = vec![Link { up: spec.caps.agent_rate, down: spec.caps.agent_rate }; agents.len()];
        let seeds = vec![spec.caps.origin_rate; spec.caps.seeding_origins.max(1)];
        let bound = bound::bound(spec.blob_bytes, &seeds, &links);
        let ratios = percentiles.as_ref().zip(bound.as_ref()).and_then(|(p, b)| bound::ratios(p, b));
        let speedup = baseline
            .as_ref()
            .and_then(|b| b.percentiles)
            .zip(percentiles)
            .and_then(|(b, p)| bound::ratio(b.max, p.max));
        // Until every finished agent is done, counted from the first start.
        let span = finished.iter().map(|a| a.started_secs + a.secs).fold(0.0, f64::max);
        let aggregate_bytes_per_sec =
            percentiles.and_then(|_| bound::throughput(finished.len(), spec.blob_bytes, span));
        // Every finished copy is whole and matches; only an agent killed and never restarted
        // may be unfinished.
        let verified_all = !finished.is_empty()
            && finished.iter().all(|a| a.verified && a.bytes == spec.blob_bytes)
            && agents.iter().all(|a| a.finished || (a.killed_secs.is_some() && a.restarted_secs.is_none()));
        RunReport {
            scenario: spec.scenario,
            mode: spec.mode,
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            machine: Machine::detect(),
            store: spec.store,
            n_agents: agents.len(),
            n_origins: spec.n_origins,
            blob_bytes: spec.blob_bytes,
            digest: spec.digest,
            caps: spec.caps,
            from_origin: agents.iter().map(|a| a.from_origin).sum(),
            from_peers: agents.iter().map(|a| a.from_peers).sum(),
            agents,
            verified_all,
            percentiles,
            bound,
            ratios,
            baseline,
            speedup,
            aggregate_bytes_per_sec,
            origin_uploaded,
            resources,
            timeline,
            scenario_info: spec.scenario_info,
            tls: false,
            link_emulation: if spec.link_emulation.is_empty() { agent_limiter() } else { spec.link_emulation },
            zone_copies: None,
        }
    }

    /// CPU-seconds of the run per GiB the agents received (from origins and peers).
    pub fn cpu_secs_per_gib(&self) -> Option<f64> {
        let delivered = (self.from_origin + self.from_peers) as f64 / f64::from(1u32 << 30);
        self.resources.cpu_secs.filter(|_| delivered > 0.0).map(|c| c / delivered)
    }

    /// CPU-nanoseconds the agents spent writing pieces into their stores per byte they
    /// received, when the run measured it.
    pub fn store_write_ns_per_byte(&self) -> Option<f64> {
        let received = self.from_origin + self.from_peers;
        self.resources.store_write_secs.filter(|_| received > 0).map(|w| w * 1e9 / received as f64)
    }

    /// Writes `report.json` and `report.html` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("report.html"), self.html()?)?;
        Ok(())
    }

    /// The per-agent table followed by the summary, as printed to the terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>6} {:>9} {:>14} {:>14} {:>14} {:>8}  note",
            "agent", "secs", "from origin", "from peers", "uploaded", "copy"
        );
        for p in &self.agents {
            let _ = writeln!(
                s,
                "{:>6} {:>9} {:>14} {:>14} {:>14} {:>8}  {}",
                p.agent,
                if p.finished { format!("{:.3}", p.secs) } else { "-".into() },
                p.from_origin,
                p.from_peers,
                p.uploaded,
                sha_cell(p),
                agent_note(p)
            );
        }
        s.push('\n');
        s.push_str(&self.summary());
        s
    }

    /// The summary lines: totals, percentiles, the bound and ratios, baseline, resources.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let size = self.blob_bytes.max(1) as f64;
        let max = self.percentiles.map_or(0.0, |p| p.max);
        let _ = writeln!(
            s,
            "all done in {max:.3}s; origin uploaded {} bytes ({:.2}x the blob); agents got {} bytes from the origin, {} from peers ({:.1}% from peers); aggregate {:.1} MiB/s",
            self.origin_uploaded,
            self.origin_uploaded as f64 / size,
            self.from_origin,
            self.from_peers,
            100.0 * self.from_peers as f64 / (self.from_origin + self.from_peers).max(1) as f64,
            self.aggregate_bytes_per_sec.unwrap_or(0.0) / MIB,
        );
        let _ = writeln!(s, "scenario: {} ({} mode)", self.scenario, self.mode);
        if let Some(copies) = &self.zone_copies {
            let cells: Vec<String> = copies.iter().enumerate().map(|(z, c)| format!("zone-{z} {c:.2}")).collect();
            let _ = writeln!(
                s,
                "zones: {}; copies of the pulled bytes received from other zones' peers: {}",
                copies.len(),
                cells.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "setup: {} agents, {} origin(s), {} per agent, agent cap {}, origin cap {} (link emulation: {}), stores on {} ({}), {} core(s)",
            self.n_agents,
            self.n_origins,
            human_bytes(self.blob_bytes),
            rate(self.caps.agent_rate),
            rate(self.caps.origin_rate),
            self.link_emulation,
            self.store.kind,
            self.store.path,
            self.machine.cores,
        );
        let late = self.agents.iter().filter(|a| a.late).count();
        if late > 0 {
            let _ = writeln!(
                s,
                "{late} agent(s) joined late; their times count from their own start (see the note column)"
            );
        }
        let killed = self.agents.iter().filter(|a| a.killed_secs.is_some()).count();
        if killed > 0 {
            let restarted = self.agents.iter().filter(|a| a.restarted_secs.is_some()).count();
            let _ = writeln!(
                s,
                "{killed} agent(s) killed mid-run, {restarted} restarted on their stores; a restarted agent's time includes its downtime; sources include what it got before it was killed"
            );
        }
        let mut t = Table::new(&["", "p50", "p90", "p99", "max"]);
        if let Some(p) = self.percentiles {
            t.row(vec!["secs".into(), f3(p.p50), f3(p.p90), f3(p.p99), f3(p.max)]);
        }
        if let Some(r) = self.ratios {
            t.row(vec!["x bound".into(), f3(r.p50), f3(r.p90), f3(r.p99), f3(r.max)]);
        }
        if let Some(bp) = self.baseline.as_ref().and_then(|b| b.percentiles) {
            t.row(vec!["baseline secs".into(), f3(bp.p50), f3(bp.p90), f3(bp.p99), f3(bp.max)]);
        }
        s.push_str(&t.render());
        match &self.bound {
            Some(b) => {
                let _ = writeln!(
                    s,
                    "bound T* = {:.3}s (set by {}); time until all done = {:.3}x T*",
                    b.secs,
                    b.binding,
                    self.ratios.map_or(f64::NAN, |r| r.max)
                );
                if let Some(i) = &self.scenario_info {
                    let _ = writeln!(s, "({})", i.bound_note);
                }
            }
            None => {
                let _ = writeln!(s, "bound T*: none (no link is capped; the run measures this machine)");
            }
        }
        if let Some(b) = &self.baseline {
            let _ = writeln!(
                s,
                "baseline ({}): all done in {:.3}s; speed-up {:.2}x; copies match: {}",
                b.method,
                b.percentiles.map_or(0.0, |p| p.max),
                self.speedup.unwrap_or(f64::NAN),
                yes_no(b.verified_all)
            );
        }
        let r = &self.resources;
        let _ = writeln!(
            s,
            "cpu {} s (user {} s, sys {} s), peak rss {} ({})",
            opt_f(r.cpu_secs),
            opt_f(r.user_secs),
            opt_f(r.sys_secs),
            r.peak_rss_bytes.map_or("?".into(), human_bytes),
            r.note
        );
        if let Some(a) = r.max_agent_rss_bytes {
            let _ = writeln!(s, "largest agent process peak rss {}", human_bytes(a));
        }
        if let Some(per_gib) = self.cpu_secs_per_gib() {
            let tls = if self.tls { "on" } else { "off" };
            let per_byte = per_gib * 1e9 / f64::from(1u32 << 30);
            let without_stores = self
                .store_write_ns_per_byte()
                .map_or(String::new(), |w| format!(", {:.2} without the store writes", per_byte - w));
            let _ = writeln!(
                s,
                "cpu {per_gib:.2} s per GiB delivered to agents, {per_byte:.2} ns per byte{without_stores} (tls {tls})"
            );
        }
        if let (Some(w), Some(per_byte)) = (r.store_write_secs, self.store_write_ns_per_byte()) {
            let _ = writeln!(
                s,
                "stores: {w:.2} s writing pieces, {per_byte:.2} ns per byte received{}",
                if per_byte > STORE_WRITE_SLOW {
                    " (slow: fresh pages fault here, e.g. on a VM that hands free memory back to its hypervisor)"
                } else {
                    ""
                }
            );
        }
        if let Some(b) = r.digest_read_back {
            let received = self.from_origin + self.from_peers;
            let _ = writeln!(
                s,
                "sha256: {} read back from the stores ({:.0}% of the bytes received; the rest was hashed as it arrived or as clients read it)",
                human_bytes(b),
                100.0 * b as f64 / received.max(1) as f64
            );
        }
        let _ = writeln!(s, "every copy matches {}: {}", self.digest, yes_no(self.verified_all));
        s
    }

    /// A self-contained HTML page: the summary, the per-agent table and the plots as inline SVG.
    pub fn html(&self) -> anyhow::Result<String> {
        let mut h = String::new();
        let title =
            format!("Shoal load test: {} ({} agents, {})", self.scenario, self.n_agents, human_bytes(self.blob_bytes));
        let _ = write!(
            h,
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}pre{{background:#f6f6f6;padding:1em}}</style></head><body>\n<h1>{t}</h1>\n<pre>{sum}</pre>\n",
            t = esc(&title),
            sum = esc(&self.summary())
        );
        h.push_str("<h2>Completion CDF</h2>\n");
        h.push_str(&self.cdf_svg()?);
        if !self.timeline.is_empty() {
            h.push_str("<h2>Delivered bytes over time</h2>\n");
            h.push_str(&self.timeline_svg()?);
        }
        h.push_str("<h2>Where each agent's bytes came from</h2>\n");
        h.push_str(&self.sources_svg()?);
        h.push_str("<h2>Agents</h2>\n<table><tr><th>agent</th><th>secs</th><th>from origin</th><th>from peers</th><th>uploaded</th><th>sha256</th><th>note</th></tr>\n");
        for a in &self.agents {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                a.agent,
                if a.finished { format!("{:.3}", a.secs) } else { "-".into() },
                a.from_origin,
                a.from_peers,
                a.uploaded,
                sha_cell(a),
                esc(&agent_note(a))
            );
        }
        h.push_str("</table>\n<h2>Raw</h2>\n<pre>");
        h.push_str(&esc(&serde_json::to_string_pretty(self)?));
        h.push_str("</pre>\n</body></html>\n");
        Ok(h)
    }

    /// Fraction of agents done against seconds, with the baseline and T* if known.
    pub fn cdf_svg(&self) -> anyhow::Result<String> {
        use plotters::prelude::*;
        let swarm = cdf(self.agents.iter().filter(|a| a.finished).map(|a| a.secs));
        let base = self.baseline.as_ref().map(|b| cdf(b.secs.iter().copied())).unwrap_or_default();
        let xmax = swarm
            .iter()
            .chain(&base)
            .map(|p| p.0)
            .chain(self.bound.as_ref().map(|b| b.secs).filter(|s| s.is_finite()))
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.05;
        let mut buf = String::new();
        {
            let root = SVGBackend::with_string(&mut buf, (800, 420)).into_drawing_area();
            root.fill(&WHITE).map_err(pe)?;
            let mut chart = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..xmax, 0f64..1.0)
                .map_err(pe)?;
            chart.configure_mesh().x_desc("seconds").y_desc("fraction of agents done").draw().map_err(pe)?;
            chart
                .draw_series(LineSeries::new(steps(&swarm), BLUE.stroke_width(2)))
                .map_err(pe)?
                .label("swarm")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
            if !base.is_empty() {
                chart
                    .draw_series(LineSeries::new(steps(&base), RED.stroke_width(2)))
                    .map_err(pe)?
                    .label("baseline (origin only)")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            }
            if let Some(b) = self.bound.as_ref().filter(|b| b.secs.is_finite()) {
                chart
                    .draw_series(LineSeries::new(vec![(b.secs, 0.0), (b.secs, 1.0)], BLACK))
                    .map_err(pe)?
                    .label("bound T*")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(pe)?;
            root.present().map_err(pe)?;
        }
        Ok(buf)
    }

    /// Delivered MiB (all agents) against seconds.
    pub fn timeline_svg(&self) -> anyhow::Result<String> {
        use plotters::prelude::*;
        let pts: Vec<(f64, f64)> = self.timeline.iter().map(|s| (s.secs, s.delivered as f64 / MIB)).collect();
        let xmax = pts.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-3) * 1.05;
        let ymax = (self.blob_bytes as f64 * self.n_agents as f64 / MIB)
            .max(pts.iter().map(|p| p.1).fold(0.0, f64::max))
            .max(1.0)
            * 1.05;
        let mut buf = String::new();
        {
            let root = SVGBackend::with_string(&mut buf, (800, 360)).into_drawing_area();
            root.fill(&WHITE).map_err(pe)?;
            let mut chart = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..xmax, 0f64..ymax)
                .map_err(pe)?;
            chart.configure_mesh().x_desc("seconds").y_desc("MiB delivered").draw().map_err(pe)?;
            chart.draw_series(LineSeries::new(pts, BLUE.stroke_width(2))).map_err(pe)?;
            root.present().map_err(pe)?;
        }
        Ok(buf)
    }

    /// One stacked bar per agent: MiB from the origin (red) under MiB from peers (blue).
    pub fn sources_svg(&self) -> anyhow::Result<String> {
        use plotters::prelude::*;
        let n = self.agents.len().max(1) as f64;
        let ymax =
            self.agents.iter().map(|a| (a.from_origin + a.from_peers) as f64 / MIB).fold(0.0, f64::max).max(1.0) * 1.1;
        let mut buf = String::new();
        {
            let root = SVGBackend::with_string(&mut buf, (800, 360)).into_drawing_area();
            root.fill(&WHITE).map_err(pe)?;
            let mut chart = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..ymax)
                .map_err(pe)?;
            chart.configure_mesh().x_desc("agent").y_desc("MiB received").disable_x_mesh().draw().map_err(pe)?;
            let bars = |from_origin: bool| {
                self.agents.iter().enumerate().map(move |(k, a)| {
                    let o = a.from_origin as f64 / MIB;
                    let (y0, y1) = if from_origin { (0.0, o) } else { (o, o + a.from_peers as f64 / MIB) };
                    let x = k as f64;
                    Rectangle::new(
                        [(x - 0.35, y0), (x + 0.35, y1)],
                        if from_origin { RED.filled() } else { BLUE.filled() },
                    )
                })
            };
            chart
                .draw_series(bars(true))
                .map_err(pe)?
                .label("from origin")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], RED.filled()));
            chart
                .draw_series(bars(false))
                .map_err(pe)?
                .label("from peers")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], BLUE.filled()));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(pe)?;
            root.present().map_err(pe)?;
        }
        Ok(buf)
    }
}

impl Machine {
    /// This machine, from `std` and `/proc`.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo.lines().find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
            }),
            mem_total_bytes: proc_kib(&meminfo, "MemTotal:"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        }
    }
}

impl Store {
    /// The mount holding `path` (the longest matching mount point in `/proc/mounts`).
    pub fn detect(path: &Path) -> Store {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Store::from_mounts(&path, &mounts)
    }

    /// [`Store::detect`] against a given `/proc/mounts` text.
    pub fn from_mounts(path: &Path, mounts: &str) -> Store {
        let fs_type = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_dev, mnt, ty) = (f.next()?, f.next()?, f.next()?);
                path.starts_with(mnt).then(|| (mnt.len(), ty.to_string()))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, ty)| ty);
        let kind = match fs_type.as_deref() {
            Some("tmpfs" | "ramfs") => "tmpfs",
            _ => "disk",
        };
        Store { path: path.display().to_string(), fs_type, kind: kind.to_string() }
    }
}

/// Above this many ns per byte received, writing pieces into the stores is called slow: a
/// warm tmpfs page takes about 0.3 ns per byte on the 2-core machines the figures come from.
pub const STORE_WRITE_SLOW: f64 = 1.0;

/// The agents' counter behind [`Resources::store_write_secs`].
pub const STORE_WRITE_SECONDS: &str = "shoal_swarm_store_write_seconds_total";
/// The agents' counter behind [`Resources::digest_read_back`].
pub const DIGEST_READ_BACK: &str = "shoal_swarm_digest_read_back_bytes_total";

/// This process's CPU time so far: (user, system) seconds from `/proc/self/stat`.
pub fn cpu_times() -> Option<(f64, f64)> {
    parse_stat_times(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds.
pub fn parse_stat_times(stat: &str) -> Option<(f64, f64)> {
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field k is f[k - 3].
    let tick = |k: usize| f.get(k - 3)?.parse::<u64>().ok().map(|t| t as f64 / USER_HZ);
    Some((tick(14)?, tick(15)?))
}

/// Peak RSS of this process in bytes (`VmHWM`).
pub fn peak_rss() -> Option<u64> {
    proc_kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM:")
}

/// Resets this process's peak RSS so `VmHWM` covers only what follows; false if not allowed.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Reads `key   123 kB` from a `/proc` text as bytes.
pub fn proc_kib(text: &str, key: &str) -> Option<u64> {
    let v = text.lines().find_map(|l| l.strip_prefix(key))?;
    v.split_whitespace().next()?.parse::<u64>().ok().map(|k| k * 1024)
}

/// Linux's fixed user-visible clock tick rate (`sysconf(_SC_CLK_TCK)`).
const USER_HZ: f64 = 100.0;
const MIB: f64 = (1u64 << 20) as f64;

/// A plain left-header, right-aligned text table.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|s| s.to_string()).collect()] }
    }
    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }
    fn render(&self) -> String {
        if self.rows.len() < 2 {
            return String::new();
        }
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut s = String::new();
        for r in &self.rows {
            for (c, cell) in r.iter().enumerate() {
                if c == 0 {
                    let _ = write!(s, "{cell:<w$}", w = width[0]);
                } else {
                    let _ = write!(s, "  {cell:>w$}", w = width[c]);
                }
            }
            s.push('\n');
        }
        s
    }
}

/// Sorted (secs, fraction done) points.
fn cdf(secs: impl Iterator<Item = f64>) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = secs.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.into_iter().enumerate().map(|(k, s)| (s, (k + 1) as f64 / n)).collect()
}

/// A step line through CDF points, starting at (0, 0).
fn steps(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0)];
    let mut y = 0.0;
    for &(x, ny) in pts {
        out.push((x, y));
        out.push((x, ny));
        y = ny;
    }
    out
}

/// The sha256 cell of an agent's row.
fn sha_cell(a: &AgentPull) -> &'static str {
    match (a.finished, a.verified) {
        (false, _) => "-",
        (true, true) => "ok",
        (true, false) => "MISMATCH",
    }
}

/// What happened to an agent besides its pull: late start, kill, restart.
pub fn agent_note(a: &AgentPull) -> String {
    let mut parts = Vec::new();
    if a.late {
        parts.push(format!("late: started at {:.1}s", a.started_secs));
    }
    if let Some(k) = a.killed_secs {
        parts.push(format!("killed at {k:.1}s"));
        match a.restarted_secs {
            Some(r) => parts.push(format!("restarted at {r:.1}s")),
            None if !a.finished => parts.push("not restarted, unfinished".into()),
            None => {}
        }
    }
    parts.join(", ")
}

fn pe<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn f3(x: f64) -> String {
    format!("{x:.3}")
}

fn opt_f(x: Option<f64>) -> String {
    x.map_or("?".into(), |x| format!("{x:.2}"))
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

/// `n` bytes as "256MiB", "1.5GiB", "123B".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if v.fract() == 0.0 { format!("{v:.0}{unit}") } else { format!("{v:.1}{unit}") }
}

fn rate(r: Option<u64>) -> String {
    r.map_or("none".into(), |r| format!("{}/s", human_bytes(r)))
}

/// Asserts two reports are equal up to the last bits of their floats: serde_json's default
/// float parser is not exactly round-trip, and these are measurements, not keys.
#[cfg(test)]
pub(crate) fn assert_reports_close(a: &RunReport, b: &RunReport) {
    fn close(a: &serde_json::Value, b: &serde_json::Value, path: &str) {
        use serde_json::Value as V;
        match (a, b) {
            (V::Number(x), V::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 1e-12 * x.abs().max(y.abs()), "{path}: {x} != {y}");
            }
            (V::Array(x), V::Array(y)) => {
                assert_eq!(x.len(), y.len(), "{path}");
                for (k, (x, y)) in x.iter().zip(y).enumerate() {
                    close(x, y, &format!("{path}[{k}]"));
                }
            }
            (V::Object(x), V::Object(y)) => {
                assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{path}");
                for (k, x) in x {
                    close(x, &y[k], &format!("{path}.{k}"));
                }
            }
            _ => assert_eq!(a, b, "{path}"),
        }
    }
    close(&serde_json::to_value(a).unwrap(), &serde_json::to_value(b).unwrap(), "");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn resources_between_two_readings() {
        let r = Resources::between(Some((1.0, 2.0)), Some((3.5, 5.0)), Some(7), None, "n".into());
        assert_eq!((r.user_secs, r.sys_secs, r.cpu_secs), (Some(2.5), Some(3.0), Some(5.5)));
        assert_eq!((r.peak_rss_bytes, r.note.as_str()), (Some(7), "n"));
        let unknown = Resources::between(None, Some((3.5, 5.0)), None, Some(9), String::new());
        assert_eq!((unknown.cpu_secs, unknown.user_secs, unknown.max_agent_rss_bytes), (None, None, Some(9)));
    }

    const MIB_U: u64 = 1 << 20;

    fn pull(agent: usize, secs: f64, from_origin: u64, from_peers: u64) -> AgentPull {
        AgentPull {
            from_origin,
            from_peers,
            uploaded: from_peers,
            ..AgentPull::plain(agent, secs, from_origin + from_peers, true)
        }
    }

    pub(crate) fn sample_report(capped: bool) -> RunReport {
        let f = 4 * MIB_U;
        let agents = vec![pull(0, 1.0, f, 0), pull(1, 1.2, MIB_U, 3 * MIB_U), pull(2, 1.5, 0, f)];
        let baseline = Baseline {
            method: "test".into(),
            secs: vec![1.0, 2.0, 3.0],
            percentiles: bound::percentiles(&[1.0, 2.0, 3.0]),
            verified_all: true,
        };
        RunReport::new(
            RunSpec {
                scenario: "one blob to N agents".into(),
                mode: "in-process".into(),
                n_origins: 1,
                blob_bytes: f,
                digest: "sha256:00".into(),
                caps: Caps {
                    agent_rate: capped.then_some(4 * MIB_U),
                    origin_rate: capped.then_some(4 * MIB_U),
                    seeding_origins: 1,
                },
                store: Store { path: "/dev/shm/x".into(), fs_type: Some("tmpfs".into()), kind: "tmpfs".into() },
                ..RunSpec::default()
            },
            agents,
            5 * MIB_U,
            vec![Sample { secs: 0.5, delivered: 6 * MIB_U }, Sample { secs: 1.5, delivered: 12 * MIB_U }],
            Resources {
                cpu_secs: Some(1.0),
                user_secs: Some(0.5),
                sys_secs: Some(0.5),
                peak_rss_bytes: Some(MIB_U),
                max_agent_rss_bytes: None,
                store_write_secs: Some(0.25),
                digest_read_back: Some(3 * MIB_U),
                note: "test".into(),
            },
            Some(baseline),
        )
    }

    #[test]
    fn derived_figures() {
        let r = sample_report(true);
        // T* = max(4/4, 4/4, 3·4/(4+12)) = 1 s.
        let b = r.bound.as_ref().unwrap();
        assert!((b.secs - 1.0).abs() < 1e-12);
        let ratios = r.ratios.unwrap();
        assert!((ratios.max - 1.5).abs() < 1e-12 && (ratios.p50 - 1.2).abs() < 1e-12);
        assert!((r.speedup.unwrap() - 2.0).abs() < 1e-12);
        assert_eq!((r.from_origin, r.from_peers), (5 * MIB_U, 7 * MIB_U));
        assert!(r.verified_all);
        let uncapped = sample_report(false);
        assert!(uncapped.bound.is_none() && uncapped.ratios.is_none());
    }

    #[test]
    fn json_round_trips() {
        for capped in [true, false] {
            let r = sample_report(capped);
            let back: RunReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_reports_close(&back, &r);
        }
    }

    #[test]
    fn html_embeds_the_plots() {
        let h = sample_report(true).html().unwrap();
        assert_eq!(h.matches("<svg").count(), 3, "cdf, timeline and sources");
        assert!(h.contains("bound T*") && h.contains("from peers") && h.contains("</html>"));
        let mut r = sample_report(false);
        r.timeline.clear();
        r.baseline = None;
        assert_eq!(r.html().unwrap().matches("<svg").count(), 2);
    }

    #[test]
    fn table_lists_agents_and_ratios() {
        let t = sample_report(true).table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("agent") && lines[0].contains("copy"));
        assert_eq!(lines.iter().filter(|l| l.trim_end().ends_with("ok")).count(), 3);
        assert!(t.contains("x bound") && t.contains("bound T* = 1.000s"));
        assert!(t.contains("speed-up 2.00x"));
        let row = t.lines().find(|l| l.starts_with("x bound")).unwrap();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["x", "bound", "1.200", "1.500", "1.500", "1.500"]);
        assert!(sample_report(false).table().contains("bound T*: none"));
    }

    /// The table says how long the stores took to write what the agents received: 0.25 s
    /// over the sample's 12 MiB is 19.87 ns per byte, which is slow.
    #[test]
    fn table_names_the_stores_write_time() {
        let mut r = sample_report(true);
        let line = |r: &RunReport| r.table().lines().find(|l| l.starts_with("stores:")).map(str::to_string);
        let slow = line(&r).unwrap();
        assert!(
            slow.contains("0.25 s writing") && slow.contains("19.87 ns per byte") && slow.contains("slow"),
            "{slow}"
        );
        r.resources.store_write_secs = Some(0.001);
        assert!(!line(&r).unwrap().contains("slow"));
        r.resources.store_write_secs = None;
        assert_eq!(line(&r), None);
    }

    /// The table gives the run's CPU per delivered byte with and without the store writes
    /// (the figure the node's target is set in): 1 s over the sample's 12 MiB is 79.47 ns
    /// per byte, 59.60 once the stores' 0.25 s are taken out.
    #[test]
    fn table_names_the_cpu_per_byte() {
        let mut r = sample_report(true);
        let line = |r: &RunReport| r.table().lines().find(|l| l.contains("per GiB delivered")).map(str::to_string);
        let l = line(&r).unwrap();
        assert!(
            l.starts_with("cpu 85.33 s per GiB")
                && l.contains("79.47 ns per byte, 59.60 without the store writes")
                && l.ends_with("(tls off)"),
            "{l}"
        );
        r.resources.store_write_secs = None;
        let l = line(&r).unwrap();
        assert!(l.contains("79.47 ns per byte (tls off)"), "{l}");
        r.resources.cpu_secs = None;
        assert_eq!(line(&r), None);
    }

    /// The table says how much the sha256 read back: 3 MiB of the sample's 12 MiB received.
    #[test]
    fn table_names_the_digest_read_back() {
        let mut r = sample_report(true);
        let line = |r: &RunReport| r.table().lines().find(|l| l.starts_with("sha256:")).map(str::to_string);
        let l = line(&r).unwrap();
        assert!(l.contains("3MiB read back") && l.contains("(25% of the bytes received"), "{l}");
        r.resources.digest_read_back = None;
        assert_eq!(line(&r), None);
    }

    #[test]
    fn table_renderer_aligns_columns() {
        let mut t = Table::new(&["", "a", "bb"]);
        t.row(vec!["row".into(), "1".into(), "22".into()]);
        assert_eq!(t.render(), "     a  bb\nrow  1  22\n");
        assert_eq!(Table::new(&["x"]).render(), "");
    }

    #[test]
    fn proc_parsing() {
        let stat = "1234 (shoal loadtest) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_stat_times(stat), Some((2.5, 0.5)));
        assert_eq!(parse_stat_times("garbage"), None);
        assert_eq!(proc_kib("Name: x\nVmHWM:\t  2048 kB\n", "VmHWM:"), Some(2 << 20));
        assert_eq!(proc_kib("Name: x\n", "VmHWM:"), None);
    }

    #[test]
    fn store_kind_from_mounts() {
        let mounts = "/dev/sda1 / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\n";
        let s = Store::from_mounts(Path::new("/dev/shm/shoal-1"), mounts);
        assert_eq!((s.kind.as_str(), s.fs_type.as_deref()), ("tmpfs", Some("tmpfs")));
        let s = Store::from_mounts(Path::new("/var/tmp/x"), mounts);
        assert_eq!((s.kind.as_str(), s.fs_type.as_deref()), ("disk", Some("ext4")));
    }

    #[test]
    fn human_sizes() {
        for (n, want) in [(0, "0B"), (1023, "1023B"), (1024, "1KiB"), (256 << 20, "256MiB"), (3 << 29, "1.5GiB")] {
            assert_eq!(human_bytes(n), want);
        }
    }
}
