//! The connection driver: one task per peer connection, owning the socket.
//!
//! After the handshake the socket is split: a writer task drains a channel of outgoing frames
//! (sending a keep-alive when idle), and the reader loop decodes frames and dispatches them.
//! Every read and write has a deadline. A protocol violation, a corrupt piece or a deadline
//! closes this connection and nothing else; a corrupt piece or a bad frame also blacklists
//! the remote for `blacklist_duration`.
//!
//! With TLS the socket is wrapped first (mutual, within `handshake_timeout`), then the wire
//! `Handshake` runs inside it, and the peer id it claims must be bound to the identity of the
//! certificate the remote proved (`PeerId::is_bound_to`); otherwise the connection is refused.
//! Who the remote is for the blacklist ([`Remote`]) is that identity and its IP address, never
//! the peer id it claims: a connection that claims another node's id and then misbehaves gets
//! only itself shunned.
//!
//! Uploads: a `Request` is served by a short task holding one of the connection's upload
//! permits, released only once the piece is written to the socket, so a connection has at
//! most `max_uploads_per_connection` uploads queued. On a plain TCP connection (with
//! `swarm.sendfile`, the default) the writer sends the piece with `sendfile(2)` from the
//! blob's open file, which holds no piece in memory; otherwise (TLS) the task first reads the
//! piece into a buffer within the node's `upload_memory`. A piece is never cut short: a file
//! that ends before the piece does (truncated under the upload) closes the connection, since
//! its head already promised the whole piece. A connection's
//! requests beyond `peer_request_rate` a second are answered "busy" at once. On an origin, an
//! upload counts in the blob's seed budget from admission until it is written, and is given
//! back if it never is ([`SeedCharge`]). A request for a
//! stored blob that is not open (closed for being idle) opens it; one for a blob the store
//! does not hold (never had, or evicted) is answered `Reject` `UnknownBlob`.
//!
//! Downloads: a piece frame is read into a pooled buffer, then checked against its hash and
//! written to the store in a task of its own ([`receive_piece`]) while the reader reads on,
//! up to [`MAX_VERIFYING`] per connection while the node has free slots for them
//! (`blocking_threads`), so one peer's stream hashes and writes on more than one core and the
//! pieces held for this stay bounded; without a slot the reader waits for the piece, as it
//! always did. Their `PieceOk`s may reach the download in any order, and all of them before
//! the connection's `PeerGone`.
//!
//! A received piece that fails its hash closes the connection, after an `Error` frame
//! (`ERROR_CORRUPT_PIECE`) naming the piece, so the sender can check its own copy; a node told
//! so hashes that piece from its disk again and drops the blob if it fails there too.
//!
//! The writer's queue of control frames (everything but piece data) is bounded in bytes. Past
//! [`QUEUE_PAUSE`] the reader stops reading: a peer that sends requests and does not read the
//! answers fills its own socket, not our memory, and is dropped by the write deadline like any
//! peer that stops reading. Senders that cannot wait (download actors, `Have` broadcasts) may
//! go on to [`QUEUE_MAX`]; a frame past it closes the connection (not a peer fault: a congested
//! peer looks the same).
//!
//! Inbound connections: an accepted socket waits for its handshake holding one of the node's
//! pending-handshake permits, not a connection slot, and takes an inbound slot only once the
//! handshake is done (see [`Peers`](crate::peers::Peers)), so idle sockets never keep the
//! node from dialing.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use prometheus::IntGauge;
use shoal_core::seeding;
use shoal_core::wire::{
    self, DecodeError, ERROR_CORRUPT_PIECE, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, RejectReason,
};
use shoal_core::{Digest, PeerId};
use shoal_runtime::tls::{Identity, Link, Side};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::download::Event;
use crate::node::{BlobEntry, Node};
use crate::peers::Slot;
use crate::store::BlobFile;

/// Control bytes queued for the writer past which the reader stops reading until the writer
/// has drained them. Hard-coded: honest traffic queues a few KiB (requests and answers are
/// bounded by the pipelines, `Have`s by the rate pieces arrive).
pub(crate) const QUEUE_PAUSE: usize = 256 << 10;
/// Control bytes queued at most: a frame that would go past it closes the connection.
/// Hard-coded; only senders that cannot wait reach it (the reader pauses at [`QUEUE_PAUSE`]).
pub(crate) const QUEUE_MAX: usize = 4 << 20;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer sent an invalid frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("deadline of {0:?} passed")]
    Timeout(Duration),
    #[error("peer broke the protocol: {0}")]
    Protocol(String),
    #[error("peer sent piece {piece} of {blob} that failed its hash")]
    CorruptPiece { blob: Digest, piece: u32 },
    #[error("connection refused: {0}")]
    Refused(#[from] Refusal),
    #[error("tls handshake: {0}")]
    Tls(std::io::Error),
    #[error("peer does not read: {QUEUE_MAX} bytes of frames queued for it")]
    QueueFull,
    #[error("peer stalled mid-frame: the rest of a frame did not arrive within {0:?}")]
    Stalled(Duration),
    #[error("closed")]
    Closed,
}

/// Why the connection table refused a handshaken connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("connected to self")]
    OwnId,
    #[error("peer is blacklisted")]
    Shunned,
    #[error("duplicate connection")]
    Duplicate,
    #[error("peer id not bound to the certificate's identity")]
    UnboundId,
    #[error("no inbound connection slot free")]
    Full,
}

/// Who is at the other end of a connection, as far as TLS and the socket can tell: what the
/// blacklist is keyed by. The peer id a remote claims is not part of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Remote {
    /// The identity its certificate proved; `None` without TLS.
    pub identity: Option<Identity>,
    /// Its IP address. Part of the key with TLS too: nodes that share a certificate (a
    /// DaemonSet's) are told apart by it, so one of them misbehaving shuns only itself.
    pub ip: IpAddr,
}

impl Remote {
    pub fn plain(addr: SocketAddr) -> Remote {
        Remote { identity: None, ip: addr.ip() }
    }
}

impl ConnError {
    /// Whether the peer misbehaved (as opposed to the network failing).
    fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            ConnError::Decode(_) | ConnError::Protocol(_) | ConnError::CorruptPiece { .. } | ConnError::Stalled(_)
        )
    }
}

/// One frame to write: a header or whole small message, and piece data after it.
pub(crate) struct Out {
    head: Bytes,
    data: Option<Payload>,
    /// Bytes of this frame counted in the connection's [`SendQueue`] (control frames; piece
    /// uploads are bounded by their permits instead).
    counted: usize,
    /// Upload permits (the connection's slot, and the node's buffer memory for a piece read
    /// into memory) released once the data is on the socket.
    _permit: Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)>,
    /// An origin's count of this upload in its seed budget, kept once the piece is written.
    charge: Option<SeedCharge>,
    /// The last frame: the writer stops once it is out.
    last: bool,
}

/// A piece's bytes after its head.
enum Payload {
    /// Read into memory.
    Bytes(Bytes),
    /// Still in the blob's file: the writer sends it with `sendfile(2)`.
    File(FileRange),
}

/// Bytes of an open blob file that a plain TCP writer sends with `sendfile(2)`. The file is
/// held open, so a blob evicted (unlinked) or committed (renamed) meanwhile is still read.
struct FileRange {
    file: Arc<BlobFile>,
    offset: u64,
    len: usize,
    /// What the bytes are, for errors.
    blob: Digest,
    piece: u32,
}

/// The write half of a connection: an `AsyncWrite`, and on plain TCP the socket under it,
/// to which piece uploads go with `sendfile(2)`.
pub(crate) trait PeerWrite: AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket this half writes to, when nothing (TLS) stands between them.
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl PeerWrite for OwnedWriteHalf {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl<T: AsyncWrite + Send + 'static> PeerWrite for tokio::io::WriteHalf<T> {}

/// An origin's count of one admitted upload in the blob's `SeedBudget`. Dropped before the
/// piece reached the socket (the requester cancelled, the read failed, the connection
/// closed), it gives the count back, so requesting and cancelling pieces cannot make the
/// origin refuse pieces nobody received.
pub(crate) struct SeedCharge {
    entry: Arc<BlobEntry>,
    piece: u32,
    sent: bool,
}

impl SeedCharge {
    /// The piece is on the socket: the count stays.
    fn sent(mut self) {
        self.sent = true;
    }
}

impl Drop for SeedCharge {
    fn drop(&mut self) {
        if !self.sent {
            self.entry.seed_budget.lock().refund(self.piece);
        }
    }
}

/// The control bytes queued for one connection's writer.
pub(crate) struct SendQueue {
    bytes: AtomicUsize,
    /// Woken when the queue drains below [`QUEUE_PAUSE`].
    room: Notify,
    /// Set when a frame found the queue full: the connection is closing.
    overflowed: AtomicBool,
    /// The node's total over all connections (`shoal_swarm_send_queue_bytes`).
    total: IntGauge,
}

impl SendQueue {
    pub fn new(total: IntGauge) -> SendQueue {
        SendQueue { bytes: AtomicUsize::new(0), room: Notify::new(), overflowed: AtomicBool::new(false), total }
    }

    /// Counts `n` bytes in, unless that would pass [`QUEUE_MAX`].
    fn push(&self, n: usize) -> bool {
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        if before + n > QUEUE_MAX {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            self.overflowed.store(true, Ordering::Release);
            return false;
        }
        self.total.add(n as i64);
        true
    }

    /// Counts `n` bytes out, once the writer wrote them.
    fn pop(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.total.sub(n as i64);
        if before > QUEUE_PAUSE && before - n <= QUEUE_PAUSE {
            self.room.notify_one();
        }
    }

    /// Waits until at most [`QUEUE_PAUSE`] bytes are queued.
    async fn room(&self) {
        while self.bytes.load(Ordering::Acquire) > QUEUE_PAUSE {
            // A wake-up that raced the check is kept as a permit, so none is lost.
            self.room.notified().await;
        }
    }

    /// Bytes queued now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        // Frames still queued when the connection went are gone with it.
        self.total.sub(*self.bytes.get_mut() as i64);
    }
}
/// How long a closing connection waits for its last frame (an `Error`) to go out.
const FAREWELL: Duration = Duration::from_secs(1);

/// The shared face of a connection: the rest of the node sends through it.
pub(crate) struct ConnHandle {
    pub peer_id: PeerId,
    pub outbound: bool,
    pub is_origin: bool,
    /// Who the remote proved to be (its certificate's identity and its address).
    pub remote: Remote,
    tx: mpsc::UnboundedSender<Out>,
    /// What `tx` holds, bounded (see the module doc).
    queue: SendQueue,
    cancel: CancellationToken,
    /// Blobs open on this connection (their bitfield was exchanged).
    pub open: Mutex<HashSet<Digest>>,
    /// The remote's pieces of each blob it opened, kept up to date by its `Have`s, so a
    /// download that starts after the exchange (a retry) learns them without a new one.
    remote_bits: Mutex<HashMap<Digest, RemoteBits>>,
}

/// A remote's bitfield of one blob, and the piece count it was sent for: a later download
/// of the blob under another metainfo (another piece length) has other pieces, so the
/// bitfield says nothing about them.
struct RemoteBits {
    num_pieces: u32,
    bits: Vec<u8>,
}

impl ConnHandle {
    /// A handle and the receiver its writer drains; `cancel` closes the connection, and the
    /// queue's bytes are also counted in `queued` (the node's total).
    pub fn new(
        peer_id: PeerId,
        outbound: bool,
        is_origin: bool,
        remote: Remote,
        cancel: CancellationToken,
        queued: IntGauge,
    ) -> (Arc<ConnHandle>, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = ConnHandle {
            peer_id,
            outbound,
            is_origin,
            remote,
            tx,
            queue: SendQueue::new(queued),
            cancel,
            open: Mutex::new(HashSet::new()),
            remote_bits: Mutex::new(HashMap::new()),
        };
        (Arc::new(handle), rx)
    }

    /// Queues a control frame. One that finds [`QUEUE_MAX`] bytes queued closes the
    /// connection instead.
    pub fn send(&self, msg: &Message<'_>) {
        self.queue(msg, false);
    }

    /// Queues `msg` as the connection's last frame.
    fn send_last(&self, msg: &Message<'_>) {
        self.queue(msg, true);
    }

    fn queue(&self, msg: &Message<'_>, last: bool) {
        let mut buf = BytesMut::with_capacity(64);
        wire::encode(msg, &mut buf);
        let n = buf.len();
        if !self.queue.push(n) {
            tracing::debug!(peer = %self.peer_id, "send queue full; closing the connection");
            self.close();
            return;
        }
        if self.tx.send(Out { head: buf.freeze(), data: None, counted: n, _permit: None, charge: None, last }).is_err()
        {
            // The writer is gone: nobody will count these bytes out.
            self.queue.pop(n);
        }
    }

    /// Control bytes queued for the writer.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn close(&self) {
        self.cancel.cancel();
    }

    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Opens `blob` on this connection by sending our bitfield, once. Returns false if it
    /// was already open.
    pub fn open_blob(&self, blob: Digest, num_pieces: u32, bits: &[u8]) -> bool {
        let fresh = self.open.lock().insert(blob);
        if fresh {
            self.send(&Message::Bitfield { blob, num_pieces, bits });
        }
        fresh
    }

    /// The remote's pieces of `blob`, if it opened the blob on this connection with a
    /// bitfield of `num_pieces` pieces.
    pub fn remote_bits(&self, blob: &Digest, num_pieces: u32) -> Option<Vec<u8>> {
        let remembered = self.remote_bits.lock();
        remembered.get(blob).filter(|r| r.num_pieces == num_pieces).map(|r| r.bits.clone())
    }

    /// Records the remote's `Have` of `piece` of a blob with `num_pieces` pieces. A bitfield
    /// sent for another piece count is stale, and forgotten.
    fn remote_have(&self, blob: &Digest, num_pieces: u32, piece: u32) {
        let mut remembered = self.remote_bits.lock();
        let Some(r) = remembered.get_mut(blob) else { return };
        match r.bits.get_mut((piece / 8) as usize) {
            Some(byte) if r.num_pieces == num_pieces => *byte |= 0x80 >> (piece % 8),
            _ => {
                remembered.remove(blob);
            }
        }
    }
}

/// Accepts peers until the node's token is cancelled.
pub(crate) async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    loop {
        // Take a pending-handshake permit before accepting, so that bound holds at the
        // socket; the connection slot is taken after the handshake.
        let permit = tokio::select! {
            p = node.peers.handshake_permit() => match p { Some(p) => p, None => return },
            _ = node.cancel.cancelled() => return,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = node.cancel.cancelled() => return,
        };
        let n = node.clone();
        let span = tracing::debug_span!("peer", %remote, dir = "in");
        // Not `shoal_runtime::spawn`: `run` watches a child of `node.cancel` and closes the
        // connection in order, and a closed connection is logged at debug, not as a failure.
        tokio::spawn(
            async move {
                let _ = stream.set_nodelay(true);
                let res = match n.tls.clone() {
                    None => {
                        let (rd, wr) = stream.into_split();
                        run(n, rd, wr, remote, Remote::plain(remote), Admission::Inbound(permit)).await
                    }
                    Some(tls) => {
                        let acceptor = tls.acceptor(Link::Peer, shoal_runtime::tls::ClientAuth::Required);
                        let deadline = n.cfg.handshake_timeout.get();
                        match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => {
                                let who = Remote {
                                    identity: peer_identity(s.get_ref().1.peer_certificates()),
                                    ip: remote.ip(),
                                };
                                let (rd, wr) = tokio::io::split(s);
                                run(n, rd, wr, remote, who, Admission::Inbound(permit)).await
                            }
                            Ok(Err(e)) => Err(tls_refused(&n, Side::Server, e)),
                            Err(_) => Err(tls_timed_out(&n, Side::Server, deadline)),
                        }
                    }
                };
                if let Err(e) = res {
                    tracing::debug!("connection ended: {e:#}");
                }
            }
            .instrument(span),
        );
    }
}

/// Connects to `addr` unless a connection to it exists or is being made (see
/// [`Peers::connect`](crate::peers::Peers::connect)); returns the connection once its
/// handshake is done.
pub(crate) async fn connect(node: &Arc<Node>, addr: SocketAddr, is_origin: bool) -> Option<Arc<ConnHandle>> {
    node.peers.connect(addr, || dial(node, addr, is_origin)).await
}

async fn dial(node: &Arc<Node>, addr: SocketAddr, is_origin: bool) -> Option<Arc<ConnHandle>> {
    if !node.cfg.peer_networks.contains(addr.ip()) {
        tracing::debug!(%addr, "not dialed: outside swarm.peer_networks");
        return None;
    }
    let permit = node.peers.try_slot()?;
    let deadline = node.cfg.handshake_timeout.get();
    let stream = match tokio::time::timeout(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%addr, "connect failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::debug!(%addr, "connect timed out");
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let n = node.clone();
    let span = tracing::debug_span!("peer", remote = %addr, dir = "out");
    // Not `shoal_runtime::spawn`, as for inbound connections: `run` watches the node's token.
    tokio::spawn(
        async move {
            let ready = Some(ready_tx);
            let admission = Admission::Outbound { slot: permit, is_origin };
            let res = match n.tls.clone() {
                None => {
                    let (rd, wr) = stream.into_split();
                    run_with_ready(n, rd, wr, addr, Remote::plain(addr), admission, ready).await
                }
                Some(tls) => {
                    // Peers are dialed by address; the certificate is checked against the CA,
                    // and its identity bound to the peer id below.
                    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                    match tokio::time::timeout(deadline, tls.connector(Link::Peer).connect(name, stream)).await {
                        Ok(Ok(s)) => {
                            let who =
                                Remote { identity: peer_identity(s.get_ref().1.peer_certificates()), ip: addr.ip() };
                            let (rd, wr) = tokio::io::split(s);
                            run_with_ready(n, rd, wr, addr, who, admission, ready).await
                        }
                        Ok(Err(e)) => Err(tls_refused(&n, Side::Client, e)),
                        Err(_) => Err(tls_timed_out(&n, Side::Client, deadline)),
                    }
                }
            };
            if let Err(e) = res {
                tracing::debug!("connection ended: {e:#}");
            }
        }
        .instrument(span),
    );
    ready_rx.await.ok()
}

/// The identity of a verified peer's certificate chain.
fn peer_identity(chain: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Option<Identity> {
    chain.and_then(|c| c.first()).and_then(Identity::of_cert)
}

/// A failed TLS handshake. The server side counts it here; a client counts the refusals it
/// makes in its certificate check (a refusal by the server reaches it as an alert).
fn tls_refused(node: &Node, side: Side, e: std::io::Error) -> ConnError {
    node.metrics.connections_rejected.inc();
    if side == Side::Server
        && let Some(tls) = &node.tls
    {
        tls.count_refusal(Link::Peer, side, shoal_runtime::tls::Refusal::of_io(&e));
    }
    ConnError::Tls(e)
}

fn tls_timed_out(node: &Node, side: Side, deadline: Duration) -> ConnError {
    node.metrics.connections_rejected.inc();
    if let Some(tls) = &node.tls {
        tls.count_refusal(Link::Peer, side, shoal_runtime::tls::Refusal::Timeout);
    }
    ConnError::Timeout(deadline)
}

/// What lets a connection in: an accepted socket holds a pending-handshake permit until its
/// handshake is done, a dial holds its connection slot from the start.
enum Admission {
    Inbound(OwnedSemaphorePermit),
    Outbound { slot: Slot, is_origin: bool },
}

/// Drives a connection over its two halves: a plain TCP socket's (`into_split`), or the
/// halves of a TLS stream (`tokio::io::split`).
async fn run<R, W>(
    node: Arc<Node>,
    rd: R,
    wr: W,
    addr: SocketAddr,
    remote: Remote,
    admission: Admission,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: PeerWrite,
{
    run_with_ready(node, rd, wr, addr, remote, admission, None).await
}

#[allow(clippy::too_many_arguments)]
async fn run_with_ready<R, W>(
    node: Arc<Node>,
    mut rd: R,
    mut wr: W,
    addr: SocketAddr,
    remote: Remote,
    admission: Admission,
    ready: Option<tokio::sync::oneshot::Sender<Arc<ConnHandle>>>,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: PeerWrite,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let pending =
        matches!(admission, Admission::Inbound(_)).then(|| PendingGauge::new(&node.metrics.handshakes_pending));
    let (peer_id, zone) = match handshake(&node, &mut rd, &mut wr, &mut buf).await {
        Ok(p) => p,
        Err(e) => {
            node.metrics.connections_rejected.inc();
            if e.is_peer_fault() {
                node.metrics.protocol_errors.inc();
            }
            return Err(e);
        }
    };
    drop(pending);
    let outbound = matches!(admission, Admission::Outbound { .. });
    if let Some(identity) = &remote.identity
        && !peer_id.is_bound_to(identity.as_str())
    {
        tracing::warn!(%peer_id, %identity, "refusing a peer id not bound to its certificate");
        node.metrics.connections_rejected.inc();
        if let Some(tls) = &node.tls {
            let side = if outbound { Side::Client } else { Side::Server };
            tls.count_refusal(Link::Peer, side, shoal_runtime::tls::Refusal::PeerId);
        }
        return Err(Refusal::UnboundId.into());
    }
    let (is_origin, _slot) = match admission {
        Admission::Outbound { slot, is_origin } => (is_origin, slot),
        // The handshake is done: trade the pending-handshake permit for an inbound slot.
        Admission::Inbound(_handshake) => match node.peers.try_inbound_slot() {
            Some(slot) => (false, slot),
            None => {
                node.metrics.connections_rejected.inc();
                return Err(Refusal::Full.into());
            }
        },
    };
    let is_origin = is_origin || node.peers.is_origin_addr(&addr);
    let cancel = node.cancel.child_token();
    let (handle, rx) =
        ConnHandle::new(peer_id, outbound, is_origin, remote, cancel.clone(), node.metrics.send_queue_bytes.clone());
    if let Err(refusal) = node.peers.register(addr, &handle) {
        node.metrics.connections_rejected.inc();
        return Err(refusal.into());
    }
    node.metrics.connections.inc();
    // Known before any bitfield, so a peer that dialed in ranks by its zone too.
    node.zones.heard(peer_id, zone.as_deref());
    if let Some(r) = ready {
        let _ = r.send(handle.clone());
    }

    let io_timeout = node.cfg.io_timeout.get();
    let sendfile = node.cfg.sendfile && wr.socket().is_some();
    let writer = write_loop(wr, rx, &handle.queue, &node, io_timeout);
    tokio::pin!(writer);
    let mut reader = Reader {
        node: node.clone(),
        conn: handle.clone(),
        sendfile,
        serving: Arc::new(Mutex::new(HashMap::new())),
        uploads: Arc::new(Semaphore::new(node.cfg.max_uploads_per_connection)),
        requests: shoal_core::ratelimit::Bucket::default(),
        started: tokio::time::Instant::now(),
        verifying: JoinSet::new(),
    };
    let (res, writer_ended) = tokio::select! {
        r = reader.read_loop(&mut rd, buf, io_timeout, node.cfg.request_timeout.get()) => (r, false),
        r = &mut writer => (r, true),
        _ = cancel.cancelled() => (Err(ConnError::Closed), false),
    };
    // The pieces still being verified count: one found corrupt after its sender closed shuns
    // the sender all the same. A connection closed from this side (or a node shutting down)
    // does not wait for them.
    if cancel.is_cancelled() {
        reader.verifying.abort_all();
    }
    let mut res = res;
    while !reader.verifying.is_empty() {
        if let Err(bad) = verified(&mut reader.verifying).await
            && !matches!(&res, Err(e) if e.is_peer_fault())
        {
            res = Err(bad);
        }
    }
    let res = if handle.queue.overflowed.load(Ordering::Acquire) {
        node.metrics.send_queue_overflows.inc();
        Err(ConnError::QueueFull)
    } else {
        res
    };
    reader.abort_uploads();
    if let (Err(ConnError::CorruptPiece { blob, piece }), false) = (&res, writer_ended) {
        // Tell the sender which piece, so it can check its copy, then close.
        let text = wire::corrupt_piece_text(*blob, *piece);
        handle.send_last(&Message::Error { code: ERROR_CORRUPT_PIECE, message: &text });
        let _ = tokio::time::timeout(FAREWELL, &mut writer).await;
    }
    cancel.cancel();
    // Unregister, and tell every blob this peer was in.
    node.peers.unregister(&handle);
    node.metrics.connections.dec();
    let opened: Vec<Digest> = handle.open.lock().drain().collect();
    for d in opened {
        if let Some(e) = node.blob(&d) {
            e.shared.lock().peers.remove(&peer_id);
            if let Some(a) = e.actor() {
                let _ = a.send(Event::PeerGone { peer: peer_id }).await;
            }
        }
    }
    if let Err(e) = &res
        && e.is_peer_fault()
    {
        node.metrics.protocol_errors.inc();
        node.peers.shun(&handle.remote, peer_id, outbound.then_some(addr));
    }
    res
}

/// Trades handshakes; gives the peer's id and the zone it named, if any.
async fn handshake<R, W>(
    node: &Node,
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
) -> Result<(PeerId, Option<String>), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = node.cfg.handshake_timeout.get();
    let mut out = BytesMut::new();
    let zone = node.cfg.zone.as_deref();
    let version = if zone.is_some() { PROTOCOL_VERSION } else { MIN_PROTOCOL_VERSION };
    wire::encode(&Message::Handshake { version, peer_id: node.peer_id, zone }, &mut out);
    tokio::time::timeout(deadline, wr.write_all(&out)).await.map_err(|_| ConnError::Timeout(deadline))??;
    let fut = async {
        loop {
            if let Some((msg, used)) = wire::decode(buf)? {
                let res = match msg {
                    Message::Handshake { version, peer_id, zone }
                        if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) =>
                    {
                        Ok((peer_id, zone.map(str::to_owned)))
                    }
                    Message::Handshake { version, .. } => {
                        Err(ConnError::Protocol(format!("unsupported protocol version {version}")))
                    }
                    other => Err(ConnError::Protocol(format!("expected handshake, got {}", kind(&other)))),
                };
                let _ = buf.split_to(used);
                return res;
            }
            if rd.read_buf(buf).await? == 0 {
                return Err(ConnError::Closed);
            }
            // A handshake is tiny; anything long is not a peer.
            if buf.len() > 1024 {
                return Err(ConnError::Protocol("oversized handshake".into()));
            }
        }
    };
    tokio::time::timeout(deadline, fut).await.map_err(|_| ConnError::Timeout(deadline))?
}

fn kind(m: &Message<'_>) -> &'static str {
    match m {
        Message::KeepAlive => "keep-alive",
        Message::Handshake { .. } => "handshake",
        Message::Bitfield { .. } => "bitfield",
        Message::Have { .. } => "have",
        Message::Request { .. } => "request",
        Message::Piece { .. } => "piece",
        Message::Cancel { .. } => "cancel",
        Message::Reject { .. } => "reject",
        Message::Error { .. } => "error",
    }
}

async fn write_loop<W: PeerWrite>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    queue: &SendQueue,
    node: &Node,
    io_timeout: Duration,
) -> Result<(), ConnError> {
    let keepalive = io_timeout / 3;
    let mut ka = BytesMut::new();
    wire::encode(&Message::KeepAlive, &mut ka);
    loop {
        let out = match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(Some(out)) => out,
            Ok(None) => return Err(ConnError::Closed),
            Err(_) => {
                Out { head: ka.clone().freeze(), data: None, counted: 0, _permit: None, charge: None, last: false }
            }
        };
        let idle = rx.is_empty();
        let write = async {
            write_frame(&mut wr, &out, node).await?;
            // TLS holds back what the socket did not take; plain TCP flushes for free.
            if idle {
                wr.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(io_timeout, write).await.map_err(|_| ConnError::Timeout(io_timeout))??;
        if let Some(c) = out.charge {
            c.sent();
        }
        queue.pop(out.counted);
        if out.last {
            return Err(ConnError::Closed);
        }
    }
}

/// Writes one frame: its head, then its payload, if any. A file range goes with
/// `sendfile(2)` on a plain TCP socket, and is read (within the node's upload memory) and
/// written otherwise: a file that cannot be sent that way, after which the node reads every
/// upload ([`Node::sendfile_refused`]); a writer with no socket of its own never gets one.
async fn write_frame<W: PeerWrite>(wr: &mut W, out: &Out, node: &Node) -> std::io::Result<()> {
    let range = match &out.data {
        None => return wr.write_all(&out.head).await,
        Some(Payload::Bytes(d)) => {
            wr.write_all(&out.head).await?;
            return wr.write_all(d).await;
        }
        Some(Payload::File(range)) => range,
    };
    match wr.socket() {
        Some(sock) => {
            // The head waits for the piece's first bytes, so the two leave in one segment.
            send_all(sock, &out.head, rustix::net::SendFlags::MORE).await?;
            if send_file(sock, range).await? {
                return Ok(());
            }
            if !node.sendfile_refused.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    blob = %range.blob,
                    "sendfile(2) refused a store file; uploads are read into memory from now on"
                );
            }
        }
        None => wr.write_all(&out.head).await?,
    }
    // Validation keeps the memory at least one piece, so this always completes.
    let _memory = node.reserve_upload_memory(range.len as u64).await;
    let data = node.store.read_shared(range.file.clone(), range.offset, range.len).await?;
    wr.write_all(&data).await
}

/// Writes all of `buf` to `sock` with `send(2)` and `flags`, as the socket has room.
async fn send_all(sock: &TcpStream, buf: &[u8], flags: rustix::net::SendFlags) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let flags = flags | rustix::net::SendFlags::NOSIGNAL;
        done += sock
            .async_io(Interest::WRITABLE, || rustix::net::send(sock, &buf[done..], flags).map_err(std::io::Error::from))
            .await?;
    }
    Ok(())
}

/// Sends `range` on `sock` with `sendfile(2)`, as the socket has room (each call sends what
/// fits; it returns `WouldBlock` when nothing does, and the socket's readiness is awaited).
/// Returns false, having sent nothing, when the file cannot be sent this way (`EINVAL`:
/// a file system without it). A file that ends before the range does is an error: the
/// piece's head is out, and a short piece would leave the peer waiting for the rest.
async fn send_file(sock: &TcpStream, range: &FileRange) -> std::io::Result<bool> {
    let end = range.offset + range.len as u64;
    let mut at = range.offset;
    while at < end {
        let left = usize::try_from(end - at).expect("a piece fits in memory");
        match sock.async_io(Interest::WRITABLE, || range.file.send_to(sock, at, left)).await {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "piece {} of {}: its file ends {} bytes short of it (truncated?)",
                        range.piece,
                        range.blob,
                        end - at
                    ),
                ));
            }
            Ok(n) => at += n as u64,
            Err(e) if at == range.offset && is_unsupported(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Whether `sendfile(2)` failed because the file or the socket does not support it.
fn is_unsupported(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP].iter().any(|no| e.raw_os_error() == Some(no.raw_os_error()))
}

/// Counts an accepted socket in `shoal_swarm_handshakes_pending` until dropped.
struct PendingGauge(IntGauge);

impl PendingGauge {
    fn new(g: &IntGauge) -> PendingGauge {
        g.inc();
        PendingGauge(g.clone())
    }
}

impl Drop for PendingGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Frames of at least this many bytes (pieces: every other frame is far smaller) are read
/// into pooled buffers ([`Reader::read_pooled`]).
const POOLED_FRAME: usize = 64 * 1024;

type Serving = Arc<Mutex<HashMap<(Digest, u32), AbortHandle>>>;

struct Reader {
    node: Arc<Node>,
    conn: Arc<ConnHandle>,
    /// Uploads go with `sendfile(2)`: a plain TCP connection, and `swarm.sendfile`.
    sendfile: bool,
    /// Uploads in progress, so a `Cancel` can stop them.
    serving: Serving,
    uploads: Arc<Semaphore>,
    /// The peer's piece requests, at most `peer_request_rate` a second.
    requests: shoal_core::ratelimit::Bucket,
    /// The time base of `requests`.
    started: tokio::time::Instant,
    /// Pieces received and being verified and written ([`receive_piece`]) while the next
    /// ones are read, each holding one of the node's slots (see [`Reader::room_to_verify`]).
    verifying: JoinSet<Result<(), ConnError>>,
}

/// Pieces one connection verifies and writes at once (see [`Reader::room_to_verify`]).
const MAX_VERIFYING: usize = 4;

/// Waits for a piece being verified to be done (forever if there is none) and gives its
/// result: a corrupt piece's error. Cancel-safe.
async fn verified(set: &mut JoinSet<Result<(), ConnError>>) -> Result<(), ConnError> {
    match set.join_next().await {
        None => std::future::pending().await,
        Some(Ok(r)) => r,
        Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Some(Err(_)) => Ok(()), // Aborted.
    }
}

/// Reads into `buf` within `deadline`, unless a piece being verified is done first: then
/// `None`, and a corrupt piece ends the connection as soon as it is found, not at the next
/// frame.
async fn read_or_verified<R: AsyncRead + Unpin, B: bytes::BufMut>(
    verifying: &mut JoinSet<Result<(), ConnError>>,
    rd: &mut R,
    buf: &mut B,
    deadline: Duration,
) -> Result<Option<Result<usize, tokio::time::error::Elapsed>>, ConnError> {
    tokio::select! {
        done = verified(verifying) => done.map(|()| None),
        read = tokio::time::timeout(deadline, rd.read_buf(buf)) => match read {
            Ok(n) => Ok(Some(Ok(n?))),
            Err(elapsed) => Ok(Some(Err(elapsed))),
        },
    }
}

impl Reader {
    /// Reads and handles frames until the connection ends. Between frames the peer may be
    /// silent for `io_timeout` (it sends keep-alives at a third of it); once a frame has begun,
    /// the rest of it must arrive within `frame_timeout` (`request_timeout`): an honest peer
    /// writes a frame whole, so a peer that sends half a piece and stops is lying, and is
    /// dropped and shunned like one that sends a corrupt piece.
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        mut buf: BytesMut,
        io_timeout: Duration,
        frame_timeout: Duration,
    ) -> Result<(), ConnError> {
        let mut frame_started: Option<tokio::time::Instant> = None;
        loop {
            // Drain every complete frame in the buffer.
            while let Some(len) = wire::frame_len(&buf)? {
                let total = wire::LEN_PREFIX + len;
                let frame = if buf.len() >= total {
                    buf.split_to(total).freeze()
                } else if total >= POOLED_FRAME {
                    // A piece: the rest of it is read into a reused buffer of its size, so a
                    // fresh allocation (and its fresh pages) per piece is not made.
                    let since = *frame_started.get_or_insert_with(tokio::time::Instant::now);
                    self.read_pooled(rd, &mut buf, total, since, io_timeout, frame_timeout).await?
                } else {
                    buf.reserve(total - buf.len());
                    break;
                };
                frame_started = None;
                let (msg, _) = wire::decode(&frame)?.ok_or(ConnError::Protocol("incomplete frame".into()))?;
                // Answers wait for room in the writer's queue: a peer that does not read
                // them is not read either.
                self.conn.queue.room().await;
                self.handle(&frame, msg).await?;
            }
            let deadline = if buf.is_empty() {
                io_timeout
            } else {
                let since = *frame_started.get_or_insert_with(tokio::time::Instant::now);
                frame_timeout.saturating_sub(since.elapsed()).min(io_timeout)
            };
            let Some(read) = read_or_verified(&mut self.verifying, rd, &mut buf, deadline).await? else { continue };
            let n = match read {
                Ok(n) => n,
                Err(_) if buf.is_empty() => return Err(ConnError::Timeout(io_timeout)),
                Err(_) => return Err(ConnError::Stalled(frame_timeout)),
            };
            if n == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    /// Reads the rest of a frame of `total` bytes, whose start is in `buf`, into a pooled
    /// buffer of that size (no read goes past the frame), under the same deadlines
    /// as [`Reader::read_loop`]: the frame began at `since`.
    async fn read_pooled<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        total: usize,
        since: tokio::time::Instant,
        io_timeout: Duration,
        frame_timeout: Duration,
    ) -> Result<Bytes, ConnError> {
        let pool = self.node.store.buffers();
        let mut frame = pool.take(total);
        frame.extend_from_slice(buf);
        buf.clear();
        while frame.len() < total {
            let deadline = frame_timeout.saturating_sub(since.elapsed()).min(io_timeout);
            let left = total - frame.len();
            let mut room = (&mut frame).limit(left);
            let Some(read) = read_or_verified(&mut self.verifying, rd, &mut room, deadline).await? else { continue };
            let n = match read {
                Ok(n) => n,
                Err(_) => return Err(ConnError::Stalled(frame_timeout)),
            };
            if n == 0 {
                return Err(ConnError::Closed);
            }
        }
        Ok(pool.share(frame))
    }

    /// Makes room for one more piece to verify while the reader reads on: a slot of the
    /// node's (`blocking_threads` of them, so the pieces held in memory for this stay bounded
    /// whatever the number of connections), up to [`MAX_VERIFYING`] per connection. One
    /// peer's stream then hashes and writes on more than one core. Without a free slot it
    /// waits for this connection's pieces to be done (a corrupt one ends the connection), and
    /// gives `None` once there are none: the piece is then verified before the reader reads
    /// on, as if there were no slots at all.
    async fn room_to_verify(&mut self) -> Result<Option<OwnedSemaphorePermit>, ConnError> {
        loop {
            if self.verifying.len() < MAX_VERIFYING
                && let Ok(slot) = self.node.verify_slots.clone().try_acquire_owned()
            {
                return Ok(Some(slot));
            }
            if self.verifying.is_empty() {
                return Ok(None);
            }
            verified(&mut self.verifying).await?;
        }
    }

    fn abort_uploads(&self) {
        for (_, h) in self.serving.lock().drain() {
            h.abort();
        }
    }

    async fn handle(&mut self, frame: &Bytes, msg: Message<'_>) -> Result<(), ConnError> {
        let node = &self.node;
        let peer = self.conn.peer_id;
        match msg {
            Message::KeepAlive => {}
            Message::Handshake { .. } => return Err(ConnError::Protocol("second handshake".into())),
            Message::Error { code, message } => {
                tracing::debug!(code, message, "peer sent error");
                if code == ERROR_CORRUPT_PIECE
                    && let Some((blob, piece)) = wire::parse_corrupt_piece(message)
                {
                    let n = node.clone();
                    shoal_runtime::spawn("reverify piece", node.cancel.clone(), async move {
                        n.reverify_piece(blob, piece).await;
                        Ok(())
                    });
                }
                return Err(ConnError::Closed);
            }
            Message::Bitfield { blob, num_pieces, bits } => {
                let Some(entry) = node.entry_or_load(blob).await else {
                    node.want(blob);
                    self.conn.send(&Message::Reject { blob, piece: 0, reason: RejectReason::UnknownBlob });
                    return Ok(());
                };
                if num_pieces != entry.meta.num_pieces() {
                    return Err(ConnError::Protocol(format!(
                        "bitfield of {num_pieces} pieces for {blob}, which has {}",
                        entry.meta.num_pieces()
                    )));
                }
                entry.shared.lock().peers.insert(peer);
                self.conn.remote_bits.lock().insert(blob, RemoteBits { num_pieces, bits: bits.to_vec() });
                let ours = entry.bitfield();
                self.conn.open_blob(blob, num_pieces, &ours);
                if let Some(a) = entry.actor() {
                    let _ = a.send(Event::PeerBitfield { conn: self.conn.clone(), bits: bits.to_vec() }).await;
                }
            }
            Message::Have { blob, piece } => {
                if let Some(e) = node.blob(&blob) {
                    if e.meta.piece(piece).is_none() {
                        return Err(ConnError::Protocol(format!("have of piece {piece} out of range")));
                    }
                    self.conn.remote_have(&blob, e.meta.num_pieces(), piece);
                    if let Some(a) = e.actor() {
                        let _ = a.send(Event::Have { peer, piece }).await;
                    }
                }
            }
            Message::Request { blob, piece } => {
                let n = node.cfg.peer_request_rate;
                let rate = shoal_core::ratelimit::Rate { per_second: n, burst: n };
                if !self.requests.admit(self.started.elapsed(), rate) {
                    node.metrics.requests_limited.inc();
                    self.conn.send(&Message::Reject { blob, piece, reason: RejectReason::Busy });
                    return Ok(());
                }
                // A stored blob closed for being idle is opened again; one the store lacks is
                // not looked for on disk.
                let entry = match node.blob(&blob) {
                    Some(e) => Some(e),
                    None => node.entry_or_load(blob).await,
                };
                self.serve(entry, blob, piece);
            }
            Message::Cancel { blob, piece } => {
                if let Some(h) = self.serving.lock().remove(&(blob, piece)) {
                    h.abort();
                }
            }
            Message::Reject { blob, piece, reason } => {
                if reason == RejectReason::UnknownBlob {
                    // The remote did not open the blob: it is not open on this connection, and
                    // the next exchange (the remote's bitfield, or ours) must happen in full.
                    self.conn.open.lock().remove(&blob);
                    self.conn.remote_bits.lock().remove(&blob);
                    if let Some(e) = node.blob(&blob) {
                        e.shared.lock().peers.remove(&peer);
                    }
                }
                if let Some(a) = node.blob(&blob).and_then(|e| e.actor()) {
                    let ev = match reason {
                        RejectReason::UnknownBlob => Event::PeerGone { peer },
                        reason => Event::Rejected { peer, piece, reason },
                    };
                    let _ = a.send(ev).await;
                }
            }
            Message::Piece { blob, piece, data } => {
                let data = frame.slice_ref(data);
                let slot = self.room_to_verify().await?;
                let node = &self.node;
                node.ingress.acquire(data.len()).await;
                let task = receive_piece(node.clone(), self.conn.clone(), blob, piece, data);
                match slot {
                    Some(slot) => {
                        self.verifying.spawn(async move {
                            let _slot = slot;
                            task.await
                        });
                    }
                    None => task.await?, // No slot: verified before the reader reads on.
                }
            }
        }
        Ok(())
    }

    fn serve(&self, entry: Option<Arc<crate::node::BlobEntry>>, blob: Digest, piece: u32) {
        let reject = |reason| self.conn.send(&Message::Reject { blob, piece, reason });
        let Some(entry) = entry else {
            return reject(RejectReason::UnknownBlob);
        };
        let Some(idx) = entry.meta.piece(piece) else { return reject(RejectReason::NotHave) };
        // The serving rule (`seeding::admit_upload`, which the simulator runs too): a capped
        // node queues at most `upload_backlog` of work, a connection carries at most
        // `max_uploads_per_connection` uploads, and an origin sends every piece once before it
        // sends any piece twice; beyond that the requester is better served by another peer.
        let admitted = {
            let mut budget = self.node.is_origin.then(|| entry.seed_budget.lock());
            seeding::admit_upload(
                entry.has_piece(piece),
                || self.node.admit_upload(u64::from(entry.meta.piece_len(idx))),
                || self.uploads.clone().try_acquire_owned().ok(),
                budget.as_deref_mut().map(|b| (b, piece)),
            )
        };
        let (backlog, permit) = match admitted {
            Ok(reserved) => reserved,
            Err(r) => return reject(r.reject_reason()),
        };
        // Counted by the budget above; given back unless the piece reaches the socket.
        let charge = self.node.is_origin.then(|| SeedCharge { entry: entry.clone(), piece, sent: false });
        let node = self.node.clone();
        let conn = self.conn.clone();
        let serving = self.serving.clone();
        let sendfile = self.sendfile && !self.node.sendfile_refused.load(Ordering::Relaxed);
        let mut map = self.serving.lock();
        // Not `shoal_runtime::spawn`: its handle is kept in `serving` and aborted when the
        // request is cancelled or the connection closes.
        let task = tokio::spawn(async move {
            let (offset, len) = (entry.meta.piece_offset(idx), entry.meta.piece_len(idx) as usize);
            // A piece sent from its file holds no memory: the connection's upload permits
            // bound what is queued. One read into a buffer waits for room in the node's
            // upload memory first.
            let (data, memory) = if sendfile {
                let range = FileRange { file: entry.file.clone(), offset, len, blob, piece };
                (Payload::File(range), None)
            } else {
                // Validation keeps the memory at least one piece, so this always completes.
                let Some(memory) = node.reserve_upload_memory(len as u64).await else { return };
                match node.store.read_shared(entry.file.clone(), offset, len).await {
                    Ok(d) => (Payload::Bytes(d), Some(memory)),
                    Err(e) => {
                        tracing::warn!(%blob, piece, "cannot read piece to upload: {e}");
                        conn.send(&Message::Reject { blob, piece, reason: RejectReason::NotHave });
                        serving.lock().remove(&(blob, piece));
                        return;
                    }
                }
            };
            node.egress.acquire(len).await;
            drop(backlog);
            let mut head = BytesMut::with_capacity(wire::LEN_PREFIX + wire::PIECE_HEADER_LEN);
            wire::encode_piece_header(blob, piece, len, &mut head);
            node.metrics.bytes_out.inc_by(len as u64);
            entry.uploaded.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
            node.store.touch(&blob);
            serving.lock().remove(&(blob, piece));
            let out = Out {
                head: head.freeze(),
                data: Some(data),
                counted: 0,
                _permit: Some((permit, memory)),
                charge,
                last: false,
            };
            let _ = conn.tx.send(out);
        });
        map.insert((blob, piece), task.abort_handle());
    }
}

/// Verifies a piece received from `conn` against the metainfo and writes it to the store, on
/// the blocking pool, and tells the download. The connection's reader runs this in a task of
/// its own and reads on meanwhile (see [`Reader::room_to_verify`]); a corrupt piece ends the
/// connection.
async fn receive_piece(
    node: Arc<Node>,
    conn: Arc<ConnHandle>,
    blob: Digest,
    piece: u32,
    data: Bytes,
) -> Result<(), ConnError> {
    let Some(entry) = node.blob(&blob) else { return Ok(()) };
    let (actor, partial) = {
        let s = entry.shared.lock();
        (s.actor.clone(), s.partial.clone())
    };
    let (Some(actor), Some(partial)) = (actor, partial) else { return Ok(()) }; // Not downloading: late duplicate.
    let Some(idx) = entry.meta.piece(piece) else {
        return Err(ConnError::Protocol(format!("piece {piece} out of range")));
    };
    if entry.has_piece(piece) {
        return Ok(()); // Endgame duplicate.
    }
    let len = data.len() as u64;
    let write_seconds = node.metrics.store_write_seconds.clone();
    let verified = node
        .store
        .blocking()
        .run(move || {
            if !partial.meta().verify_piece(idx, &data) {
                return Ok(false);
            }
            let secs = partial.write_piece(idx, &data)?;
            write_seconds.inc_by(secs);
            Ok(true)
        })
        .await;
    match verified {
        Ok(true) => {
            // The actor counts the bytes: two endgame copies can both get here, and only
            // the first it sees is new.
            let ok = Event::PieceOk { peer: conn.peer_id, piece, len, from_origin: conn.is_origin };
            let _ = actor.send(ok).await;
            Ok(())
        }
        Ok(false) => {
            node.metrics.pieces_corrupt.inc();
            let _ = actor.send(Event::PieceBad { peer: conn.peer_id, piece }).await;
            Err(ConnError::CorruptPiece { blob, piece })
        }
        Err(e) => {
            let _ = actor.send(Event::StoreFailed { error: Arc::new(e) }).await;
            Ok(())
        }
    }
}

/// The driver against a scripted peer on an in-memory duplex: no TCP, no tracker.
#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use shoal_core::MetaInfo;
    use shoal_core::metainfo::{MIN_PIECE_LEN, MetaInfoBuilder};
    use shoal_core::picker::PeerKind;
    use shoal_core::wire::pack_bits;
    use tempfile::TempDir;
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::SwarmConfig;

    const WAIT: Duration = Duration::from_secs(5);

    /// The remote of a plaintext connection from 127.0.0.`ip`.
    fn at(ip: u8) -> Remote {
        Remote::plain(SocketAddr::from(([127, 0, 0, ip], 4000)))
    }

    /// A node with its store in a temporary directory.
    fn node() -> (Arc<Node>, TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SwarmConfig { store_dir: dir.path().to_path_buf(), ..SwarmConfig::default() };
        (Node::for_tests(cfg, false), dir)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| u8::try_from(i * 31 % 251).expect("below 251")).collect()
    }

    fn meta(data: &[u8], piece_length: u32) -> MetaInfo {
        let mut b = MetaInfoBuilder::with_piece_length(data.len() as u64, piece_length).unwrap();
        b.update(data);
        b.finish().unwrap()
    }

    fn piece<'a>(meta: &MetaInfo, data: &'a [u8], i: u32) -> &'a [u8] {
        let i = meta.piece(i).unwrap();
        let o = usize::try_from(meta.piece_offset(i)).unwrap();
        &data[o..o + meta.piece_len(i) as usize]
    }

    /// Registers `data` as a complete blob of `node`.
    async fn complete(node: &Arc<Node>, data: &[u8]) -> MetaInfo {
        complete_in(node, data, MIN_PIECE_LEN).await
    }

    /// Registers `data` as a complete blob of `node`, in pieces of `piece_length`.
    async fn complete_in(node: &Arc<Node>, data: &[u8], piece_length: u32) -> MetaInfo {
        let meta = meta(data, piece_length);
        let partial = node.store.open_partial(meta.clone()).await.unwrap();
        for i in meta.all_pieces() {
            partial.write_piece(i, piece(&meta, data, i.get())).unwrap();
        }
        partial.commit().unwrap();
        node.register_complete(node.store.open_complete(meta.digest()).await.unwrap().unwrap());
        meta
    }

    /// Makes `node` download `meta`, with the test as its actor.
    async fn downloading(node: &Arc<Node>, meta: MetaInfo) -> mpsc::Receiver<Event> {
        let partial = node.store.open_partial(meta).await.unwrap();
        let (tx, rx) = crate::download::events();
        node.insert_blob(Arc::new(BlobEntry::downloading(partial, tx)));
        rx
    }

    async fn event(rx: &mut mpsc::Receiver<Event>) -> Event {
        tokio::time::timeout(WAIT, rx.recv()).await.expect("an event").expect("the node holds the sender")
    }

    /// The far end of a connection, scripted by a test.
    struct FarEnd<S = DuplexStream> {
        io: S,
        buf: BytesMut,
        peer_id: PeerId,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> FarEnd<S> {
        async fn send(&mut self, msg: &Message<'_>) {
            let mut out = BytesMut::new();
            wire::encode(msg, &mut out);
            self.send_raw(&out).await;
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
        }

        /// The next frame from the node other than a keep-alive.
        async fn frame(&mut self) -> Bytes {
            loop {
                let decoded = wire::decode(&self.buf).expect("the node sends valid frames");
                let next = decoded.map(|(msg, used)| (matches!(msg, Message::KeepAlive), used));
                match next {
                    Some((true, used)) => drop(self.buf.split_to(used)),
                    Some((false, used)) => return self.buf.split_to(used).freeze(),
                    None => {
                        let n = tokio::time::timeout(WAIT, self.io.read_buf(&mut self.buf)).await.unwrap().unwrap();
                        assert!(n > 0, "the node closed the connection");
                    }
                }
            }
        }

        /// Sends our handshake and checks the node's.
        async fn handshake(&mut self, node: &Node) {
            self.handshake_in(node, None).await;
        }

        /// Sends our handshake naming `zone` and checks the node's, which names its own.
        /// Without a zone it is exactly what a build of protocol version 1 sends.
        async fn handshake_in(&mut self, node: &Node, zone: Option<&str>) {
            let version = if zone.is_some() { PROTOCOL_VERSION } else { 1 };
            self.send(&Message::Handshake { version, peer_id: self.peer_id, zone }).await;
            let f = self.frame().await;
            let (msg, _) = wire::decode(&f).unwrap().unwrap();
            let ours = node.cfg.zone.as_deref();
            // Version 1 unless there is an extension to carry.
            let version = if ours.is_some() { PROTOCOL_VERSION } else { 1 };
            assert_eq!(msg, Message::Handshake { version, peer_id: node.peer_id, zone: ours });
        }
    }

    /// Runs the driver for an inbound connection from peer `n` at 127.0.0.`n`, over a duplex
    /// of `buffer` bytes each way.
    async fn start_with(node: &Arc<Node>, n: u8, buffer: usize) -> (FarEnd, JoinHandle<Result<(), ConnError>>) {
        start_as(node, PeerId([n; 16]), n, buffer).await
    }

    /// Runs the driver for an inbound connection from 127.0.0.`ip` that will claim `peer_id`.
    async fn start_as(
        node: &Arc<Node>,
        peer_id: PeerId,
        ip: u8,
        buffer: usize,
    ) -> (FarEnd, JoinHandle<Result<(), ConnError>>) {
        let (ours, theirs) = tokio::io::duplex(buffer);
        let permit = node.peers.handshake_permit().await.unwrap();
        let addr = SocketAddr::from(([127, 0, 0, ip], 4000));
        // Test-only: the handle is awaited for the connection's result.
        let (rd, wr) = tokio::io::split(ours);
        let task = tokio::spawn(run(node.clone(), rd, wr, addr, Remote::plain(addr), Admission::Inbound(permit)));
        (FarEnd { io: theirs, buf: BytesMut::new(), peer_id }, task)
    }

    async fn start(node: &Arc<Node>, n: u8) -> (FarEnd, JoinHandle<Result<(), ConnError>>) {
        start_with(node, n, 1 << 20).await
    }

    async fn connected(node: &Arc<Node>, n: u8) -> (FarEnd, JoinHandle<Result<(), ConnError>>) {
        connected_with(node, n, 1 << 20).await
    }

    async fn connected_with(node: &Arc<Node>, n: u8, buffer: usize) -> (FarEnd, JoinHandle<Result<(), ConnError>>) {
        let (mut remote, task) = start_with(node, n, buffer).await;
        remote.handshake(node).await;
        registered(node, &remote.peer_id).await;
        (remote, task)
    }

    /// Runs the driver for an inbound connection over real loopback TCP, from peer `n`. The
    /// node's socket may send at most `sndbuf` bytes ahead of the far end (the kernel doubles
    /// it), and the far end buffers as little, so a piece takes several `sendfile` calls and
    /// waits between them. Returns the node's send buffer as the kernel set it.
    async fn tcp_connected(
        node: &Arc<Node>,
        n: u8,
        sndbuf: usize,
    ) -> (FarEnd<TcpStream>, JoinHandle<Result<(), ConnError>>, usize) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        rustix::net::sockopt::set_socket_recv_buffer_size(&far, sndbuf).unwrap();
        let (ours, addr) = listener.accept().await.unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&ours, sndbuf).unwrap();
        let set = rustix::net::sockopt::socket_send_buffer_size(&ours).unwrap();
        let permit = node.peers.handshake_permit().await.unwrap();
        let (rd, wr) = ours.into_split();
        // Test-only: the handle is awaited for the connection's result.
        let task = tokio::spawn(run(node.clone(), rd, wr, addr, Remote::plain(addr), Admission::Inbound(permit)));
        let mut remote = FarEnd { io: far, buf: BytesMut::new(), peer_id: PeerId([n; 16]) };
        remote.handshake(node).await;
        registered(node, &remote.peer_id).await;
        (remote, task, set)
    }

    /// Waits until the node registered `peer`'s connection, which it does right after its
    /// handshake went out.
    async fn registered(node: &Node, peer: &PeerId) {
        tokio::time::timeout(WAIT, async {
            while node.peers.get(peer).is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the connection is registered");
    }

    async fn ended(task: JoinHandle<Result<(), ConnError>>) -> Result<(), ConnError> {
        tokio::time::timeout(WAIT, task).await.expect("the connection ends").expect("the driver does not panic")
    }

    #[tokio::test]
    async fn handshake_is_accepted_and_the_peer_registered() {
        let (node, _dir) = node();
        let (remote, task) = connected(&node, 2).await;
        let conn = node.peers.get(&remote.peer_id).unwrap();
        assert!(!conn.outbound && !conn.is_origin);
        drop(remote);
        assert!(matches!(ended(task).await, Err(ConnError::Closed)));
        assert!(node.peers.get(&PeerId([2; 16])).is_none(), "unregistered when it ends");
        assert!(!node.peers.is_shunned(&conn.remote), "a closed socket is not the peer's fault");
    }

    #[tokio::test]
    async fn a_peer_that_dials_in_ranks_by_the_zone_its_handshake_names() {
        let dir = tempfile::tempdir().unwrap();
        let zone = Some("za".to_owned());
        let cfg = SwarmConfig { store_dir: dir.path().to_path_buf(), zone, ..SwarmConfig::default() };
        let node = Node::for_tests(cfg, false);
        for (n, zone, want) in
            [(2, Some("zb"), PeerKind::Far), (3, Some("za"), PeerKind::Near), (4, None, PeerKind::Near)]
        {
            let (mut remote, _task) = start(&node, n).await;
            remote.handshake_in(&node, zone).await;
            registered(&node, &remote.peer_id).await;
            assert_eq!(node.zones.kind(&remote.peer_id, false), want, "peer {n} in {zone:?}");
        }
    }

    #[tokio::test]
    async fn wrong_magic_or_version_is_refused() {
        let (node, _dir) = node();
        let mut hs = BytesMut::new();
        wire::encode(&Message::Handshake { version: PROTOCOL_VERSION, peer_id: PeerId([2; 16]), zone: None }, &mut hs);
        // The magic follows the length prefix and the type byte.
        hs[wire::LEN_PREFIX + 1] ^= 0xff;
        let (mut remote, task) = start(&node, 2).await;
        remote.send_raw(&hs).await;
        assert!(matches!(ended(task).await, Err(ConnError::Decode(_))));

        let (mut remote, task) = start(&node, 3).await;
        remote.send(&Message::Handshake { version: PROTOCOL_VERSION + 1, peer_id: remote.peer_id, zone: None }).await;
        assert!(matches!(ended(task).await, Err(ConnError::Protocol(_))));

        let (mut remote, task) = start(&node, 4).await;
        remote.send(&Message::KeepAlive).await;
        assert!(matches!(ended(task).await, Err(ConnError::Protocol(_))), "the first frame must be a handshake");

        let (mut remote, task) = start(&node, 5).await;
        remote.send(&Message::Handshake { version: 0, peer_id: remote.peer_id, zone: None }).await;
        let res = ended(task).await;
        assert!(matches!(&res, Err(ConnError::Protocol(m)) if m == "unsupported protocol version 0"), "{res:?}");

        assert_eq!(node.peers.len(), 0);
        assert_eq!(node.metrics.connections_rejected.get(), 4);
        assert_eq!(node.metrics.protocol_errors.get(), 4);
    }

    #[tokio::test]
    async fn a_garbage_frame_closes_only_its_connection() {
        let (node, _dir) = node();
        let (mut bad, bad_task) = connected(&node, 2).await;
        let (mut good, good_task) = connected(&node, 3).await;
        // A whole frame of an unknown type.
        bad.send_raw(&[0, 0, 0, 2, 0xee, 0]).await;
        assert!(matches!(ended(bad_task).await, Err(ConnError::Decode(_))));
        assert!(node.peers.is_shunned(&at(2)), "a peer that breaks the protocol is shunned");
        assert!(node.peers.get(&bad.peer_id).is_none());
        // The other connection still answers.
        let blob = shoal_core::Digest::of(b"nothing here");
        good.send(&Message::Request { blob, piece: 0 }).await;
        let f = good.frame().await;
        let (msg, _) = wire::decode(&f).unwrap().unwrap();
        assert_eq!(msg, Message::Reject { blob, piece: 0, reason: RejectReason::UnknownBlob });
        assert!(!good_task.is_finished() && node.peers.get(&good.peer_id).is_some());
    }

    /// The hole of a self-declared peer id: a connection that claimed another node's id (an
    /// origin's, say) and then sent a bad frame got that node blacklisted. Only the claimant
    /// is shunned now, by what it proved (here, without TLS, its address), under any id.
    #[tokio::test]
    async fn a_connection_claiming_a_peers_id_gets_only_itself_shunned() {
        let (node, _dir) = node();
        let (mut liar, task) = start_as(&node, PeerId([2; 16]), 66, 1 << 20).await;
        liar.handshake(&node).await;
        liar.send_raw(&[0, 0, 0, 2, 0xee, 0]).await;
        assert!(matches!(ended(task).await, Err(ConnError::Decode(_))));
        assert!(node.peers.is_shunned(&at(66)));
        // The node whose id was claimed connects as usual.
        let (real, _task) = connected(&node, 2).await;
        assert!(node.peers.get(&real.peer_id).is_some());
        assert!(!node.peers.is_shunned(&at(2)));
        // The claimant is refused whatever id it claims next.
        let (mut again, task) = start_as(&node, PeerId([9; 16]), 66, 1 << 20).await;
        again.handshake(&node).await;
        assert!(matches!(ended(task).await, Err(ConnError::Refused(Refusal::Shunned))));
    }

    #[tokio::test]
    async fn requests_get_the_piece_or_a_reject() {
        let (node, _dir) = node();
        let bytes = data(3 * MIN_PIECE_LEN as usize + 100);
        let full = complete(&node, &bytes).await;
        let other = data(2 * MIN_PIECE_LEN as usize + 1);
        let other = meta(&other[..], MIN_PIECE_LEN);
        let _rx = downloading(&node, other.clone()).await;
        let (mut remote, _task) = connected(&node, 2).await;

        for i in [3, 1] {
            remote.send(&Message::Request { blob: full.digest(), piece: i }).await;
            let f = remote.frame().await;
            let (msg, _) = wire::decode(&f).unwrap().unwrap();
            assert_eq!(msg, Message::Piece { blob: full.digest(), piece: i, data: piece(&full, &bytes, i) });
        }
        assert_eq!(node.blob(&full.digest()).unwrap().stats().uploaded, u64::from(MIN_PIECE_LEN) + 100);
        // A piece the node lacks, and one past the blob's end.
        for (blob, i) in [(other.digest(), 0), (full.digest(), 4)] {
            remote.send(&Message::Request { blob, piece: i }).await;
            let f = remote.frame().await;
            let (msg, _) = wire::decode(&f).unwrap().unwrap();
            assert_eq!(msg, Message::Reject { blob, piece: i, reason: RejectReason::NotHave });
        }
    }

    /// A bitfield remembered from one metainfo of a blob, then a `Have` under a newer one
    /// with more pieces (a retried download got a different piece length): the index is
    /// valid for the blob but past the remembered bitfield.
    #[tokio::test]
    async fn have_past_a_bitfield_from_an_older_metainfo_does_not_panic() {
        let (node, _dir) = node();
        let bytes = data(20 * MIN_PIECE_LEN as usize);
        let old = meta(&bytes, 16 * MIN_PIECE_LEN);
        let new = meta(&bytes, MIN_PIECE_LEN);
        assert_eq!((old.digest(), old.num_pieces(), new.num_pieces()), (new.digest(), 2, 20));
        let blob = old.digest();
        let mut rx = downloading(&node, old).await;
        let (mut remote, task) = connected(&node, 2).await;
        let bits = pack_bits(2, |i| i == 0);
        remote.send(&Message::Bitfield { blob, num_pieces: 2, bits: &bits }).await;
        assert!(matches!(event(&mut rx).await, Event::PeerBitfield { .. }));
        remote.send(&Message::Have { blob, piece: 1 }).await;
        assert!(matches!(event(&mut rx).await, Event::Have { piece: 1, .. }));
        let conn = node.peers.get(&remote.peer_id).unwrap();
        assert_eq!(conn.remote_bits(&blob, 2), Some(pack_bits(2, |_| true)), "kept current by the Have");

        let mut rx = downloading(&node, new).await;
        remote.send(&Message::Have { blob, piece: 17 }).await;
        assert!(matches!(event(&mut rx).await, Event::Have { piece: 17, .. }));
        assert!(!task.is_finished(), "the connection stays up");
        // The old bitfield describes other pieces: it is not replayed to the new download.
        assert_eq!(conn.remote_bits(&blob, 20), None);
        assert_eq!(conn.remote_bits(&blob, 2), None);
    }

    /// A node whose blocking pool has one thread, held by the test until it sends on the
    /// returned channel; a download of `n` pieces, and a peer with all of them over a pipe
    /// of 1 KiB, far smaller than a piece.
    struct HeldPool {
        node: Arc<Node>,
        _dir: TempDir,
        rx: mpsc::Receiver<Event>,
        remote: FarEnd,
        task: JoinHandle<Result<(), ConnError>>,
        bytes: Vec<u8>,
        meta: MetaInfo,
        release: std::sync::mpsc::Sender<()>,
        blocker: JoinHandle<Result<(), std::sync::mpsc::RecvError>>,
    }

    async fn held_pool(n: u32) -> HeldPool {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SwarmConfig { store_dir: dir.path().to_path_buf(), blocking_threads: 1, ..SwarmConfig::default() };
        let node = Node::for_tests(cfg, false);
        let bytes = data(n as usize * MIN_PIECE_LEN as usize);
        let meta = meta(&bytes, MIN_PIECE_LEN);
        let blob = meta.digest();
        let mut rx = downloading(&node, meta.clone()).await;
        let (mut remote, task) = connected_with(&node, 2, 1024).await;
        remote.send(&Message::Bitfield { blob, num_pieces: n, bits: &pack_bits(n, |_| true) }).await;
        assert!(matches!(event(&mut rx).await, Event::PeerBitfield { .. }));
        let (started, holding) = tokio::sync::oneshot::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let pool = node.store.blocking().clone();
        let blocker = tokio::spawn(async move {
            pool.run(move || {
                let _ = started.send(());
                held.recv()
            })
            .await
        });
        holding.await.unwrap();
        HeldPool { node, _dir: dir, rx, remote, task, bytes, meta, release, blocker }
    }

    impl HeldPool {
        async fn send_piece(&mut self, i: u32) {
            let msg = Message::Piece { blob: self.meta.digest(), piece: i, data: piece(&self.meta, &self.bytes, i) };
            self.remote.send(&msg).await;
        }

        /// Frees the pool and gives the pieces then verified, `n` of them, in order.
        async fn release(mut self, n: usize) -> (Vec<u32>, JoinHandle<Result<(), ConnError>>) {
            self.release.send(()).unwrap();
            self.blocker.await.unwrap().unwrap();
            let mut done = Vec::new();
            for _ in 0..n {
                match event(&mut self.rx).await {
                    Event::PieceOk { piece, .. } => done.push(piece),
                    _ => panic!("a piece verified"),
                }
            }
            done.sort_unstable();
            (done, self.task)
        }
    }

    /// A connection reads the next piece while the one before waits to be verified and
    /// written: the pool's only thread is held, and the next piece still goes through a pipe
    /// far smaller than it.
    #[tokio::test]
    async fn the_next_piece_is_read_while_the_one_before_is_verified() {
        let mut held = held_pool(2).await;
        held.send_piece(0).await;
        tokio::time::timeout(WAIT, held.send_piece(1)).await.expect("the next piece is read while piece 0 waits");
        let (done, task) = held.release(2).await;
        assert_eq!(done, [0, 1]);
        assert!(!task.is_finished(), "the connection stays up");
    }

    /// The pieces held while they wait to be verified are bounded by the node's slots
    /// (`blocking_threads`, here 1), not by its connections: with the pool's only thread held,
    /// the first piece takes the slot and the reader reads on; the second, without a slot, is
    /// read and waited for; the third is not read until the pool frees.
    #[tokio::test]
    async fn the_pieces_waiting_to_be_verified_are_bounded() {
        let mut held = held_pool(3).await;
        for i in 0..2 {
            held.send_piece(i).await;
        }
        assert_eq!(held.node.verify_slots.available_permits(), 0, "the first piece took the slot");
        let third = tokio::time::timeout(Duration::from_millis(300), held.send_piece(2)).await;
        assert!(third.is_err(), "the third piece is not read while two wait");
        let (done, task) = held.release(2).await;
        assert_eq!(done, [0, 1]);
        assert!(!task.is_finished(), "the connection stays up");
    }

    /// A node downloading a blob of two pieces, and a connected peer that has both.
    struct TwoPieces {
        node: Arc<Node>,
        _dir: TempDir,
        bytes: Vec<u8>,
        meta: MetaInfo,
        rx: mpsc::Receiver<Event>,
        remote: FarEnd,
        task: JoinHandle<Result<(), ConnError>>,
    }

    async fn two_pieces() -> TwoPieces {
        let (node, dir) = node();
        let bytes = data(2 * MIN_PIECE_LEN as usize);
        let meta = meta(&bytes, MIN_PIECE_LEN);
        let blob = meta.digest();
        let mut rx = downloading(&node, meta.clone()).await;
        let (mut remote, task) = connected(&node, 2).await;
        let bits = pack_bits(2, |_| true);
        remote.send(&Message::Bitfield { blob, num_pieces: 2, bits: &bits }).await;
        assert!(matches!(event(&mut rx).await, Event::PeerBitfield { .. }));
        TwoPieces { node, _dir: dir, bytes, meta, rx, remote, task }
    }

    /// A corrupt piece still being verified when its sender closes the connection shuns the
    /// sender all the same.
    #[tokio::test]
    async fn a_corrupt_piece_shuns_its_sender_that_closed_at_once() {
        let TwoPieces { node, _dir, bytes, meta, mut rx, mut remote, task } = two_pieces().await;
        let blob = meta.digest();

        let mut corrupt = piece(&meta, &bytes, 0).to_vec();
        corrupt[7] ^= 1;
        remote.send(&Message::Piece { blob, piece: 0, data: &corrupt }).await;
        drop(remote);
        assert!(matches!(ended(task).await, Err(ConnError::CorruptPiece { piece: 0, .. })));
        assert!(matches!(event(&mut rx).await, Event::PieceBad { piece: 0, .. }));
        assert!(node.peers.is_shunned(&at(2)));
    }

    #[tokio::test]
    async fn a_good_piece_is_reported_and_a_corrupt_one_shuns_its_sender() {
        let TwoPieces { node, _dir, bytes, meta, mut rx, mut remote, task } = two_pieces().await;
        let blob = meta.digest();

        remote.send(&Message::Piece { blob, piece: 1, data: piece(&meta, &bytes, 1) }).await;
        let ev = event(&mut rx).await;
        assert!(
            matches!(ev, Event::PieceOk { piece: 1, len, from_origin: false, .. } if len == u64::from(MIN_PIECE_LEN))
        );

        let mut corrupt = piece(&meta, &bytes, 0).to_vec();
        corrupt[7] ^= 1;
        remote.send(&Message::Piece { blob, piece: 0, data: &corrupt }).await;
        let ev = event(&mut rx).await;
        assert!(matches!(ev, Event::PieceBad { peer, piece: 0 } if peer == remote.peer_id));
        assert!(matches!(ended(task).await, Err(ConnError::CorruptPiece { piece: 0, .. })));
        // Its last frame (after its bitfield and a `Have`) named the piece, so the sender can
        // check its own copy.
        let text = wire::corrupt_piece_text(blob, 0);
        let last = loop {
            let f = remote.frame().await;
            let (msg, _) = wire::decode(&f).unwrap().unwrap();
            if !matches!(msg, Message::Bitfield { .. } | Message::Have { .. }) {
                break f;
            }
        };
        assert_eq!(
            wire::decode(&last).unwrap().unwrap().0,
            Message::Error { code: ERROR_CORRUPT_PIECE, message: &text }
        );
        assert!(matches!(event(&mut rx).await, Event::PeerGone { .. }));
        assert!(node.peers.is_shunned(&at(2)));
        assert_eq!(node.metrics.pieces_corrupt.get(), 1);
        // Piece 1 is on disk; piece 0 is not.
        let partial = node.store.open_partial(meta).await.unwrap();
        assert_eq!(partial.have(), vec![false, true]);
    }

    /// An origin with its upload memory taken, so an admitted upload waits before it reads.
    async fn origin_with_a_blocked_upload() -> (Arc<Node>, TempDir, MetaInfo, OwnedSemaphorePermit) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SwarmConfig {
            store_dir: dir.path().to_path_buf(),
            upload_memory: shoal_runtime::ByteSize(u64::from(shoal_core::metainfo::MAX_PIECE_LEN)),
            ..SwarmConfig::default()
        };
        let node = Node::for_tests(cfg, true);
        let meta = complete(&node, &data(2 * MIN_PIECE_LEN as usize)).await;
        let held = node.reserve_upload_memory(u64::from(shoal_core::metainfo::MAX_PIECE_LEN)).await.unwrap();
        (node, dir, meta, held)
    }

    async fn wait_unsent(node: &Node, blob: &Digest, want: u32) {
        let entry = node.blob(blob).unwrap();
        tokio::time::timeout(WAIT, async {
            while entry.seed_budget.lock().unsent() != want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the seed budget never got back to {want} unsent pieces"));
    }

    /// Requesting and cancelling pieces costs the origin's super-seeding nothing: an upload
    /// that never reached the socket is given back, so the piece is not "sent" to nobody and
    /// every other requester is not answered busy for it.
    #[tokio::test]
    async fn cancelled_or_unsent_uploads_are_given_back_to_the_seed_budget() {
        let (node, _dir, meta, held) = origin_with_a_blocked_upload().await;
        let blob = meta.digest();
        let (mut griefer, _task) = connected(&node, 2).await;
        griefer.send(&Message::Request { blob, piece: 0 }).await;
        wait_unsent(&node, &blob, 1).await;
        griefer.send(&Message::Cancel { blob, piece: 0 }).await;
        wait_unsent(&node, &blob, 2).await;

        // The same when the connection closes with the upload still queued.
        griefer.send(&Message::Request { blob, piece: 1 }).await;
        wait_unsent(&node, &blob, 1).await;
        drop(griefer);
        wait_unsent(&node, &blob, 2).await;

        // A real peer gets piece 0, and then it counts as sent.
        drop(held);
        let (mut peer, _task) = connected(&node, 3).await;
        peer.send(&Message::Request { blob, piece: 0 }).await;
        let f = peer.frame().await;
        let (msg, _) = wire::decode(&f).unwrap().unwrap();
        assert!(matches!(msg, Message::Piece { piece: 0, .. }), "{msg:?}");
        wait_unsent(&node, &blob, 1).await;
    }

    #[tokio::test]
    async fn requests_past_the_connection_rate_are_answered_busy() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SwarmConfig { store_dir: dir.path().to_path_buf(), peer_request_rate: 1, ..SwarmConfig::default() };
        let node = Node::for_tests(cfg, false);
        let (mut remote, task) = connected(&node, 2).await;
        let blob = shoal_core::Digest::of(b"nothing here");
        for (piece, reason) in [(0, RejectReason::UnknownBlob), (1, RejectReason::Busy), (2, RejectReason::Busy)] {
            remote.send(&Message::Request { blob, piece }).await;
            let f = remote.frame().await;
            let (msg, _) = wire::decode(&f).unwrap().unwrap();
            assert_eq!(msg, Message::Reject { blob, piece, reason });
        }
        assert_eq!(node.metrics.requests_limited.get(), 2);
        assert!(!task.is_finished(), "a fast peer is slowed, not dropped");
    }

    /// A peer that sends half a piece and stops: once `request_timeout` has passed since the
    /// frame began, the connection is dropped as the peer's fault and the peer shunned. Silence
    /// between frames for as long is not a fault (keep-alives come at a third of io_timeout).
    /// Small pieces and pieces read into pooled buffers alike.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stalls_mid_piece_is_dropped_and_shunned() {
        stall_mid_piece(MIN_PIECE_LEN).await;
        stall_mid_piece(8 * MIN_PIECE_LEN).await;
    }

    async fn stall_mid_piece(piece_len: u32) {
        assert_eq!(piece_len as usize >= POOLED_FRAME, piece_len > MIN_PIECE_LEN, "one case of each");
        let (node, _dir) = node();
        let request_timeout = node.cfg.request_timeout.get();
        let bytes = data(2 * piece_len as usize);
        let meta = meta(&bytes, piece_len);
        let blob = meta.digest();
        let mut rx = downloading(&node, meta.clone()).await;
        let (mut remote, task) = connected(&node, 2).await;
        remote.send(&Message::Bitfield { blob, num_pieces: 2, bits: &pack_bits(2, |_| true) }).await;
        assert!(matches!(event(&mut rx).await, Event::PeerBitfield { .. }));
        // Silent between frames for longer than request_timeout: still connected.
        tokio::time::sleep(request_timeout + Duration::from_secs(1)).await;
        assert!(!task.is_finished());
        assert!(node.peers.get(&remote.peer_id).is_some());
        // Half of piece 1, then nothing.
        let mut frame = BytesMut::new();
        wire::encode(&Message::Piece { blob, piece: 1, data: piece(&meta, &bytes, 1) }, &mut frame);
        remote.send_raw(&frame[..frame.len() / 2]).await;
        let res = tokio::time::timeout(2 * request_timeout, task).await.expect("the connection ends").unwrap();
        assert!(matches!(res, Err(ConnError::Stalled(t)) if t == request_timeout), "{res:?}");
        assert!(node.peers.is_shunned(&at(2)));
        assert_eq!(node.store.open_partial(meta).await.unwrap().have(), vec![false, false]);
    }

    /// Pieces of at least [`POOLED_FRAME`] bytes are read into pooled buffers of their exact
    /// size: two of them and a `Have` in one stream, cut at odd places, all arrive whole and
    /// in order (no read runs into the next frame), and the buffers go back to the pool.
    #[tokio::test]
    async fn large_pieces_cut_anywhere_arrive_whole_through_pooled_buffers() {
        let (node, _dir) = node();
        let piece_len = 8 * MIN_PIECE_LEN;
        let bytes = data(3 * piece_len as usize);
        let meta = meta(&bytes, piece_len);
        let blob = meta.digest();
        let mut rx = downloading(&node, meta.clone()).await;
        let (mut remote, task) = connected(&node, 2).await;
        remote.send(&Message::Bitfield { blob, num_pieces: 3, bits: &pack_bits(3, |i| i < 2) }).await;
        assert!(matches!(event(&mut rx).await, Event::PeerBitfield { .. }));
        let mut stream = BytesMut::new();
        for piece_idx in [1, 0] {
            wire::encode(
                &Message::Piece { blob, piece: piece_idx, data: piece(&meta, &bytes, piece_idx) },
                &mut stream,
            );
        }
        wire::encode(&Message::Have { blob, piece: 2 }, &mut stream);
        for part in stream.chunks(10_007) {
            remote.send_raw(part).await;
            tokio::task::yield_now().await;
        }
        // The pieces are verified at once, so their events come in any order, the `Have` too.
        let (mut ok, mut have) = (Vec::new(), false);
        for _ in 0..3 {
            match event(&mut rx).await {
                Event::PieceOk { piece, len, .. } if len == u64::from(piece_len) => ok.push(piece),
                Event::Have { piece: 2, .. } => have = true,
                _ => panic!("two whole pieces and a Have"),
            }
        }
        ok.sort_unstable();
        assert_eq!((ok, have), (vec![0, 1], true));
        assert!(!task.is_finished());
        assert_eq!(node.store.open_partial(meta).await.unwrap().have(), vec![true, true, false]);
        assert!(node.store.idle_buffer_bytes() >= piece_len as usize, "the frames' buffers are back in the pool");
    }

    /// A peer that sends requests and never reads the answers: the node stops reading it
    /// once a bounded amount of answers is queued, instead of queueing one per request.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_is_not_read_either() {
        let (node, _dir) = node();
        let (mut remote, task) = connected_with(&node, 2, 4096).await;
        let conn = node.peers.get(&remote.peer_id).unwrap();
        let blob = Digest::of(b"no such blob");
        const REQUESTS: usize = 20_000;
        // Test-only: the handle is awaited.
        let flood = tokio::spawn(async move {
            let mut out = BytesMut::new();
            for _ in 0..REQUESTS {
                wire::encode(&Message::Request { blob, piece: 0 }, &mut out);
            }
            remote.send_raw(&out).await;
            remote
        });
        // Virtual time passes only once every task waits: the node has read all it will.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let reject = 42;
        assert!(REQUESTS * reject > 2 * QUEUE_PAUSE, "the flood is larger than the bound");
        assert!(conn.queued() <= QUEUE_PAUSE + reject, "{} bytes queued", conn.queued());
        assert!(conn.queued() > QUEUE_PAUSE / 2, "the answers that fit are queued: {}", conn.queued());
        assert_eq!(node.metrics.send_queue_bytes.get(), conn.queued() as i64);
        assert!(!flood.is_finished(), "the rest of the flood waits in the peer's own socket");
        assert!(!task.is_finished() && !node.peers.is_shunned(&conn.remote));
    }

    /// Frames the node has for a peer that stopped reading (here `Have`s) fill its queue up
    /// to `QUEUE_MAX`; the next one closes the connection, which is not blacklisted.
    #[tokio::test]
    async fn a_queue_past_its_bound_closes_the_connection() {
        let (node, _dir) = node();
        let (remote, task) = connected_with(&node, 2, 4096).await;
        let conn = node.peers.get(&remote.peer_id).unwrap();
        let blob = Digest::of(b"a blob");
        let have = 41;
        for _ in 0..QUEUE_MAX / have + 1 {
            conn.send(&Message::Have { blob, piece: 0 });
        }
        assert!(conn.queued() <= QUEUE_MAX);
        assert!(matches!(ended(task).await, Err(ConnError::QueueFull)));
        assert_eq!(node.metrics.send_queue_overflows.get(), 1);
        assert!(!node.peers.is_shunned(&conn.remote), "a slow reader is not blacklisted");
        assert!(node.peers.get(&remote.peer_id).is_none());
        drop(conn);
        assert_eq!(node.metrics.send_queue_bytes.get(), 0, "the node's total forgets a closed connection's queue");
    }

    /// A peer flooding `Have`s for a blob being downloaded fills the actor's event queue and
    /// is then read only as fast as the actor takes events; nothing is lost.
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_events_waits_for_the_actor() {
        let (node, _dir) = node();
        let bytes = data(2 * MIN_PIECE_LEN as usize);
        let meta = meta(&bytes, MIN_PIECE_LEN);
        let blob = meta.digest();
        let mut rx = downloading(&node, meta).await;
        let (mut remote, _task) = connected_with(&node, 2, 4096).await;
        const HAVES: usize = 5 * crate::download::EVENT_QUEUE;
        // Test-only: the handle is awaited.
        let flood = tokio::spawn(async move {
            let mut out = BytesMut::new();
            for _ in 0..HAVES {
                wire::encode(&Message::Have { blob, piece: 1 }, &mut out);
            }
            remote.send_raw(&out).await;
            remote
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rx.len(), crate::download::EVENT_QUEUE, "the queue is full and no longer");
        assert!(!flood.is_finished(), "the rest waits in the peer's socket");
        for _ in 0..HAVES {
            assert!(matches!(event(&mut rx).await, Event::Have { piece: 1, .. }));
        }
        assert!(flood.await.is_ok());
    }

    /// Accepted sockets that never handshake hold pending-handshake permits, not connection
    /// slots: with more of them than `max_connections`, the node still dials.
    #[tokio::test]
    async fn idle_inbound_sockets_do_not_block_dials() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SwarmConfig {
            store_dir: dir.path().to_path_buf(),
            max_connections: 4,
            handshake_timeout: shoal_runtime::Duration::from_secs(60),
            ..SwarmConfig::default()
        };
        let node = Node::for_tests(cfg, false);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Test-only: the loop ends with the test's runtime.
        tokio::spawn(accept_loop(node.clone(), listener));
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let pending = |n: i64| {
            let node = node.clone();
            tokio::time::timeout(WAIT, async move {
                while node.metrics.handshakes_pending.get() < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        pending(4).await.expect("as many idle sockets as there are slots are accepted");

        // A peer (say an origin) the node dials.
        let far = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let far_addr = far.local_addr().unwrap();
        let n = node.clone();
        // Test-only: the handle is awaited.
        let peer = tokio::spawn(async move {
            let (io, _) = far.accept().await.unwrap();
            let mut remote = FarEnd { io, buf: BytesMut::new(), peer_id: PeerId([9; 16]) };
            remote.handshake(&n).await;
            remote
        });
        let conn = tokio::time::timeout(WAIT, connect(&node, far_addr, true)).await.expect("the dial ends");
        assert!(conn.is_some_and(|c| c.peer_id == PeerId([9; 16]) && c.is_origin), "the dial found a slot");
        let _remote = peer.await.unwrap();
        pending(10).await.expect("every idle socket is accepted and waits for its handshake");
        assert_eq!(node.peers.len(), 1, "idle sockets are not connections");
    }

    /// With no tracker answering, a download asks the peers already connected, but only those
    /// inside `peer_networks`, like a dial: one that connected from elsewhere is left alone.
    #[tokio::test]
    async fn the_fallback_to_connected_peers_keeps_to_the_peer_networks() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SwarmConfig {
            store_dir: dir.path().to_path_buf(),
            peer_networks: shoal_core::net::Networks(vec!["127.0.0.2/32".parse().unwrap()]),
            ..SwarmConfig::default()
        };
        let node = Node::for_tests(cfg, false);
        let (inside, _t2) = connected(&node, 2).await;
        let (outside, _t3) = connected(&node, 3).await;
        let meta = meta(&data(2 * MIN_PIECE_LEN as usize), MIN_PIECE_LEN);
        let blob = meta.digest();
        let _rx = downloading(&node, meta).await;
        let entry = node.blob(&blob).unwrap();
        crate::download::open_on_known(&node, &entry).await;
        let opened = |p: &PeerId| node.peers.get(p).unwrap().open.lock().contains(&blob);
        assert!(opened(&inside.peer_id), "the peer inside the networks is asked");
        assert!(!opened(&outside.peer_id), "the peer outside them is not");
        assert!(!entry.shared.lock().peers.contains(&outside.peer_id));
    }

    /// The node opened a blob on a connection and the remote answered `UnknownBlob`; later the
    /// remote opens the blob itself (it is downloading it now): the node answers with its
    /// bitfield, as to any first exchange.
    #[tokio::test]
    async fn a_blob_the_remote_did_not_know_is_opened_again() {
        let (node, _dir) = node();
        let bytes = data(2 * MIN_PIECE_LEN as usize);
        let full = complete(&node, &bytes).await;
        let blob = full.digest();
        let (mut remote, _task) = connected(&node, 2).await;
        let conn = node.peers.get(&remote.peer_id).unwrap();
        assert!(conn.open_blob(blob, 2, &pack_bits(2, |_| true)));
        let f = remote.frame().await;
        assert!(matches!(wire::decode(&f).unwrap().unwrap().0, Message::Bitfield { .. }));
        remote.send(&Message::Reject { blob, piece: 0, reason: RejectReason::UnknownBlob }).await;
        let none = pack_bits(2, |_| false);
        remote.send(&Message::Bitfield { blob, num_pieces: 2, bits: &none }).await;
        let f = remote.frame().await;
        let (msg, _) = wire::decode(&f).unwrap().unwrap();
        assert_eq!(msg, Message::Bitfield { blob, num_pieces: 2, bits: &pack_bits(2, |_| true) });
    }

    async fn expect<S: AsyncRead + AsyncWrite + Unpin>(remote: &mut FarEnd<S>, want: Message<'_>) {
        let f = remote.frame().await;
        assert_eq!(wire::decode(&f).unwrap().unwrap().0, want);
    }

    /// A blob evicted while a peer has it open: the peer's next request is answered `Reject`
    /// `UnknownBlob` (it fetches the piece elsewhere), never a short or empty piece, and the
    /// connection stays up.
    #[tokio::test]
    async fn a_request_for_an_evicted_blob_is_rejected() {
        let (node, _dir) = node();
        let bytes = data(2 * MIN_PIECE_LEN as usize);
        let meta = complete(&node, &bytes).await;
        let blob = meta.digest();
        let (mut remote, task) = connected(&node, 2).await;
        remote.send(&Message::Bitfield { blob, num_pieces: 2, bits: &pack_bits(2, |_| false) }).await;
        expect(&mut remote, Message::Bitfield { blob, num_pieces: 2, bits: &pack_bits(2, |_| true) }).await;
        remote.send(&Message::Request { blob, piece: 0 }).await;
        expect(&mut remote, Message::Piece { blob, piece: 0, data: piece(&meta, &bytes, 0) }).await;

        assert!(node.evict(blob, shoal_core::cache::Reason::Size, false).await);
        assert!(!node.store.contains(&blob));
        remote.send(&Message::Request { blob, piece: 1 }).await;
        expect(&mut remote, Message::Reject { blob, piece: 1, reason: RejectReason::UnknownBlob }).await;
        assert!(!task.is_finished());
    }

    /// A stored blob closed for being idle is opened again by a peer's request.
    #[tokio::test]
    async fn a_request_opens_a_closed_blob() {
        let (node, _dir) = node();
        let bytes = data(MIN_PIECE_LEN as usize + 5);
        let meta = complete(&node, &bytes).await;
        assert_eq!(node.close_idle(Duration::ZERO), 1);
        let (mut remote, _task) = connected(&node, 2).await;
        remote.send(&Message::Request { blob: meta.digest(), piece: 1 }).await;
        expect(&mut remote, Message::Piece { blob: meta.digest(), piece: 1, data: piece(&meta, &bytes, 1) }).await;
    }

    /// A peer reports a piece it got from us as corrupt: the piece is hashed again from disk.
    /// A good one keeps the blob; one damaged on disk (a torn write after a power loss,
    /// simulated by flipping a byte) removes it, so it is not served again.
    #[tokio::test]
    async fn a_reported_corrupt_piece_is_checked_and_a_damaged_blob_dropped() {
        let (node, _dir) = node();
        let bytes = data(3 * MIN_PIECE_LEN as usize);
        let meta = complete(&node, &bytes).await;
        let blob = meta.digest();
        let report = |n: u8, piece: u32| {
            let node = node.clone();
            async move {
                let (mut remote, task) = connected(&node, n).await;
                let text = wire::corrupt_piece_text(blob, piece);
                remote.send(&Message::Error { code: ERROR_CORRUPT_PIECE, message: &text }).await;
                assert!(matches!(ended(task).await, Err(ConnError::Closed)));
            }
        };
        node.reverify_piece(blob, 1).await;
        assert!(node.store.contains(&blob), "a good piece keeps the blob");

        let f = std::fs::OpenOptions::new().write(true).open(node.store.complete_path(&blob)).unwrap();
        let off = 2 * u64::from(MIN_PIECE_LEN) + 9;
        f.write_all_at(&[bytes[usize::try_from(off).unwrap()] ^ 0xff], off).unwrap();
        report(2, 2).await;
        // The removal and its count are two steps: wait for both.
        let corrupt = || node.store.evictions().get(shoal_core::cache::Reason::Corrupt);
        tokio::time::timeout(WAIT, async {
            while node.store.contains(&blob) || corrupt() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the damaged blob is removed and counted");
        assert!(node.blob(&blob).is_none());
        assert_eq!(node.store.evictions().get(shoal_core::cache::Reason::Corrupt), 1);
        assert!(!node.peers.is_shunned(&at(2)), "reporting is not misbehaving");
    }

    /// A node whose upload memory is all taken: an upload that reads its piece into memory
    /// waits, one sent from the file does not.
    fn node_with_no_upload_memory(is_origin: bool) -> (Arc<Node>, TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SwarmConfig {
            store_dir: dir.path().to_path_buf(),
            upload_memory: shoal_runtime::ByteSize(u64::from(shoal_core::metainfo::MAX_PIECE_LEN)),
            ..SwarmConfig::default()
        };
        (Node::for_tests(cfg, is_origin), dir)
    }

    /// Pieces uploaded over plain TCP go with `sendfile` from the store file, byte-exact: a
    /// short last piece, and pieces many times the socket's buffer, requested at once and
    /// read only after a while, so the sends wait for room and resume. The node's upload
    /// memory is all held, so no piece went through a buffer.
    #[tokio::test]
    async fn pieces_go_out_with_sendfile_byte_exact_over_tcp() {
        let (node, _dir) = node_with_no_upload_memory(false);
        let _held = node.reserve_upload_memory(u64::from(shoal_core::metainfo::MAX_PIECE_LEN)).await.unwrap();
        let piece_length = shoal_core::metainfo::MAX_PIECE_LEN;
        let bytes = data(2 * piece_length as usize + 12_345);
        let meta = complete_in(&node, &bytes, piece_length).await;
        let blob = meta.digest();
        let (mut remote, task, sndbuf) = tcp_connected(&node, 2, 64 << 10).await;
        assert!(sndbuf < piece_length as usize / 8, "the socket's buffer ({sndbuf}) is far smaller than a piece");
        for p in [0, 2, 1] {
            remote.send(&Message::Request { blob, piece: p }).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut got = HashMap::new();
        for _ in 0..3 {
            let f = remote.frame().await;
            match wire::decode(&f).unwrap().unwrap().0 {
                Message::Piece { blob: b, piece: p, data } if b == blob => {
                    assert!(data == piece(&meta, &bytes, p), "piece {p} arrives byte-exact");
                    got.insert(p, data.len());
                }
                other => panic!("expected a piece, got {other:?}"),
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(node.metrics.bytes_out.get(), bytes.len() as u64);
        assert_eq!(node.store.idle_buffer_bytes(), 0, "no piece was read into a buffer");
        // More requests on the same connection still go.
        remote.send(&Message::Request { blob, piece: 2 }).await;
        expect(&mut remote, Message::Piece { blob, piece: 2, data: piece(&meta, &bytes, 2) }).await;
        assert!(!task.is_finished());
    }

    /// A blob's file unlinked (evicted) while its entry is still held: the open file is
    /// still sent from.
    #[tokio::test]
    async fn a_piece_of_an_unlinked_file_is_sent_from_the_open_file() {
        let (node, _dir) = node();
        let bytes = data(2 * MIN_PIECE_LEN as usize);
        let meta = complete(&node, &bytes).await;
        let blob = meta.digest();
        std::fs::remove_file(node.store.complete_path(&blob)).unwrap();
        let (mut remote, _task, _) = tcp_connected(&node, 2, 64 << 10).await;
        remote.send(&Message::Request { blob, piece: 1 }).await;
        expect(&mut remote, Message::Piece { blob, piece: 1, data: piece(&meta, &bytes, 1) }).await;
    }

    /// The store file of a blob truncated under an upload: the piece's head is out, so the
    /// connection ends with an error naming the piece, never with a short piece the peer
    /// would wait on; an origin gives the piece's count back to its seed budget.
    #[tokio::test]
    async fn a_file_truncated_under_an_upload_ends_the_connection() {
        let (node, _dir) = node_with_no_upload_memory(true);
        let _held = node.reserve_upload_memory(u64::from(shoal_core::metainfo::MAX_PIECE_LEN)).await.unwrap();
        let bytes = data(2 * MIN_PIECE_LEN as usize);
        let meta = complete(&node, &bytes).await;
        let blob = meta.digest();
        let (mut remote, task, _) = tcp_connected(&node, 2, 64 << 10).await;
        let kept = MIN_PIECE_LEN as usize / 3;
        let cut = u64::from(MIN_PIECE_LEN) + kept as u64;
        std::fs::OpenOptions::new().write(true).open(node.store.complete_path(&blob)).unwrap().set_len(cut).unwrap();
        remote.send(&Message::Request { blob, piece: 1 }).await;
        // The far end reads all it gets until the stream ends.
        // Test-only: the handle is awaited.
        let far = tokio::spawn(async move {
            let mut rest = Vec::new();
            remote.io.read_to_end(&mut rest).await.unwrap();
            remote.buf.extend_from_slice(&rest);
            remote.buf
        });
        let res = ended(task).await;
        let Err(ConnError::Io(e)) = &res else { panic!("the connection ends with an i/o error: {res:?}") };
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        let short = u64::from(MIN_PIECE_LEN) * 2 - cut;
        assert!(e.to_string().contains(&format!("piece 1 of {blob}: its file ends {short} bytes short")), "{e}");
        // The far end got the head and what the file had, then the end of the stream.
        let got = tokio::time::timeout(WAIT, far).await.expect("the stream ends").unwrap();
        let header = wire::LEN_PREFIX + wire::PIECE_HEADER_LEN;
        assert_eq!(got.len(), header + kept, "the head and the bytes before the cut");
        assert!(wire::decode(&got).unwrap().is_none(), "no frame completes");
        assert!(!node.peers.is_shunned(&Remote::plain(SocketAddr::from(([127, 0, 0, 1], 0)))));
        wait_unsent(&node, &blob, 2).await;
    }
}
