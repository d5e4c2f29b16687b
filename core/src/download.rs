//! The download actor's decisions for one blob, as pure state: [`DownloadState`].
//!
//! The swarm's tokio actor (`swarm/src/download.rs`) and the load-test simulator drive this
//! same type, the first on the wall clock and the second on virtual time, so what the
//! simulator predicts is what the agents' own code decides. It owns the blob's [`Picker`],
//! the deadline of every request in flight, the peers that answered busy and until when, and
//! the announce schedule. It is fed events with the current time ([`DownloadState::peer_joined`],
//! [`DownloadState::piece_ok`], [`DownloadState::tick`], ...) and answers with [`Action`]s
//! that the driver carries out (send a request or a cancel, tell the blob's peers about a
//! piece, announce, commit) and takes with [`DownloadState::poll`].
//!
//! Time is a [`Duration`] since the download started; the driver picks the epoch. Nothing here
//! reads a clock, sleeps or does I/O.
//!
//! # Rules
//! - **Fill.** A peer's pipeline is topped up when it joins, tells us of a piece, or has a
//!   request settle, unless it is backing off. A request's deadline is `now +
//!   request_timeout`.
//! - **Refill.** When a request to a peer settles (a piece, a reject) and that peer takes
//!   nothing new while the download has room in its request window, every peer is offered
//!   the slot: with a window the freed slot may be one the delivering peer cannot use, and
//!   left unused a download whose last pieces only another peer holds (an origin, say) would
//!   wait for an event from that peer that never comes, since nothing is in flight to it.
//! - **Busy.** A peer that answers busy keeps the piece askable, is left alone for
//!   `busy_backoff`, and the other peers are offered the piece meanwhile. A plain busy (a
//!   full backlog) keeps the piece in its place in the order (`Picker::request_busy`): a
//!   reader streaming the blob may be waiting for it. A seeding refusal (a super-seeding
//!   origin sent the piece elsewhere) asks that peer for the piece only after its others
//!   (`Picker::request_deferred`).
//! - **Ticks.** Deadlines and back-offs are looked at only by [`DownloadState::tick`], which
//!   the driver calls every [`TICK`]: an expired request is cancelled and its piece offered to
//!   every peer; a rested peer is topped up. The first tick announces; after an announce
//!   answered, the next is due `interval` later, or at most [`STALLED_ANNOUNCE`] later while
//!   no peer has joined.
//! - **Commit.** When every piece is present, every request still in flight is cancelled and
//!   [`Action::Commit`] is the last action; later events are ignored.
//! - **Timeout.** A download still incomplete `download_timeout` after its start gives up
//!   with [`Action::GiveUp`] on the next tick.
//!
//! Determinism: peers are walked in join order and expirations in (peer, piece) order, so
//! the same events give the same actions, which the simulator's replay relies on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use crate::handout::Imports;
use crate::picker::{PeerKind, Picker, PickerOptions};
use crate::wire::RejectReason;

/// How often the driver calls [`DownloadState::tick`].
pub const TICK: Duration = Duration::from_millis(100);
/// Re-announce at least this often while no peer has joined the download.
pub const STALLED_ANNOUNCE: Duration = Duration::from_millis(500);
/// When to announce again after an announce failed.
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);
/// A download told to import only a share from other zones (or nothing) that has had no new
/// piece for this long asks peers of other zones for any piece its zone lacks
/// (`Picker::set_far_fallback`): the gateway of another share is gone or slow.
pub const FAR_FALLBACK: Duration = Duration::from_millis(300);

/// Tunables of one download.
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    pub picker: PickerOptions,
    /// A request not answered this long after it was sent is cancelled and asked elsewhere.
    /// [`request_timeout`] adds the time a capped link needs to drain a full pipeline.
    pub request_timeout: Duration,
    /// The download gives up this long after its start.
    pub download_timeout: Duration,
    /// How long a peer that answered busy is left alone; `None` treats a busy answer like a
    /// peer lacking the piece (a comparison for the simulator, not what a node does).
    pub busy_backoff: Option<Duration>,
}

/// A request timeout for pieces of `piece_length` over a link of `ingress_rate` bytes/s: the
/// configured `base`, plus the time the link needs to drain `2 × pipeline_depth` pieces, so
/// a request at the end of a full pipeline is not given up while the pieces before it still
/// arrive. Uncapped links add nothing.
pub fn request_timeout(
    base: Duration,
    ingress_rate: Option<u64>,
    piece_length: u32,
    pipeline_depth: usize,
) -> Duration {
    let drain = match ingress_rate {
        Some(rate) if rate > 0 => {
            Duration::try_from_secs_f64(f64::from(piece_length) * pipeline_depth as f64 * 2.0 / rate as f64)
                .unwrap_or(Duration::MAX)
        }
        _ => Duration::ZERO,
    };
    base.saturating_add(drain)
}

/// Which entries of a tracker's handout to dial, in handout order: every origin (the seeds of
/// last resort), and other peers while fewer than `max_peers` are open, counting the `open`
/// ones and every entry dialed here; never this node itself. Entries of other zones (`is_far`)
/// get a share of that room of their own, [`far_dials`], so a node with plenty of peers in its
/// zone still links its zone to the others; the rest of the room goes to its own zone first.
/// Without zones (`is_far` never true) the share is unused.
pub fn peers_to_dial<T>(
    handout: impl IntoIterator<Item = T>,
    open: usize,
    max_peers: usize,
    is_origin: impl Fn(&T) -> bool,
    is_self: impl Fn(&T) -> bool,
    is_far: impl Fn(&T) -> bool,
) -> Vec<T> {
    let room = max_peers.saturating_sub(open);
    let entries: Vec<T> = handout.into_iter().filter(|p| !is_self(p)).collect();
    let n_far = entries.iter().filter(|p| !is_origin(p) && is_far(p)).count();
    let mut near_left = entries.iter().filter(|p| !is_origin(p) && !is_far(p)).count();
    let far_room = n_far.min(far_dials(max_peers)).min(room);
    let mut far_taken = 0;
    let mut dials = Vec::new();
    for p in entries {
        if is_origin(&p) {
            dials.push(p);
        } else if is_far(&p) {
            // Its share, or any room the node's own zone leaves.
            if dials.len() < room && (far_taken < far_room || near_left == 0) {
                far_taken += 1;
                dials.push(p);
            }
        } else {
            near_left -= 1;
            if dials.len() + far_room.saturating_sub(far_taken) < room {
                dials.push(p);
            }
        }
    }
    dials
}

/// Peers of other zones a download dials when it has room for `max_peers`: `max(1,
/// max_peers / 2)`, at most what the tracker hands out. Only a zone's gateways are handed
/// peers of other zones, and each asks them only for the pieces of its share, one request at
/// a time (`crate::handout::Imports`), so more links feed its share sooner without importing
/// a piece more times (see BENCHMARKS.md, "Zones").
pub fn far_dials(max_peers: usize) -> usize {
    (max_peers / 2).max(1).min(max_peers)
}

/// What the driver is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for `piece`.
    Request { peer: P, piece: u32 },
    /// Tell `peer` we no longer want `piece`.
    Cancel { peer: P, piece: u32 },
    /// A new piece is present: tell every peer of the blob and make it servable.
    Have { piece: u32 },
    /// Announce the download to the tracker and dial the peers handed out; answer with
    /// [`DownloadState::announced`].
    Announce,
    /// Every piece is present: check the whole blob and commit it.
    Commit,
    /// The download timed out.
    GiveUp,
}

/// What a verified piece was to the download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// The first copy: count it.
    New,
    /// A second copy of a piece already present (two endgame copies in flight at once):
    /// its request is settled, nothing else.
    Duplicate,
    /// The download is over (committing, or gave up): ignore it.
    Ignored,
}

/// One blob's download decisions. `P` names a peer.
pub struct DownloadState<P> {
    picker: Picker<P>,
    opts: DownloadOptions,
    /// Joined peers in join order: the order `fill_all` walks them.
    peers: Vec<P>,
    /// The same peers, for lookups.
    joined: HashSet<P>,
    /// Deadline of every request in flight.
    pending: HashMap<(P, u32), Duration>,
    /// Peers that answered busy, and until when they are not asked.
    backoff: HashMap<P, Duration>,
    next_announce: Duration,
    announcing: bool,
    /// Committing or given up: events no longer matter.
    over: bool,
    /// Requests expired so far.
    timeouts: u64,
    /// When the last new piece came (or the imports were told): the far fallback's clock.
    last_progress: Duration,
    actions: VecDeque<Action<P>>,
}

impl<P: Copy + Eq + Hash + Ord + std::fmt::Debug> DownloadState<P> {
    /// A download of `num_pieces` pieces, `have[i]` of which are already present. A download
    /// that has every piece already commits at once.
    pub fn new(num_pieces: u32, have: &[bool], opts: DownloadOptions) -> Self {
        let picker = Picker::new(num_pieces, have, opts.picker.clone());
        let mut s = DownloadState {
            picker,
            opts,
            peers: Vec::new(),
            joined: HashSet::new(),
            pending: HashMap::new(),
            backoff: HashMap::new(),
            next_announce: Duration::ZERO,
            announcing: false,
            over: false,
            timeouts: 0,
            last_progress: Duration::ZERO,
            actions: VecDeque::new(),
        };
        if s.picker.is_complete() {
            s.finish();
        }
        s
    }

    /// The next action to carry out, if any. Drivers take them all after each event.
    pub fn poll(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// The picker, for reading.
    pub fn picker(&self) -> &Picker<P> {
        &self.picker
    }

    /// Every piece is present (the commit is due or done).
    pub fn is_complete(&self) -> bool {
        self.picker.is_complete()
    }

    /// Committing or given up.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Joined peers, in join order.
    pub fn peers(&self) -> &[P] {
        &self.peers
    }

    /// Requests that expired so far.
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The deadline of the request for `piece` to `peer`, if one is in flight.
    pub fn deadline(&self, peer: P, piece: u32) -> Option<Duration> {
        self.pending.get(&(peer, piece)).copied()
    }

    /// The earliest time at which a [`DownloadState::tick`] has something to do: a request
    /// deadline, the end of a back-off, a due announce, or the download's own timeout. A
    /// driver on virtual time schedules its next tick from this; `None` once over.
    pub fn next_wakeup(&self) -> Option<Duration> {
        if self.over {
            return None;
        }
        let mut t = self.opts.download_timeout;
        if !self.announcing {
            t = t.min(self.next_announce);
        }
        for &due in self.pending.values().chain(self.backoff.values()) {
            t = t.min(due);
        }
        if self.fallback_pending() {
            t = t.min(self.last_progress.saturating_add(FAR_FALLBACK));
        }
        Some(t)
    }

    /// `peer` opened the blob with its packed bitfield (again: the new bitfield replaces the
    /// old one). A peer the picker blacklisted is ignored.
    pub fn peer_joined(&mut self, peer: P, bits: &[u8], is_origin: bool, now: Duration) {
        self.peer_joined_as(peer, bits, PeerKind::from_origin(is_origin), now);
    }

    /// [`DownloadState::peer_joined`] with the peer's [`PeerKind`] (its zone against ours):
    /// a `Far` peer is only asked for pieces no `Near` peer can give (see `crate::picker`).
    pub fn peer_joined_as(&mut self, peer: P, bits: &[u8], kind: PeerKind, now: Duration) {
        if self.over || self.picker.is_blacklisted(&peer) {
            return;
        }
        self.picker.peer_joined_as(peer, bits, kind);
        if self.joined.insert(peer) {
            self.peers.push(peer);
        }
        self.fill(peer, now);
    }

    /// `peer` has `piece` now.
    pub fn peer_have(&mut self, peer: P, piece: u32, now: Duration) {
        if self.over {
            return;
        }
        self.picker.peer_have(peer, piece);
        self.fill(peer, now);
    }

    /// A piece from `peer` matched its hash and is written.
    pub fn piece_ok(&mut self, peer: P, piece: u32, now: Duration) -> Verified {
        if self.over {
            return Verified::Ignored;
        }
        self.pending.remove(&(peer, piece));
        if self.picker.have(piece) {
            // The second of two endgame copies: its request was settled (and cancelled) with
            // the first, which was counted and announced.
            self.refill(peer, now);
            return Verified::Duplicate;
        }
        let cancels = self.picker.piece_verified(peer, piece);
        for other in cancels {
            self.pending.remove(&(other, piece));
            self.actions.push_back(Action::Cancel { peer: other, piece });
        }
        self.actions.push_back(Action::Have { piece });
        self.last_progress = now;
        if self.picker.is_complete() {
            self.finish();
        } else {
            self.refill(peer, now);
        }
        Verified::New
    }

    /// A piece from `peer` failed its hash: the peer is blacklisted and dropped.
    pub fn piece_failed(&mut self, peer: P, piece: u32, now: Duration) {
        if self.over {
            return;
        }
        self.picker.piece_failed(peer, piece);
        self.peer_left(peer, now);
    }

    /// `peer` refused the request for `piece` for `reason`: it lacks the piece, or is busy.
    pub fn rejected(&mut self, peer: P, piece: u32, reason: RejectReason, now: Duration) {
        if self.over {
            return;
        }
        if self.pending.remove(&(peer, piece)).is_some() {
            match (reason, self.opts.busy_backoff) {
                (RejectReason::Busy | RejectReason::Seeding, Some(backoff)) => {
                    if reason == RejectReason::Seeding {
                        self.picker.request_deferred(peer, piece);
                    } else {
                        self.picker.request_busy(peer, piece);
                    }
                    self.backoff.insert(peer, now.saturating_add(backoff));
                    // The piece may be available elsewhere.
                    self.fill_all(now);
                    return;
                }
                _ => self.picker.request_rejected(peer, piece),
            }
        }
        self.refill(peer, now);
    }

    /// `peer` is gone (its connection closed, or it was dropped): its requests are released
    /// and offered to the others.
    pub fn peer_left(&mut self, peer: P, now: Duration) {
        if self.over {
            return;
        }
        self.picker.peer_left(peer);
        if self.joined.remove(&peer) {
            self.peers.retain(|p| *p != peer);
        }
        self.backoff.remove(&peer);
        self.pending.retain(|(p, _), _| *p != peer);
        self.fill_all(now);
    }

    /// The driver's timer: gives up past the download timeout, tops up rested peers, expires
    /// requests past their deadline, and announces when one is due.
    pub fn tick(&mut self, now: Duration) {
        if self.over {
            return;
        }
        if now >= self.opts.download_timeout {
            self.over = true;
            self.actions.push_back(Action::GiveUp);
            return;
        }
        let mut rested: Vec<P> = self.backoff.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        rested.sort_unstable();
        for p in rested {
            self.backoff.remove(&p);
            self.fill(p, now);
        }
        let mut expired: Vec<(P, u32)> = self.pending.iter().filter(|(_, due)| **due <= now).map(|(k, _)| *k).collect();
        if !expired.is_empty() {
            expired.sort_unstable();
            self.timeouts += expired.len() as u64;
            for (peer, piece) in expired {
                self.pending.remove(&(peer, piece));
                self.picker.request_timed_out(peer, piece);
                self.actions.push_back(Action::Cancel { peer, piece });
            }
            self.fill_all(now);
        }
        if self.fallback_pending() && now.saturating_sub(self.last_progress) >= FAR_FALLBACK {
            self.picker.set_far_fallback(true);
            self.fill_all(now);
        }
        if now >= self.next_announce && !self.announcing {
            self.announcing = true;
            self.actions.push_back(Action::Announce);
        }
    }

    /// An announce finished (or failed: pass [`ANNOUNCE_RETRY`]); the tracker asked for the
    /// next one `interval` later.
    pub fn announced(&mut self, interval: Duration, now: Duration) {
        self.announcing = false;
        let wait = if self.peers.is_empty() { interval.min(STALLED_ANNOUNCE) } else { interval };
        self.next_announce = now.saturating_add(wait);
    }

    /// The tracker told which pieces to ask peers of other zones for (see
    /// `crate::handout::Imports`; [`Imports::All`] until told). A download that then has no
    /// new piece for [`FAR_FALLBACK`] asks them for any piece its zone lacks.
    pub fn set_imports(&mut self, imports: Imports, now: Duration) {
        if self.over || imports == self.picker.imports() {
            return;
        }
        self.picker.set_imports(imports);
        self.last_progress = self.last_progress.max(now);
        self.fill_all(now);
    }

    /// Whether the far fallback may still come: the imports are restricted and it is off.
    fn fallback_pending(&self) -> bool {
        !self.picker.far_fallback() && self.picker.imports() != Imports::All
    }

    /// Tops up `peer`'s pipeline; returns how many requests went out.
    fn fill(&mut self, peer: P, now: Duration) -> usize {
        if !self.joined.contains(&peer) || self.backoff.get(&peer).is_some_and(|until| *until > now) {
            return 0;
        }
        let due = now.saturating_add(self.opts.request_timeout);
        let pieces = self.picker.next_requests(peer);
        for &piece in &pieces {
            self.pending.insert((peer, piece), due);
            self.actions.push_back(Action::Request { peer, piece });
        }
        pieces.len()
    }

    fn fill_all(&mut self, now: Duration) {
        for i in 0..self.peers.len() {
            let p = self.peers[i];
            self.fill(p, now);
        }
    }

    /// After a request to `peer` settled (see the module docs).
    fn refill(&mut self, peer: P, now: Duration) {
        if self.fill(peer, now) == 0 && self.picker.has_room() {
            self.fill_all(now);
        }
    }

    fn finish(&mut self) {
        self.over = true;
        let mut left: Vec<(P, u32)> = self.pending.drain().map(|(k, _)| k).collect();
        left.sort_unstable();
        for (peer, piece) in left {
            self.actions.push_back(Action::Cancel { peer, piece });
        }
        self.backoff.clear();
        self.actions.push_back(Action::Commit);
    }
}

#[cfg(test)]
mod tests;
