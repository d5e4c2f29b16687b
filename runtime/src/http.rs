//! The HTTP server of every service (agent, origin, tracker, and the agent's metrics
//! listener): hyper's HTTP/1 connection with a timer, so no client holds a connection or a
//! slot longer than its deadlines allow.
//!
//! - `header_read_timeout`: a request's head must arrive whole within it, and an idle
//!   keep-alive connection is closed after it (hyper starts the timer whenever it waits for a
//!   head). A client that sends half a header and stalls is disconnected.
//! - `body_idle_timeout`: a request body that sends nothing for this long ends in an error
//!   (the handler sees a failed read and answers or drops the request).
//! - `write_timeout`: a write to the client that makes no progress for this long closes the
//!   connection, so a client that stops reading frees its connection and what it held.
//! - `max_connections`: connections open at once; a slot is taken before `accept`, so the
//!   connections beyond it wait in the listen backlog until one closes.
//!
//! One serve path for plain and TLS listeners ([`HttpListener`]): on a TLS listener the
//! handshake happens before a connection is handed to the accept loop (bounded and timed on
//! its own, see [`crate::tls`]), and the deadlines above then apply to the decrypted stream
//! the same way. The connection cap counts handshaken connections; handshakes in progress are
//! bounded by [`crate::tls::MAX_PENDING_HANDSHAKES`].
//!
//! Every request carries a [`Caller`] in its extensions: the connection's remote address and,
//! when TLS authenticated the client, the identity its certificate proved at the handshake
//! ([`Identity`]). Handlers take it with the [`Caller`] extractor for authorization
//! ([`crate::auth`]) and address checks.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::tls::{HttpListener, Identity};

/// The `http:` section of every service's config: the server's deadlines and its
/// connection cap.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Longest wait for a request's whole head, and for the next request on an idle
    /// keep-alive connection. Default 15s.
    pub header_read_timeout: crate::Duration,
    /// Longest a request body may send nothing. Default 30s.
    pub body_idle_timeout: crate::Duration,
    /// Longest a write to a client may make no progress. Default 30s.
    pub write_timeout: crate::Duration,
    /// Connections open at once; more wait until one closes. Default 4096.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            header_read_timeout: crate::Duration::from_secs(15),
            body_idle_timeout: crate::Duration::from_secs(30),
            write_timeout: crate::Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

impl HttpConfig {
    /// Checks what types cannot; errors name the key under `http.`.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("http.max_connections must be at least 1".into());
        }
        for (key, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_idle_timeout", self.body_idle_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            if d.get().is_zero() {
                return Err(format!("http.{key} must be more than 0s"));
            }
        }
        Ok(())
    }
}

/// Who sent a request: the connection's remote address, and the client certificate's
/// identity when TLS authenticated one (`None` on a plain connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub addr: SocketAddr,
    pub identity: Option<Identity>,
}

impl Caller {
    /// The remote IP, an IPv4-mapped IPv6 address as its IPv4 address.
    pub fn ip(&self) -> std::net::IpAddr {
        self.addr.ip().to_canonical()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Self::Rejection> {
        // Only a router not served by `serve` lacks it: a bug, never a client's doing.
        parts.extensions.get::<Caller>().cloned().ok_or((StatusCode::INTERNAL_SERVER_ERROR, "no caller information\n"))
    }
}

/// Serves `router` on `listener` (plain or TLS) with the default [`HttpConfig`] until
/// `shutdown` is cancelled, then lets in-flight requests finish for at most `grace`.
pub async fn serve(
    listener: impl Into<HttpListener>,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> io::Result<()> {
    serve_with(listener, router, shutdown, grace, &HttpConfig::default()).await
}

/// [`serve`] with the deadlines and connection cap of `http`.
pub async fn serve_with(
    listener: impl Into<HttpListener>,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    http: &HttpConfig,
) -> io::Result<()> {
    let mut listener = listener.into();
    let slots = Arc::new(Semaphore::new(http.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(http.header_read_timeout.get());
    let body_idle = http.body_idle_timeout.get();
    let write_timeout = http.write_timeout.get();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        // A slot before `accept`: past the cap, connections wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(io::Error::other)?,
            _ = shutdown.cancelled() => break,
        };
        let (stream, remote, identity) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("http accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let caller = Caller { addr: remote, identity };
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let mut req = req.map(|b| Body::new(IdleBody::new(b, body_idle)));
            req.extensions_mut().insert(axum::extract::ConnectInfo(caller.addr));
            req.extensions_mut().insert(caller.clone());
            router.clone().oneshot(req)
        });
        let conn = builder.serve_connection(TokioIo::new(WriteDeadline::new(stream, write_timeout)), service);
        let conn = graceful.watch(conn);
        conns.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%remote, "http connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "http drain deadline passed; dropping in-flight requests");
        }
    }
    conns.abort_all();
    Ok(())
}

/// A request body that fails when it sends nothing for its timeout.
struct IdleBody {
    inner: Incoming,
    timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
}

impl IdleBody {
    fn new(inner: Incoming, timeout: Duration) -> IdleBody {
        IdleBody { inner, timeout, idle: None }
    }
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyIdle(pub Duration);

impl hyper::body::Body for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.idle = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let idle = this.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(idle.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(BodyIdle(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream whose writes fail once one makes no progress for its timeout.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline { inner, timeout, stalled: None }
    }

    /// Called with a write's poll result: resets the deadline on progress, arms it on
    /// `Pending`, and turns a passed deadline into an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, res: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if res.is_ready() {
            self.stalled = None;
            return res;
        }
        let timeout = self.timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("a write made no progress for {timeout:?}"))))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, res)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::response::IntoResponse;
    use axum::routing::{get, put};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::auth::{AuthConfig, Authorizer};
    use crate::tls::test_ca::{self, TestCa};
    use crate::tls::{ClientAuth, Tls};

    /// Longest any step of these tests may take before it counts as hung.
    const BOUND: Duration = Duration::from_secs(20);

    fn quick(max_connections: usize) -> HttpConfig {
        HttpConfig {
            header_read_timeout: crate::Duration::from_millis(300),
            body_idle_timeout: crate::Duration::from_millis(300),
            write_timeout: crate::Duration::from_millis(300),
            max_connections,
        }
    }

    async fn start(router: Router, http: HttpConfig) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        start_on(listener.into(), router, http).await
    }

    async fn start_on(
        listener: HttpListener,
        router: Router,
        http: HttpConfig,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            serve_with(listener, router, s, Duration::from_secs(1), &http).await.unwrap();
        });
        (addr, stop, task)
    }

    fn hello() -> Router {
        Router::new().route("/", get(|caller: Caller| async move { format!("hello {}", caller.ip()) }))
    }

    /// Reads until the server closes the connection; the bytes read.
    async fn until_closed(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(BOUND, s.read(&mut buf)).await.expect("the server closes the connection") {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[tokio::test]
    async fn half_a_header_then_silence_is_disconnected() {
        let (addr, stop, task) = start(hello(), quick(16)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        let answer = until_closed(&mut s).await;
        // hyper answers 408 or just closes; either way the connection is gone.
        assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
        // A whole request on a new connection is still served, with its caller.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let answer = String::from_utf8(until_closed(&mut s).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello 127.0.0.1"), "{answer}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let (addr, stop, task) = start(hello(), quick(16)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answer = String::from_utf8(until_closed(&mut s).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_slot() {
        let (addr, stop, task) = start(hello(), HttpConfig { max_connections: 1, ..HttpConfig::default() }).await;
        // The first connection takes the only slot and holds it (keep-alive).
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(BOUND, first.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // The second connects (the kernel's backlog) but is not served while the first is open.
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
        assert!(waited.is_err(), "served past the cap: {waited:?}");
        drop(first);
        let answer = String::from_utf8(until_closed(&mut second).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "served once the slot is free: {answer}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_stalled_request_body_fails_the_read() {
        let router = Router::new().route(
            "/",
            put(|body: Body| async move {
                match axum::body::to_bytes(body, 1 << 20).await {
                    Ok(b) => format!("read {}", b.len()),
                    Err(e) => format!("body failed: {e}"),
                }
            }),
        );
        let (addr, stop, task) = start(router, quick(16)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..").await.unwrap();
        let answer = String::from_utf8(until_closed(&mut s).await).unwrap();
        assert!(answer.contains("body failed") && answer.contains("sent nothing"), "{answer}");
        stop.cancel();
        task.await.unwrap();
    }

    /// A response body that never ends and says when it is dropped.
    struct Endless(Arc<AtomicBool>);

    impl Drop for Endless {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_loses_its_connection() {
        let dropped = Arc::new(AtomicBool::new(false));
        let d = dropped.clone();
        let router = Router::new().route(
            "/",
            get(move || {
                let guard = Endless(d.clone());
                let chunks = futures::stream::repeat_with(move || {
                    let _ = &guard;
                    Ok::<_, io::Error>(Bytes::from(vec![0u8; 64 << 10]))
                });
                async move { Body::from_stream(chunks) }
            }),
        );
        let (addr, stop, task) = start(router, quick(16)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        // Never read: the socket buffers fill, the server's writes stall, and the deadline
        // closes the connection, dropping the response body.
        tokio::time::timeout(BOUND, async {
            while !dropped.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the stalled response is dropped");
        drop(s);
        stop.cancel();
        task.await.unwrap();
    }

    /// A TLS server's config (client certificates optional, as kubelet probes and the CLI
    /// need), and a CA that issues its clients' certificates, all under `dir`.
    fn tls_server(dir: &std::path::Path) -> (TestCa, Tls) {
        let ca = TestCa::new("shoal test");
        let mut cfg = ca.write(dir, "server", &ca.issue("shoal-origin")).unwrap();
        cfg.http_client_auth = ClientAuth::Optional;
        (ca, Tls::load(&cfg).unwrap())
    }

    /// A TLS connection to `addr` presenting `cert` (none: no certificate).
    async fn tls_connect(
        cert: Option<&test_ca::NodeCert>,
        trust: &Tls,
        addr: SocketAddr,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(test_ca::client_config(cert, trust)));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        tokio::time::timeout(BOUND, connector.connect(name, tcp)).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn the_deadlines_hold_on_a_tls_listener() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, server) = tls_server(dir.path());
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = HttpListener::new(tcp, Some(&server), ClientAuth::Optional).unwrap();
        let (addr, stop, task) = start_on(listener, hello(), quick(16)).await;
        let client = ca.issue("spiffe://shoal/agent-1");
        // Handshaken, then half a header and silence: disconnected like a plain client.
        let mut s = tls_connect(Some(&client), &server, addr).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        let answer = until_closed(&mut s).await;
        assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
        // An idle keep-alive TLS connection is closed too, after its answer.
        let mut s = tls_connect(Some(&client), &server, addr).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answer = String::from_utf8(until_closed(&mut s).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello 127.0.0.1"), "{answer}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_on_a_tls_listener_too() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, server) = tls_server(dir.path());
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = HttpListener::new(tcp, Some(&server), ClientAuth::Optional).unwrap();
        let (addr, stop, task) =
            start_on(listener, hello(), HttpConfig { max_connections: 1, ..HttpConfig::default() }).await;
        let client = ca.issue("spiffe://shoal/agent-1");
        let mut first = tls_connect(Some(&client), &server, addr).await;
        first.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(BOUND, first.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // The second handshakes (the listener's own task) but is not served while the first
        // holds the only slot.
        let mut second = tls_connect(Some(&client), &server, addr).await;
        second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
        assert!(waited.is_err(), "served past the cap: {waited:?}");
        drop(first);
        let answer = String::from_utf8(until_closed(&mut second).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "served once the slot is free: {answer}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_allowed_certificate_identity_is_authorized_from_the_tls_session() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, server) = tls_server(dir.path());
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "sesame\n").unwrap();
        let auth =
            AuthConfig { tokens_file: Some(tokens), identities: vec![Identity::named("spiffe://shoal/origin-0")] }
                .load()
                .unwrap();
        let router = Router::new().route(
            "/write",
            put(
                |axum::extract::State(auth): axum::extract::State<Authorizer>,
                 caller: Caller,
                 headers: axum::http::HeaderMap| async move {
                    let who = caller.identity.as_ref().map_or("nobody".to_string(), |i| i.to_string());
                    match auth.authorize(&caller, &headers) {
                        Ok(_) => format!("allowed {who}").into_response(),
                        Err(e) => e.into_response(),
                    }
                },
            )
            .with_state(auth),
        );
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = HttpListener::new(tcp, Some(&server), ClientAuth::Optional).unwrap();
        let (addr, stop, task) = start_on(listener, router, HttpConfig::default()).await;
        let url = format!("https://{addr}/write");
        let client = |cert: Option<&test_ca::NodeCert>| {
            reqwest::Client::builder().use_preconfigured_tls(test_ca::client_config(cert, &server)).build().unwrap()
        };
        let put = |c: reqwest::Client, token: Option<&str>| {
            let mut r = c.put(&url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            async move {
                let r = r.send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        // The identity the handshake proved is on the request, and an allowed one needs no token.
        let allowed = ca.issue("spiffe://shoal/origin-0");
        assert_eq!(put(client(Some(&allowed)), None).await, (200, "allowed spiffe://shoal/origin-0".into()));
        // A DNS SAN names a node when it has no URI SAN.
        let dns = ca.issue("agent-3.shoal.svc");
        let (status, body) = put(client(Some(&dns)), None).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("agent-3.shoal.svc") && body.contains("DENIED"), "{body}");
        // Another CA's certificate with the allowed name never reaches the handler.
        let impostor = TestCa::new("another").issue("spiffe://shoal/origin-0");
        assert!(client(Some(&impostor)).put(&url).send().await.is_err());
        // No certificate: 401, or a token.
        assert_eq!(put(client(None), None).await.0, 401);
        assert_eq!(put(client(None), Some("sesame")).await, (200, "allowed nobody".into()));
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn config_defaults_and_checks() {
        let c: HttpConfig = crate::config::parse("").unwrap();
        assert_eq!(c, HttpConfig::default());
        assert_eq!(c.header_read_timeout.get(), Duration::from_secs(15));
        assert_eq!(c.max_connections, 4096);
        assert!(HttpConfig { max_connections: 0, ..c.clone() }.validate().unwrap_err().contains("max_connections"));
        let zero = HttpConfig { write_timeout: crate::Duration::from_secs(0), ..c.clone() };
        assert!(zero.validate().unwrap_err().contains("http.write_timeout"));
        assert!(crate::config::parse::<HttpConfig>("header_timeout: 1s").is_err());
    }
}
