//! What kind of manifest a blob is, from its JSON: the `Content-Type` a registry answers with.
//!
//! The `mediaType` field wins when present (Docker schema 2 manifests and manifest lists
//! always carry it; OCI manifests and indexes usually do). Without it, a document with a
//! `manifests` array is an OCI index and any other is an OCI manifest. A blob that is not a
//! JSON object with a `schemaVersion` (a layer, a config blob) is not a manifest.

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-arch).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-arch).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Largest manifest served. Hard-coded, as docker/distribution's 4 MiB limit.
pub const MAX_MANIFEST_LEN: u64 = 4 << 20;

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<serde::de::IgnoredAny>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<serde::de::IgnoredAny>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str, expect: Option<&str>) {
        assert_eq!(media_type(json.as_bytes()).as_deref(), expect, "{json}");
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
}
