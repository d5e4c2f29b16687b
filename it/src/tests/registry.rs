//! The agent's Registry v2 read API against an origin whose fs backend holds a
//! docker/distribution tree written by hand (as `docker-registry` would write it): pulls by
//! tag and digest, ranges, media types, tag TTL, and bad input getting the spec's errors.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shoal_core::Digest;
use shoal_loadtest::cluster::Cluster;
use shoal_origin::backend::{BackendConfig, FsConfig, Layout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::image::{DOCKER_MANIFEST, TestImage, descriptor};

const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The registry's `rootdirectory`, the backend's prefix.
const PREFIX: &str = "reg";

/// A docker/distribution storage tree in a temporary directory, removed on drop.
struct RegistryDir {
    root: PathBuf,
}

impl RegistryDir {
    fn new() -> RegistryDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "shoal-it-registry-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root).unwrap();
        RegistryDir { root }
    }

    fn backend(&self) -> BackendConfig {
        BackendConfig::Fs(FsConfig { root: self.root.clone(), layout: Layout::DockerRegistry, prefix: PREFIX.into() })
    }

    fn v2(&self) -> PathBuf {
        self.root.join(PREFIX).join("docker/registry/v2")
    }

    fn put_blob(&self, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let dir = self.v2().join("blobs/sha256").join(&d.hex()[..2]).join(d.hex());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data"), data).unwrap();
        d
    }

    fn tag(&self, name: &str, tag: &str, d: Digest) {
        let dir = self.v2().join("repositories").join(name).join("_manifests/tags").join(tag).join("current");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("link"), d.to_string()).unwrap();
    }
}

impl Drop for RegistryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A small image: a config blob, two layers and a Docker schema 2 manifest.
struct Image {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    manifest: Vec<u8>,
    digest: Digest,
}

fn image(reg: &RegistryDir, seed: u64) -> Image {
    let TestImage { config, layers, manifest } = TestImage::new(seed, 70_000);
    reg.put_blob(&config);
    for l in &layers {
        reg.put_blob(l);
    }
    let digest = reg.put_blob(&manifest);
    Image { config, layers, manifest, digest }
}

async fn cluster(reg: &RegistryDir) -> Cluster {
    Cluster::builder().agents(1).backend(reg.backend()).start().await.unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Asserts the status and the spec's error body with `code`.
async fn expect_error(resp: reqwest::Response, status: u16, code: &str) {
    let url = resp.url().to_string();
    assert_eq!(resp.status(), status, "{url}");
    assert_eq!(header(&resp, "docker-distribution-api-version"), "registry/2.0", "{url}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{url}: {body}");
    assert!(body["errors"][0]["message"].is_string(), "{url}: {body}");
}

/// Sends a raw request line, so the path reaches the server exactly as written (no client
/// normalisation of `..`); returns the status and the whole response text.
async fn raw(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_an_image_by_tag_and_digest_with_ranges() {
    let reg = RegistryDir::new();
    let img = image(&reg, 21);
    reg.tag("library/nginx", "1.25", img.digest);
    reg.tag("a/b/c", "v1", img.digest);
    let c = cluster(&reg).await;
    let base = format!("http://{}", c.agent(0).http_addr);
    let http = reqwest::Client::new();

    let resp = http.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "docker-distribution-api-version"), "registry/2.0");
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), serde_json::json!({}));

    // By tag, with containerd's `ns` parameter and on a multi-segment name.
    for url in [
        format!("{base}/v2/library/nginx/manifests/1.25"),
        format!("{base}/v2/library/nginx/manifests/1.25?ns=docker.io"),
        format!("{base}/v2/a/b/c/manifests/v1"),
        format!("{base}/v2/library/nginx/manifests/{}", img.digest),
        format!("{base}/v2/other/name/manifests/{}?ns=registry.example", img.digest),
    ] {
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(header(&resp, "content-type"), DOCKER_MANIFEST, "{url}");
        assert_eq!(header(&resp, "docker-content-digest"), img.digest.to_string(), "{url}");
        assert_eq!(header(&resp, "docker-distribution-api-version"), "registry/2.0", "{url}");
        assert_eq!(resp.bytes().await.unwrap(), img.manifest, "{url}");

        let resp = http.head(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "HEAD {url}");
        assert_eq!(header(&resp, "content-type"), DOCKER_MANIFEST, "HEAD {url}");
        assert_eq!(header(&resp, "docker-content-digest"), img.digest.to_string(), "HEAD {url}");
        assert_eq!(header(&resp, "content-length"), img.manifest.len().to_string(), "HEAD {url}");
        assert!(resp.bytes().await.unwrap().is_empty());
    }

    // Blobs, whole and in ranges, and HEAD.
    let mut blobs = img.layers.clone();
    blobs.push(img.config.clone());
    for data in &blobs {
        let d = Digest::of(data);
        let url = format!("{base}/v2/library/nginx/blobs/{d}");
        let resp = http.head(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-length"), data.len().to_string());
        assert_eq!(header(&resp, "docker-content-digest"), d.to_string());

        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "docker-content-digest"), d.to_string());
        assert_eq!(header(&resp, "content-length"), data.len().to_string());
        assert!(resp.bytes().await.unwrap() == data[..], "{url}: whole blob differs");

        let len = data.len();
        for (range, start, end) in
            [("bytes=0-0", 0, 1), ("bytes=10-1033", 10, len.min(1034)), (&*format!("bytes={}-", len - 7), len - 7, len)]
        {
            let resp = http.get(&url).header("range", range).send().await.unwrap();
            assert_eq!(resp.status(), 206, "{range}");
            assert_eq!(header(&resp, "content-range"), format!("bytes {start}-{}/{len}", end - 1), "{range}");
            assert!(resp.bytes().await.unwrap() == data[start..end], "{range}: wrong bytes");
        }
        let resp = http.get(&url).header("range", "bytes=-100").send().await.unwrap();
        assert_eq!(resp.status(), 206);
        assert!(resp.bytes().await.unwrap() == data[len - 100..]);
        let resp = http.get(&url).header("range", format!("bytes={len}-")).send().await.unwrap();
        assert_eq!(header(&resp, "content-range"), format!("bytes */{len}"));
        expect_error(resp, 416, "RANGE_INVALID").await;
        // A range the server may ignore gets the whole blob.
        let resp = http.get(&url).header("range", "bytes=5-1").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().len(), len);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_and_manifests_get_their_media_types() {
    let reg = RegistryDir::new();
    let img = image(&reg, 31);
    let child = descriptor(DOCKER_MANIFEST, &img.manifest);
    let docs = [
        (serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]}), OCI_INDEX),
        (serde_json::json!({"schemaVersion": 2, "manifests": [child]}), OCI_INDEX),
        (serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [child]}), DOCKER_LIST),
        (
            serde_json::json!({"schemaVersion": 2, "config": descriptor("application/vnd.oci.image.config.v1+json", &img.config), "layers": []}),
            OCI_MANIFEST,
        ),
    ];
    let mut want = Vec::new();
    for (i, (doc, media_type)) in docs.iter().enumerate() {
        let bytes = serde_json::to_vec(doc).unwrap();
        let d = reg.put_blob(&bytes);
        reg.tag("multi/arch", &format!("t{i}"), d);
        want.push((format!("t{i}"), d, bytes, *media_type));
    }
    let c = cluster(&reg).await;
    let base = format!("http://{}/v2/multi/arch/manifests", c.agent(0).http_addr);
    for (tag, d, bytes, media_type) in want {
        let resp = reqwest::get(format!("{base}/{tag}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{tag}");
        assert_eq!(header(&resp, "content-type"), media_type, "{tag}");
        assert_eq!(header(&resp, "docker-content-digest"), d.to_string(), "{tag}");
        assert_eq!(resp.bytes().await.unwrap(), bytes, "{tag}");
    }
    // The index's child, by digest.
    let resp = reqwest::get(format!("{base}/{}", img.digest)).await.unwrap();
    assert_eq!(header(&resp, "content-type"), DOCKER_MANIFEST);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_spec_errors() {
    let reg = RegistryDir::new();
    let img = image(&reg, 41);
    reg.tag("library/nginx", "1.25", img.digest);
    let c = cluster(&reg).await;
    let addr = c.agent(0).http_addr;
    let base = format!("http://{addr}/v2");
    let http = reqwest::Client::new();
    let missing = Digest::of(b"in no bucket");
    let config = Digest::of(&img.config);
    let bad_digest = "sha256:0123";
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("{base}/library/nginx/manifests/nope"), 404, "MANIFEST_UNKNOWN"),
        (format!("{base}/no/such/name/manifests/1.25"), 404, "MANIFEST_UNKNOWN"),
        (format!("{base}/library/nginx/manifests/{missing}"), 404, "MANIFEST_UNKNOWN"),
        // A config blob is a blob, not a manifest.
        (format!("{base}/library/nginx/manifests/{config}"), 404, "MANIFEST_UNKNOWN"),
        (format!("{base}/library/nginx/manifests/-bad"), 404, "MANIFEST_UNKNOWN"),
        (format!("{base}/library/nginx/blobs/{missing}"), 404, "BLOB_UNKNOWN"),
        (format!("{base}/library/nginx/blobs/{bad_digest}"), 400, "DIGEST_INVALID"),
        (format!("{base}/library/nginx/blobs/latest"), 400, "DIGEST_INVALID"),
        (format!("{base}/library/nginx/manifests/{bad_digest}"), 400, "DIGEST_INVALID"),
        (format!("{base}/library/nginx/manifests/md5:abcd"), 400, "DIGEST_INVALID"),
        (format!("{base}/Library/Nginx/manifests/1.25"), 400, "NAME_INVALID"),
        (format!("{base}/library%2Fnginx/manifests/1.25"), 400, "NAME_INVALID"),
        (format!("{base}/library%2fnginx/blobs/{}", img.digest), 400, "NAME_INVALID"),
        (format!("{base}/library//nginx/manifests/1.25"), 400, "NAME_INVALID"),
        (format!("{base}/_catalog"), 405, "UNSUPPORTED"),
        (format!("{base}/library/nginx/tags/list"), 405, "UNSUPPORTED"),
        (format!("{base}/library/nginx/nothing"), 404, "UNSUPPORTED"),
    ];
    for (url, status, code) in cases {
        expect_error(http.get(&url).send().await.unwrap(), status, code).await;
        let resp = http.head(&url).send().await.unwrap();
        assert_eq!(resp.status(), status, "HEAD {url}");
    }
    // Pushes are refused.
    expect_error(
        http.put(format!("{base}/library/nginx/manifests/1.25")).body("{}").send().await.unwrap(),
        405,
        "UNSUPPORTED",
    )
    .await;
    expect_error(http.post(format!("{base}/library/nginx/blobs/uploads/")).send().await.unwrap(), 405, "UNSUPPORTED")
        .await;

    // Escape attempts reach the server unnormalised and get an error, not a file.
    for path in [
        "/v2/../../../etc/passwd".to_string(),
        "/v2/../manifests/1.25".to_string(),
        "/v2/library/../../manifests/1.25".to_string(),
        format!("/v2/library/nginx/../../../blobs/{}", img.digest),
        "/v2/..%2F..%2Fetc/manifests/1.25".to_string(),
        "/v2/%2e%2e/%2e%2e/manifests/1.25".to_string(),
        "/v2/library/nginx/manifests/..%2F..%2F1.25".to_string(),
        "/v2/library\\nginx/manifests/1.25".to_string(),
    ] {
        let (status, text) = raw(addr, "GET", &path).await;
        assert!(status == 400 || status == 404, "{path}: {text}");
        assert!(!text.contains("root:"), "{path}: {text}");
    }
    // The same on the origin's tag endpoint.
    let origin = c.origins[0].handle.http_addr;
    for path in
        ["/tags/../../etc/passwd", "/tags/library/nginx/..", "/tags/library%2F..%2F..%2Fx/1.25", "/tags/a//b/v1"]
    {
        let (status, text) = raw(origin, "GET", path).await;
        assert!(status == 400 || status == 404, "{path}: {text}");
    }
    let (status, text) = raw(origin, "GET", "/tags/library/nginx/1.25").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with(&img.digest.to_string()), "{text}");

    // The agent still serves after all that.
    let resp = http.get(format!("{base}/library/nginx/manifests/1.25")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    c.shutdown().await;
}

fn set_tag_ttl(c: &Cluster, ttl: Duration) -> shoal_agent::Config {
    shoal_agent::Config { tag_ttl: shoal_runtime::Duration::from_millis(ttl.as_millis() as u64), ..c.agent_config(0) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_seen_after_its_ttl() {
    let reg = RegistryDir::new();
    let old = image(&reg, 51);
    let new = image(&reg, 61);
    reg.tag("app", "stable", old.digest);
    let mut c = cluster(&reg).await;
    let ttl = Duration::from_millis(1500);
    c.start_agent(0, Some(set_tag_ttl(&c, ttl))).await.unwrap();
    let url = format!("http://{}/v2/app/manifests/stable", c.agent(0).http_addr);
    let pull = || async {
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status(), 200);
        header(&resp, "docker-content-digest").parse::<Digest>().unwrap()
    };
    assert_eq!(pull().await, old.digest);
    let moved_at = tokio::time::Instant::now();
    reg.tag("app", "stable", new.digest);
    // Within the TTL the cached digest is served (its manifest is still valid).
    assert_eq!(pull().await, old.digest);
    assert!(moved_at.elapsed() < ttl, "the test machine is too slow for this TTL");
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(pull().await, new.digest);
    // A deleted tag is unknown once its entry expires.
    std::fs::remove_file(reg.v2().join("repositories/app/_manifests/tags/stable/current/link")).unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    expect_error(reqwest::get(&url).await.unwrap(), 404, "MANIFEST_UNKNOWN").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_image_still_pulls_with_the_origins_down() {
    let reg = RegistryDir::new();
    let img = image(&reg, 71);
    reg.tag("app", "v1", img.digest);
    let mut c = cluster(&reg).await;
    let ttl = Duration::from_millis(300);
    c.start_agent(0, Some(set_tag_ttl(&c, ttl))).await.unwrap();
    let base = format!("http://{}/v2/app", c.agent(0).http_addr);
    let layer = Digest::of(&img.layers[0]);
    let resp = reqwest::get(format!("{base}/manifests/v1")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(reqwest::get(format!("{base}/blobs/{layer}")).await.unwrap().bytes().await.unwrap(), img.layers[0]);

    for o in c.origins.drain(..) {
        o.shutdown.cancel();
        let _ = o.task.await;
    }
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    // The expired tag is served from the cache, the manifest and layer from the store.
    let resp = reqwest::get(format!("{base}/manifests/v1")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "docker-content-digest"), img.digest.to_string());
    assert_eq!(reqwest::get(format!("{base}/blobs/{layer}")).await.unwrap().bytes().await.unwrap(), img.layers[0]);
    // A tag never resolved cannot be: a retryable error, not MANIFEST_UNKNOWN.
    expect_error(reqwest::get(format!("{base}/manifests/v2")).await.unwrap(), 503, "UNAVAILABLE").await;
    c.shutdown().await;
}
