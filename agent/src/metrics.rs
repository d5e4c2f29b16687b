//! The agent's own metrics, registered on the node's registry beside the swarm's:
//!
//! - `shoal_agent_registry_requests_total{route,status}`: Registry v2 requests (`route` is
//!   `base`, `manifest`, `blob` or `invalid`) by the HTTP status answered.
//! - `shoal_agent_cache_total{result}`: blob and manifest lookups the local store answered
//!   (`hit`) or that went to the swarm (`miss`); HEAD requests count too.
//! - `shoal_agent_served_bytes_total`: body bytes sent to clients (registry and `/blobs`), as
//!   they are sent, so an aborted pull counts what actually left.

use futures::{Stream, StreamExt};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Cheap to clone: the counters are shared.
#[derive(Clone)]
pub struct AgentMetrics {
    requests: IntCounterVec,
    cache: IntCounterVec,
    served_bytes: IntCounter,
}

impl AgentMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<AgentMetrics> {
        let requests = IntCounterVec::new(
            Opts::new("shoal_agent_registry_requests_total", "Registry v2 requests by route and status"),
            &["route", "status"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new("shoal_agent_cache_total", "blob and manifest lookups: hit (in the local store) or miss"),
            &["result"],
        )?;
        let served_bytes = IntCounter::new("shoal_agent_served_bytes_total", "body bytes sent to clients")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        registry.register(Box::new(served_bytes.clone()))?;
        Ok(AgentMetrics { requests, cache, served_bytes })
    }

    /// One registry request on `route`, answered with `status`.
    pub fn request(&self, route: &str, status: u16) {
        self.requests.with_label_values(&[route, &status.to_string()]).inc();
    }

    /// One lookup: the blob was in the local store (`hit`) or not.
    pub fn lookup(&self, hit: bool) {
        self.cache.with_label_values(&[if hit { "hit" } else { "miss" }]).inc();
    }

    /// Bytes sent straight from memory (a manifest).
    pub fn served(&self, n: usize) {
        self.served_bytes.inc_by(n as u64);
    }

    /// `body` counting its bytes into `shoal_agent_served_bytes_total` as they go out.
    pub fn counted<S>(&self, body: S) -> impl Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static + use<S>
    where
        S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        let served = self.served_bytes.clone();
        body.inspect(move |chunk| {
            if let Ok(b) = chunk {
                served.inc_by(b.len() as u64);
            }
        })
    }
}
