//! The tracker's HTTP API: `POST /announce`, and `GET /blobs/<digest>/peers` (how many live
//! nodes are in a blob's swarm, for operators' tools). Handlers are thin adapters over
//! [`crate::store::PeerStore`].
//!
//! An announce from an untrusted caller (see [`Trust`]) must name the caller's own IP
//! address (any port), else 403 `DENIED`; each untrusted source (an IPv4 address, an IPv6
//! /64) gets `announce_rate` announces per second after a burst of `announce_burst`, else 429
//! `RATE_LIMITED` with `Retry-After`. A caller sending a bearer token that is not allowed gets
//! 403 as well, so a mistyped token is not silently treated as no token.
//!
//! Invariant: every error answer is an [`ErrorBody`] with a stable `code`, and nothing here
//! holds a lock across an `.await` (the store's and the limiter's locks live only inside
//! synchronous calls).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use shoal_core::api::{AnnounceRequest, AnnounceResponse, ErrorBody, SwarmSize};
use shoal_core::net::{Networks, source_key};
use shoal_core::ratelimit::{Admit, Limiter, Rate};
use shoal_runtime::{AuthError, Authorizer, Caller};

use crate::metrics::{BAD_REQUEST, DENIED, Metrics, RATE_LIMITED};
use crate::store::{PeerStore, Recorded};

/// Largest announce body accepted. This is a hard-coded limit: a real announce is about 250
/// bytes.
pub(crate) const MAX_ANNOUNCE_BODY: usize = 16 * 1024;

/// What the handlers share.
pub(crate) struct AppState {
    /// Written by every announce, swept by the sweep task.
    pub(crate) store: PeerStore,
    /// Updated after every announce and sweep.
    pub(crate) metrics: Metrics,
    /// Sent in every answer as `interval_ms`.
    pub(crate) interval_ms: u64,
    /// Who may announce for other addresses.
    pub(crate) trust: Trust,
    /// Announce rates of untrusted sources.
    pub(crate) limiter: SourceLimiter,
}

/// Sources whose announce rates are kept at most. Hard-coded; past it, idle sources are
/// forgotten and new ones share one rate (`shoal_core::ratelimit::Limiter`).
pub(crate) const MAX_SOURCES: usize = 65_536;

/// Who may announce an address other than its own: callers in `networks`, and callers the
/// `auth` check allows by their credentials (never because `auth` is open).
pub(crate) struct Trust {
    networks: Networks,
    auth: Authorizer,
}

impl Trust {
    pub(crate) fn new(networks: Networks, auth: Authorizer) -> Trust {
        Trust { networks, auth }
    }

    /// Whether `caller` is trusted; `Err` for a bearer token that is not allowed.
    fn trusted(&self, caller: &Caller, headers: &HeaderMap) -> Result<bool, AuthError> {
        if self.networks.contains(caller.ip()) {
            return Ok(true);
        }
        if self.auth.is_open() {
            // Without credentials configured, a token proves nothing; one that is sent is
            // refused rather than ignored.
            return match shoal_runtime::auth::bearer(headers)? {
                Some(_) => Err(AuthError::Forbidden("this tracker trusts no bearer token".into())),
                None => Ok(false),
            };
        }
        match self.auth.authorize(caller, headers) {
            Ok(_) => Ok(true),
            Err(AuthError::Unauthenticated) => Ok(false),
            // A client certificate that is not on the list is an ordinary node.
            Err(AuthError::Forbidden(_)) if shoal_runtime::auth::bearer(headers)?.is_none() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Per-source announce rates, on the tracker's own clock.
pub(crate) struct SourceLimiter {
    start: tokio::time::Instant,
    /// A sync lock held only for one bucket update.
    limiter: Mutex<Limiter<IpAddr>>,
}

impl SourceLimiter {
    pub(crate) fn new(rate: Rate) -> SourceLimiter {
        SourceLimiter { start: tokio::time::Instant::now(), limiter: Mutex::new(Limiter::new(rate, MAX_SOURCES)) }
    }

    fn admit(&self, ip: IpAddr) -> Admit {
        let now = self.start.elapsed();
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner).admit(&source_key(ip), now)
    }
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let router = Router::new()
        .route("/announce", post(announce))
        .route("/blobs/{digest}/peers", axum::routing::get(swarm_size))
        .layer(DefaultBodyLimit::max(MAX_ANNOUNCE_BODY))
        .with_state(state);
    shoal_runtime::request_id::with_request_id(router, "tracker")
}

async fn announce(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<AnnounceResponse>, ApiError> {
    let trusted = match state.trust.trusted(&caller, &headers) {
        Ok(t) => t,
        Err(e) => {
            state.metrics.announce(DENIED);
            return Err(ApiError { status: e.status(), code: e.code(), message: e.to_string(), retry_after: None });
        }
    };
    if !trusted && let Admit::No { retry_after } = state.limiter.admit(caller.ip()) {
        state.metrics.announce(RATE_LIMITED);
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "RATE_LIMITED",
            message: format!("too many announces from {}", caller.ip()),
            retry_after: Some(retry_after),
        });
    }
    let parsed = body
        .map_err(ApiError::from)
        .and_then(|b| serde_json::from_slice::<AnnounceRequest>(&b).map_err(ApiError::invalid_json));
    let req = match parsed {
        Ok(req) => req,
        Err(e) => {
            state.metrics.announce(BAD_REQUEST);
            return Err(e);
        }
    };
    if let Some(zone) = req.zone.as_deref().filter(|z| !shoal_core::api::is_valid_zone(z)) {
        state.metrics.announce(BAD_REQUEST);
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "BAD_REQUEST",
            message: format!("invalid zone {zone:?}: 1 to 63 letters, digits, '-', '_' or '.'"),
            retry_after: None,
        });
    }
    if !trusted && req.addr.ip().to_canonical() != caller.ip() {
        state.metrics.announce(DENIED);
        tracing::debug!(caller = %caller.addr, addr = %req.addr, "announce for another address refused");
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "DENIED",
            message: format!(
                "announce for {} from {}: a node announces its own address unless it is trusted",
                req.addr,
                caller.ip()
            ),
            retry_after: None,
        });
    }
    Ok(Json(state.announce(&req)))
}

async fn swarm_size(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(digest): axum::extract::Path<String>,
) -> Result<Json<SwarmSize>, ApiError> {
    let digest: shoal_core::Digest = digest.parse().map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "DIGEST_INVALID",
        message: format!("invalid digest: {e}"),
        retry_after: None,
    })?;
    Ok(Json(state.store.swarm_size(&digest, tokio::time::Instant::now())))
}

impl AppState {
    fn announce(&self, req: &AnnounceRequest) -> AnnounceResponse {
        let h = self.store.announce(req, tokio::time::Instant::now());
        self.metrics.announce(h.recorded.as_str());
        self.metrics.expired.inc_by(h.purged as u64);
        self.metrics.handout_size.observe(h.peers.len() as f64);
        self.metrics.set_sizes(self.store.n_peers(), self.store.n_blobs());
        if h.recorded != Recorded::Yes {
            tracing::debug!(blob = %req.blob, peer = %req.peer_id, addr = %req.addr, result = h.recorded.as_str(),
                "announce answered but not recorded");
        }
        tracing::trace!(blob = %req.blob, peer = %req.peer_id, n_peers = h.peers.len(), "announce");
        // A gateway whose share may still narrow comes back sooner (`handout::announce_interval`).
        let base = std::time::Duration::from_millis(self.interval_ms);
        let interval = shoal_core::handout::announce_interval(base, h.imports);
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        AnnounceResponse { peers: h.peers, interval_ms, imports: h.imports }
    }
}

/// An error answer: the status, a stable code and a human message.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1).
    retry_after: Option<Duration>,
}

impl ApiError {
    fn invalid_json(e: serde_json::Error) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "BAD_REQUEST",
            message: format!("invalid announce: {e}"),
            retry_after: None,
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "PAYLOAD_TOO_LARGE" } else { "BAD_REQUEST" };
        ApiError { status, code, message: r.body_text(), retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r =
            (self.status, Json(ErrorBody { code: self.code.to_string(), message: self.message })).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"shoal\""));
        }
        r
    }
}
