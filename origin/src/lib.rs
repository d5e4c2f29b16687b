//! The Shoal origin: the swarm's seed of last resort. It fetches a blob from its backend (a
//! local directory or S3) the first time any agent asks, verifies its sha256, stores it,
//! builds its metainfo and seeds it; it verifies uploads before writing them back.
//! Several origins form a rendezvous-hash ring; agents and trackers use the same ring.
//! With upstream registries configured ([`upstream`]), a blob or tag the backend lacks is
//! pulled through from the registry, verified the same way, and optionally written back;
//! [`preheat`] warms a whole image (index, manifests, configs, layers) before its first pull.
//!
//! Entry point: [`start`]/[`run`] take their listeners and a shutdown token.

pub mod api;
pub mod backend;
pub mod config;
pub mod fetch;
pub mod metrics;
pub mod notify;
pub mod preheat;
pub mod state;
pub mod tags;
pub mod upstream;

use std::net::SocketAddr;

use shoal_runtime::Admin;
use shoal_swarm::{Role, Swarm};
use tokio_util::sync::CancellationToken;

pub use config::{Config, ValidConfig};

pub use shoal_runtime::Listeners;

/// A running origin.
#[derive(Clone)]
pub struct Origin {
    pub swarm: Swarm,
    pub http_addr: SocketAddr,
    pub admin: Admin,
}

/// Starts an origin; the returned future serves HTTP until `shutdown` and the drain end.
pub async fn start(
    config: ValidConfig,
    listeners: Listeners,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<(Origin, impl Future<Output = std::io::Result<()>> + use<>)> {
    let cfg = config.config;
    // After the origins' names are looked up (a `--check-config` only checks their form).
    cfg.swarm.check_origins(&cfg.origins).map_err(anyhow::Error::msg)?;
    let admin = Admin::new(registry.clone());
    let tls = config.tls;
    if let Some(t) = &tls {
        t.register(&registry)?;
    }
    let backend = cfg.backend.build().await?;
    let swarm =
        Swarm::start(cfg.swarm.clone(), listeners.peer, &registry, Role::Origin, tls.clone(), shutdown.clone())?;
    let metrics = metrics::OriginMetrics::new(&registry)?;
    let upstreams = match &config.pull_through {
        Some(pt) => {
            let m = upstream::UpstreamMetrics::new(&registry)?;
            Some(std::sync::Arc::new(upstream::Upstreams::new(pt, m)?))
        }
        None => None,
    };
    let limits = fetch::FetchLimits {
        max_concurrent: cfg.max_concurrent_fetches,
        failure_ttl: cfg.failure_ttl.get(),
        timeout: cfg.fetch_timeout.get(),
    };
    let fetcher = fetch::Fetcher::new(swarm.clone(), backend, limits, metrics.clone(), shutdown.child_token());
    if let Some(wanted) = swarm.wanted() {
        let wanted = fetch::fetch_wanted(fetcher.clone(), wanted, config.ring.clone(), cfg.id.clone());
        shoal_runtime::task::spawn("wanted blobs", shutdown.child_token(), wanted);
    }
    // Blobs already stored are announced again after a restart, in the background while the
    // listeners already take requests; none is opened until a peer or a client asks for it.
    swarm.announce_stored();
    let http_addr = listeners.http.local_addr()?;
    let state = state::AppState {
        swarm: swarm.clone(),
        fetcher,
        metainfo_wait: cfg.metainfo_wait.get(),
        max_upload: cfg.max_upload.0,
        uploads: shoal_runtime::Cap::new("uploads", "max_uploads", cfg.max_uploads),
        metrics,
        upstreams,
        preheats: preheat::Preheats::new(cfg.preheat_concurrency, cfg.max_preheats, shutdown.child_token()),
        auth: config.auth.clone(),
    };
    if config.auth.is_open() {
        tracing::warn!(
            "auth is not configured: anyone who reaches this origin may upload, preheat and notify \
             (set auth.tokens_file or auth.identities)"
        );
    }
    let notify_state = notify::NotifyState {
        app: state.clone(),
        config: cfg.notifications.clone(),
        id: cfg.id.clone(),
        ring: config.ring.clone(),
        // Other origins' and agents' `/preheat`, over TLS where their URLs say so.
        http: match &tls {
            Some(t) => t.http_client(reqwest::Client::builder()).build()?,
            None => reqwest::Client::new(),
        },
        tasks: shoal_runtime::Cap::new("notified images", "MAX_PUSH_TASKS", notify::MAX_PUSH_TASKS),
        shutdown: shutdown.child_token(),
    };
    let router = api::router(state).merge(notify::router(notify_state));
    let router = shoal_runtime::request_id::with_request_id(router, "origin").merge(admin.router());
    let client_auth = tls.as_ref().map(|t| t.config().http_client_auth).unwrap_or_default();
    let listener = shoal_runtime::tls::HttpListener::new(listeners.http, tls.as_ref(), client_auth)?;
    tracing::info!(%http_addr, id = %cfg.id, tls = tls.is_some(), "origin api listening");
    let grace = cfg.shutdown_grace.get();
    let http = cfg.http.clone();
    let (a, s) = (admin.clone(), swarm.clone());
    let serve = async move {
        let served = a.serve(listener, router, shutdown, grace, &http).await;
        // The next start ranks the store's blobs by these last uses.
        s.persist_last_uses().await;
        served
    };
    Ok((Origin { swarm, http_addr, admin }, serve))
}

/// Runs an origin until `shutdown` is cancelled and its HTTP server has drained.
pub async fn run(
    config: ValidConfig,
    listeners: Listeners,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (_o, serve) = start(config, listeners, registry, shutdown).await?;
    serve.await?;
    Ok(())
}
