//! The one error type of every service's HTTP edge: a status, a stable machine-readable code
//! (Registry v2 codes such as `BLOB_UNKNOWN`, `DIGEST_INVALID`) and a message, sent as a
//! `shoal_core::api::ErrorBody`. Library errors are mapped to it only at the edge.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shoal_core::Digest;
use shoal_core::api::ErrorBody;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds sent as `Retry-After`: the request may succeed if sent again then (a limit
    /// was full).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    /// 503 `UNAVAILABLE` with `Retry-After: <secs>`: a limit of this service is full.
    pub fn busy(message: impl Into<String>, secs: u32) -> ApiError {
        ApiError { retry_after: Some(secs), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(ErrorBody { code: self.code.into(), message: self.message });
        match self.retry_after {
            Some(secs) => (self.status, [(axum::http::header::RETRY_AFTER, secs.to_string())], body).into_response(),
            None => (self.status, body).into_response(),
        }
    }
}

/// A 200 response carrying a blob (or, for `HEAD`, an empty body) with its length and digest.
pub fn blob_response(digest: Digest, len: u64, body: axum::body::Body) -> Response {
    use axum::http::{HeaderMap, HeaderValue, header};
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    (StatusCode::OK, h, body).into_response()
}

/// Parses a digest from a URL, or answers 400 `DIGEST_INVALID`.
pub fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", format!("{s:?}: {e}")))
}
