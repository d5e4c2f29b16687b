//! Who may use the agent's API: reading through an agent is bound to its host. Callers in
//! `api_networks` (the node's loopback by default, plus the node's pod network where pods pull
//! through it) are served; anyone else gets 403 `DENIED`, in the Registry's error form under
//! `/v2/` and as an `ErrorBody` elsewhere. `/health`, `/ready` and `/metrics` are not behind
//! it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shoal_core::net::Networks;
use shoal_runtime::{ApiError, Caller};

use crate::registry::error::{DENIED, RegistryError};

/// `router`, answering only callers in `networks`.
pub fn host_only(router: Router, networks: Networks) -> Router {
    router.layer(axum::middleware::from_fn_with_state(Arc::new(networks), check))
}

async fn check(State(networks): State<Arc<Networks>>, caller: Caller, req: Request, next: Next) -> Response {
    let ip = caller.ip();
    if networks.contains(ip) {
        return next.run(req).await;
    }
    tracing::debug!(%ip, path = req.uri().path(), "caller outside api_networks refused");
    let message = format!("{ip} may not use this agent: it serves only api_networks");
    if req.uri().path().starts_with("/v2") {
        RegistryError::new(StatusCode::FORBIDDEN, DENIED, message).into_response()
    } else {
        ApiError::new(StatusCode::FORBIDDEN, "DENIED", message).into_response()
    }
}
