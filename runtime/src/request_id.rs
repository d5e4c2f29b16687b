//! Request ids: one id per client request, carried from the agent's API to the origins and
//! trackers it asks on that request's behalf, so their logs can be joined.
//!
//! The id travels in the `X-Request-Id` header. [`with_request_id`] takes it from an incoming request
//! (or makes one when there is none or it is malformed), runs the handler inside a `request`
//! span that names it, keeps it in a task-local for the handler's outgoing calls
//! ([`current`]), and echoes it in the response. Work spawned on a request's behalf keeps the
//! id when its future is wrapped in [`inherit`].
//!
//! Invariant: an id is 1 to [`MAX_LEN`] characters of `[A-Za-z0-9._:-]`, so it is always a
//! valid header value and safe in a log line, whatever a client sent.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header that carries the id, in requests and responses.
pub const HEADER: &str = "x-request-id";

/// Longest id accepted from a client. Hard-coded; a UUID is 36.
pub const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// A checked request id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The id a client sent, if it is well formed.
    pub fn parse(s: &str) -> Option<RequestId> {
        let ok = !s.is_empty()
            && s.len() <= MAX_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        ok.then(|| RequestId(s.into()))
    }

    /// A fresh id: 16 random hex digits.
    pub fn random() -> RequestId {
        RequestId(format!("{:016x}", rand::random::<u64>()).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of the request this task works for, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` as work for request `id`: [`current`] returns it inside.
pub async fn scope<F: Future>(id: RequestId, fut: F) -> F::Output {
    CURRENT.scope(id, fut).await
}

/// Wraps a future about to be spawned so it keeps the current request id (if any) and span.
pub fn inherit<F>(fut: F) -> impl Future<Output = F::Output> + Send + 'static
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    let id = current();
    let fut = fut.instrument(tracing::Span::current());
    async move {
        match id {
            Some(id) => CURRENT.scope(id, fut).await,
            None => fut.await,
        }
    }
}

/// `router` with the request-id middleware around every route; `service` names the node
/// kind in the span.
pub fn with_request_id(router: axum::Router, service: &'static str) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(service, track))
}

async fn track(State(service): State<&'static str>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::random);
    let span =
        tracing::info_span!("request", service, request_id = %id, method = %req.method(), path = %req.uri().path());
    let started = tokio::time::Instant::now();
    let mut resp = CURRENT.scope(id.clone(), next.run(req)).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = resp.status().as_u16(),
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "request answered"
        );
    });
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn check(input: &str, ok: bool) {
        assert_eq!(RequestId::parse(input).is_some(), ok, "{input:?}");
    }

    #[test]
    fn ids_are_checked() {
        check("abc-123", true);
        check("0f1e:2d.3c_4b", true);
        check(&"a".repeat(MAX_LEN), true);
        check(&"a".repeat(MAX_LEN + 1), false);
        check("", false);
        check("has space", false);
        check("line\nbreak", false);
        check("ünï", false);
        assert_eq!(RequestId::random().as_str().len(), 16);
    }

    fn app() -> Router {
        let seen = || async { current().map(|id| id.to_string()).unwrap_or_default() };
        with_request_id(Router::new().route("/", get(seen)), "test")
    }

    async fn call(header: Option<&str>) -> (String, String) {
        let mut req = axum::http::Request::get("/");
        if let Some(h) = header {
            req = req.header(HEADER, h);
        }
        let resp = app().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let echoed = resp.headers()[HEADER].to_str().unwrap().to_string();
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        (echoed, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_layer_keeps_a_good_id_and_replaces_a_bad_one() {
        assert_eq!(call(Some("req-7")).await, ("req-7".to_string(), "req-7".to_string()));
        let (echoed, seen) = call(Some("bad id")).await;
        assert_eq!(echoed, seen);
        assert_ne!(echoed, "bad id");
        let (echoed, seen) = call(None).await;
        assert_eq!((echoed.len(), seen), (16, echoed.clone()));
    }

    #[tokio::test]
    async fn spawned_work_inherits_the_id() {
        let id = RequestId::parse("outer").unwrap();
        let got = scope(id.clone(), async { tokio::spawn(inherit(async { current() })).await.unwrap() }).await;
        assert_eq!(got, Some(id));
        assert_eq!(tokio::spawn(async { current() }).await.unwrap(), None);
    }
}
