//! The error type of the agent's `/v2/` tree: a status, a Registry v2 / OCI distribution error
//! code and a message, sent in the spec's form
//! `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"...","detail":null}]}`.
//!
//! The agent's other endpoints answer with `shoal_core::api::ErrorBody` through
//! `shoal_runtime::ApiError`; registry clients only understand this shape, so the two are kept
//! apart. Library errors are mapped here, at the edge.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shoal_core::registry::RouteError;
use shoal_swarm::SwarmError;

use super::tags::TagError;
use crate::origin_client::OriginError;

/// `BLOB_UNKNOWN`: a blob is not known to the registry (404).
pub const BLOB_UNKNOWN: &str = "BLOB_UNKNOWN";
/// `MANIFEST_UNKNOWN`: a manifest (by tag or digest) is not known (404).
pub const MANIFEST_UNKNOWN: &str = "MANIFEST_UNKNOWN";
/// `DIGEST_INVALID`: a malformed digest (400).
pub const DIGEST_INVALID: &str = "DIGEST_INVALID";
/// `NAME_INVALID`: a malformed repository name (400).
pub const NAME_INVALID: &str = "NAME_INVALID";
/// The manifest or reference is malformed.
pub const MANIFEST_INVALID: &str = "MANIFEST_INVALID";
/// `NAME_UNKNOWN`: the repository is not known (404).
pub const NAME_UNKNOWN: &str = "NAME_UNKNOWN";
/// `UNSUPPORTED`: an operation this read-only mirror does not offer (405), or no such
/// endpoint (404).
pub const UNSUPPORTED: &str = "UNSUPPORTED";
/// `UNAUTHORIZED`: credentials are required (401).
pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
/// `DENIED`: the caller may not do this (403).
pub const DENIED: &str = "DENIED";
/// Not a spec code: a `Range` that misses the blob (416).
pub const RANGE_INVALID: &str = "RANGE_INVALID";
/// Not a spec code: the origins or the swarm could not deliver (502/503/504).
pub const UNAVAILABLE: &str = "UNAVAILABLE";

/// An error answer of the `/v2/` tree.
#[derive(Debug)]
pub struct RegistryError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra response headers (`Content-Range` on a 416).
    pub headers: HeaderMap,
}

impl RegistryError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> RegistryError {
        RegistryError { status, code, message: message.into(), headers: HeaderMap::new() }
    }

    /// 416 with `Content-Range: bytes */<len>`.
    pub fn range_not_satisfiable(len: u64) -> RegistryError {
        let mut e = RegistryError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            RANGE_INVALID,
            format!("the range is outside the blob's {len} bytes"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
            e.headers.insert(header::CONTENT_RANGE, v);
        }
        e
    }

    /// 503 `UNAVAILABLE` with `Retry-After: <secs>`: a limit of the agent is full.
    pub fn busy(message: impl Into<String>, secs: u32) -> RegistryError {
        let mut e = RegistryError::new(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, message);
        e.headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        e
    }

    /// A failure of the origins to produce a blob's metainfo; `unknown` is the code for a
    /// blob they do not have (`BLOB_UNKNOWN` or `MANIFEST_UNKNOWN`).
    pub fn from_origin(e: OriginError, unknown: &'static str) -> RegistryError {
        let (status, code) = match &e {
            OriginError::NotFound(_) => (StatusCode::NOT_FOUND, unknown),
            OriginError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, UNAVAILABLE),
            OriginError::Unavailable { .. } | OriginError::WrongMetaInfo { .. } => {
                (StatusCode::BAD_GATEWAY, UNAVAILABLE)
            }
        };
        RegistryError::new(status, code, format!("{e:#}"))
    }
}

impl From<shoal_runtime::AuthError> for RegistryError {
    fn from(e: shoal_runtime::AuthError) -> RegistryError {
        let code = match e {
            shoal_runtime::AuthError::Unauthenticated => UNAUTHORIZED,
            shoal_runtime::AuthError::Forbidden(_) => DENIED,
        };
        let mut r = RegistryError::new(e.status(), code, e.to_string());
        r.headers = e.headers();
        r
    }
}

impl From<RouteError> for RegistryError {
    fn from(e: RouteError) -> RegistryError {
        let (status, code) = match &e {
            RouteError::NotFound => (StatusCode::NOT_FOUND, UNSUPPORTED),
            RouteError::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, UNSUPPORTED),
            RouteError::NameInvalid(_) => (StatusCode::BAD_REQUEST, NAME_INVALID),
            RouteError::TagInvalid(_) => (StatusCode::NOT_FOUND, MANIFEST_UNKNOWN),
            RouteError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, DIGEST_INVALID),
        };
        RegistryError::new(status, code, e.to_string())
    }
}

impl From<TagError> for RegistryError {
    fn from(e: TagError) -> RegistryError {
        let (status, code) = match &e {
            TagError::Unknown { .. } => (StatusCode::NOT_FOUND, MANIFEST_UNKNOWN),
            TagError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
        };
        RegistryError::new(status, code, format!("{e:#}"))
    }
}

impl From<SwarmError> for RegistryError {
    fn from(e: SwarmError) -> RegistryError {
        if let SwarmError::TooManyDownloads { .. } = e {
            return RegistryError::busy(format!("{e:#}"), crate::api::DOWNLOADS_RETRY_AFTER);
        }
        let status = match &e {
            SwarmError::Store(s) if s.is_storage_full() => StatusCode::INSUFFICIENT_STORAGE,
            SwarmError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            SwarmError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        RegistryError::new(status, UNAVAILABLE, format!("{e:#}"))
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}

#[derive(serde::Serialize)]
struct Entry<'a> {
    code: &'a str,
    message: &'a str,
    detail: Option<()>,
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = Body { errors: [Entry { code: self.code, message: &self.message, detail: None }] };
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut().extend(self.headers);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_has_the_spec_shape() {
        let resp = RegistryError::new(StatusCode::NOT_FOUND, MANIFEST_UNKNOWN, "no such tag").into_response();
        assert_eq!(resp.status(), 404);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no such tag", "detail": null}]})
        );
    }

    #[test]
    fn route_errors_map_to_codes() {
        let check = |e: RouteError, status: u16, code: &str| {
            let r = RegistryError::from(e);
            assert_eq!((r.status.as_u16(), r.code), (status, code));
        };
        check(RouteError::NotFound, 404, UNSUPPORTED);
        check(RouteError::Unsupported("pushing"), 405, UNSUPPORTED);
        check(RouteError::NameInvalid("x".into()), 400, NAME_INVALID);
        check(RouteError::TagInvalid("x".into()), 404, MANIFEST_UNKNOWN);
        check(RouteError::DigestInvalid(shoal_core::ParseDigestError::Hex), 400, DIGEST_INVALID);
    }

    #[test]
    fn a_full_node_answers_503_with_retry_after() {
        let e = RegistryError::from(SwarmError::TooManyDownloads { max: 2 });
        assert_eq!((e.status.as_u16(), e.code), (503, UNAVAILABLE));
        assert_eq!(e.headers[header::RETRY_AFTER], "1");
        assert!(e.message.contains("max_downloads"), "{}", e.message);
    }

    #[test]
    fn range_error_names_the_length() {
        let e = RegistryError::range_not_satisfiable(42);
        assert_eq!(e.status, 416);
        assert_eq!(e.headers[header::CONTENT_RANGE], "bytes */42");
    }
}
