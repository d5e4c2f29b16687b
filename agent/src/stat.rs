//! Read-only endpoints for `shoal` and other operators' tools:
//!
//! - `GET /stat/blobs/<digest>`: where a blob stands. It starts no download and records
//!   nothing at the tracker.
//! - `GET /preheat/<origin>/<id>`: the state of a preheat that `POST /preheat` started (its
//!   answer names the `origin` and the `id`), asked of that origin.
//!
//! The answer is a `shoal_core::api::BlobStat`: the blob's size and pieces (from the local
//! store, else from the origins, which may fetch it from their backend to answer), this
//! agent's copy and byte counts, the swarm's size at its tracker, and the ring owners.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use shoal_core::api::{BlobStat, LocalCopy};
use shoal_core::ring::Ring;
use shoal_runtime::{ApiError, parse_digest};
use shoal_swarm::Swarm;
use shoal_swarm::announce::TrackerClient;

use crate::api::swarm_error;
use crate::origin_client::OriginClient;

/// How long the stat waits for the tracker. Hard-coded: a stat is for people, and a slow
/// tracker is reported as none.
const TRACKER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct StatState {
    pub swarm: Swarm,
    pub origins: OriginClient,
    pub ring: Ring,
    pub trackers: TrackerClient,
}

impl StatState {
    pub fn new(
        swarm: Swarm,
        origins: OriginClient,
        ring: Ring,
        tracker_urls: Vec<String>,
        tls: Option<&shoal_runtime::Tls>,
    ) -> StatState {
        StatState { swarm, origins, ring, trackers: TrackerClient::new(tracker_urls, TRACKER_TIMEOUT, tls) }
    }
}

pub fn router(state: StatState) -> Router {
    Router::new()
        .route("/stat/blobs/{digest}", get(stat))
        .route("/preheat/{origin}/{id}", get(preheat_status))
        .with_state(state)
}

async fn preheat_status(
    State(st): State<StatState>,
    Path((origin, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "UNKNOWN", format!("no origin {origin:?} in the ring"));
    match st.origins.preheat_status(&origin, &id).await.ok_or_else(unknown)? {
        Ok((status, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((status, Json(body)).into_response())
        }
        Err(e) => Err(ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", e)),
    }
}

async fn stat(State(st): State<StatState>, Path(digest): Path<String>) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    let stored = st.swarm.complete(digest).await.map_err(swarm_error)?;
    let meta = match &stored {
        Some(f) => f.meta().clone(),
        None => st.origins.metainfo(digest).await?,
    };
    let counts = st.swarm.stats(&digest).unwrap_or_default();
    let local = LocalCopy {
        complete: stored.is_some(),
        from_origin: counts.from_origin,
        from_peers: counts.from_peers,
        uploaded: counts.uploaded,
    };
    let swarm = match st.trackers.swarm_size(&digest).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(%digest, "no swarm size for a stat: {e:#}");
            None
        }
    };
    let body = BlobStat {
        digest,
        size: meta.length(),
        piece_length: meta.piece_length(),
        pieces: meta.num_pieces(),
        local,
        swarm,
        origins: st.ring.owners(&digest).into_iter().map(|o| o.id.clone()).collect(),
    };
    Ok(Json(body).into_response())
}
