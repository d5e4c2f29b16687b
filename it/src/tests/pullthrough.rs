//! Pull-through against a real upstream: Debian's `docker-registry` holds an image pushed
//! over its own API; the origin's backend starts empty. Pulls through an agent must resolve
//! the tag and fetch every blob from the upstream, verified; later pulls must not touch the
//! upstream; write-back must leave the docker/distribution tree in the backend; Basic and
//! bearer-token upstreams must work with credentials and fail clearly without.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shoal_core::Digest;
use shoal_core::ring::OriginNode;
use shoal_loadtest::cluster::{counter, host_ip, random_blob, test_swarm_config};
use shoal_origin::backend::{BackendConfig, FsConfig, Layout};
use shoal_origin::upstream::PullThroughConfig;
use shoal_swarm::SwarmConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::image::{TestImage, descriptor};
use crate::registry_server::{RegistryAuth, RegistryServer};

pub(super) use super::image::DOCKER_MANIFEST;
pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The name clients use for the upstream (containerd's `ns=`).
pub(super) const UPSTREAM: &str = "upstream.test";

/// One origin with pull-through, a tracker, and agents that can be started fresh.
pub(super) struct PullCluster {
    pub tracker: shoal_tracker::Tracker,
    pub origin: shoal_origin::Origin,
    pub origin_registry: prometheus::Registry,
    origin_shutdown: CancellationToken,
    origin_task: tokio::task::JoinHandle<std::io::Result<()>>,
    nodes: Vec<OriginNode>,
    pub agents: Vec<(shoal_agent::Agent, CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>)>,
    /// The origin's backend directory (docker/distribution layout, no prefix).
    pub backend: PathBuf,
    root: tempfile::TempDir,
}

async fn bind(ip: std::net::IpAddr) -> TcpListener {
    TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap()
}

impl PullCluster {
    pub async fn start(pull_through: PullThroughConfig) -> PullCluster {
        let root = tempfile::tempdir().unwrap();
        let backend = root.path().join("backend");
        std::fs::create_dir_all(&backend).unwrap();
        let ip = host_ip(1500);
        let (http, peer) = (bind(ip).await, bind(ip).await);
        let nodes = vec![OriginNode {
            id: "origin-0".into(),
            http: format!("http://{}", http.local_addr().unwrap()),
            peer: peer.local_addr().unwrap(),
        }];
        let tcfg = shoal_tracker::Config {
            origins: nodes.clone(),
            origin_replicas: 1,
            announce_interval: shoal_runtime::Duration::from_millis(1000),
            peer_ttl: shoal_runtime::Duration::from_secs(10),
            // The nodes connect from 127.0.0.1, not from the 127.x address they announce.
            trusted_networks: shoal_core::net::Networks::loopback(),
            ..shoal_tracker::Config::default()
        }
        .validate()
        .unwrap();
        let tracker =
            shoal_tracker::Tracker::start(tcfg, bind(host_ip(1499)).await, prometheus::Registry::new()).await.unwrap();
        let cfg = shoal_origin::Config {
            origins: nodes.clone(),
            origin_replicas: 1,
            backend: BackendConfig::Fs(FsConfig {
                root: backend.clone(),
                layout: Layout::DockerRegistry,
                prefix: String::new(),
            }),
            pull_through,
            metainfo_wait: shoal_runtime::Duration::from_millis(500),
            failure_ttl: shoal_runtime::Duration::from_millis(200),
            swarm: SwarmConfig {
                store_dir: root.path().join("origin-0"),
                trackers: vec![tracker.url()],
                ..test_swarm_config()
            },
            ..shoal_origin::Config::default()
        }
        .validate()
        .unwrap();
        let registry = prometheus::Registry::new();
        let shutdown = CancellationToken::new();
        let (origin, serve) =
            shoal_origin::start(cfg, shoal_origin::Listeners { http, peer }, registry.clone(), shutdown.clone())
                .await
                .unwrap();
        PullCluster {
            tracker,
            origin,
            origin_registry: registry,
            origin_shutdown: shutdown,
            origin_task: tokio::spawn(serve),
            nodes,
            agents: Vec::new(),
            backend,
            root,
        }
    }

    /// Starts a new agent with an empty store; returns its index.
    pub async fn add_agent(&mut self) -> usize {
        let i = self.agents.len();
        let cfg = shoal_agent::Config {
            origins: self.nodes.clone(),
            origin_replicas: 1,
            swarm: SwarmConfig {
                store_dir: self.root.path().join(format!("agent-{i}")),
                trackers: vec![self.tracker.url()],
                ..test_swarm_config()
            },
            ..shoal_agent::Config::default()
        }
        .validate()
        .unwrap();
        let ip = host_ip(1501 + i);
        let listeners = shoal_agent::Listeners { http: bind(ip).await, peer: bind(ip).await };
        let shutdown = CancellationToken::new();
        let (agent, serve) =
            shoal_agent::start(cfg, listeners, prometheus::Registry::new(), shutdown.clone()).await.unwrap();
        self.agents.push((agent, shutdown, tokio::spawn(serve)));
        i
    }

    pub fn agent_url(&self, i: usize) -> String {
        format!("http://{}", self.agents[i].0.http_addr)
    }

    /// Upstream requests the origin made (every kind and result).
    pub fn upstream_requests(&self) -> u64 {
        counter(&self.origin_registry, "shoal_origin_upstream_requests_total", None)
    }

    pub async fn shutdown(self) {
        for (_, s, t) in self.agents {
            s.cancel();
            let _ = t.await;
        }
        self.origin_shutdown.cancel();
        let _ = self.origin_task.await;
        let _ = self.tracker.stop().await;
    }
}

/// A pull-through section with one upstream, the default.
pub(super) fn upstream_config(
    reg: &RegistryServer,
    creds: Option<(&str, &str)>,
    write_back: bool,
) -> PullThroughConfig {
    let creds_yaml = creds
        .map_or(String::new(), |(u, p)| format!("  username: {u}\n  password: {p}\n  plain_http_credentials: true\n"));
    let yaml = format!(
        "upstreams:\n- host: {UPSTREAM}\n  url: {}\n{creds_yaml}  write_back: {write_back}\ndefault_upstream: {UPSTREAM}\ntag_ttl: 60s\n",
        reg.url
    );
    shoal_runtime::config::parse(&yaml).unwrap()
}

/// A small image pushed to the upstream.
pub(super) struct PushedImage {
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

impl PushedImage {
    pub fn blobs(&self) -> Vec<(Digest, &[u8])> {
        std::iter::once(&self.config).chain(&self.layers).map(|b| (Digest::of(b), b.as_slice())).collect()
    }
}

/// Pushes a config, two layers and a Docker schema 2 manifest as `name:tag`.
pub(super) async fn push_image(
    reg: &RegistryServer,
    name: &str,
    tag: &str,
    seed: u64,
    auth: Option<&str>,
) -> PushedImage {
    let TestImage { config, layers, manifest } = TestImage::new(seed, 100_000);
    for b in std::iter::once(&config).chain(&layers) {
        reg.push_blob(name, b, auth).await.unwrap();
    }
    let digest = reg.push_manifest(name, tag, DOCKER_MANIFEST, &manifest, auth).await.unwrap();
    PushedImage { manifest, digest, config, layers }
}

/// Pulls `name:tag` and every blob through the agent at `agent` as a registry client would,
/// checking every digest. `ns` is containerd's parameter, if sent.
pub(super) async fn pull(agent: &str, name: &str, tag: &str, ns: Option<&str>, img: &PushedImage) {
    let http = reqwest::Client::new();
    let q = ns.map_or(String::new(), |n| format!("?ns={n}"));
    let resp = http
        .get(format!("{agent}/v2/{name}/manifests/{tag}{q}"))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let digest_header =
        resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = resp.bytes().await.unwrap();
    assert_eq!(status, 200, "manifest {name}:{tag}: {}", String::from_utf8_lossy(&body));
    assert_eq!(digest_header, img.digest.to_string());
    assert_eq!(Digest::of(&body), img.digest);
    assert!(body == img.manifest, "manifest bytes differ");
    for (d, data) in img.blobs() {
        let resp = http.get(format!("{agent}/v2/{name}/blobs/{d}{q}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "blob {d}");
        let got = resp.bytes().await.unwrap();
        assert_eq!(Digest::of(&got), d, "blob {d} has the wrong content");
        assert_eq!(got.len(), data.len());
    }
}

/// Every file below `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn backend_blob(backend: &Path, d: &Digest) -> PathBuf {
    backend.join("docker/registry/v2/blobs/sha256").join(&d.hex()[..2]).join(d.hex()).join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_from_the_upstream_once() {
    let reg = RegistryServer::start(RegistryAuth::Anonymous).await.unwrap();
    let img = push_image(&reg, "team/app", "v1", 1, None).await;
    let mut c = PullCluster::start(upstream_config(&reg, None, false)).await;
    let a0 = c.add_agent().await;
    pull(&c.agent_url(a0), "team/app", "v1", Some(UPSTREAM), &img).await;
    let first = c.upstream_requests();
    assert!(first >= 4, "manifest and three blobs come from the upstream: {first} requests");
    let bytes = counter(&c.origin_registry, "shoal_origin_upstream_bytes_total", None);
    let want: usize = img.manifest.len() + img.blobs().iter().map(|(_, b)| b.len()).sum::<usize>();
    assert_eq!(bytes, want as u64, "every byte is read from the upstream exactly once");
    assert!(files_under(&c.backend).is_empty(), "without write_back the backend stays empty");

    // The upstream goes away; a fresh agent (empty store) pulls the same image, this time
    // without `ns` (as skopeo and podman do): the origin's tag cache and store serve it.
    drop(reg);
    let a1 = c.add_agent().await;
    pull(&c.agent_url(a1), "team/app", "v1", None, &img).await;
    assert_eq!(c.upstream_requests(), first, "the second pull did not touch the upstream");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tags_and_blobs_are_404_and_unknown_ns_is_not_pulled_through() {
    let reg = RegistryServer::start(RegistryAuth::Anonymous).await.unwrap();
    let img = push_image(&reg, "team/app", "v1", 10, None).await;
    let mut c = PullCluster::start(upstream_config(&reg, None, false)).await;
    let a = c.add_agent().await;
    let http = reqwest::Client::new();
    let url = c.agent_url(a);
    let resp = http.get(format!("{url}/v2/team/app/manifests/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let missing = Digest::of(b"not in the upstream");
    let resp = http.get(format!("{url}/v2/team/app/blobs/{missing}")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
    // A request naming another registry is not served from this one.
    let resp = http.get(format!("{url}/v2/team/app/manifests/v1?ns=other.example")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let before = c.upstream_requests();
    let resp = http.get(format!("{url}/v2/team/app/blobs/{}?ns=other.example", img.blobs()[1].0)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(c.upstream_requests(), before, "no upstream request for an unconfigured ns");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_fills_the_backend_in_registry_layout() {
    let reg = RegistryServer::start(RegistryAuth::Anonymous).await.unwrap();
    let img = push_image(&reg, "team/app", "v2", 20, None).await;
    let mut c = PullCluster::start(upstream_config(&reg, None, true)).await;
    let a = c.add_agent().await;
    pull(&c.agent_url(a), "team/app", "v2", Some(UPSTREAM), &img).await;
    for (d, data) in std::iter::once((img.digest, img.manifest.as_slice())).chain(img.blobs()) {
        let path = backend_blob(&c.backend, &d);
        let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(got == data, "{} differs", path.display());
    }
    let v2 = c.backend.join("docker/registry/v2/repositories/team/app/_manifests");
    assert_eq!(std::fs::read_to_string(v2.join("tags/v2/current/link")).unwrap(), img.digest.to_string());
    let rev = v2.join("revisions/sha256").join(img.digest.hex()).join("link");
    assert_eq!(std::fs::read_to_string(rev).unwrap(), img.digest.to_string());
    let leftovers: Vec<_> = files_under(&c.backend).into_iter().filter(|f| f.contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream_needs_the_right_credentials() {
    let auth = RegistryAuth::Htpasswd { user: "puller".into(), password: "hunter22".into() };
    let reg = RegistryServer::start(auth).await.unwrap();
    let basic = format!("Basic {}", base64_encode(b"puller:hunter22"));
    let img = push_image(&reg, "team/secret", "v1", 30, Some(&basic)).await;

    let mut good = PullCluster::start(upstream_config(&reg, Some(("puller", "hunter22")), false)).await;
    let a = good.add_agent().await;
    pull(&good.agent_url(a), "team/secret", "v1", Some(UPSTREAM), &img).await;
    good.shutdown().await;

    for creds in [None, Some(("puller", "wrong"))] {
        let mut bad = PullCluster::start(upstream_config(&reg, creds, false)).await;
        let a = bad.add_agent().await;
        // The origin's own answer names the denial.
        let origin = bad.origin.http_addr;
        let resp = reqwest::get(format!("http://{origin}/tags/team/secret/v1?ns={UPSTREAM}")).await.unwrap();
        assert_eq!(resp.status(), 502, "{creds:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "DENIED", "{creds:?}: {body}");
        let msg = body["message"].as_str().unwrap_or("");
        assert!(msg.contains("denied") && msg.contains("401"), "{msg}");
        // Through the agent: an error, never content.
        let resp =
            reqwest::get(format!("{}/v2/team/secret/blobs/{}", bad.agent_url(a), img.blobs()[0].0)).await.unwrap();
        assert!(resp.status().is_server_error(), "{creds:?}: {}", resp.status());
        let body: serde_json::Value = resp.json().await.unwrap();
        let msg = body["errors"][0]["message"].as_str().unwrap_or("");
        assert!(msg.contains("denied"), "{creds:?}: {msg}");
        bad.shutdown().await;
    }
}

/// Standard base64 with padding, for a Basic header in the test's own pushes.
pub(super) fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (input, want) in
        [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
    {
        assert_eq!(base64_encode(input.as_bytes()), want);
    }
}

/// A token issuer for docker-registry's `auth: token`: signs ES256 JWTs with a self-signed
/// certificate's key and puts the certificate in the `x5c` header; the same certificate is
/// the registry's root bundle.
pub(super) struct TokenIssuer {
    pub realm: String,
    pub cert_pem: String,
    key: jsonwebtoken::EncodingKey,
    cert_der_b64: String,
    /// Token requests served.
    pub requests: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

pub(super) const SERVICE: &str = "shoal-test-registry";
pub(super) const ISSUER: &str = "shoal-test-issuer";

impl TokenIssuer {
    /// Starts the issuer's HTTP endpoint; it grants `pull` on the scope's repository to anyone,
    /// except below `team/forbidden`.
    pub async fn start() -> TokenIssuer {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["shoal-test-issuer".into()]).unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pair.serialize_pem().as_bytes()).unwrap();
        let cert_der_b64 = base64_encode(cert.der());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let issuer = TokenIssuer {
            realm,
            cert_pem: cert.pem(),
            key: key.clone(),
            cert_der_b64: cert_der_b64.clone(),
            requests: requests.clone(),
            shutdown: shutdown.clone(),
        };
        let signer = Arc::new((key, cert_der_b64));
        let app = axum::Router::new().route(
            "/token",
            axum::routing::get(move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
                let signer = signer.clone();
                let requests = requests.clone();
                async move {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let scope = q.get("scope").cloned().unwrap_or_default();
                    let access = access_from_scope(&scope);
                    let token = sign(&signer.0, &signer.1, access);
                    axum::Json(serde_json::json!({"token": token, "expires_in": 300}))
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        issuer
    }

    /// A token granting `actions` on `name`, for the test's own pushes.
    pub fn token(&self, name: &str, actions: &[&str]) -> String {
        let access = serde_json::json!([{"type": "repository", "name": name, "actions": actions}]);
        sign(&self.key, &self.cert_der_b64, access)
    }

    pub fn auth(&self) -> RegistryAuth {
        RegistryAuth::Token {
            realm: self.realm.clone(),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            root_cert_pem: self.cert_pem.clone(),
        }
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `repository:<name>:<actions>` → the JWT `access` claim, pull only.
fn access_from_scope(scope: &str) -> serde_json::Value {
    let mut parts = scope.splitn(3, ':');
    match (parts.next(), parts.next()) {
        // Repositories under `team/forbidden` get a valid token that grants nothing.
        (Some("repository"), Some(name)) if name.starts_with("team/forbidden") => serde_json::json!([]),
        (Some("repository"), Some(name)) => {
            serde_json::json!([{"type": "repository", "name": name, "actions": ["pull"]}])
        }
        _ => serde_json::json!([]),
    }
}

fn sign(key: &jsonwebtoken::EncodingKey, cert_der_b64: &str, access: serde_json::Value) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": "shoal",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now - 10,
        "jti": format!("{now}-{}", rand::random::<u64>()),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![cert_der_b64.to_owned()]);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_upstream_pulls_and_caches_tokens() {
    let issuer = TokenIssuer::start().await;
    let reg = RegistryServer::start(issuer.auth()).await.unwrap();
    let push = format!("Bearer {}", issuer.token("team/tok", &["pull", "push"]));
    let img = push_image(&reg, "team/tok", "v1", 40, Some(&push)).await;
    // Without a token the registry challenges.
    let resp = reqwest::get(format!("{}/v2/team/tok/manifests/v1", reg.url)).await.unwrap();
    assert_eq!(resp.status(), 401, "{}", reg.log());
    assert!(resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").starts_with("Bearer "));

    let mut c = PullCluster::start(upstream_config(&reg, None, false)).await;
    let a = c.add_agent().await;
    pull(&c.agent_url(a), "team/tok", "v1", Some(UPSTREAM), &img).await;
    let tokens = issuer.requests.load(Ordering::SeqCst);
    assert_eq!(tokens, 1, "one token serves the manifest and every blob of the repository");
    let ok_tokens = counter(&c.origin_registry, "shoal_origin_upstream_requests_total", Some(("kind", "token")));
    assert_eq!(ok_tokens, 1);

    // A token that grants nothing: the retry is refused too, and the answer says so.
    let push = format!("Bearer {}", issuer.token("team/forbidden", &["pull", "push"]));
    push_image(&reg, "team/forbidden", "v1", 41, Some(&push)).await;
    let origin = c.origin.http_addr;
    let resp = reqwest::get(format!("http://{origin}/tags/team/forbidden/v1?ns={UPSTREAM}")).await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "DENIED", "{body}");
    assert_eq!(issuer.requests.load(Ordering::SeqCst), 2, "one more token, asked once");
    c.shutdown().await;
}

/// An upstream that lies: a blob whose bytes do not match its digest, and a manifest whose
/// `Docker-Content-Digest` is not its hash. Nothing of either is served or stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_upstream_is_never_served() {
    let real = random_blob(200_000, 50);
    let claimed = Digest::of(&real);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": descriptor("application/vnd.docker.container.image.v1+json", b"{}"), "layers": [],
    }))
    .unwrap();
    let wrong = Digest::of(b"something else").to_string();
    let app = axum::Router::new()
        .route(
            "/v2/team/liar/blobs/{digest}",
            axum::routing::get(move || {
                let mut bytes = real.clone();
                bytes[1000] ^= 1;
                async move { bytes }
            }),
        )
        .route(
            "/v2/team/liar/manifests/{tag}",
            axum::routing::get(move || {
                let (m, w) = (manifest.clone(), wrong.clone());
                async move { ([("content-type", DOCKER_MANIFEST.to_owned()), ("docker-content-digest", w)], m) }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(s.cancelled_owned()).await });
    let yaml =
        format!("upstreams:\n- host: {UPSTREAM}\n  url: {url}\n  write_back: true\ndefault_upstream: {UPSTREAM}\n");
    let mut c = PullCluster::start(shoal_runtime::config::parse(&yaml).unwrap()).await;
    let a = c.add_agent().await;
    let agent = c.agent_url(a);
    let resp = reqwest::get(format!("{agent}/v2/team/liar/blobs/{claimed}")).await.unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let body = resp.text().await.unwrap();
    assert!(body.contains("DIGEST_INVALID") || body.contains("does not match"), "{body}");
    let resp = reqwest::get(format!("{agent}/v2/team/liar/manifests/v1")).await.unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    assert!(c.origin.swarm.complete(claimed).await.unwrap().is_none(), "the corrupt blob was stored");
    assert!(files_under(&c.backend).is_empty(), "nothing unverified was written back: {:?}", files_under(&c.backend));
    stop.cancel();
    c.shutdown().await;
}
