//! The agent's HTTP API, a thin adapter over the swarm and the origin client.
//!
//! - `GET /blobs/<digest>`: the blob's bytes, downloaded through the swarm if needed.
//! - `HEAD /blobs/<digest>`: its size, without downloading it.
//! - `GET /debug/blobs/<digest>`: where this node's bytes of the blob came from (JSON).
//!
//! Errors are mapped to status codes and Registry v2 error codes here and only here.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use shoal_runtime::{ApiError, blob_response, parse_digest};
use shoal_swarm::{Swarm, SwarmError};

use crate::metrics::AgentMetrics;
use crate::origin_client::{OriginClient, OriginError};

#[derive(Clone)]
pub struct AppState {
    pub swarm: Swarm,
    pub origins: OriginClient,
    pub metrics: AgentMetrics,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/blobs/{digest}", get(get_blob).head(get_blob))
        .route("/debug/blobs/{digest}", get(blob_stats))
        .with_state(state)
}

impl From<OriginError> for ApiError {
    fn from(e: OriginError) -> ApiError {
        let (status, code) = match &e {
            OriginError::NotFound(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            OriginError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
            OriginError::Unavailable { .. } | OriginError::WrongMetaInfo { .. } => {
                (StatusCode::BAD_GATEWAY, "UNAVAILABLE")
            }
        };
        ApiError::new(status, code, format!("{e:#}"))
    }
}

/// `Retry-After` when the node runs `max_downloads` already: downloads end, and a running
/// one also lets a caller join it.
pub(crate) const DOWNLOADS_RETRY_AFTER: u32 = 1;

/// Maps a swarm failure at the edge.
pub(crate) fn swarm_error(e: SwarmError) -> ApiError {
    if let SwarmError::TooManyDownloads { .. } = e {
        return ApiError::busy(format!("{e:#}"), DOWNLOADS_RETRY_AFTER);
    }
    let status = match &e {
        SwarmError::Store(s) if s.is_storage_full() => StatusCode::INSUFFICIENT_STORAGE,
        SwarmError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        SwarmError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, "UNAVAILABLE", format!("{e:#}"))
}

async fn get_blob(
    State(st): State<AppState>,
    method: Method,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    // A stored blob's metainfo is at hand; any other's comes from the origins.
    let stored = st.swarm.complete(digest).await.map_err(swarm_error)?;
    st.metrics.lookup(stored.is_some());
    let meta = match stored {
        Some(f) => f.meta().clone(),
        None => st.origins.metainfo(digest).await?,
    };
    let len = meta.length();
    if method == Method::HEAD {
        return Ok(blob_response(digest, len, Body::empty()));
    }
    // Streams while the blob downloads: each piece as soon as it is verified.
    let body = st.swarm.stream(meta, 0, len).await.map_err(swarm_error)?;
    Ok(blob_response(digest, len, Body::from_stream(st.metrics.counted(body))))
}

async fn blob_stats(State(st): State<AppState>, Path(digest): Path<String>) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    match st.swarm.stats(&digest) {
        Some(s) => Ok(axum::Json(s).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "this node has not seen the blob")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_node_answers_503_with_retry_after() {
        let resp = swarm_error(SwarmError::TooManyDownloads { max: 128 }).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], DOWNLOADS_RETRY_AFTER.to_string().as_str());
        let resp = swarm_error(SwarmError::ShuttingDown).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().get("retry-after").is_none());
    }
}
