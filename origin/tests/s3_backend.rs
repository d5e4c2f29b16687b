//! The S3 backend against a real S3 server: s3s-fs on 127.0.0.1, started by each test in its
//! own temporary directory and killed when the test ends.
//!
//! s3s-fs keeps a bucket as a directory and an object as a plain file, so tests place objects
//! by hand (as a docker registry would have written them) and check where uploads land.
//! The binary is `$SHOAL_S3S_FS`, `~/.cargo/bin/s3s-fs` or `s3s-fs` on the PATH; when none
//! exists the tests fail, telling you to run `scripts/s3-server.sh install`, rather than pass
//! without having tested anything.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_core::Digest;
use shoal_origin::backend::{Backend, BackendConfig, BackendError};

const BUCKET: &str = "shoal-test";
const ACCESS_KEY: &str = "shoal";
const SECRET_KEY: &str = "shoalsecret";
/// How long s3s-fs gets to answer on its port.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running s3s-fs, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    /// The server's root: `data/<bucket>/<key>` is an object.
    data: PathBuf,
    dir: tempfile::TempDir,
}

impl S3Server {
    fn start() -> S3Server {
        let bin = find_s3s_fs().unwrap_or_else(|| {
            panic!(
                "s3s-fs not found (looked at $SHOAL_S3S_FS, ~/.cargo/bin/s3s-fs and the PATH); \
                 install it with `scripts/s3-server.sh install`"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join(BUCKET)).unwrap();
        // The free port can be taken between probing and binding: retry with another.
        let mut last_log = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let log_path = dir.path().join(format!("s3s-fs-{attempt}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            if wait_for_port(&mut child, port) {
                let endpoint = format!("http://127.0.0.1:{port}");
                return S3Server { child, endpoint, data, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("s3s-fs did not start; its last log:\n{last_log}");
    }

    /// A backend on this server from YAML config lines added to the common ones.
    async fn backend(&self, extra: &str) -> Arc<dyn Backend> {
        let yaml = format!(
            "type: s3\nbucket: {BUCKET}\nendpoint_url: {}\naccess_key_id: {ACCESS_KEY}\n\
             secret_access_key: {SECRET_KEY}\n{extra}",
            self.endpoint
        );
        let cfg: BackendConfig = shoal_runtime::config::parse(&yaml).unwrap();
        cfg.build().await.unwrap()
    }

    /// The file s3s-fs keeps for `key`.
    fn object_path(&self, key: &str) -> PathBuf {
        self.data.join(BUCKET).join(key)
    }

    /// Places an object by hand, as another writer of the bucket would.
    fn place(&self, key: &str, data: &[u8]) {
        let path = self.object_path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// The ETag of an object, read with a plain SDK client. S3 (and s3s-fs) give a multipart
    /// object an ETag ending in `-<number of parts>`, which shows how it was uploaded.
    async fn etag(&self, key: &str) -> String {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let cfg = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .build();
        let out = aws_sdk_s3::Client::from_conf(cfg).head_object().bucket(BUCKET).key(key).send().await.unwrap();
        out.e_tag().unwrap().trim_matches('"').to_string()
    }

    /// Writes `data` to a local file for `put`.
    fn local_file(&self, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(format!("upload-{}", Digest::of(data).hex()));
        std::fs::write(&path, data).unwrap();
        path
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_s3s_fs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_S3S_FS") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SHOAL_S3S_FS={} is not a file", p.display());
        return Some(p);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    if let Some(p) = cargo_home.map(|h| h.join("bin/s3s-fs")).filter(|p| p.is_file()) {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("s3s-fs")).find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// True once the port accepts connections; false if the child exits or time runs out.
fn wait_for_port(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Reads a whole blob, checking the announced length against what arrived.
async fn read_blob(backend: &dyn Backend, digest: &Digest) -> Result<Vec<u8>, BackendError> {
    let blob = backend.get(digest).await?;
    let mut data = Vec::new();
    let mut stream = blob.stream;
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk?);
    }
    assert_eq!(data.len() as u64, blob.length, "announced length differs from the body");
    Ok(data)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| u8::try_from(i * 31 % 251).unwrap() ^ seed).collect()
}

#[tokio::test]
async fn small_put_stat_get_round_trip() {
    let server = S3Server::start();
    let backend = server.backend("layout: flat\nprefix: /shoal/\n").await;
    assert_eq!(backend.name(), "s3");
    let data = pattern(100 * 1024 + 7, 1);
    let digest = Digest::of(&data);

    assert_eq!(backend.stat(&digest).await.unwrap(), None);
    backend.put(&digest, &server.local_file(&data), data.len() as u64).await.unwrap();
    assert_eq!(backend.stat(&digest).await.unwrap(), Some(data.len() as u64));
    assert!(read_blob(&*backend, &digest).await.unwrap() == data, "content differs");
    let on_disk = std::fs::read(server.object_path(&format!("shoal/sha256/{}", digest.hex()))).unwrap();
    assert!(on_disk == data, "object is not at <prefix>/sha256/<hex>");
    let etag = server.etag(&format!("shoal/sha256/{}", digest.hex())).await;
    assert!(!etag.contains('-'), "expected a single PUT, got ETag {etag}");
}

#[tokio::test]
async fn multipart_put_round_trips() {
    let server = S3Server::start();
    let backend = server.backend("layout: flat\nmultipart_threshold: 8MiB\npart_size: 5MiB\n").await;
    // Three parts: 5 MiB, 5 MiB and the rest.
    let data = pattern(12 * 1024 * 1024 + 12345, 2);
    let digest = Digest::of(&data);
    backend.put(&digest, &server.local_file(&data), data.len() as u64).await.unwrap();
    assert_eq!(backend.stat(&digest).await.unwrap(), Some(data.len() as u64));
    assert!(read_blob(&*backend, &digest).await.unwrap() == data, "content differs");
    let etag = server.etag(&format!("sha256/{}", digest.hex())).await;
    assert!(etag.ends_with("-3"), "expected a 3-part upload, got ETag {etag}");
}

#[tokio::test]
async fn put_with_wrong_length_is_rejected() {
    let server = S3Server::start();
    let backend = server.backend("layout: flat\n").await;
    let data = b"twelve bytes";
    let digest = Digest::of(data);
    let err = backend.put(&digest, &server.local_file(data), 13).await.unwrap_err();
    assert!(matches!(err, BackendError::Permanent { .. }), "{err:?}");
    assert_eq!(backend.stat(&digest).await.unwrap(), None);
}

#[tokio::test]
async fn missing_blob_is_not_found() {
    let server = S3Server::start();
    let backend = server.backend("layout: flat\n").await;
    let digest = Digest::of(b"never stored");
    assert_eq!(backend.stat(&digest).await.unwrap(), None);
    let err = backend.get(&digest).await.unwrap_err();
    assert!(matches!(err, BackendError::NotFound), "{err:?}");
}

#[tokio::test]
async fn docker_registry_layout_reads_blobs_a_registry_wrote() {
    let server = S3Server::start();
    let data = pattern(3000, 3);
    let digest = Digest::of(&data);
    let hex = digest.hex();
    server.place(&format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]), &data);

    let backend = server.backend("layout: docker_registry\n").await;
    assert_eq!(backend.stat(&digest).await.unwrap(), Some(3000));
    assert!(read_blob(&*backend, &digest).await.unwrap() == data, "content differs");

    // A registry with `rootdirectory: /mirror` prefixes every key.
    let other = pattern(10, 4);
    let other_digest = Digest::of(&other);
    let hex = other_digest.hex();
    server.place(&format!("mirror/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]), &other);
    let backend = server.backend("layout: docker_registry\nprefix: /mirror/\n").await;
    assert_eq!(read_blob(&*backend, &other_digest).await.unwrap(), other);
    assert_eq!(backend.stat(&digest).await.unwrap(), None, "the unprefixed blob is outside the prefix");
}

#[tokio::test]
async fn get_small_reads_tag_links() {
    let server = S3Server::start();
    let link = "docker/registry/v2/repositories/test/img/_manifests/tags/v1/current/link";
    let target = format!("sha256:{}", Digest::of(b"manifest").hex());
    server.place(&format!("reg/{link}"), target.as_bytes());
    let backend = server.backend("layout: docker_registry\nprefix: reg\n").await;

    assert_eq!(backend.get_small(link, 1024).await.unwrap().as_deref(), Some(target.as_bytes()));
    assert_eq!(backend.get_small(link, target.len()).await.unwrap().as_deref(), Some(target.as_bytes()));
    let missing = "docker/registry/v2/repositories/test/img/_manifests/tags/v2/current/link";
    assert_eq!(backend.get_small(missing, 1024).await.unwrap(), None);
    let err = backend.get_small(link, 10).await.unwrap_err();
    assert!(matches!(err, BackendError::Permanent { .. }), "{err:?}");
    let err = backend.get_small("../outside", 1024).await.unwrap_err();
    assert!(matches!(err, BackendError::Permanent { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_credentials_are_permanent() {
    let server = S3Server::start();
    let yaml = format!(
        "type: s3\nbucket: {BUCKET}\nlayout: flat\nendpoint_url: {}\naccess_key_id: {ACCESS_KEY}\n\
         secret_access_key: wrong\n",
        server.endpoint
    );
    let cfg: BackendConfig = shoal_runtime::config::parse(&yaml).unwrap();
    let backend = cfg.build().await.unwrap();
    let err = backend.get(&Digest::of(b"x")).await.unwrap_err();
    assert!(matches!(err, BackendError::Permanent { .. }), "{err:?}");
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    let port = free_port();
    let yaml = format!(
        "type: s3\nbucket: {BUCKET}\nlayout: flat\nendpoint_url: http://127.0.0.1:{port}\n\
         access_key_id: {ACCESS_KEY}\nsecret_access_key: {SECRET_KEY}\n"
    );
    let cfg: BackendConfig = shoal_runtime::config::parse(&yaml).unwrap();
    let backend = cfg.build().await.unwrap();
    let err = backend.stat(&Digest::of(b"x")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}
