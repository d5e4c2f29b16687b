//! The store's metrics, all `shoal_swarm_store_*` like the rest of the swarm's:
//!
//! - `shoal_swarm_store_bytes` and `shoal_swarm_store_blobs`, by `state` (`complete`,
//!   `partial`): how much of the node's disk its store holds, measured at scrape time.
//! - `shoal_swarm_store_limit_bytes`, by `limit` (`max`, `high`, `low`, `min_free`): the
//!   budget and its marks, and the free-space floor, resolved against the filesystem at scrape
//!   time; `shoal_swarm_store_filesystem_free_bytes`, the filesystem's free space.
//! - `shoal_swarm_store_evictions_total` and `shoal_swarm_store_evicted_bytes_total`, by
//!   `reason` (`size`, `disk_free`, `ttl`, `partial_ttl`, `corrupt`; see
//!   `shoal_core::cache::Reason`).
//!
//! The sizes come from listing `blobs/` and `partial/` on each scrape rather than from
//! counters kept in step with every commit, so they are right whatever wrote the store (a
//! previous run, an operator's cleanup). A listing of a few thousand entries costs well under
//! a millisecond; a directory that cannot be read counts as empty.

use std::path::{Path, PathBuf};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use shoal_core::cache::Reason;

use crate::config::StoreConfig;

/// Registers the store collector for the store at `root`, whose config is `cfg`, on
/// `registry`.
pub fn register(registry: &Registry, root: PathBuf, cfg: StoreConfig) -> prometheus::Result<()> {
    registry.register(Box::new(StoreCollector::new(root, cfg)?))
}

/// Evictions by reason: blobs and bytes. Made with the store and registered by the node, so
/// a store opened alone (in tests) counts too.
#[derive(Clone)]
pub(crate) struct Evictions {
    pub count: IntCounterVec,
    pub bytes: IntCounterVec,
}

impl Evictions {
    pub fn new() -> Evictions {
        let count = IntCounterVec::new(
            Opts::new(
                "shoal_swarm_store_evictions_total",
                "Blobs and partial downloads removed from the store, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let bytes = IntCounterVec::new(
            Opts::new("shoal_swarm_store_evicted_bytes_total", "Bytes removed from the store, by reason"),
            &["reason"],
        )
        .expect("valid metric");
        // Every reason exists (at 0) before its first eviction.
        for r in Reason::ALL {
            count.with_label_values(&[r.as_str()]);
            bytes.with_label_values(&[r.as_str()]);
        }
        Evictions { count, bytes }
    }

    pub fn record(&self, reason: Reason, bytes: u64) {
        self.count.with_label_values(&[reason.as_str()]).inc();
        self.bytes.with_label_values(&[reason.as_str()]).inc_by(bytes);
    }

    /// Blobs evicted for `reason` so far.
    #[cfg(test)]
    pub fn get(&self, reason: Reason) -> u64 {
        self.count.with_label_values(&[reason.as_str()]).get()
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.count.clone()))?;
        registry.register(Box::new(self.bytes.clone()))
    }
}

struct StoreCollector {
    root: PathBuf,
    cfg: StoreConfig,
    bytes: IntGaugeVec,
    blobs: IntGaugeVec,
    limits: IntGaugeVec,
    free: IntGauge,
}

impl StoreCollector {
    fn new(root: PathBuf, cfg: StoreConfig) -> prometheus::Result<StoreCollector> {
        Ok(StoreCollector {
            root,
            cfg,
            bytes: IntGaugeVec::new(
                Opts::new("shoal_swarm_store_bytes", "Bytes of blob data in the node's store, by state"),
                &["state"],
            )?,
            blobs: IntGaugeVec::new(
                Opts::new("shoal_swarm_store_blobs", "Blobs in the node's store, by state"),
                &["state"],
            )?,
            limits: IntGaugeVec::new(
                Opts::new(
                    "shoal_swarm_store_limit_bytes",
                    "The store's budget (max), its eviction marks (high, low) and the filesystem's free-space floor (min_free)",
                ),
                &["limit"],
            )?,
            free: IntGauge::new(
                "shoal_swarm_store_filesystem_free_bytes",
                "Free space of the filesystem holding the store",
            )?,
        })
    }
}

/// Blobs and their data bytes in `dir`: files whose name is 64 hex digits plus `suffix`.
fn measure(dir: &Path, suffix: &str) -> (i64, i64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    let (mut n, mut bytes) = (0i64, 0i64);
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|s| s.strip_suffix(suffix)) else { continue };
        if stem.len() != 64 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if let Ok(m) = e.metadata() {
            n += 1;
            bytes += i64::try_from(m.len()).unwrap_or(i64::MAX);
        }
    }
    (n, bytes)
}

impl Collector for StoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        [self.bytes.desc(), self.blobs.desc(), self.limits.desc(), self.free.desc()].into_iter().flatten().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (state, dir, suffix) in [("complete", "blobs", ""), ("partial", "partial", ".data")] {
            let (n, bytes) = measure(&self.root.join(dir), suffix);
            self.bytes.with_label_values(&[state]).set(bytes);
            self.blobs.with_label_values(&[state]).set(n);
        }
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Ok(space) = crate::store::space_of(&self.root) {
            let l = crate::gc::limits(&self.cfg, space);
            for (name, v) in [("max", l.max), ("high", l.high), ("low", l.low), ("min_free", l.min_free)] {
                self.limits.with_label_values(&[name]).set(gauge(v));
            }
            self.free.set(gauge(space.free));
        }
        [self.bytes.collect(), self.blobs.collect(), self.limits.collect(), self.free.collect()]
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(r: &Registry, name: &str, state: &str) -> f64 {
        let fam = r.gather().into_iter().find(|f| f.name() == name).unwrap();
        let m = fam.get_metric().iter().find(|m| m.get_label()[0].value() == state).unwrap();
        m.get_gauge().get_value()
    }

    #[test]
    fn counts_complete_and_partial_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::create_dir_all(root.join("partial")).unwrap();
        let hex = |c: char| c.to_string().repeat(64);
        std::fs::write(root.join("blobs").join(hex('a')), vec![0u8; 1000]).unwrap();
        std::fs::write(root.join("blobs").join(format!("{}.meta", hex('a'))), b"meta").unwrap();
        std::fs::write(root.join("blobs").join(hex('b')), vec![0u8; 24]).unwrap();
        std::fs::write(root.join("partial").join(format!("{}.data", hex('c'))), vec![0u8; 500]).unwrap();
        std::fs::write(root.join("partial").join(format!("{}.bits", hex('c'))), b"bits").unwrap();
        let r = Registry::new();
        let cfg = StoreConfig {
            max_size: shoal_runtime::SizeLimit::Bytes(shoal_runtime::ByteSize(1000)),
            ..StoreConfig::default()
        };
        register(&r, root.to_path_buf(), cfg).unwrap();
        assert_eq!(gauge(&r, "shoal_swarm_store_bytes", "complete"), 1024.0);
        assert_eq!(gauge(&r, "shoal_swarm_store_blobs", "complete"), 2.0);
        assert_eq!(gauge(&r, "shoal_swarm_store_bytes", "partial"), 500.0);
        assert_eq!(gauge(&r, "shoal_swarm_store_blobs", "partial"), 1.0);
        assert_eq!(gauge(&r, "shoal_swarm_store_limit_bytes", "max"), 1000.0);
        assert_eq!(gauge(&r, "shoal_swarm_store_limit_bytes", "high"), 900.0);
        assert_eq!(gauge(&r, "shoal_swarm_store_limit_bytes", "low"), 750.0);
        std::fs::remove_file(root.join("blobs").join(hex('b'))).unwrap();
        assert_eq!(gauge(&r, "shoal_swarm_store_blobs", "complete"), 1.0, "measured again on each scrape");
    }
}
