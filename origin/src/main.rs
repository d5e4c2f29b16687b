//! `shoal-origin`: parses config, binds, runs the origin until SIGTERM, drains.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use shoal_runtime::config;
use tokio_util::sync::CancellationToken;

/// mimalloc returns freed piece buffers to the OS promptly; glibc malloc keeps an arena per
/// thread that held one, which took an agent moving a 4 GiB blob well past 64 MiB of RSS.
/// Counted, for `shoal_heap_bytes` (`shoal_runtime::alloc`).
#[global_allocator]
static GLOBAL: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

#[derive(Parser)]
#[command(version = shoal_runtime::VERSION, about = "Shoal origin: seeds blobs from S3 or a local directory into the swarm")]
struct Args {
    /// YAML config file (unknown keys are errors). Without it the embedded defaults apply.
    #[arg(long, env = "SHOAL_ORIGIN_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long, env = "SHOAL_ORIGIN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Overrides `peer_listen`.
    #[arg(long, env = "SHOAL_ORIGIN_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// Overrides `swarm.store_dir`.
    #[arg(long, env = "SHOAL_ORIGIN_STORE")]
    store: Option<PathBuf>,
    /// Validates the config and exits: 0 if good, 64 if not.
    #[arg(long)]
    check_config: bool,
}

fn load(args: &Args) -> Result<shoal_origin::ValidConfig, config::ConfigError> {
    let names = config::PeerNames::for_check_config(args.check_config);
    let mut cfg: shoal_origin::Config = config::load_resolving(args.config.as_deref(), names)?;
    if let Some(a) = args.listen {
        cfg.listen = a;
    }
    if let Some(a) = args.peer_listen {
        cfg.peer_listen = a;
    }
    if let Some(s) = &args.store {
        cfg.swarm.store_dir = s.clone();
    }
    cfg.validate()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_runtime::alloc::count_heap_with(|| GLOBAL.allocated());
    let args = Args::parse();
    let cfg = shoal_runtime::config_or_exit("shoal-origin", load(&args), args.check_config);
    shoal_runtime::init_tracing("info", cfg.config.log_format);
    shoal_runtime::alloc::no_huge_pages();
    if cfg.tls.is_none() {
        shoal_runtime::tls::warn_plaintext("origin");
    }
    let listeners = shoal_origin::Listeners::bind(cfg.config.listen, cfg.config.peer_listen).await?;
    let shutdown = CancellationToken::new();
    let registry = prometheus::Registry::new();
    let (_origin, serve) = shoal_origin::start(cfg, listeners, registry, shutdown.clone()).await?;
    shoal_runtime::serve_until_signal(serve, shutdown).await
}
