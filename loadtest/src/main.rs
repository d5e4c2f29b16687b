//! `shoal-loadtest`: runs Shoal clusters on this machine and measures them.
//!
//! `shoal-loadtest local` (the default) starts a tracker, one origin with a local-directory
//! backend and N agents on distinct loopback addresses in this process, has every agent pull
//! one random blob through the swarm, and prints each agent's time, the bytes it got from the
//! origin and from peers, and whether its copy matches the digest.

// Harness code: counts, sizes and addresses here are small, and no file offsets are computed.
#![allow(clippy::cast_possible_truncation)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shoal_loadtest::cluster::{Cluster, random_blob};
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
    /// Where stores live; default a fresh directory under /dev/shm (tmpfs) when present, so
    /// the run measures the swarm rather than this machine's one disk.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

impl Default for LocalArgs {
    fn default() -> Self {
        LocalArgs {
            agents: 10,
            origins: 1,
            size: ByteSize(256 << 20),
            agent_rate: None,
            origin_rate: None,
            dir: None,
            timeout: 600,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_runtime::init_tracing("warn");
    let args = Args::parse();
    match args.cmd.unwrap_or(Cmd::Local(LocalArgs::default())) {
        Cmd::Local(a) => local(a).await,
        Cmd::Sim(a) => shoal_loadtest::sim::cli::main(&a),
    }
}

async fn local(a: LocalArgs) -> anyhow::Result<()> {
    let (root, _tmp) = match a.dir {
        Some(d) => (d, None),
        None => {
            let base = if std::path::Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            };
            let t = tempfile::Builder::new().prefix("shoal-local-").tempdir_in(&base)?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    println!(
        "shoal local cluster: 1 tracker, {} origin(s), {} agents, blob {} ({}), stores in {}",
        a.origins,
        a.agents,
        a.size,
        a.size.0,
        root.display()
    );
    let cluster = Cluster::builder()
        .agents(a.agents)
        .origins(a.origins)
        .agent_rate(a.agent_rate.map(|r| r.0))
        .origin_rate(a.origin_rate.map(|r| r.0))
        .root(root)
        .start()
        .await?;
    let data = random_blob(a.size.0, rand::random());
    let digest = cluster.put_backend_blob(&data)?;
    drop(data);
    println!("blob {digest} placed in the origin backend; every agent pulls it now\n");
    let pulls = shoal_loadtest::pull::pull_all(&cluster, digest, Duration::from_secs(a.timeout)).await?;
    println!(
        "{:>6} {:>9} {:>14} {:>14} {:>14} {:>8}",
        "agent", "secs", "from origin", "from peers", "uploaded", "sha256"
    );
    for p in &pulls {
        println!(
            "{:>6} {:>9.3} {:>14} {:>14} {:>14} {:>8}",
            p.agent,
            p.secs,
            p.from_origin,
            p.from_peers,
            p.uploaded,
            if p.verified { "ok" } else { "MISMATCH" }
        );
    }
    let size = a.size.0.max(1) as f64;
    let origin_up = cluster.origin_uploaded();
    let max = pulls.iter().map(|p| p.secs).fold(0.0, f64::max);
    let from_origin: u64 = pulls.iter().map(|p| p.from_origin).sum();
    let from_peers: u64 = pulls.iter().map(|p| p.from_peers).sum();
    let all_ok = pulls.iter().all(|p| p.verified && p.bytes == a.size.0);
    println!(
        "\nall done in {max:.3}s; origin uploaded {origin_up} bytes ({:.2}x the blob); agents got {from_origin} bytes from the origin, {from_peers} from peers ({:.1}% from peers); aggregate {:.1} MiB/s",
        origin_up as f64 / size,
        100.0 * from_peers as f64 / (from_origin + from_peers).max(1) as f64,
        size * pulls.len() as f64 / max.max(1e-9) / (1 << 20) as f64,
    );
    println!("every copy matches {digest}: {}", if all_ok { "yes" } else { "NO" });
    cluster.shutdown().await;
    anyhow::ensure!(all_ok, "some agent's copy did not match the digest");
    Ok(())
}
