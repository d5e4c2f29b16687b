//! `POST /preheat` on the agent ([`AgentPreheatRequest`]). A tag is
//! resolved through the origins (as a pull would), then the request goes to the origins that
//! own the manifest, which fetch the image's manifests, configs and layers into their stores
//! (`shoal_origin::preheat`). The origin's status (202 with an id and every digest) comes back
//! as a [`shoal_core::api::PreheatAnswer`] naming that origin; its refusals are passed
//! through. With `prefetch`, the agent also downloads every listed blob into its own store
//! through the swarm, in the background and a bounded number at a time, so the first pull on
//! this host is local. `"pin": true` pins the image's blobs on the origins, and with
//! `prefetch` in this agent's store too (never evicted); `"pin": false` unpins them there.
//!
//! Only a caller the agent's `auth` allows may preheat (401/403 in the Registry's error
//! form); its bearer token goes on to the origins, which check it again.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use shoal_core::Digest;
use shoal_core::api::{AgentPreheatRequest, PreheatRequest};
use shoal_core::registry::{Reference, RegistryHost, RepoName};

use super::error::{BLOB_UNKNOWN, MANIFEST_UNKNOWN, RegistryError};
use super::{RegistryState, fetch};
use crate::origin_client::{Hints, PreheatReply};

/// Blobs the agent downloads at once while prefetching. Hard-coded: each download already
/// spreads over many peers.
const PREFETCH_CONCURRENCY: usize = 4;
/// Most digests prefetched for one request. Hard-coded, as the origin's own bounds.
const MAX_PREFETCH: usize = 4096;
/// `Retry-After` of a prefetch refused because `max_prefetches` are running.
pub const PREFETCH_RETRY_AFTER: u32 = 10;

/// `POST /preheat`.
pub async fn post_preheat(
    State(st): State<RegistryState>,
    caller: shoal_runtime::Caller,
    headers: axum::http::HeaderMap,
    body: Result<Json<AgentPreheatRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let res = async {
        let grant = st.auth.authorize(&caller, &headers)?;
        let Json(req) =
            body.map_err(|r| RegistryError::new(r.status(), super::error::MANIFEST_INVALID, r.body_text()))?;
        preheat(&st, req, grant.bearer.as_deref()).await
    };
    match res.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn preheat(
    st: &RegistryState,
    req: AgentPreheatRequest,
    bearer: Option<&str>,
) -> Result<Response, RegistryError> {
    let bad = |code, m: String| RegistryError::new(StatusCode::BAD_REQUEST, code, m);
    // Held by the prefetch until its last blob; taken first, so a refusal starts nothing.
    let prefetching = match req.prefetch {
        true => {
            Some(st.prefetches.try_take().map_err(|full| RegistryError::busy(full.to_string(), PREFETCH_RETRY_AFTER))?)
        }
        false => None,
    };
    let name = RepoName::parse(&req.name).map_err(|e| bad(super::error::NAME_INVALID, e.to_string()))?;
    let reference = Reference::parse(&req.reference).map_err(|e| bad(super::error::MANIFEST_INVALID, e.to_string()))?;
    let ns = match req.ns.as_deref().filter(|s| !s.is_empty()) {
        Some(h) => Some(RegistryHost::parse(h).map_err(|e| bad(super::error::NAME_INVALID, e.to_string()))?),
        None => None,
    };
    let ns_str = ns.as_ref().map(|h| h.to_string());
    let digest = match &reference {
        Reference::Digest(d) => *d,
        Reference::Tag(tag) => st.tags.resolve(ns_str.as_deref(), &name, tag).await?,
    };
    let body =
        PreheatRequest { name: name.to_string(), reference: digest.to_string(), ns: ns_str.clone(), pin: req.pin };
    let reply =
        st.origins.preheat(digest, &body, bearer).await.map_err(|e| RegistryError::from_origin(e, MANIFEST_UNKNOWN))?;
    let mut answer = match reply {
        PreheatReply::Started(answer) => answer,
        PreheatReply::Other { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            return Ok((status, Json(body)).into_response());
        }
    };
    let digests: Vec<Digest> = answer.status.digests.iter().copied().take(MAX_PREFETCH).collect();
    // Pinned before they are downloaded, so no eviction takes them in between; unpinned
    // whether prefetched or not.
    if let Some(pin) = req.pin.filter(|p| !p || req.prefetch) {
        for d in &digests {
            if let Err(e) = st.swarm.pin(*d, pin).await {
                tracing::warn!(%d, "cannot record the pin: {e:#}");
            }
        }
    }
    if let Some(running) = prefetching {
        let hints = Hints { name: Some(name.clone()), ns: ns_str.clone() };
        let st2 = st.clone();
        answer.prefetch = Some(digests.len());
        shoal_runtime::spawn("prefetch", st.shutdown.clone(), async move {
            prefetch(&st2, digests, &hints).await;
            drop(running);
            Ok(())
        });
    }
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Downloads `digests` into the agent's store, a bounded number at a time; failures are
/// logged (a later pull retries them).
async fn prefetch(st: &RegistryState, digests: Vec<Digest>, hints: &Hints) {
    let failed = futures::stream::iter(digests)
        .map(|d| async move {
            match fetch(st, d, BLOB_UNKNOWN, hints).await {
                Ok(_) => 0usize,
                Err(e) => {
                    tracing::warn!(%d, "prefetch failed: {}", e.message);
                    1
                }
            }
        })
        .buffer_unordered(PREFETCH_CONCURRENCY)
        .fold(0, |acc, f| async move { acc + f })
        .await;
    tracing::info!(failed, "prefetch finished");
}

#[cfg(test)]
mod tests {
    use shoal_core::ring::{OriginNode, Ring};

    use super::*;

    /// The registry state of an agent whose one origin does not answer, with one prefetch
    /// slot; the token stops its swarm.
    async fn state(dir: &std::path::Path) -> (RegistryState, tokio_util::sync::CancellationToken) {
        let origin =
            OriginNode { id: "o0".into(), http: "http://127.0.0.1:9".into(), peer: "127.0.0.1:9".parse().unwrap() };
        let ring = Ring::new(vec![origin], 1).unwrap();
        let registry = prometheus::Registry::new();
        let cfg = shoal_swarm::SwarmConfig { store_dir: dir.to_path_buf(), ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let role = shoal_swarm::Role::Agent { origins: ring.clone() };
        let swarm = shoal_swarm::Swarm::start(cfg, listener, &registry, role, None, shutdown.clone()).unwrap();
        let st = RegistryState {
            swarm,
            origins: crate::origin_client::OriginClient::new(ring.clone(), std::time::Duration::from_secs(5), None),
            tags: super::super::TagResolver::new(ring, std::time::Duration::from_secs(30), None),
            metrics: crate::metrics::AgentMetrics::new(&registry).unwrap(),
            shutdown: shutdown.clone(),
            auth: shoal_runtime::Authorizer::open(),
            prefetches: shoal_runtime::Cap::new("prefetches", "max_prefetches", 1),
        };
        (st, shutdown)
    }

    fn request(prefetch: bool) -> AgentPreheatRequest {
        AgentPreheatRequest {
            name: "team/app".into(),
            reference: Digest::of(b"m").to_string(),
            ns: None,
            prefetch,
            pin: None,
        }
    }

    /// `max_prefetches` prefetches run at once: one more is answered 503 with `Retry-After`
    /// before anything is asked of the origins; a preheat without prefetch is not held back.
    #[tokio::test]
    async fn prefetches_past_max_prefetches_get_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let (st, shutdown) = state(dir.path()).await;
        let running = st.prefetches.try_take().unwrap();
        let err = preheat(&st, request(true), None).await.expect_err("refused while the only prefetch runs");
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.headers[axum::http::header::RETRY_AFTER], PREFETCH_RETRY_AFTER.to_string().as_str());
        assert!(err.message.contains("max_prefetches"), "{}", err.message);
        // Past the cap, the request reaches the origins, which do not answer here.
        let err = preheat(&st, request(false), None).await.expect_err("no origin answers");
        assert_ne!(err.status, StatusCode::SERVICE_UNAVAILABLE, "{}", err.message);
        drop(running);
        let err = preheat(&st, request(true), None).await.expect_err("no origin answers");
        assert_ne!(err.status, StatusCode::SERVICE_UNAVAILABLE, "{}", err.message);
        assert_eq!(st.prefetches.available(), 1, "a prefetch that did not start gives its slot back");
        shutdown.cancel();
    }
}
