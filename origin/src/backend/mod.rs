//! Where the origin keeps ground truth: the storage backends that blobs are read from and
//! written to, a local directory ([`fs`]) or an S3 bucket ([`s3`]), behind one [`Backend`]
//! trait.
//!
//! Invariants: a backend never holds a whole blob in memory (`get` returns a stream, `put`
//! reads from a local file); every object key comes from [`blob_key`] or [`object_key`], so
//! both backends agree on the layout and no key can climb out of the backend's root (`..` and
//! `.` segments are rejected, empty segments and stray slashes are dropped).
//! Errors are classified by what the caller can do with them ([`BackendError`]): answer 404,
//! retry, or give up and alert.
//!
//! Backends do not verify content: `put` is handed a file whose digest the caller has already
//! checked, and readers of `get` hash what they receive, as every Shoal peer does with pieces.

pub mod fs;
pub mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use shoal_core::Digest;

pub use fs::{FsBackend, FsConfig};
pub use s3::{S3Backend, S3Config};

/// A store of blobs addressed by digest. Object-safe: the origin holds an `Arc<dyn Backend>`.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The size of the blob, or `None` if the backend does not have it.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BackendError>;

    /// Streams the blob. A missing blob is [`BackendError::NotFound`]. The stream yields
    /// exactly `length` bytes or ends with an error.
    async fn get(&self, digest: &Digest) -> Result<BlobStream, BackendError>;

    /// Stores the local file at `path`, which holds `length` bytes whose digest the caller has
    /// verified. Replaces any existing object; readers see the old or the new object, never a
    /// partial one.
    async fn put(&self, digest: &Digest, path: &Path, length: u64) -> Result<(), BackendError>;

    /// Reads a small raw object by key relative to the backend root (prefix included), such
    /// as a registry tag link file. `None` if it does not exist; an error if it is larger than
    /// `max` bytes.
    async fn get_small(&self, key: &str, max: usize) -> Result<Option<Bytes>, BackendError>;

    /// Writes a small raw object by key relative to the backend root (prefix included), such
    /// as a registry tag link file, replacing any existing one atomically.
    async fn put_small(&self, key: &str, data: Bytes) -> Result<(), BackendError>;

    /// A short name for logs and metrics labels (`"fs"`, `"s3"`).
    fn name(&self) -> &str;
}

/// A blob being read from a backend.
pub struct BlobStream {
    /// The blob's size in bytes, known before the first chunk.
    pub length: u64,
    /// The blob's bytes in order, in chunks of backend-dependent size.
    pub stream: BoxStream<'static, Result<Bytes, BackendError>>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream").field("length", &self.length).finish_non_exhaustive()
    }
}

/// Why a backend operation failed, classified by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The blob or object does not exist: answer 404, or fetch it elsewhere.
    #[error("object not found")]
    NotFound,
    /// Worth retrying later: network failures, timeouts, 5xx, throttling, a body cut short.
    #[error("transient backend error: {message}")]
    Transient { message: String },
    /// Retrying will not help: bad credentials, a missing bucket, invalid configuration or key.
    #[error("backend error: {message}")]
    Permanent { message: String },
    /// Local disk I/O failed (the fs backend, or reading the file to upload).
    #[error("backend i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl BackendError {
    /// Whether the same call may succeed if retried.
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient { .. })
    }

    pub(crate) fn permanent(message: impl Into<String>) -> BackendError {
        BackendError::Permanent { message: message.into() }
    }

    pub(crate) fn transient(message: impl Into<String>) -> BackendError {
        BackendError::Transient { message: message.into() }
    }
}

/// How blob keys are laid out under the backend's prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `<prefix>/sha256/<hex>`: Shoal's own layout, the default for the fs backend.
    #[default]
    Flat,
    /// `<prefix>/docker/registry/v2/blobs/sha256/<hex[..2]>/<hex>/data`: the layout of
    /// docker/distribution (the registry), so the origin can serve an existing registry's
    /// bucket or directory directly. `<prefix>` is the registry's `rootdirectory`.
    DockerRegistry,
}

/// Which backend to use and how to reach it; the origin config's `backend:` section.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// A local directory (`type: fs`): the default, and what in-process tests use.
    Fs(FsConfig),
    /// An S3 bucket or an S3-compatible server (`type: s3`).
    S3(S3Config),
}

impl Default for BackendConfig {
    /// A local directory at [`fs::DEFAULT_ROOT`] with the flat layout.
    fn default() -> Self {
        BackendConfig::Fs(FsConfig::default())
    }
}

impl BackendConfig {
    /// Checks the configuration and builds the backend. Does not contact a remote service:
    /// a bad endpoint or bad credentials show up on the first call.
    pub async fn build(&self) -> Result<Arc<dyn Backend>, BackendError> {
        Ok(match self {
            BackendConfig::Fs(cfg) => Arc::new(FsBackend::new(cfg.clone()).await?),
            BackendConfig::S3(cfg) => Arc::new(S3Backend::new(cfg.clone()).await?),
        })
    }
}

/// The key of `digest` under `prefix` in `layout`. The prefix is normalised as by
/// [`object_key`]; the result never starts or ends with `/`.
pub fn blob_key(layout: Layout, prefix: &str, digest: &Digest) -> String {
    let hex = digest.hex();
    let rel = match layout {
        Layout::Flat => format!("sha256/{hex}"),
        Layout::DockerRegistry => format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]),
    };
    join_prefix(prefix, &rel)
}

/// The key of a raw object `key` under `prefix`: both are split on `/`, empty segments are
/// dropped (`"/a//b/"` is `a/b`), and the parts are joined with single slashes.
/// Fails on `.` or `..` segments, backslashes and NUL bytes, and on an empty `key`, so a key
/// always names something strictly below the root.
pub fn object_key(prefix: &str, key: &str) -> Result<String, BackendError> {
    check_segments(prefix).map_err(|why| BackendError::permanent(format!("invalid prefix {prefix:?}: {why}")))?;
    check_segments(key).map_err(|why| BackendError::permanent(format!("invalid object key {key:?}: {why}")))?;
    if segments(key).next().is_none() {
        return Err(BackendError::permanent("invalid object key \"\": empty"));
    }
    Ok(join_prefix(prefix, key))
}

/// Checks a configured prefix once, at build time, so [`blob_key`] can stay infallible.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), BackendError> {
    check_segments(prefix).map_err(|why| BackendError::permanent(format!("invalid prefix {prefix:?}: {why}")))
}

/// The local path of `key` under `root`. `key` comes from [`blob_key`] or [`object_key`], so
/// it has no `.`/`..` segments and the path stays below `root`.
pub(crate) fn key_path(root: &Path, key: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(segments(key));
    path
}

fn segments(s: &str) -> impl Iterator<Item = &str> {
    s.split('/').filter(|seg| !seg.is_empty())
}

fn check_segments(s: &str) -> Result<(), &'static str> {
    if s.contains('\\') || s.contains('\0') {
        return Err("backslash or nul byte");
    }
    if segments(s).any(|seg| seg == "." || seg == "..") {
        return Err("`.` or `..` segment");
    }
    Ok(())
}

fn join_prefix(prefix: &str, rel: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + rel.len() + 1);
    for seg in segments(prefix).chain(segments(rel)) {
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(seg);
    }
    out
}

/// The error for a small object read that exceeds its bound.
pub(crate) fn too_large(key: &str, length: u64, max: usize) -> BackendError {
    BackendError::permanent(format!("object {key:?} has {length} bytes, more than the {max} allowed"))
}

/// Wraps a body stream so it yields exactly `length` bytes: a body that ends early or runs
/// long becomes a [`BackendError::Transient`] at the point the mismatch is seen, so a reader
/// never mistakes a cut connection or a file replaced under it for the end of the blob.
pub(crate) fn exact_length(
    length: u64,
    inner: BoxStream<'static, Result<Bytes, BackendError>>,
) -> BoxStream<'static, Result<Bytes, BackendError>> {
    struct State {
        inner: BoxStream<'static, Result<Bytes, BackendError>>,
        seen: u64,
        done: bool,
    }
    let state = State { inner, seen: 0, done: false };
    futures::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        let item = match st.inner.next().await {
            Some(Ok(chunk)) => {
                st.seen += chunk.len() as u64;
                if st.seen > length {
                    Err(BackendError::transient(format!("body is longer than the expected {length} bytes")))
                } else {
                    Ok(chunk)
                }
            }
            Some(Err(e)) => Err(e),
            None if st.seen < length => {
                Err(BackendError::transient(format!("body ended after {} of {length} bytes", st.seen)))
            }
            None => return None,
        };
        st.done = item.is_err();
        Some((item, st))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ab5e8c0c9a1d6e5fbd3b0f0d9e1c2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b";

    fn check(layout: Layout, prefix: &str, expect: &str) {
        let digest = Digest::from_hex(HEX).unwrap();
        assert_eq!(blob_key(layout, prefix, &digest), expect, "layout {layout:?} prefix {prefix:?}");
    }

    #[test]
    fn flat_keys() {
        check(Layout::Flat, "", &format!("sha256/{HEX}"));
        check(Layout::Flat, "/", &format!("sha256/{HEX}"));
        check(Layout::Flat, "blobs", &format!("blobs/sha256/{HEX}"));
        check(Layout::Flat, "/blobs/", &format!("blobs/sha256/{HEX}"));
        check(Layout::Flat, "a/b", &format!("a/b/sha256/{HEX}"));
        check(Layout::Flat, "//a//b//", &format!("a/b/sha256/{HEX}"));
    }

    #[test]
    fn docker_registry_keys() {
        let tail = format!("docker/registry/v2/blobs/sha256/ab/{HEX}/data");
        check(Layout::DockerRegistry, "", &tail);
        check(Layout::DockerRegistry, "/", &tail);
        check(Layout::DockerRegistry, "registry", &format!("registry/{tail}"));
        check(Layout::DockerRegistry, "/registry/", &format!("registry/{tail}"));
        check(Layout::DockerRegistry, "a/b/", &format!("a/b/{tail}"));
    }

    fn check_object(prefix: &str, key: &str, expect: Option<&str>) {
        let got = object_key(prefix, key).ok();
        assert_eq!(got.as_deref(), expect, "prefix {prefix:?} key {key:?}");
    }

    #[test]
    fn object_keys() {
        check_object("", "a/link", Some("a/link"));
        check_object("/p/", "/a/link", Some("p/a/link"));
        check_object("p", "a//b/", Some("p/a/b"));
        check_object("p", "", None);
        check_object("p", "/", None);
        check_object("p", "../x", None);
        check_object("p", "a/../../x", None);
        check_object("p", "./x", None);
        check_object("p", "a\\..\\x", None);
        check_object("..", "x", None);
        check_object("p", "a..b", Some("p/a..b"));
    }

    #[test]
    fn key_paths_stay_under_root() {
        let root = Path::new("/srv/blobs");
        assert_eq!(key_path(root, "p/sha256/x"), Path::new("/srv/blobs/p/sha256/x"));
    }

    #[test]
    fn layout_names_in_config() {
        use shoal_runtime::config::parse;
        assert_eq!(parse::<Layout>("docker_registry").unwrap(), Layout::DockerRegistry);
        assert_eq!(parse::<Layout>("flat").unwrap(), Layout::Flat);
        assert!(parse::<Layout>("sharded").is_err());
    }

    #[test]
    fn backend_config_is_tagged_and_strict() {
        let cfg: BackendConfig = shoal_runtime::config::parse("type: fs\nroot: /srv/blobs\n").unwrap();
        assert_eq!(
            cfg,
            BackendConfig::Fs(FsConfig { root: "/srv/blobs".into(), layout: Layout::Flat, prefix: String::new() })
        );
        let cfg: BackendConfig =
            shoal_runtime::config::parse("type: s3\nbucket: b\nlayout: docker_registry\nprefix: reg\n").unwrap();
        let BackendConfig::S3(s3) = cfg else { panic!("expected s3") };
        assert_eq!((s3.bucket.as_str(), s3.layout, s3.prefix.as_str()), ("b", Layout::DockerRegistry, "reg"));

        let err = shoal_runtime::config::parse::<BackendConfig>("type: fs\nroot: /x\nroots: /y\n").unwrap_err();
        assert!(err.to_string().contains("roots"), "{err}");
        let err = shoal_runtime::config::parse::<BackendConfig>("type: gcs\n").unwrap_err();
        assert!(err.to_string().contains("gcs"), "{err}");
    }

    async fn collect(stream: BoxStream<'static, Result<Bytes, BackendError>>) -> Vec<Result<usize, String>> {
        stream.map(|r| r.map(|b| b.len()).map_err(|e| e.to_string())).collect().await
    }

    fn chunks(sizes: &[usize]) -> BoxStream<'static, Result<Bytes, BackendError>> {
        let items: Vec<_> = sizes.iter().map(|&n| Ok(Bytes::from(vec![0u8; n]))).collect();
        futures::stream::iter(items).boxed()
    }

    #[tokio::test]
    async fn exact_length_passes_a_correct_body() {
        assert_eq!(collect(exact_length(5, chunks(&[2, 3]))).await, vec![Ok(2), Ok(3)]);
        assert_eq!(collect(exact_length(0, chunks(&[]))).await, vec![]);
    }

    #[tokio::test]
    async fn exact_length_flags_short_and_long_bodies() {
        let got = collect(exact_length(6, chunks(&[2, 3]))).await;
        assert_eq!(got, vec![Ok(2), Ok(3), Err("transient backend error: body ended after 5 of 6 bytes".into())]);
        let got = collect(exact_length(4, chunks(&[2, 3, 1]))).await;
        assert_eq!(got.len(), 2, "stops after the first error: {got:?}");
        assert!(got[1].is_err());
    }
}
