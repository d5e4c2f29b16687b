//! The Shoal agent: runs on every host. Its HTTP API serves blobs by digest; a blob it does
//! not hold is downloaded through the swarm (metainfo from the origin ring, pieces from peers
//! and origins) and served only once every byte is verified. Completed blobs stay in the
//! local store and are seeded to other agents. Under `/v2/` the same API speaks the Registry
//! v2 / OCI distribution read protocol ([`registry`]), so container runtimes pull through it.
//!
//! Entry point: [`run`] takes its listeners and a shutdown token, so tests bind port 0 and
//! many agents run in one process.

pub mod api;
pub mod config;
pub mod origin_client;
pub mod registry;
pub mod runtime_config;
pub mod stat;

use std::net::SocketAddr;

use shoal_runtime::Admin;
use shoal_swarm::Swarm;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ValidConfig};

pub use shoal_runtime::Listeners;

/// A running agent.
#[derive(Clone)]
pub struct Agent {
    pub swarm: Swarm,
    pub http_addr: SocketAddr,
    pub admin: Admin,
}

/// Starts an agent; it runs until `shutdown` is cancelled. The returned future of
/// [`Agent::serve`] completes when the agent has drained.
pub async fn start(
    config: ValidConfig,
    listeners: Listeners,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<(Agent, impl Future<Output = std::io::Result<()>> + use<>)> {
    let cfg = &config.config;
    let admin = Admin::new(registry.clone());
    let swarm = Swarm::start(cfg.swarm.clone(), listeners.peer, &registry, false, shutdown.clone())?;
    shoal_swarm::store_metrics::register(&registry, cfg.swarm.store_dir.clone())?;
    let http_addr = listeners.http.local_addr()?;
    let origins = origin_client::OriginClient::new(config.ring.clone(), cfg.origin_fetch_timeout.get());
    let registry_state = registry::RegistryState {
        swarm: swarm.clone(),
        origins: origins.clone(),
        tags: registry::TagResolver::new(config.ring.clone(), cfg.tag_ttl.get()),
        shutdown: shutdown.child_token(),
    };
    let stat_state =
        stat::StatState::new(swarm.clone(), origins.clone(), config.ring.clone(), cfg.swarm.trackers.clone());
    let state = api::AppState { swarm: swarm.clone(), origins };
    let router = api::router(state).merge(registry::router(registry_state)).merge(stat::router(stat_state));
    let router = shoal_runtime::request_id::with_request_id(router, "agent").merge(admin.router());
    tracing::info!(%http_addr, "agent api listening");
    let grace = cfg.shutdown_grace.get();
    let a = admin.clone();
    let serve = async move { a.serve(listeners.http, router, shutdown, grace).await };
    Ok((Agent { swarm, http_addr, admin }, serve))
}

/// Runs an agent until `shutdown` is cancelled and its HTTP server has drained.
pub async fn run(
    config: ValidConfig,
    listeners: Listeners,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (_agent, serve) = start(config, listeners, registry, shutdown).await?;
    serve.await?;
    Ok(())
}
