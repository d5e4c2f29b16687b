//! `shoal-loadtest faults`: the flags and the run.

use std::path::PathBuf;

use shoal_runtime::ByteSize;

use super::{Fault, MatrixOptions, run_matrix, table};

#[derive(clap::Args, Clone, Debug)]
pub struct FaultArgs {
    /// The rows to run, comma-separated (the fault-free row `none` always runs, first);
    /// default every row.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// Agents per row.
    #[arg(long, default_value_t = 10)]
    pub agents: usize,
    /// The blob's size.
    #[arg(long, default_value = "64MiB")]
    pub size: ByteSize,
    /// Per-agent link cap (bytes/s), which slows the pull so each fault lands mid-swarm.
    #[arg(long, default_value = "32MiB")]
    pub agent_rate: ByteSize,
    /// The origins' upload cap (bytes/s).
    #[arg(long, default_value = "32MiB")]
    pub origin_rate: ByteSize,
    /// Stores and logs go in a fresh directory under this one (default /dev/shm).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Give up on a row after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// The blob's bytes and the S3 proxy's draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the matrix, prints the table, and fails if any row that ran failed a check.
pub async fn main(a: &FaultArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.agents >= 2, "--agents: at least 2");
    crate::processes::binaries_dir()?;
    let o = MatrixOptions {
        faults: if a.faults.is_empty() { Fault::ALL.to_vec() } else { a.faults.clone() },
        agents: a.agents,
        size: a.size.0,
        agent_rate: Some(a.agent_rate.0),
        origin_rate: Some(a.origin_rate.0),
        dir: a.dir.clone(),
        timeout: std::time::Duration::from_secs(a.timeout),
        seed: a.seed,
        progress: true,
    };
    let rows = run_matrix(&o).await?;
    println!("{}", table(&rows));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rows)?)?;
    }
    let failed: Vec<&str> =
        rows.iter().filter(|r| r.skipped.is_none() && !r.passed()).map(|r| r.fault.as_str()).collect();
    anyhow::ensure!(failed.is_empty(), "fault rows failed: {}", failed.join(", "));
    Ok(())
}
