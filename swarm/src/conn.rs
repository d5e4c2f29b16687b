//! The connection driver: one task per peer connection, owning the socket.
//!
//! After the handshake the socket is split: a writer task drains a channel of outgoing frames
//! (sending a keep-alive when idle), and the reader loop decodes frames and dispatches them.
//! Every read and write has a deadline. A protocol violation, a corrupt piece or a deadline
//! closes this connection and nothing else; a corrupt piece or a bad frame also blacklists
//! the peer for `blacklist_duration`.
//!
//! Uploads: a `Request` is served by a short task holding one of the connection's upload
//! permits, released only once the piece is written to the socket, so memory held by a
//! connection for uploads is bounded by `max_uploads_per_connection` pieces. A connection's
//! requests beyond `peer_request_rate` a second are answered "busy" at once. On an origin, an
//! upload counts in the blob's seed budget from admission until it is written, and is given
//! back if it never is ([`SeedCharge`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use shoal_core::seeding;
use shoal_core::wire::{self, DecodeError, Message, PROTOCOL_VERSION, RejectReason};
use shoal_core::{Digest, PeerId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::download::Event;
use crate::node::{BlobEntry, Node};

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
}

impl ConnError {
    /// Whether the peer misbehaved (as opposed to the network failing).
    fn is_peer_fault(&self) -> bool {
        matches!(self, ConnError::Decode(_) | ConnError::Protocol(_) | ConnError::CorruptPiece { .. })
    }
}

/// One frame to write: a header or whole small message, and piece data after it.
pub(crate) struct Out {
    head: Bytes,
    data: Option<Bytes>,
    /// Upload permits (the connection's slot and the node's buffer memory) released once the
    /// data is on the socket.
    _permit: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    /// An origin's count of this upload in its seed budget, kept once the piece is written.
    charge: Option<SeedCharge>,
}

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

/// The shared face of a connection: the rest of the node sends through it.
pub(crate) struct ConnHandle {
    pub peer_id: PeerId,
    pub outbound: bool,
    pub is_origin: bool,
    tx: mpsc::UnboundedSender<Out>,
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
    /// A handle and the receiver its writer drains; `cancel` closes the connection.
    pub fn new(
        peer_id: PeerId,
        outbound: bool,
        is_origin: bool,
        cancel: CancellationToken,
    ) -> (Arc<ConnHandle>, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = ConnHandle {
            peer_id,
            outbound,
            is_origin,
            tx,
            cancel,
            open: Mutex::new(HashSet::new()),
            remote_bits: Mutex::new(HashMap::new()),
        };
        (Arc::new(handle), rx)
    }

    pub fn send(&self, msg: &Message<'_>) {
        let mut buf = BytesMut::with_capacity(64);
        wire::encode(msg, &mut buf);
        let _ = self.tx.send(Out { head: buf.freeze(), data: None, _permit: None, charge: None });
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
        // Take a connection slot before accepting, so the limit holds at the socket.
        let permit = tokio::select! {
            p = node.peers.slot() => match p { Some(p) => p, None => return },
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
        tokio::spawn(
            async move {
                let _ = stream.set_nodelay(true);
                if let Err(e) = run(n, stream, remote, false, false, permit).await {
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
    tokio::spawn(
        async move {
            if let Err(e) = run_with_ready(n, stream, addr, true, is_origin, permit, Some(ready_tx)).await {
                tracing::debug!("connection ended: {e:#}");
            }
        }
        .instrument(span),
    );
    ready_rx.await.ok()
}

async fn run<S>(
    node: Arc<Node>,
    stream: S,
    addr: SocketAddr,
    outbound: bool,
    is_origin: bool,
    permit: OwnedSemaphorePermit,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    run_with_ready(node, stream, addr, outbound, is_origin, permit, None).await
}

async fn run_with_ready<S>(
    node: Arc<Node>,
    stream: S,
    addr: SocketAddr,
    outbound: bool,
    is_origin: bool,
    _permit: OwnedSemaphorePermit,
    ready: Option<tokio::sync::oneshot::Sender<Arc<ConnHandle>>>,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let peer_id = match handshake(&node, &mut rd, &mut wr, &mut buf).await {
        Ok(p) => p,
        Err(e) => {
            node.metrics.connections_rejected.inc();
            if e.is_peer_fault() {
                node.metrics.protocol_errors.inc();
            }
            return Err(e);
        }
    };
    let is_origin = is_origin || node.peers.is_origin_addr(&addr);
    let cancel = node.cancel.child_token();
    let (handle, rx) = ConnHandle::new(peer_id, outbound, is_origin, cancel.clone());
    if let Err(refusal) = node.peers.register(addr, &handle) {
        node.metrics.connections_rejected.inc();
        return Err(refusal.into());
    }
    node.metrics.connections.inc();
    if let Some(r) = ready {
        let _ = r.send(handle.clone());
    }

    let io_timeout = node.cfg.io_timeout.get();
    let writer = write_loop(wr, rx, io_timeout);
    let mut reader = Reader {
        node: node.clone(),
        conn: handle.clone(),
        serving: Arc::new(Mutex::new(HashMap::new())),
        uploads: Arc::new(Semaphore::new(node.cfg.max_uploads_per_connection)),
        requests: shoal_core::ratelimit::Bucket::default(),
        started: tokio::time::Instant::now(),
    };
    let res = tokio::select! {
        r = reader.read_loop(&mut rd, buf, io_timeout) => r,
        r = writer => r,
        _ = cancel.cancelled() => Err(ConnError::Closed),
    };
    cancel.cancel();
    reader.abort_uploads();
    // Unregister, and tell every blob this peer was in.
    node.peers.unregister(&handle);
    node.metrics.connections.dec();
    let opened: Vec<Digest> = handle.open.lock().drain().collect();
    for d in opened {
        if let Some(e) = node.blob(&d) {
            e.shared.lock().peers.remove(&peer_id);
            if let Some(a) = e.actor() {
                let _ = a.send(Event::PeerGone { peer: peer_id });
            }
        }
    }
    if let Err(e) = &res
        && e.is_peer_fault()
    {
        node.metrics.protocol_errors.inc();
        node.peers.shun(peer_id, addr);
    }
    res
}

async fn handshake<R, W>(node: &Node, rd: &mut R, wr: &mut W, buf: &mut BytesMut) -> Result<PeerId, ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = node.cfg.handshake_timeout.get();
    let mut out = BytesMut::new();
    wire::encode(&Message::Handshake { version: PROTOCOL_VERSION, peer_id: node.peer_id }, &mut out);
    tokio::time::timeout(deadline, wr.write_all(&out)).await.map_err(|_| ConnError::Timeout(deadline))??;
    let fut = async {
        loop {
            if let Some((msg, used)) = wire::decode(buf)? {
                let res = match msg {
                    Message::Handshake { version, peer_id } if version == PROTOCOL_VERSION => Ok(peer_id),
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

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    io_timeout: Duration,
) -> Result<(), ConnError> {
    let keepalive = io_timeout / 3;
    let mut ka = BytesMut::new();
    wire::encode(&Message::KeepAlive, &mut ka);
    loop {
        let out = match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(Some(out)) => out,
            Ok(None) => return Err(ConnError::Closed),
            Err(_) => Out { head: ka.clone().freeze(), data: None, _permit: None, charge: None },
        };
        let write = async {
            wr.write_all(&out.head).await?;
            if let Some(d) = &out.data {
                wr.write_all(d).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(io_timeout, write).await.map_err(|_| ConnError::Timeout(io_timeout))??;
        if let Some(c) = out.charge {
            c.sent();
        }
    }
}

type Serving = Arc<Mutex<HashMap<(Digest, u32), AbortHandle>>>;

struct Reader {
    node: Arc<Node>,
    conn: Arc<ConnHandle>,
    /// Uploads in progress, so a `Cancel` can stop them.
    serving: Serving,
    uploads: Arc<Semaphore>,
    /// The peer's piece requests, at most `peer_request_rate` a second.
    requests: shoal_core::ratelimit::Bucket,
    /// The time base of `requests`.
    started: tokio::time::Instant,
}

impl Reader {
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        mut buf: BytesMut,
        io_timeout: Duration,
    ) -> Result<(), ConnError> {
        loop {
            // Drain every complete frame in the buffer.
            while let Some(len) = wire::frame_len(&buf)? {
                let total = wire::LEN_PREFIX + len;
                if buf.len() < total {
                    buf.reserve(total - buf.len());
                    break;
                }
                let frame = buf.split_to(total).freeze();
                let (msg, _) = wire::decode(&frame)?.ok_or(ConnError::Protocol("incomplete frame".into()))?;
                self.handle(&frame, msg).await?;
            }
            let n = tokio::time::timeout(io_timeout, rd.read_buf(&mut buf))
                .await
                .map_err(|_| ConnError::Timeout(io_timeout))??;
            if n == 0 {
                return Err(ConnError::Closed);
            }
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
                return Err(ConnError::Closed);
            }
            Message::Bitfield { blob, num_pieces, bits } => {
                let Some(entry) = node.entry_or_load(blob).await else {
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
                    let _ = a.send(Event::PeerBitfield { conn: self.conn.clone(), bits: bits.to_vec() });
                }
            }
            Message::Have { blob, piece } => {
                if let Some(e) = node.blob(&blob) {
                    if e.meta.piece(piece).is_none() {
                        return Err(ConnError::Protocol(format!("have of piece {piece} out of range")));
                    }
                    self.conn.remote_have(&blob, e.meta.num_pieces(), piece);
                    if let Some(a) = e.actor() {
                        let _ = a.send(Event::Have { peer, piece });
                    }
                }
            }
            Message::Request { blob, piece } => {
                let n = node.cfg.peer_request_rate;
                let rate = shoal_core::ratelimit::Rate { per_second: n, burst: n };
                if self.requests.admit(self.started.elapsed(), rate) {
                    self.serve(blob, piece);
                } else {
                    node.metrics.requests_limited.inc();
                    self.conn.send(&Message::Reject { blob, piece, reason: RejectReason::Busy });
                }
            }
            Message::Cancel { blob, piece } => {
                if let Some(h) = self.serving.lock().remove(&(blob, piece)) {
                    h.abort();
                }
            }
            Message::Reject { blob, piece, reason } => {
                if let Some(a) = node.blob(&blob).and_then(|e| e.actor()) {
                    let ev = match reason {
                        RejectReason::UnknownBlob => Event::PeerGone { peer },
                        RejectReason::Busy => Event::Rejected { peer, piece, busy: true },
                        RejectReason::NotHave => Event::Rejected { peer, piece, busy: false },
                    };
                    let _ = a.send(ev);
                }
            }
            Message::Piece { blob, piece, data } => {
                let data = frame.slice_ref(data);
                self.receive_piece(blob, piece, data).await?;
            }
        }
        Ok(())
    }

    fn serve(&self, blob: Digest, piece: u32) {
        let reject = |reason| self.conn.send(&Message::Reject { blob, piece, reason });
        let Some(entry) = self.node.blob(&blob) else {
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
            Err(r) => return reject(if r.is_busy() { RejectReason::Busy } else { RejectReason::NotHave }),
        };
        // Counted by the budget above; given back unless the piece reaches the socket.
        let charge = self.node.is_origin.then(|| SeedCharge { entry: entry.clone(), piece, sent: false });
        let node = self.node.clone();
        let conn = self.conn.clone();
        let serving = self.serving.clone();
        let mut map = self.serving.lock();
        let piece_len = u64::from(entry.meta.piece_len(idx));
        let task = tokio::spawn(async move {
            // Validation keeps the memory at least one piece, so this always completes.
            let Some(memory) = node.reserve_upload_memory(piece_len).await else { return };
            let file = entry.file.clone();
            let read = node.store.blocking().run(move || file.read_piece(idx)).await;
            let data = match read {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%blob, piece, "cannot read piece to upload: {e}");
                    conn.send(&Message::Reject { blob, piece, reason: RejectReason::NotHave });
                    serving.lock().remove(&(blob, piece));
                    return;
                }
            };
            node.egress.acquire(data.len()).await;
            drop(backlog);
            let mut head = BytesMut::with_capacity(wire::LEN_PREFIX + wire::PIECE_HEADER_LEN);
            wire::encode_piece_header(blob, piece, data.len(), &mut head);
            node.metrics.bytes_out.inc_by(data.len() as u64);
            entry.uploaded.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            serving.lock().remove(&(blob, piece));
            let out = Out { head: head.freeze(), data: Some(data), _permit: Some((permit, memory)), charge };
            let _ = conn.tx.send(out);
        });
        map.insert((blob, piece), task.abort_handle());
    }

    async fn receive_piece(&self, blob: Digest, piece: u32, data: Bytes) -> Result<(), ConnError> {
        let node = &self.node;
        node.ingress.acquire(data.len()).await;
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
        let verified = node
            .store
            .blocking()
            .run(move || {
                if !partial.meta().verify_piece(idx, &data) {
                    return Ok(false);
                }
                partial.write_piece(idx, &data).map(|()| true)
            })
            .await;
        match verified {
            Ok(true) => {
                // The actor counts the bytes: two endgame copies can both get here, and only
                // the first it sees is new.
                let _ = actor.send(Event::PieceOk {
                    peer: self.conn.peer_id,
                    piece,
                    len,
                    from_origin: self.conn.is_origin,
                });
                Ok(())
            }
            Ok(false) => {
                node.metrics.pieces_corrupt.inc();
                let _ = actor.send(Event::PieceBad { peer: self.conn.peer_id, piece });
                Err(ConnError::CorruptPiece { blob, piece })
            }
            Err(e) => {
                let _ = actor.send(Event::StoreFailed { error: Arc::new(e) });
                Ok(())
            }
        }
    }
}

/// The driver against a scripted peer on an in-memory duplex: no TCP, no tracker.
#[cfg(test)]
mod tests {
    use shoal_core::MetaInfo;
    use shoal_core::metainfo::{MIN_PIECE_LEN, MetaInfoBuilder};
    use shoal_core::wire::pack_bits;
    use tempfile::TempDir;
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::SwarmConfig;

    const WAIT: Duration = Duration::from_secs(5);

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
        let meta = meta(data, MIN_PIECE_LEN);
        let partial = node.store.open_partial(meta.clone()).await.unwrap();
        for i in meta.all_pieces() {
            partial.write_piece(i, piece(&meta, data, i.get())).unwrap();
        }
        partial.commit(node.store.root()).unwrap();
        node.register_complete(node.store.open_complete(meta.digest()).await.unwrap().unwrap());
        meta
    }

    /// Makes `node` download `meta`, with the test as its actor.
    async fn downloading(node: &Arc<Node>, meta: MetaInfo) -> mpsc::UnboundedReceiver<Event> {
        let partial = node.store.open_partial(meta).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        node.insert_blob(Arc::new(BlobEntry::downloading(partial, tx)));
        rx
    }

    async fn event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
        tokio::time::timeout(WAIT, rx.recv()).await.expect("an event").expect("the node holds the sender")
    }

    /// The far end of a connection, scripted by a test.
    struct Remote {
        io: DuplexStream,
        buf: BytesMut,
        peer_id: PeerId,
    }

    impl Remote {
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
            self.send(&Message::Handshake { version: PROTOCOL_VERSION, peer_id: self.peer_id }).await;
            let f = self.frame().await;
            let (msg, _) = wire::decode(&f).unwrap().unwrap();
            assert_eq!(msg, Message::Handshake { version: PROTOCOL_VERSION, peer_id: node.peer_id });
        }
    }

    /// Runs the driver for an inbound connection from peer `n` at 127.0.0.`n`.
    fn start(node: &Arc<Node>, n: u8) -> (Remote, JoinHandle<Result<(), ConnError>>) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let permit = node.peers.try_slot().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, n], 4000));
        let task = tokio::spawn(run(node.clone(), ours, addr, false, false, permit));
        (Remote { io: theirs, buf: BytesMut::new(), peer_id: PeerId([n; 16]) }, task)
    }

    async fn connected(node: &Arc<Node>, n: u8) -> (Remote, JoinHandle<Result<(), ConnError>>) {
        let (mut remote, task) = start(node, n);
        remote.handshake(node).await;
        // The node registers the connection right after its handshake went out.
        tokio::time::timeout(WAIT, async {
            while node.peers.get(&remote.peer_id).is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the connection is registered");
        (remote, task)
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
        assert!(!node.peers.is_shunned(&PeerId([2; 16])), "a closed socket is not the peer's fault");
    }

    #[tokio::test]
    async fn wrong_magic_or_version_is_refused() {
        let (node, _dir) = node();
        let mut hs = BytesMut::new();
        wire::encode(&Message::Handshake { version: PROTOCOL_VERSION, peer_id: PeerId([2; 16]) }, &mut hs);
        // The magic follows the length prefix and the type byte.
        hs[wire::LEN_PREFIX + 1] ^= 0xff;
        let (mut remote, task) = start(&node, 2);
        remote.send_raw(&hs).await;
        assert!(matches!(ended(task).await, Err(ConnError::Decode(_))));

        let (mut remote, task) = start(&node, 3);
        remote.send(&Message::Handshake { version: PROTOCOL_VERSION + 1, peer_id: remote.peer_id }).await;
        assert!(matches!(ended(task).await, Err(ConnError::Protocol(_))));

        let (mut remote, task) = start(&node, 4);
        remote.send(&Message::KeepAlive).await;
        assert!(matches!(ended(task).await, Err(ConnError::Protocol(_))), "the first frame must be a handshake");

        assert_eq!(node.peers.len(), 0);
        assert_eq!(node.metrics.connections_rejected.get(), 3);
        assert_eq!(node.metrics.protocol_errors.get(), 3);
    }

    #[tokio::test]
    async fn a_garbage_frame_closes_only_its_connection() {
        let (node, _dir) = node();
        let (mut bad, bad_task) = connected(&node, 2).await;
        let (mut good, good_task) = connected(&node, 3).await;
        // A whole frame of an unknown type.
        bad.send_raw(&[0, 0, 0, 2, 0xee, 0]).await;
        assert!(matches!(ended(bad_task).await, Err(ConnError::Decode(_))));
        assert!(node.peers.is_shunned(&bad.peer_id), "a peer that breaks the protocol is shunned");
        assert!(node.peers.get(&bad.peer_id).is_none());
        // The other connection still answers.
        let blob = shoal_core::Digest::of(b"nothing here");
        good.send(&Message::Request { blob, piece: 0 }).await;
        let f = good.frame().await;
        let (msg, _) = wire::decode(&f).unwrap().unwrap();
        assert_eq!(msg, Message::Reject { blob, piece: 0, reason: RejectReason::UnknownBlob });
        assert!(!good_task.is_finished() && node.peers.get(&good.peer_id).is_some());
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

    #[tokio::test]
    async fn a_good_piece_is_reported_and_a_corrupt_one_shuns_its_sender() {
        let (node, _dir) = node();
        let bytes = data(2 * MIN_PIECE_LEN as usize);
        let meta = meta(&bytes, MIN_PIECE_LEN);
        let blob = meta.digest();
        let mut rx = downloading(&node, meta.clone()).await;
        let (mut remote, task) = connected(&node, 2).await;
        let bits = pack_bits(2, |_| true);
        remote.send(&Message::Bitfield { blob, num_pieces: 2, bits: &bits }).await;
        assert!(matches!(event(&mut rx).await, Event::PeerBitfield { .. }));

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
        assert!(matches!(event(&mut rx).await, Event::PeerGone { .. }));
        assert!(node.peers.is_shunned(&remote.peer_id));
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
}
