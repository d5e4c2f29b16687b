//! shoal-tracker: tells each node which other nodes are in a blob's swarm.
//!
//! Nodes `POST /announce` the blobs they download or seed. The answer lists live peers of
//! the blob, seeders first, plus the blob's owners on the origin ring (see [`store`] for the
//! handout policy). The same port serves `/health`, `/ready` and `/metrics`.
//!
//! An announce is believed only as far as the tracker can check it: a node announces its own
//! address (the connection's remote IP) unless it is trusted (`trusted_networks`, or the
//! credentials `auth` allows), each untrusted source has an announce rate, and the store
//! bounds what one host can hold ([`store`]).
//!
//! Invariant: the tracker holds no state that announces cannot rebuild. It is an in-memory
//! [`store::PeerStore`] with a TTL per entry. Trackers share nothing with one another. Clients
//! shard blobs over them by digest. The service entry point is [`run`]: it receives its
//! listener, registry and shutdown token, so tests bind `127.0.0.1:0` and several trackers
//! can share a process. The binary only parses config and waits for a signal.

pub mod config;
mod http;
mod metrics;
pub mod store;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use shoal_runtime::{Admin, Phase};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, ValidConfig};

use crate::http::AppState;
use crate::metrics::Metrics;
use crate::store::{PeerStore, StoreOptions};

/// Why the tracker could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot register tracker metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("cannot read the listener's address")]
    LocalAddr(#[source] std::io::Error),
    #[error("tracker http server failed")]
    Serve(#[source] std::io::Error),
    #[error("tracker task panicked or was aborted")]
    Join(#[source] tokio::task::JoinError),
}

/// Serves the tracker on `listener` until `shutdown` is cancelled, then drains.
///
/// On cancel, the phase becomes `Draining` (so `/ready` fails), the listener closes,
/// in-flight requests get up to `shutdown_grace`, the sweep task stops, and the phase becomes
/// `Stopped`. Metrics are registered on `registry` with the prefix `shoal_tracker_`.
pub async fn run(
    config: ValidConfig,
    listener: TcpListener,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    Service::new(&config, Admin::new(registry))?.serve(listener, shutdown).await
}

/// A tracker running in a background task, for tests and in-process clusters. Dropping it
/// cancels the tracker without waiting. [`Tracker::stop`] also waits for the drain.
pub struct Tracker {
    /// The bound API address, read by tests to build URLs.
    addr: SocketAddr,
    /// `https` when the API is served over TLS, else `http`.
    scheme: &'static str,
    /// The phase, read by tests and by `start` while it waits for `Ready`.
    admin: Admin,
    /// Cancelled by `stop` and by `Drop`.
    shutdown: CancellationToken,
    /// `None` only after [`Tracker::stop`] took it.
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl Tracker {
    /// Starts serving on `listener` and returns once the tracker is ready (or has already
    /// failed, which [`Tracker::stop`] then reports). Metrics are registered before the task
    /// starts, so a registration error is returned here.
    pub async fn start(config: ValidConfig, listener: TcpListener, registry: Registry) -> Result<Tracker, Error> {
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        let scheme = if config.tls().is_some() { "https" } else { "http" };
        let admin = Admin::new(registry);
        let service = Service::new(&config, admin.clone())?;
        let shutdown = CancellationToken::new();
        let mut phase = admin.watch_phase();
        // A plain spawn, not `shoal_runtime::spawn`: the handle keeps the result and `stop`
        // returns it, so no error is dropped.
        let task = tokio::spawn(service.serve(listener, shutdown.clone()));
        // `serve` leaves `Starting` on every path. `Err` would mean the sender is gone, which
        // cannot happen while `admin` lives.
        let _ = phase.wait_for(|p| *p != Phase::Starting).await;
        Ok(Tracker { addr, scheme, admin, shutdown, task: Some(task) })
    }

    /// The bound address of the API.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the base URL nodes announce to.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn phase(&self) -> Phase {
        self.admin.phase()
    }

    /// A receiver that sees every later phase change.
    pub fn watch_phase(&self) -> tokio::sync::watch::Receiver<Phase> {
        self.admin.watch_phase()
    }

    /// Cancels the tracker and waits until it has drained.
    pub async fn stop(mut self) -> Result<(), Error> {
        self.halt().await
    }

    /// Cancels the tracker and waits until it has drained and closed its listener, keeping
    /// the handle (a tracker that goes down while its nodes run on). Later calls do nothing.
    pub async fn halt(&mut self) -> Result<(), Error> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(Error::Join)?,
            None => Ok(()),
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A tracker that is built but not yet serving.
struct Service {
    /// The node's registry and phase. `serve` moves the phase through its lifecycle.
    admin: Admin,
    /// The API's TLS material, when `tls` is configured.
    tls: Option<shoal_runtime::Tls>,
    /// Shared by the HTTP handlers and the sweep task.
    state: Arc<AppState>,
    /// How often the sweep task purges expired entries. It equals the TTL, so an expired
    /// entry stays in memory at most one more TTL (it is never handed out meanwhile).
    sweep_every: std::time::Duration,
    /// How long in-flight requests may run after shutdown starts.
    shutdown_grace: std::time::Duration,
    /// The HTTP server's deadlines and connection cap.
    http: shoal_runtime::HttpConfig,
}

impl Service {
    fn new(config: &ValidConfig, admin: Admin) -> Result<Service, Error> {
        let metrics = Metrics::register(&admin.registry).map_err(Error::Metrics)?;
        let tls = config.tls().cloned();
        if let Some(t) = &tls {
            t.register(&admin.registry).map_err(Error::Metrics)?;
        }
        let store = PeerStore::new(StoreOptions {
            peer_ttl: config.peer_ttl(),
            max_peers: config.max_peers(),
            ring: config.ring().cloned(),
            max_peers_per_host: config.max_peers_per_host(),
            max_blobs_per_host: config.max_blobs_per_host(),
        });
        let state = Arc::new(AppState {
            store,
            metrics,
            interval_ms: config.interval_ms(),
            trust: http::Trust::new(config.trusted_networks().clone(), config.auth().clone()),
            limiter: http::SourceLimiter::new(config.announce_rate()),
        });
        Ok(Service {
            admin,
            tls,
            state,
            sweep_every: config.peer_ttl(),
            shutdown_grace: config.shutdown_grace(),
            http: config.http().clone(),
        })
    }

    async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
        let Service { admin, tls, state, sweep_every, shutdown_grace, http } = self;
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(e) => {
                // Never leave the phase at `Starting`: `Tracker::start` waits for it to change.
                admin.set_phase(Phase::Stopped);
                return Err(Error::LocalAddr(e));
            }
        };
        let router = http::router(state.clone()).merge(admin.router());

        let sweep_stop = shutdown.child_token();
        let sweeper = shoal_runtime::spawn("tracker-sweep", sweep_stop.clone(), sweep(state, sweep_every));

        // The HTTP server has its own token. On shutdown, readiness turns false before the
        // listener closes.
        let http_stop = CancellationToken::new();
        let auth = tls.as_ref().map(|t| t.config().http_client_auth).unwrap_or_default();
        let listener = match shoal_runtime::tls::HttpListener::new(listener, tls.as_ref(), auth) {
            Ok(l) => l,
            Err(e) => {
                admin.set_phase(Phase::Stopped);
                return Err(Error::LocalAddr(e));
            }
        };
        let served = shoal_runtime::serve_with(listener, router, http_stop.clone(), shutdown_grace, &http);
        let mut served = std::pin::pin!(served);
        admin.set_phase(Phase::Ready);
        tracing::info!(%addr, tls = tls.is_some(), "tracker ready");
        let res = tokio::select! {
            res = &mut served => res,
            _ = shutdown.cancelled() => {
                admin.set_phase(Phase::Draining);
                tracing::info!(grace = ?shutdown_grace, "tracker draining");
                http_stop.cancel();
                served.await
            }
        };

        sweep_stop.cancel();
        if let Err(e) = sweeper.await {
            tracing::warn!("tracker sweep task failed: {e}");
        }
        admin.set_phase(Phase::Stopped);
        tracing::info!("tracker stopped");
        res.map_err(Error::Serve)
    }
}

/// Purges expired entries every `every` and refreshes the size gauges.
async fn sweep(state: Arc<AppState>, every: std::time::Duration) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // The first tick is immediate, and there is nothing to sweep yet.
    loop {
        ticks.tick().await;
        let swept = state.store.sweep(tokio::time::Instant::now());
        state.metrics.expired.inc_by(swept.peers as u64);
        state.metrics.set_sizes(state.store.n_peers(), state.store.n_blobs());
        tracing::debug!(peers = swept.peers, blobs = swept.blobs, "swept expired peers");
    }
}
