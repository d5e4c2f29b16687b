//! One node's swarm state: its identity, store, limits, the blobs it downloads or seeds, and
//! its connection table ([`Peers`], which owns the connections, dials and the blacklist).
//!
//! Lock notice: `BlobEntry::shared` is a sync mutex held only for short updates, never across
//! an await and never while taking a `DashMap` shard lock of `Node::blobs` or a lock inside
//! [`Peers`]. `Peers` holds none of its own guards while it takes another, nor across an
//! await (its module doc), and it never takes a blob's lock; so no two locks nest.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use futures::StreamExt;
use parking_lot::Mutex;
use prometheus::Registry;
use shoal_core::ring::Ring;
use shoal_core::seeding::{SeedBudget, admits_upload, max_upload_backlog};
use shoal_core::wire::pack_bits;
use shoal_core::{Digest, MetaInfo, PeerId, PieceIndex};
use shoal_runtime::Tls;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::announce::TrackerClient;
use crate::blocking::Blocking;
use crate::config::SwarmConfig;
use crate::download::{self, EventTx};
use crate::error::SwarmError;
use crate::limiter::Limiter;
use crate::metrics::SwarmMetrics;
use crate::peers::{Limits, Peers};
use crate::store::{BlobFile, PartialBlob, PrefixFeeder, Store};
use crate::zones::Zones;
use crate::{gc, index};

/// What a node is in the swarm.
#[derive(Clone, Debug)]
pub enum Role {
    /// An agent: downloads blobs. `origins` is the origin ring (the agent's `origins` and
    /// `origin_replicas`): a download dials its blob's owners on it beside what the tracker
    /// hands out, so it goes on with every tracker down.
    Agent { origins: Ring },
    /// An origin: seeds the blobs it fetched and announces itself as an origin; dials nobody.
    Origin,
}

/// Where a blob's download stands, as waiters see it.
#[derive(Clone, Debug)]
pub(crate) enum Status {
    Running,
    Complete,
    Failed(SwarmError),
}

/// Byte counts of one blob on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlobStats {
    pub from_origin: u64,
    pub from_peers: u64,
    pub uploaded: u64,
    pub complete: bool,
}

/// A blob this node downloads or seeds.
pub(crate) struct BlobEntry {
    pub meta: MetaInfo,
    pub file: Arc<BlobFile>,
    pub shared: Mutex<BlobShared>,
    pub from_origin: AtomicU64,
    pub from_peers: AtomicU64,
    pub uploaded: AtomicU64,
    pub status: watch::Sender<Status>,
    /// On origins: which pieces were uploaded how often (super-seeding).
    pub seed_budget: Mutex<SeedBudget>,
    /// Bumped each time a piece becomes present, so streaming readers wake up.
    pub progress: watch::Sender<u64>,
}

pub(crate) struct BlobShared {
    /// Pieces we can serve (verified and written).
    pub have: Vec<bool>,
    pub complete: bool,
    /// Connections that opened this blob (sent or received its bitfield).
    pub peers: HashSet<PeerId>,
    /// The download actor, while downloading.
    pub actor: Option<EventTx>,
    /// The partial file, while downloading.
    pub partial: Option<Arc<PartialBlob>>,
}

impl BlobEntry {
    /// The entry of a download into `partial`, reporting to the actor behind `actor`.
    pub fn downloading(partial: Arc<PartialBlob>, actor: EventTx) -> BlobEntry {
        let meta = partial.meta().clone();
        let pieces = meta.num_pieces();
        BlobEntry {
            meta,
            file: partial.file().clone(),
            shared: Mutex::new(BlobShared {
                have: partial.have(),
                complete: false,
                peers: HashSet::new(),
                actor: Some(actor),
                partial: Some(partial),
            }),
            from_origin: AtomicU64::new(0),
            from_peers: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            status: watch::Sender::new(Status::Running),
            seed_budget: Mutex::new(SeedBudget::new(pieces)),
            progress: watch::Sender::new(0),
        }
    }

    pub fn bitfield(&self) -> Vec<u8> {
        let s = self.shared.lock();
        if s.complete {
            pack_bits(self.meta.num_pieces(), |_| true)
        } else {
            pack_bits(self.meta.num_pieces(), |i| s.have[i as usize])
        }
    }

    pub fn has_piece(&self, i: u32) -> bool {
        let s = self.shared.lock();
        s.complete || s.have.get(i as usize).copied().unwrap_or(false)
    }

    pub fn actor(&self) -> Option<EventTx> {
        self.shared.lock().actor.clone()
    }

    pub fn stats(&self) -> BlobStats {
        BlobStats {
            from_origin: self.from_origin.load(Ordering::Relaxed),
            from_peers: self.from_peers.load(Ordering::Relaxed),
            uploaded: self.uploaded.load(Ordering::Relaxed),
            complete: self.shared.lock().complete,
        }
    }
}

/// Everything one node's tasks share. The public fields are fixed at start or synchronise
/// themselves (the store, limiters, metrics, the connection table); the mutable maps and
/// budgets behind them have one owner each and are reached through methods.
pub(crate) struct Node {
    /// Random, or with TLS bound to the certificate's identity (`PeerId::bound`), so peers
    /// can check the id this node claims.
    pub peer_id: PeerId,
    /// The node's TLS material: the peer port and its dials speak TLS when set.
    pub tls: Option<Tls>,
    pub advertise: SocketAddr,
    pub is_origin: bool,
    /// The origin ring, on agents: every download dials its blob's owners.
    pub ring: Option<Ring>,
    pub cfg: SwarmConfig,
    pub store: Store,
    pub metrics: SwarmMetrics,
    pub egress: Limiter,
    pub ingress: Limiter,
    /// Slots for received pieces verified while their connection reads on (`blocking_threads`).
    pub verify_slots: Arc<Semaphore>,
    pub tracker: TrackerClient,
    /// Connections, dials, origin addresses and the blacklist.
    pub peers: Peers,
    /// Our zone and the zones handouts gave for our peers.
    pub zones: Zones,
    /// Blobs downloading or seeding. Inserted and removed only here (`start_download`,
    /// `register_complete`); connections and actors look entries up with [`Node::blob`].
    blobs: DashMap<Digest, Arc<BlobEntry>>,
    /// Serializes the start of a download per digest; an entry lives while a start of its
    /// digest is in progress or waiting.
    starting: DashMap<Digest, Arc<tokio::sync::Mutex<()>>>,
    /// Running downloads (`max_downloads`): each actor holds a permit.
    downloads: Arc<Semaphore>,
    /// Upload bytes admitted and still waiting for egress tokens.
    upload_backlog: Arc<AtomicU64>,
    /// Most upload bytes that may wait at the egress cap; `None` when uncapped.
    max_upload_backlog: Option<u64>,
    /// Room for piece buffers read for upload, in [`UPLOAD_MEMORY_UNIT`]s.
    upload_memory: Arc<Semaphore>,
    /// Set once `sendfile(2)` refused the store's files (a file system without it): uploads
    /// are read into memory from then on, as with `swarm.sendfile: false`.
    pub sendfile_refused: AtomicBool,
    /// Re-verifications of stored pieces a peer reported corrupt, at once.
    pub reverify: Arc<Semaphore>,
    /// On an origin, blobs peers opened that it lacks ([`Swarm::wanted`]).
    wanted: Option<Wanted>,
    pub cancel: CancellationToken,
}

/// Blobs that peers opened with this origin and that it does not hold, for its fetcher
/// ([`Swarm::wanted`]): an owner that lost its copy, or never had one, gets it from its
/// backend once the swarm asks for it. Bounded; a want that finds the queue full is dropped
/// (the peer opens the blob again after its next announce).
struct Wanted {
    tx: mpsc::Sender<Digest>,
    rx: Mutex<Option<mpsc::Receiver<Digest>>>,
}

/// Wants queued for an origin's fetcher at most.
const WANTED_QUEUE: usize = 64;

/// The unit of [`Node::upload_memory`].
const UPLOAD_MEMORY_UNIT: u64 = 64 << 10;

/// Upload bytes counted in [`Node::upload_backlog`] until dropped.
pub(crate) struct BacklogGuard {
    backlog: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for BacklogGuard {
    fn drop(&mut self) {
        self.backlog.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Node {
    /// A node with no listener of its own: `Swarm::start` adds the accept loop.
    fn new(
        cfg: SwarmConfig,
        advertise: SocketAddr,
        is_origin: bool,
        tls: Option<Tls>,
        ring: Option<Ring>,
        registry: &Registry,
        cancel: CancellationToken,
    ) -> anyhow::Result<Node> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let mut store = Store::open(&cfg.store_dir, Blocking::new(cfg.blocking_threads))?;
        store.verify_blob_digest(cfg.verify_blob_digest);
        let token = match &cfg.tracker_token_file {
            Some(f) => Some(Arc::new(shoal_runtime::auth::TokenSource::load(f).map_err(anyhow::Error::msg)?)),
            None => None,
        };
        store.configure_pins(&cfg.store.pin.digests, &cfg.store.pin.repositories)?;
        // The high mark before the first round, so a download past it starts one at once.
        match crate::store::space_of(&cfg.store_dir) {
            Ok(space) => store.index().set_high(gc::limits(&cfg.store, space).high),
            Err(e) => tracing::warn!("cannot measure the store's filesystem: {e:#}"),
        }
        store.evictions().register(registry)?;
        registry.register(Box::new(store.read_back_counter().clone()))?;
        crate::store_metrics::register(registry, cfg.store_dir.clone(), cfg.store.clone())?;
        let peer_id = match &tls {
            Some(t) => PeerId::bound(t.identity().as_str()),
            None => PeerId::random(),
        };
        let zones = Zones::new(cfg.zone.as_deref());
        let ring_origins: HashSet<SocketAddr> = ring.iter().flat_map(|r| r.nodes().iter().map(|o| o.peer)).collect();
        // An origin dials nobody: every slot may be inbound.
        let dial_reserve = if is_origin { 0 } else { cfg.max_connections / 4 };
        let limits =
            Limits { max_connections: cfg.max_connections, dial_reserve, shun_for: cfg.blacklist_duration.get() };
        Ok(Node {
            peer_id,
            tracker: TrackerClient::new(cfg.trackers.clone(), cfg.io_timeout.get(), tls.as_ref()).with_token(token),
            tls,
            advertise,
            is_origin,
            ring,
            store,
            metrics: SwarmMetrics::new(registry)?,
            egress: Limiter::new(cfg.egress_rate.map(|b| b.0)),
            ingress: Limiter::new(cfg.ingress_rate.map(|b| b.0)),
            verify_slots: Arc::new(Semaphore::new(cfg.blocking_threads)),
            peers: Peers::new(peer_id, advertise, limits, ring_origins),
            zones,
            blobs: DashMap::new(),
            starting: DashMap::new(),
            downloads: Arc::new(Semaphore::new(cfg.max_downloads)),
            upload_backlog: Arc::new(AtomicU64::new(0)),
            upload_memory: Arc::new(Semaphore::new(
                usize::try_from(cfg.upload_memory.0 / UPLOAD_MEMORY_UNIT).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            sendfile_refused: AtomicBool::new(false),
            max_upload_backlog: cfg.egress_rate.map(|r| max_upload_backlog(r.0, cfg.upload_backlog.get())),
            reverify: Arc::new(Semaphore::new(gc::REVERIFY_AT_ONCE)),
            wanted: is_origin.then(|| {
                let (tx, rx) = mpsc::channel(WANTED_QUEUE);
                Wanted { tx, rx: Mutex::new(Some(rx)) }
            }),
            cancel,
            cfg,
        })
    }

    /// A node for tests of one component: its store in `cfg.store_dir`, no tracker unless
    /// `cfg` names one, no listener, its own metrics registry. An agent has no ring.
    #[cfg(test)]
    pub fn for_tests(cfg: SwarmConfig, is_origin: bool) -> Arc<Node> {
        let advertise = SocketAddr::from(([127, 0, 0, 1], 1));
        let node = Node::new(cfg, advertise, is_origin, None, None, &Registry::new(), CancellationToken::new());
        Arc::new(node.expect("test node"))
    }

    /// A peer opened blob `d`, which this node lacks: an origin queues it for its fetcher.
    pub fn want(&self, d: Digest) {
        if let Some(w) = &self.wanted {
            let _ = w.tx.try_send(d);
        }
    }

    /// Puts `entry` in the blob map, replacing any entry of its digest.
    #[cfg(test)]
    pub fn insert_blob(&self, entry: Arc<BlobEntry>) {
        self.blobs.insert(entry.meta.digest(), entry);
    }

    /// The entry of a blob this node downloads or seeds.
    pub fn blob(&self, d: &Digest) -> Option<Arc<BlobEntry>> {
        self.blobs.get(d).map(|e| e.clone())
    }

    /// The complete blobs this node has open (the ones it announces as a seed).
    pub fn complete_blobs(&self) -> Vec<Digest> {
        self.blobs.iter().filter(|e| e.shared.lock().complete).map(|e| *e.key()).collect()
    }

    /// Entries (and so open files) this node holds.
    pub fn open_blobs(&self) -> usize {
        self.blobs.len()
    }

    /// Drops the entries nobody holds of complete blobs unused for `idle`, and of failed
    /// downloads, closing their files; returns how many went. A closed complete blob is
    /// still in the store, opened again when asked for.
    pub fn close_idle(&self, idle: std::time::Duration) -> usize {
        let now = std::time::SystemTime::now();
        let before = self.blobs.len();
        self.blobs.retain(|d, e| {
            if Arc::strong_count(e) > 1 {
                return true;
            }
            match &*e.status.borrow() {
                Status::Running => true,
                Status::Failed(_) => false,
                Status::Complete => {
                    let last = self.store.index().last_used(d).unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                    now.duration_since(last).unwrap_or_default() < idle
                }
            }
        });
        before.saturating_sub(self.blobs.len())
    }

    /// Whether the only holder of `file` (besides the caller's own reference) is the entry
    /// of `d`, and nobody holds that entry: the blob is idle though open.
    pub fn only_held_by_its_entry(&self, d: &Digest, file: &Arc<BlobFile>) -> bool {
        self.blobs
            .get(d)
            .is_some_and(|e| Arc::strong_count(&*e) == 1 && Arc::ptr_eq(&e.file, file) && Arc::strong_count(file) == 2)
    }

    /// Removes the entry of complete blob `d` if nobody holds it or its file (with `force`,
    /// whoever does). Returns whether `d` has no entry now.
    pub fn remove_settled_entry(&self, d: &Digest, force: bool) -> bool {
        self.blobs.remove_if(d, |_, e| {
            e.shared.lock().complete && (force || (Arc::strong_count(e) == 1 && Arc::strong_count(&e.file) == 1))
        });
        !self.blobs.contains_key(d)
    }

    /// Waits for room to hold a piece of `bytes` read for upload; the permit gives the room
    /// back when dropped.
    pub async fn reserve_upload_memory(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(UPLOAD_MEMORY_UNIT)).unwrap_or(u32::MAX);
        self.upload_memory.clone().acquire_many_owned(units).await.ok()
    }

    /// Admits `bytes` of upload into the backlog, or `None` if the backlog is full. An empty
    /// backlog always admits one piece.
    pub fn admit_upload(&self, bytes: u64) -> Option<BacklogGuard> {
        let before = self.upload_backlog.fetch_add(bytes, Ordering::Relaxed);
        let guard = BacklogGuard { backlog: self.upload_backlog.clone(), bytes };
        // Refused, the guard gives the bytes back.
        admits_upload(before, bytes, self.max_upload_backlog).then_some(guard)
    }

    /// The entry of a blob we download or seed; loads a stored complete blob on demand.
    pub async fn entry_or_load(self: &Arc<Self>, d: Digest) -> Option<Arc<BlobEntry>> {
        if let Some(e) = self.blob(&d) {
            return Some(e);
        }
        match self.store.open_complete(d).await {
            Ok(Some(file)) => Some(self.register_complete(file)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%d, "cannot open stored blob: {e:#}");
                None
            }
        }
    }

    pub fn register_complete(self: &Arc<Self>, file: Arc<BlobFile>) -> Arc<BlobEntry> {
        let d = file.meta().digest();
        self.blobs
            .entry(d)
            .or_insert_with(|| {
                let pieces = file.meta().num_pieces();
                let n = pieces as usize;
                Arc::new(BlobEntry {
                    meta: file.meta().clone(),
                    file,
                    shared: Mutex::new(BlobShared {
                        have: vec![true; n],
                        complete: true,
                        peers: HashSet::new(),
                        actor: None,
                        partial: None,
                    }),
                    from_origin: AtomicU64::new(0),
                    from_peers: AtomicU64::new(0),
                    uploaded: AtomicU64::new(0),
                    status: watch::Sender::new(Status::Complete),
                    seed_budget: Mutex::new(SeedBudget::new(pieces)),
                    progress: watch::Sender::new(0),
                })
            })
            .clone()
    }
}

/// Reads verified pieces of a blob in order, waiting for the ones still missing. While it
/// lives the blob is in use (never evicted); when it is dropped (the response is sent or its
/// client went away) the blob's last use is recorded.
struct PieceReader {
    entry: Arc<BlobEntry>,
    store: Store,
    progress: watch::Receiver<u64>,
    status: watch::Receiver<Status>,
    cancel: CancellationToken,
    end: u64,
    /// While the blob downloads and this reader started at its first byte: the prefix hash,
    /// fed what the reader reads.
    feeder: Option<Arc<PrefixFeeder>>,
}

impl Drop for PieceReader {
    fn drop(&mut self) {
        self.store.touch(&self.entry.meta.digest());
    }
}

/// Records a use of a stored blob when dropped: kept by a response that streams the blob, so
/// its last use is when the response ended ([`Swarm::use_record`]).
pub struct UseRecord {
    store: Store,
    digest: Digest,
}

impl Drop for UseRecord {
    fn drop(&mut self) {
        self.store.touch(&self.digest);
    }
}

impl PieceReader {
    /// Largest chunk read at once.
    const CHUNK: u64 = 1 << 20;

    /// The bytes from `off` up to the end of its piece (at most a chunk), once that piece is
    /// present.
    async fn next_chunk(&mut self, off: u64) -> std::io::Result<bytes::Bytes> {
        let digest = self.entry.meta.digest();
        let index = self
            .wait_piece(off)
            .await
            .map_err(|e| std::io::Error::other(format!("download of {digest} failed: {e}")))?;
        let meta = &self.entry.meta;
        let piece_end = meta.piece_offset(index) + u64::from(meta.piece_len(index));
        let len = usize::try_from(piece_end.min(self.end).min(off + Self::CHUNK) - off).expect("at most a chunk");
        self.store.read_feeding(self.entry.file.clone(), off, len, self.feeder.clone()).await
    }

    /// Waits until the piece holding `off` is present; the download's own error if it fails
    /// first.
    async fn wait_piece(&mut self, off: u64) -> Result<PieceIndex, SwarmError> {
        let meta = &self.entry.meta;
        let index =
            meta.piece_at(off).ok_or_else(|| SwarmError::Failed(format!("offset {off} is beyond the blob").into()))?;
        loop {
            self.progress.borrow_and_update();
            if self.entry.has_piece(index.get()) {
                return Ok(index);
            }
            if let Status::Failed(e) = &*self.status.borrow_and_update() {
                return Err(e.clone());
            }
            tokio::select! {
                r = self.progress.changed() => if r.is_err() { return Err(SwarmError::ShuttingDown) },
                r = self.status.changed() => if r.is_err() { return Err(SwarmError::ShuttingDown) },
                () = self.cancel.cancelled() => return Err(SwarmError::ShuttingDown),
            }
        }
    }
}

/// Handle to one node's swarm engine; cheap to clone.
#[derive(Clone)]
pub struct Swarm {
    node: Arc<Node>,
}

impl Swarm {
    /// Builds the engine and starts accepting peers on `listener`. An origin announces itself
    /// as one; an agent's downloads also dial their blobs' owners on its ring. With `tls` every
    /// peer connection and tracker call is mutual TLS, and the node's peer id is bound to its
    /// certificate. Everything stops when `shutdown` is cancelled.
    pub fn start(
        cfg: SwarmConfig,
        listener: TcpListener,
        registry: &Registry,
        role: Role,
        tls: Option<Tls>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Swarm> {
        let local = listener.local_addr()?;
        let advertise = cfg.advertise_addr.unwrap_or(local);
        let (is_origin, ring) = match role {
            Role::Agent { origins } => (false, Some(origins)),
            Role::Origin => (true, None),
        };
        let node = Arc::new(Node::new(cfg, advertise, is_origin, tls, ring, registry, shutdown.child_token())?);
        tracing::info!(peer_id = %node.peer_id, %local, %advertise, is_origin, "swarm listening");
        if !node.cfg.peer_networks.contains(advertise.ip()) {
            tracing::warn!(%advertise, "the advertised address is outside swarm.peer_networks: peers with these networks never dial it");
        }
        let n = node.clone();
        shoal_runtime::spawn("peer-accept", node.cancel.clone(), async move {
            crate::conn::accept_loop(n, listener).await;
            Ok(())
        });
        let n = node.clone();
        let every = n.cfg.seed_announce_interval.get();
        shoal_runtime::spawn("seed-announcer", node.cancel.clone(), async move {
            download::seed_announcer(n, every).await;
            Ok(())
        });
        let n = node.clone();
        shoal_runtime::spawn("store-upkeep", node.cancel.clone(), async move {
            gc::run(n).await;
            Ok(())
        });
        Ok(Swarm { node })
    }

    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id
    }

    pub fn advertise_addr(&self) -> SocketAddr {
        self.node.advertise
    }

    pub fn store(&self) -> &Store {
        &self.node.store
    }

    /// Byte counts for a blob this node has open (downloading, or complete and used within
    /// `swarm.store.idle_timeout`).
    pub fn stats(&self, d: &Digest) -> Option<BlobStats> {
        self.node.blobs.get(d).map(|e| e.stats())
    }

    /// Blobs this node has open: their in-memory entry and file. A complete blob unused for
    /// `swarm.store.idle_timeout` is closed.
    pub fn open_blobs(&self) -> usize {
        self.node.open_blobs()
    }

    /// Records a use of complete blob `d` (served to a client) for the store's
    /// least-recently-used order. Peer uploads and [`Swarm::stream`] record their own.
    pub fn touch(&self, d: &Digest) {
        self.node.store.touch(d);
    }

    /// A record of a use of `d` made when it is dropped: a response streaming a stored blob
    /// keeps it to the end.
    pub fn use_record(&self, d: Digest) -> UseRecord {
        UseRecord { store: self.node.store.clone(), digest: d }
    }

    /// Pins (or with `pin == false` unpins) `d` as a preheat asked: a pinned blob is never
    /// evicted. The pin is kept on disk.
    pub async fn pin(&self, d: Digest, pin: bool) -> Result<(), SwarmError> {
        Ok(self.node.store.set_pin(d, index::PIN_PREHEAT, pin).await?)
    }

    /// Records that `d` was requested through repository `name`: if `name` is one of
    /// `swarm.store.pin.repositories`, `d` is pinned from now on.
    pub async fn note_repository(&self, name: &str, d: Digest) {
        if !self.node.store.index().pins_repository(name) {
            return;
        }
        if let Err(e) = self.node.store.set_pin(d, &index::repository_pin(name), true).await {
            tracing::warn!(%d, repository = name, "cannot record the pin: {e:#}");
        }
    }

    /// Announces every complete blob in the store as seeded, in the background and a few at
    /// a time (an origin after its start: it does not open them).
    pub fn announce_stored(&self) {
        let node = self.node.clone();
        if node.tracker.is_empty() {
            return;
        }
        shoal_runtime::spawn("announce-stored", node.cancel.clone(), async move {
            let stored = node.store.complete_digests();
            let n = stored.len();
            futures::stream::iter(stored)
                .for_each_concurrent(gc::ANNOUNCE_CONCURRENCY, |d| {
                    let node = node.clone();
                    async move {
                        if node.store.contains(&d) {
                            download::announce_once(&node, d, true).await;
                        }
                    }
                })
                .await;
            tracing::info!(blobs = n, "stored blobs announced");
            Ok(())
        });
    }

    /// Runs a round of the store's upkeep now (closing idle blobs, evicting to the budget;
    /// see `swarm::gc`), as the node's own task does every `check_interval`.
    pub async fn store_round(&self) -> gc::RoundReport {
        gc::round(&self.node).await
    }

    /// Writes the recorded last uses of stored blobs to disk (also done every round), for a
    /// node about to stop.
    /// On an origin, the blobs that peers opened and it lacks, for its fetcher to get from
    /// its backend, so a ring owner that lost its copy or never had one seeds it again once
    /// the swarm asks. `Some` once, on an origin; `None` after, or on an agent.
    pub fn wanted(&self) -> Option<mpsc::Receiver<Digest>> {
        self.node.wanted.as_ref().and_then(|w| w.rx.lock().take())
    }

    pub async fn persist_last_uses(&self) {
        self.node.store.persist_last_uses().await;
    }

    /// Open peer connections.
    pub fn connections(&self) -> usize {
        self.node.peers.len()
    }

    /// The complete blob, if this node holds it (a lookup: it does not count as a use).
    pub async fn complete(&self, d: Digest) -> Result<Option<Arc<BlobFile>>, SwarmError> {
        if let Some(e) = self.node.blobs.get(&d) {
            if e.shared.lock().complete {
                return Ok(Some(e.file.clone()));
            }
            return Ok(None);
        }
        Ok(self.node.store.open_complete(d).await?)
    }

    /// Starts seeding a blob already complete in the store, and announces it.
    pub async fn seed(&self, d: Digest) -> Result<(), SwarmError> {
        let file = self.node.store.open_complete(d).await?.ok_or(SwarmError::NotStored(d))?;
        self.node.register_complete(file);
        download::announce_once(&self.node, d, true).await;
        Ok(())
    }

    /// Downloads the blob `meta` describes through the swarm (or finds it stored), and
    /// returns its verified file. Concurrent calls for one blob share one download; the
    /// download goes on if the caller goes away.
    pub async fn download(&self, meta: MetaInfo) -> Result<Arc<BlobFile>, SwarmError> {
        let entry = self.start_download(meta).await?;
        let mut rx = entry.status.subscribe();
        loop {
            let st = rx.borrow_and_update().clone();
            match st {
                Status::Complete => {
                    self.node.store.touch(&entry.meta.digest());
                    return Ok(entry.file.clone());
                }
                Status::Failed(e) => return Err(e),
                Status::Running => {}
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(SwarmError::ShuttingDown) },
                _ = self.node.cancel.cancelled() => return Err(SwarmError::ShuttingDown),
            }
        }
    }

    /// Streams `[start, end)` of the blob `meta` describes while it downloads: each chunk is
    /// sent as soon as the piece holding it has matched its piece hash, in order, so a reader
    /// starts before the blob is complete. Starts (or joins) the download like
    /// [`Swarm::download`], and returns once the first piece of the range is present, or with
    /// the download's error if it fails before that. The stream ends with an error if the
    /// download fails before the range is covered; it never yields a byte of a piece that
    /// did not verify.
    ///
    /// What a reader gets is only as good as the metainfo: every byte matched a piece hash
    /// from `meta`, but the stream ends once the range is covered, before the whole blob's
    /// sha256 is checked (the commit checks it, and fails the download if it does not
    /// match; a registry client checks it too). So the bytes are the blob's exactly when
    /// `meta` is the one the origin built from content that matched the digest, which holds
    /// when it came from an origin over TLS. Without TLS anyone on the path to the origin can
    /// hand this node a metainfo of other content, and the stream serves that content until
    /// the commit notices.
    pub async fn stream(
        &self,
        meta: MetaInfo,
        start: u64,
        end: u64,
    ) -> Result<impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static + use<>, SwarmError> {
        let end = end.min(meta.length());
        let entry = self.start_download(meta).await?;
        let partial = if start == 0 { entry.shared.lock().partial.clone() } else { None };
        let mut reader = PieceReader {
            feeder: partial.and_then(|p| p.feeder()).map(Arc::new),
            store: self.node.store.clone(),
            progress: entry.progress.subscribe(),
            status: entry.status.subscribe(),
            entry,
            cancel: self.node.cancel.clone(),
            end,
        };
        // The first piece is awaited here, so a download that fails before any byte could be
        // sent (no origin, a full disk, a timeout) is the caller's error, not a broken body.
        if start < end {
            reader.wait_piece(start).await?;
        }
        Ok(futures::stream::unfold(Some((reader, start)), |state| async move {
            let (mut reader, off) = state?;
            if off >= reader.end {
                return None;
            }
            match reader.next_chunk(off).await {
                Ok(bytes) => {
                    let next = off + bytes.len() as u64;
                    Some((Ok(bytes), Some((reader, next))))
                }
                Err(e) => Some((Err(e), None)),
            }
        }))
    }

    async fn start_download(&self, meta: MetaInfo) -> Result<Arc<BlobEntry>, SwarmError> {
        let node = &self.node;
        let d = meta.digest();
        let lock = node.starting.entry(d).or_default().clone();
        let res = {
            let _guard = lock.lock().await;
            self.start_download_locked(meta).await
        };
        // The last one out removes the lock: the map holds only starts in progress. Checked
        // under the map's shard lock, which `entry` above takes too, so no start can be
        // holding a clone of a lock removed here.
        node.starting.remove_if(&d, |_, l| Arc::strong_count(l) == 2);
        res
    }

    async fn start_download_locked(&self, meta: MetaInfo) -> Result<Arc<BlobEntry>, SwarmError> {
        let node = &self.node;
        let d = meta.digest();
        if let Some(e) = node.blobs.get(&d).map(|e| e.clone()) {
            // A failed download is retried by a new call; a running or complete one is shared.
            if !matches!(*e.status.borrow(), Status::Failed(_)) {
                return Ok(e);
            }
            node.blobs.remove(&d);
        }
        if let Some(file) = node.store.open_complete(d).await? {
            return Ok(node.register_complete(file));
        }
        let Ok(running) = node.downloads.clone().try_acquire_owned() else {
            node.metrics.downloads_refused.inc();
            return Err(SwarmError::TooManyDownloads { max: node.cfg.max_downloads });
        };
        let partial = node.store.open_partial(meta).await?;
        let (tx, rx) = download::events();
        let entry = Arc::new(BlobEntry::downloading(partial.clone(), tx));
        node.blobs.insert(d, entry.clone());
        let n = node.clone();
        let e = entry.clone();
        let cancel = node.cancel.clone();
        // The request that started the download keeps its id in the download's announces.
        // Not `shoal_runtime::spawn`: the task watches `cancel` itself, so the cleanup below
        // (metrics, the download slot, the status waiters see) runs on shutdown too.
        tokio::spawn(shoal_runtime::request_id::inherit(async move {
            n.metrics.downloads_active.inc();
            let started = Instant::now();
            let res = tokio::select! {
                r = download::run(n.clone(), e.clone(), partial, rx) => r,
                _ = cancel.cancelled() => Err(SwarmError::ShuttingDown),
            };
            n.metrics.downloads_active.dec();
            drop(running);
            e.shared.lock().actor = None;
            match res {
                Ok(()) => {
                    n.metrics.downloads_completed.inc();
                    n.metrics.download_seconds.observe(started.elapsed().as_secs_f64());
                    e.status.send_replace(Status::Complete);
                }
                Err(err) => {
                    tracing::warn!(digest = %e.meta.digest(), "download failed: {err:#}");
                    n.metrics.downloads_failed.inc();
                    e.status.send_replace(Status::Failed(err));
                }
            }
        }));
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use shoal_core::metainfo::MetaInfoBuilder;

    use super::*;

    fn meta(seed: u8) -> MetaInfo {
        let data = vec![seed; 1000];
        let mut b = MetaInfoBuilder::new(data.len() as u64).unwrap();
        b.update(&data);
        b.finish().unwrap()
    }

    /// Downloads that can get no piece (no tracker, no ring) until their timeout: the node
    /// runs at most `max_downloads` of them; joining one does not count, and a slot frees
    /// when one ends.
    #[tokio::test(start_paused = true)]
    async fn downloads_past_max_downloads_are_refused_until_one_ends() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SwarmConfig {
            store_dir: dir.path().to_path_buf(),
            max_downloads: 2,
            download_timeout: shoal_runtime::Duration::from_secs(2),
            ..SwarmConfig::default()
        };
        let swarm = Swarm { node: Node::for_tests(cfg, false) };
        let (a, b, c) = (meta(1), meta(2), meta(3));
        swarm.start_download(a.clone()).await.unwrap();
        swarm.start_download(b.clone()).await.unwrap();
        let err = swarm.start_download(c.clone()).await.err().expect("a third download is refused");
        assert!(matches!(err, SwarmError::TooManyDownloads { max: 2 }), "{err}");
        assert!(err.to_string().contains("swarm.max_downloads"), "{err}");
        assert_eq!(swarm.node.metrics.downloads_refused.get(), 1);
        swarm.start_download(a.clone()).await.expect("a running download is joined, not refused");
        assert!(matches!(swarm.download(a).await, Err(SwarmError::Timeout { .. })));
        assert!(matches!(swarm.download(b).await, Err(SwarmError::Timeout { .. })));
        swarm.start_download(c).await.expect("the slots came back when the downloads ended");
    }

    /// The per-digest start locks last only while a start is in progress.
    #[tokio::test]
    async fn start_locks_are_dropped_once_started() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SwarmConfig { store_dir: dir.path().to_path_buf(), ..SwarmConfig::default() };
        let swarm = Swarm { node: Node::for_tests(cfg, false) };
        let starts = (0..20).map(|i| swarm.start_download(meta(i % 4)));
        for r in futures::future::join_all(starts).await {
            r.unwrap();
        }
        assert!(swarm.node.starting.is_empty(), "{} start locks left", swarm.node.starting.len());
        assert_eq!(swarm.node.blobs.len(), 4);
    }
}
