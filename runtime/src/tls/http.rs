//! HTTP over TLS: the listener every service's API is served on ([`HttpListener`], plain or
//! TLS), and the client's identity on each request ([`ClientInfo`], [`ClientIdentity`]).
//!
//! Handshakes run in their own tasks (at most [`MAX_PENDING_HANDSHAKES`] at once, each within
//! [`HANDSHAKE_TIMEOUT`]), so a client that connects and never says hello holds one slot for a
//! while, never the accept loop.
//!
//! For authorization: [`serve`](crate::serve) makes every request carry
//! `axum::extract::ConnectInfo<ClientInfo>`; a handler or a middleware reads the identity with
//! the [`ClientIdentity`] extractor (never rejects: `None` on a plain listener, a client
//! without a certificate, or a router run without `serve`), or [`client_identity`] on a
//! request's extensions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::Extensions;
use axum::http::request::Parts;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

use super::{ClientAuth, Identity, Link, Refusal, Side, Tls};

/// Most TLS handshakes in progress on one listener. Hard-coded: a handshake is a few
/// milliseconds of CPU, and a client that stalls one waits out [`HANDSHAKE_TIMEOUT`].
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// How long a client has to finish its TLS handshake. Hard-coded.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A service's HTTP listener: plaintext, or TLS with this node's certificate.
pub enum HttpListener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl HttpListener {
    /// TLS with `tls` when it is set (client certificates as `auth` says), else plaintext.
    pub fn new(listener: TcpListener, tls: Option<&Tls>, auth: ClientAuth) -> std::io::Result<HttpListener> {
        Ok(match tls {
            Some(tls) => HttpListener::Tls(TlsListener::new(listener, tls, auth)?),
            None => HttpListener::Plain(listener),
        })
    }
}

impl From<TcpListener> for HttpListener {
    fn from(l: TcpListener) -> HttpListener {
        HttpListener::Plain(l)
    }
}

impl From<TlsListener> for HttpListener {
    fn from(l: TlsListener) -> HttpListener {
        HttpListener::Tls(l)
    }
}

impl Listener for HttpListener {
    type Io = Either<TcpStream, TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match self {
            HttpListener::Plain(l) => {
                let (io, addr) = Listener::accept(l).await;
                (Either::Left(io), addr)
            }
            HttpListener::Tls(l) => {
                let (io, addr) = l.accept().await;
                (Either::Right(io), addr)
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            HttpListener::Plain(l) => TcpListener::local_addr(l),
            HttpListener::Tls(l) => Ok(l.local),
        }
    }
}

/// A TCP listener whose connections come out handshaken. The accepting task ends when the
/// listener is dropped.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    pub fn new(listener: TcpListener, tls: &Tls, auth: ClientAuth) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = tls.acceptor(Link::Http, auth);
        let (tx, rx) = mpsc::channel(MAX_PENDING_HANDSHAKES);
        let tls = tls.clone();
        // Not `crate::spawn`: this task's life is the listener's (aborted on drop), not a
        // token's.
        let task = tokio::spawn(async move {
            let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
            loop {
                let Ok(permit) = pending.clone().acquire_owned().await else { return };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tx.closed() => return,
                };
                let (tcp, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx, tls) = (acceptor.clone(), tx.clone(), tls.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => {
                            let reason = Refusal::of_io(&e);
                            tls.count_refusal(Link::Http, Side::Server, reason);
                            tracing::debug!(%addr, reason = reason.label(), "tls handshake refused: {e}");
                        }
                        Err(_) => tls.count_refusal(Link::Http, Side::Server, Refusal::Timeout),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, task: task.abort_handle() })
    }

    async fn accept(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accepting task is gone (only if the runtime is shutting down).
            None => std::future::pending().await,
        }
    }
}

/// Who is at the other end of a request's connection.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// The identity of the client's certificate, checked at the handshake; `None` on a plain
    /// listener or for a client that presented none where that is allowed.
    pub identity: Option<Identity>,
}

impl Connected<IncomingStream<'_, HttpListener>> for ClientInfo {
    fn connect_info(stream: IncomingStream<'_, HttpListener>) -> ClientInfo {
        let identity = match stream.io() {
            Either::Left(_) => None,
            Either::Right(tls) => {
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(Identity::of_cert)
            }
        };
        ClientInfo { addr: *stream.remote_addr(), identity }
    }
}

/// The identity a request's client proved with its certificate, if any.
pub fn client_identity(extensions: &Extensions) -> Option<&Identity> {
    extensions.get::<ConnectInfo<ClientInfo>>().and_then(|c| c.0.identity.as_ref())
}

/// Extractor of [`client_identity`]; never rejects.
#[derive(Clone, Debug)]
pub struct ClientIdentity(pub Option<Identity>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIdentity {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<ClientIdentity, Infallible> {
        Ok(ClientIdentity(client_identity(&parts.extensions).cloned()))
    }
}
