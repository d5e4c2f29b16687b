//! The download actor: one task per blob being downloaded, a thin driver of
//! [`shoal_core::download::DownloadState`].
//!
//! The state decides (which piece to request from whom, when to give a request up, when a
//! busy peer may be asked again, when to announce, when to commit); this task feeds it the
//! connections' [`Event`]s and its timer's ticks with the time since the download started,
//! and carries out its actions: requests and cancels through connection handles, `Have`s to
//! the blob's peers, announces (which dial the peers handed out), the commit. The load-test
//! simulator drives the same state on virtual time. Piece data never passes through here: a
//! connection verifies and writes a piece, then reports it. When every piece is present the
//! blob is committed after the whole-blob sha256 check.
//!
//! State machine (see `STATE.md` beside this file): Running → Committing → Complete, or
//! Failed on timeout, store error or shutdown. Pieces and partial files survive a failure,
//! so the next attempt resumes.
//!
//! The actor's event channel holds at most [`EVENT_QUEUE`] events; a connection waits for
//! room (so a peer flooding `Have`s is read no faster than the actor keeps up). The actor
//! closes it before it commits, so nothing waits on a commit.
//!
//! Peers: every announce also dials the blob's owners on the agent's origin ring, and when no
//! tracker answers, the blob is opened on peers already connected too: a download goes on with
//! every tracker down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_core::api::{AnnounceRequest, PeerInfo};
use shoal_core::download::{
    ANNOUNCE_RETRY, Action, DownloadOptions, DownloadState, TICK, Verified, peers_to_dial, request_timeout,
};
use shoal_core::handout::Imports;
use shoal_core::picker::{PickerOptions, window_pieces};
use shoal_core::seeding::BUSY_BACKOFF;
use shoal_core::wire::{Message, RejectReason};
use shoal_core::{Digest, PeerId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::SwarmConfig;
use crate::conn::{self, ConnHandle};
use crate::error::SwarmError;
use crate::node::{BlobEntry, Node};
use crate::store::{PartialBlob, StoreError};

/// Events queued for one download actor at most. Hard-coded: the actor handles an event in
/// microseconds, and a full queue only makes the senders wait.
pub(crate) const EVENT_QUEUE: usize = 1024;

/// The sending side of a download actor's events.
pub(crate) type EventTx = mpsc::Sender<Event>;

/// A download actor's event channel, of [`EVENT_QUEUE`] events.
pub(crate) fn events() -> (EventTx, mpsc::Receiver<Event>) {
    mpsc::channel(EVENT_QUEUE)
}

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
        reason: RejectReason,
    },
    PeerGone {
        peer: PeerId,
    },
    /// Writing a piece failed (disk full, I/O error).
    StoreFailed {
        error: Arc<StoreError>,
    },
    /// An announce finished; announce again after `interval`. `imports`: what the tracker
    /// said to ask peers of other zones for, if it said.
    Announced {
        interval: Duration,
        imports: Option<Imports>,
    },
}

/// The settings of one download of pieces of `piece_length` on a node whose link takes
/// `ingress_rate` bytes/s (`None`: uncapped): the picker's caps, the request window, and the
/// request timeout with the drain of a full pipeline added. The simulator builds its
/// downloads with this too.
pub fn download_options(cfg: &SwarmConfig, ingress_rate: Option<u64>, piece_length: u32, seed: u64) -> DownloadOptions {
    DownloadOptions {
        picker: PickerOptions {
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
        },
        request_timeout: request_timeout(cfg.request_timeout.get(), ingress_rate, piece_length, cfg.pipeline_depth),
        download_timeout: cfg.download_timeout.get(),
        busy_backoff: Some(BUSY_BACKOFF),
    }
}

struct Actor {
    node: Arc<Node>,
    entry: Arc<BlobEntry>,
    state: DownloadState<PeerId>,
    /// The connection of every peer that joined.
    conns: HashMap<PeerId, Arc<ConnHandle>>,
    started: Instant,
}

/// How a round of actions ended.
enum Next {
    Running,
    Commit,
    GiveUp,
}

pub(crate) async fn run(
    node: Arc<Node>,
    entry: Arc<BlobEntry>,
    partial: Arc<PartialBlob>,
    mut rx: mpsc::Receiver<Event>,
) -> Result<(), SwarmError> {
    let meta = entry.meta.clone();
    let digest = meta.digest();
    let cfg = &node.cfg;
    let seed = if cfg.picker_seed == 0 { rand::random() } else { cfg.picker_seed };
    let opts = download_options(cfg, node.ingress.rate(), meta.piece_length(), seed);
    let mut actor = Actor {
        state: DownloadState::new(meta.num_pieces(), &partial.have(), opts),
        conns: HashMap::new(),
        started: Instant::now(),
        node: node.clone(),
        entry: entry.clone(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        match actor.apply() {
            Next::Running => {}
            Next::Commit => break,
            Next::GiveUp => {
                return Err(SwarmError::Timeout { digest, secs: cfg.download_timeout.get().as_secs() });
            }
        }
        tokio::select! {
            ev = rx.recv() => match ev {
                None => return Err(SwarmError::ShuttingDown),
                Some(Event::StoreFailed { error }) => return Err(SwarmError::Store(error)),
                Some(ev) => actor.handle(ev),
            },
            _ = tick.tick() => {
                let before = actor.state.timeouts();
                actor.state.tick(actor.now());
                node.metrics.requests_timed_out.inc_by(actor.state.timeouts() - before);
            }
        }
    }

    // Every piece is present and the leftovers are cancelled. Nothing more is heard (senders
    // get an error at once rather than wait on the commit): check the whole blob, commit.
    entry.shared.lock().actor = None;
    drop(rx);
    let p = partial.clone();
    node.store.blocking().run(move || p.commit()).await?;
    {
        let mut s = entry.shared.lock();
        s.complete = true;
        s.partial = None;
    }
    tracing::info!(%digest, "blob complete");
    let n = node.clone();
    shoal_runtime::spawn("announce", node.cancel.clone(), async move {
        announce_once(&n, digest, true).await;
        Ok(())
    });
    Ok(())
}

impl Actor {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn handle(&mut self, ev: Event) {
        let now = self.now();
        match ev {
            Event::PeerBitfield { conn, bits } => {
                let peer = conn.peer_id;
                if self.node.peers.is_shunned(&conn.remote) {
                    return;
                }
                let kind = self.node.zones.kind(&peer, conn.is_origin);
                self.conns.insert(peer, conn);
                self.state.peer_joined_as(peer, &bits, kind, now);
            }
            Event::Have { peer, piece } => self.state.peer_have(peer, piece, now),
            Event::PieceOk { peer, piece, len, from_origin } => {
                if self.state.piece_ok(peer, piece, now) != Verified::New {
                    return;
                }
                let metrics = &self.node.metrics;
                metrics.pieces_verified.inc();
                metrics.bytes_in.with_label_values(&[if from_origin { "origin" } else { "peer" }]).inc_by(len);
                if self.node.zones.is_far(&peer) {
                    metrics.cross_zone_bytes.inc_by(len);
                }
                let counter = if from_origin { &self.entry.from_origin } else { &self.entry.from_peers };
                counter.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            }
            Event::PieceBad { peer, piece } => {
                tracing::warn!(%peer, piece, blob = %self.entry.meta.digest(), "corrupt piece; dropping peer");
                self.state.piece_failed(peer, piece, now);
                self.conns.remove(&peer);
            }
            Event::Rejected { peer, piece, reason } => self.state.rejected(peer, piece, reason, now),
            Event::PeerGone { peer } => {
                self.state.peer_left(peer, now);
                self.conns.remove(&peer);
            }
            Event::Announced { interval, imports } => {
                if let Some(imports) = imports {
                    self.state.set_imports(imports, now);
                }
                self.state.announced(interval, now);
            }
            Event::StoreFailed { .. } => {}
        }
    }

    /// Carries out the state's actions.
    fn apply(&mut self) -> Next {
        let blob = self.entry.meta.digest();
        while let Some(action) = self.state.poll() {
            match action {
                Action::Request { peer, piece } => {
                    if let Some(c) = self.conns.get(&peer) {
                        c.send(&Message::Request { blob, piece });
                    }
                }
                Action::Cancel { peer, piece } => {
                    if let Some(c) = self.conns.get(&peer) {
                        c.send(&Message::Cancel { blob, piece });
                    }
                }
                Action::Have { piece } => self.announce_have(piece),
                Action::Announce => {
                    let (n, e) = (self.node.clone(), self.entry.clone());
                    let cancel = self.node.cancel.clone();
                    shoal_runtime::spawn(
                        "announce",
                        cancel,
                        shoal_runtime::request_id::inherit(async move {
                            let (interval, imports) = announce_and_connect(&n, &e).await;
                            if let Some(a) = e.actor() {
                                let _ = a.send(Event::Announced { interval, imports }).await;
                            }
                            Ok(())
                        }),
                    );
                }
                Action::Commit => return Next::Commit,
                Action::GiveUp => return Next::GiveUp,
            }
        }
        Next::Running
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
}

/// Announces a downloading blob and dials the peers handed out, and the blob's owners on the
/// ring meanwhile; opens the blob on each connection. When no tracker answers, the blob is
/// also opened on peers already connected (up to `max_peers_per_blob`). Returns when to
/// announce again, and what the tracker said to ask peers of other zones for, if it said.
async fn announce_and_connect(node: &Arc<Node>, entry: &Arc<BlobEntry>) -> (Duration, Option<Imports>) {
    let digest = entry.meta.digest();
    let req = AnnounceRequest {
        blob: digest,
        peer_id: node.peer_id,
        addr: node.advertise,
        complete: false,
        origin: node.is_origin,
        stopped: false,
        zone: node.cfg.zone.clone(),
    };
    // The owners are dialed whatever the tracker says (it hands them out too), so a tracker
    // that is down or slow holds nothing up. Like every dial, only inside `peer_networks`.
    let owners: Vec<PeerInfo> = node.ring.iter().flat_map(|r| r.owners(&digest)).map(owner).collect();
    let (announced, ()) = tokio::join!(node.tracker.announce(&req), dial_all(node, entry, owners.clone()));
    let mut resp = match announced {
        Ok(r) => r,
        Err(e) => {
            node.metrics.announce_failures.inc();
            tracing::warn!(%digest, "announce failed: {e:#}; using the ring's owners and the peers already connected");
            open_on_known(node, entry).await;
            return (ANNOUNCE_RETRY, None);
        }
    };
    // Only peers inside the configured networks: whatever a tracker says, this node never
    // dials elsewhere (nor takes an address elsewhere for an origin).
    let before = resp.peers.len();
    resp.peers.retain(|p| node.cfg.peer_networks.contains(p.addr.ip()));
    if resp.peers.len() < before {
        let outside = before - resp.peers.len();
        node.metrics.peers_outside_networks.inc_by(outside as u64);
        tracing::warn!(%digest, outside, "the tracker handed out peers outside swarm.peer_networks; ignored");
    }
    for p in resp.peers.iter().filter(|p| p.origin) {
        node.peers.note_origin(p.addr);
    }
    for p in &resp.peers {
        if let Some(id) = p.peer_id {
            node.zones.note(id, p.zone.as_deref());
        }
    }
    let open = entry.shared.lock().peers.len();
    let handout = peers_to_dial(
        resp.peers.into_iter().filter(|p| !owners.iter().any(|o| o.addr == p.addr)),
        open,
        node.cfg.max_peers_per_blob,
        |p| p.origin,
        |p| p.addr == node.advertise || Some(node.peer_id) == p.peer_id,
        |p| !shoal_core::handout::same_zone(node.cfg.zone.as_deref(), p.zone.as_deref()),
    );
    dial_all(node, entry, handout).await;
    (Duration::from_millis(resp.interval_ms.clamp(100, 60_000)), resp.imports)
}

/// A ring owner as a tracker would hand it out.
fn owner(o: &shoal_core::ring::OriginNode) -> PeerInfo {
    PeerInfo { peer_id: None, addr: o.peer, complete: true, origin: true, zone: None }
}

/// Dials `peers` (each once at a time, see `Peers::connect`) and opens the blob on each.
async fn dial_all(node: &Arc<Node>, entry: &Arc<BlobEntry>, peers: Vec<PeerInfo>) {
    let dials = peers.into_iter().map(|p| async move {
        if let Some(c) = conn::connect(node, p.addr, p.origin).await {
            open_blob(entry, &c).await;
        }
    });
    futures::future::join_all(dials).await;
}

/// Opens the blob on peers already connected (other than origins, which the ring gives),
/// while fewer than `max_peers_per_blob` have it open: a peer that holds the blob answers
/// with its bitfield, one that does not with `UnknownBlob`. Like a dial, only peers inside
/// `peer_networks`: one that connected from elsewhere is not asked.
pub(crate) async fn open_on_known(node: &Arc<Node>, entry: &Arc<BlobEntry>) {
    let open = entry.shared.lock().peers.clone();
    let room = node.cfg.max_peers_per_blob.saturating_sub(open.len());
    for c in node.peers.sample(room, &open, |c| node.cfg.peer_networks.contains(c.remote.ip)) {
        open_blob(entry, &c).await;
    }
}

/// Opens the blob on connection `c` with our bitfield, or, if it was opened before this
/// download started (an earlier attempt), replays what the remote told us then.
async fn open_blob(entry: &Arc<BlobEntry>, c: &Arc<ConnHandle>) {
    let digest = entry.meta.digest();
    entry.shared.lock().peers.insert(c.peer_id);
    let bits = entry.bitfield();
    if !c.open_blob(digest, entry.meta.num_pieces(), &bits)
        && let (Some(remote), Some(a)) = (c.remote_bits(&digest, entry.meta.num_pieces()), entry.actor())
    {
        let _ = a.send(Event::PeerBitfield { conn: c.clone(), bits: remote }).await;
    }
}

/// Announces one blob once (seeding or complete); failures are logged.
pub(crate) async fn announce_once(node: &Arc<Node>, blob: Digest, complete: bool) {
    if node.tracker.is_empty() {
        return;
    }
    let req = AnnounceRequest {
        blob,
        peer_id: node.peer_id,
        addr: node.advertise,
        complete,
        origin: node.is_origin,
        stopped: false,
        zone: node.cfg.zone.clone(),
    };
    if let Err(e) = node.tracker.announce(&req).await {
        tracing::warn!(%blob, "announce failed: {e:#}");
    }
}

/// Tells the blob's tracker this node no longer holds it (it was evicted), so it stops
/// handing the node out; failures are logged (the entry then expires with its TTL).
pub(crate) async fn announce_stopped(node: &Arc<Node>, blob: Digest) {
    if node.tracker.is_empty() {
        return;
    }
    let req = AnnounceRequest {
        blob,
        peer_id: node.peer_id,
        addr: node.advertise,
        complete: false,
        origin: node.is_origin,
        stopped: true,
        zone: node.cfg.zone.clone(),
    };
    if let Err(e) = node.tracker.announce(&req).await {
        tracing::debug!(%blob, "stopped announce failed: {e:#}");
    }
}

/// Re-announces every complete blob the node has open periodically, so the tracker keeps
/// handing this node out while it seeds. A blob closed for being idle is no longer announced
/// (its tracker entry expires), though it is still served when asked for.
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

    use super::download_options;
    use crate::SwarmConfig;

    const MIB: u64 = 1 << 20;
    const PIECE: u32 = 1 << 20;

    #[test]
    fn download_options_follow_the_config() {
        let cfg = SwarmConfig {
            pipeline_depth: 3,
            origin_pipeline_depth: 5,
            stripe_lookahead: 2,
            request_window: Duration::from_millis(400),
            ..SwarmConfig::default()
        };
        let d = download_options(&cfg, Some(50 * MIB), PIECE, 7);
        let o = &d.picker;
        assert_eq!(o.max_outstanding_per_peer, 3);
        assert_eq!(o.max_outstanding_per_origin, 5);
        assert_eq!(o.stripe_lookahead, 2);
        assert_eq!(o.seed, 7);
        // 400 ms at 50 MiB/s is 20 pieces of 1 MiB.
        assert_eq!(o.max_outstanding_total, 20);
        // The request timeout drains two pipelines of this blob's pieces: 6 MiB at 50 MiB/s.
        assert_eq!(d.request_timeout, cfg.request_timeout.get() + std::time::Duration::from_millis(120));
        assert_eq!(d.download_timeout, cfg.download_timeout.get());
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
            let o = download_options(&cfg, rate, PIECE, 1).picker;
            assert_eq!(o.max_outstanding_total, want, "{rate:?} {ms}ms depth {depth}");
        }
    }
}
