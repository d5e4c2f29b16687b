//! Piece picker: which piece to request from which peer, for one blob and one downloader.
//!
//! The swarm engine feeds a [`Picker`] events (a peer joined with its bitfield, announced a
//! piece, left; a request was rejected or timed out; a piece verified or failed its hash) and
//! calls [`Picker::next_requests`] whenever a peer's pipeline may have room. It is plain
//! synchronous state, deliberately: no clock, no I/O, and its only randomness is an RNG seeded
//! from [`PickerOptions::seed`], so the load-test simulator can drive this same code with
//! virtual time and replay a run exactly.
//!
//! # Policy
//! - **Rarest first.** Among the pieces a peer has and we lack, the ones held by the fewest
//!   connected, non-blacklisted peers (origins included) go first, so rare pieces spread before
//!   their holders leave. Ties are broken at random: each call draws a salt from the seeded RNG
//!   and orders tied pieces by a bijective hash of `piece ^ salt`.
//! - **In stripes.** Before rarity, pieces are ordered by stripe: the blob is cut into
//!   [`PickerOptions::stripes`] runs of consecutive pieces (at least [`MIN_STRIPE_PIECES`]
//!   each), and a piece of an earlier stripe goes first. The current stripe (the first with a
//!   piece we lack) and the next [`PickerOptions::stripe_lookahead`] rank together, so the
//!   next stripe's pieces spread while the current one finishes. The order is soft: a peer
//!   whose pieces of those stripes are all had or in flight gets pieces of later ones. So
//!   the verified prefix of the blob grows during the download, which lets a reader stream
//!   it and lets the whole-blob hash follow along, while rarest-first still spreads the
//!   pieces of each stripe.
//! - **One request per piece.** Outside endgame a piece is requested from at most one peer.
//! - **Pipelining.** A peer has at most `max_outstanding_per_peer` requests in flight
//!   (`max_outstanding_per_origin` for an origin); `next_requests` only tops the pipeline up.
//! - **Origin preference.** Origins are seeds whose upload we want to spend about once per
//!   piece, so an origin is only asked for pieces that no *askable* non-origin peer has:
//!   connected, not blacklisted, and without a don't-ask mark on that piece. Excluding
//!   don't-ask marks is a choice: without it, a piece whose only peer holders rejected it
//!   would be asked from nobody, and the download would stall although an origin has it.
//! - **Zone preference.** A peer joins as a [`PeerKind`]: `Near` (same zone as us, or either
//!   zone unknown), `Far` (another zone) or `Origin`. The origin rule is the last of a ladder:
//!   a `Far` peer is only asked for pieces that no askable `Near` peer has, and an origin only
//!   for pieces that no askable `Near` or `Far` peer has. So a piece crosses a zone boundary
//!   only while nobody in our zone can give it. At most
//!   [`PickerOptions::max_outstanding_far`] requests are in flight to far peers together: a
//!   zone whose hosts start at once would otherwise pull the same pieces across the boundary
//!   many times before any of them lands. Which pieces far peers may be asked for is what the
//!   tracker said ([`Picker::set_imports`], `crate::handout::Imports`): told nothing
//!   (`All`), any piece, but only when the near peers have nothing left to give (no missing
//!   piece an askable near peer has is free); a gateway of its zone (`Share`), the pieces of
//!   its share, whatever the near peers still have, since no other node of the zone imports
//!   them; any other node of a zone (`None`), none. [`Picker::set_far_fallback`] lifts the
//!   share: any piece, as with `All`. With every peer `Near` (no zones configured) this is
//!   the origin preference alone.
//! - **Don't ask.** After a peer rejected a piece or timed out on it, that peer is not asked
//!   for it again until it announces it again (a `have`, or a fresh bitfield on re-join).
//! - **Busy.** A piece a peer answered busy for stays askable there, in its place in the
//!   order ([`Picker::request_busy`]): a full backlog frees soon, and a reader streaming the
//!   blob may be waiting for that very piece.
//! - **Seeding last.** A piece a super-seeding peer refused because it sent it elsewhere
//!   ([`Picker::request_deferred`]) stays askable there too, but that peer is asked for it
//!   only after every other piece it has that we lack, until the piece arrives or the peer
//!   re-joins: the origin must be asked for the pieces it has not sent yet, or downloaders
//!   that cannot find each other stall.
//! - **Endgame.** When a request is in flight and no missing piece that a connected peer has
//!   is free any more, [`Picker::next_requests`] may also pick a piece that is outstanding at
//!   other peers: fewest outstanding requests first, then rarest, then random; at most one
//!   request per (peer, piece), within the pipeline cap. When only
//!   [`PickerOptions::endgame_pieces`] pieces or fewer are missing, duplicates are allowed
//!   even though free pieces remain, but only up to a *second* peer per piece: that case is
//!   about a slow last peer, not about flooding. [`Picker::in_endgame`] is true in both
//!   cases. [`Picker::piece_verified`] returns the peers whose duplicate requests to cancel.
//! - **Blacklist.** A peer that sent a piece failing its hash is blacklisted for this blob for
//!   good: its requests are released, its bitfield no longer counts, it is never asked again,
//!   and a later re-join is ignored.
//!
//! Inputs are never trusted to be in range: an out-of-range piece, an unknown peer, a short
//! or long bitfield or `have` slice is ignored or read as "not set", never a panic.
//!
//! # Invariants
//! - A piece is in exactly one state: *have* (no request in flight for it), *requested* (we
//!   lack it and it is outstanding at a non-empty set of peers, at most once per peer), or
//!   *free* (we lack it and nobody is asked).
//! - Every outstanding request is to a connected, non-blacklisted peer; a peer's own list of
//!   outstanding pieces and the per-piece sets describe the same requests.
//! - The per-piece availability counts and the `missing`, `requested` and `free` totals equal
//!   what a recount from the peer bitfields and request sets gives.
//!
//! [`Picker::check_invariants`] recomputes all of them from scratch (tests and the simulator
//! call it; it is far too slow for production).
//!
//! # Cost
//! Bitfields are kept packed (MSB-first, as on the wire), so `next_requests` scans the peer's
//! bitfield a byte at a time against ours: O(pieces / 8 + candidates × log pipeline) for the
//! normal pass, O(requests in flight) for the endgame pass, and it allocates only the
//! returned `Vec`. A join, a leave and a failed piece are O(pieces); every other event is
//! O(log requests).

use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::hash::Hash;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::handout::Imports;
use crate::wire::bit;

/// How a peer ranks as a source of pieces (see the module docs' zone preference): a peer is
/// only asked for pieces that no askable peer of a better kind has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerKind {
    /// A peer in our zone, or one whose zone (or ours) is unknown.
    Near,
    /// A peer in another zone: its upload crosses a zone boundary.
    Far,
    /// An origin: a seed of last resort, whatever its zone.
    Origin,
}

impl PeerKind {
    /// `Origin` for an origin, else `Near`: the kind of every peer when zones are not set.
    pub fn from_origin(is_origin: bool) -> PeerKind {
        if is_origin { PeerKind::Origin } else { PeerKind::Near }
    }

    /// The kind of a non-origin peer in `theirs` for a node in `ours`: `Far` only when both
    /// are known and differ.
    pub fn of_zones<Z: PartialEq + ?Sized>(is_origin: bool, ours: Option<&Z>, theirs: Option<&Z>) -> PeerKind {
        if is_origin {
            PeerKind::Origin
        } else if crate::handout::same_zone(ours, theirs) {
            PeerKind::Near
        } else {
            PeerKind::Far
        }
    }
}

/// Tunables of the picker.
#[derive(Clone, Debug)]
pub struct PickerOptions {
    /// Requests in flight to one peer at most (pipelining depth).
    pub max_outstanding_per_peer: usize,
    /// Requests in flight to one origin at most.
    pub max_outstanding_per_origin: usize,
    /// Seed of the random tie-break, so a run is reproducible.
    pub seed: u64,
    /// With this many pieces missing or fewer, a requested piece may also be asked from a
    /// second peer, even while other pieces are still free.
    pub endgame_pieces: u32,
    /// How many stripes the blob is cut into for the in-order preference; 1 is plain
    /// rarest-first. Stripes are never shorter than [`MIN_STRIPE_PIECES`].
    pub stripes: u32,
    /// Stripes past the first incomplete one that rank with it: a piece of any of these
    /// `1 + stripe_lookahead` stripes goes by rarity alone, so the next stripe's pieces
    /// spread while the current one finishes instead of all peers reaching it together with
    /// nothing to trade but what the origins send. 0 is strict stripe order.
    pub stripe_lookahead: u32,
    /// Requests in flight over all peers at most: what the download's own link can take in
    /// a short while, so requests do not pile up in the uploaders' queues.
    pub max_outstanding_total: usize,
    /// Requests in flight to `Far` peers (other zones) together at most. One: a zone's hosts
    /// each import a piece at a time, and the pieces spread inside the zone meanwhile (see
    /// BENCHMARKS.md, "Zones").
    pub max_outstanding_far: usize,
}

/// [`PickerOptions::max_outstanding_total`] for a download whose link takes `rate` bytes/s:
/// as many pieces of `piece_len` as arrive in `window` at that rate, rounded up, and at least
/// `floor` (the caller passes two peers' pipelines, so a slow link still keeps two peers busy).
/// Unbounded when the link is uncapped or the window is zero.
pub fn window_pieces(rate: Option<u64>, window: std::time::Duration, piece_len: u64, floor: usize) -> usize {
    let Some(rate) = rate else { return usize::MAX };
    if window.is_zero() || piece_len == 0 {
        return usize::MAX;
    }
    let bytes = u128::from(rate).saturating_mul(window.as_nanos()) / 1_000_000_000;
    usize::try_from(bytes.div_ceil(u128::from(piece_len))).unwrap_or(usize::MAX).max(floor.max(1))
}

/// Shortest stripe, in pieces: shorter ones would leave too few pieces to spread at once.
pub const MIN_STRIPE_PIECES: u32 = 16;

impl Default for PickerOptions {
    fn default() -> Self {
        PickerOptions {
            max_outstanding_per_peer: 4,
            max_outstanding_per_origin: 4,
            seed: 0,
            endgame_pieces: 3,
            stripes: 8,
            stripe_lookahead: 0,
            max_outstanding_total: usize::MAX,
            max_outstanding_far: 1,
        }
    }
}

/// Per-blob download state.
pub struct Picker<P> {
    /// Number of pieces of the blob; every per-piece vector has this many entries (or bits).
    num_pieces: u32,
    /// Read by `next_requests` for the pipeline caps and the endgame threshold.
    opts: PickerOptions,
    /// Pieces we have verified, packed MSB-first; trailing bits are zero.
    have: Vec<u8>,
    /// Number of pieces we lack.
    missing: u32,
    /// Per piece: connected, non-blacklisted peers (origins included) that have it.
    /// The rarest-first key.
    avail: Vec<u32>,
    /// Per piece: connected, non-blacklisted, non-origin peers that have it and may be asked
    /// for it (no don't-ask mark). An origin is only asked for pieces where this is zero.
    askable_peers: Vec<u32>,
    /// Per piece: the `Near` ones among `askable_peers`. A `Far` peer is only asked for
    /// pieces where this is zero.
    askable_near: Vec<u32>,
    /// Per piece: outstanding requests, i.e. the size of the piece's range in `inflight`.
    /// Zero for pieces we have.
    n_requests: Vec<u32>,
    /// Pieces in the requested state.
    n_requested: u32,
    /// Free pieces some connected peer has: what a normal pass could still assign.
    /// Zero (with something requested) means endgame.
    n_free: u32,
    /// Every outstanding request as (piece, peer), ordered so that one piece's requesters
    /// are a range: `piece_verified` reads it to return the peers to cancel.
    inflight: BTreeSet<(u32, P)>,
    /// Connected peers that are not blacklisted.
    peers: HashMap<P, PeerState>,
    /// Peers that sent a bad piece; never in `peers`.
    blacklist: HashSet<P>,
    /// Source of the per-call tie-break salt.
    rng: StdRng,
    /// Reused by `next_requests` to keep the best candidates without allocating.
    scratch: BinaryHeap<Candidate>,
    /// Pieces per stripe (the in-order preference).
    stripe_len: u32,
    /// Which pieces `Far` peers may be asked for (the tracker's share for this node).
    imports: Imports,
    /// Far peers may be asked for any piece whatever `imports` says (the download stalled).
    far_fallback: bool,
}

impl<P: Copy + Eq + Hash + Ord + std::fmt::Debug> Picker<P> {
    /// Starts a download of `num_pieces` pieces, of which `have[i]` are already here.
    /// Entries of `have` beyond `num_pieces` are ignored, missing ones read as `false`.
    pub fn new(num_pieces: u32, have: &[bool], opts: PickerOptions) -> Self {
        let n = num_pieces as usize;
        let mut have_bits = vec![0u8; n.div_ceil(8)];
        let mut missing = num_pieces;
        for (piece, _) in (0..num_pieces).zip(have).filter(|(_, h)| **h) {
            set_bit(&mut have_bits, piece, true);
            missing -= 1;
        }
        let stripe_len = num_pieces.div_ceil(opts.stripes.max(1)).max(MIN_STRIPE_PIECES);
        Picker {
            num_pieces,
            stripe_len,
            rng: StdRng::seed_from_u64(opts.seed),
            opts,
            have: have_bits,
            missing,
            avail: vec![0; n],
            askable_peers: vec![0; n],
            askable_near: vec![0; n],
            n_requests: vec![0; n],
            n_requested: 0,
            n_free: 0,
            inflight: BTreeSet::new(),
            peers: HashMap::new(),
            blacklist: HashSet::new(),
            scratch: BinaryHeap::new(),
            imports: Imports::All,
            far_fallback: false,
        }
    }

    /// Which pieces `Far` peers may be asked for from now on (the tracker's answer; see
    /// `crate::handout::Imports`); [`Imports::All`] until told.
    pub fn set_imports(&mut self, imports: Imports) {
        self.imports = imports;
    }

    pub fn imports(&self) -> Imports {
        self.imports
    }

    /// Lets `Far` peers be asked for any piece no `Near` peer has, whatever the share: the
    /// download's fallback when the pieces of the other shares do not come (a gateway of its
    /// zone is gone or slow).
    pub fn set_far_fallback(&mut self, on: bool) {
        self.far_fallback = on;
    }

    pub fn far_fallback(&self) -> bool {
        self.far_fallback
    }

    /// Whether `Far` peers may be asked for nothing at all now.
    fn imports_nothing(&self) -> bool {
        !self.far_fallback && self.imports == Imports::None
    }

    /// A peer connected and sent its packed bitfield (MSB-first; missing bytes read as unset,
    /// bits past the last piece are ignored). For a known peer the new bitfield and origin
    /// flag replace the old ones and its don't-ask marks are cleared; its outstanding requests
    /// stay. A blacklisted peer is ignored.
    pub fn peer_joined(&mut self, peer: P, bits: &[u8], is_origin: bool) {
        self.peer_joined_as(peer, bits, PeerKind::from_origin(is_origin));
    }

    /// [`Picker::peer_joined`] with the peer's [`PeerKind`]; a re-join may change it.
    pub fn peer_joined_as(&mut self, peer: P, bits: &[u8], kind: PeerKind) {
        if self.blacklist.contains(&peer) {
            return;
        }
        let mut state = match self.peers.remove(&peer) {
            Some(old) => {
                self.forget_bits(&old);
                old
            }
            None => PeerState {
                kind,
                bits: Vec::new(),
                dont_ask: Vec::new(),
                deferred: Vec::new(),
                outstanding: Vec::new(),
            },
        };
        state.kind = kind;
        state.dont_ask.clear();
        state.deferred.clear();
        state.bits.clear();
        state.bits.resize(self.have.len(), 0);
        let n = state.bits.len().min(bits.len());
        state.bits[..n].copy_from_slice(&bits[..n]);
        clear_tail(&mut state.bits, self.num_pieces);
        for_each_set(&state.bits, |piece| self.add_avail(piece, Some(kind)));
        self.peers.insert(peer, state);
    }

    /// A peer announced a piece; this also lifts its don't-ask mark on that piece.
    pub fn peer_have(&mut self, peer: P, piece: u32) {
        if piece >= self.num_pieces {
            return;
        }
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let had = bit(&state.bits, piece);
        let was_askable = had && !bit(&state.dont_ask, piece);
        let kind = state.kind;
        set_bit(&mut state.bits, piece, true);
        set_bit(&mut state.dont_ask, piece, false);
        if !had {
            self.add_avail(piece, None);
        }
        if !was_askable {
            self.count_askable(piece, kind, true);
        }
    }

    /// A peer disconnected: its bitfield stops counting and its requests are released, so
    /// other peers can be asked. A blacklisted peer stays blacklisted.
    pub fn peer_left(&mut self, peer: P) {
        self.remove_peer(peer);
    }

    /// Pieces to request from `peer` now, rarest first, topping its pipeline up to the cap.
    /// The returned requests count as outstanding until verified, failed, rejected, timed
    /// out, or the peer leaves. Empty for an unknown or blacklisted peer.
    pub fn next_requests(&mut self, peer: P) -> Vec<u32> {
        let Some(state) = self.peers.get(&peer) else {
            return Vec::new();
        };
        let cap = if state.kind == PeerKind::Origin {
            self.opts.max_outstanding_per_origin
        } else {
            self.opts.max_outstanding_per_peer
        };
        let mut want = cap.saturating_sub(state.outstanding.len()).min(self.room());
        if state.kind == PeerKind::Far && want > 0 && self.missing > 0 {
            let share = matches!(self.imports, Imports::Share { .. }) && !self.far_fallback;
            if self.imports_nothing() || (!share && self.near_can_fill()) {
                return Vec::new();
            }
            want = want.min(self.opts.max_outstanding_far.saturating_sub(self.far_in_flight()));
        }
        if want == 0 || self.missing == 0 {
            return Vec::new();
        }
        let mut picked = self.pick_free(peer, want);
        if picked.len() < want && self.in_endgame() {
            let more = self.pick_duplicates(peer, want - picked.len());
            picked.extend(more);
        }
        picked
    }

    /// Piece `piece` from `from` passed its hash check. Returns the other peers that still
    /// have a request for it in flight (the caller cancels them), in peer order. A repeated
    /// verification returns nothing.
    pub fn piece_verified(&mut self, from: P, piece: u32) -> Vec<P> {
        if piece >= self.num_pieces || self.have(piece) {
            return Vec::new();
        }
        // `inflight` is ordered by (piece, peer) and `P` has no least value, so the piece's
        // requesters are read as the two runs on either side of (piece, from).
        let below = self.inflight.range(..(piece, from)).rev().take_while(|(p, _)| *p == piece);
        let from_up = self.inflight.range((piece, from)..).take_while(|(p, _)| *p == piece);
        let mut requesters: Vec<P> = below.chain(from_up).map(|&(_, q)| q).collect();
        requesters.sort_unstable();
        for &q in &requesters {
            self.remove_request(piece, q);
        }
        requesters.retain(|&q| q != from);
        self.mark_have(piece);
        requesters
    }

    /// Piece `piece` from `from` failed its hash check: `from` is blacklisted for this blob
    /// (also when it is unknown, so a later join is ignored) and everything it was asked for,
    /// `piece` included, becomes requestable from others.
    pub fn piece_failed(&mut self, from: P, _piece: u32) {
        self.remove_peer(from);
        self.blacklist.insert(from);
    }

    /// `peer` rejected the request for `piece`: release it and do not ask `peer` for it again
    /// until it announces the piece again.
    pub fn request_rejected(&mut self, peer: P, piece: u32) {
        self.give_up(peer, piece);
    }

    /// The peer refused for now (busy: its backlog is full): release the request without
    /// marking the piece "don't ask" at that peer, so it may be asked again later, in its
    /// place in the order. The caller backs off before asking that peer again.
    pub fn request_busy(&mut self, peer: P, piece: u32) {
        if piece < self.num_pieces && self.peers.contains_key(&peer) {
            self.remove_request(piece, peer);
        }
    }

    /// The peer refused for now because it super-seeds: like [`Picker::request_busy`], but
    /// until the piece is here that peer is asked for it only after every other piece it
    /// has. A super-seeding origin refuses the pieces it has already sent once and wants to
    /// be asked for the others, and downloaders that all asked again for the same refused
    /// pieces would never reach the unsent ones.
    pub fn request_deferred(&mut self, peer: P, piece: u32) {
        if piece < self.num_pieces
            && let Some(state) = self.peers.get_mut(&peer)
        {
            if state.deferred.is_empty() {
                state.deferred.resize(self.have.len(), 0);
            }
            set_bit(&mut state.deferred, piece, true);
            self.remove_request(piece, peer);
        }
    }

    /// The request for `piece` to `peer` timed out: like a rejection while another connected
    /// peer may still be asked for the piece; otherwise like a busy answer, so a slow sole
    /// holder (an origin under load, say) is asked again rather than never, which would leave
    /// the piece with no one to ask until the download timed out. A timeout already costs the
    /// request timeout, so asking again cannot spin.
    pub fn request_timed_out(&mut self, peer: P, piece: u32) {
        if self.askable_elsewhere(peer, piece) {
            self.give_up(peer, piece);
        } else {
            self.request_busy(peer, piece);
        }
    }

    /// Whether every piece is here.
    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// Whether we have `piece`; `false` when out of range.
    pub fn have(&self, piece: u32) -> bool {
        bit(&self.have, piece)
    }

    /// Number of pieces we lack.
    pub fn missing(&self) -> u32 {
        self.missing
    }

    pub fn is_blacklisted(&self, peer: &P) -> bool {
        self.blacklist.contains(peer)
    }

    /// Whether the download could take another request now: pieces are missing and fewer
    /// than [`PickerOptions::max_outstanding_total`] requests are in flight. A caller that
    /// settled a request with one peer and topped that peer up asks the others while this
    /// holds: the freed slot may be one that peer cannot use.
    pub fn has_room(&self) -> bool {
        self.missing > 0 && self.room() > 0
    }

    /// Requests the total cap still allows.
    fn room(&self) -> usize {
        self.opts.max_outstanding_total.saturating_sub(self.inflight.len())
    }

    /// Requests in flight to `peer`.
    pub fn outstanding(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |s| s.outstanding.len())
    }

    /// Whether duplicate requests are allowed now (see the module doc): something is in
    /// flight, and either nothing is left to assign normally or few pieces are missing.
    pub fn in_endgame(&self) -> bool {
        self.n_requested > 0 && (self.n_free == 0 || self.missing <= self.opts.endgame_pieces)
    }

    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    /// Connected, non-blacklisted peers (origins included) that have `piece`; 0 when out of
    /// range.
    pub fn availability(&self, piece: u32) -> u32 {
        self.avail.get(piece as usize).copied().unwrap_or(0)
    }

    /// Recomputes every invariant of the module doc from scratch and panics on the first one
    /// broken. O(pieces × peers): for tests and the simulator, not for production.
    pub fn check_invariants(&self) {
        let n = self.num_pieces as usize;
        let bytes = n.div_ceil(8);
        assert_eq!(self.have.len(), bytes, "have bitfield length");
        assert_eq!(tail_bits(&self.have, self.num_pieces), 0, "have bits past the end");
        assert_eq!((self.avail.len(), self.askable_peers.len(), self.n_requests.len()), (n, n, n));
        let mut avail = vec![0u32; n];
        let mut askable = vec![0u32; n];
        let mut near = vec![0u32; n];
        let mut requests = vec![0u32; n];
        for (peer, state) in &self.peers {
            assert!(!self.blacklist.contains(peer), "{peer:?} is connected and blacklisted");
            assert_eq!(state.bits.len(), bytes, "{peer:?} bitfield length");
            assert_eq!(tail_bits(&state.bits, self.num_pieces), 0, "{peer:?} bits past the end");
            assert!(state.dont_ask.is_empty() || state.dont_ask.len() == bytes);
            for piece in 0..self.num_pieces {
                if bit(&state.bits, piece) {
                    avail[piece as usize] += 1;
                    if state.kind != PeerKind::Origin && !bit(&state.dont_ask, piece) {
                        askable[piece as usize] += 1;
                        near[piece as usize] += u32::from(state.kind == PeerKind::Near);
                    }
                }
            }
            let mut pieces = state.outstanding.clone();
            pieces.sort_unstable();
            pieces.dedup();
            assert_eq!(pieces.len(), state.outstanding.len(), "{peer:?} asked twice for a piece");
            for &piece in &pieces {
                assert!(self.inflight.contains(&(piece, *peer)), "{peer:?} piece {piece} not in flight");
            }
        }
        for &(piece, peer) in &self.inflight {
            assert!(piece < self.num_pieces, "request for out-of-range piece {piece}");
            let state = self.peers.get(&peer).unwrap_or_else(|| panic!("request to gone {peer:?}"));
            assert!(state.outstanding.contains(&piece), "{peer:?} piece {piece} not outstanding");
            requests[piece as usize] += 1;
        }
        assert_eq!(avail, self.avail, "availability");
        assert_eq!(askable, self.askable_peers, "askable peer availability");
        assert_eq!(near, self.askable_near, "askable near peer availability");
        assert_eq!(requests, self.n_requests, "request counts");
        let (mut missing, mut requested, mut free) = (0, 0, 0);
        for piece in 0..self.num_pieces {
            let i = piece as usize;
            match (self.have(piece), requests[i]) {
                (true, 0) => {}
                (true, k) => panic!("piece {piece} is here but has {k} requests in flight"),
                (false, 0) => {
                    missing += 1;
                    free += u32::from(avail[i] > 0);
                }
                (false, _) => {
                    missing += 1;
                    requested += 1;
                }
            }
        }
        assert_eq!(missing, self.missing, "missing count");
        assert_eq!(requested, self.n_requested, "requested count");
        assert_eq!(free, self.n_free, "free count");
    }
}

/// What the picker knows about one connected, non-blacklisted peer.
struct PeerState {
    /// Which of `askable_peers` and `askable_near` it counts in; an origin's selects the
    /// pipeline cap.
    kind: PeerKind,
    /// Its pieces, packed MSB-first, exactly as long as ours; trailing bits are zero.
    bits: Vec<u8>,
    /// Pieces not to ask it for (rejected or timed out), packed; empty until the first mark.
    dont_ask: Vec<u8>,
    /// Pieces it refused as seeding, packed; empty until the first mark. They stay askable
    /// but rank after every other piece it has (see [`Picker::request_deferred`]).
    deferred: Vec<u8>,
    /// Pieces requested from it and not settled yet; mirrors its entries in `inflight`.
    outstanding: Vec<u32>,
}

/// A candidate of one `next_requests` pass: (primary key, random tie-break, piece); smaller
/// is better.
type Candidate = (u64, u64, u32);

impl<P: Copy + Eq + Hash + Ord + std::fmt::Debug> Picker<P> {
    /// Normal pass: up to `want` free pieces from `peer`, rarest first.
    fn pick_free(&mut self, peer: P, want: usize) -> Vec<u32> {
        let salt: u64 = self.rng.random();
        // Stripes up to `base` rank together (key 0), later ones in order after them.
        let base = (self.first_missing() / self.stripe_len).saturating_add(self.opts.stripe_lookahead);
        let state = &self.peers[&peer];
        let scratch = &mut self.scratch;
        for (byte_idx, (&theirs, &ours)) in (0u32..).zip(state.bits.iter().zip(&self.have)) {
            let dont_ask = state.dont_ask.get(byte_idx as usize).copied().unwrap_or(0);
            let deferred = state.deferred.get(byte_idx as usize).copied().unwrap_or(0);
            let mut mask = theirs & !ours & !dont_ask;
            while mask != 0 {
                let j = mask.leading_zeros();
                mask &= !(0x80 >> j);
                let piece = byte_idx * 8 + j;
                let i = piece as usize;
                if self.n_requests[i] != 0
                    || shadowed(state.kind, &self.askable_near, &self.askable_peers, i)
                    || (state.kind == PeerKind::Far && !far_may_ask(self.imports, self.far_fallback, piece))
                {
                    continue;
                }
                let stripe = (piece / self.stripe_len).saturating_sub(base).min(u32::MAX >> 1);
                let later = u64::from(deferred & (0x80 >> j) != 0) << 63;
                let key = later | (u64::from(stripe) << 32) | u64::from(self.avail[i]);
                offer(scratch, want, (key, tie_break(salt, piece), piece));
            }
        }
        self.take_picked(peer)
    }

    /// The first piece we lack (`num_pieces` when none): its stripe is the current one.
    fn first_missing(&self) -> u32 {
        (0u32..)
            .zip(&self.have)
            .find(|(_, b)| **b != 0xff)
            .map_or(self.num_pieces, |(byte, b)| (byte * 8 + b.leading_ones()).min(self.num_pieces))
    }

    /// Endgame pass: up to `want` pieces in flight elsewhere, fewest requests first.
    fn pick_duplicates(&mut self, peer: P, want: usize) -> Vec<u32> {
        let salt: u64 = self.rng.random();
        // With free pieces left we are here only because few pieces are missing: allow a
        // second requester, not more.
        let max_requests = if self.n_free == 0 { u32::MAX } else { 2 };
        let state = &self.peers[&peer];
        let scratch = &mut self.scratch;
        let mut last = None;
        for &(piece, _) in &self.inflight {
            if last == Some(piece) {
                continue;
            }
            last = Some(piece);
            let i = piece as usize;
            let n = self.n_requests[i];
            if n >= max_requests
                || !bit(&state.bits, piece)
                || bit(&state.dont_ask, piece)
                || shadowed(state.kind, &self.askable_near, &self.askable_peers, i)
                || (state.kind == PeerKind::Far && !far_may_ask(self.imports, self.far_fallback, piece))
                || state.outstanding.contains(&piece)
            {
                continue;
            }
            let key = (u64::from(n) << 32) | u64::from(self.avail[i]);
            offer(scratch, want, (key, tie_break(salt, piece), piece));
        }
        self.take_picked(peer)
    }

    /// Empties the scratch heap best-first and records each piece as requested from `peer`.
    fn take_picked(&mut self, peer: P) -> Vec<u32> {
        let mut best = std::mem::take(&mut self.scratch).into_sorted_vec();
        let picked: Vec<u32> = best.iter().map(|c| c.2).collect();
        best.clear();
        self.scratch = BinaryHeap::from(best);
        for &piece in &picked {
            self.add_request(piece, peer);
        }
        picked
    }

    /// Whether some missing piece that an askable `Near` peer has is free: the near peers
    /// still have something to give. O(pieces): only asked for far peers.
    fn near_can_fill(&self) -> bool {
        (0..self.num_pieces).any(|piece| {
            let i = piece as usize;
            self.askable_near[i] != 0 && self.n_requests[i] == 0 && !self.have(piece)
        })
    }

    /// Requests in flight to `Far` peers. O(peers).
    fn far_in_flight(&self) -> usize {
        self.peers.values().filter(|s| s.kind == PeerKind::Far).map(|s| s.outstanding.len()).sum()
    }

    /// Whether a connected peer other than `peer` has `piece` and may be asked for it.
    /// O(peers): only timeouts ask.
    fn askable_elsewhere(&self, peer: P, piece: u32) -> bool {
        self.peers.iter().any(|(p, s)| *p != peer && bit(&s.bits, piece) && !bit(&s.dont_ask, piece))
    }

    /// Releases `peer`'s request for `piece`, if any, and marks the piece don't-ask for it.
    fn give_up(&mut self, peer: P, piece: u32) {
        if piece >= self.num_pieces || !self.peers.contains_key(&peer) {
            return;
        }
        self.remove_request(piece, peer);
        if self.have(piece) {
            return;
        }
        let state = self.peers.get_mut(&peer).expect("checked above");
        if state.dont_ask.is_empty() {
            state.dont_ask.resize(self.have.len(), 0);
        }
        let was_askable = bit(&state.bits, piece) && !bit(&state.dont_ask, piece);
        set_bit(&mut state.dont_ask, piece, true);
        let kind = state.kind;
        if was_askable {
            self.count_askable(piece, kind, false);
        }
    }

    /// Disconnects `peer`: releases its requests and uncounts its bitfield.
    fn remove_peer(&mut self, peer: P) {
        let Some(state) = self.peers.remove(&peer) else {
            return;
        };
        for &piece in &state.outstanding {
            self.inflight.remove(&(piece, peer));
            self.dec_requests(piece);
        }
        self.forget_bits(&state);
    }

    /// Uncounts the bitfield of a peer that was just taken out of `peers`.
    fn forget_bits(&mut self, state: &PeerState) {
        for_each_set(&state.bits, |piece| {
            let askable = (!bit(&state.dont_ask, piece)).then_some(state.kind);
            self.sub_avail(piece, askable);
        });
    }

    /// One more holder of `piece`; `askable` is its kind unless it is marked don't-ask.
    fn add_avail(&mut self, piece: u32, askable: Option<PeerKind>) {
        let i = piece as usize;
        self.avail[i] += 1;
        if let Some(kind) = askable {
            self.count_askable(piece, kind, true);
        }
        if self.avail[i] == 1 && self.n_requests[i] == 0 && !self.have(piece) {
            self.n_free += 1;
        }
    }

    fn sub_avail(&mut self, piece: u32, askable: Option<PeerKind>) {
        let i = piece as usize;
        self.avail[i] -= 1;
        if let Some(kind) = askable {
            self.count_askable(piece, kind, false);
        }
        if self.avail[i] == 0 && self.n_requests[i] == 0 && !self.have(piece) {
            self.n_free -= 1;
        }
    }

    /// Counts (`up`) or uncounts an askable holder of `piece` of `kind`.
    fn count_askable(&mut self, piece: u32, kind: PeerKind, up: bool) {
        let i = piece as usize;
        let step = |n: &mut u32| if up { *n += 1 } else { *n -= 1 };
        match kind {
            PeerKind::Near => {
                step(&mut self.askable_peers[i]);
                step(&mut self.askable_near[i]);
            }
            PeerKind::Far => step(&mut self.askable_peers[i]),
            PeerKind::Origin => {}
        }
    }

    /// Records a request for a piece we lack to a connected peer not yet asked for it.
    fn add_request(&mut self, piece: u32, peer: P) {
        let i = piece as usize;
        if self.n_requests[i] == 0 {
            self.n_requested += 1;
            if self.avail[i] > 0 {
                self.n_free -= 1;
            }
        }
        self.n_requests[i] += 1;
        self.inflight.insert((piece, peer));
        self.peers.get_mut(&peer).expect("requests go to connected peers").outstanding.push(piece);
    }

    /// Releases `peer`'s request for `piece` if there is one.
    fn remove_request(&mut self, piece: u32, peer: P) {
        if !self.inflight.remove(&(piece, peer)) {
            return;
        }
        let outstanding = &mut self.peers.get_mut(&peer).expect("requests go to connected peers").outstanding;
        let pos = outstanding.iter().position(|&p| p == piece).expect("mirrors inflight");
        outstanding.swap_remove(pos);
        self.dec_requests(piece);
    }

    /// One request for `piece` is gone (already taken out of `inflight`).
    fn dec_requests(&mut self, piece: u32) {
        let i = piece as usize;
        self.n_requests[i] -= 1;
        if self.n_requests[i] == 0 {
            self.n_requested -= 1;
            if self.avail[i] > 0 {
                self.n_free += 1;
            }
        }
    }

    /// A free piece we lacked is here now.
    fn mark_have(&mut self, piece: u32) {
        debug_assert_eq!(self.n_requests[piece as usize], 0, "requests settled first");
        set_bit(&mut self.have, piece, true);
        self.missing -= 1;
        if self.avail[piece as usize] > 0 {
            self.n_free -= 1;
        }
    }
}

/// Whether a peer of `kind` is not to be asked for piece `i` because an askable peer of a
/// better kind has it (the zone preference and the origin preference).
fn shadowed(kind: PeerKind, askable_near: &[u32], askable_peers: &[u32], i: usize) -> bool {
    match kind {
        PeerKind::Near => false,
        PeerKind::Far => askable_near[i] != 0,
        PeerKind::Origin => askable_peers[i] != 0,
    }
}

/// Whether a `Far` peer may be asked for `piece` under `imports` (see [`Picker::set_imports`]).
fn far_may_ask(imports: Imports, fallback: bool, piece: u32) -> bool {
    fallback || imports.includes(piece)
}

/// Keeps the `k` smallest candidates offered so far in a max-heap.
fn offer(heap: &mut BinaryHeap<Candidate>, k: usize, cand: Candidate) {
    if heap.len() < k {
        heap.push(cand);
    } else if let Some(mut worst) = heap.peek_mut()
        && cand < *worst
    {
        *worst = cand;
    }
}

/// Orders tied pieces at random: the splitmix64 finalizer is a bijection, so distinct pieces
/// never tie again and the order depends only on the seeded salt.
fn tie_break(salt: u64, piece: u32) -> u64 {
    let mut z = salt ^ u64::from(piece);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Calls `f` with the index of every set bit of a packed MSB-first bitfield.
fn for_each_set(bits: &[u8], mut f: impl FnMut(u32)) {
    for (byte_idx, &byte) in (0u32..).zip(bits) {
        let mut mask = byte;
        while mask != 0 {
            let j = mask.leading_zeros();
            mask &= !(0x80 >> j);
            f(byte_idx * 8 + j);
        }
    }
}

/// Sets or clears bit `i`; out of range is a no-op.
fn set_bit(bits: &mut [u8], i: u32, on: bool) {
    if let Some(b) = bits.get_mut((i / 8) as usize) {
        if on {
            *b |= 0x80 >> (i % 8);
        } else {
            *b &= !(0x80 >> (i % 8));
        }
    }
}

/// Clears the bits past piece `num_pieces - 1` in the last byte.
fn clear_tail(bits: &mut [u8], num_pieces: u32) {
    let used = num_pieces % 8;
    if let (Some(last), true) = (bits.last_mut(), used != 0) {
        *last &= 0xff << (8 - used);
    }
}

/// The bits past piece `num_pieces - 1` in the last byte.
fn tail_bits(bits: &[u8], num_pieces: u32) -> u8 {
    let used = num_pieces % 8;
    match bits.last() {
        Some(last) if used != 0 => last & !(0xff << (8 - used)),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::collection::vec;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::{PeerKind, Picker, PickerOptions, window_pieces};
    use crate::wire::pack_bits;

    const A: u8 = 1;
    const B: u8 = 2;
    const C: u8 = 3;
    const D: u8 = 4;
    const O: u8 = 9;

    /// A peer of a test set-up: (id, pieces it has, is origin).
    type Peer<'a> = (u8, &'a [u32], bool);

    fn opts(cap: usize) -> PickerOptions {
        PickerOptions { max_outstanding_per_peer: cap, max_outstanding_per_origin: cap, ..PickerOptions::default() }
    }

    fn bits(n: u32, pieces: &[u32]) -> Vec<u8> {
        pack_bits(n, |i| pieces.contains(&i))
    }

    /// A picker of `n` pieces, none here, with `peers` joined in order.
    fn setup(n: u32, peers: &[Peer<'_>], opts: PickerOptions) -> Picker<u8> {
        let mut p = Picker::new(n, &[], opts);
        for &(id, pieces, is_origin) in peers {
            p.peer_joined(id, &bits(n, pieces), is_origin);
        }
        p.check_invariants();
        p
    }

    /// Asks `peer` for its next requests, compares them (sorted) with `expect` and checks the
    /// invariants.
    fn check(p: &mut Picker<u8>, peer: u8, expect: &[u32]) -> Vec<u32> {
        let mut got = p.next_requests(peer);
        got.sort_unstable();
        assert_eq!(got, expect, "next_requests({peer})");
        p.check_invariants();
        got
    }

    const ALL8: &[u32] = &[0, 1, 2, 3, 4, 5, 6, 7];

    /// Earlier stripes go first; rarity orders pieces within the current stripe and the
    /// `stripe_lookahead` stripes after it.
    #[test]
    fn stripes_before_rarity() {
        let all: Vec<u32> = (0..64).collect();
        let range = |a: u32, b: u32| (a..b).collect::<Vec<u32>>();
        // (stripes, lookahead, pieces we have, rare pieces, cap, expected requests of A)
        type Case<'a> = (u32, u32, &'a [u32], &'a [u32], usize, Vec<u32>);
        let cases: &[Case<'_>] = &[
            // 64 pieces in 4 stripes of 16, strict order: the first 16 requests are stripe 0.
            (4, 0, &[], &[], 16, range(0, 16)),
            // A rare piece in stripe 1 waits; within stripe 0 the rare pieces go first.
            (4, 0, &[], &[3, 5, 20], 2, vec![3, 5]),
            // With a lookahead of one, stripes 0 and 1 rank together: the rare piece of
            // stripe 1 goes first, stripe 2 waits for both.
            (4, 1, &[], &[3, 20, 40], 2, vec![3, 20]),
            (4, 1, &[], &[], 32, range(0, 32)),
            // Stripe 0 complete: stripes 1 and 2 are the window now.
            (4, 1, &range(0, 16), &[50], 32, range(16, 48)),
            (4, 1, &range(0, 16), &[40, 50], 1, vec![40]),
            // A missing piece keeps its stripe current.
            (4, 0, &range(1, 16), &[], 1, vec![0]),
            // One stripe: plain rarest-first over the whole blob.
            (1, 0, &[], &[40, 60], 2, vec![40, 60]),
            // A lookahead past the end (any value a config may hold) is plain rarest-first.
            (4, u32::MAX, &range(0, 16), &[40, 60], 2, vec![40, 60]),
            // Stripes are at least MIN_STRIPE_PIECES long: 64 stripes are 16 pieces too.
            (64, 0, &[], &[], 4, vec![]),
        ];
        for (stripes, lookahead, have, rare, cap, expect) in cases {
            // A has every piece; B has every piece but the rare ones.
            let common: Vec<u32> = all.iter().copied().filter(|p| !rare.contains(p)).collect();
            let mut p = Picker::new(
                64,
                &(0..64).map(|i| have.contains(&i)).collect::<Vec<bool>>(),
                PickerOptions { stripes: *stripes, stripe_lookahead: *lookahead, ..opts(*cap) },
            );
            p.peer_joined(A, &bits(64, &all), false);
            p.peer_joined(B, &bits(64, &common), false);
            let got = p.next_requests(A);
            let mut sorted = got.clone();
            sorted.sort_unstable();
            if *stripes == 64 {
                assert!(got.iter().all(|&x| x < super::MIN_STRIPE_PIECES), "stripes {stripes}: {got:?}");
            } else {
                assert_eq!(&sorted, expect, "stripes {stripes}, lookahead {lookahead}, have {have:?}, rare {rare:?}");
            }
            p.check_invariants();
        }
    }

    #[test]
    fn rarest_first() {
        let swarm: &[Peer<'_>] = &[(A, ALL8, false), (B, &[0, 1, 2, 3], false), (C, &[0, 1], false)];
        let with_origin: &[Peer<'_>] = &[(A, &[0, 1, 2], false), (O, ALL8, true), (B, &[0, 1], false)];
        let cases: &[(&[Peer<'_>], usize, u8, &[u32])] = &[
            // Pieces 4..8 are held once, 2 and 3 twice, 0 and 1 three times.
            (swarm, 4, A, &[4, 5, 6, 7]),
            (swarm, 6, A, &[2, 3, 4, 5, 6, 7]),
            (swarm, 8, A, ALL8),
            (swarm, 2, B, &[2, 3]),
            (swarm, 4, C, &[0, 1]),
            // Origins count towards availability: 2 is held by A and O only.
            (with_origin, 1, A, &[2]),
        ];
        for &(peers, cap, asked, expect) in cases {
            let mut p = setup(8, peers, opts(cap));
            check(&mut p, asked, expect);
        }
    }

    #[test]
    fn tie_break_is_seeded() {
        let all: Vec<u32> = (0..64).collect();
        let pick = |seed| {
            let mut p = setup(64, &[(A, &all, false)], PickerOptions { seed, ..opts(4) });
            p.next_requests(A)
        };
        for seed in 0..8 {
            assert_eq!(pick(seed), pick(seed), "seed {seed} must replay");
        }
        let distinct: BTreeSet<Vec<u32>> = (0..8).map(pick).collect();
        assert!(distinct.len() > 4, "ties should be broken differently per seed: {distinct:?}");
    }

    #[test]
    fn pipeline_cap() {
        // (is origin, per-peer cap, per-origin cap, pieces asked on the first call)
        let cases = [(false, 3, 5, 3), (true, 3, 5, 5), (false, 0, 5, 0), (true, 3, 0, 0), (false, 20, 5, 16)];
        let all: Vec<u32> = (0..16).collect();
        for (is_origin, per_peer, per_origin, first) in cases {
            let opts = PickerOptions {
                max_outstanding_per_peer: per_peer,
                max_outstanding_per_origin: per_origin,
                ..PickerOptions::default()
            };
            let mut p = setup(16, &[(A, &all, is_origin)], opts);
            let got = p.next_requests(A);
            assert_eq!(got.len(), first, "case {is_origin} {per_peer} {per_origin}");
            assert_eq!(p.outstanding(&A), first);
            if first == 0 || first == 16 {
                continue;
            }
            check(&mut p, A, &[]);
            p.piece_verified(A, got[0]);
            assert_eq!(p.next_requests(A).len(), 1, "one slot freed");
            assert_eq!(p.outstanding(&A), first);
        }
    }

    #[test]
    fn window_pieces_rounds_up_and_has_a_floor() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let mib = 1u64 << 20;
        // (rate, window, piece length, floor, pieces)
        let cases: &[(Option<u64>, Duration, u64, usize, usize)] = &[
            (None, ms(100), 4 * mib, 8, usize::MAX),
            (Some(300_000_000), ms(0), 4 * mib, 8, usize::MAX),
            // 30 MB in 100 ms at 300 MB/s: 7.15 pieces of 4 MiB, rounded up.
            (Some(300_000_000), ms(100), 4 * mib, 2, 8),
            (Some(300_000_000), ms(200), 4 * mib, 8, 15),
            // 5 pieces of 1 MiB at 50 MiB/s, raised to the floor.
            (Some(50 * mib), ms(100), mib, 2, 5),
            (Some(50 * mib), ms(100), mib, 8, 8),
            // A zero floor still allows one request.
            (Some(mib), ms(100), 4 * mib, 0, 1),
            (Some(u64::MAX), Duration::from_secs(u64::MAX), 1, 8, usize::MAX),
        ];
        for &(rate, window, piece_len, floor, want) in cases {
            assert_eq!(window_pieces(rate, window, piece_len, floor), want, "{rate:?} {window:?} {piece_len} {floor}");
        }
    }

    #[test]
    fn total_cap_bounds_requests_over_all_peers() {
        // (per-peer cap, total cap, pieces asked of A, then B, then C on first calls)
        let cases: &[(usize, usize, [usize; 3])] =
            &[(4, usize::MAX, [4, 4, 4]), (4, 6, [4, 2, 0]), (4, 4, [4, 0, 0]), (2, 5, [2, 2, 1]), (4, 0, [0, 0, 0])];
        let all: Vec<u32> = (0..32).collect();
        for &(per_peer, total, expect) in cases {
            let peers: &[Peer<'_>] = &[(A, &all, false), (B, &all, false), (C, &all, false)];
            let mut p = setup(32, peers, PickerOptions { max_outstanding_total: total, ..opts(per_peer) });
            let got: Vec<usize> = [A, B, C].iter().map(|&q| p.next_requests(q).len()).collect();
            assert_eq!(got, expect, "per peer {per_peer}, total {total}");
            p.check_invariants();
            if total == 0 || total == usize::MAX {
                continue;
            }
            assert_eq!(p.has_room(), expect.iter().sum::<usize>() < total, "per peer {per_peer}, total {total}");
            // A verified piece frees one slot of the total, for whichever peer asks next.
            let first = *p.peers[&A].outstanding.first().expect("A was asked");
            assert!(p.piece_verified(A, first).is_empty());
            assert!(p.has_room(), "a slot is free");
            assert_eq!(p.next_requests(C).len(), 1, "per peer {per_peer}, total {total}");
            assert!(p.next_requests(A).is_empty(), "the freed slot is taken");
            assert!(!p.has_room() || expect.iter().sum::<usize>() < total, "the window is full again");
            p.check_invariants();
        }
    }

    #[test]
    fn no_duplicates_outside_endgame() {
        let all: Vec<u32> = (0..16).collect();
        let mut p = setup(16, &[(A, &all, false), (B, &all, false), (C, &all, false)], opts(4));
        let mut asked = BTreeSet::new();
        for peer in [A, B, C] {
            for piece in p.next_requests(peer) {
                assert!(asked.insert(piece), "piece {piece} asked twice");
            }
            assert!(!p.in_endgame());
            p.check_invariants();
        }
        assert_eq!(asked.len(), 12);
    }

    #[test]
    fn endgame_duplicates_and_cancels() {
        let all: &[u32] = &[0, 1, 2, 3];
        let peers: &[Peer<'_>] = &[(A, all, false), (B, all, false), (C, all, false), (D, all, false)];
        let mut p = setup(4, peers, PickerOptions { endgame_pieces: 0, ..opts(2) });
        let a = p.next_requests(A);
        assert!(!p.in_endgame(), "two pieces are still free");
        let b = p.next_requests(B);
        assert!(p.in_endgame(), "every missing piece is requested");
        // Every piece has one request, so C duplicates two of them and D the other two.
        let c = p.next_requests(C);
        let mut d = p.next_requests(D);
        d.extend(&c);
        d.sort_unstable();
        assert_eq!(d, all, "fewest outstanding requests first");
        p.check_invariants();
        // A already asked for its pieces and its pipeline is full.
        check(&mut p, A, &[]);
        // Verifying a piece returns the other peer asked for it.
        let dup = if c.contains(&a[0]) { C } else { D };
        assert_eq!(p.piece_verified(A, a[0]), [dup]);
        assert_eq!(p.outstanding(&A), 1);
        assert!(p.piece_verified(A, a[0]).is_empty(), "a repeated verification cancels nothing");
        // A's free slot goes to one of B's pieces: A is never asked twice for one piece.
        let again = p.next_requests(A);
        assert_eq!(again.len(), 1);
        assert!(b.contains(&again[0]), "{again:?} not among {b:?}");
        // Verified from a peer never asked: every requester is cancelled.
        let third = if c.contains(&again[0]) { C } else { D };
        let mut want = vec![A, B, third];
        want.sort_unstable();
        assert_eq!(p.piece_verified(O, again[0]), want);
        p.check_invariants();
    }

    #[test]
    fn few_missing_allow_a_second_peer() {
        // Piece 1 is asked from A; 0 and 2 stay free because C, who has them, is not asked.
        let peers: &[Peer<'_>] = &[(A, &[1], false), (B, &[1], false), (D, &[1], false), (C, &[0, 2], false)];
        // (endgame_pieces, B gets, D gets)
        let cases: &[(u32, &[u32], &[u32])] = &[(3, &[1], &[]), (2, &[], &[]), (0, &[], &[])];
        for &(endgame_pieces, for_b, for_d) in cases {
            let mut p = setup(3, peers, PickerOptions { endgame_pieces, ..opts(4) });
            check(&mut p, A, &[1]);
            assert_eq!(p.in_endgame(), endgame_pieces >= 3);
            check(&mut p, B, for_b);
            check(&mut p, D, for_d);
        }
    }

    #[test]
    fn origin_preference() {
        let cases: &[(&[Peer<'_>], usize, &[u32])] = &[
            // Only the pieces no peer has.
            (&[(O, ALL8, true), (A, &[0, 1, 2, 3], false)], 8, &[4, 5, 6, 7]),
            // Alone, the origin is asked for everything.
            (&[(O, ALL8, true)], 8, ALL8),
            // Nothing when the peers have it all.
            (&[(O, ALL8, true), (A, &[0, 1, 2, 3], false), (B, &[4, 5, 6, 7], false)], 8, &[]),
            // Another origin does not count as a peer.
            (&[(O, &[0, 1], true), (C, &[0, 1], true), (A, &[1], false)], 8, &[0]),
        ];
        for &(peers, cap, expect) in cases {
            let mut p = setup(8, peers, opts(cap));
            check(&mut p, O, expect);
        }
    }

    /// A `Far` peer is asked only for what no askable `Near` peer has; an origin only for what
    /// neither has; `Near` peers are asked as if zones did not exist.
    #[test]
    fn zone_preference() {
        use PeerKind::{Far, Near, Origin};
        const F: u8 = 5;
        // Far requests unbounded here; the cap and the gate have their own test.
        let o = PickerOptions { max_outstanding_far: 8, ..opts(8) };
        // (peers as (id, pieces, kind), who is asked, expected pieces)
        type ZPeer<'a> = (u8, &'a [u32], PeerKind);
        let cases: &[(&[ZPeer<'_>], u8, &[u32])] = &[
            // The near peer gets everything it has, far holders or not.
            (&[(F, ALL8, Far), (A, &[0, 1, 2], Near)], A, &[0, 1, 2]),
            // The origin gets only what neither a near nor a far peer has.
            (&[(A, &[0, 1], Near), (F, &[2, 3], Far), (O, ALL8, Origin)], O, &[4, 5, 6, 7]),
            // Alone, a far peer is asked for everything it has.
            (&[(F, &[1, 2], Far)], F, &[1, 2]),
            // Another far peer does not shadow a far peer.
            (&[(F, &[0, 1], Far), (C, &[0], Far)], F, &[0, 1]),
        ];
        for &(peers, who, expect) in cases {
            let mut p = Picker::new(8, &[], o.clone());
            for &(id, pieces, kind) in peers {
                p.peer_joined_as(id, &bits(8, pieces), kind);
            }
            p.check_invariants();
            check(&mut p, who, expect);
        }
        // Once the near peer's pieces are asked, the far peer gets only what it lacks.
        let mut p = Picker::new(8, &[], o.clone());
        p.peer_joined_as(A, &bits(8, &[0, 1, 2]), Near);
        p.peer_joined_as(F, &bits(8, ALL8), Far);
        check(&mut p, A, &[0, 1, 2]);
        check(&mut p, F, &[3, 4, 5, 6, 7]);
        // A near holder that rejected a piece, or left, no longer shadows it.
        let mut p = Picker::new(4, &[], o.clone());
        p.peer_joined_as(A, &bits(4, &[0, 1]), Near);
        p.peer_joined_as(F, &bits(4, &[0, 1, 2, 3]), Far);
        check(&mut p, A, &[0, 1]);
        check(&mut p, F, &[2, 3]);
        p.request_rejected(A, 0);
        check(&mut p, F, &[0]);
        p.peer_left(A);
        check(&mut p, F, &[1]);
        // A near peer's `have` shadows the piece again for the far one.
        p.piece_verified(F, 0);
        p.request_deferred(F, 1);
        p.peer_joined_as(B, &bits(4, &[]), Near);
        p.peer_have(B, 1);
        check(&mut p, F, &[]);
        check(&mut p, B, &[1]);
    }

    /// Far peers are asked only while the near ones have nothing free to give, and at most
    /// `max_outstanding_far` requests go to far peers together.
    #[test]
    fn far_peers_wait_for_the_near_ones_and_share_one_cap() {
        use PeerKind::{Far, Near};
        const F: u8 = 5;
        const G: u8 = 6;
        let o = PickerOptions { max_outstanding_far: 2, ..opts(2) };
        let mut p = Picker::new(8, &[], o);
        p.peer_joined_as(A, &bits(8, &[0, 1, 2, 3]), Near);
        p.peer_joined_as(F, &bits(8, ALL8), Far);
        p.peer_joined_as(G, &bits(8, ALL8), Far);
        // The near peer still has free pieces (its pipeline of 2 is not even asked yet).
        check(&mut p, F, &[]);
        let first = p.next_requests(A);
        assert_eq!(first.len(), 2);
        // Two of its pieces are still free: the far peers wait.
        check(&mut p, G, &[]);
        p.piece_verified(A, first[0]);
        p.piece_verified(A, first[1]);
        assert_eq!(p.next_requests(A).len(), 2);
        // Nothing near is free now: far peers get 2 requests between them.
        let f = p.next_requests(F);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().all(|&i| i >= 4));
        check(&mut p, G, &[]);
        p.piece_verified(F, f[0]);
        assert_eq!(p.next_requests(G).len(), 1, "one far slot came free");
        p.check_invariants();
    }

    /// A gateway asks far peers only for the pieces of its share that no near peer has, and
    /// for those even while the near peers have free pieces; told `None`, far peers are asked
    /// for nothing; the fallback lifts both.
    #[test]
    fn far_peers_are_asked_for_the_share_only() {
        use crate::handout::Imports;
        use PeerKind::{Far, Near};
        const F: u8 = 5;
        let share = |slot| Imports::Share { slot, of: 4 };
        let o = PickerOptions { max_outstanding_far: 8, ..opts(8) };
        // (imports, fallback, pieces the near peer A has, what F (every piece) is asked for)
        type Case<'a> = (Imports, bool, &'a [u32], &'a [u32]);
        let cases: &[Case<'_>] = &[
            (Imports::All, false, &[], ALL8),
            (share(1), false, &[], &[1, 5]),
            (share(3), false, &[], &[3, 7]),
            (Imports::None, false, &[], &[]),
            // A near holder shadows a piece of the share too.
            (share(1), false, &[5], &[1]),
            // The near peer has free pieces: without a share the far peer waits, with one it
            // is asked for its share at once.
            (Imports::All, false, &[0, 2], &[]),
            (share(1), false, &[0, 2], &[1, 5]),
            // The fallback: anything, as without a share, once the near peers have nothing
            // free.
            (share(1), true, &[], ALL8),
            (share(1), true, &[0, 2], &[]),
            (Imports::None, true, &[], ALL8),
        ];
        for &(imports, fallback, near, expect) in cases {
            let mut p = Picker::new(8, &[], o.clone());
            p.set_imports(imports);
            p.set_far_fallback(fallback);
            p.peer_joined_as(A, &bits(8, near), Near);
            p.peer_joined_as(F, &bits(8, ALL8), Far);
            let mut got = p.next_requests(F);
            got.sort_unstable();
            assert_eq!(got, expect, "{imports:?} fallback {fallback} near {near:?}");
            p.check_invariants();
        }
        // The share goes to far peers one request at a time by default.
        let mut p = Picker::new(8, &[], opts(8));
        p.set_imports(share(2));
        p.peer_joined_as(F, &bits(8, ALL8), Far);
        p.peer_joined_as(6, &bits(8, ALL8), Far);
        assert_eq!(p.next_requests(F).len(), 1);
        check(&mut p, 6, &[]);
    }

    #[test]
    fn peer_kind_of_zones() {
        use PeerKind::{Far, Near, Origin};
        let cases = [
            (false, None, None, Near),
            (false, Some("a"), None, Near),
            (false, None, Some("a"), Near),
            (false, Some("a"), Some("a"), Near),
            (false, Some("a"), Some("b"), Far),
            (true, Some("a"), Some("b"), Origin),
            (true, None, None, Origin),
        ];
        for (origin, ours, theirs, kind) in cases {
            assert_eq!(PeerKind::of_zones(origin, ours, theirs), kind, "{origin} {ours:?} {theirs:?}");
        }
    }

    #[test]
    fn origin_takes_over_what_peers_cannot_give() {
        let mut p = setup(4, &[(O, &[0, 1, 2, 3], true), (A, &[0, 1], false), (B, &[2], false)], opts(4));
        check(&mut p, O, &[3]);
        // A rejected 0, B left, and a blacklisted peer does not count either.
        check(&mut p, A, &[0, 1]);
        p.request_rejected(A, 0);
        p.peer_left(B);
        p.peer_joined(C, &bits(4, &[0, 1, 2, 3]), false);
        p.piece_failed(C, 1);
        check(&mut p, O, &[0, 2]);
    }

    #[test]
    fn blacklist_on_failure() {
        let mut p = setup(2, &[(A, &[0, 1], false), (B, &[0], false)], opts(4));
        check(&mut p, A, &[0, 1]);
        p.piece_failed(A, 0);
        assert!(p.is_blacklisted(&A));
        assert!(!p.is_blacklisted(&B));
        assert_eq!((p.availability(0), p.availability(1)), (1, 0));
        assert_eq!(p.outstanding(&A), 0);
        check(&mut p, A, &[]);
        check(&mut p, B, &[0]);
        // Re-joining or announcing does not bring it back.
        p.peer_joined(A, &bits(2, &[0, 1]), false);
        p.peer_have(A, 1);
        assert_eq!(p.availability(1), 0);
        check(&mut p, A, &[]);
        p.peer_left(A);
        assert!(p.is_blacklisted(&A), "blacklisted for good");
    }

    #[test]
    fn reject_and_timeout() {
        let give_ups: [fn(&mut Picker<u8>, u8, u32); 2] = [Picker::request_rejected, Picker::request_timed_out];
        for give_up in give_ups {
            let peers: &[Peer<'_>] = &[(A, &[0, 1], false), (B, &[0, 1], false), (C, &[1], false)];
            let mut p = setup(2, peers, opts(1));
            check(&mut p, A, &[0]);
            give_up(&mut p, A, 0);
            assert_eq!(p.outstanding(&A), 0);
            check(&mut p, A, &[1]);
            check(&mut p, B, &[0]);
            // Until A announces 0 again it is not asked for it, even in endgame.
            p.piece_verified(A, 1);
            assert!(p.in_endgame());
            check(&mut p, A, &[]);
            p.peer_have(A, 0);
            check(&mut p, A, &[0]);
            // A re-join with a fresh bitfield also lifts the mark.
            let mut p = setup(1, &[(A, &[0], false), (B, &[0], false)], opts(1));
            check(&mut p, A, &[0]);
            give_up(&mut p, A, 0);
            check(&mut p, A, &[]);
            p.peer_joined(A, &bits(1, &[0]), false);
            check(&mut p, A, &[0]);
        }
    }

    #[test]
    fn a_timed_out_sole_holder_is_asked_again_and_a_rejecting_one_is_not() {
        // (the only holder is an origin, a timeout) -> asked again
        for (origin, timed_out, again) in
            [(true, true, true), (false, true, true), (true, false, false), (false, false, false)]
        {
            let o = PickerOptions { endgame_pieces: 0, ..opts(1) };
            let mut p = setup(2, &[(A, &[0, 1], origin), (B, &[1], false)], o);
            check(&mut p, B, &[1]);
            check(&mut p, A, &[0]);
            if timed_out {
                p.request_timed_out(A, 0);
            } else {
                p.request_rejected(A, 0);
            }
            let want: &[u32] = if again { &[0] } else { &[] };
            check(&mut p, A, want);
        }
    }

    #[test]
    fn peer_left_releases() {
        let mut p = setup(2, &[(A, &[0, 1], false), (B, &[0, 1], false)], opts(2));
        check(&mut p, A, &[0, 1]);
        p.peer_left(A);
        assert_eq!(p.outstanding(&A), 0);
        assert_eq!(p.availability(0), 1);
        assert!(!p.in_endgame());
        check(&mut p, B, &[0, 1]);
        check(&mut p, A, &[]);
    }

    #[test]
    fn rejoin_replaces_bitfield() {
        let mut p = setup(3, &[(A, &[0, 1], false), (B, &[0], false)], opts(1));
        check(&mut p, A, &[1]);
        p.peer_joined(A, &bits(3, &[2]), true);
        assert_eq!([0, 1, 2].map(|i| p.availability(i)), [1, 0, 1]);
        assert_eq!(p.outstanding(&A), 1, "requests in flight stay");
        p.check_invariants();
    }

    #[test]
    fn out_of_range_inputs_never_panic() {
        const Z: u8 = 77;
        let mut p = Picker::<u8>::new(10, &[true, false, true], opts(4));
        assert_eq!(p.missing(), 8);
        p.peer_joined(A, &[], false);
        p.peer_joined(B, &[0xff; 100], false);
        assert_eq!((p.availability(9), p.availability(10), p.availability(u32::MAX)), (1, 0, 0));
        for piece in [10, 11, u32::MAX] {
            p.peer_have(A, piece);
            p.peer_have(Z, piece);
            p.request_rejected(A, piece);
            p.request_timed_out(Z, piece);
            assert!(p.piece_verified(Z, piece).is_empty());
            assert!(!p.have(piece));
        }
        p.peer_have(Z, 0);
        p.request_rejected(Z, 3);
        p.peer_left(Z);
        assert!(p.next_requests(Z).is_empty());
        assert_eq!(p.outstanding(&Z), 0);
        assert!(p.piece_verified(Z, 0).is_empty(), "verified from an unknown peer");
        assert!(p.have(0));
        p.piece_failed(Z, u32::MAX);
        assert!(p.is_blacklisted(&Z), "a bad piece from an unknown peer still blacklists it");
        p.check_invariants();

        let empty = Picker::<u8>::new(0, &[true], opts(4));
        assert!(empty.is_complete());
        empty.check_invariants();
        let mut done = Picker::<u8>::new(3, &[true; 10], opts(4));
        done.peer_joined(A, &[0xff], false);
        assert!(done.is_complete());
        assert!(done.next_requests(A).is_empty());
        assert!(!done.in_endgame());
        done.check_invariants();
    }

    /// A download driven by random events: peers with random bitfields that reject, time out,
    /// leave, re-join and learn pieces, one corrupt peer, and an origin that has everything.
    #[test]
    fn simulated_download_completes() {
        const N: u32 = 200;
        const ORIGIN: u8 = 0;
        const BAD: u8 = 7;
        const NUM_PEERS: u8 = 8;
        for seed in 0..4 {
            let mut rng = StdRng::seed_from_u64(seed);
            let have: Vec<bool> = (0..N).map(|_| rng.random_bool(0.1)).collect();
            let mut p = Picker::new(N, &have, PickerOptions { seed, ..opts(3) });
            let mut holds: Vec<Vec<bool>> =
                (0..NUM_PEERS).map(|q| (0..N).map(|_| q == ORIGIN || rng.random_bool(0.4)).collect()).collect();
            let mut connected = vec![true; usize::from(NUM_PEERS)];
            for q in 0..NUM_PEERS {
                p.peer_joined(q, &pack_bits(N, |i| holds[usize::from(q)][i as usize]), q == ORIGIN);
            }
            // Mirrors the picker's outstanding requests.
            let mut pending: Vec<(u8, u32)> = Vec::new();
            for _ in 0..50_000 {
                if p.is_complete() {
                    assert!(!p.has_room(), "nothing is left to ask for");
                    break;
                }
                let q = rng.random_range(0..NUM_PEERS);
                match rng.random_range(0..10) {
                    0..4 => {
                        let got = p.next_requests(q);
                        for &piece in &got {
                            assert!(holds[usize::from(q)][piece as usize] && !p.have(piece));
                            assert!(!pending.contains(&(q, piece)), "asked {q} twice for {piece}");
                            pending.push((q, piece));
                        }
                    }
                    4..7 if !pending.is_empty() => {
                        let (from, piece) = pending.swap_remove(rng.random_range(0..pending.len()));
                        if from == BAD {
                            p.piece_failed(from, piece);
                            pending.retain(|&(r, _)| r != from);
                        } else {
                            let mut expect: Vec<u8> =
                                pending.iter().filter(|&&(r, i)| i == piece && r != from).map(|&(r, _)| r).collect();
                            expect.sort_unstable();
                            assert_eq!(p.piece_verified(from, piece), expect);
                            pending.retain(|&(_, i)| i != piece);
                        }
                    }
                    7 if !pending.is_empty() => {
                        let k = rng.random_range(0..pending.len());
                        let (r, piece) = pending[k];
                        if r != ORIGIN {
                            pending.swap_remove(k);
                            if rng.random_bool(0.5) {
                                p.request_rejected(r, piece);
                            } else {
                                p.request_timed_out(r, piece);
                            }
                        }
                    }
                    8 => {
                        let piece = rng.random_range(0..N);
                        holds[usize::from(q)][piece as usize] = true;
                        p.peer_have(q, piece);
                    }
                    9 if q != ORIGIN => {
                        if connected[usize::from(q)] {
                            p.peer_left(q);
                            pending.retain(|&(r, _)| r != q);
                        } else {
                            p.peer_joined(q, &pack_bits(N, |i| holds[usize::from(q)][i as usize]), false);
                        }
                        connected[usize::from(q)] ^= true;
                    }
                    _ => {}
                }
                p.check_invariants();
                for q in 0..NUM_PEERS {
                    let mirrored = pending.iter().filter(|&&(r, _)| r == q).count();
                    assert_eq!(p.outstanding(&q), mirrored, "peer {q}");
                    assert!(mirrored <= 3);
                }
            }
            assert!(p.is_complete(), "seed {seed}: {} pieces missing", p.missing());
            assert!(!p.is_blacklisted(&ORIGIN));
            assert!(p.is_blacklisted(&BAD), "seed {seed}: the corrupt peer was never asked");
        }
    }

    #[derive(Clone, Debug)]
    enum Event {
        Join(u8, Vec<u8>, u8),
        Have(u8, u32),
        Left(u8),
        Next(u8),
        Verified(u8, u32),
        Failed(u8, u32),
        Rejected(u8, u32),
        TimedOut(u8, u32),
        Deferred(u8, u32),
        Busy(u8, u32),
    }

    fn event() -> impl Strategy<Value = Event> {
        let peer = || 0u8..5;
        let piece = || prop_oneof![8 => 0u32..20, 1 => Just(u32::MAX), 1 => any::<u32>()];
        prop_oneof![
            1 => (peer(), vec(any::<u8>(), 0..5), 0u8..3).prop_map(|(q, b, k)| Event::Join(q, b, k)),
            1 => (peer(), piece()).prop_map(|(q, i)| Event::Have(q, i)),
            1 => peer().prop_map(Event::Left),
            4 => peer().prop_map(Event::Next),
            3 => (peer(), piece()).prop_map(|(q, i)| Event::Verified(q, i)),
            1 => (peer(), piece()).prop_map(|(q, i)| Event::Failed(q, i)),
            1 => (peer(), piece()).prop_map(|(q, i)| Event::Rejected(q, i)),
            1 => (peer(), piece()).prop_map(|(q, i)| Event::TimedOut(q, i)),
            1 => (peer(), piece()).prop_map(|(q, i)| Event::Deferred(q, i)),
            1 => (peer(), piece()).prop_map(|(q, i)| Event::Busy(q, i)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_events_keep_invariants(
            num_pieces in 0u32..20,
            have in vec(any::<bool>(), 0..25),
            cap in 0usize..4,
            endgame_pieces in 0u32..4,
            total in prop_oneof![3 => 0usize..8, 1 => Just(usize::MAX)],
            seed in any::<u64>(),
            events in vec(event(), 0..80),
        ) {
            let opts = PickerOptions { seed, endgame_pieces, max_outstanding_total: total, ..opts(cap) };
            let mut p = Picker::new(num_pieces, &have, opts);
            p.check_invariants();
            for e in events {
                match e {
                    Event::Join(q, b, k) => {
                        let kind = [PeerKind::Near, PeerKind::Far, PeerKind::Origin][usize::from(k)];
                        p.peer_joined_as(q, &b, kind);
                    }
                    Event::Have(q, i) => p.peer_have(q, i),
                    Event::Left(q) => p.peer_left(q),
                    Event::Next(q) => {
                        let got = p.next_requests(q);
                        let distinct: BTreeSet<u32> = got.iter().copied().collect();
                        prop_assert_eq!(distinct.len(), got.len());
                        prop_assert!(got.iter().all(|&i| i < num_pieces && !p.have(i)));
                        prop_assert!(p.outstanding(&q) <= cap);
                        prop_assert!((0..5).map(|r| p.outstanding(&r)).sum::<usize>() <= total);
                        prop_assert!(got.is_empty() || !p.is_blacklisted(&q));
                    }
                    Event::Verified(q, i) => {
                        let cancel = p.piece_verified(q, i);
                        prop_assert!(!cancel.contains(&q));
                    }
                    Event::Failed(q, i) => {
                        p.piece_failed(q, i);
                        prop_assert!(p.is_blacklisted(&q) && p.outstanding(&q) == 0);
                    }
                    Event::Rejected(q, i) => p.request_rejected(q, i),
                    Event::TimedOut(q, i) => p.request_timed_out(q, i),
                    Event::Deferred(q, i) => p.request_deferred(q, i),
                    Event::Busy(q, i) => p.request_busy(q, i),
                }
                p.check_invariants();
            }
        }
    }
}

#[cfg(test)]
mod deferred_tests {
    use super::*;

    #[test]
    fn deferred_request_may_be_asked_again_but_rejected_may_not() {
        let opts = PickerOptions { max_outstanding_per_origin: 1, ..PickerOptions::default() };
        let mut p: Picker<u8> = Picker::new(1, &[false], opts);
        p.peer_joined(1, &[0x80], true);
        assert_eq!(p.next_requests(1), vec![0]);
        p.request_deferred(1, 0);
        assert_eq!(p.outstanding(&1), 0);
        assert_eq!(p.next_requests(1), vec![0], "seeding is not a refusal for good");
        p.request_busy(1, 0);
        assert_eq!(p.outstanding(&1), 0);
        assert_eq!(p.next_requests(1), vec![0], "busy is not a refusal for good");
        p.request_rejected(1, 0);
        assert_eq!(p.next_requests(1), Vec::<u32>::new(), "not-have excludes the piece at that peer");
        p.check_invariants();
    }

    /// A seed answered busy for pieces 0..4 (it super-seeds and sent them elsewhere): asked
    /// again, it is asked for the pieces it did not refuse first, in stripe order among them,
    /// and for the refused ones only when nothing else is left at it.
    #[test]
    fn pieces_a_peer_answered_busy_for_come_after_its_others() {
        let opts = PickerOptions {
            max_outstanding_per_origin: 4,
            max_outstanding_per_peer: 4,
            stripes: 1,
            ..PickerOptions::default()
        };
        let mut p: Picker<u8> = Picker::new(8, &[false; 8], opts);
        p.peer_joined(1, &[0xff], true);
        let mut first = p.next_requests(1);
        first.sort_unstable();
        for &piece in &first {
            p.request_deferred(1, piece);
        }
        let mut again = p.next_requests(1);
        again.sort_unstable();
        assert!(again.iter().all(|i| !first.contains(i)), "refused {first:?}, asked again {again:?}");
        assert_eq!(again.len(), 4);
        for &piece in &again {
            assert_eq!(p.piece_verified(1, piece), Vec::<u8>::new());
        }
        let mut last = p.next_requests(1);
        last.sort_unstable();
        assert_eq!(last, first, "the refused pieces are still asked once nothing else is left");
        // A fresh bitfield (a re-join) forgets the marks.
        p.peer_joined(1, &[0xff], true);
        p.check_invariants();
    }
    /// A sole seed answered plain busy (its backlog was full) for the first pieces of the
    /// blob: asked again, it is asked for them first, in stripe order, since a reader
    /// streaming the blob waits for them. Putting them last made a streamed pull wait for the
    /// whole blob before its first byte.
    #[test]
    fn pieces_a_peer_answered_plain_busy_for_keep_their_place() {
        let opts = PickerOptions {
            max_outstanding_per_origin: 2,
            max_outstanding_per_peer: 2,
            stripes: 4,
            stripe_lookahead: 0,
            ..PickerOptions::default()
        };
        // 64 pieces in 4 stripes of 16.
        let mut p: Picker<u8> = Picker::new(64, &[false; 64], opts);
        p.peer_joined(1, &[0xff; 8], true);
        let first = p.next_requests(1);
        assert!(first.iter().all(|&i| i < 16), "{first:?}");
        for &piece in &first {
            p.request_busy(1, piece);
        }
        // Pieces 0..16 one pair at a time: the busy ones are among the first stripe's picks.
        let mut asked = Vec::new();
        while asked.len() < 16 {
            let got = p.next_requests(1);
            assert!(got.iter().all(|&i| i < 16), "stripe 0 first, busy pieces included: {got:?}");
            for piece in got {
                p.piece_verified(1, piece);
                asked.push(piece);
            }
        }
        assert!(first.iter().all(|i| asked.contains(i)), "{first:?} within {asked:?}");
        p.check_invariants();
    }
}
