//! HTTP over TLS: the listener every service's API is served on ([`HttpListener`], plain or
//! TLS), and the client's identity on each request ([`ClientIdentity`]).
//!
//! Handshakes run in their own tasks (at most [`MAX_PENDING_HANDSHAKES`] at once, each within
//! [`HANDSHAKE_TIMEOUT`]), so a client that connects and never says hello holds one slot for a
//! while, never the accept loop.
//!
//! For authorization: [`serve`](crate::serve) makes every request carry a
//! [`Caller`](crate::Caller), the client's address and the identity its certificate proved at
//! the handshake; a handler reads it with the `Caller` extractor, or the identity alone with
//! the [`ClientIdentity`] extractor (never rejects: `None` on a plain listener, a client
//! without a certificate, or a router run without `serve`), or [`client_identity`] on a
//! request's extensions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::Extensions;
use axum::http::request::Parts;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

use super::{ClientAuth, Identity, Link, Refusal, Side, Tls};
use crate::http::Caller;

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

/// A connection of an [`HttpListener`]: plain TCP, or TLS over it.
pub type HttpStream = Either<TcpStream, TlsStream<TcpStream>>;

impl HttpListener {
    /// The next connection (handshaken on a TLS listener), its remote address, and the
    /// identity its client's certificate proved (`None` on a plain listener or for a client
    /// that presented none where that is allowed). An error is the plain listener's `accept`
    /// failing (out of file descriptors and the like); a TLS listener handles those itself.
    pub async fn accept(&mut self) -> std::io::Result<(HttpStream, SocketAddr, Option<Identity>)> {
        match self {
            HttpListener::Plain(l) => {
                let (io, addr) = l.accept().await?;
                let _ = io.set_nodelay(true);
                Ok((Either::Left(io), addr, None))
            }
            HttpListener::Tls(l) => {
                let (io, addr) = l.accept().await;
                let _ = io.get_ref().0.set_nodelay(true);
                let identity = io.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(Identity::of_cert);
                Ok((Either::Right(io), addr, identity))
            }
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            HttpListener::Plain(l) => l.local_addr(),
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

/// The identity a request's client proved with its certificate, if any.
pub fn client_identity(extensions: &Extensions) -> Option<&Identity> {
    extensions.get::<Caller>().and_then(|c| c.identity.as_ref())
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
