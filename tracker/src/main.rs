//! The `shoal-tracker` binary: loads and checks the config, binds, runs [`shoal_tracker::run`]
//! until SIGTERM or SIGINT, then drains.
//!
//! Invariant: a bad configuration exits with [`EX_CONFIG`] (64) before any port is bound.
//! Precedence, lowest to highest: built-in defaults, the YAML file (`--config`), then
//! `--listen`. Each flag has an environment twin (`SHOAL_TRACKER_CONFIG`,
//! `SHOAL_TRACKER_LISTEN`). An origin's `peer` may be a `host:port` name, looked up once at
//! startup (see `shoal_runtime::config::load_resolving`).

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shoal_runtime::EX_CONFIG;
use shoal_tracker::{Config, ValidConfig};
use tokio_util::sync::CancellationToken;

/// mimalloc returns freed piece buffers to the OS promptly; glibc malloc keeps an arena per
/// thread that held one, which took an agent moving a 4 GiB blob well past 64 MiB of RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal-tracker: {}", report(e.as_ref()));
            std::process::exit(EX_CONFIG);
        }
    };
    if args.check_config {
        println!("shoal-tracker: config ok");
        return ExitCode::SUCCESS;
    }
    shoal_runtime::init_tracing("info", config.log_format());
    if config.tls().is_none() {
        shoal_runtime::tls::warn_plaintext("tracker");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-tracker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(config))
}

/// Loads the YAML and applies the flags, then validates the result.
fn load(args: &Args) -> Result<ValidConfig, Box<dyn StdError>> {
    let names = shoal_runtime::config::PeerNames::for_check_config(args.check_config);
    let mut config: Config = shoal_runtime::config::load_resolving(args.config.as_deref(), names)?;
    if let Some(listen) = &args.listen {
        config.listen = listen
            .parse::<SocketAddr>()
            .map_err(|e| format!("invalid --listen / SHOAL_TRACKER_LISTEN {listen:?}: {e}"))?;
    }
    Ok(config.validate()?)
}

async fn serve(config: ValidConfig) -> ExitCode {
    let grace = config.shutdown_grace();
    let listener = match tokio::net::TcpListener::bind(config.listen()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.listen(), "cannot bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "tracker listening"),
        Err(e) => tracing::warn!("cannot read the bound address: {e}"),
    }

    // The node's one registry, passed down.
    let registry = prometheus::Registry::new();
    let shutdown = CancellationToken::new();
    let mut running = std::pin::pin!(shoal_tracker::run(config, listener, registry, shutdown.clone()));
    let res = tokio::select! {
        res = &mut running => res,
        _ = shoal_runtime::wait_for_signal() => {
            shutdown.cancel();
            match tokio::time::timeout(grace + DRAIN_SLACK, &mut running).await {
                Ok(res) => res,
                Err(_) => {
                    tracing::error!(?grace, "drain deadline passed; exiting with work in flight");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("tracker failed: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by `: `. A cause is skipped when the text so far already
/// contains it (some error types also print their source in their own message).
fn report(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
