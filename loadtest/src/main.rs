//! `shoal-loadtest`: runs Shoal clusters on this machine and measures them.
//!
//! `shoal-loadtest local` (the default) starts a tracker, one origin with a local-directory
//! backend and N agents on distinct loopback addresses in this process, has every agent pull
//! one random blob through the swarm, and prints each agent's time, the bytes it got from the
//! origin and from peers, whether its copy matches the digest, the percentiles and, when
//! links are capped, the bound T* and each percentile's ratio to it. `--baseline` adds the
//! origin-only baseline and the speed-up; `--report DIR` writes report.json and report.html.
//!
//! `--mode processes` runs the real `shoal-tracker`, `shoal-origin` and `shoal-agent`
//! binaries instead, one process per node.
//!
//! `shoal-loadtest bench` runs `local` over a matrix (agents × sizes × rates), writes one
//! report per run and prints a summary table. `shoal-loadtest sim` is the simulator.

// Harness code: counts, sizes and addresses here are small, and no file offsets are computed.
#![allow(clippy::cast_possible_truncation)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shoal_loadtest::baseline::BaselineMode;
use shoal_loadtest::report::{RunReport, human_bytes};
use shoal_loadtest::run::{LocalOptions, Mode, run};
use shoal_runtime::ByteSize;

#[derive(Parser)]
#[command(version, about = "Shoal load-test harness")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// A local in-process cluster pulling one random blob through the swarm.
    Local(LocalArgs),
    /// Runs `local` over a matrix of agent counts, blob sizes and agent rates.
    Bench(BenchArgs),
    /// The deterministic simulator: simulated agents in virtual time (see `sim` in the library).
    Sim(shoal_loadtest::sim::cli::SimArgs),
}

#[derive(clap::Args, Clone)]
struct LocalArgs {
    /// Agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Origins.
    #[arg(long, default_value_t = 1)]
    origins: usize,
    /// Blob size.
    #[arg(long, default_value = "256MiB")]
    size: ByteSize,
    /// Per-agent link cap (bytes/s, up and down), e.g. "100MiB"; none by default.
    #[arg(long)]
    agent_rate: Option<ByteSize>,
    /// Origin upload cap (bytes/s); none by default.
    #[arg(long)]
    origin_rate: Option<ByteSize>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::Args, Clone)]
struct BenchArgs {
    /// Agent counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,25,50")]
    agents: Vec<usize>,
    /// Origins.
    #[arg(long, default_value_t = 1)]
    origins: usize,
    /// Blob sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256MiB")]
    size: Vec<ByteSize>,
    /// Per-agent link caps, comma-separated; "none" for uncapped.
    #[arg(long, value_delimiter = ',', default_value = "50MiB", value_parser = parse_rate)]
    agent_rate: Vec<Rate>,
    /// Origin upload cap; defaults to each run's agent rate, so the origin is a host like the others.
    #[arg(long, value_parser = parse_rate)]
    origin_rate: Option<Rate>,
    /// Store placements, comma-separated: "tmpfs" (under --dir, default /dev/shm) and/or
    /// "disk" (under --disk-dir), so a matrix can show what one shared disk costs.
    #[arg(long, value_delimiter = ',', default_value = "tmpfs")]
    stores: Vec<StoreChoice>,
    /// The base directory for "disk" runs.
    #[arg(long, default_value = "/var/tmp")]
    disk_dir: PathBuf,
    /// Where the per-run reports and summary go.
    #[arg(long, default_value = "loadtest-bench")]
    out: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options shared by `local` and `bench`.
#[derive(clap::Args, Clone, Default)]
struct CommonArgs {
    /// in-process: every node in this process; processes: the real binaries, one process per
    /// node (build them first with `cargo build --release --workspace`).
    #[arg(long, value_enum, default_value_t = Mode::InProcess)]
    mode: Mode,
    /// Stores go in a fresh directory under this one; default /dev/shm (tmpfs) when present,
    /// so the run measures the swarm rather than this machine's one disk. Pass a disk path
    /// (e.g. /var/tmp) for a disk-backed run; the report says which it was.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up after this many seconds (the swarm pull and the baseline each).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Also measure the origin-only baseline and the speed-up over it.
    #[arg(long)]
    baseline: bool,
    /// How the baseline's fetches are scheduled.
    #[arg(long, value_enum, default_value_t = BaselineMode::Concurrent)]
    baseline_mode: BaselineMode,
    /// Write report.json and report.html into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print a line to stderr as each agent completes (always on for `bench`).
    #[arg(long)]
    progress: bool,
}

/// Where a bench run's stores go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StoreChoice {
    Tmpfs,
    Disk,
}

/// A rate cap: `None` is unlimited.
#[derive(Clone, Copy, Debug)]
struct Rate(Option<u64>);

fn parse_rate(s: &str) -> Result<Rate, String> {
    match s.trim() {
        "none" | "unlimited" | "" => Ok(Rate(None)),
        v => v.parse::<ByteSize>().map(|b| Rate(Some(b.0))).map_err(|e| format!("{e}")),
    }
}

impl Default for LocalArgs {
    fn default() -> Self {
        LocalArgs {
            agents: 10,
            origins: 1,
            size: ByteSize(256 << 20),
            agent_rate: None,
            origin_rate: None,
            common: CommonArgs { timeout: 600, ..CommonArgs::default() },
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_runtime::init_tracing("warn");
    let args = Args::parse();
    match args.cmd.unwrap_or(Cmd::Local(LocalArgs::default())) {
        Cmd::Local(a) => local(a).await,
        Cmd::Bench(a) => bench(a).await,
        Cmd::Sim(a) => shoal_loadtest::sim::cli::main(&a),
    }
}

fn options(
    c: &CommonArgs,
    agents: usize,
    origins: usize,
    size: u64,
    agent_rate: Option<u64>,
    origin_rate: Option<u64>,
) -> LocalOptions {
    LocalOptions {
        mode: c.mode,
        agents,
        origins,
        size,
        agent_rate,
        origin_rate,
        dir: c.dir.clone(),
        timeout: Duration::from_secs(c.timeout),
        baseline: c.baseline.then_some(c.baseline_mode),
        progress: c.progress,
        verbose: true,
    }
}

async fn local(a: LocalArgs) -> anyhow::Result<()> {
    let o = options(&a.common, a.agents, a.origins, a.size.0, a.agent_rate.map(|r| r.0), a.origin_rate.map(|r| r.0));
    let r = run(&o).await?;
    print!("{}", r.table());
    if let Some(dir) = &a.common.report {
        r.write(dir)?;
        println!("report: {}/report.json, {}/report.html", dir.display(), dir.display());
    }
    anyhow::ensure!(r.verified_all, "some agent's copy did not match the digest");
    Ok(())
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for &store in &a.stores {
        for &size in &a.size {
            for &rate in &a.agent_rate {
                for &n in &a.agents {
                    runs.push((store, n, size.0, rate.0));
                }
            }
        }
    }
    std::fs::create_dir_all(&a.out)?;
    let mut reports: Vec<(String, RunReport)> = Vec::new();
    for (k, &(store, n, size, rate)) in runs.iter().enumerate() {
        let dir = match store {
            StoreChoice::Tmpfs => a.common.dir.clone(),
            StoreChoice::Disk => Some(a.disk_dir.clone()),
        };
        let common = CommonArgs { progress: true, dir, ..a.common.clone() };
        let name = format!(
            "run{:02}-n{n}-{}-{}-{}",
            k + 1,
            human_bytes(size),
            rate.map_or("uncapped".into(), |r| format!("{}ps", human_bytes(r))),
            if store == StoreChoice::Disk { "disk" } else { "tmpfs" }
        );
        eprintln!("== [{}/{}] {name}", k + 1, runs.len());
        let origin_rate = a.origin_rate.map_or(rate, |r| r.0);
        let o = options(&common, n, a.origins, size, rate, origin_rate);
        let r = run(&o).await?;
        print!("{}", r.summary());
        let dir = a.out.join(&name);
        r.write(&dir)?;
        println!("report: {}\n", dir.join("report.html").display());
        reports.push((name, r));
    }
    let summary = summary_table(&reports);
    println!("{summary}");
    std::fs::write(a.out.join("summary.txt"), &summary)?;
    let json: Vec<&RunReport> = reports.iter().map(|(_, r)| r).collect();
    std::fs::write(a.out.join("summary.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("summary: {}", a.out.join("summary.txt").display());
    anyhow::ensure!(reports.iter().all(|(_, r)| r.verified_all), "some agent's copy did not match the digest");
    Ok(())
}

/// One line per run: setup, bound, percentiles as ratios, speed-up, throughput, origin share.
fn summary_table(reports: &[(String, RunReport)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<38} {:>5} {:>8} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>7}",
        "run",
        "N",
        "size",
        "agent cap",
        "store",
        "T* s",
        "max s",
        "p50/T*",
        "p99/T*",
        "max/T*",
        "speedup",
        "agg MiB/s",
        "origin/F",
        "cpu s"
    );
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
    for (name, r) in reports {
        let _ = writeln!(
            s,
            "{:<38} {:>5} {:>8} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>7}",
            name,
            r.n_agents,
            human_bytes(r.blob_bytes),
            r.caps.agent_rate.map_or("none".into(), human_bytes),
            r.store.kind,
            opt(r.bound.as_ref().map(|b| b.secs)),
            opt(r.percentiles.map(|p| p.max)),
            opt(r.ratios.map(|x| x.p50)),
            opt(r.ratios.map(|x| x.p99)),
            opt(r.ratios.map(|x| x.max)),
            opt(r.speedup),
            r.aggregate_bytes_per_sec.map_or("-".into(), |b| format!("{:.1}", b / f64::from(1u32 << 20))),
            format!("{:.2}", r.origin_uploaded as f64 / r.blob_bytes.max(1) as f64),
            opt(r.resources.cpu_secs),
        );
    }
    s
}
