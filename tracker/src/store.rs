//! The peer store: which peers are in which blob's swarm, and the handout policy that decides
//! which of them an announcing node is told about.
//!
//! Invariant: an entry older than the TTL is never handed out. Removal is lazy: an announce
//! purges the expired entries of its own blob, and a periodic [`PeerStore::sweep`] purges the
//! rest. A blob's map is never left empty; a blob with no live peer is removed.
//!
//! # Handout policy
//!
//! An announce for blob `B` from peer `P` at address `A` first records `P` (or refreshes it:
//! address, `complete` and `origin` are overwritten, `last_seen` becomes now). Any other
//! peer id at the same address `A` is dropped, because a node that restarted with a new id
//! is the same listener. (The HTTP edge lets a caller announce only its own address unless it
//! is trusted, so only a node itself or a trusted caller can do that.) `origin` is kept only
//! for the address of a configured origin; `complete` is the node's word, which is why one
//! host's entries per blob are bounded (below). Then the answer is composed by `shoal_core::handout::compose`,
//! which the simulator calls too, in this order:
//!
//! 1. Complete peers (seeders) of `B` in the asker's zone, in random order.
//! 2. Then incomplete peers of `B` in the asker's zone, in random order.
//! 3. Then peers of other zones, seeders first: `max(2, max_peers / 8)` of them when there
//!    are that many, more only when too few peers of the asker's zone fill the list. Only
//!    the zone's gateways get them: the first `handout::ZONE_GATEWAYS` (16) incomplete
//!    askers of the zone each take a free slot (`handout::gateway_slot`), kept in their
//!    entry until it expires or leaves, so a zone imports through at most 16 links. The
//!    answer to a zoned asker also says what it imports (`imports`): a holder the pieces of
//!    its slot's share, any other peer of the zone nothing.
//! 4. Steps 1 to 3 hold at most `max_peers` entries together. Same-zone seeders fill it
//!    first. The asker (same peer id or same address) and expired entries are never listed.
//!    A peer or an asker without a zone counts as in every zone, so without zones steps 1
//!    and 2 are all the blob's seeders and leechers and step 3 never applies.
//! 5. Then the ring owners of `B` (the configured origins) that are not already listed,
//!    matched by peer address, best owner first. These are added even when the list
//!    already has `max_peers` entries, so every node can always reach a seed of last resort.
//!    An owner that has announced `B` is listed with what it announced. One that has not
//!    has `peer_id: None` and `complete: false`, since it may still have to fetch the blob.
//!    An owner at the asker's own address is left out.
//!
//! A `stopped` announce (the node evicted the blob) removes at once the asker's entry and any
//! other at its address (an earlier process of the same listener), and is answered with no
//! peers; it records nothing, so a stop for a blob the tracker never saw costs nothing.
//!
//! # State and restarts
//!
//! State is rebuilt from announces alone. A restarted tracker hands out only origins until
//! the swarm announces again, which every node does within one announce interval. Nothing is
//! persisted, so a restart loses nothing that matters.
//!
//! # Bounds and cost
//!
//! The store has at most [`MAX_BLOBS`] blobs and at most [`MAX_PEERS_PER_BLOB`] peers per
//! blob. One IP address has at most `max_peers_per_host` entries in a blob (default 8), and
//! entries in at most `max_blobs_per_host` blobs (default 100,000; a configured origin's
//! address is not bounded by it). An announce that would go past a limit is still answered
//! but not recorded.
//! An announce costs O(peers of its blob): one pass purges, deduplicates and reservoir-samples
//! the handout. It holds only that blob's shard of the map, and no lock outlives the call.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use rand::Rng;
use shoal_core::api::{AnnounceRequest, PeerInfo};
use shoal_core::handout::{self, Imports};
use shoal_core::ring::Ring;
use shoal_core::{Digest, PeerId};
use tokio::time::Instant;

/// Peers recorded per blob at most. This is a hard-coded limit. A swarm this large already
/// has plenty of sources, and a newcomer beyond it still gets an answer. It also bounds the
/// cost of one announce.
pub const MAX_PEERS_PER_BLOB: usize = 10_000;

/// Blobs tracked at most. This is a hard-coded limit: about 1M blobs × a few peers ≈ a few
/// hundred MB. It is soft by at most the number of concurrent announces.
pub const MAX_BLOBS: usize = 1_000_000;

/// Settings of the store, taken from the validated config.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Entries older than this are expired.
    pub peer_ttl: std::time::Duration,
    /// Announced peers per handout at most. Ring owners come on top.
    pub max_peers: usize,
    /// The origins whose owners are added to every handout.
    pub ring: Option<Arc<Ring>>,
    /// Entries at one IP address per blob at most.
    pub max_peers_per_host: usize,
    /// Blobs one IP address (not a configured origin's) has entries in at most.
    pub max_blobs_per_host: usize,
}

impl StoreOptions {
    /// The defaults of the config, for `ttl`, `max_peers` and `ring`.
    pub fn new(peer_ttl: std::time::Duration, max_peers: usize, ring: Option<Arc<Ring>>) -> StoreOptions {
        StoreOptions { peer_ttl, max_peers, ring, max_peers_per_host: 8, max_blobs_per_host: 100_000 }
    }
}

/// All swarms the tracker knows.
pub struct PeerStore {
    /// Read and written by announces (one shard at a time) and by sweeps.
    blobs: DashMap<Digest, Swarm>,
    /// Fixed at construction. Read by every announce and sweep.
    opts: StoreOptions,
    /// Live count of `blobs`, kept beside the map because `DashMap::len` locks every shard.
    n_blobs: AtomicUsize,
    /// Entries over all blobs, for the peers gauge.
    n_peers: AtomicUsize,
    /// Entries by IP address over all blobs. Taken only while a `blobs` shard is held or
    /// with none (never the other way round).
    hosts: DashMap<IpAddr, usize>,
    /// The configured origins' peer addresses: the only ones recorded with `origin`.
    origins: HashSet<SocketAddr>,
}

/// The answer to one announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handout {
    /// The peers in handout order (see the module docs).
    pub peers: Vec<PeerInfo>,
    /// Whether the asker is now in the store.
    pub recorded: Recorded,
    /// Expired entries this announce removed.
    pub purged: usize,
    /// What a zoned asker imports from other zones (`handout::gateway_slot`); `None` for an
    /// asker without a zone.
    pub imports: Option<Imports>,
}

/// Whether an announce was recorded, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Yes,
    /// The blob already has [`MAX_PEERS_PER_BLOB`] live peers.
    SwarmFull,
    /// The store already tracks [`MAX_BLOBS`] blobs.
    TooManyBlobs,
    /// The announced address (unspecified IP or port 0) cannot be dialled by anyone. The
    /// node is answered so it can still download.
    UnusableAddr,
    /// The blob already has `max_peers_per_host` entries at this IP address.
    HostFull,
    /// This IP address already has entries in `max_blobs_per_host` blobs.
    HostBlobs,
    /// A `stopped` announce: the node's entry, if any, was removed.
    Stopped,
}

impl Recorded {
    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Recorded::Yes => "stored",
            Recorded::SwarmFull => "swarm_full",
            Recorded::TooManyBlobs => "too_many_blobs",
            Recorded::UnusableAddr => "unusable_addr",
            Recorded::HostFull => "host_full",
            Recorded::HostBlobs => "host_blobs",
            Recorded::Stopped => "stopped",
        }
    }
}

/// What one sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub peers: usize,
    pub blobs: usize,
}

/// One blob's peers.
#[derive(Default)]
struct Swarm {
    /// Never empty outside an announce or sweep call. Both remove a blob they leave empty.
    peers: HashMap<PeerId, Entry>,
}

/// What the tracker remembers of one peer in one swarm.
#[derive(Clone, Debug)]
struct Entry {
    addr: SocketAddr,
    complete: bool,
    origin: bool,
    /// The zone it announced; shared, since a node announces the same zone for every blob.
    zone: Option<Arc<str>>,
    /// The time of its last announce. Expired when `now - last_seen > peer_ttl`.
    last_seen: Instant,
    /// The gateway slot it holds in its zone (`handout::gateway_slot`).
    slot: Option<u8>,
}

impl PeerStore {
    pub fn new(opts: StoreOptions) -> PeerStore {
        let origins = opts.ring.iter().flat_map(|r| r.nodes().iter().map(|o| o.peer)).collect();
        PeerStore {
            blobs: DashMap::new(),
            opts,
            n_blobs: AtomicUsize::new(0),
            n_peers: AtomicUsize::new(0),
            hosts: DashMap::new(),
            origins,
        }
    }

    /// Whether `addr` is a configured origin's peer address.
    pub fn is_origin_addr(&self, addr: &SocketAddr) -> bool {
        self.origins.contains(addr)
    }

    /// Records `req` as seen at `now` and returns the handout (see the module docs).
    pub fn announce(&self, req: &AnnounceRequest, now: Instant) -> Handout {
        self.announce_with_rng(req, now, &mut rand::rng())
    }

    /// [`PeerStore::announce`] with the randomness supplied, for reproducible runs.
    pub fn announce_with_rng<R: Rng + ?Sized>(&self, req: &AnnounceRequest, now: Instant, rng: &mut R) -> Handout {
        if req.stopped {
            return self.stop(req);
        }
        let owners: Vec<SocketAddr> = match &self.opts.ring {
            Some(ring) => ring.owners(&req.blob).into_iter().map(|o| o.peer).filter(|a| *a != req.addr).collect(),
            None => Vec::new(),
        };
        let mut pass = Pass {
            asker: req.peer_id,
            asker_addr: req.addr,
            asker_host: req.addr.ip().to_canonical(),
            same_host: 0,
            gone: Vec::new(),
            ttl: self.opts.peer_ttl,
            now,
            zone: req.zone.as_deref(),
            seeders: Reservoir::new(self.opts.max_peers),
            leechers: Reservoir::new(self.opts.max_peers),
            far_seeders: Reservoir::new(self.opts.max_peers),
            far_leechers: Reservoir::new(self.opts.max_peers),
            owners: owners.iter().map(|a| (*a, None)).collect(),
            removed: 0,
            purged: 0,
            held: None,
            taken: 0,
        };

        let usable = !req.addr.ip().is_unspecified() && req.addr.port() != 0;
        let mut recorded = Recorded::Yes;
        let mut now_empty = false;
        let swarm = match self.blobs.get_mut(&req.blob) {
            Some(swarm) => Some(swarm),
            None if !usable => None,
            None if self.n_blobs.load(Ordering::Relaxed) >= MAX_BLOBS => {
                recorded = Recorded::TooManyBlobs;
                None
            }
            None => Some(self.blobs.entry(req.blob).or_insert_with(|| {
                self.n_blobs.fetch_add(1, Ordering::Relaxed);
                Swarm::default()
            })),
        };
        let zoned = req.zone.is_some();
        let mut slot = None;
        if let Some(mut swarm) = swarm {
            pass.visit(&mut swarm, rng);
            if usable {
                slot = handout::gateway_slot(pass.held, pass.taken, req.complete, zoned);
                recorded = self.upsert(&mut swarm, req, now, pass.same_host, slot);
            }
            now_empty = swarm.peers.is_empty();
        }
        if recorded != Recorded::Yes {
            slot = None;
        }
        if !usable {
            recorded = Recorded::UnusableAddr;
        }
        self.n_peers.fetch_sub(pass.removed, Ordering::Relaxed);
        for ip in pass.gone.drain(..) {
            self.forget_host(ip);
        }
        if now_empty {
            self.remove_if_empty(&req.blob);
        }

        let owners = pass.owners.into_iter().map(|(addr, known)| {
            known.unwrap_or(PeerInfo { peer_id: None, addr, complete: false, origin: true, zone: None })
        });
        let far_seen = pass.far_seeders.seen + pass.far_leechers.seen;
        let with_far = far_seen == 0 || slot.is_some();
        let mut seeders = pass.seeders.items;
        let mut leechers = pass.leechers.items;
        if with_far {
            seeders.append(&mut pass.far_seeders.items);
            leechers.append(&mut pass.far_leechers.items);
        }
        let zone = req.zone.as_deref();
        let peers = handout::compose(
            seeders,
            leechers,
            self.opts.max_peers,
            owners,
            |a, b| a.addr == b.addr,
            |p| handout::same_zone(zone, p.zone.as_deref()),
            rng,
        );
        Handout { peers, recorded, purged: pass.purged, imports: zoned.then(|| Imports::of_slot(slot, pass.taken)) }
    }

    /// A node left `req.blob`'s swarm: its entry goes, and any other at its address (an
    /// earlier process of the same listener, as an announce would drop it), and it is told
    /// about nobody. The hosts of the entries removed get their room back
    /// (`max_blobs_per_host`).
    fn stop(&self, req: &AnnounceRequest) -> Handout {
        let mut now_empty = false;
        let mut gone = Vec::new();
        if let Some(mut swarm) = self.blobs.get_mut(&req.blob) {
            swarm.peers.retain(|id, e| {
                let keep = *id != req.peer_id && e.addr != req.addr;
                if !keep {
                    gone.push(e.addr.ip().to_canonical());
                }
                keep
            });
            self.n_peers.fetch_sub(gone.len(), Ordering::Relaxed);
            now_empty = swarm.peers.is_empty();
        }
        for ip in gone {
            self.forget_host(ip);
        }
        if now_empty {
            self.remove_if_empty(&req.blob);
        }
        Handout { peers: Vec::new(), recorded: Recorded::Stopped, purged: 0, imports: None }
    }

    /// Removes every expired entry, and every blob left without peers.
    pub fn sweep(&self, now: Instant) -> Swept {
        let ttl = self.opts.peer_ttl;
        let mut swept = Swept::default();
        self.blobs.retain(|_, swarm| {
            let before = swarm.peers.len();
            swarm.peers.retain(|_, e| {
                let keep = !e.expired(now, ttl);
                if !keep {
                    self.forget_host(e.addr.ip().to_canonical());
                }
                keep
            });
            swept.peers += before - swarm.peers.len();
            if swarm.peers.is_empty() {
                swept.blobs += 1;
                false
            } else {
                true
            }
        });
        self.n_peers.fetch_sub(swept.peers, Ordering::Relaxed);
        self.n_blobs.fetch_sub(swept.blobs, Ordering::Relaxed);
        swept
    }

    /// Entries over all blobs, expired ones not yet purged included.
    pub fn n_peers(&self) -> usize {
        self.n_peers.load(Ordering::Relaxed)
    }

    /// Blobs with at least one entry.
    pub fn n_blobs(&self) -> usize {
        self.n_blobs.load(Ordering::Relaxed)
    }

    /// The unexpired peers of `blob` at `now`, counted; changes nothing.
    pub fn swarm_size(&self, blob: &Digest, now: Instant) -> shoal_core::api::SwarmSize {
        let mut size = shoal_core::api::SwarmSize::default();
        if let Some(swarm) = self.blobs.get(blob) {
            for e in swarm.peers.values().filter(|e| !e.expired(now, self.opts.peer_ttl)) {
                if e.complete {
                    size.seeders += 1;
                } else {
                    size.downloaders += 1;
                }
                size.origins += usize::from(e.origin);
            }
        }
        size
    }

    /// Inserts or refreshes the asker. The caller has already purged expired entries, and
    /// counted the other entries at the asker's IP address (`same_host`).
    fn upsert(
        &self,
        swarm: &mut Swarm,
        req: &AnnounceRequest,
        now: Instant,
        same_host: usize,
        slot: Option<u8>,
    ) -> Recorded {
        let origin = req.origin && self.is_origin_addr(&req.addr);
        let zone = req.zone.as_deref().map(Arc::from);
        let entry = Entry { addr: req.addr, complete: req.complete, origin, zone, last_seen: now, slot };
        let host = req.addr.ip().to_canonical();
        if let Some(old) = swarm.peers.get_mut(&req.peer_id) {
            let old_host = old.addr.ip().to_canonical();
            if old_host != host {
                if same_host >= self.opts.max_peers_per_host {
                    return Recorded::HostFull;
                }
                self.forget_host(old_host);
                *self.hosts.entry(host).or_insert(0) += 1;
            }
            *old = entry;
            return Recorded::Yes;
        }
        if swarm.peers.len() >= MAX_PEERS_PER_BLOB {
            return Recorded::SwarmFull;
        }
        if same_host >= self.opts.max_peers_per_host {
            return Recorded::HostFull;
        }
        // Checked, then counted: soft by at most the announces from one host at once.
        if self.host_entries(host) >= self.opts.max_blobs_per_host && !self.is_origin_addr(&req.addr) {
            return Recorded::HostBlobs;
        }
        *self.hosts.entry(host).or_insert(0) += 1;
        swarm.peers.insert(req.peer_id, entry);
        self.n_peers.fetch_add(1, Ordering::Relaxed);
        Recorded::Yes
    }

    /// One entry at `ip` is gone.
    fn forget_host(&self, ip: IpAddr) {
        if let Some(mut n) = self.hosts.get_mut(&ip) {
            *n = n.saturating_sub(1);
        }
        self.hosts.remove_if(&ip, |_, n| *n == 0);
    }

    /// Blobs with an entry at `ip` (tests and the docs' bound).
    pub fn host_entries(&self, ip: IpAddr) -> usize {
        self.hosts.get(&ip.to_canonical()).map_or(0, |n| *n)
    }

    fn remove_if_empty(&self, blob: &Digest) {
        if self.blobs.remove_if(blob, |_, swarm| swarm.peers.is_empty()).is_some() {
            self.n_blobs.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Entry {
    fn expired(&self, now: Instant, ttl: std::time::Duration) -> bool {
        now.saturating_duration_since(self.last_seen) > ttl
    }

    fn info(&self, peer_id: PeerId) -> PeerInfo {
        PeerInfo {
            peer_id: Some(peer_id),
            addr: self.addr,
            complete: self.complete,
            origin: self.origin,
            zone: self.zone.as_deref().map(str::to_owned),
        }
    }
}

/// One pass over a swarm during an announce. It purges, deduplicates and samples at once,
/// the peers of the asker's zone apart from the others, so a zone's own peers can fill the
/// handout however few of the blob's peers they are.
struct Pass<'a> {
    asker: PeerId,
    asker_addr: SocketAddr,
    /// The asker's IP address, and how many other live entries the blob has at it.
    asker_host: IpAddr,
    same_host: usize,
    /// The IP addresses of the entries removed, for the per-host counts.
    gone: Vec<IpAddr>,
    ttl: std::time::Duration,
    now: Instant,
    /// The asker's zone.
    zone: Option<&'a str>,
    /// Near peers (the asker's zone, or no zone on either side).
    seeders: Reservoir,
    leechers: Reservoir,
    /// Peers of other zones.
    far_seeders: Reservoir,
    far_leechers: Reservoir,
    /// Ring owners of the blob by address, with what they announced if they did.
    owners: Vec<(SocketAddr, Option<PeerInfo>)>,
    /// Entries removed, for the peer count.
    removed: usize,
    /// Of which expired.
    purged: usize,
    /// The gateway slot the asker holds, if it announced the same zone before.
    held: Option<u8>,
    /// The gateway slots the other live peers of the asker's zone hold, bit `k` for slot `k`.
    taken: u32,
}

impl Pass<'_> {
    fn visit<R: Rng + ?Sized>(&mut self, swarm: &mut Swarm, rng: &mut R) {
        swarm.peers.retain(|id, e| {
            if e.expired(self.now, self.ttl) {
                self.removed += 1;
                self.purged += 1;
                self.gone.push(e.addr.ip().to_canonical());
                return false;
            }
            let same_zone = self.zone.is_some() && e.zone.as_deref() == self.zone;
            if *id == self.asker {
                if same_zone {
                    self.held = e.slot;
                }
                return true;
            }
            if e.addr == self.asker_addr {
                // The same listener under an older id: that process is gone.
                self.removed += 1;
                self.gone.push(e.addr.ip().to_canonical());
                return false;
            }
            if e.addr.ip().to_canonical() == self.asker_host {
                self.same_host += 1;
            }
            if let (true, Some(k)) = (same_zone, e.slot) {
                self.taken |= 1 << k;
            }
            let info = e.info(*id);
            if let Some((_, known)) = self.owners.iter_mut().find(|(a, _)| *a == e.addr) {
                *known = Some(info.clone());
            }
            let near = handout::same_zone(self.zone, e.zone.as_deref());
            match (e.complete, near) {
                (true, true) => self.seeders.offer(info, rng),
                (false, true) => self.leechers.offer(info, rng),
                (true, false) => self.far_seeders.offer(info, rng),
                (false, false) => self.far_leechers.offer(info, rng),
            }
            true
        });
    }
}

/// A uniform random sample of at most `cap` items from a stream (Algorithm R). It picks a
/// uniform subset but not a uniform order: `handout::compose` shuffles it.
struct Reservoir {
    items: Vec<PeerInfo>,
    seen: usize,
    cap: usize,
}

impl Reservoir {
    fn new(cap: usize) -> Reservoir {
        Reservoir { items: Vec::new(), seen: 0, cap }
    }

    fn offer<R: Rng + ?Sized>(&mut self, item: PeerInfo, rng: &mut R) {
        self.seen += 1;
        if self.items.len() < self.cap {
            self.items.push(item);
        } else {
            let j = rng.random_range(0..self.seen);
            if j < self.cap {
                self.items[j] = item;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use shoal_core::ring::OriginNode;

    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn store(max_peers: usize) -> PeerStore {
        PeerStore::new(StoreOptions::new(TTL, max_peers, None))
    }

    fn blob() -> Digest {
        Digest::of(b"layer")
    }

    fn id(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 7603))
    }

    fn req(n: u8, complete: bool) -> AnnounceRequest {
        AnnounceRequest {
            blob: blob(),
            peer_id: id(n),
            addr: addr(n),
            complete,
            origin: false,
            stopped: false,
            zone: None,
        }
    }

    fn ids(h: &Handout) -> Vec<Option<PeerId>> {
        h.peers.iter().map(|p| p.peer_id).collect()
    }

    fn id_set(h: &Handout) -> HashSet<PeerId> {
        h.peers.iter().filter_map(|p| p.peer_id).collect()
    }

    #[test]
    fn first_announce_gets_nobody_and_is_recorded() {
        let s = store(50);
        let h = s.announce(&req(1, false), Instant::now());
        assert!(h.peers.is_empty());
        assert_eq!(h.recorded, Recorded::Yes);
        assert_eq!((s.n_peers(), s.n_blobs()), (1, 1));
    }

    #[test]
    fn a_stopped_announce_removes_its_entries_only() {
        let s = store(50);
        let t = Instant::now();
        for n in 1..=4 {
            s.announce(&req(n, true), t);
        }
        assert_eq!((s.n_peers(), s.n_blobs()), (4, 1));
        let stop = |n: u8| AnnounceRequest { stopped: true, complete: false, ..req(n, true) };
        let h = s.announce(&stop(1), t);
        assert_eq!((h.recorded, h.peers.len()), (Recorded::Stopped, 0));
        assert_eq!(id_set(&s.announce(&req(9, false), t)), HashSet::from([id(2), id(3), id(4)]), "1 is not handed out");
        // A restarted node (a new id at the same address) stops for its earlier process too;
        // a peer's own id goes whatever address it names.
        s.announce(&AnnounceRequest { peer_id: id(0x22), ..stop(2) }, t);
        s.announce(&AnnounceRequest { addr: addr(0x33), ..stop(3) }, t);
        assert_eq!(id_set(&s.announce(&req(9, false), t)), HashSet::from([id(4)]));
        // A stop for a blob never announced records nothing.
        s.announce(&AnnounceRequest { blob: Digest::of(b"never"), ..stop(4) }, t);
        assert_eq!((s.n_peers(), s.n_blobs()), (2, 1), "4 and the asker 9");
        s.announce(&stop(4), t);
        s.announce(&stop(9), t);
        assert_eq!((s.n_peers(), s.n_blobs()), (0, 0), "the last peers left: the blob goes too");
        assert_eq!(s.swarm_size(&blob(), t), shoal_core::api::SwarmSize::default());
    }

    #[test]
    fn never_the_asker() {
        let s = store(50);
        let t = Instant::now();
        s.announce(&req(1, true), t);
        s.announce(&req(2, false), t);
        let h = s.announce(&req(1, true), t);
        assert_eq!(ids(&h), vec![Some(id(2))]);
        let h = s.announce(&req(2, false), t);
        assert_eq!(ids(&h), vec![Some(id(1))]);
    }

    #[test]
    fn same_address_under_a_new_id_replaces_the_old_entry() {
        let s = store(50);
        let t = Instant::now();
        s.announce(&req(1, true), t);
        s.announce(&req(2, true), t);
        // Peer 1 restarts with a new id on the same address.
        let restarted = AnnounceRequest { peer_id: id(9), ..req(1, false) };
        let h = s.announce(&restarted, t);
        assert_eq!(ids(&h), vec![Some(id(2))]);
        assert_eq!(s.n_peers(), 2);
        assert_eq!(id_set(&s.announce(&req(2, true), t)), HashSet::from([id(9)]));
    }

    #[test]
    fn seeders_come_first() {
        let s = store(50);
        let t = Instant::now();
        for n in 1..=10 {
            s.announce(&req(n, n % 3 == 0), t);
        }
        let h = s.announce(&req(100, false), t);
        assert_eq!(h.peers.len(), 10);
        let complete: Vec<bool> = h.peers.iter().map(|p| p.complete).collect();
        assert_eq!(complete, [vec![true; 3], vec![false; 7]].concat(), "{h:?}");
    }

    #[test]
    fn max_peers_bounds_the_handout_and_seeders_fill_it_first() {
        let s = store(5);
        let t = Instant::now();
        for n in 1..=20 {
            s.announce(&req(n, n <= 3), t);
        }
        let h = s.announce(&req(100, false), t);
        assert_eq!(h.peers.len(), 5);
        assert_eq!(id_set(&h).len(), 5);
        assert!(h.peers[..3].iter().all(|p| p.complete));
        assert!(h.peers[3..].iter().all(|p| !p.complete));
        // Only seeders when there are more than enough of them.
        for n in 30..=40 {
            s.announce(&req(n, true), t);
        }
        let h = s.announce(&req(100, false), t);
        assert_eq!(h.peers.len(), 5);
        assert!(h.peers.iter().all(|p| p.complete));
    }

    #[test]
    fn handout_is_random_across_announces() {
        let s = store(3);
        let t = Instant::now();
        for n in 1..=30 {
            s.announce(&req(n, true), t);
        }
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let h = s.announce_with_rng(&req(100, false), t, &mut rng);
            assert_eq!(h.peers.len(), 3);
            seen.extend(id_set(&h));
        }
        // 50 draws of 3 from 30 reach almost all of them, never the same 3 each time.
        assert!(seen.len() > 20, "only {} distinct peers handed out", seen.len());
    }

    #[test]
    fn expired_peers_are_not_handed_out_and_are_purged() {
        let s = store(50);
        let t0 = Instant::now();
        s.announce(&req(1, true), t0);
        s.announce(&req(2, true), t0 + Duration::from_secs(10));
        // At exactly the TTL an entry is still live.
        let h = s.announce(&req(3, false), t0 + TTL);
        assert_eq!(id_set(&h), HashSet::from([id(1), id(2)]));
        assert_eq!(h.purged, 0);
        // Just past it, peer 1 is gone and purged by this announce; peer 2 is not yet expired.
        let h = s.announce(&req(3, false), t0 + TTL + Duration::from_millis(1));
        assert_eq!(ids(&h), vec![Some(id(2))]);
        assert_eq!(h.purged, 1);
        assert_eq!(s.n_peers(), 2);
    }

    #[test]
    fn sweep_purges_expired_peers_and_empty_blobs() {
        let s = store(50);
        let t0 = Instant::now();
        s.announce(&req(1, true), t0);
        let other = AnnounceRequest { blob: Digest::of(b"other"), ..req(2, true) };
        s.announce(&other, t0 + Duration::from_secs(20));
        assert_eq!((s.n_peers(), s.n_blobs()), (2, 2));

        assert_eq!(s.sweep(t0 + TTL), Swept::default());
        assert_eq!(s.sweep(t0 + TTL + Duration::from_secs(1)), Swept { peers: 1, blobs: 1 });
        assert_eq!((s.n_peers(), s.n_blobs()), (1, 1));
        assert_eq!(s.sweep(t0 + Duration::from_secs(60)), Swept { peers: 1, blobs: 1 });
        assert_eq!((s.n_peers(), s.n_blobs()), (0, 0));
    }

    #[test]
    fn reannounce_updates_the_entry() {
        let s = store(50);
        let t0 = Instant::now();
        s.announce(&req(1, false), t0);
        let h = s.announce(&req(2, false), t0);
        assert!(!h.peers[0].complete);
        // Peer 1 finished its download.
        s.announce(&req(1, true), t0 + Duration::from_secs(20));
        let h = s.announce(&req(2, false), t0 + Duration::from_secs(20));
        assert_eq!(h.peers.len(), 1);
        assert!(h.peers[0].complete);
        // The re-announce also refreshed its TTL.
        let h = s.announce(&req(2, false), t0 + Duration::from_secs(45));
        assert_eq!(ids(&h), vec![Some(id(1))]);
        assert_eq!(s.n_peers(), 2);
    }

    #[test]
    fn ipv6_addresses_round_trip() {
        let s = store(50);
        let t = Instant::now();
        let v6: SocketAddr = "[fd00::1:2]:7603".parse().unwrap();
        let scoped: SocketAddr = "[fe80::1%2]:7603".parse().unwrap();
        s.announce(&AnnounceRequest { addr: v6, ..req(1, true) }, t);
        s.announce(&AnnounceRequest { addr: scoped, ..req(2, true) }, t);
        let h = s.announce(&req(3, false), t);
        let addrs: HashSet<SocketAddr> = h.peers.iter().map(|p| p.addr).collect();
        assert_eq!(addrs, HashSet::from([v6, scoped]));
        // And over JSON, the way the answer travels.
        let json = serde_json::to_string(&h.peers).unwrap();
        assert!(json.contains("[fd00::1:2]:7603"), "{json}");
        assert_eq!(serde_json::from_str::<Vec<PeerInfo>>(&json).unwrap(), h.peers);
    }

    #[test]
    fn unusable_address_is_answered_but_not_recorded() {
        let s = store(50);
        let t = Instant::now();
        s.announce(&req(1, true), t);
        for bad in ["0.0.0.0:7603", "[::]:7603", "10.0.0.5:0"] {
            let h = s.announce(&AnnounceRequest { addr: bad.parse().unwrap(), ..req(5, false) }, t);
            assert_eq!(h.recorded, Recorded::UnusableAddr, "{bad}");
            assert_eq!(ids(&h), vec![Some(id(1))]);
        }
        let other = AnnounceRequest { blob: Digest::of(b"new"), addr: "0.0.0.0:1".parse().unwrap(), ..req(5, false) };
        assert_eq!(s.announce(&other, t).recorded, Recorded::UnusableAddr);
        assert_eq!((s.n_peers(), s.n_blobs()), (1, 1));
    }

    #[test]
    fn swarm_cap_answers_without_recording() {
        let s = store(50);
        let t = Instant::now();
        {
            let mut swarm = s.blobs.entry(blob()).or_default();
            for i in 0..MAX_PEERS_PER_BLOB {
                let n = u32::try_from(i).unwrap();
                let addr = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + n), 7603));
                let mut pid = [0u8; 16];
                pid[..4].copy_from_slice(&n.to_le_bytes());
                swarm.peers.insert(
                    PeerId(pid),
                    Entry { addr, complete: true, origin: false, zone: None, last_seen: t, slot: None },
                );
            }
        }
        s.n_blobs.store(1, Ordering::Relaxed);
        s.n_peers.store(MAX_PEERS_PER_BLOB, Ordering::Relaxed);
        let newcomer = AnnounceRequest { peer_id: id(0xee), addr: "192.168.0.1:1".parse().unwrap(), ..req(0, false) };
        let h = s.announce(&newcomer, t);
        assert_eq!(h.recorded, Recorded::SwarmFull);
        assert_eq!(h.peers.len(), 50);
        assert_eq!(s.n_peers(), MAX_PEERS_PER_BLOB);
        // Once entries expire there is room again.
        let later = t + TTL + Duration::from_secs(1);
        let h = s.announce(&newcomer, later);
        assert_eq!((h.recorded, h.purged), (Recorded::Yes, MAX_PEERS_PER_BLOB));
        assert_eq!(s.n_peers(), 1);
    }

    /// Ten thousand fake seeders from one host: at most `max_peers_per_host` are recorded,
    /// and a real seeder elsewhere is still handed out.
    #[test]
    fn one_host_cannot_crowd_out_the_real_seeders() {
        let s = store(50);
        let t = Instant::now();
        let real = AnnounceRequest { addr: "10.0.9.1:7603".parse().unwrap(), ..req(1, true) };
        s.announce(&real, t);
        let mut recorded = 0;
        for i in 0..10_000u32 {
            let mut pid = [0xf0u8; 16];
            pid[..4].copy_from_slice(&i.to_le_bytes());
            let port = u16::try_from(1000 + i).unwrap();
            let fake =
                AnnounceRequest { peer_id: PeerId(pid), addr: SocketAddr::from(([10, 6, 6, 6], port)), ..req(0, true) };
            recorded += usize::from(s.announce(&fake, t).recorded == Recorded::Yes);
        }
        assert_eq!(recorded, 8);
        assert_eq!(s.host_entries("10.6.6.6".parse().unwrap()), 8);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let h = s.announce_with_rng(&req(100, false), t, &mut rng);
            assert!(h.peers.iter().any(|p| p.peer_id == Some(id(1))), "the real seeder is always listed: {h:?}");
            assert_eq!(h.peers.len(), 9);
        }
        // The first fake re-announcing keeps its entry; a new one at that host finds no room.
        let mut pid = [0xf0u8; 16];
        pid[..4].copy_from_slice(&0u32.to_le_bytes());
        let first =
            AnnounceRequest { peer_id: PeerId(pid), addr: SocketAddr::from(([10, 6, 6, 6], 1000)), ..req(0, true) };
        assert_eq!(s.announce(&first, t).recorded, Recorded::Yes);
        let new = AnnounceRequest { peer_id: id(0xee), addr: SocketAddr::from(([10, 6, 6, 6], 999)), ..req(0, true) };
        assert_eq!(s.announce(&new, t).recorded, Recorded::HostFull);
    }

    #[test]
    fn one_host_is_in_a_bounded_number_of_blobs() {
        let opts = StoreOptions { max_blobs_per_host: 3, ..StoreOptions::new(TTL, 50, None) };
        let s = PeerStore::new(opts);
        let t = Instant::now();
        let on = |b: u8| AnnounceRequest { blob: Digest::of(&[b]), ..req(1, true) };
        let got: Vec<Recorded> = (0..5).map(|b| s.announce(&on(b), t).recorded).collect();
        assert_eq!(got, [Recorded::Yes, Recorded::Yes, Recorded::Yes, Recorded::HostBlobs, Recorded::HostBlobs]);
        assert_eq!((s.host_entries(addr(1).ip()), s.n_blobs()), (3, 3));
        // Expiry gives the room back.
        s.sweep(t + TTL + Duration::from_secs(1));
        assert_eq!(s.host_entries(addr(1).ip()), 0);
        assert_eq!(s.announce(&on(4), t + TTL + Duration::from_secs(2)).recorded, Recorded::Yes);
        // Another host is not bounded by this one.
        assert_eq!(s.announce(&AnnounceRequest { blob: Digest::of(&[0]), ..req(2, true) }, t).recorded, Recorded::Yes);
    }

    /// A host that evicts a blob and says so (a `stopped` announce) gets its room back at
    /// once, not a TTL later.
    #[test]
    fn a_stopped_announce_gives_the_host_its_room_back() {
        let opts = StoreOptions { max_blobs_per_host: 2, ..StoreOptions::new(TTL, 50, None) };
        let s = PeerStore::new(opts);
        let t = Instant::now();
        let on = |b: u8| AnnounceRequest { blob: Digest::of(&[b]), ..req(1, true) };
        assert_eq!(s.announce(&on(0), t).recorded, Recorded::Yes);
        assert_eq!(s.announce(&on(1), t).recorded, Recorded::Yes);
        assert_eq!(s.announce(&on(2), t).recorded, Recorded::HostBlobs);
        let stopped = AnnounceRequest { stopped: true, complete: false, ..on(0) };
        assert_eq!(s.announce(&stopped, t).recorded, Recorded::Stopped);
        assert_eq!(s.host_entries(addr(1).ip()), 1);
        assert_eq!(s.announce(&on(2), t).recorded, Recorded::Yes);
        // A stop for a blob the host is not in changes nothing.
        s.announce(&AnnounceRequest { stopped: true, ..on(7) }, t);
        assert_eq!(s.host_entries(addr(1).ip()), 2);
    }

    #[test]
    fn the_origin_flag_is_kept_only_at_a_configured_origins_address() {
        let (s, ring) = store_with_origins(50, 3, 1);
        let t = Instant::now();
        let owner = ring.owners(&blob())[0].peer;
        let other = ring.nodes().iter().map(|o| o.peer).find(|a| *a != owner).unwrap();
        // A node claiming to be an origin at its own, unconfigured address.
        s.announce(&AnnounceRequest { origin: true, ..req(1, true) }, t);
        // A configured origin that is not this blob's owner.
        s.announce(&AnnounceRequest { peer_id: id(60), addr: other, origin: true, ..req(0, true) }, t);
        let h = s.announce(&req(100, false), t);
        let flag = |a: SocketAddr| h.peers.iter().find(|p| p.addr == a).map(|p| p.origin);
        assert_eq!(flag(addr(1)), Some(false), "an unconfigured address is no origin: {h:?}");
        assert_eq!(flag(other), Some(true));
        assert_eq!(flag(owner), Some(true));
        assert_eq!(s.swarm_size(&blob(), t).origins, 1);
    }

    #[test]
    fn blob_cap_answers_without_recording() {
        let s = store(50);
        s.n_blobs.store(MAX_BLOBS, Ordering::Relaxed);
        let h = s.announce(&req(1, false), Instant::now());
        assert_eq!(h.recorded, Recorded::TooManyBlobs);
        assert!(s.blobs.is_empty());
    }

    fn origin(n: u8) -> OriginNode {
        OriginNode { id: format!("origin-{n}"), http: format!("http://origin-{n}:7602"), peer: addr(200 + n) }
    }

    fn store_with_origins(max_peers: usize, n_origins: u8, replicas: usize) -> (PeerStore, Arc<Ring>) {
        let ring = Arc::new(Ring::new((0..n_origins).map(origin).collect(), replicas).unwrap());
        let s = PeerStore::new(StoreOptions::new(TTL, max_peers, Some(ring.clone())));
        (s, ring)
    }

    #[test]
    fn ring_owners_are_appended_beyond_max_peers() {
        let (s, ring) = store_with_origins(2, 5, 3);
        let t = Instant::now();
        for n in 1..=4 {
            s.announce(&req(n, true), t);
        }
        let h = s.announce(&req(100, false), t);
        let owners: Vec<SocketAddr> = ring.owners(&blob()).iter().map(|o| o.peer).collect();
        assert_eq!(h.peers.len(), 2 + 3);
        assert!(h.peers[..2].iter().all(|p| !p.origin && p.peer_id.is_some()));
        let tail: Vec<SocketAddr> = h.peers[2..].iter().map(|p| p.addr).collect();
        assert_eq!(tail, owners, "owners in ring order");
        assert!(h.peers[2..].iter().all(|p| p.origin && p.peer_id.is_none() && !p.complete));
    }

    #[test]
    fn ring_owners_are_not_listed_twice() {
        let (s, ring) = store_with_origins(50, 5, 3);
        let t = Instant::now();
        let owners: Vec<&OriginNode> = ring.owners(&blob());
        // The best owner has the blob and announced it.
        let seeding =
            AnnounceRequest { peer_id: id(50), addr: owners[0].peer, complete: true, origin: true, ..req(0, true) };
        s.announce(&seeding, t);
        let h = s.announce(&req(1, false), t);
        let addrs: Vec<SocketAddr> = h.peers.iter().map(|p| p.addr).collect();
        assert_eq!(addrs, vec![owners[0].peer, owners[1].peer, owners[2].peer]);
        assert_eq!(h.peers[0].peer_id, Some(id(50)));
        assert!(h.peers[0].complete);
    }

    #[test]
    fn an_announced_owner_beyond_max_peers_keeps_what_it_announced() {
        let (s, ring) = store_with_origins(1, 3, 1);
        let t = Instant::now();
        let owner = ring.owners(&blob())[0].peer;
        s.announce(&req(1, true), t);
        s.announce(&req(2, true), t);
        s.announce(
            &AnnounceRequest { peer_id: id(50), addr: owner, complete: false, origin: true, ..req(0, false) },
            t,
        );
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let h = s.announce_with_rng(&req(100, false), t, &mut rng);
            assert_eq!(h.peers.len(), 2, "{h:?}");
            assert!(h.peers[0].complete);
            assert_eq!(
                h.peers[1],
                PeerInfo { peer_id: Some(id(50)), addr: owner, complete: false, origin: true, zone: None }
            );
        }
    }

    #[test]
    fn an_origin_asking_is_not_told_about_itself() {
        let (s, ring) = store_with_origins(50, 3, 3);
        let me = ring.owners(&blob())[1].peer;
        let h =
            s.announce(&AnnounceRequest { peer_id: id(50), addr: me, origin: true, ..req(0, true) }, Instant::now());
        assert_eq!(h.peers.len(), 2);
        assert!(h.peers.iter().all(|p| p.addr != me && p.origin));
    }

    /// An asker with a zone gets its zone's peers first and `max(2, max_peers / 8)` of the
    /// others, each with the zone it announced; an asker without one gets everybody alike.
    #[test]
    fn zoned_askers_get_their_zone_first() {
        let s = store(16);
        let t = Instant::now();
        let zone = |n: u8| if n.is_multiple_of(4) { "a" } else { "b" };
        for n in 1..=60 {
            s.announce(&AnnounceRequest { zone: Some(zone(n).into()), ..req(n, n % 2 == 0) }, t);
        }
        let asker = AnnounceRequest { zone: Some("a".into()), ..req(200, false) };
        for _ in 0..20 {
            let h = s.announce(&asker, t);
            assert_eq!(h.peers.len(), 16);
            let zones: Vec<&str> = h.peers.iter().map(|p| p.zone.as_deref().unwrap()).collect();
            // 15 peers are in zone a: 14 of them, then 2 of zone b.
            assert_eq!(zones.iter().filter(|z| **z == "a").count(), 14, "{zones:?}");
            assert!(zones[..14].iter().all(|z| *z == "a") && zones[14..].iter().all(|z| *z == "b"), "{zones:?}");
            for p in &h.peers {
                let n = p.addr.ip().to_string().rsplit('.').next().unwrap().parse::<u8>().unwrap();
                assert_eq!(p.zone.as_deref(), Some(zone(n)));
            }
        }
        // No zone: the plain policy over every peer.
        let plain = s.announce(&req(201, false), t);
        assert_eq!(plain.peers.len(), 16);
        let in_a = plain.peers.iter().filter(|p| p.zone.as_deref() == Some("a")).count();
        assert!(in_a < 16, "{in_a}");
    }

    /// A zone's first `ZONE_GATEWAYS` incomplete askers hold a slot each, and only they get
    /// peers of other zones, with their share to import; the others are told to import
    /// nothing. A holder keeps its slot at every announce, complete or not, until its entry
    /// expires; then the next asker of its zone takes it.
    #[test]
    fn a_zone_imports_through_its_slot_holders() {
        let s = store(16);
        let t = Instant::now();
        let zone = |n: u8| if n <= 160 { "a" } else { "b" };
        let ask = |n: u8, complete: bool, at: Instant| {
            s.announce(&AnnounceRequest { zone: Some(zone(n).into()), ..req(n, complete) }, at)
        };
        for n in 1..=200u8 {
            ask(n, false, t);
        }
        let other = |n: u8| if zone(n) == "a" { "b" } else { "a" };
        let gets_far = |h: &Handout, n: u8| h.peers.iter().any(|p| p.zone.as_deref() == Some(other(n)));
        let share = |k: u8| Some(Imports::Share { slot: u32::from(k), of: u32::from(handout::ZONE_GATEWAYS) });
        // (asker, complete, imports)
        let mut table: Vec<(u8, bool, Option<Imports>)> = Vec::new();
        table.extend((1..=16).map(|n| (n, false, share(n - 1))));
        table.extend((17..=160).step_by(13).map(|n| (n, false, Some(Imports::None))));
        table.extend((161..=176).map(|n| (n, false, share(n - 161))));
        table.extend([(177, false, Some(Imports::None)), (200, false, Some(Imports::None))]);
        // A gateway that completed keeps its slot; a seeder that never held one gets none.
        table.extend([(3, true, share(2)), (40, true, Some(Imports::None))]);
        for (n, complete, imports) in table {
            for _ in 0..2 {
                let h = ask(n, complete, t);
                assert_eq!(h.imports, imports, "asker {n}");
                assert_eq!(gets_far(&h, n), imports != Some(Imports::None), "asker {n}: {:?}", h.peers);
            }
        }
        // No zone: nothing said, and every peer alike.
        let plain = s.announce(&req(201, false), t);
        assert_eq!(plain.imports, None);
        // Zone a's peers but gateway 5 (slot 4) announce again later; 5 expires, and the next
        // incomplete asker of zone a takes slot 4, the others still none.
        for n in (1..=200u8).filter(|&n| n != 5 && n != 100) {
            ask(n, n <= 16, t + TTL / 2);
        }
        let later = t + TTL + Duration::from_secs(1);
        assert_eq!(ask(100, false, later).imports, share(4));
        assert_eq!(ask(101, false, later).imports, Some(Imports::None));
        assert_eq!(ask(5, false, later).imports, Some(Imports::None), "its slot went to another");
    }
}
