//! `POST /preheat` on the agent: `{"name", "reference", "ns"?, "prefetch"?}`. A tag is
//! resolved through the origins (as a pull would), then the request goes to the origins that
//! own the manifest, which fetch the image's manifests, configs and layers into their stores
//! (`shoal_origin::preheat`). The origin's answer (202 with an id and every digest) is passed
//! through. With `prefetch`, the agent also downloads every listed blob into its own store
//! through the swarm, in the background and a bounded number at a time, so the first pull on
//! this host is local.
//!
//! Only a caller the agent's `auth` allows may preheat (401/403 in the Registry's error
//! form); its bearer token goes on to the origins, which check it again.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use shoal_core::Digest;
use shoal_core::registry::{Reference, RegistryHost, RepoName};

use super::error::{BLOB_UNKNOWN, MANIFEST_UNKNOWN, RegistryError};
use super::{RegistryState, fetch};
use crate::origin_client::Hints;

/// Blobs the agent downloads at once while prefetching. Hard-coded: each download already
/// spreads over many peers.
const PREFETCH_CONCURRENCY: usize = 4;
/// Most digests prefetched for one request. Hard-coded, as the origin's own bounds.
const MAX_PREFETCH: usize = 4096;

/// The body of the agent's `POST /preheat`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatRequest {
    pub name: String,
    pub reference: String,
    #[serde(default)]
    pub ns: Option<String>,
    /// Also download every blob into this agent's store.
    #[serde(default)]
    pub prefetch: bool,
}

/// `POST /preheat`.
pub async fn post_preheat(
    State(st): State<RegistryState>,
    caller: shoal_runtime::Caller,
    headers: axum::http::HeaderMap,
    body: Result<Json<PreheatRequest>, axum::extract::rejection::JsonRejection>,
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

async fn preheat(st: &RegistryState, req: PreheatRequest, bearer: Option<&str>) -> Result<Response, RegistryError> {
    let bad = |code, m: String| RegistryError::new(StatusCode::BAD_REQUEST, code, m);
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
    let body = serde_json::json!({"name": name.as_str(), "reference": digest.to_string(), "ns": ns_str});
    let (status, mut answer) =
        st.origins.preheat(digest, &body, bearer).await.map_err(|e| RegistryError::from_origin(e, MANIFEST_UNKNOWN))?;
    if status == 202 && req.prefetch {
        let digests: Vec<Digest> = answer["digests"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).take(MAX_PREFETCH).collect())
            .unwrap_or_default();
        let hints = Hints { name: Some(name.clone()), ns: ns_str.clone() };
        let st2 = st.clone();
        let n = digests.len();
        shoal_runtime::spawn("prefetch", st.shutdown.clone(), async move {
            prefetch(&st2, digests, &hints).await;
            Ok(())
        });
        if let Some(obj) = answer.as_object_mut() {
            obj.insert("prefetch".into(), serde_json::json!(n));
        }
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok((status, Json(answer)).into_response())
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
