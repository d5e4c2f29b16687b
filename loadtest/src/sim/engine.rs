//! The event loop of the simulator: hosts, their downloads and the messages between them.
//!
//! Every download is the real actor's state, [`DownloadState`], built with the swarm's own
//! [`download_options`], fed the same events and ticked on the same 100 ms grid as
//! `swarm/src/download.rs` does on the wall clock; [`Sim::apply`] carries out its actions as
//! messages with the path's delay. `Bitfield`, `Have`, `Request`, `Reject` and `Cancel` mirror
//! the reader of `swarm/src/conn.rs`; `AnnounceReply` dials with the actor's own
//! [`peers_to_dial`]. Invariant: the queue is ordered by (time, sequence), and handlers only
//! schedule events at or after the current time, so virtual time never goes back.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_core::Digest;
use shoal_core::download::{Action, DownloadState, TICK, Verified, peers_to_dial};
use shoal_core::handout::{self, Imports};
use shoal_core::metainfo::default_piece_length;
use shoal_core::picker::PeerKind;
use shoal_core::ratelimit::{self, ByteRate};
use shoal_core::ring::{OriginNode, Ring};
use shoal_core::seeding::{Refusal, SeedBudget, admit_upload, admits_upload, max_upload_backlog};
use shoal_core::wire::RejectReason;
use shoal_swarm::SwarmConfig;
use shoal_swarm::download::download_options;
use std::time::Duration;

use super::tracker::{Handed, Swarm};
use super::{HostResult, SimConfig, SimReport};
use crate::bound;

/// Virtual time in nanoseconds.
type Ns = u64;

fn ns(secs: f64) -> Ns {
    (secs * 1e9).ceil() as Ns
}

/// The download actor's timer ([`TICK`]): deadlines, back-offs and announces take effect at
/// the first tick after they are due.
const TICK_NS: Ns = TICK.as_nanos() as Ns;

/// A message or timer. `to` is the host handling it, `from` the other end.
enum Ev {
    /// An agent starts pulling every layer.
    Start {
        host: u32,
    },
    /// An announce reaches the tracker.
    Announce {
        host: u32,
        blob: u32,
        complete: bool,
    },
    /// The tracker's answer reaches the agent.
    AnnounceReply {
        host: u32,
        blob: u32,
        peers: Vec<Handed>,
        /// What the tracker told it to import from other zones (zoned agents only).
        imports: Option<Imports>,
    },
    /// A dial's handshake reaches `to`.
    Dial {
        from: u32,
        to: u32,
        blob: u32,
    },
    /// The dialer learns the connection is up and opens the blob on it.
    Open {
        host: u32,
        peer: u32,
        blob: u32,
    },
    Bitfield {
        to: u32,
        from: u32,
        blob: u32,
        bits: Vec<u8>,
    },
    Have {
        to: u32,
        from: u32,
        blob: u32,
        piece: u32,
    },
    /// A request reaches the server `to`.
    Request {
        to: u32,
        from: u32,
        blob: u32,
        piece: u32,
    },
    /// The server's egress bucket let the piece go.
    EgressDone {
        server: u32,
        client: u32,
        blob: u32,
        piece: u32,
    },
    /// The piece's last byte reached `to`.
    PieceArrive {
        to: u32,
        from: u32,
        blob: u32,
        piece: u32,
    },
    /// `to`'s ingress bucket let the piece in; with a [`super::CpuModel`] it now waits for
    /// a core (queued in the order pieces get here, not the order they arrived).
    PieceIn {
        to: u32,
        from: u32,
        blob: u32,
        piece: u32,
    },
    /// The piece is verified and stored.
    PieceDone {
        to: u32,
        from: u32,
        blob: u32,
        piece: u32,
    },
    Reject {
        to: u32,
        from: u32,
        blob: u32,
        piece: u32,
        reason: RejectReason,
    },
    Cancel {
        to: u32,
        from: u32,
        blob: u32,
        piece: u32,
    },
    /// Every piece of `blob` is at `host` and its whole-blob check is done.
    Committed {
        host: u32,
        blob: u32,
    },
    /// A tick of `host`'s download of `blob` (scheduled only when the state has something
    /// due: ticks with nothing to do change nothing, so they are skipped).
    Tick {
        host: u32,
        blob: u32,
    },
}

struct Item {
    t: Ns,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.t, self.seq) == (other.t, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    /// Reversed, so the max-heap pops the earliest event.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.t, other.seq).cmp(&(self.t, self.seq))
    }
}

/// `swarm/src/limiter.rs` in virtual time: the same `shoal_core::ratelimit::Bucket`, whose
/// grant is immediate and whose debt is slept off, which makes it a FIFO server of rate
/// `rate` with a credit of `burst`.
struct Bucket {
    rate: Option<f64>,
    bucket: ratelimit::Bucket,
}

impl Bucket {
    fn new(rate: Option<f64>) -> Bucket {
        Bucket { rate, bucket: ratelimit::Bucket::default() }
    }

    fn byte_rate(&self) -> Option<ByteRate> {
        self.rate.map(|per_second| ByteRate { per_second, burst: (per_second / 10.0).max(64.0 * 1024.0) })
    }

    /// When `n` bytes asked for at `now` may pass.
    fn acquire(&mut self, now: Ns, n: u64) -> Ns {
        let Some(rate) = self.byte_rate() else { return now };
        let wait = self.bucket.take(Duration::from_nanos(now), rate.cost(n), rate.capacity());
        now.saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Gives back the tokens of `n` bytes granted but not sent.
    fn give_back(&mut self, now: Ns, n: u64) {
        if let Some(rate) = self.byte_rate() {
            self.bucket.give_back(Duration::from_nanos(now), rate.cost(n));
        }
    }
}

/// [`super::CpuModel`]'s cores: when each is free again.
struct Cpu {
    free: Vec<Ns>,
}

impl Cpu {
    /// Runs a job of `cost` that can start at `at` on the core free first; returns its end.
    fn run(&mut self, at: Ns, cost: Ns) -> Ns {
        let (i, _) = self.free.iter().enumerate().min_by_key(|(i, f)| (**f, *i)).expect("at least one core");
        let end = at.max(self.free[i]) + cost;
        self.free[i] = end;
        end
    }
}

/// One layer of the image.
struct Layer {
    size: u64,
    piece_len: u64,
    num_pieces: u32,
}

/// One connection as seen from one end.
#[derive(Default)]
struct Conn {
    /// Uploads in flight on it from this end (permits taken).
    uploads: usize,
    /// Bit `k`: this end has sent its bitfield of blob `k` (`ConnHandle::open_blob`).
    opened: u64,
}

/// A host's state for one blob.
struct HostBlob {
    /// Pieces it has, packed MSB-first as on the wire; what it serves and sends.
    bits: Vec<u8>,
    /// Peers the blob is open with (`BlobEntry::shared.peers`): who gets its `have`s.
    peers: Vec<u32>,
    /// The download actor while the blob is incomplete.
    actor: Option<Actor>,
}

/// A host's download of one blob: the real actor's state on virtual time.
struct Actor {
    state: DownloadState<u32>,
    /// When the download started: the state's epoch, and its ticks fall on `started + k·TICK`.
    started: Ns,
    /// The earliest tick scheduled and not yet run.
    next_tick: Option<Ns>,
}

impl Actor {
    /// The actor's first tick at or after `t`.
    fn tick_after(&self, t: Ns) -> Ns {
        self.started + t.saturating_sub(self.started).div_ceil(TICK_NS) * TICK_NS
    }

    /// `t` as the state's time.
    fn at(&self, t: Ns) -> Duration {
        Duration::from_nanos(t - self.started)
    }
}

struct Host {
    origin: bool,
    /// Agents with [`SimConfig::zones`]: host `i` is in zone `i % zones`. Origins have none.
    zone: Option<u32>,
    latency: Ns,
    up: Bucket,
    down: Bucket,
    conns: HashMap<u32, Conn>,
    blobs: Vec<HostBlob>,
    layers_left: usize,
    done: Ns,
    received: u64,
    from_origin: u64,
    uploaded: u64,
    /// Origins with [`SimConfig::origin_fewest_copies_first`]: requests waiting to be sent,
    /// whether one is being sent, and the copies sent of each (blob, piece).
    queue: Vec<(u32, u32, u32)>,
    sending: bool,
    copies: Vec<Vec<u32>>,
    /// Origins: the super-seeding budget of each blob (`BlobEntry::seed_budget`).
    budgets: Vec<SeedBudget>,
    /// Uploads in flight over all its connections.
    uploads: usize,
    /// Upload bytes admitted and still waiting for egress tokens (`Node::upload_backlog`).
    backlog: u64,
    /// Most upload bytes that may wait at its egress cap (`seeding::max_upload_backlog`); `None`
    /// when uncapped or with the bound off.
    max_backlog: Option<u64>,
}

pub(super) struct Sim<'a> {
    cfg: &'a SimConfig,
    layers: Vec<Layer>,
    hosts: Vec<Host>,
    /// The tracker's swarm of each layer.
    swarms: Vec<Swarm>,
    /// Origins owning some layer, for the bound.
    n_owners: usize,
    heap: BinaryHeap<Item>,
    seq: u64,
    now: Ns,
    rng: StdRng,
    /// Uploads waiting for egress tokens, as (server, client, blob, piece): what a cancel
    /// can still stop.
    serving: HashSet<(u32, u32, u32, u32)>,
    /// The swarm settings every agent's downloads are built from.
    swarm: SwarmConfig,
    agents_left: usize,
    events: u64,
    duplicate_bytes: u64,
    timeouts: u64,
    busy_rejects: u64,
    /// Of which for a full upload backlog.
    backlog_rejects: u64,
    cancelled: u64,
    refused_dials: u64,
    /// Piece bytes delivered to agents so far, sampled every `sample_every` into `timeline`.
    delivered: u64,
    cpu: Option<Cpu>,
    /// Per zone: piece bytes its agents received from other zones' agents, and from origins.
    zone_ingress: Vec<(u64, u64)>,
    sample_every: Ns,
    timeline: Vec<(f64, u64)>,
}

impl<'a> Sim<'a> {
    pub(super) fn new(cfg: &'a SimConfig) -> Sim<'a> {
        let n_agents = cfg.hosts;
        let layers: Vec<Layer> = cfg
            .layers
            .iter()
            .map(|&size| {
                let piece_len = u64::from(default_piece_length(size));
                Layer { size, piece_len, num_pieces: size.div_ceil(piece_len).max(1) as u32 }
            })
            .collect();
        let nodes: Vec<OriginNode> = (0..cfg.origins)
            .map(|i| OriginNode {
                id: format!("origin-{i}"),
                http: String::new(),
                peer: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 7000)),
            })
            .collect();
        let ring = Ring::new(nodes, cfg.origin_replicas.max(1)).expect("non-empty ring with unique ids");
        let mut owned = vec![false; cfg.origins];
        let mut swarms = Vec::new();
        for digest in &layer_digests(layers.len()) {
            let owners: Vec<u32> = ring
                .owners(digest)
                .into_iter()
                .map(|o| {
                    let i: usize = o.id["origin-".len()..].parse().expect("our ids");
                    owned[i] = true;
                    (n_agents + i) as u32
                })
                .collect();
            let mut swarm =
                Swarm::zoned(owners.clone(), cfg.max_peers, (0..n_agents).map(|i| cfg.zone_of(i)).collect());
            for o in owners {
                swarm.record(o, true, true);
            }
            swarms.push(swarm);
        }
        let hosts = (0..n_agents + cfg.origins)
            .map(|i| {
                let origin = i >= n_agents;
                let blobs = layers
                    .iter()
                    .map(|l| {
                        let mut bits = vec![0u8; (l.num_pieces as usize).div_ceil(8)];
                        if origin {
                            for p in 0..l.num_pieces {
                                bits[(p / 8) as usize] |= 0x80 >> (p % 8);
                            }
                        }
                        HostBlob { bits, peers: Vec::new(), actor: None }
                    })
                    .collect();
                let (up, down) = if origin { (cfg.origin_up, cfg.origin_down) } else { (cfg.agent_up, cfg.agent_down) };
                Host {
                    origin,
                    zone: if origin { None } else { cfg.zone_of(i) },
                    latency: ns(cfg.latency),
                    up: Bucket::new(up),
                    down: Bucket::new(down),
                    conns: HashMap::new(),
                    blobs,
                    layers_left: if origin { 0 } else { layers.len() },
                    done: 0,
                    received: 0,
                    from_origin: 0,
                    uploaded: 0,
                    queue: Vec::new(),
                    sending: false,
                    copies: if origin {
                        layers.iter().map(|l| vec![0; l.num_pieces as usize]).collect()
                    } else {
                        Vec::new()
                    },
                    uploads: 0,
                    backlog: 0,
                    // Whole bytes/s and whole milliseconds, as the swarm's config gives them.
                    max_backlog: up.zip(cfg.upload_backlog).map(|(rate, secs)| {
                        max_upload_backlog(rate as u64, Duration::from_millis((secs * 1000.0).round() as u64))
                    }),
                    budgets: if origin && cfg.super_seeding {
                        layers.iter().map(|l| SeedBudget::new(l.num_pieces)).collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        let mut sim = Sim {
            cfg,
            layers,
            hosts,
            swarms,
            n_owners: owned.iter().filter(|o| **o).count(),
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
            rng: StdRng::seed_from_u64(cfg.seed),
            serving: HashSet::new(),
            swarm: cfg.swarm_config(),
            agents_left: n_agents,
            events: 0,
            duplicate_bytes: 0,
            timeouts: 0,
            busy_rejects: 0,
            backlog_rejects: 0,
            cancelled: 0,
            refused_dials: 0,
            delivered: 0,
            cpu: cfg.cpu.map(|c| Cpu { free: vec![0; c.cores.max(1)] }),
            zone_ingress: vec![(0, 0); cfg.zones],
            sample_every: 1,
            timeline: Vec::new(),
        };
        sim.sample_every = ns((sim.bound() / 50.0).max(0.01));
        for host in 0..n_agents as u32 {
            let t = if cfg.start_jitter > 0.0 { ns(sim.rng.random_range(0.0..cfg.start_jitter)) } else { 0 };
            sim.push(t, Ev::Start { host });
        }
        sim
    }

    pub(super) fn run(&mut self) {
        // A swarm that has not finished long after the bound has stalled: a bug to report.
        let limit = ns(20.0 * self.bound() + 60.0);
        let mut next_sample: Ns = 0;
        while let Some(item) = self.heap.pop() {
            while next_sample <= item.t {
                self.timeline.push((next_sample as f64 / 1e9, self.delivered));
                next_sample += self.sample_every;
            }
            self.now = item.t;
            self.events += 1;
            assert!(
                self.now <= limit,
                "simulation stalled: {} agents incomplete after {:.1} virtual seconds ({} timeouts so far)",
                self.agents_left,
                self.now as f64 / 1e9,
                self.timeouts
            );
            self.handle(item.ev);
            if self.agents_left == 0 {
                self.timeline.push((self.now as f64 / 1e9, self.delivered));
                break;
            }
        }
        assert_eq!(self.agents_left, 0, "event queue drained with agents incomplete");
    }

    pub(super) fn report(&self) -> SimReport {
        let hosts: Vec<HostResult> = self
            .hosts
            .iter()
            .filter(|h| !h.origin)
            .map(|h| HostResult {
                done: h.done as f64 / 1e9,
                received: h.received,
                from_origin: h.from_origin,
                uploaded: h.uploaded,
            })
            .collect();
        let mut times: Vec<f64> = hosts.iter().map(|h| h.done).collect();
        times.sort_by(f64::total_cmp);
        let origin_bytes = self.hosts.iter().filter(|h| h.origin).map(|h| h.uploaded).sum();
        let peer_bytes: u64 = hosts.iter().map(|h| h.uploaded).sum();
        let last = times.last().copied().unwrap_or(0.0);
        let cfg = self.cfg;
        let n = hosts.len() as f64;
        let share = |bytes: u64, capacity: f64| (capacity > 0.0).then(|| bytes as f64 / capacity);
        // Downloads are busy only until each agent is done; uploads (and origins) until the last.
        let busy_down: f64 = hosts.iter().map(|h| h.done).sum();
        let received: u64 = hosts.iter().map(|h| h.received).sum();
        SimReport {
            seeding_origins: self.n_owners,
            origin_up_use: cfg.origin_up.and_then(|r| share(origin_bytes, r * self.n_owners as f64 * last)),
            agent_up_use: cfg.agent_up.and_then(|r| share(peer_bytes, r * n * last)),
            agent_down_use: cfg.agent_down.and_then(|r| share(received, r * busy_down)),
            timeline: self.timeline.clone(),
            p50: bound::percentile(&times, 50.0).unwrap_or(0.0),
            p90: bound::percentile(&times, 90.0).unwrap_or(0.0),
            p99: bound::percentile(&times, 99.0).unwrap_or(0.0),
            p999: bound::percentile(&times, 99.9).unwrap_or(0.0),
            max: times.last().copied().unwrap_or(0.0),
            bound: self.bound(),
            hosts,
            origin_bytes,
            peer_bytes,
            duplicate_bytes: self.duplicate_bytes,
            timeouts: self.timeouts,
            busy_rejects: self.busy_rejects,
            backlog_rejects: self.backlog_rejects,
            cancelled: self.cancelled,
            refused_dials: self.refused_dials,
            zone_ingress: self.zone_ingress.clone(),
            events: self.events,
        }
    }

    /// `T*` with the seeds being the origins that own some layer.
    fn bound(&self) -> f64 {
        let cfg = self.cfg;
        let seed_up = cfg.origin_up.map(|u| u * self.n_owners as f64);
        bound::bound_of_rates(cfg.total_size(), seed_up, &vec![(cfg.agent_up, cfg.agent_down); cfg.hosts])
            .map_or(0.0, |b| b.secs)
    }

    fn push(&mut self, t: Ns, ev: Ev) {
        self.seq += 1;
        self.heap.push(Item { t, seq: self.seq, ev });
    }

    /// One-way delay between two hosts.
    fn delay(&self, a: u32, b: u32) -> Ns {
        self.hosts[a as usize].latency + self.hosts[b as usize].latency
    }

    fn piece_len(&self, blob: u32, piece: u32) -> u64 {
        let l = &self.layers[blob as usize];
        l.piece_len.min(l.size - u64::from(piece) * l.piece_len)
    }

    fn blob(&mut self, host: u32, blob: u32) -> &mut HostBlob {
        &mut self.hosts[host as usize].blobs[blob as usize]
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start { host } => self.start(host),
            Ev::Committed { host, blob } => self.committed(host, blob),
            Ev::Announce { host, blob, complete } => {
                if complete {
                    self.swarms[blob as usize].record(host, true, false);
                } else {
                    let (peers, imports) = self.swarms[blob as usize].announce(host, false, false, &mut self.rng);
                    let t = self.now + self.hosts[host as usize].latency;
                    self.push(t, Ev::AnnounceReply { host, blob, peers, imports });
                }
            }
            Ev::AnnounceReply { host, blob, peers, imports } => self.announce_reply(host, blob, &peers, imports),
            Ev::Dial { from, to, blob } => self.dial(from, to, blob),
            Ev::Open { host, peer, blob } => self.open(host, peer, blob),
            Ev::Bitfield { to, from, blob, bits } => {
                self.open(to, from, blob);
                let (sender, receiver) = (&self.hosts[from as usize], &self.hosts[to as usize]);
                let kind = PeerKind::of_zones(sender.origin, receiver.zone.as_ref(), sender.zone.as_ref());
                let now = self.now;
                if let Some(a) = self.blob(to, blob).actor.as_mut() {
                    a.state.peer_joined_as(from, &bits, kind, a.at(now));
                    self.apply(to, blob);
                }
            }
            Ev::Have { to, from, blob, piece } => {
                let now = self.now;
                if let Some(a) = self.blob(to, blob).actor.as_mut() {
                    a.state.peer_have(from, piece, a.at(now));
                    self.apply(to, blob);
                }
            }
            Ev::Request { to, from, blob, piece } => self.serve(to, from, blob, piece),
            Ev::EgressDone { server, client, blob, piece } => {
                if self.serving.remove(&(server, client, blob, piece)) {
                    let len = self.piece_len(blob, piece);
                    // The tokens are granted: the piece leaves the backlog (`drop(backlog)`).
                    self.hosts[server as usize].backlog -= len;
                    if let Some(c) = self.hosts[server as usize].conns.get_mut(&client) {
                        c.uploads -= 1;
                        self.hosts[server as usize].uploads -= 1;
                    }
                    self.hosts[server as usize].uploaded += len;
                    let t = self.now + self.delay(server, client);
                    self.push(t, Ev::PieceArrive { to: client, from: server, blob, piece });
                }
                if self.prioritizes(server) {
                    self.origin_next(server);
                }
            }
            Ev::PieceArrive { to, from, blob, piece } => {
                let len = self.piece_len(blob, piece);
                let t = self.hosts[to as usize].down.acquire(self.now, len);
                if self.cpu.is_some() {
                    self.push(t, Ev::PieceIn { to, from, blob, piece });
                } else {
                    self.push(t, Ev::PieceDone { to, from, blob, piece });
                }
            }
            Ev::PieceIn { to, from, blob, piece } => {
                let len = self.piece_len(blob, piece);
                let mut t = self.now;
                if let (Some(cpu), Some(model)) = (self.cpu.as_mut(), self.cfg.cpu) {
                    t = cpu.run(t, ns(len as f64 / model.piece_rate));
                }
                self.push(t, Ev::PieceDone { to, from, blob, piece });
            }
            Ev::PieceDone { to, from, blob, piece } => self.piece_done(to, from, blob, piece),
            Ev::Reject { to, from, blob, piece, reason } => {
                let now = self.now;
                if let Some(a) = self.blob(to, blob).actor.as_mut() {
                    a.state.rejected(from, piece, reason, a.at(now));
                    self.apply(to, blob);
                }
            }
            Ev::Cancel { to, from, blob, piece } => {
                if self.serving.remove(&(to, from, blob, piece)) {
                    self.cancelled += 1;
                    // The aborted upload task drops its backlog guard; its tokens stay spent.
                    let len = self.piece_len(blob, piece);
                    self.hosts[to as usize].backlog -= len;
                    if self.cfg.refund_cancelled && !self.prioritizes(to) {
                        let len = self.piece_len(blob, piece);
                        let now = self.now;
                        self.hosts[to as usize].up.give_back(now, len);
                    }
                    if let Some(c) = self.hosts[to as usize].conns.get_mut(&from) {
                        c.uploads -= 1;
                        self.hosts[to as usize].uploads -= 1;
                    }
                }
            }
            Ev::Tick { host, blob } => {
                let now = self.now;
                let Some(a) = self.blob(host, blob).actor.as_mut() else { return };
                if a.next_tick == Some(now) {
                    a.next_tick = None;
                }
                a.state.tick(a.at(now));
                self.apply(host, blob);
            }
        }
    }

    /// The agent starts a download of every layer; the first tick of each announces.
    fn start(&mut self, host: u32) {
        let cfg = self.cfg;
        for blob in 0..self.layers.len() as u32 {
            let layer = &self.layers[blob as usize];
            let seed = splitmix(cfg.seed ^ (u64::from(host) << 16) ^ u64::from(blob));
            let piece_len = u32::try_from(layer.piece_len).expect("pieces are at most 4 MiB");
            let mut opts = download_options(&self.swarm, cfg.agent_down.map(|r| r as u64), piece_len, seed);
            opts.picker.endgame_pieces = cfg.endgame_pieces;
            if !cfg.busy_backoff {
                opts.busy_backoff = None;
            }
            let state = DownloadState::new(layer.num_pieces, &[], opts);
            self.blob(host, blob).actor = Some(Actor { state, started: self.now, next_tick: None });
            self.apply(host, blob);
        }
    }

    /// `announce_and_connect`: dial what [`peers_to_dial`] picks (up to `max_peers_per_blob`
    /// minus the peers already open, origins always), then tell the state when to announce
    /// again.
    fn announce_reply(&mut self, host: u32, blob: u32, peers: &[Handed], imports: Option<Imports>) {
        if self.blob(host, blob).actor.is_none() {
            return;
        }
        let open = self.blob(host, blob).peers.len();
        let ours = self.hosts[host as usize].zone;
        let hosts = &self.hosts;
        let is_far = |p: &&Handed| !handout::same_zone(ours.as_ref(), hosts[p.host as usize].zone.as_ref());
        let dials =
            peers_to_dial(peers.iter(), open, self.swarm.max_peers_per_blob, |p| p.origin, |p| p.host == host, is_far);
        for p in dials {
            if self.hosts[host as usize].conns.contains_key(&p.host) {
                self.open(host, p.host, blob);
            } else {
                // SYN, SYN-ACK, then ACK with our handshake.
                let t = self.now + 3 * self.delay(host, p.host);
                self.push(t, Ev::Dial { from: host, to: p.host, blob });
            }
        }
        let interval = handout::announce_interval(Duration::from_secs_f64(self.cfg.announce_interval), imports);
        let now = self.now;
        if let Some(a) = self.blob(host, blob).actor.as_mut() {
            if let Some(imports) = imports {
                a.state.set_imports(imports, a.at(now));
            }
            a.state.announced(interval, a.at(now));
            self.apply(host, blob);
        }
    }

    fn dial(&mut self, from: u32, to: u32, blob: u32) {
        if !self.hosts[to as usize].conns.contains_key(&from) {
            let max = self.cfg.max_connections;
            if self.hosts[to as usize].conns.len() >= max || self.hosts[from as usize].conns.len() >= max {
                self.refused_dials += 1;
                return;
            }
            self.hosts[to as usize].conns.insert(from, Conn::default());
            self.hosts[from as usize].conns.insert(to, Conn::default());
        }
        let t = self.now + self.delay(from, to);
        self.push(t, Ev::Open { host: from, peer: to, blob });
    }

    /// `host` adds `peer` to the blob's peers and sends its bitfield once per connection.
    fn open(&mut self, host: u32, peer: u32, blob: u32) {
        let hb = self.blob(host, blob);
        if !hb.peers.contains(&peer) {
            hb.peers.push(peer);
        }
        let bits = hb.bits.clone();
        let conn = self.hosts[host as usize].conns.get_mut(&peer).expect("open on a connection");
        if conn.opened & (1 << blob) != 0 {
            return;
        }
        conn.opened |= 1 << blob;
        let t = self.now + self.delay(host, peer);
        self.push(t, Ev::Bitfield { to: peer, from: host, blob, bits });
    }

    /// Carries out the actions of `host`'s download of `blob` as messages (`Actor::apply`),
    /// then schedules its next tick if the state has something due before the one scheduled.
    fn apply(&mut self, host: u32, blob: u32) {
        let check = self.cfg.check_invariants;
        loop {
            let Some(a) = self.blob(host, blob).actor.as_mut() else { return };
            if check {
                a.state.picker().check_invariants();
            }
            let Some(action) = a.state.poll() else { break };
            match action {
                Action::Request { peer, piece } => {
                    let t = self.now + self.delay(host, peer);
                    self.push(t, Ev::Request { to: peer, from: host, blob, piece });
                }
                Action::Cancel { peer, piece } => {
                    let t = self.now + self.delay(host, peer);
                    self.push(t, Ev::Cancel { to: peer, from: host, blob, piece });
                }
                Action::Have { piece } => {
                    let hb = self.blob(host, blob);
                    hb.bits[(piece / 8) as usize] |= 0x80 >> (piece % 8);
                    let peers = std::mem::take(&mut hb.peers);
                    for &p in &peers {
                        let t = self.now + self.delay(host, p);
                        self.push(t, Ev::Have { to: p, from: host, blob, piece });
                    }
                    self.blob(host, blob).peers = peers;
                }
                Action::Announce => {
                    let t = self.now + self.hosts[host as usize].latency;
                    self.push(t, Ev::Announce { host, blob, complete: false });
                }
                Action::Commit => return self.complete(host, blob),
                Action::GiveUp => panic!("host {host}'s download of layer {blob} timed out"),
            }
        }
        let now = self.now;
        let Some(a) = self.blob(host, blob).actor.as_mut() else { return };
        let Some(due) = a.state.next_wakeup() else { return };
        let t = a.tick_after((a.started + due.as_nanos() as Ns).max(now));
        if a.next_tick.is_none_or(|n| t < n) {
            a.next_tick = Some(t);
            self.push(t, Ev::Tick { host, blob });
        }
    }

    /// `Reader::serve`: the swarm's serving rule (`seeding::admit_upload`), then the piece
    /// queues on the egress bucket.
    fn serve(&mut self, server: u32, client: u32, blob: u32, piece: u32) {
        let d = self.delay(server, client);
        let has = {
            let bits = &self.blob(server, blob).bits;
            bits[(piece / 8) as usize] & (0x80 >> (piece % 8)) != 0
        };
        let max = self.cfg.max_uploads_per_connection;
        let len = self.piece_len(blob, piece);
        let h = &mut self.hosts[server as usize];
        let conn = h.conns.get_mut(&client).expect("requests come on a connection");
        // The swarm's serving rule; the experiment's host-wide cap counts as a missing permit.
        let permit = conn.uploads < max && self.cfg.max_uploads_per_host.is_none_or(|m| h.uploads < m);
        let room = admits_upload(h.backlog, len, h.max_backlog);
        let budget = h.budgets.get_mut(blob as usize).map(|b| (b, piece));
        if let Err(refusal) = admit_upload(has, || room.then_some(()), || permit.then_some(()), budget) {
            let busy = refusal.is_busy();
            self.busy_rejects += u64::from(busy);
            self.backlog_rejects += u64::from(refusal == Refusal::Backlog);
            self.push(
                self.now + d,
                Ev::Reject { to: client, from: server, blob, piece, reason: refusal.reject_reason() },
            );
            return;
        }
        let conn = self.hosts[server as usize].conns.get_mut(&client).expect("checked above");
        conn.uploads += 1;
        self.hosts[server as usize].uploads += 1;
        self.hosts[server as usize].backlog += len;
        self.serving.insert((server, client, blob, piece));
        if self.prioritizes(server) {
            let h = &mut self.hosts[server as usize];
            h.queue.push((client, blob, piece));
            if !h.sending {
                self.origin_next(server);
            }
            return;
        }
        let t = self.hosts[server as usize].up.acquire(self.now, len);
        self.push(t, Ev::EgressDone { server, client, blob, piece });
    }

    /// Whether `host` serves with [`SimConfig::origin_fewest_copies_first`].
    fn prioritizes(&self, host: u32) -> bool {
        self.cfg.origin_fewest_copies_first && self.hosts[host as usize].origin
    }

    /// The experimental origin scheduler: send next the queued piece this origin has sent
    /// the fewest times (oldest request first among equals), one piece at a time at its rate.
    fn origin_next(&mut self, server: u32) {
        let h = &mut self.hosts[server as usize];
        h.queue.retain(|&(c, b, p)| self.serving.contains(&(server, c, b, p)));
        let best = h.queue.iter().enumerate().min_by_key(|(i, (_, b, p))| (h.copies[*b as usize][*p as usize], *i));
        let Some((i, _)) = best else {
            h.sending = false;
            return;
        };
        let (client, blob, piece) = h.queue.remove(i);
        h.copies[blob as usize][piece as usize] += 1;
        h.sending = true;
        let len = self.piece_len(blob, piece);
        let rate = self.hosts[server as usize].up.rate;
        let t = self.now + rate.map_or(0, |r| ns(len as f64 / r));
        self.push(t, Ev::EgressDone { server, client, blob, piece });
    }

    /// The `PieceOk` handler: the state settles the request, cancels duplicates, tells the
    /// peers, refills and commits; a copy no download wants counts as a duplicate.
    fn piece_done(&mut self, host: u32, from: u32, blob: u32, piece: u32) {
        let len = self.piece_len(blob, piece);
        let (from_origin, from_zone) = (self.hosts[from as usize].origin, self.hosts[from as usize].zone);
        let now = self.now;
        let h = &mut self.hosts[host as usize];
        h.received += len;
        self.delivered += len;
        if from_origin {
            h.from_origin += len;
        }
        let verified = match h.blobs[blob as usize].actor.as_mut() {
            Some(a) => a.state.piece_ok(from, piece, a.at(now)),
            None => Verified::Ignored,
        };
        if verified != Verified::New {
            self.duplicate_bytes += len;
        } else if let Some(z) = self.hosts[host as usize].zone {
            // Bytes into a zone from outside it, counted as the agents' metric counts them
            // (first copies only): from another zone's agent, or from an origin (origins are
            // in no zone, so each of their bytes crosses into the receiver's).
            let ingress = &mut self.zone_ingress[z as usize];
            if from_origin {
                ingress.1 += len;
            } else if from_zone.is_some_and(|f| f != z) {
                ingress.0 += len;
            }
        }
        self.apply(host, blob);
    }

    /// Every piece is here and the leftovers are cancelled: the whole-blob check.
    fn complete(&mut self, host: u32, blob: u32) {
        let actor = self.blob(host, blob).actor.take().expect("completing a running download");
        self.timeouts += actor.state.timeouts();
        let size = self.layers[blob as usize].size as f64;
        let t = match (self.cpu.as_mut(), self.cfg.cpu) {
            (Some(cpu), Some(model)) => cpu.run(self.now, ns(size / model.blob_rate)),
            _ => self.now + self.cfg.commit_rate.map_or(0, |r| ns(size / r)),
        };
        self.push(t, Ev::Committed { host, blob });
    }

    /// The whole-blob check passed: the blob is complete and announced as such.
    fn committed(&mut self, host: u32, blob: u32) {
        let t = self.now + self.hosts[host as usize].latency;
        self.push(t, Ev::Announce { host, blob, complete: true });
        let h = &mut self.hosts[host as usize];
        h.layers_left -= 1;
        if h.layers_left == 0 {
            h.done = self.now;
            self.agents_left -= 1;
        }
    }
}

/// The made-up digests of the layers, which place them on the origin ring.
pub(super) fn layer_digests(n: usize) -> Vec<Digest> {
    (0..n).map(|k| Digest::of(format!("shoal-sim layer {k}").as_bytes())).collect()
}

/// The splitmix64 finalizer: independent-looking picker seeds from one run seed.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
