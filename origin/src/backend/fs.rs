//! The local directory backend: the embedded default and what in-process tests use.
//!
//! Objects are plain files at `<root>/<key>`, keys as in [`super::blob_key`], so the
//! `docker_registry` layout can point straight at a registry's filesystem-driver directory.
//! Invariants: a blob file is either absent or complete, because `put` writes a temporary
//! file in the destination directory, fsyncs it, renames it into place and fsyncs the
//! directory; and every path is built from validated key segments below `root`, so no digest
//! or key can name a file outside it. (Symlinks an operator places inside the root are
//! followed: that is their choice, not something a request can cause.)
//!
//! Reads stream through `tokio::fs` in 1 MiB chunks; the write path is a plain synchronous
//! copy (`std::io::copy`, which uses `copy_file_range` on Linux) on the blocking pool.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use shoal_core::Digest;
use tokio::io::AsyncReadExt;

use super::{Backend, BackendError, BlobStream, Layout};

/// Root used when the origin config has no `backend:` section.
pub const DEFAULT_ROOT: &str = "/var/lib/shoal/origin/blobs";

/// Size of the chunks `get` yields (hard-coded): large enough that per-chunk overhead is
/// negligible, small enough that many concurrent readers stay cheap.
const CHUNK: usize = 1 << 20;

/// Configuration of the local directory backend (`type: fs`).
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Directory holding the objects; created if missing. Required.
    pub root: PathBuf,
    /// Key layout below `root`; default `flat`.
    #[serde(default)]
    pub layout: Layout,
    /// Path below `root` where the layout starts; default empty.
    #[serde(default)]
    pub prefix: String,
}

impl Default for FsConfig {
    /// [`DEFAULT_ROOT`], flat layout, no prefix.
    fn default() -> Self {
        FsConfig { root: PathBuf::from(DEFAULT_ROOT), layout: Layout::Flat, prefix: String::new() }
    }
}

/// Blobs in a local directory.
#[derive(Debug)]
pub struct FsBackend {
    cfg: FsConfig,
}

impl FsBackend {
    /// Validates the prefix and creates the root directory.
    pub async fn new(cfg: FsConfig) -> Result<FsBackend, BackendError> {
        super::validate_prefix(&cfg.prefix)?;
        if cfg.root.as_os_str().is_empty() {
            return Err(BackendError::permanent("fs backend root is empty"));
        }
        tokio::fs::create_dir_all(&cfg.root).await?;
        Ok(FsBackend { cfg })
    }

    /// Where `digest` lives on disk.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        super::key_path(&self.cfg.root, &super::blob_key(self.cfg.layout, &self.cfg.prefix, digest))
    }
}

#[async_trait::async_trait]
impl Backend for FsBackend {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BackendError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, digest: &Digest) -> Result<BlobStream, BackendError> {
        let (file, length) = open_file(&self.blob_path(digest)).await?.ok_or(BackendError::NotFound)?;
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            match read_chunk(&mut file).await {
                Ok(chunk) if chunk.is_empty() => None,
                Ok(chunk) => Some((Ok(chunk), Some(file))),
                Err(e) => Some((Err(e.into()), None)),
            }
        });
        Ok(BlobStream { length, stream: super::exact_length(length, chunks.boxed()) })
    }

    async fn put(&self, digest: &Digest, path: &Path, length: u64) -> Result<(), BackendError> {
        let src = path.to_path_buf();
        let dst = self.blob_path(digest);
        tokio::task::spawn_blocking(move || put_blocking(&src, &dst, length))
            .await
            .map_err(|e| BackendError::Io(std::io::Error::other(e)))?
    }

    async fn get_small(&self, key: &str, max: usize) -> Result<Option<Bytes>, BackendError> {
        let path = super::key_path(&self.cfg.root, &super::object_key(&self.cfg.prefix, key)?);
        let Some((file, length)) = open_file(&path).await? else { return Ok(None) };
        if length > max as u64 {
            return Err(super::too_large(key, length, max));
        }
        // The file may grow after the size check: never read more than `max + 1` bytes.
        let mut buf = Vec::with_capacity(usize::try_from(length).unwrap_or(max).min(max) + 1);
        file.take(max as u64 + 1).read_to_end(&mut buf).await?;
        if buf.len() > max {
            return Err(super::too_large(key, buf.len() as u64, max));
        }
        Ok(Some(Bytes::from(buf)))
    }

    async fn put_small(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let dst = super::key_path(&self.cfg.root, &super::object_key(&self.cfg.prefix, key)?);
        tokio::task::spawn_blocking(move || write_small_blocking(&dst, &data))
            .await
            .map_err(|e| BackendError::Io(std::io::Error::other(e)))?
    }

    fn name(&self) -> &str {
        "fs"
    }
}

/// Opens a regular file and returns it with its size; `None` if it does not exist or is not a
/// regular file (a directory at a blob path is not a blob).
async fn open_file(path: &Path) -> Result<Option<(tokio::fs::File, u64)>, BackendError> {
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta.len())))
}

/// Reads up to [`CHUNK`] bytes; an empty result means end of file.
async fn read_chunk(file: &mut tokio::fs::File) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    while buf.len() < CHUNK {
        if file.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

/// Writes `data` to a temporary file beside `dst` and renames it into place.
fn write_small_blocking(dst: &Path, data: &[u8]) -> Result<(), BackendError> {
    let dir = dst.parent().ok_or_else(|| BackendError::permanent(format!("path {} has no parent", dst.display())))?;
    std::fs::create_dir_all(dir)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644));
    let mut tmp = builder.tempfile_in(dir)?;
    std::io::Write::write_all(tmp.as_file_mut(), data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dst).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn put_blocking(src: &Path, dst: &Path, length: u64) -> Result<(), BackendError> {
    let dir =
        dst.parent().ok_or_else(|| BackendError::permanent(format!("blob path {} has no parent", dst.display())))?;
    std::fs::create_dir_all(dir)?;
    let mut src_file = std::fs::File::open(src)?;
    let src_len = src_file.metadata()?.len();
    if src_len != length {
        return Err(BackendError::permanent(format!("file {} has {src_len} bytes, expected {length}", src.display())));
    }
    // The temporary file is deleted when `tmp` drops, so an error below leaves nothing behind.
    // Dot-prefixed so directory scans that parse blob names skip it.
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644));
    let mut tmp = builder.tempfile_in(dir)?;
    let copied = std::io::copy(&mut src_file, tmp.as_file_mut())?;
    if copied != length {
        return Err(BackendError::permanent(format!(
            "file {} changed while being copied ({copied} bytes, expected {length})",
            src.display()
        )));
    }
    tmp.as_file().sync_all()?;
    tmp.persist(dst).map_err(|e| e.error)?;
    // Make the rename itself durable.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        backend: FsBackend,
    }

    async fn fixture(layout: Layout, prefix: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FsConfig { root: dir.path().join("root"), layout, prefix: prefix.into() };
        let backend = FsBackend::new(cfg).await.unwrap();
        Fixture { dir, backend }
    }

    impl Fixture {
        /// Writes `data` to a scratch file outside the root and puts it.
        async fn put(&self, data: &[u8]) -> Digest {
            let digest = Digest::of(data);
            let src = self.dir.path().join("upload");
            std::fs::write(&src, data).unwrap();
            self.backend.put(&digest, &src, data.len() as u64).await.unwrap();
            digest
        }
    }

    async fn get_all(backend: &dyn Backend, digest: &Digest) -> Result<(u64, Vec<usize>, Vec<u8>), BackendError> {
        let blob = backend.get(digest).await?;
        let mut sizes = Vec::new();
        let mut data = Vec::new();
        let mut stream = blob.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            sizes.push(chunk.len());
            data.extend_from_slice(&chunk);
        }
        Ok((blob.length, sizes, data))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| u8::try_from(i * 31 % 251).unwrap()).collect()
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn put_stat_get_round_trip_in_1mib_chunks() {
        let f = fixture(Layout::Flat, "").await;
        let data = pattern(2 * CHUNK + 12345);
        let digest = f.put(&data).await;
        assert_eq!(f.backend.stat(&digest).await.unwrap(), Some(data.len() as u64));
        let (length, sizes, got) = get_all(&f.backend, &digest).await.unwrap();
        assert_eq!(length, data.len() as u64);
        assert_eq!(sizes, vec![CHUNK, CHUNK, 12345]);
        assert!(got == data, "content differs");
    }

    #[tokio::test]
    async fn empty_blob_round_trips() {
        let f = fixture(Layout::Flat, "").await;
        let digest = f.put(b"").await;
        assert_eq!(f.backend.stat(&digest).await.unwrap(), Some(0));
        let (length, sizes, _) = get_all(&f.backend, &digest).await.unwrap();
        assert_eq!((length, sizes), (0, vec![]));
    }

    #[tokio::test]
    async fn missing_blob_is_not_found() {
        let f = fixture(Layout::Flat, "").await;
        let digest = Digest::of(b"never stored");
        assert_eq!(f.backend.stat(&digest).await.unwrap(), None);
        let err = f.backend.get(&digest).await.unwrap_err();
        assert!(matches!(err, BackendError::NotFound), "{err:?}");
    }

    #[tokio::test]
    async fn directory_at_blob_path_is_not_a_blob() {
        let f = fixture(Layout::Flat, "").await;
        let digest = Digest::of(b"dir");
        std::fs::create_dir_all(f.backend.blob_path(&digest)).unwrap();
        assert_eq!(f.backend.stat(&digest).await.unwrap(), None);
        assert!(matches!(f.backend.get(&digest).await, Err(BackendError::NotFound)));
    }

    #[tokio::test]
    async fn put_leaves_only_the_blob_and_overwrites() {
        let f = fixture(Layout::Flat, "p").await;
        let digest = f.put(b"hello").await;
        let dir = f.dir.path().join("root/p/sha256");
        assert_eq!(names_in(&dir), vec![digest.hex()]);
        f.put(b"hello").await;
        assert_eq!(names_in(&dir), vec![digest.hex()]);
        assert_eq!(std::fs::read(dir.join(digest.hex())).unwrap(), b"hello");
    }

    #[tokio::test]
    async fn failed_put_leaves_no_temp_file() {
        let f = fixture(Layout::Flat, "").await;
        let src = f.dir.path().join("upload");
        std::fs::write(&src, b"12345").unwrap();
        let digest = Digest::of(b"12345");
        let err = f.backend.put(&digest, &src, 6).await.unwrap_err();
        assert!(matches!(err, BackendError::Permanent { .. }), "{err:?}");
        assert_eq!(names_in(&f.dir.path().join("root/sha256")), Vec::<String>::new());
        assert_eq!(f.backend.stat(&digest).await.unwrap(), None);
    }

    #[tokio::test]
    async fn put_of_missing_file_is_io_error() {
        let f = fixture(Layout::Flat, "").await;
        let err = f.backend.put(&Digest::of(b"x"), &f.dir.path().join("nope"), 1).await.unwrap_err();
        assert!(matches!(err, BackendError::Io(ref e) if e.kind() == std::io::ErrorKind::NotFound), "{err:?}");
    }

    #[tokio::test]
    async fn docker_registry_layout_places_blob_where_the_registry_does() {
        let f = fixture(Layout::DockerRegistry, "/reg/").await;
        let digest = f.put(b"layer").await;
        let hex = digest.hex();
        let path = f.dir.path().join(format!("root/reg/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
        assert_eq!(std::fs::read(&path).unwrap(), b"layer");
        let (_, _, got) = get_all(&f.backend, &digest).await.unwrap();
        assert_eq!(got, b"layer");
    }

    #[tokio::test]
    async fn get_small_reads_bounded_objects_by_key() {
        let f = fixture(Layout::DockerRegistry, "reg").await;
        let key = "docker/registry/v2/repositories/test/img/_manifests/tags/v1/current/link";
        let path = f.dir.path().join("root/reg").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"sha256:abc").unwrap();

        assert_eq!(f.backend.get_small(key, 64).await.unwrap().as_deref(), Some(&b"sha256:abc"[..]));
        assert_eq!(f.backend.get_small(&format!("/{key}"), 10).await.unwrap().as_deref(), Some(&b"sha256:abc"[..]));
        assert_eq!(f.backend.get_small("docker/nope/link", 64).await.unwrap(), None);
        let err = f.backend.get_small(key, 9).await.unwrap_err();
        assert!(err.to_string().contains("more than the 9 allowed"), "{err}");
    }

    #[tokio::test]
    async fn put_small_round_trips_and_replaces() {
        let f = fixture(Layout::DockerRegistry, "reg").await;
        f.backend.put_small("a/b/link", Bytes::from_static(b"one")).await.unwrap();
        f.backend.put_small("a/b/link", Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(f.backend.get_small("a/b/link", 16).await.unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(names_in(&f.dir.path().join("root/reg/a/b")), vec!["link".to_string()]);
        assert!(f.backend.put_small("../x", Bytes::from_static(b"x")).await.is_err());
    }

    #[tokio::test]
    async fn keys_cannot_leave_the_root() {
        let f = fixture(Layout::Flat, "").await;
        std::fs::write(f.dir.path().join("secret"), b"x").unwrap();
        for key in ["../secret", "a/../../secret", "./secret", ""] {
            let err = f.backend.get_small(key, 64).await.unwrap_err();
            assert!(matches!(err, BackendError::Permanent { .. }), "{key:?}: {err:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = FsConfig { root: dir.path().join("root"), layout: Layout::Flat, prefix: "../out".into() };
        let err = FsBackend::new(cfg).await.unwrap_err();
        assert!(err.to_string().contains("invalid prefix"), "{err}");
    }

    #[tokio::test]
    async fn built_from_config() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("type: fs\nroot: {}\nlayout: flat\n", dir.path().join("r").display());
        let cfg: super::super::BackendConfig = shoal_runtime::config::parse(&yaml).unwrap();
        let backend = cfg.build().await.unwrap();
        assert_eq!(backend.name(), "fs");
        assert!(dir.path().join("r").is_dir());
        assert_eq!(backend.stat(&Digest::of(b"x")).await.unwrap(), None);
    }
}
