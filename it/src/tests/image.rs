//! A small test image, as the registry tests pull it: a config blob, two random layers and
//! a Docker schema 2 manifest listing them.

use shoal_core::Digest;
use shoal_loadtest::cluster::random_blob;

pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A manifest descriptor of `data`.
pub(super) fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "size": data.len(), "digest": Digest::of(data).to_string()})
}

/// The blobs of a test image; `manifest` is a Docker schema 2 manifest of the others.
pub(super) struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    /// A 3 MiB layer and one of `small` bytes, drawn from `seed`.
    pub fn new(seed: u64, small: u64) -> TestImage {
        let layers = vec![random_blob(3 << 20, seed), random_blob(small, seed + 1)];
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| Digest::of(l).to_string()).collect::<Vec<_>>()},
        }))
        .unwrap();
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor("application/vnd.docker.container.image.v1+json", &config),
            "layers": layers.iter().map(|l| descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", l)).collect::<Vec<_>>(),
        }))
        .unwrap();
        TestImage { config, layers, manifest }
    }
}
