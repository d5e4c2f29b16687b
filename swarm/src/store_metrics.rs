//! `shoal_swarm_store_bytes` and `shoal_swarm_store_blobs`, by `state` (`complete`, `partial`):
//! how much of the node's disk its store holds, measured at scrape time.
//!
//! The figures come from listing `blobs/` and `partial/` on each scrape rather than from
//! counters kept in step with every commit, so they are right whatever wrote the store (a
//! previous run, an operator's cleanup). A listing of a few thousand entries costs well under
//! a millisecond; a directory that cannot be read counts as empty.

use std::path::{Path, PathBuf};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts, Registry};

/// Registers the store collector for the store at `root` on `registry`.
pub fn register(registry: &Registry, root: PathBuf) -> prometheus::Result<()> {
    registry.register(Box::new(StoreCollector::new(root)?))
}

struct StoreCollector {
    root: PathBuf,
    bytes: IntGaugeVec,
    blobs: IntGaugeVec,
}

impl StoreCollector {
    fn new(root: PathBuf) -> prometheus::Result<StoreCollector> {
        Ok(StoreCollector {
            root,
            bytes: IntGaugeVec::new(
                Opts::new("shoal_swarm_store_bytes", "Bytes of blob data in the node's store, by state"),
                &["state"],
            )?,
            blobs: IntGaugeVec::new(
                Opts::new("shoal_swarm_store_blobs", "Blobs in the node's store, by state"),
                &["state"],
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
        self.bytes.desc().into_iter().chain(self.blobs.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (state, dir, suffix) in [("complete", "blobs", ""), ("partial", "partial", ".data")] {
            let (n, bytes) = measure(&self.root.join(dir), suffix);
            self.bytes.with_label_values(&[state]).set(bytes);
            self.blobs.with_label_values(&[state]).set(n);
        }
        self.bytes.collect().into_iter().chain(self.blobs.collect()).collect()
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
        register(&r, root.to_path_buf()).unwrap();
        assert_eq!(gauge(&r, "shoal_swarm_store_bytes", "complete"), 1024.0);
        assert_eq!(gauge(&r, "shoal_swarm_store_blobs", "complete"), 2.0);
        assert_eq!(gauge(&r, "shoal_swarm_store_bytes", "partial"), 500.0);
        assert_eq!(gauge(&r, "shoal_swarm_store_blobs", "partial"), 1.0);
        std::fs::remove_file(root.join("blobs").join(hex('b'))).unwrap();
        assert_eq!(gauge(&r, "shoal_swarm_store_blobs", "complete"), 1.0, "measured again on each scrape");
    }
}
