//! The download actor: one task per blob being downloaded.
//!
//! It owns the blob's [`Picker`] and the deadlines of its requests; connections send it
//! [`Event`]s and it answers by sending requests and cancels through connection handles. Piece
//! data never passes through it: a connection verifies and writes a piece, then reports it.
//! It announces to the tracker (at once, then at the tracker's interval), dials the peers it
//! is handed, and when every piece is present commits the blob after the whole-blob sha256
//! check.
//!
//! State machine (see `STATE.md` beside this file): Running → Committing → Complete, or
//! Failed on timeout, store error or shutdown. Pieces and partial files survive a failure,
//! so the next attempt resumes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_core::api::AnnounceRequest;
use shoal_core::picker::{Picker, PickerOptions, window_pieces};
use shoal_core::seeding::BUSY_BACKOFF;
use shoal_core::wire::Message;
use shoal_core::{Digest, PeerId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::SwarmConfig;
use crate::conn::{self, ConnHandle};
use crate::error::SwarmError;
use crate::node::{BlobEntry, Node};
use crate::store::{PartialBlob, StoreError};

/// What connections and helper tasks tell a download actor.
pub(crate) enum Event {
    /// A peer opened the blob and sent its bitfield.
    PeerBitfield {
        conn: Arc<ConnHandle>,
        bits: Vec<u8>,
    },
    Have {
        peer: PeerId,
        piece: u32,
    },
    /// A piece of `len` bytes from `peer` matched its hash and is written.
    PieceOk {
        peer: PeerId,
        piece: u32,
        len: u64,
        from_origin: bool,
    },
    /// A piece from `peer` failed its hash; the connection is being closed.
    PieceBad {
        peer: PeerId,
        piece: u32,
    },
    /// A peer refused a request: it lacks the piece, or is busy (try it again later).
    Rejected {
        peer: PeerId,
        piece: u32,
        busy: bool,
    },
    PeerGone {
        peer: PeerId,
    },
    /// Writing a piece failed (disk full, I/O error).
    StoreFailed {
        error: Arc<StoreError>,
    },
    /// An announce finished; announce again after `interval`.
    Announced {
        interval: Duration,
    },
}

/// How often the actor checks request deadlines.
const TICK: Duration = Duration::from_millis(100);
/// Re-announce at least this often while the download has no peer with pieces we need.
const STALLED_ANNOUNCE: Duration = Duration::from_millis(500);

struct Actor {
    node: Arc<Node>,
    entry: Arc<BlobEntry>,
    picker: Picker<PeerId>,
    peers: HashMap<PeerId, Arc<ConnHandle>>,
    /// Deadline of every request in flight.
    pending: HashMap<(PeerId, u32), Instant>,
    /// Peers that answered "busy", and until when they are not asked.
    backoff: HashMap<PeerId, Instant>,
    request_timeout: Duration,
}

/// The picker's settings for a download of pieces of `piece_length` over a link that takes
/// `ingress_rate` bytes/s (`None`: uncapped).
fn picker_options(cfg: &SwarmConfig, ingress_rate: Option<u64>, piece_length: u32, seed: u64) -> PickerOptions {
    PickerOptions {
        max_outstanding_per_peer: cfg.pipeline_depth,
        max_outstanding_per_origin: cfg.origin_pipeline_depth,
        seed,
        stripe_lookahead: cfg.stripe_lookahead,
        max_outstanding_total: window_pieces(
            ingress_rate,
            cfg.request_window.get(),
            u64::from(piece_length),
            cfg.pipeline_depth.saturating_mul(2),
        ),
        ..PickerOptions::default()
    }
}

pub(crate) async fn run(
    node: Arc<Node>,
    entry: Arc<BlobEntry>,
    partial: Arc<PartialBlob>,
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Result<(), SwarmError> {
    let meta = entry.meta.clone();
    let digest = meta.digest();
    let have = partial.have();
    let cfg = &node.cfg;
    let seed = if cfg.picker_seed == 0 { rand::random() } else { cfg.picker_seed };
    let opts = picker_options(cfg, node.ingress.rate(), meta.piece_length(), seed);
    // A capped link needs time to drain a full pipeline before the last request is served.
    let drain = node
        .ingress
        .rate()
        .map(|r| Duration::from_secs_f64(meta.piece_length() as f64 * cfg.pipeline_depth as f64 * 2.0 / r as f64))
        .unwrap_or_default();
    let mut actor = Actor {
        picker: Picker::new(meta.num_pieces(), &have, opts),
        peers: HashMap::new(),
        pending: HashMap::new(),
        backoff: HashMap::new(),
        request_timeout: cfg.request_timeout.get() + drain,
        node: node.clone(),
        entry: entry.clone(),
    };
    let deadline = Instant::now() + cfg.download_timeout.get();
    let mut next_announce = Instant::now();
    let mut announcing = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    while !actor.picker.is_complete() {
        tokio::select! {
            ev = rx.recv() => match ev {
                None => return Err(SwarmError::ShuttingDown),
                Some(Event::Announced { interval }) => {
                    announcing = false;
                    let stalled = actor.peers.is_empty();
                    next_announce = Instant::now() + if stalled { interval.min(STALLED_ANNOUNCE) } else { interval };
                }
                Some(Event::StoreFailed { error }) => return Err(SwarmError::Store(error)),
                Some(ev) => actor.handle(ev),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(SwarmError::Timeout { digest, secs: cfg.download_timeout.get().as_secs() });
                }
                actor.expire(now);
                if now >= next_announce && !announcing {
                    announcing = true;
                    let (n, e) = (node.clone(), entry.clone());
                    tokio::spawn(async move {
                        let interval = announce_and_connect(&n, &e).await;
                        if let Some(a) = e.actor() {
                            let _ = a.send(Event::Announced { interval });
                        }
                    });
                }
            }
        }
    }

    // Every piece is present: cancel leftovers, check the whole blob, commit.
    for (peer, piece) in actor.pending.keys() {
        if let Some(c) = actor.peers.get(peer) {
            c.send(&Message::Cancel { blob: digest, piece: *piece });
        }
    }
    let root = node.store.root().to_path_buf();
    let p = partial.clone();
    node.store.blocking().run(move || p.commit(&root)).await?;
    {
        let mut s = entry.shared.lock();
        s.complete = true;
        s.partial = None;
    }
    tracing::info!(%digest, "blob complete");
    let n = node.clone();
    tokio::spawn(async move { announce_once(&n, digest, true).await });
    Ok(())
}

impl Actor {
    fn handle(&mut self, ev: Event) {
        match ev {
            Event::PeerBitfield { conn, bits } => {
                let peer = conn.peer_id;
                if self.node.peers.is_shunned(&peer) {
                    return;
                }
                self.picker.peer_joined(peer, &bits, conn.is_origin);
                self.peers.insert(peer, conn);
                self.fill(peer);
            }
            Event::Have { peer, piece } => {
                self.picker.peer_have(peer, piece);
                self.fill(peer);
            }
            Event::PieceOk { peer, piece, len, from_origin } => {
                self.pending.remove(&(peer, piece));
                if self.picker.have(piece) {
                    // The second of two endgame copies that passed `has_piece` together: its
                    // request was settled (and cancelled) with the first, which was counted
                    // and announced.
                    self.refill(peer);
                    return;
                }
                let metrics = &self.node.metrics;
                metrics.pieces_verified.inc();
                metrics.bytes_in.with_label_values(&[if from_origin { "origin" } else { "peer" }]).inc_by(len);
                let counter = if from_origin { &self.entry.from_origin } else { &self.entry.from_peers };
                counter.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                let cancels = self.picker.piece_verified(peer, piece);
                let blob = self.entry.meta.digest();
                for other in &cancels {
                    self.pending.remove(&(*other, piece));
                    if let Some(c) = self.peers.get(other) {
                        c.send(&Message::Cancel { blob, piece });
                    }
                }
                self.announce_have(piece);
                self.refill(peer);
            }
            Event::PieceBad { peer, piece } => {
                tracing::warn!(%peer, piece, blob = %self.entry.meta.digest(), "corrupt piece; dropping peer");
                self.picker.piece_failed(peer, piece);
                self.drop_peer(peer);
            }
            Event::Rejected { peer, piece, busy } => {
                if self.pending.remove(&(peer, piece)).is_some() {
                    if busy {
                        self.picker.request_deferred(peer, piece);
                        self.backoff.insert(peer, Instant::now() + BUSY_BACKOFF);
                        // The piece may be available elsewhere.
                        self.fill_all();
                        return;
                    }
                    self.picker.request_rejected(peer, piece);
                }
                self.refill(peer);
            }
            Event::PeerGone { peer } => self.drop_peer(peer),
            Event::StoreFailed { .. } | Event::Announced { .. } => {}
        }
    }

    fn drop_peer(&mut self, peer: PeerId) {
        self.picker.peer_left(peer);
        self.peers.remove(&peer);
        self.backoff.remove(&peer);
        self.pending.retain(|(p, _), _| *p != peer);
        self.fill_all();
    }

    /// Records a new piece where uploads see it, and tells every peer of the blob.
    fn announce_have(&self, piece: u32) {
        let blob = self.entry.meta.digest();
        let peers: Vec<PeerId> = {
            let mut s = self.entry.shared.lock();
            if let Some(h) = s.have.get_mut(piece as usize) {
                *h = true;
            }
            s.peers.iter().copied().collect()
        };
        self.entry.progress.send_modify(|n| *n += 1);
        for p in peers {
            if let Some(c) = self.node.peers.get(&p) {
                c.send(&Message::Have { blob, piece });
            }
        }
    }

    /// Tops up `peer`'s pipeline; returns how many requests went out.
    fn fill(&mut self, peer: PeerId) -> usize {
        let Some(conn) = self.peers.get(&peer) else { return 0 };
        if self.backoff.get(&peer).is_some_and(|until| *until > Instant::now()) {
            return 0;
        }
        let blob = self.entry.meta.digest();
        let due = Instant::now() + self.request_timeout;
        let pieces = self.picker.next_requests(peer);
        for &piece in &pieces {
            conn.send(&Message::Request { blob, piece });
            self.pending.insert((peer, piece), due);
        }
        pieces.len()
    }

    fn fill_all(&mut self) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for p in peers {
            self.fill(p);
        }
    }

    /// After a request to `peer` settled: `peer` first, and if it takes nothing while the
    /// download has room, every other peer. With a request window the freed slot may be one
    /// that `peer` cannot use (it holds nothing more we lack); left unused, a download whose
    /// last pieces only another peer holds, an origin say, would wait for an event from that
    /// peer that never comes, since nothing is in flight to it.
    fn refill(&mut self, peer: PeerId) {
        if self.fill(peer) == 0 && self.picker.has_room() {
            self.fill_all();
        }
    }

    fn expire(&mut self, now: Instant) {
        let rested: Vec<PeerId> = self.backoff.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for p in rested {
            self.backoff.remove(&p);
            self.fill(p);
        }
        let expired: Vec<(PeerId, u32)> =
            self.pending.iter().filter(|(_, due)| **due <= now).map(|(k, _)| *k).collect();
        if expired.is_empty() {
            return;
        }
        let blob = self.entry.meta.digest();
        for (peer, piece) in &expired {
            self.pending.remove(&(*peer, *piece));
            self.node.metrics.requests_timed_out.inc();
            self.picker.request_timed_out(*peer, *piece);
            if let Some(c) = self.peers.get(peer) {
                c.send(&Message::Cancel { blob, piece: *piece });
            }
        }
        self.fill_all();
    }
}

/// Announces a downloading blob and dials the peers handed out, opening the blob on each
/// connection. Returns when to announce again.
async fn announce_and_connect(node: &Arc<Node>, entry: &Arc<BlobEntry>) -> Duration {
    let digest = entry.meta.digest();
    let req = AnnounceRequest {
        blob: digest,
        peer_id: node.peer_id,
        addr: node.advertise,
        complete: false,
        origin: node.is_origin,
    };
    let resp = match node.tracker.announce(&req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%digest, "announce failed: {e:#}");
            return Duration::from_secs(1);
        }
    };
    let have_peers = entry.shared.lock().peers.len();
    let room = node.cfg.max_peers_per_blob.saturating_sub(have_peers);
    let mut dials = Vec::new();
    for p in resp.peers.into_iter() {
        if p.origin {
            node.peers.note_origin(p.addr);
        }
        if p.addr == node.advertise || Some(node.peer_id) == p.peer_id {
            continue;
        }
        // Origins are always dialed: they are the seeds of last resort.
        if dials.len() >= room && !p.origin {
            continue;
        }
        let (n, e) = (node.clone(), entry.clone());
        dials.push(async move {
            if let Some(c) = conn::connect(&n, p.addr, p.origin).await {
                e.shared.lock().peers.insert(c.peer_id);
                let bits = e.bitfield();
                if !c.open_blob(digest, e.meta.num_pieces(), &bits) {
                    // Opened before this download started (an earlier attempt): replay what
                    // the remote told us then.
                    if let (Some(remote), Some(a)) = (c.remote_bits(&digest, e.meta.num_pieces()), e.actor()) {
                        let _ = a.send(Event::PeerBitfield { conn: c.clone(), bits: remote });
                    }
                }
            }
        });
    }
    futures::future::join_all(dials).await;
    Duration::from_millis(resp.interval_ms.clamp(100, 60_000))
}

/// Announces one blob once (seeding or complete); failures are logged.
pub(crate) async fn announce_once(node: &Arc<Node>, blob: Digest, complete: bool) {
    if node.tracker.is_empty() {
        return;
    }
    let req = AnnounceRequest { blob, peer_id: node.peer_id, addr: node.advertise, complete, origin: node.is_origin };
    if let Err(e) = node.tracker.announce(&req).await {
        tracing::warn!(%blob, "announce failed: {e:#}");
    }
}

/// Re-announces every complete blob periodically, so the tracker keeps handing this node out
/// while it seeds.
pub(crate) async fn seed_announcer(node: Arc<Node>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        for b in node.complete_blobs() {
            announce_once(&node, b, true).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_runtime::Duration;

    use super::picker_options;
    use crate::SwarmConfig;

    const MIB: u64 = 1 << 20;
    const PIECE: u32 = 1 << 20;

    #[test]
    fn picker_options_follow_the_config() {
        let cfg = SwarmConfig {
            pipeline_depth: 3,
            origin_pipeline_depth: 5,
            stripe_lookahead: 2,
            request_window: Duration::from_millis(400),
            ..SwarmConfig::default()
        };
        let o = picker_options(&cfg, Some(50 * MIB), PIECE, 7);
        assert_eq!(o.max_outstanding_per_peer, 3);
        assert_eq!(o.max_outstanding_per_origin, 5);
        assert_eq!(o.stripe_lookahead, 2);
        assert_eq!(o.seed, 7);
        // 400 ms at 50 MiB/s is 20 pieces of 1 MiB.
        assert_eq!(o.max_outstanding_total, 20);
    }

    #[test]
    fn request_window_has_a_floor_of_two_pipelines_and_no_bound_uncapped() {
        // (ingress, window, pipeline_depth) -> requests in flight at most, pieces of 1 MiB
        let table = [
            (Some(50 * MIB), 100, 4, 8),              // 5 pieces in the window: the floor, 2 x 4
            (Some(50 * MIB), 100, 1, 5),              // 100 ms at 50 MiB/s
            (Some(300 * MIB), 100, 4, 30),            // 30 pieces in the window
            (Some(50 * MIB), 0, 4, usize::MAX),       // 0s: no window
            (None, 100, 4, usize::MAX),               // uncapped: no window
            (Some(MIB), 100, usize::MAX, usize::MAX), // the floor saturates
        ];
        for (rate, ms, depth, want) in table {
            let cfg = SwarmConfig {
                pipeline_depth: depth,
                request_window: Duration::from_millis(ms),
                ..SwarmConfig::default()
            };
            let o = picker_options(&cfg, rate, PIECE, 1);
            assert_eq!(o.max_outstanding_total, want, "{rate:?} {ms}ms depth {depth}");
        }
    }
}
