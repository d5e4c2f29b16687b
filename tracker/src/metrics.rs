//! The tracker's Prometheus series, all prefixed `shoal_tracker_`.
//!
//! Invariant: every series is registered on the node's own registry (passed down from whoever
//! built the node), never on a global one. Several trackers in one process keep separate
//! figures.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::store::Recorded;

/// Handles to the series; cheap to update from any task.
pub(crate) struct Metrics {
    /// `shoal_tracker_announces_total{result}`: every `POST /announce`, by outcome.
    announces: IntCounterVec,
    /// `shoal_tracker_peers_tracked`: entries in the store (expired ones not yet purged included).
    pub(crate) peers: IntGauge,
    /// `shoal_tracker_blobs_tracked`: blobs with at least one entry.
    pub(crate) blobs: IntGauge,
    /// `shoal_tracker_handout_size`: peers per answer, ring owners included.
    pub(crate) handout_size: Histogram,
    /// `shoal_tracker_expired_peers_total`: entries purged because their TTL passed.
    pub(crate) expired: IntCounter,
}

/// The `result` label of an announce that was not even parsed.
pub(crate) const BAD_REQUEST: &str = "bad_request";
/// The `result` label of an announce for another address from an untrusted caller, or with
/// a bearer token that is not allowed.
pub(crate) const DENIED: &str = "denied";
/// The `result` label of an announce over its source's rate.
pub(crate) const RATE_LIMITED: &str = "rate_limited";

impl Metrics {
    pub(crate) fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let announces = IntCounterVec::new(
            Opts::new("shoal_tracker_announces_total", "Announces received, by result"),
            &["result"],
        )?;
        // Create every label up front so each series exists (at 0) before its first event.
        for r in [
            Recorded::Yes,
            Recorded::SwarmFull,
            Recorded::TooManyBlobs,
            Recorded::UnusableAddr,
            Recorded::HostFull,
            Recorded::HostBlobs,
            Recorded::Stopped,
        ] {
            announces.with_label_values(&[r.as_str()]);
        }
        for r in [BAD_REQUEST, DENIED, RATE_LIMITED] {
            announces.with_label_values(&[r]);
        }
        let peers = IntGauge::new("shoal_tracker_peers_tracked", "Peer entries in the store, over all blobs")?;
        let blobs = IntGauge::new("shoal_tracker_blobs_tracked", "Blobs with at least one peer entry")?;
        let handout_size = Histogram::with_opts(
            HistogramOpts::new("shoal_tracker_handout_size", "Peers per announce answer, ring owners included")
                .buckets(vec![0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]),
        )?;
        let expired =
            IntCounter::new("shoal_tracker_expired_peers_total", "Peer entries purged because their TTL passed")?;
        registry.register(Box::new(announces.clone()))?;
        registry.register(Box::new(peers.clone()))?;
        registry.register(Box::new(blobs.clone()))?;
        registry.register(Box::new(handout_size.clone()))?;
        registry.register(Box::new(expired.clone()))?;
        Ok(Metrics { announces, peers, blobs, handout_size, expired })
    }

    pub(crate) fn announce(&self, result: &str) {
        self.announces.with_label_values(&[result]).inc();
    }

    /// Sets the two gauges from the store's counts.
    pub(crate) fn set_sizes(&self, n_peers: usize, n_blobs: usize) {
        self.peers.set(i64::try_from(n_peers).unwrap_or(i64::MAX));
        self.blobs.set(i64::try_from(n_blobs).unwrap_or(i64::MAX));
    }
}
