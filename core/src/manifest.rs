//! Image manifests and indexes (Docker schema 2, OCI), parsed from their JSON: which media
//! type a manifest blob is served with, and which blobs it references (an image's config and
//! layers, an index's child manifests with their platforms). The agent's registry API and the
//! origin's pull-through and preheat use this one implementation.
//!
//! The `mediaType` field wins when present (Docker schema 2 manifests and manifest lists
//! always carry it; OCI manifests and indexes usually do). Without it, a document with a
//! `manifests` array is an OCI index and any other is an OCI manifest. A blob that is not a
//! JSON object with a `schemaVersion` (a layer, a config blob) is not a manifest.
//!
//! Invariant: parsing never panics and never allocates more than the input's size allows;
//! callers bound the input by [`MAX_MANIFEST_LEN`] before reading it.

use crate::Digest;

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-arch).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-arch).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The `Accept` header that asks a registry for any of the four manifest kinds.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// Largest manifest served or parsed. Hard-coded, as docker/distribution's 4 MiB limit.
pub const MAX_MANIFEST_LEN: u64 = 4 << 20;

/// A reference from a manifest to another blob.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub digest: Digest,
    pub size: u64,
    /// Set on the entries of an index.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform an index entry is built for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A parsed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    /// An image: one config blob and its layers, in order.
    Image { media_type: String, config: Descriptor, layers: Vec<Descriptor> },
    /// An index or manifest list: one child manifest per platform.
    Index { media_type: String, manifests: Vec<Descriptor> },
}

/// Why bytes are not a usable manifest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not a JSON object with a `schemaVersion`: a layer or config blob, or garbage.
    #[error("not a manifest")]
    NotManifest,
    /// A manifest whose references cannot be read (schema 1, a missing `config`, a bad digest).
    #[error("unsupported manifest: {0}")]
    Unsupported(String),
}

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<serde::de::IgnoredAny>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(serde::Deserialize)]
struct ImageDoc {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
struct IndexDoc {
    manifests: Vec<Descriptor>,
}

/// The media type of manifest `bytes`, or `None` if they are not a manifest.
pub fn media_type(bytes: &[u8]) -> Option<String> {
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    probe.schema_version?;
    match probe.media_type {
        // Only a value that is a valid header goes out as one.
        Some(m) if !m.is_empty() && m.len() <= 255 && m.bytes().all(|b| b.is_ascii_graphic()) => Some(m),
        _ if probe.manifests.is_some() => Some(OCI_INDEX.into()),
        _ => Some(OCI_MANIFEST.into()),
    }
}

/// Whether a media type names an index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Parses a manifest and its references.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let media_type = media_type(bytes).ok_or(ManifestError::NotManifest)?;
    let bad = |e: serde_json::Error| ManifestError::Unsupported(format!("{media_type}: {e}"));
    if is_index(&media_type) {
        let doc: IndexDoc = serde_json::from_slice(bytes).map_err(bad)?;
        Ok(Manifest::Index { media_type, manifests: doc.manifests })
    } else {
        let doc: ImageDoc = serde_json::from_slice(bytes).map_err(bad)?;
        Ok(Manifest::Image { media_type, config: doc.config, layers: doc.layers })
    }
}

impl Manifest {
    /// The blobs this manifest references directly: config then layers for an image, the
    /// child manifests for an index. Duplicates are kept in order of first appearance only.
    pub fn references(&self) -> Vec<Digest> {
        let all: Vec<Digest> = match self {
            Manifest::Image { config, layers, .. } => {
                std::iter::once(config.digest).chain(layers.iter().map(|l| l.digest)).collect()
            }
            Manifest::Index { manifests, .. } => manifests.iter().map(|m| m.digest).collect(),
        };
        let mut seen = std::collections::HashSet::new();
        all.into_iter().filter(|d| seen.insert(*d)).collect()
    }

    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image { media_type, .. } | Manifest::Index { media_type, .. } => media_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str, expect: Option<&str>) {
        assert_eq!(media_type(json.as_bytes()).as_deref(), expect, "{json}");
    }

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn media_types() {
        check(&format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","layers":[]}}"#), Some(DOCKER_MANIFEST));
        check(
            &format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[]}}"#),
            Some(DOCKER_MANIFEST_LIST),
        );
        check(&format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{}}]}}"#), Some(OCI_INDEX));
        check(r#"{"schemaVersion":2,"manifests":[]}"#, Some(OCI_INDEX));
        check(r#"{"schemaVersion":2,"config":{},"layers":[]}"#, Some(OCI_MANIFEST));
        check(r#"{"schemaVersion":2,"mediaType":"","layers":[]}"#, Some(OCI_MANIFEST));
        check(r#"{"schemaVersion":2,"mediaType":"a\nb","layers":[]}"#, Some(OCI_MANIFEST));
    }

    #[test]
    fn not_manifests() {
        check(r#"{"architecture":"amd64","rootfs":{}}"#, None);
        check("[1,2]", None);
        check("", None);
        check("\u{1f}\u{8b}\u{8}", None);
        check(r#"{"schemaVersion":2,"manifests":"no"}"#, None);
        check(r#"{"schemaVersion":2,"mediaType":7}"#, None);
    }

    fn desc(mt: &str, n: u8, size: u64) -> String {
        format!(r#"{{"mediaType":"{mt}","digest":"{}","size":{size}}}"#, d(n))
    }

    /// Renders a parse result compactly: kind, media type, then the referenced digests'
    /// first byte (as their index in `d`).
    fn show(json: &str) -> String {
        let name = |x: &Digest| (0..=255u8).find(|n| d(*n) == *x).map_or("?".into(), |n| n.to_string());
        match parse(json.as_bytes()) {
            Ok(m @ Manifest::Image { .. }) => {
                format!("image {} {}", m.media_type(), m.references().iter().map(name).collect::<Vec<_>>().join(","))
            }
            Ok(m @ Manifest::Index { .. }) => {
                format!("index {} {}", m.media_type(), m.references().iter().map(name).collect::<Vec<_>>().join(","))
            }
            Err(ManifestError::NotManifest) => "not a manifest".into(),
            Err(ManifestError::Unsupported(_)) => "unsupported".into(),
        }
    }

    #[test]
    fn images() {
        let cfg = desc("application/vnd.docker.container.image.v1+json", 1, 10);
        let l2 = desc("application/vnd.docker.image.rootfs.diff.tar.gzip", 2, 20);
        let l3 = desc("application/vnd.docker.image.rootfs.diff.tar.gzip", 3, 30);
        assert_eq!(
            show(&format!(
                r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{cfg},"layers":[{l2},{l3}]}}"#
            )),
            format!("image {DOCKER_MANIFEST} 1,2,3")
        );
        assert_eq!(
            show(&format!(r#"{{"schemaVersion":2,"config":{cfg},"layers":[{l2},{l2}]}}"#)),
            format!("image {OCI_MANIFEST} 1,2"),
            "a repeated layer is fetched once"
        );
        assert_eq!(show(&format!(r#"{{"schemaVersion":2,"config":{cfg}}}"#)), format!("image {OCI_MANIFEST} 1"));
        assert_eq!(show(r#"{"schemaVersion":2,"layers":[]}"#), "unsupported", "no config");
        assert_eq!(show(r#"{"schemaVersion":1,"fsLayers":[{"blobSum":"x"}]}"#), "unsupported", "schema 1");
        assert_eq!(
            show(r#"{"schemaVersion":2,"config":{"digest":"sha256:zz","size":1},"layers":[]}"#),
            "unsupported",
            "bad digest"
        );
        assert_eq!(
            show(&format!(r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":-1}},"layers":[]}}"#, d(1))),
            "unsupported",
            "negative size"
        );
        assert_eq!(show(r#"{"os":"linux"}"#), "not a manifest");
    }

    #[test]
    fn indexes() {
        let entry = |n: u8, arch: &str| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":100,"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                d(n)
            )
        };
        assert_eq!(
            show(&format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{}]}}"#,
                entry(4, "amd64"),
                entry(5, "arm64")
            )),
            format!("index {OCI_INDEX} 4,5")
        );
        assert_eq!(
            show(&format!(
                r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{}]}}"#,
                entry(6, "amd64")
            )),
            format!("index {DOCKER_MANIFEST_LIST} 6")
        );
        assert_eq!(show(r#"{"schemaVersion":2,"manifests":[]}"#), format!("index {OCI_INDEX} "));
        assert_eq!(show(r#"{"schemaVersion":2,"manifests":[{"size":1}]}"#), "unsupported");
    }

    #[test]
    fn index_platforms() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":5,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}]}}"#,
            d(7)
        );
        let Ok(Manifest::Index { manifests, .. }) = parse(json.as_bytes()) else { panic!("expected an index") };
        let p = manifests[0].platform.as_ref().expect("platform");
        assert_eq!((p.architecture.as_str(), p.os.as_str(), p.variant.as_deref()), ("arm", "linux", Some("v7")));
        assert_eq!(manifests[0].size, 5);
    }
}
