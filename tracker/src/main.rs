//! The `shoal-tracker` binary: loads and checks the config, binds, runs [`shoal_tracker::run`]
//! until SIGTERM or SIGINT, then drains.
//!
//! Invariant: a bad configuration exits with `EX_CONFIG` (64) before any port is bound.
//! Precedence, lowest to highest: built-in defaults, the YAML file (`--config`), then
//! `--listen`. Each flag has an environment twin (`SHOAL_TRACKER_CONFIG`,
//! `SHOAL_TRACKER_LISTEN`). An origin's `peer` may be a `host:port` name, looked up once at
//! startup (see `shoal_runtime::config::load_resolving`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use shoal_runtime::ConfigError;
use shoal_tracker::{Config, ValidConfig};
use tokio_util::sync::CancellationToken;

/// mimalloc returns freed piece buffers to the OS promptly; glibc malloc keeps an arena per
/// thread that held one, which took an agent moving a 4 GiB blob well past 64 MiB of RSS.
/// Counted, for `shoal_heap_bytes` (`shoal_runtime::alloc`).
#[global_allocator]
static GLOBAL: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

/// Extra time, on top of `shutdown_grace`, for the tracker's own tasks to stop after the HTTP
/// drain. This is hard-coded.
const DRAIN_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// Shoal tracker: hands out the peers of each blob's swarm.
#[derive(Parser, Debug)]
#[command(name = "shoal-tracker", version = shoal_runtime::VERSION, about)]
struct Args {
    /// YAML config file. Without it, the built-in defaults are used.
    #[arg(long, env = "SHOAL_TRACKER_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Listen address, overriding `listen` from the config (e.g. `0.0.0.0:7600`, `[::]:7600`).
    #[arg(long, env = "SHOAL_TRACKER_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Validate the configuration, then exit: 0 if it is valid, 64 if not.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_runtime::alloc::count_heap_with(|| GLOBAL.allocated());
    let args = Args::parse();
    let config = shoal_runtime::config_or_exit("shoal-tracker", load(&args), args.check_config);
    shoal_runtime::init_tracing("info", config.log_format());
    shoal_runtime::alloc::no_huge_pages();
    if config.tls().is_none() {
        shoal_runtime::tls::warn_plaintext("tracker");
    }
    let listener = tokio::net::TcpListener::bind(config.listen())
        .await
        .with_context(|| format!("cannot bind {}", config.listen()))?;
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "tracker listening"),
        Err(e) => tracing::warn!("cannot read the bound address: {e}"),
    }
    let deadline = config.shutdown_grace() + DRAIN_SLACK;
    // The node's one registry, passed down.
    let registry = prometheus::Registry::new();
    let shutdown = CancellationToken::new();
    let serve = shoal_tracker::run(config, listener, registry, shutdown.clone());
    shoal_runtime::serve_until_signal_within(serve, shutdown, Some(deadline)).await
}

/// Loads the YAML and applies the flags, then validates the result.
fn load(args: &Args) -> Result<ValidConfig, ConfigError> {
    let names = shoal_runtime::config::PeerNames::for_check_config(args.check_config);
    let mut config: Config = shoal_runtime::config::load_resolving(args.config.as_deref(), names)?;
    if let Some(listen) = &args.listen {
        config.listen = listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::Invalid(format!("invalid --listen / SHOAL_TRACKER_LISTEN {listen:?}: {e}")))?;
    }
    Ok(config.validate()?)
}
