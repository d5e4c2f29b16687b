//! The origin's Prometheus collectors, on the node's registry.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct OriginMetrics {
    /// Backend fetches by result (`ok`, `not_found`, `error`).
    pub fetches: IntCounterVec,
    /// Bytes read from the backend.
    pub backend_bytes: IntCounter,
    /// Uploads by result (`ok`, `digest_mismatch`, `error`).
    pub uploads: IntCounterVec,
    /// Requests refused because a cap was full, by what (`upload`, `preheat`,
    /// `notification`).
    pub busy: IntCounterVec,
}

impl OriginMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<OriginMetrics> {
        let m = OriginMetrics {
            fetches: IntCounterVec::new(
                Opts::new("shoal_origin_fetches_total", "Backend fetches by result"),
                &["result"],
            )?,
            backend_bytes: IntCounter::new("shoal_origin_backend_bytes_total", "Bytes read from the backend")?,
            uploads: IntCounterVec::new(Opts::new("shoal_origin_uploads_total", "Uploads by result"), &["result"])?,
            busy: IntCounterVec::new(
                Opts::new("shoal_origin_busy_total", "Requests refused with 503 because a cap was full, by what"),
                &["what"],
            )?,
        };
        registry.register(Box::new(m.fetches.clone()))?;
        registry.register(Box::new(m.backend_bytes.clone()))?;
        registry.register(Box::new(m.uploads.clone()))?;
        registry.register(Box::new(m.busy.clone()))?;
        Ok(m)
    }
}
