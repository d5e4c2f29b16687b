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
//! binaries instead, one process per node; `--mode netns` runs them each in its own network
//! namespace with links capped by `tc` (root only; `--cleanup` removes leftovers);
//! `--mode remote --agents-at URL,...` drives agents already running elsewhere.
//!
//! Scenarios (`local` and `bench`): `--layers 512MiB,256MiB,64MiB` (an image's layers, pulled
//! concurrently), `--blobs M` (M distinct blobs of `--size`), `--late-join K@T` and
//! `--churn K@T` (with `--churn-restart D`).
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
use shoal_loadtest::modes::{LocalOptions, Mode};
use shoal_loadtest::remote::RemoteOptions;
use shoal_loadtest::report::{RunReport, human_bytes};
use shoal_loadtest::run::run;
use shoal_loadtest::scenario::{AtTime, BlobSet, Churn, Scenario, parse_secs};
use shoal_runtime::ByteSize;

#[derive(Parser)]
#[command(version = shoal_runtime::VERSION, about = "Shoal load-test harness")]
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
    /// The fault matrix: each fault on a fresh cluster of the real binaries, checked for exact
    /// copies, no unverified byte served and no panic (see `faults` in the library).
    Faults(shoal_loadtest::faults::cli::FaultArgs),
    /// A long loop of pulls with churn on small stores, sampling every process's RSS and open
    /// file descriptors (see `soak` in the library); not for CI.
    Soak(shoal_loadtest::soak::SoakArgs),
}

#[derive(clap::Args, Clone)]
struct LocalArgs {
    /// Agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Origins.
    #[arg(long, default_value_t = 1)]
    origins: usize,
    /// Blob size (default 256MiB; in remote mode, the size of --digest, asked of the first
    /// agent if not given).
    #[arg(long)]
    size: Option<ByteSize>,
    /// Per-agent link cap (bytes/s, up and down), e.g. "100MiB"; none by default.
    #[arg(long)]
    agent_rate: Option<ByteSize>,
    /// Origin upload cap (bytes/s); none by default.
    #[arg(long)]
    origin_rate: Option<ByteSize>,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    common: CommonArgs,
}

/// `--mode remote`: where the agents and the blob are.
#[derive(clap::Args, Clone, Default)]
struct RemoteArgs {
    /// The agents' HTTP API URLs, comma-separated (e.g. http://h1:7700,http://h2:7700).
    #[arg(long, value_delimiter = ',')]
    agents_at: Vec<String>,
    /// An origin's HTTP API URL, for --upload and --baseline.
    #[arg(long)]
    origin: Option<String>,
    /// An origin's /metrics URL, for the bytes it uploaded.
    #[arg(long)]
    origin_metrics: Option<String>,
    /// The blob to pull, already in the origins' backend.
    #[arg(long)]
    digest: Option<shoal_core::Digest>,
    /// A file to upload to --origin first (PUT /blobs/<digest>) and then pull.
    #[arg(long)]
    upload: Option<PathBuf>,
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
    /// An image of these layers (comma-separated sizes), every agent pulling all of them
    /// concurrently; T* is for their total.
    #[arg(long, value_delimiter = ',')]
    layers: Vec<ByteSize>,
    /// M distinct blobs of --size, every agent pulling all of them concurrently.
    #[arg(long)]
    blobs: Option<usize>,
    /// K@T: the last K agents start T (e.g. 5s) after the others.
    #[arg(long)]
    late_join: Option<AtTime>,
    /// K@T: the first K agents are killed T into the run.
    #[arg(long)]
    churn: Option<AtTime>,
    /// Restart the killed agents this long after the kill (e.g. 2s), on the same store.
    #[arg(long, value_parser = parse_secs)]
    churn_restart: Option<Duration>,
    /// Remove network namespaces and links a harness left behind (--mode netns), then exit.
    #[arg(long)]
    cleanup: bool,
    /// Leave the origin cold: its fetch from the backend counts in the agents' times. By
    /// default the origin fetches the blobs before the clock starts (T* assumes seeds that
    /// hold them).
    #[arg(long)]
    cold_origin: bool,
    /// A swarm setting for every node (agents and origins), a key of the `swarm:` section of
    /// their YAML, e.g. `--swarm upload_backlog=50ms`; repeatable. Unknown keys and bad values
    /// are refused before anything starts.
    #[arg(long = "swarm", value_name = "KEY=VALUE", value_parser = shoal_loadtest::modes::parse_swarm_setting)]
    swarm: Vec<(String, serde_json::Value)>,
    /// Mutual TLS on every link between the nodes (peer protocol, origin and tracker APIs),
    /// with certificates from a CA made for the run; in-process mode only. The report adds
    /// CPU-seconds per GiB delivered, to compare with a run without it.
    #[arg(long)]
    tls: bool,
    /// Topology zones of the agents (`swarm.zone`; agent i in zone-(i mod N)); in-process
    /// mode only. The report adds the copies each zone received from other zones' peers.
    #[arg(long, default_value_t = 0)]
    zones: usize,
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
            size: None,
            agent_rate: None,
            origin_rate: None,
            remote: RemoteArgs::default(),
            common: CommonArgs { timeout: 600, ..CommonArgs::default() },
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_runtime::init_tracing("warn", shoal_runtime::LogFormat::Text);
    let args = Args::parse();
    let cmd = args.cmd.unwrap_or(Cmd::Local(LocalArgs::default()));
    let common = match &cmd {
        Cmd::Local(a) => Some(&a.common),
        Cmd::Bench(a) => Some(&a.common),
        Cmd::Sim(_) | Cmd::Faults(_) | Cmd::Soak(_) => None,
    };
    if common.is_some_and(|c| c.cleanup) {
        for r in shoal_loadtest::netns::cleanup_leftovers()? {
            println!("removed {r}");
        }
        return Ok(());
    }
    // On Ctrl-C the run is dropped, which stops its node processes and removes its network
    // namespaces, before the exit.
    let res = tokio::select! {
        r = async {
            match cmd {
                Cmd::Local(a) => local(a).await,
                Cmd::Bench(a) => bench(a).await,
                Cmd::Sim(a) => shoal_loadtest::sim::cli::main(&a),
                Cmd::Faults(a) => shoal_loadtest::faults::cli::main(&a).await,
                Cmd::Soak(a) => shoal_loadtest::soak::main(&a).await,
            }
        } => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    match res {
        Some(r) => r,
        None => {
            eprintln!("interrupted; the run's processes and namespaces are removed");
            std::process::exit(130)
        }
    }
}

/// The scenario the flags ask for, with `size` as the one blob's (or each of `--blobs`') size.
fn scenario(c: &CommonArgs, size: u64) -> anyhow::Result<Scenario> {
    let mut sc = match (c.layers.is_empty(), c.blobs) {
        (true, None) => Scenario::single(size),
        (false, None) => {
            Scenario { set: BlobSet::Layers, blobs: c.layers.iter().map(|b| b.0).collect(), ..Scenario::single(size) }
        }
        (true, Some(m)) => {
            anyhow::ensure!(m >= 1, "--blobs needs at least 1");
            Scenario { set: BlobSet::Blobs, blobs: vec![size; m], ..Scenario::single(size) }
        }
        (false, Some(_)) => anyhow::bail!("give --layers or --blobs, not both"),
    };
    sc.late = c.late_join;
    anyhow::ensure!(c.churn_restart.is_none() || c.churn.is_some(), "--churn-restart needs --churn");
    sc.churn = c.churn.map(|k| Churn { count: k.count, at: k.at, restart: c.churn_restart });
    Ok(sc)
}

fn options(
    c: &CommonArgs,
    agents: usize,
    origins: usize,
    size: u64,
    agent_rate: Option<u64>,
    origin_rate: Option<u64>,
) -> anyhow::Result<LocalOptions> {
    anyhow::ensure!(!c.tls || c.mode == Mode::InProcess, "--tls: in-process mode only");
    anyhow::ensure!(!(c.tls && c.baseline), "--tls: the baseline's clients speak plain HTTP; run it without --tls");
    anyhow::ensure!(c.zones == 0 || c.mode == Mode::InProcess, "--zones: in-process mode only");
    Ok(LocalOptions {
        tls: c.tls,
        zones: c.zones,
        mode: c.mode,
        agents,
        origins,
        size,
        scenario: Some(scenario(c, size)?),
        remote: None,
        agent_rate,
        origin_rate,
        dir: c.dir.clone(),
        timeout: Duration::from_secs(c.timeout),
        baseline: c.baseline.then_some(c.baseline_mode),
        progress: c.progress,
        verbose: true,
        cold_origin: c.cold_origin,
        swarm: {
            // Checked here, before any node starts; each mode applies them to its nodes.
            shoal_loadtest::modes::swarm_with(shoal_swarm::SwarmConfig::default(), &c.swarm)?;
            c.swarm.clone()
        },
    })
}

async fn local(a: LocalArgs) -> anyhow::Result<()> {
    let size = a.size.map_or(256 << 20, |s| s.0);
    let mut o = options(&a.common, a.agents, a.origins, size, a.agent_rate.map(|r| r.0), a.origin_rate.map(|r| r.0))?;
    if a.common.mode == Mode::Remote {
        o.agents = a.remote.agents_at.len();
        o.remote = Some(RemoteOptions {
            agents_at: a.remote.agents_at.clone(),
            origin: a.remote.origin.clone(),
            origin_metrics: a.remote.origin_metrics.clone(),
            digest: a.remote.digest,
            size: a.size.map(|s| s.0),
            upload: a.remote.upload.clone(),
        });
    } else {
        anyhow::ensure!(
            a.remote.agents_at.is_empty() && a.remote.digest.is_none() && a.remote.upload.is_none(),
            "--agents-at, --digest and --upload are for --mode remote"
        );
    }
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
        anyhow::ensure!(common.mode != Mode::Remote, "bench runs local clusters; use `local --mode remote`");
        let o = options(&common, n, a.origins, size, rate, origin_rate)?;
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
