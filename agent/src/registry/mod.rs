//! The agent's Registry v2 / OCI distribution read API, what container runtimes pull from:
//!
//! - `GET /v2/`: 200 `{}`, the version check.
//! - `GET`/`HEAD /v2/<name>/manifests/<reference>`: a tag is resolved to a digest through
//!   the origins ([`tags`]); the manifest is a blob fetched by digest through the swarm and
//!   sent with its media type ([`manifest`]) as `Content-Type`.
//! - `GET`/`HEAD /v2/<name>/blobs/<digest>`: the blob through the swarm, with `Range` support.
//! - `POST /preheat` (outside `/v2/`): warm an image on its origins, optionally here too
//!   ([`preheat`]).
//!
//! Every answer carries `Docker-Distribution-API-Version: registry/2.0`; content answers carry
//! `Docker-Content-Digest`. Paths are parsed raw by `shoal_core::registry::parse_route`, so
//! encoded slashes and `..` are rejected, not decoded. The `ns=<upstream host>` query
//! parameter that containerd sends is passed on to the origins with the repository name
//! (`origin_client::Hints`), so an origin can pull a missing blob or tag through from that
//! upstream registry. Errors use the spec's body ([`error`]). The repository name does not restrict
//! which blobs can be read: a digest is the same blob in every repository. A blob or manifest
//! asked for through a repository listed in `swarm.store.pin.repositories` is pinned in the
//! agent's store.

pub mod error;
pub mod manifest;
pub mod preheat;
pub mod tags;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use shoal_core::registry::{ByteRange, Reference, RepoName, Route, parse_range, parse_route};
use shoal_core::{Digest, MetaInfo};
use shoal_swarm::{BlobFile, Swarm};

use crate::metrics::AgentMetrics;
use crate::origin_client::{Hints, OriginClient};
use error::{BLOB_UNKNOWN, MANIFEST_UNKNOWN, RegistryError, UNSUPPORTED};
pub use tags::TagResolver;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// What the registry handlers share.
#[derive(Clone)]
pub struct RegistryState {
    pub swarm: Swarm,
    pub origins: OriginClient,
    pub tags: TagResolver,
    /// Requests by status, cache hits and misses, bytes served.
    pub metrics: AgentMetrics,
    /// Ends background work started by requests (preheat prefetches).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Who may start a preheat.
    pub auth: shoal_runtime::Authorizer,
    /// Prefetches running at once (`max_prefetches`).
    pub prefetches: shoal_runtime::Cap,
}

/// The `/v2/` tree. Every path below `/v2/` reaches one handler, which parses it itself.
pub fn router(state: RegistryState) -> Router {
    Router::new()
        .route("/v2", any(handle))
        .route("/v2/", any(handle))
        .route("/v2/{*rest}", any(handle))
        .route("/preheat", axum::routing::post(preheat::post_preheat))
        .with_state(state)
}

async fn handle(State(st): State<RegistryState>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let mut resp = match serve(&st, &method, &uri, &headers).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(path = uri.path(), code = e.code, "registry request failed: {}", e.message);
            }
            e.into_response()
        }
    };
    resp.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    let route = match parse_route(uri.path()) {
        Ok(Route::Base) => "base",
        Ok(Route::Manifest { .. }) => "manifest",
        Ok(Route::Blob { .. }) => "blob",
        Err(_) => "invalid",
    };
    st.metrics.request(route, resp.status().as_u16());
    resp
}

/// The upstream registry a client named with `?ns=<host>`, if any.
fn namespace(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "ns")
        .map(|(_, v)| v.chars().take(255).collect())
        .filter(|v: &String| !v.is_empty())
}

async fn serve(st: &RegistryState, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Response, RegistryError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(RegistryError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            UNSUPPORTED,
            format!("{method} is not supported by this read-only mirror"),
        ));
    }
    let route = parse_route(uri.path())?;
    let ns = namespace(uri);
    let head = method == Method::HEAD;
    match route {
        Route::Base => Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response()),
        Route::Manifest { name, reference } => get_manifest(st, head, &name, reference, ns.as_deref()).await,
        Route::Blob { name, digest } => {
            tracing::debug!(%name, %digest, ns = ns.as_deref(), "registry blob");
            st.swarm.note_repository(name.as_str(), digest).await;
            let hints = Hints { name: Some(name), ns };
            get_blob(st, head, digest, headers, &hints).await
        }
    }
}

/// The blob's metainfo: its stored copy's, or the origins'. `unknown` is the error code for a
/// digest the origins do not have.
async fn metainfo(
    st: &RegistryState,
    digest: Digest,
    unknown: &'static str,
    hints: &Hints,
) -> Result<MetaInfo, RegistryError> {
    let stored = st.swarm.complete(digest).await?;
    st.metrics.lookup(stored.is_some());
    if let Some(f) = stored {
        return Ok(f.meta().clone());
    }
    st.origins.metainfo_for(digest, hints).await.map_err(|e| RegistryError::from_origin(e, unknown))
}

/// The verified blob, from the store or downloaded through the swarm.
async fn fetch(
    st: &RegistryState,
    digest: Digest,
    unknown: &'static str,
    hints: &Hints,
) -> Result<Arc<BlobFile>, RegistryError> {
    let meta = metainfo(st, digest, unknown, hints).await?;
    Ok(st.swarm.download(meta).await?)
}

fn content_headers(digest: Digest, len: u64, content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert(CONTENT_DIGEST, v);
    }
    h
}

async fn get_blob(
    st: &RegistryState,
    head: bool,
    digest: Digest,
    req: &HeaderMap,
    hints: &Hints,
) -> Result<Response, RegistryError> {
    const OCTETS: &str = "application/octet-stream";
    let meta = metainfo(st, digest, BLOB_UNKNOWN, hints).await?;
    let len = meta.length();
    if head {
        let mut h = content_headers(digest, len, OCTETS);
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        return Ok((StatusCode::OK, h, Body::empty()).into_response());
    }
    // Streams while the blob downloads (or at once from the store).
    let range = req.get(header::RANGE).and_then(|v| v.to_str().ok()).map_or(ByteRange::Full, |r| parse_range(r, len));
    let (status, start, end) = match range {
        ByteRange::Full => (StatusCode::OK, 0, len),
        ByteRange::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        ByteRange::Unsatisfiable => return Err(RegistryError::range_not_satisfiable(len)),
    };
    let body = Body::from_stream(st.metrics.counted(st.swarm.stream(meta, start, end).await?));
    let mut h = content_headers(digest, end - start, OCTETS);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok((status, h, body).into_response())
}

async fn get_manifest(
    st: &RegistryState,
    head: bool,
    name: &RepoName,
    reference: Reference,
    ns: Option<&str>,
) -> Result<Response, RegistryError> {
    let digest = match &reference {
        Reference::Digest(d) => *d,
        Reference::Tag(tag) => st.tags.resolve(ns, name, tag).await?,
    };
    tracing::debug!(%name, %reference, %digest, ns, "registry manifest");
    st.swarm.note_repository(name.as_str(), digest).await;
    let hints = Hints { name: Some(name.clone()), ns: ns.map(str::to_owned) };
    let file = fetch(st, digest, MANIFEST_UNKNOWN, &hints).await?;
    let len = file.meta().length();
    let not_manifest =
        || RegistryError::new(StatusCode::NOT_FOUND, MANIFEST_UNKNOWN, format!("{digest} is not a manifest"));
    if len > manifest::MAX_MANIFEST_LEN {
        return Err(not_manifest());
    }
    let bytes = st
        .swarm
        .store()
        .blocking()
        .run(move || file.read_at(0, usize::try_from(len).expect("at most 4 MiB")))
        .await
        .map_err(|e| {
            RegistryError::new(StatusCode::INTERNAL_SERVER_ERROR, error::UNAVAILABLE, format!("reading {digest}: {e}"))
        })?;
    let media_type = manifest::media_type(&bytes).ok_or_else(not_manifest)?;
    let h = content_headers(digest, len, &media_type);
    let body = if head {
        Body::empty()
    } else {
        st.metrics.served(bytes.len());
        Body::from(bytes)
    };
    Ok((StatusCode::OK, h, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(uri: &str) -> Option<String> {
        namespace(&uri.parse().unwrap())
    }

    #[test]
    fn ns_parameter() {
        assert_eq!(ns("/v2/x/manifests/v1?ns=docker.io"), Some("docker.io".into()));
        assert_eq!(ns("/v2/x/manifests/v1?a=b&ns=ghcr.io:443"), Some("ghcr.io:443".into()));
        assert_eq!(ns("/v2/x/manifests/v1?ns="), None);
        assert_eq!(ns("/v2/x/manifests/v1?nsx=a"), None);
        assert_eq!(ns("/v2/x/manifests/v1"), None);
    }
}
