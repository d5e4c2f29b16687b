//! The origin's HTTP API, a thin adapter over the fetcher, the store and the backend.
//!
//! - `GET /blobs/<digest>/metainfo`: 200 with the metainfo; 202 with `Retry-After` while the
//!   blob is being fetched from the backend; 404 if the backend lacks it.
//! - `GET`/`HEAD /blobs/<digest>`: the blob itself (fetched first if needed).
//! - `PUT /blobs/<digest>`: upload. The body is staged and hashed; only bytes matching the
//!   digest are written back to the backend, stored and seeded; anything else is removed and
//!   answered 400 `DIGEST_INVALID`. Requires `Content-Length`, and a caller `auth` allows
//!   (401 without credentials, 403 with others; checked before the body is read). At most
//!   `max_uploads` at once; another is answered 503 with `Retry-After`.
//! - `GET /tags/<name>/<tag>`: the digest a registry tag points at, as text ([`crate::tags`]).
//! - `POST /preheat` (a caller `auth` allows; a body of at most [`MAX_PREHEAT_BODY`]),
//!   `GET /preheat/<id>`: warm an image's manifests and blobs ([`crate::preheat`]).
//!
//! Tag resolution and preheat are domain functions ([`crate::tags`], [`crate::preheat`]) that
//! know nothing of HTTP; their handlers, and the mapping of every error to a status and a
//! Registry v2 code, live here.
//!
//! Only the upload route reads a body of any size (streamed to a staging file, bounded by
//! `max_upload`); every other body is bounded where its route is declared.
//!
//! Metainfo, blob and tag requests take two optional query hints for pull-through
//! ([`Hints`], in `crate::state`): `name=<repository>` and `ns=<registry host>`. They choose where a missing
//! blob is pulled from, never what is served: every byte is verified against the digest.

use std::io::Write;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use shoal_core::Digest;
use shoal_core::api::PreheatRequest;
use shoal_core::metainfo::MetaInfoBuilder;
use shoal_core::registry::{RegistryHost, RepoName, Tag};
use shoal_runtime::{ApiError, Caller, blob_response, parse_digest};

use crate::fetch::{FetchError, FetchState};
use crate::preheat::PreheatError;
use crate::state::settle;
pub use crate::state::{AppState, Hints};
use crate::tags::TagError;
use crate::upstream::UpstreamError;

/// Largest `POST /preheat` body read. Hard-coded: a request is a name, a reference and a host.
pub const MAX_PREHEAT_BODY: usize = 64 << 10;
/// `Retry-After` of an upload refused because `max_uploads` are running.
pub const UPLOAD_RETRY_AFTER: u32 = 5;

pub fn router(state: AppState) -> Router {
    use axum::extract::DefaultBodyLimit;
    Router::new()
        .route("/blobs/{digest}/metainfo", get(metainfo))
        // Uploads stream their body and bound it by `max_upload` themselves.
        .route("/blobs/{digest}", get(get_blob).head(get_blob).put(put_blob).layer(DefaultBodyLimit::disable()))
        .route("/tags/{*rest}", get(get_tag))
        .route("/preheat", axum::routing::post(post_preheat).layer(DefaultBodyLimit::max(MAX_PREHEAT_BODY)))
        .route("/preheat/{id}", get(get_preheat))
        .with_state(state)
}

/// A refused request: the error body, with the `WWW-Authenticate` challenge of a 401.
pub(crate) fn refused(e: shoal_runtime::AuthError) -> Response {
    e.into_response()
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> ApiError {
        let (status, code) = match &e {
            FetchError::NotFound(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            FetchError::Mismatch { .. } => (StatusCode::BAD_GATEWAY, "DIGEST_INVALID"),
            FetchError::Backend(_) => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            FetchError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNAVAILABLE"),
            FetchError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
            FetchError::Upstream(u) => upstream_status(u),
        };
        ApiError::new(status, code, format!("{e:#}"))
    }
}

/// The status and Registry v2 code of an upstream failure.
pub fn upstream_status(e: &UpstreamError) -> (StatusCode, &'static str) {
    match e {
        UpstreamError::NotFound => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        UpstreamError::Denied { .. } => (StatusCode::BAD_GATEWAY, "DENIED"),
        UpstreamError::Transient { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        UpstreamError::Permanent { .. } => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
    }
}

/// The query parameters of a request, raw.
#[derive(Debug, Default, serde::Deserialize)]
pub struct RawHints {
    name: Option<String>,
    ns: Option<String>,
}

/// Validates the hints of a request (empty values count as absent).
pub fn parse_hints(raw: RawHints) -> Result<Hints, ApiError> {
    let invalid = |e: String| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e);
    let name = match raw.name.filter(|n| !n.is_empty()) {
        Some(n) => Some(RepoName::parse(&n).map_err(|e| invalid(e.to_string()))?),
        None => None,
    };
    let ns = match raw.ns.filter(|n| !n.is_empty()) {
        Some(n) => Some(RegistryHost::parse(&n).map_err(|e| invalid(e.to_string()))?),
        None => None,
    };
    Ok(Hints { name, ns })
}

/// Parses the hints of a raw URI's query.
pub fn hints_from_uri(uri: &axum::http::Uri) -> Result<Hints, ApiError> {
    let Query(raw) = Query::<RawHints>::try_from_uri(uri)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", format!("query: {e}")))?;
    parse_hints(raw)
}

async fn metainfo(
    State(st): State<AppState>,
    Path(digest): Path<String>,
    Query(raw): Query<RawHints>,
) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    let hints = parse_hints(raw)?;
    st.note_repository(&hints, digest).await;
    let source = st.source(&hints);
    match settle(st.fetcher.ensure_from(digest, source).await, st.metainfo_wait).await {
        FetchState::Done(meta) => {
            // An agent asking is about to download it from this origin's store: a use, so a
            // blob just asked for is the last to be evicted.
            st.swarm.touch(&digest);
            Ok(axum::Json(meta).into_response())
        }
        FetchState::Running => Ok((StatusCode::ACCEPTED, [(header::RETRY_AFTER, "1")], "fetching\n").into_response()),
        FetchState::Failed(e) => Err(e.into()),
    }
}

async fn get_blob(
    State(st): State<AppState>,
    method: Method,
    Path(digest): Path<String>,
    Query(raw): Query<RawHints>,
) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    let hints = parse_hints(raw)?;
    st.note_repository(&hints, digest).await;
    let source = st.source(&hints);
    let internal =
        |e: shoal_swarm::SwarmError| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNAVAILABLE", format!("{e:#}"));
    if method == Method::HEAD {
        if let Some(f) = st.swarm.complete(digest).await.map_err(internal)? {
            return Ok(blob_response(digest, f.meta().length(), Body::empty()));
        }
        return match st.fetcher.backend().stat(&digest).await {
            Ok(Some(len)) => Ok(blob_response(digest, len, Body::empty())),
            Ok(None) => Err(FetchError::NotFound(digest).into()),
            Err(e) => Err(ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", format!("{e:#}"))),
        };
    }
    match settle(st.fetcher.ensure_from(digest, source).await, std::time::Duration::from_secs(24 * 3600)).await {
        FetchState::Done(_) => {}
        FetchState::Running => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "still fetching"));
        }
        FetchState::Failed(e) => return Err(e.into()),
    }
    let file = st.swarm.complete(digest).await.map_err(internal)?.ok_or_else(|| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNAVAILABLE", "blob vanished from the store")
    })?;
    let len = file.meta().length();
    // The stream holds the file open, so the blob is not evicted while it is sent, and
    // records the use when it ends.
    let used = st.swarm.use_record(digest);
    let stream = st.swarm.store().stream(&file, 0, len).map(move |chunk| {
        let _ = &used;
        chunk
    });
    Ok(blob_response(digest, len, Body::from_stream(stream)))
}

async fn put_blob(
    State(st): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    // Before anything else of the request is looked at: a refused upload leaves nothing.
    st.auth.authorize(&caller, &headers).map_err(refused)?;
    upload_checked(st, digest, headers, body).await.map_err(IntoResponse::into_response)
}

async fn upload_checked(st: AppState, digest: String, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    let len: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::new(StatusCode::LENGTH_REQUIRED, "SIZE_INVALID", "Content-Length is required"))?;
    if len > st.max_upload {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "SIZE_INVALID",
            format!("{len} bytes is over the limit of {}", st.max_upload),
        ));
    }
    if st.swarm.complete(digest).await.ok().flatten().is_some() {
        return Ok((StatusCode::CREATED, "exists\n").into_response());
    }
    let _running = st.uploads.try_take().map_err(|full| {
        st.metrics.busy.with_label_values(&["upload"]).inc();
        ApiError::busy(full.to_string(), UPLOAD_RETRY_AFTER)
    })?;
    let store = st.swarm.store().clone();
    let staged = store.tmp_path();
    let res = upload(&st, digest, len, body, &staged).await;
    match res {
        Ok(()) => {
            st.metrics.uploads.with_label_values(&["ok"]).inc();
            Ok((StatusCode::CREATED, "stored\n").into_response())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            let label = if e.code == "DIGEST_INVALID" { "digest_mismatch" } else { "error" };
            st.metrics.uploads.with_label_values(&[label]).inc();
            Err(e)
        }
    }
}

async fn upload(st: &AppState, digest: Digest, len: u64, body: Body, staged: &std::path::Path) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", m);
    let io = |e: std::io::Error| {
        ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "UNAVAILABLE", format!("staging upload: {e}"))
    };
    let store = st.swarm.store().clone();
    let mut builder = MetaInfoBuilder::new(len).map_err(|e| bad(e.to_string()))?;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(staged).map_err(io)?);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", format!("reading body: {e}")))?;
        if builder.seen() + chunk.len() as u64 > len {
            return Err(bad(format!("body is longer than Content-Length {len}")));
        }
        let (f, b, r) = store
            .blocking()
            .run(move || {
                builder.update(&chunk);
                let r = file.write_all(&chunk);
                (file, builder, r)
            })
            .await;
        r.map_err(io)?;
        file = f;
        builder = b;
    }
    file.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    let meta = builder.finish_expecting(digest).map_err(|e| bad(e.to_string()))?;
    // Verified: write back to the backend first, then store and seed.
    st.fetcher.backend().put(&digest, staged, len).await.map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", format!("writing back to backend: {e:#}"))
    })?;
    let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNAVAILABLE", m);
    store.commit_verified(meta, staged.to_path_buf()).await.map_err(|e| internal(format!("{e:#}")))?;
    st.swarm.seed(digest).await.map_err(|e| internal(format!("{e:#}")))?;
    Ok(())
}

impl From<TagError> for ApiError {
    fn from(e: TagError) -> ApiError {
        let (status, code) = match &e {
            TagError::Unknown { .. } => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            TagError::BadLink { .. } => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            TagError::Backend { source, .. } if source.is_transient() => {
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
            }
            TagError::Backend { .. } => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            TagError::Upstream { source, .. } => upstream_status(source),
            TagError::Store { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "UNAVAILABLE"),
        };
        ApiError::new(status, code, format!("{e:#}"))
    }
}

impl From<PreheatError> for ApiError {
    fn from(e: PreheatError) -> ApiError {
        let bad = |code: &'static str, m: String| ApiError::new(StatusCode::BAD_REQUEST, code, m);
        match e {
            PreheatError::Busy(m) => ApiError::busy(m, crate::preheat::PREHEAT_RETRY_AFTER),
            PreheatError::Name(m) | PreheatError::Ns(m) => bad("NAME_INVALID", m),
            PreheatError::Reference(m) => bad("MANIFEST_INVALID", m),
            PreheatError::Tag(t) => t.into(),
            PreheatError::Fetch { source, .. } => {
                let mut a: ApiError = source.into();
                if a.code == "BLOB_UNKNOWN" {
                    a.code = "MANIFEST_UNKNOWN";
                }
                a
            }
            e @ PreheatError::Timeout { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", e.to_string())
            }
            e @ (PreheatError::BadManifest { .. } | PreheatError::TooManyManifests) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "MANIFEST_INVALID", e.to_string())
            }
        }
    }
}

/// Splits the raw (still percent-encoded) path `/tags/<name>/<tag>` and validates both parts.
pub fn parse_tag_path(path: &str) -> Result<(RepoName, Tag), ApiError> {
    let rest = path.strip_prefix("/tags/").unwrap_or_default();
    let Some((name, tag)) = rest.rsplit_once('/') else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NAME_INVALID", "expected /tags/<name>/<tag>"));
    };
    let name =
        RepoName::parse(name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string()))?;
    let tag = Tag::parse(tag).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", e.to_string()))?;
    Ok((name, tag))
}

/// `GET /tags/<name>/<tag>[?ns=<host>]`: the digest as text.
async fn get_tag(State(st): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let (name, tag) = parse_tag_path(uri.path())?;
    let hints = hints_from_uri(&uri)?;
    let digest =
        crate::tags::resolve_through(&st.fetcher, st.upstreams.as_deref(), &name, &tag, hints.ns.as_ref()).await?;
    tracing::debug!(%name, %tag, %digest, "tag resolved");
    Ok(([(header::CONTENT_TYPE, "text/plain")], digest.to_string()).into_response())
}

/// `POST /preheat`, for a caller `auth` allows; refused with 503 while `max_preheats` jobs
/// run.
async fn post_preheat(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<PreheatRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Response> {
    st.auth.authorize(&caller, &headers).map_err(refused)?;
    let Json(req) = body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "PAYLOAD_TOO_LARGE" } else { "BAD_REQUEST" };
        ApiError::new(status, code, r.body_text()).into_response()
    })?;
    start_preheat(&st, req).await.map_err(IntoResponse::into_response)
}

/// Starts a preheat (the caller is already allowed): 202 with its status, or 503 (counted)
/// while `max_preheats` jobs run.
pub async fn start_preheat(st: &AppState, req: PreheatRequest) -> Result<Response, ApiError> {
    match st.preheats.start(&st.fetcher, st.upstreams.as_ref(), req).await {
        Ok(status) => Ok((StatusCode::ACCEPTED, Json(status)).into_response()),
        Err(e) => {
            if matches!(e, PreheatError::Busy(_)) {
                st.metrics.busy.with_label_values(&["preheat"]).inc();
            }
            Err(e.into())
        }
    }
}

/// `GET /preheat/<id>`.
async fn get_preheat(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match st.preheats.get(&id) {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "UNKNOWN", format!("no preheat {id:?}"))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use shoal_runtime::{Authorizer, Cap};
    use shoal_swarm::Swarm;

    use super::*;
    use crate::backend::{FsBackend, FsConfig};
    use crate::fetch::{FetchLimits, Fetcher};
    use crate::metrics::OriginMetrics;

    /// An origin's HTTP state on a temporary directory (store and fs backend), its swarm on
    /// loopback, every cap at 1; the token stops the swarm.
    pub(crate) async fn state(dir: &std::path::Path) -> (AppState, tokio_util::sync::CancellationToken) {
        let registry = prometheus::Registry::new();
        let cfg = shoal_swarm::SwarmConfig { store_dir: dir.join("store"), ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let swarm = Swarm::start(cfg, listener, &registry, shoal_swarm::Role::Origin, None, shutdown.clone()).unwrap();
        let backend = FsBackend::new(FsConfig { root: dir.join("backend"), ..FsConfig::default() }).await.unwrap();
        let metrics = OriginMetrics::new(&registry).unwrap();
        let limits = FetchLimits {
            max_concurrent: 1,
            failure_ttl: std::time::Duration::from_secs(15),
            timeout: std::time::Duration::from_secs(60),
        };
        let fetcher = Fetcher::new(swarm.clone(), Arc::new(backend), limits, metrics.clone(), shutdown.child_token());
        let st = AppState {
            swarm,
            fetcher,
            metainfo_wait: std::time::Duration::from_secs(1),
            max_upload: 1 << 20,
            uploads: Cap::new("uploads", "max_uploads", 1),
            metrics,
            upstreams: None,
            preheats: crate::preheat::Preheats::new(1, 1, shutdown.child_token()),
            auth: Authorizer::open(),
        };
        (st, shutdown)
    }

    async fn put(st: &AppState, data: &[u8]) -> Result<Response, ApiError> {
        let digest = Digest::of(data);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, data.len().into());
        // Past the auth check (open here): the upload itself.
        upload_checked(st.clone(), digest.to_string(), headers, Body::from(data.to_vec())).await
    }

    /// `max_uploads` uploads stage at once; one more is answered 503 with `Retry-After` and
    /// counted, and goes through once a slot is free.
    #[tokio::test]
    async fn uploads_past_max_uploads_get_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let (st, shutdown) = state(dir.path()).await;
        let running = st.uploads.try_take().unwrap();
        let err = put(&st, b"an upload").await.expect_err("refused while the only slot is taken");
        assert_eq!(
            (err.status, err.code, err.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", Some(UPLOAD_RETRY_AFTER))
        );
        assert!(err.message.contains("max_uploads"), "{}", err.message);
        let resp = err.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], UPLOAD_RETRY_AFTER.to_string().as_str());
        assert_eq!(st.metrics.busy.with_label_values(&["upload"]).get(), 1);
        drop(running);
        let resp = put(&st, b"an upload").await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(st.swarm.complete(Digest::of(b"an upload")).await.unwrap().is_some());
        shutdown.cancel();
    }

    fn show(path: &str) -> String {
        match parse_tag_path(path) {
            Ok((n, t)) => format!("{n} {t}"),
            Err(e) => e.code.to_string(),
        }
    }

    #[test]
    fn tag_paths() {
        assert_eq!(show("/tags/nginx/latest"), "nginx latest");
        assert_eq!(show("/tags/library/nginx/1.25"), "library/nginx 1.25");
        assert_eq!(show("/tags/a/b/c/v1"), "a/b/c v1");
        assert_eq!(show("/tags/latest"), "NAME_INVALID");
        assert_eq!(show("/tags/"), "NAME_INVALID");
        assert_eq!(show("/tags/../../etc/passwd"), "NAME_INVALID");
        assert_eq!(show("/tags/a%2F..%2Fb/v1"), "NAME_INVALID");
        assert_eq!(show("/tags/a//b/v1"), "NAME_INVALID");
        assert_eq!(show("/tags/a/.."), "MANIFEST_UNKNOWN");
        assert_eq!(show("/tags/a/"), "MANIFEST_UNKNOWN");
    }
}
