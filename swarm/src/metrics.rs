//! The swarm engine's Prometheus collectors, registered on the node's own registry.

use prometheus::{Counter, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Collectors of one node's swarm engine.
#[derive(Clone)]
pub struct SwarmMetrics {
    /// Piece bytes received, by source (`origin` or `peer`).
    pub bytes_in: IntCounterVec,
    /// Piece bytes sent.
    pub bytes_out: IntCounter,
    /// Piece bytes received (and verified) from a peer whose zone differs from ours: the
    /// traffic clouds bill for. Zero on a node without a zone.
    pub cross_zone_bytes: IntCounter,
    pub pieces_verified: IntCounter,
    /// Pieces that failed their hash: each one blacklists its sender.
    pub pieces_corrupt: IntCounter,
    pub requests_timed_out: IntCounter,
    pub connections: IntGauge,
    pub connections_rejected: IntCounter,
    /// Accepted sockets still in their handshake.
    pub handshakes_pending: IntGauge,
    /// Control frames queued for peers, in bytes, over all connections.
    pub send_queue_bytes: IntGauge,
    /// Connections closed because their send queue was full.
    pub send_queue_overflows: IntCounter,
    pub protocol_errors: IntCounter,
    /// Piece requests answered "busy" because their connection was over its request rate.
    pub requests_limited: IntCounter,
    /// Peers a tracker handed out at addresses outside `peer_networks`, never dialed.
    pub peers_outside_networks: IntCounter,
    pub downloads_active: IntGauge,
    pub downloads_completed: IntCounter,
    pub downloads_failed: IntCounter,
    /// Downloads refused because `max_downloads` were running.
    pub downloads_refused: IntCounter,
    /// Announces no tracker answered: the download fell back on the ring and known peers.
    pub announce_failures: IntCounter,
    pub download_seconds: Histogram,
    /// CPU-seconds spent writing verified pieces into the store (the writing thread's own CPU
    /// time, [`thread_cpu_secs`]): the file system's cost of the bytes received. On tmpfs it
    /// is the copy into the page cache and the first touch of each fresh page, which on a VM
    /// that hands free memory back to its hypervisor costs a fault there too.
    pub store_write_seconds: Counter,
}

impl SwarmMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<SwarmMetrics> {
        let m = SwarmMetrics {
            bytes_in: IntCounterVec::new(
                Opts::new("shoal_swarm_piece_bytes_received_total", "Piece bytes received and verified, by source"),
                &["source"],
            )?,
            bytes_out: IntCounter::new("shoal_swarm_piece_bytes_sent_total", "Piece bytes uploaded to peers")?,
            cross_zone_bytes: IntCounter::new(
                "shoal_swarm_cross_zone_bytes_total",
                "Piece bytes received from peers (origins included) in another zone than this node's",
            )?,
            pieces_verified: IntCounter::new(
                "shoal_swarm_pieces_verified_total",
                "Pieces received that passed their hash",
            )?,
            pieces_corrupt: IntCounter::new(
                "shoal_swarm_pieces_corrupt_total",
                "Pieces received that failed their hash",
            )?,
            requests_timed_out: IntCounter::new(
                "shoal_swarm_requests_timed_out_total",
                "Piece requests that timed out",
            )?,
            connections: IntGauge::new("shoal_swarm_connections", "Open peer connections")?,
            connections_rejected: IntCounter::new(
                "shoal_swarm_connections_rejected_total",
                "Peer connections refused (limit, blacklist, duplicate, bad handshake)",
            )?,
            handshakes_pending: IntGauge::new(
                "shoal_swarm_handshakes_pending",
                "Accepted peer sockets still in their handshake",
            )?,
            send_queue_bytes: IntGauge::new(
                "shoal_swarm_send_queue_bytes",
                "Control frames queued for peers, in bytes, over all connections",
            )?,
            send_queue_overflows: IntCounter::new(
                "shoal_swarm_send_queue_overflows_total",
                "Peer connections closed because the peer did not read its queued frames",
            )?,
            protocol_errors: IntCounter::new(
                "shoal_swarm_protocol_errors_total",
                "Connections closed for a protocol violation",
            )?,
            requests_limited: IntCounter::new(
                "shoal_swarm_requests_limited_total",
                "Piece requests answered busy because their connection was over its request rate",
            )?,
            peers_outside_networks: IntCounter::new(
                "shoal_swarm_peers_outside_networks_total",
                "Peers handed out at addresses outside peer_networks, never dialed",
            )?,
            downloads_active: IntGauge::new("shoal_swarm_downloads_active", "Blob downloads in progress")?,
            downloads_completed: IntCounter::new("shoal_swarm_downloads_completed_total", "Blob downloads completed")?,
            downloads_failed: IntCounter::new("shoal_swarm_downloads_failed_total", "Blob downloads failed")?,
            downloads_refused: IntCounter::new(
                "shoal_swarm_downloads_refused_total",
                "Blob downloads refused because max_downloads were running",
            )?,
            announce_failures: IntCounter::new(
                "shoal_swarm_announce_failures_total",
                "Download announces no tracker answered (the ring owners and known peers were used)",
            )?,
            download_seconds: Histogram::with_opts(
                HistogramOpts::new("shoal_swarm_download_seconds", "Time to download a blob through the swarm")
                    .buckets(prometheus::exponential_buckets(0.05, 2.0, 16)?),
            )?,
            store_write_seconds: Counter::new(
                "shoal_swarm_store_write_seconds_total",
                "CPU-seconds spent writing verified pieces into the store",
            )?,
        };
        registry.register(Box::new(m.bytes_in.clone()))?;
        registry.register(Box::new(m.bytes_out.clone()))?;
        registry.register(Box::new(m.cross_zone_bytes.clone()))?;
        registry.register(Box::new(m.pieces_verified.clone()))?;
        registry.register(Box::new(m.pieces_corrupt.clone()))?;
        registry.register(Box::new(m.requests_timed_out.clone()))?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.connections_rejected.clone()))?;
        registry.register(Box::new(m.handshakes_pending.clone()))?;
        registry.register(Box::new(m.send_queue_bytes.clone()))?;
        registry.register(Box::new(m.send_queue_overflows.clone()))?;
        registry.register(Box::new(m.protocol_errors.clone()))?;
        registry.register(Box::new(m.requests_limited.clone()))?;
        registry.register(Box::new(m.peers_outside_networks.clone()))?;
        registry.register(Box::new(m.downloads_active.clone()))?;
        registry.register(Box::new(m.downloads_completed.clone()))?;
        registry.register(Box::new(m.downloads_failed.clone()))?;
        registry.register(Box::new(m.downloads_refused.clone()))?;
        registry.register(Box::new(m.announce_failures.clone()))?;
        registry.register(Box::new(m.download_seconds.clone()))?;
        registry.register(Box::new(m.store_write_seconds.clone()))?;
        Ok(m)
    }
}

/// The calling thread's CPU time so far, in seconds (user and system). Differences of two
/// readings on one thread are what the code between them cost, without the time the thread
/// waited for a core.
pub fn thread_cpu_secs() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's CPU time grows with work it does and not with time it sleeps.
    #[test]
    fn thread_cpu_time_counts_work_not_sleep() {
        let t0 = thread_cpu_secs();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = thread_cpu_secs() - t0;
        let t1 = thread_cpu_secs();
        let mut x = 0u64;
        while thread_cpu_secs() - t1 < 0.02 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(slept < 0.02, "{slept} s of CPU while sleeping");
        assert!(thread_cpu_secs() - t1 >= 0.02);
    }
}
