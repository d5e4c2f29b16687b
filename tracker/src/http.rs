//! The tracker's HTTP API: `POST /announce`, and `GET /blobs/<digest>/peers` (how many live
//! nodes are in a blob's swarm, for operators' tools). Handlers are thin adapters over
//! [`crate::store::PeerStore`].
//!
//! Invariant: every error answer is an [`ErrorBody`] with a stable `code`, and nothing here
//! holds a lock across an `.await` (the store's locks live only inside its synchronous calls).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use shoal_core::api::{AnnounceRequest, AnnounceResponse, ErrorBody, SwarmSize};

use crate::metrics::{BAD_REQUEST, Metrics};
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
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<AnnounceResponse>, ApiError> {
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
        AnnounceResponse { peers: h.peers, interval_ms: self.interval_ms }
    }
}

/// An error answer: the status, a stable code and a human message.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn invalid_json(e: serde_json::Error) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "BAD_REQUEST", message: format!("invalid announce: {e}") }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "PAYLOAD_TOO_LARGE" } else { "BAD_REQUEST" };
        ApiError { status, code, message: r.body_text() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { code: self.code.to_string(), message: self.message })).into_response()
    }
}
