//! Pull-through from upstream registries: what the origin does when its backend lacks a blob
//! or a tag. A request names its upstream by host (containerd's `ns=` parameter, passed on by
//! the agent); a request that names none goes to the configured default.
//!
//! - Blobs: `GET <url>/v2/<name>/blobs/<digest>`, redirects to storage followed. The answer
//!   is a [`BlobStream`] of exactly its `Content-Length`, which the fetcher hashes and checks
//!   like any backend object; nothing is buffered whole.
//! - Manifests: `GET <url>/v2/<name>/manifests/<tag or digest>` with an `Accept` for the four
//!   manifest kinds; at most [`MAX_MANIFEST_LEN`] bytes are read, the digest is the sha256 of
//!   the body and must equal the digest asked for, or for a tag `Docker-Content-Digest` when
//!   the upstream sends one. Resolved tags are cached for `tag_ttl`
//!   ([`Upstreams::cached_tag`]). Registries serve a manifest only on this endpoint, not as
//!   a blob, so a digest the blob endpoint does not know is tried here too (by the fetcher).
//! - Auth ([`auth`]): anonymous, Basic, or the Docker bearer-token flow on a 401 challenge,
//!   with tokens cached per scope. Basic credentials come from the upstream's own
//!   `username`/`password`, else from a Docker config JSON ([`docker_config`]) entry for the
//!   host of the upstream's URL (where they are sent), the file a
//!   `kubernetes.io/dockerconfigjson` Secret mounts. They go only to the upstream's own host
//!   and to the token endpoints listed in its `auth_hosts` (Docker Hub's `auth.docker.io`
//!   for Docker Hub), and only over https unless `plain_http_credentials` is set; a realm
//!   elsewhere gets an anonymous token request.
//! - Scope: a request's hints select an upstream only among the configured ones, and only for
//!   a repository its `repositories` patterns allow, so the origin's credentials fetch only
//!   what the operator meant them for.
//! - TLS: the system's native roots and the bundled web roots, plus an upstream's own
//!   `ca_file`; a client certificate (`client_cert_file`, `client_key_file`) for an upstream
//!   that asks for one. Every file is read and parsed when the config is validated.
//!
//! Deadlines: `connect_timeout` to connect, `read_timeout` between two reads, and
//! `request_timeout` for a whole exchange: a token, a manifest (its body included) or the
//! answer to a blob request up to its body, so an upstream that trickles never holds a
//! request for good. A blob's body is bounded by `read_timeout` and the fetcher's
//! `fetch_timeout`.
//!
//! Errors are classified for the failure cache and the HTTP edge ([`UpstreamError`]): 404 is
//! "not found" as from the backend, 401/403 after authenticating is a permanent denial, 5xx,
//! 429 and network failures are transient. The repository name is a hint: a digest names the
//! same bytes everywhere, and every byte is verified before it is stored.

pub mod auth;
pub mod docker_config;
#[cfg(test)]
pub(crate) mod tls_tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use prometheus::{IntCounterVec, Opts, Registry};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, WWW_AUTHENTICATE};
use shoal_core::Digest;
use shoal_core::manifest::{ACCEPT_MANIFESTS, MAX_MANIFEST_LEN};
use shoal_core::registry::{Reference, RegistryHost, RepoName, Tag};
use shoal_runtime::{ConfigError, Duration};
use tokio::time::Instant;

use crate::backend::{BackendError, BlobStream};
use auth::{Challenge, TokenCache, TokenResponse, pull_scope};

/// Largest token response read. Hard-coded: tokens are a few KiB.
const MAX_TOKEN_RESPONSE: usize = 64 << 10;
/// Most tags cached across upstreams. Hard-coded: past it, the cache is cleared.
const MAX_CACHED_TAGS: usize = 10_000;

/// The origin config's `pull_through:` section.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullThroughConfig {
    /// The registries blobs and tags are pulled from when the backend lacks them.
    pub upstreams: Vec<UpstreamConfig>,
    /// The `host` of the upstream for requests that name none (skopeo, podman). Unset: such
    /// requests are not pulled through.
    pub default_upstream: Option<RegistryHost>,
    /// How long a tag resolved upstream is reused before asking again. Default 30s.
    pub tag_ttl: Duration,
    /// Connect timeout for upstream requests. Default 10s.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an upstream response. Default 60s.
    pub read_timeout: Duration,
    /// Longest one upstream exchange may take in all: a token, a manifest with its body, or
    /// the answer to a blob request up to its body (which `read_timeout` and the origin's
    /// `fetch_timeout` bound). Default 60s.
    pub request_timeout: Duration,
    /// A Docker config JSON (the `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson`
    /// Secret): Basic credentials for every upstream without a `username` of its own, found by
    /// its `host` or its URL's host. Default none.
    pub docker_config_file: Option<PathBuf>,
}

impl Default for PullThroughConfig {
    fn default() -> Self {
        PullThroughConfig {
            upstreams: Vec::new(),
            default_upstream: None,
            tag_ttl: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            docker_config_file: None,
        }
    }
}

/// One upstream registry.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The name clients use for it (`docker.io`), matched against `ns=`.
    pub host: RegistryHost,
    /// Where its Registry v2 API is (`https://registry-1.docker.io`).
    pub url: String,
    /// Basic credentials, also sent to the token endpoint. Anonymous if unset.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (a mounted Kubernetes secret); trailing newlines trimmed.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Writes verified blobs and tag links back to the origin's backend (registry layout).
    #[serde(default)]
    pub write_back: bool,
    /// The repositories pulled through from this upstream: patterns where `*` matches any
    /// run of characters (`library/*`, `team/app`). A request for another repository is not
    /// pulled through. Default `["*"]`.
    #[serde(default = "all_repositories")]
    pub repositories: Vec<String>,
    /// Hosts besides the URL's own that may receive the credentials: the token endpoints
    /// (`realm`) the upstream names. Docker Hub's `auth.docker.io` is implied for Docker Hub.
    /// Default none.
    #[serde(default)]
    pub auth_hosts: Vec<String>,
    /// Sends the credentials over plain http (to the URL and to token endpoints). Default
    /// false: credentials go over https only.
    #[serde(default)]
    pub plain_http_credentials: bool,
    /// PEM CA certificates trusted for this upstream beside the system's roots (a private
    /// registry's own CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (with its chain) presented to an upstream that asks for one.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// The PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

fn all_repositories() -> Vec<String> {
    vec!["*".to_owned()]
}

/// A password: never printed.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A checked upstream: URL parsed, password read, TLS files loaded.
#[derive(Clone, Debug)]
pub struct ValidUpstream {
    pub host: RegistryHost,
    pub url: reqwest::Url,
    pub credentials: Option<(String, Secret)>,
    pub write_back: bool,
    pub tls: UpstreamTls,
    /// The repository patterns pulled through.
    pub repositories: Vec<String>,
    /// The hosts (lowercase) the credentials may go to: the URL's, then `auth_hosts`.
    pub credential_hosts: Vec<String>,
    pub plain_http_credentials: bool,
}

impl ValidUpstream {
    /// Whether `name` may be pulled through from this upstream.
    pub fn allows(&self, name: &RepoName) -> bool {
        self.repositories.iter().any(|p| crate::notify::glob(p, name.as_str()))
    }

    /// Whether the credentials may be sent to `url`: one of their hosts, over https unless
    /// plain http is allowed.
    pub fn may_send_credentials(&self, url: &reqwest::Url) -> bool {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && self.plain_http_credentials);
        scheme_ok && self.credential_hosts.contains(&host)
    }
}

/// Docker Hub's registry hosts, whose token endpoint is `auth.docker.io`.
const DOCKER_HUB_HOSTS: [&str; 3] = ["registry-1.docker.io", "index.docker.io", "registry.hub.docker.com"];

/// The TLS material of one upstream, parsed.
#[derive(Clone, Default)]
pub struct UpstreamTls {
    /// Trusted beside the system's roots.
    pub roots: Vec<reqwest::Certificate>,
    /// The client certificate and key.
    pub identity: Option<reqwest::Identity>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("roots", &self.roots.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl UpstreamTls {
    /// Reads and parses the files; errors name the file.
    fn load(u: &UpstreamConfig) -> Result<UpstreamTls, String> {
        let read = |f: &PathBuf| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()));
        let roots = match &u.ca_file {
            Some(f) => {
                let certs = reqwest::Certificate::from_pem_bundle(&read(f)?)
                    .map_err(|e| format!("ca_file {}: {e}", f.display()))?;
                if certs.is_empty() {
                    return Err(format!("ca_file {}: no PEM certificate in it", f.display()));
                }
                certs
            }
            None => Vec::new(),
        };
        let identity = match (&u.client_cert_file, &u.client_key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                    format!("client_cert_file {} with client_key_file {}: {e}", cert.display(), key.display())
                })?)
            }
            (None, None) => None,
            _ => return Err("client_cert_file and client_key_file go together".to_owned()),
        };
        Ok(UpstreamTls { roots, identity })
    }
}

/// A checked `pull_through:` section.
#[derive(Clone, Debug)]
pub struct ValidPullThrough {
    pub upstreams: Vec<ValidUpstream>,
    pub default_upstream: Option<RegistryHost>,
    pub tag_ttl: std::time::Duration,
    pub connect_timeout: std::time::Duration,
    pub read_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
}

impl PullThroughConfig {
    /// Checks the section and reads the password, Docker config and TLS files.
    pub fn validate(&self) -> Result<ValidPullThrough, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("pull_through: {m}"));
        let docker = match &self.docker_config_file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| invalid(format!("docker_config_file {}: {e}", f.display())))?;
                docker_config::DockerCredentials::parse(&text)
                    .map_err(|e| invalid(format!("docker_config_file {}: {e}", f.display())))?
            }
            None => docker_config::DockerCredentials::default(),
        };
        let mut upstreams = Vec::new();
        for u in &self.upstreams {
            if upstreams.iter().any(|v: &ValidUpstream| v.host == u.host) {
                return Err(invalid(format!("upstream {} is listed twice", u.host)));
            }
            let url = reqwest::Url::parse(&u.url).map_err(|e| invalid(format!("{}: url {:?}: {e}", u.host, u.url)))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(format!("{}: url {:?} is not an http(s) URL with a host", u.host, u.url)));
            }
            if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
                return Err(invalid(format!("{}: url {:?} must not carry a query or credentials", u.host, u.url)));
            }
            let password = match (&u.password, &u.password_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(format!("{}: set password or password_file, not both", u.host)));
                }
                (Some(p), None) => Some(p.clone()),
                (None, Some(f)) => {
                    let text = std::fs::read_to_string(f)
                        .map_err(|e| invalid(format!("{}: password_file {}: {e}", u.host, f.display())))?;
                    Some(Secret(text.trim_end_matches(['\n', '\r']).to_owned()))
                }
                (None, None) => None,
            };
            let credentials = match (&u.username, password) {
                (Some(user), Some(p)) if !user.is_empty() => Some((user.clone(), p)),
                (None, None) => {
                    // By the host they are sent to, never by the name clients use: a Docker
                    // config's `ghcr.io` password must not go to a mirror named `ghcr.io`.
                    let url_host = match (url.host_str(), url.port()) {
                        (Some(h), Some(p)) => format!("{h}:{p}"),
                        (h, None) => h.unwrap_or_default().to_owned(),
                        (None, Some(_)) => String::new(),
                    };
                    docker.lookup([url_host.as_str()])
                }
                _ => return Err(invalid(format!("{}: username and a password go together", u.host))),
            };
            if credentials.is_some() && url.scheme() == "http" && !u.plain_http_credentials {
                return Err(invalid(format!(
                    "{}: credentials over plain http ({}) need plain_http_credentials: true",
                    u.host, u.url
                )));
            }
            if u.repositories.is_empty() || u.repositories.iter().any(|p| p.is_empty()) {
                return Err(invalid(format!("{}: repositories needs non-empty patterns", u.host)));
            }
            let url_host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            let mut credential_hosts = vec![url_host.clone()];
            if DOCKER_HUB_HOSTS.contains(&url_host.as_str()) {
                credential_hosts.push("auth.docker.io".to_owned());
            }
            for h in &u.auth_hosts {
                if h.is_empty() || h.contains(['/', ':', '@', ' ']) {
                    return Err(invalid(format!("{}: auth_hosts entry {h:?} is not a host name", u.host)));
                }
                credential_hosts.push(h.to_ascii_lowercase());
            }
            let tls = UpstreamTls::load(u).map_err(|e| invalid(format!("{}: {e}", u.host)))?;
            upstreams.push(ValidUpstream {
                host: u.host.clone(),
                url,
                credentials,
                write_back: u.write_back,
                tls,
                repositories: u.repositories.clone(),
                credential_hosts,
                plain_http_credentials: u.plain_http_credentials,
            });
        }
        if let Some(d) = &self.default_upstream
            && !upstreams.iter().any(|u| &u.host == d)
        {
            return Err(invalid(format!("default_upstream {d} is not one of the upstreams")));
        }
        if self.request_timeout.get().is_zero() {
            return Err(invalid("request_timeout must be more than 0s".into()));
        }
        Ok(ValidPullThrough {
            upstreams,
            default_upstream: self.default_upstream.clone(),
            tag_ttl: self.tag_ttl.get(),
            connect_timeout: self.connect_timeout.get(),
            read_timeout: self.read_timeout.get(),
            request_timeout: self.request_timeout.get(),
        })
    }
}

/// Why an upstream request failed, classified by what the caller can do.
#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream has no such blob, manifest or repository: 404.
    #[error("not found upstream")]
    NotFound,
    /// 401 or 403 after authenticating: the credentials are wrong or lack access. Permanent.
    #[error("upstream {host} denied access: {message}")]
    Denied { host: Arc<str>, message: Arc<str> },
    /// Network failures, timeouts, 5xx, 429: worth retrying later.
    #[error("upstream {host} unavailable: {message}")]
    Transient { host: Arc<str>, message: Arc<str> },
    /// Anything else that retrying will not fix (a bad answer, a digest mismatch).
    #[error("upstream {host}: {message}")]
    Permanent { host: Arc<str>, message: Arc<str> },
}

impl UpstreamError {
    pub fn is_transient(&self) -> bool {
        matches!(self, UpstreamError::Transient { .. })
    }
}

/// The upstream collectors, on the origin's registry.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// Requests by upstream, kind (`blob`, `manifest`, `token`) and result (`ok`,
    /// `not_found`, `denied`, `transient`, `error`).
    pub requests: IntCounterVec,
    /// Bytes of blobs and manifests read from each upstream.
    pub bytes: IntCounterVec,
}

impl UpstreamMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<UpstreamMetrics> {
        let m = UpstreamMetrics {
            requests: IntCounterVec::new(
                Opts::new("shoal_origin_upstream_requests_total", "Upstream registry requests by kind and result"),
                &["upstream", "kind", "result"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new("shoal_origin_upstream_bytes_total", "Bytes read from upstream registries"),
                &["upstream"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        Ok(m)
    }
}

/// The configured upstreams and the cache of tags resolved through them.
pub struct Upstreams {
    by_host: HashMap<RegistryHost, Arc<Upstream>>,
    default: Option<Arc<Upstream>>,
    tag_ttl: std::time::Duration,
    /// Tag answers; a sync lock held only for map operations.
    tags: Mutex<HashMap<TagKey, (Digest, Instant)>>,
}

/// A cached tag: which upstream, repository and tag.
type TagKey = (RegistryHost, RepoName, Tag);

/// One upstream registry client.
pub struct Upstream {
    pub cfg: ValidUpstream,
    http: reqwest::Client,
    /// The `request_timeout` of every exchange.
    request_timeout: std::time::Duration,
    tokens: TokenCache,
    metrics: UpstreamMetrics,
}

/// A manifest read from an upstream, verified against its digest.
#[derive(Clone, Debug)]
pub struct UpstreamManifest {
    pub digest: Digest,
    pub bytes: Bytes,
}

impl Upstreams {
    pub fn new(cfg: &ValidPullThrough, metrics: UpstreamMetrics) -> Result<Upstreams, UpstreamError> {
        let mut by_host = HashMap::new();
        for u in &cfg.upstreams {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(cfg.connect_timeout)
                .read_timeout(cfg.read_timeout)
                .redirect(reqwest::redirect::Policy::limited(5))
                .user_agent(concat!("shoal-origin/", env!("CARGO_PKG_VERSION")))
                // The system's roots (a corporate CA installed on the image) beside the
                // bundled web roots; reqwest's default is the bundled ones alone.
                .tls_built_in_native_certs(true);
            for root in &u.tls.roots {
                builder = builder.add_root_certificate(root.clone());
            }
            if let Some(id) = &u.tls.identity {
                builder = builder.identity(id.clone());
            }
            let http = builder.build().map_err(|e| UpstreamError::Permanent {
                host: u.host.as_str().into(),
                message: format!("building http client: {e}").into(),
            })?;
            let up = Upstream {
                cfg: u.clone(),
                http,
                request_timeout: cfg.request_timeout,
                tokens: TokenCache::default(),
                metrics: metrics.clone(),
            };
            by_host.insert(u.host.clone(), Arc::new(up));
        }
        let default = cfg.default_upstream.as_ref().and_then(|h| by_host.get(h).cloned());
        Ok(Upstreams { by_host, default, tag_ttl: cfg.tag_ttl, tags: Mutex::new(HashMap::new()) })
    }

    /// The upstream a request for repository `name` names with `ns`, or the default when it
    /// names none. A request naming a host that is not configured gets none (its names mean
    /// nothing elsewhere), and so does a repository the upstream's `repositories` exclude.
    pub fn select(&self, ns: Option<&RegistryHost>, name: &RepoName) -> Option<Arc<Upstream>> {
        let up = match ns {
            Some(h) => self.by_host.get(h).cloned(),
            None => self.default.clone(),
        }?;
        if !up.cfg.allows(name) {
            tracing::debug!(upstream = %up.cfg.host, %name, "repository not pulled through from this upstream");
            return None;
        }
        Some(up)
    }

    /// A tag resolved through `up` less than `tag_ttl` ago.
    pub fn cached_tag(&self, up: &Upstream, name: &RepoName, tag: &Tag) -> Option<Digest> {
        let key = (up.cfg.host.clone(), name.clone(), tag.clone());
        let tags = self.tags.lock().expect("tag cache lock");
        tags.get(&key).filter(|(_, at)| at.elapsed() < self.tag_ttl).map(|(d, _)| *d)
    }

    pub fn cache_tag(&self, up: &Upstream, name: &RepoName, tag: &Tag, digest: Digest) {
        if self.tag_ttl.is_zero() {
            return;
        }
        let mut tags = self.tags.lock().expect("tag cache lock");
        if tags.len() >= MAX_CACHED_TAGS {
            tags.clear();
        }
        tags.insert((up.cfg.host.clone(), name.clone(), tag.clone()), (digest, Instant::now()));
    }
}

/// The message of an exchange past `request_timeout`.
fn overdue(rt: std::time::Duration) -> String {
    format!("not done within {}s (request_timeout)", rt.as_secs_f64())
}

/// What an upstream request is for: the metrics label.
#[derive(Clone, Copy)]
enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Manifest => "manifest",
        }
    }
}

impl Upstream {
    pub fn host(&self) -> &RegistryHost {
        &self.cfg.host
    }

    /// Streams blob `digest` of repository `name`. The stream yields exactly the announced
    /// length or ends with an error; the caller verifies the digest.
    pub async fn blob(&self, name: &RepoName, digest: &Digest) -> Result<BlobStream, UpstreamError> {
        let url = self.url(&format!("v2/{name}/blobs/{digest}"))?;
        let resp = self.get(Kind::Blob, name, url, None).await?;
        let Some(length) = resp.content_length() else {
            self.count(Kind::Blob, "error");
            return Err(self.permanent(format!("blob {digest} of {name} came without Content-Length")));
        };
        let host: Arc<str> = self.cfg.host.as_str().into();
        let bytes = self.metrics.bytes.with_label_values(&[self.cfg.host.as_str()]);
        let stream = resp
            .bytes_stream()
            .map(move |r| {
                r.inspect(|b| bytes.inc_by(b.len() as u64))
                    .map_err(|e| BackendError::Transient { message: format!("upstream {host}: reading body: {e}") })
            })
            .boxed();
        Ok(BlobStream { length, stream: crate::backend::exact_length(length, stream) })
    }

    /// Reads manifest `name:reference` (a tag or a digest), verified against its digest: the
    /// digest asked for, else `Docker-Content-Digest` when the upstream sends one. The whole
    /// exchange has `request_timeout`.
    pub async fn manifest(&self, name: &RepoName, reference: &Reference) -> Result<UpstreamManifest, UpstreamError> {
        let rt = self.request_timeout;
        tokio::time::timeout(rt, self.read_manifest(name, reference))
            .await
            .map_err(|_| self.transient(format!("manifest {name}:{reference}: {}", overdue(rt))))?
    }

    async fn read_manifest(&self, name: &RepoName, reference: &Reference) -> Result<UpstreamManifest, UpstreamError> {
        let url = self.url(&format!("v2/{name}/manifests/{reference}"))?;
        let resp = self.get(Kind::Manifest, name, url, Some(ACCEPT_MANIFESTS)).await?;
        let announced = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let too_large =
            || self.permanent(format!("manifest {name}:{reference} is larger than {MAX_MANIFEST_LEN} bytes"));
        if resp.content_length().is_some_and(|n| n > MAX_MANIFEST_LEN) {
            return Err(too_large());
        }
        let mut body = resp.bytes_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.transient(format!("reading manifest {name}:{reference}: {e}")))?;
            if (buf.len() + chunk.len()) as u64 > MAX_MANIFEST_LEN {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        let bytes = buf.freeze();
        self.metrics.bytes.with_label_values(&[self.cfg.host.as_str()]).inc_by(bytes.len() as u64);
        let digest = Digest::of(&bytes);
        let expected = match reference {
            Reference::Digest(d) => Some(d.to_string()),
            Reference::Tag(_) => announced.map(|a| a.trim().to_owned()),
        };
        if let Some(want) = expected
            && want != digest.to_string()
        {
            return Err(self.permanent(format!(
                "manifest {name}:{reference} hashes to {digest}, expected {}",
                want.chars().take(80).collect::<String>()
            )));
        }
        if shoal_core::manifest::media_type(&bytes).is_none() {
            return Err(self.permanent(format!("{name}:{reference} is not a manifest")));
        }
        Ok(UpstreamManifest { digest, bytes })
    }

    fn url(&self, rel: &str) -> Result<reqwest::Url, UpstreamError> {
        let base = self.cfg.url.as_str().trim_end_matches('/');
        reqwest::Url::parse(&format!("{base}/{rel}")).map_err(|e| self.permanent(format!("url for {rel}: {e}")))
    }

    /// GET with authentication: a cached token or Basic credentials first, then at most one
    /// answer to a 401 challenge. Returns a 2xx response.
    async fn get(
        &self,
        kind: Kind,
        name: &RepoName,
        url: reqwest::Url,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let scope = pull_scope(name.as_str());
        let mut token = self.tokens.get(&scope);
        // Two rounds at most: the first with what we have, the second after a challenge.
        for round in 0..2 {
            let mut req = self.http.get(url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            req = match (&token, &self.cfg.credentials) {
                (Some(t), _) => req.bearer_auth(t),
                (None, Some((user, pass))) if self.cfg.may_send_credentials(&url) => {
                    req.basic_auth(user, Some(&pass.0))
                }
                (None, _) => req,
            };
            let resp = match tokio::time::timeout(self.request_timeout, req.send()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    self.count(kind, "transient");
                    return Err(self.transient(format!("GET {url}: {e}")));
                }
                Err(_) => {
                    self.count(kind, "transient");
                    return Err(self.transient(format!("GET {url}: {}", overdue(self.request_timeout))));
                }
            };
            let status = resp.status();
            if status.is_success() {
                self.count(kind, "ok");
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED && round == 0 {
                let challenges = resp
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(auth::parse_challenges)
                    .collect::<Vec<_>>();
                let bearer = challenges.iter().find_map(|c| match c {
                    Challenge::Bearer { realm, service, scope } => Some((realm, service, scope)),
                    Challenge::Basic { .. } => None,
                });
                if let Some((realm, service, challenge_scope)) = bearer {
                    self.tokens.remove(&scope);
                    let want = challenge_scope.clone().unwrap_or_else(|| scope.clone());
                    let (t, valid) = self.fetch_token(realm, service.as_deref(), &want).await?;
                    self.tokens.put(&scope, t.clone(), valid);
                    token = Some(t);
                    continue;
                }
                // Basic (or no usable challenge): Basic credentials were already sent if any.
            }
            return Err(self.status_error(kind, status, &url));
        }
        self.count(kind, "denied");
        Err(self.denied(format!("GET {url}: still 401 with a fresh token")))
    }

    fn status_error(&self, kind: Kind, status: StatusCode, url: &reqwest::Url) -> UpstreamError {
        match status {
            StatusCode::NOT_FOUND => {
                self.count(kind, "not_found");
                UpstreamError::NotFound
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                self.count(kind, "denied");
                let how =
                    if self.cfg.credentials.is_some() { "with the configured credentials" } else { "anonymously" };
                self.denied(format!("GET {url}: {status} {how}"))
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT => {
                self.count(kind, "transient");
                self.transient(format!("GET {url}: {status}"))
            }
            s => {
                self.count(kind, "error");
                self.permanent(format!("GET {url}: {s}"))
            }
        }
    }

    /// Asks the token endpoint of a Bearer challenge for a token of `scope`, within
    /// `request_timeout`.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, std::time::Duration), UpstreamError> {
        let rt = self.request_timeout;
        tokio::time::timeout(rt, self.read_token(realm, service, scope)).await.map_err(|_| {
            self.metrics.requests.with_label_values(&[self.cfg.host.as_str(), "token", "transient"]).inc();
            self.transient(format!("token endpoint {realm}: {}", overdue(rt)))
        })?
    }

    async fn read_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, std::time::Duration), UpstreamError> {
        let count = |r: &str| {
            self.metrics.requests.with_label_values(&[self.cfg.host.as_str(), "token", r]).inc();
        };
        let mut url = reqwest::Url::parse(realm).map_err(|e| {
            count("error");
            self.permanent(format!("token realm {realm:?}: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            count("error");
            return Err(self.permanent(format!("token realm {realm:?} is not http(s)")));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url.clone());
        if let Some((user, pass)) = &self.cfg.credentials {
            if self.cfg.may_send_credentials(&url) {
                req = req.basic_auth(user, Some(&pass.0));
            } else {
                tracing::warn!(
                    upstream = %self.cfg.host,
                    realm,
                    "the token endpoint is not one of the upstream's credential hosts (or not https): \
                     asking for an anonymous token (list its host in auth_hosts to send the credentials)"
                );
            }
        }
        let resp = req.send().await.map_err(|e| {
            count("transient");
            self.transient(format!("token {url}: {e}"))
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    count("denied");
                    self.denied(format!("token endpoint {realm} answered {status}"))
                }
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    count("transient");
                    self.transient(format!("token endpoint {realm} answered {status}"))
                }
                s => {
                    count("error");
                    self.permanent(format!("token endpoint {realm} answered {s}"))
                }
            });
        }
        if resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok()).unwrap_or(0)
            > MAX_TOKEN_RESPONSE
        {
            count("error");
            return Err(self.permanent(format!("token response from {realm} is too large")));
        }
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.transient(format!("reading token from {realm}: {e}")))?;
            if buf.len() + chunk.len() > MAX_TOKEN_RESPONSE {
                count("error");
                return Err(self.permanent(format!("token response from {realm} is too large")));
            }
            buf.extend_from_slice(&chunk);
        }
        let parsed: Option<(String, std::time::Duration)> =
            serde_json::from_slice::<TokenResponse>(&buf).ok().and_then(TokenResponse::into_token);
        match parsed {
            Some(t) => {
                count("ok");
                Ok(t)
            }
            None => {
                count("error");
                Err(self.permanent(format!("token endpoint {realm} sent no token")))
            }
        }
    }

    fn count(&self, kind: Kind, result: &str) {
        self.metrics.requests.with_label_values(&[self.cfg.host.as_str(), kind.label(), result]).inc();
    }

    fn transient(&self, message: String) -> UpstreamError {
        UpstreamError::Transient { host: self.cfg.host.as_str().into(), message: message.into() }
    }

    fn permanent(&self, message: String) -> UpstreamError {
        UpstreamError::Permanent { host: self.cfg.host.as_str().into(), message: message.into() }
    }

    fn denied(&self, message: String) -> UpstreamError {
        UpstreamError::Denied { host: self.cfg.host.as_str().into(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> Result<ValidPullThrough, String> {
        let cfg: PullThroughConfig = shoal_runtime::config::parse(yaml).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn config_shapes() {
        let v = validate(
            "upstreams:\n- host: docker.io\n  url: https://registry-1.docker.io\n  write_back: true\n\
             - host: ghcr.io\n  url: https://ghcr.io/\n  username: u\n  password: p\n\
             default_upstream: docker.io\ntag_ttl: 5s\n",
        )
        .unwrap();
        assert_eq!(v.upstreams.len(), 2);
        assert!(v.upstreams[0].write_back && v.upstreams[0].credentials.is_none());
        assert_eq!(v.upstreams[1].credentials.as_ref().map(|c| (c.0.as_str(), c.1.0.as_str())), Some(("u", "p")));
        assert_eq!(v.tag_ttl, std::time::Duration::from_secs(5));
        assert!(!format!("{v:?}").contains("\"p\""), "passwords are not printed: {v:?}");
    }

    #[test]
    fn credentials_from_a_docker_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(".dockerconfigjson");
        // base64("robot:tok"); the registry is keyed by the upstream URL's host here.
        std::fs::write(
            &f,
            r#"{"auths":{"https://index.docker.io/v1/":{"username":"hub","password":"hp"},
                "mirror.corp:5000":{"auth":"cm9ib3Q6dG9r"}}}"#,
        )
        .unwrap();
        let v = validate(&format!(
            "docker_config_file: {}\nupstreams:\n- host: docker.io\n  url: https://registry-1.docker.io\n\
             - host: corp.io\n  url: https://mirror.corp:5000/\n\
             - host: own.io\n  url: https://own.io\n  username: me\n  password: mine\n\
             - host: anon.io\n  url: https://anon.io\n",
            f.display()
        ))
        .unwrap();
        let creds: Vec<_> =
            v.upstreams.iter().map(|u| u.credentials.as_ref().map(|(a, b)| (a.as_str(), b.0.as_str()))).collect();
        assert_eq!(creds, [Some(("hub", "hp")), Some(("robot", "tok")), Some(("me", "mine")), None]);

        std::fs::write(&f, "{\"auths\":{\"x\":{\"auth\":\"!\"}}}").unwrap();
        let err = validate(&format!("docker_config_file: {}\n", f.display())).unwrap_err();
        assert!(err.contains(".dockerconfigjson") && err.contains("auths.x: auth is not base64"), "{err}");
        let err = validate("docker_config_file: /nonexistent/config.json\n").unwrap_err();
        assert!(err.contains("/nonexistent/config.json"), "{err}");
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let v = validate(&format!(
            "upstreams:\n- host: a.io\n  url: https://a.io\n  username: u\n  password_file: {}\n",
            f.display()
        ))
        .unwrap();
        assert_eq!(v.upstreams[0].credentials.as_ref().unwrap().1.0, "s3cret");
        let err = validate(
            "upstreams:\n- host: a.io\n  url: https://a.io\n  username: u\n  password_file: /nonexistent/pw\n",
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }

    #[test]
    fn config_errors() {
        let bad = |yaml: &str, want: &str| {
            let err = validate(yaml).unwrap_err();
            assert!(err.contains(want), "{yaml}: {err}");
        };
        bad("upstreams:\n- host: a.io\n  url: ftp://a.io\n", "http(s)");
        bad("upstreams:\n- host: a.io\n  url: a.io\n", "url");
        bad("upstreams:\n- host: a.io\n  url: http://u:p@a.io\n", "credentials");
        bad("upstreams:\n- host: a.io\n  url: http://a.io\n- host: a.io\n  url: http://b.io\n", "twice");
        bad("upstreams:\n- host: a.io\n  url: http://a.io\n  username: u\n", "go together");
        bad("upstreams:\n- host: a.io\n  url: http://a.io\n  password: p\n", "go together");
        bad(
            "upstreams:\n- host: a.io\n  url: http://a.io\n  username: u\n  password: p\n  password_file: /x\n",
            "not both",
        );
        bad("upstreams:\n- host: a.io\n  url: http://a.io\ndefault_upstream: b.io\n", "not one of");
        bad("upstreams:\n- host: https://a.io\n  url: http://a.io\n", "registry host");
        bad("upstreams:\n- host: a.io\n  url: http://a.io\n  writeback: true\n", "writeback");
        bad("upstream: []\n", "upstream");
    }

    #[tokio::test]
    async fn statuses_are_classified() {
        let v = validate("upstreams:\n- host: a.io\n  url: http://127.0.0.1:1\ndefault_upstream: a.io\n").unwrap();
        let registry = Registry::new();
        let ups = Upstreams::new(&v, UpstreamMetrics::new(&registry).unwrap()).unwrap();
        let up = ups.select(None, &RepoName::parse("x").unwrap()).unwrap();
        let url = reqwest::Url::parse("http://127.0.0.1:1/v2/x/blobs/y").unwrap();
        let class = |code: u16| match up.status_error(Kind::Blob, StatusCode::from_u16(code).unwrap(), &url) {
            UpstreamError::NotFound => "not_found",
            UpstreamError::Denied { .. } => "denied",
            UpstreamError::Transient { .. } => "transient",
            UpstreamError::Permanent { .. } => "permanent",
        };
        assert_eq!(class(404), "not_found");
        assert_eq!(class(401), "denied");
        assert_eq!(class(403), "denied");
        assert_eq!(class(500), "transient");
        assert_eq!(class(503), "transient");
        assert_eq!(class(429), "transient");
        assert_eq!(class(408), "transient");
        assert_eq!(class(400), "permanent");
        assert_eq!(class(416), "permanent");
        let c = |result: &str| up.metrics.requests.with_label_values(&["a.io", "blob", result]).get();
        assert_eq!((c("not_found"), c("denied"), c("transient"), c("error")), (1, 2, 4, 2));
    }

    #[tokio::test]
    async fn unreachable_upstream_is_transient() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let v = validate("upstreams:\n- host: a.io\n  url: http://127.0.0.1:1\ndefault_upstream: a.io\n").unwrap();
        let ups = Upstreams::new(&v, UpstreamMetrics::new(&Registry::new()).unwrap()).unwrap();
        let up = ups.select(None, &RepoName::parse("x").unwrap()).unwrap();
        let name = RepoName::parse("x").unwrap();
        let err = up.blob(&name, &Digest::of(b"x")).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        let err = up.manifest(&name, &Reference::Tag(Tag::parse("v1").unwrap())).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[test]
    fn docker_config_credentials_go_only_to_the_host_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        std::fs::write(&f, r#"{"auths":{"ghcr.io":{"username":"u","password":"p"}}}"#).unwrap();
        let v = validate(&format!(
            "docker_config_file: {}\nupstreams:\n- host: ghcr.io\n  url: https://mirror.example\n\
             - host: other\n  url: https://ghcr.io\n",
            f.display()
        ))
        .unwrap();
        assert!(v.upstreams[0].credentials.is_none(), "a mirror called ghcr.io does not get ghcr.io's password");
        assert!(v.upstreams[1].credentials.is_some(), "the URL's host does");
    }

    #[test]
    fn credentials_go_over_https_to_their_hosts_only() {
        let err = validate("upstreams:\n- host: a.io\n  url: http://a.io\n  username: u\n  password: p\n").unwrap_err();
        assert!(err.contains("plain_http_credentials"), "{err}");
        let v = validate(
            "upstreams:\n- host: a.io\n  url: https://a.io\n  username: u\n  password: p\n  auth_hosts: [Auth.A.io]\n\
             - host: docker.io\n  url: https://registry-1.docker.io\n\
             - host: lab\n  url: http://127.0.0.1:5000\n  username: u\n  password: p\n  plain_http_credentials: true\n",
        )
        .unwrap();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        // (upstream, URL, credentials sent)
        for (i, u, want) in [
            (0, "https://a.io/v2/x", true),
            (0, "https://auth.a.io/token", true),
            (0, "http://auth.a.io/token", false),
            (0, "https://evil.example/token", false),
            (0, "https://a.io.evil.example/token", false),
            (1, "https://auth.docker.io/token", true),
            (1, "https://registry-1.docker.io/v2/", true),
            (2, "http://127.0.0.1:5000/token", true),
            (2, "http://127.0.0.2:5000/token", false),
        ] {
            assert_eq!(v.upstreams[i].may_send_credentials(&url(u)), want, "{i} {u}");
        }
        let err = validate("upstreams:\n- host: a.io\n  url: https://a.io\n  auth_hosts: ['https://x']\n").unwrap_err();
        assert!(err.contains("auth_hosts"), "{err}");
    }

    #[tokio::test]
    async fn select_by_ns_or_default() {
        let v = validate(
            "upstreams:\n- host: docker.io\n  url: http://127.0.0.1:1\n- host: ghcr.io\n  url: http://127.0.0.1:2\n\
             default_upstream: docker.io\n",
        )
        .unwrap();
        let ups = Upstreams::new(&v, UpstreamMetrics::new(&Registry::new()).unwrap()).unwrap();
        let host = |s: &str| RegistryHost::parse(s).unwrap();
        let x = RepoName::parse("x").unwrap();
        let sel = |ns: Option<&str>| ups.select(ns.map(host).as_ref(), &x).map(|u| u.host().to_string());
        assert_eq!(sel(None).as_deref(), Some("docker.io"));
        assert_eq!(sel(Some("ghcr.io")).as_deref(), Some("ghcr.io"));
        assert_eq!(sel(Some("quay.io")), None, "an unconfigured host is not served by another");
    }

    /// A registry on 127.0.0.1 whose challenge names a token endpoint on 127.0.0.2: the
    /// credentials go there only when `auth_hosts` lists it.
    #[tokio::test]
    async fn a_realm_on_another_host_gets_no_credentials_unless_listed() {
        use std::sync::Mutex as StdMutex;
        let seen: Arc<StdMutex<Vec<Option<String>>>> = Arc::default();
        let s = seen.clone();
        let token_listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let realm = format!("http://{}/token", token_listener.local_addr().unwrap());
        let token = axum::Router::new().route(
            "/token",
            axum::routing::get(move |h: axum::http::HeaderMap| {
                s.lock().unwrap().push(h.get("authorization").map(|v| v.to_str().unwrap().to_owned()));
                async { axum::Json(serde_json::json!({"token": "t"})) }
            }),
        );
        let challenge = format!("Bearer realm=\"{realm}\",service=\"reg\"");
        let registry = axum::Router::new().fallback(move |h: axum::http::HeaderMap| {
            let challenge = challenge.clone();
            async move {
                if h.get("authorization").is_some_and(|v| v.to_str().unwrap().starts_with("Bearer ")) {
                    return (StatusCode::NOT_FOUND, [("www-authenticate", String::new())]).into_response();
                }
                (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response()
            }
        });
        let reg_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", reg_listener.local_addr().unwrap());
        // Test-only servers: they end with the test's runtime.
        tokio::spawn(async move { axum::serve(token_listener, token).await });
        tokio::spawn(async move { axum::serve(reg_listener, registry).await });
        use axum::response::IntoResponse;

        let name = RepoName::parse("team/app").unwrap();
        let reference = Reference::Tag(Tag::parse("v1").unwrap());
        for (extra, want) in [("", None), ("  auth_hosts: ['127.0.0.2']\n", Some("Basic dTpw"))] {
            let v = validate(&format!(
                "upstreams:\n- host: a.io\n  url: {url}\n  username: u\n  password: p\n  plain_http_credentials: true\n{extra}\
                 default_upstream: a.io\n"
            ))
            .unwrap();
            let ups = Upstreams::new(&v, UpstreamMetrics::new(&Registry::new()).unwrap()).unwrap();
            let err = ups.select(None, &name).unwrap().manifest(&name, &reference).await.unwrap_err();
            assert!(matches!(err, UpstreamError::NotFound), "{err}");
            assert_eq!(seen.lock().unwrap().pop(), Some(want.map(str::to_owned)), "{extra}");
        }
    }

    #[tokio::test]
    async fn an_upstream_pulls_through_only_the_repositories_it_allows() {
        let v = validate(
            "upstreams:\n- host: corp.io\n  url: https://corp.io\n  repositories: ['public/*', 'tools/ci']\n\
             default_upstream: corp.io\n",
        )
        .unwrap();
        let ups = Upstreams::new(&v, UpstreamMetrics::new(&Registry::new()).unwrap()).unwrap();
        let corp = RegistryHost::parse("corp.io").unwrap();
        for (name, want) in [("public/app", true), ("tools/ci", true), ("private/secrets", false), ("tools/cid", false)]
        {
            let n = RepoName::parse(name).unwrap();
            assert_eq!(ups.select(Some(&corp), &n).is_some(), want, "{name} by ns");
            assert_eq!(ups.select(None, &n).is_some(), want, "{name} by default");
        }
        let err = validate("upstreams:\n- host: a.io\n  url: https://a.io\n  repositories: []\n").unwrap_err();
        assert!(err.contains("repositories"), "{err}");
    }

    /// A server on loopback that answers every request with `head` and then `body`, the
    /// bytes of `head[trickle_from..]` and of `body` one at a time, `every` apart: never
    /// idle for `read_timeout`, never done either.
    async fn trickle_server(head: String, trickle_from: usize, body: Vec<u8>, every: std::time::Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Test-only server: its tasks end with the test's runtime.
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (head, body) = (head.clone(), body.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (now, later) = head.as_bytes().split_at(trickle_from);
                    if socket.write_all(now).await.is_err() {
                        return;
                    }
                    for b in later.iter().chain(body.iter()) {
                        tokio::time::sleep(every).await;
                        if socket.write_all(&[*b]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    fn trickled(url: &str) -> Upstreams {
        let v = validate(&format!(
            "upstreams:\n- host: a.io\n  url: {url}\ndefault_upstream: a.io\nread_timeout: 5s\nrequest_timeout: 500ms\n"
        ))
        .unwrap();
        Upstreams::new(&v, UpstreamMetrics::new(&Registry::new()).unwrap()).unwrap()
    }

    /// An upstream that sends a byte every 50 ms never trips `read_timeout`; `request_timeout`
    /// ends the exchange: a manifest whose body trickles, and a blob whose answer does.
    #[tokio::test]
    async fn a_trickling_upstream_is_cut_at_request_timeout() {
        let wait = std::time::Duration::from_secs(8);
        let every = std::time::Duration::from_millis(50);
        let name = RepoName::parse("x").unwrap();
        let body = format!(
            "{{\"schemaVersion\": 2, \"mediaType\": \"{}\", \"pad\": \"{}\"}}",
            shoal_core::manifest::OCI_MANIFEST,
            "p".repeat(400)
        )
        .into_bytes();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
            shoal_core::manifest::OCI_MANIFEST,
            body.len()
        );
        let ups = trickled(&trickle_server(head.clone(), head.len(), body, every).await);
        let up = ups.select(None, &name).unwrap();
        let tag = Reference::Tag(Tag::parse("v1").unwrap());
        let err =
            tokio::time::timeout(wait, up.manifest(&name, &tag)).await.expect("the manifest read ends").unwrap_err();
        assert!(err.is_transient() && err.to_string().contains("request_timeout"), "{err}");

        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Pad: {}\r\n\r\n", "p".repeat(400));
        let ups = trickled(&trickle_server(head, 9, b"0123456789".to_vec(), every).await);
        let up = ups.select(None, &name).unwrap();
        let err =
            tokio::time::timeout(wait, up.blob(&name, &Digest::of(b"x"))).await.expect("the blob request ends").err();
        let err = err.expect("no answer within request_timeout");
        assert!(err.is_transient() && err.to_string().contains("request_timeout"), "{err}");
        assert_eq!(up.metrics.requests.with_label_values(&["a.io", "blob", "transient"]).get(), 1);
    }
}
