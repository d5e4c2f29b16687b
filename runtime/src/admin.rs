//! Health, readiness and metrics endpoints, served by every service beside its own API, and
//! the service's lifecycle [`Phase`].
//!
//! Each node owns one `prometheus::Registry`, made by whoever builds the node and passed
//! down, so several nodes in one process (the in-process cluster tests) keep separate
//! figures.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::watch;

use crate::tls::HttpListener;

/// The two sockets of a swarm node (agent or origin), bound by the caller so tests can
/// bind port 0.
pub struct Listeners {
    /// The HTTP API.
    pub http: tokio::net::TcpListener,
    /// The peer (wire protocol) port.
    pub peer: tokio::net::TcpListener,
}

impl Listeners {
    pub async fn bind(http: std::net::SocketAddr, peer: std::net::SocketAddr) -> std::io::Result<Listeners> {
        Ok(Listeners {
            http: tokio::net::TcpListener::bind(http).await?,
            peer: tokio::net::TcpListener::bind(peer).await?,
        })
    }
}

/// Where a service is in its life. Readiness is true only in `Ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Ready,
    Draining,
    Stopped,
}

/// The node's registry and its phase; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    pub registry: Registry,
    phase: watch::Sender<Phase>,
}

/// The version every binary reports (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binaries were built from, or "unknown" (see `build.rs`).
pub const GIT_COMMIT: &str = env!("SHOAL_GIT_COMMIT");

impl Admin {
    /// Registers what every service reports on `registry`: `shoal_build_info{version,commit}`
    /// (always 1), on Linux the process's CPU, memory, open files and start time
    /// (`process_*`), and the heap bytes live where the allocator counts them
    /// (`shoal_heap_bytes`, [`crate::alloc`]). A registry that already has them keeps its own.
    pub fn new(registry: Registry) -> Admin {
        register_common(&registry);
        Admin { registry, phase: watch::Sender::new(Phase::Starting) }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// A receiver that sees every phase change.
    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Serves `router` on `listener` through the whole lifecycle: `Ready` while serving,
    /// `Draining` from the moment `shutdown` fires (so readiness fails at once), `Stopped` once
    /// in-flight requests are done or `grace` has passed. The server keeps the deadlines and
    /// connection cap of `http` ([`crate::http`]).
    pub async fn serve(
        &self,
        listener: impl Into<HttpListener>,
        router: Router,
        shutdown: tokio_util::sync::CancellationToken,
        grace: std::time::Duration,
        http: &crate::http::HttpConfig,
    ) -> std::io::Result<()> {
        self.set_phase(Phase::Ready);
        let stop = shutdown.clone();
        let draining = async {
            stop.cancelled().await;
            self.set_phase(Phase::Draining);
            std::future::pending::<()>().await
        };
        let res = tokio::select! {
            // Draining first, so it is set before a server with nothing in flight returns.
            biased;
            _ = draining => unreachable!("pending never resolves"),
            r = serve_with(listener, router, shutdown, grace, http) => r,
        };
        self.set_phase(Phase::Stopped);
        res
    }

    /// `/health` (alive), `/ready` (ready for traffic), `/metrics` (Prometheus text).
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/health", get(|| async { "ok\n" }))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

fn register_common(registry: &Registry) {
    let opts = prometheus::Opts::new("shoal_build_info", "the build: version and git commit; always 1")
        .const_label("version", VERSION)
        .const_label("commit", GIT_COMMIT);
    let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = Vec::new();
    match prometheus::IntGauge::with_opts(opts) {
        Ok(g) => {
            g.set(1);
            collectors.push(Box::new(g));
        }
        Err(e) => tracing::warn!("shoal_build_info: {e}"),
    }
    #[cfg(target_os = "linux")]
    collectors.push(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
    match crate::alloc::HeapCollector::new() {
        Ok(c) => collectors.push(Box::new(c)),
        Err(e) => tracing::warn!("shoal_heap_bytes: {e}"),
    }
    for c in collectors {
        match registry.register(c) {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
            Err(e) => tracing::warn!("registering a metric: {e}"),
        }
    }
}

async fn ready(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.phase() {
        Phase::Ready => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&admin.registry.gather(), &mut buf) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("{e}").into_bytes(),
        );
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf)
}

pub use crate::http::{serve, serve_with};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registry_gets_build_info_and_process_metrics_once() {
        let registry = Registry::new();
        let _a = Admin::new(registry.clone());
        let _b = Admin::new(registry.clone());
        let families = registry.gather();
        let info: Vec<_> = families.iter().filter(|f| f.name() == "shoal_build_info").collect();
        assert_eq!(info.len(), 1);
        let m = &info[0].get_metric()[0];
        let labels: Vec<_> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
        assert!(labels.contains(&("version", env!("CARGO_PKG_VERSION"))), "{labels:?}");
        let commit = labels.iter().find(|(k, _)| *k == "commit").map(|(_, v)| *v).unwrap();
        assert!(commit == "unknown" || commit.len() >= 7, "{commit}");
        assert_eq!(m.get_gauge().get_value(), 1.0);
        #[cfg(target_os = "linux")]
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"] {
            assert!(families.iter().any(|f| f.name() == name), "{name} missing");
        }
    }
}
