//! The node's connection table, with one owner: which peers are connected, which addresses
//! are being dialed or resolve to a connected peer, which addresses are origins, who is
//! shunned, and the connection slots.
//!
//! Connections and download actors never touch the maps; they call [`Peers`]:
//! [`Peers::connect`] dials an address once (or hands back the connection already made to
//! it), [`Peers::register`] admits a handshaken connection and resolves duplicates,
//! [`Peers::unregister`] removes it when it ends, and [`Peers::shun`] blacklists a remote that
//! misbehaved and closes its connection.
//!
//! Invariants:
//! - At most one registered connection per peer id. Of two connections between the same pair
//!   of nodes, both sides keep the one dialed by the node with the smaller peer id, so they
//!   agree without talking.
//! - An address is dialed by one task at a time; the mark is cleared when that dial ends,
//!   also when its future is dropped.
//! - An address resolves to a peer only while that peer has a registered connection.
//! - The blacklist is keyed by what a remote proved ([`Remote`]: its certificate's identity
//!   and its IP address), and by the addresses we dialed that misbehaved, never by a peer id
//!   a remote claims: a connection claiming another node's id gets only itself shunned.
//! - A connection replaces a registered one of the same peer id and direction only if it
//!   comes from the same [`Remote`]; a claim of a connected peer's id from elsewhere is a
//!   duplicate and refused.
//! - The blacklist holds at most [`MAX_SHUNNED`] remotes and as many addresses; expired
//!   entries are pruned at every [`Peers::shun`] and at lookup.
//! - Origin addresses are the ring's (fixed at start) and at most [`MAX_NOTED_ORIGINS`] more
//!   that trackers reported; the one reported longest ago makes room.
//! - Slots: every connection holds one of `max_connections` slots from its dial or its
//!   handshake until it ends. Inbound connections hold at most `max_connections` minus the
//!   dial reserve, so dials (to origins above all) always find one; an accepted socket waits
//!   for its handshake holding one of [`MAX_PENDING_HANDSHAKES`] permits and no slot.
//!
//! Locks: the maps are `DashMap`s. `register` inserts into `addr_peer` while it holds the
//! entry of its peer in `conns` (so an address never outlives its peer's last connection);
//! no other method holds a guard of one map while it takes another, and none holds a guard
//! across an await. The blacklist and the noted origins are sync mutexes held only around
//! their own maps.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;
use shoal_core::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::conn::{ConnHandle, Refusal, Remote};

/// Most peer ids, and most addresses, shunned at once. Hard-coded: a node meets far fewer
/// misbehaving peers within one `blacklist_duration`, and without a bound peers that churn
/// their ids (or a hostile fleet) would grow the table for as long as the node runs. When it
/// is full of live entries, the entry that would expire first makes room. The doc of
/// `SwarmConfig::blacklist_duration` names the number.
pub(crate) const MAX_SHUNNED: usize = 4096;

/// Most origin addresses remembered from trackers' handouts beyond the ring's own. Hard-coded:
/// a fleet has a few origins, and their addresses change only when they move.
pub(crate) const MAX_NOTED_ORIGINS: usize = 256;

/// Most accepted sockets waiting for their handshake at once (each for at most
/// `handshake_timeout`). Hard-coded: a handshake is one round trip, so a herd of peers
/// connecting at once waits only briefly in the listen backlog.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 128;

/// A connection's slot: the node's, and for an inbound connection an inbound one too.
pub(crate) struct Slot {
    _total: OwnedSemaphorePermit,
    _inbound: Option<OwnedSemaphorePermit>,
}

/// The connection table of one node.
pub(crate) struct Peers {
    /// Our own peer id: a connection to it is refused, and duplicates are resolved by it.
    me: PeerId,
    /// Our advertised address, never dialed.
    advertise: SocketAddr,
    /// How long a shunned peer stays shunned (`blacklist_duration`).
    shun_for: Duration,
    /// Registered (handshaken) connections. Written by `register`, `unregister` and `shun`;
    /// read by uploads, `Have` broadcasts and dials through `get`.
    conns: DashMap<PeerId, Arc<ConnHandle>>,
    /// Dialed addresses resolved to the peer behind them, so a second dial of an address
    /// reuses the connection. Pruned when the peer's connection goes.
    addr_peer: DashMap<SocketAddr, PeerId>,
    /// Addresses being dialed, so each is dialed once at a time.
    dialing: DashMap<SocketAddr, ()>,
    /// The peer addresses of the ring's origins: a connection from or to one is an origin
    /// connection (the picker asks origins last).
    ring_origins: HashSet<SocketAddr>,
    /// Other addresses trackers reported as origins, with when they were last reported; at
    /// most [`MAX_NOTED_ORIGINS`].
    noted_origins: Mutex<HashMap<SocketAddr, Instant>>,
    /// Shunned remotes and dialed addresses, bounded.
    shunned: Mutex<Shunned>,
    /// Connection slots (`max_connections`), taken by a dial before it connects and by an
    /// accepted connection after its handshake, and held until the connection ends.
    slots: Arc<Semaphore>,
    /// The share of `slots` inbound connections may hold: all but the dial reserve.
    inbound: Arc<Semaphore>,
    /// Accepted sockets still in their handshake ([`MAX_PENDING_HANDSHAKES`]).
    handshakes: Arc<Semaphore>,
}

/// The limits of a connection table.
pub(crate) struct Limits {
    pub max_connections: usize,
    /// Slots inbound connections may not take (at most `max_connections`).
    pub dial_reserve: usize,
    /// How long a shunned peer stays shunned (`blacklist_duration`).
    pub shun_for: Duration,
}

impl Peers {
    /// The table of node `me`, advertised at `advertise`, whose origins' peer addresses are
    /// `ring_origins`.
    pub fn new(me: PeerId, advertise: SocketAddr, limits: Limits, ring_origins: HashSet<SocketAddr>) -> Peers {
        let reserve = limits.dial_reserve.min(limits.max_connections);
        Peers {
            me,
            advertise,
            shun_for: limits.shun_for,
            conns: DashMap::new(),
            addr_peer: DashMap::new(),
            dialing: DashMap::new(),
            ring_origins,
            noted_origins: Mutex::new(HashMap::new()),
            shunned: Mutex::new(Shunned::default()),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            inbound: Arc::new(Semaphore::new(limits.max_connections - reserve)),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
        }
    }

    /// Waits for room for one more accepted socket in its handshake.
    pub async fn handshake_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.handshakes.clone().acquire_owned().await.ok()
    }

    /// A slot for a handshaken inbound connection, if one is free outside the dial reserve.
    pub fn try_inbound_slot(&self) -> Option<Slot> {
        let inbound = self.inbound.clone().try_acquire_owned().ok()?;
        let total = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot { _total: total, _inbound: Some(inbound) })
    }

    /// A connection slot for a dial, if one is free (a full node dials nobody).
    pub fn try_slot(&self) -> Option<Slot> {
        let total = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot { _total: total, _inbound: None })
    }

    /// The connection to `addr`: the registered one if the address resolves to a connected
    /// peer, else the result of `dial`. `None` for our own address, a shunned address, or an
    /// address another task is dialing right now (that task will open what it needs).
    pub async fn connect<F, Fut>(&self, addr: SocketAddr, dial: F) -> Option<Arc<ConnHandle>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<Arc<ConnHandle>>>,
    {
        if addr == self.advertise || self.is_addr_shunned(&addr) {
            return None;
        }
        let known = self.addr_peer.get(&addr).map(|p| *p);
        if let Some(c) = known.and_then(|p| self.get(&p)) {
            return Some(c);
        }
        if self.dialing.insert(addr, ()).is_some() {
            return None;
        }
        let _dialing = DialMark { dialing: &self.dialing, addr };
        dial().await
    }

    /// Admits a handshaken connection from or to `addr`. Refused: a connection to ourselves,
    /// a shunned peer, or the loser of a duplicate pair (see the module invariants), which
    /// the caller closes. A winner replaces (and closes) the connection it beats.
    pub fn register(&self, addr: SocketAddr, conn: &Arc<ConnHandle>) -> Result<(), Refusal> {
        let peer = conn.peer_id;
        if peer == self.me {
            return Err(Refusal::OwnId);
        }
        if self.is_shunned(&conn.remote) {
            return Err(Refusal::Shunned);
        }
        let entry = self.conns.entry(peer);
        if conn.outbound {
            // Recorded even if this connection loses: the address then resolves to the
            // connection that won. Inserted under the peer's entry, so an `unregister` of its
            // last connection either came before (and the entry is vacant: this one is kept)
            // or comes after (and forgets the address).
            self.addr_peer.insert(addr, peer);
        }
        match entry {
            Entry::Vacant(v) => {
                v.insert(conn.clone());
                Ok(())
            }
            Entry::Occupied(mut o) => {
                let old = o.get();
                let dialer_of = |c: &ConnHandle| if c.outbound { self.me } else { c.peer_id };
                // Same direction and the same remote: the peer reconnected, and the old
                // connection is dead and not yet noticed. From another remote it is a claim.
                let reconnect = old.outbound == conn.outbound && old.remote == conn.remote;
                let keep_new = reconnect || (old.outbound != conn.outbound && dialer_of(conn) < dialer_of(old));
                if !keep_new {
                    return Err(Refusal::Duplicate);
                }
                old.close();
                o.insert(conn.clone());
                Ok(())
            }
        }
    }

    /// Removes `conn` when it ends, unless another connection to its peer replaced it.
    /// Returns whether it was the registered one.
    pub fn unregister(&self, conn: &Arc<ConnHandle>) -> bool {
        let removed = self.conns.remove_if(&conn.peer_id, |_, c| Arc::ptr_eq(c, conn)).is_some();
        if removed {
            self.forget_addrs(&conn.peer_id);
        }
        removed
    }

    /// Shuns a remote that misbehaved (a corrupt piece, a broken protocol) on a connection
    /// where it claimed `peer`: the remote, and the address if we dialed it, are refused for
    /// `blacklist_duration`, and the connection registered for `peer` is closed if it is that
    /// remote's.
    pub fn shun(&self, remote: &Remote, peer: PeerId, dialed: Option<SocketAddr>) {
        tracing::warn!(%peer, ip = %remote.ip, identity = ?remote.identity, "blacklisting peer");
        let now = Instant::now();
        let until = now + self.shun_for;
        {
            let mut shunned = self.shunned.lock();
            shunned.remotes.insert(remote.clone(), until, now);
            if let Some(addr) = dialed {
                shunned.addrs.insert(addr, until, now);
            }
        }
        if let Some((_, c)) = self.conns.remove_if(&peer, |_, c| c.remote == *remote) {
            c.close();
            self.forget_addrs(&peer);
        }
    }

    pub fn is_shunned(&self, remote: &Remote) -> bool {
        self.shunned.lock().remotes.contains(remote, Instant::now())
    }

    pub fn is_addr_shunned(&self, addr: &SocketAddr) -> bool {
        self.shunned.lock().addrs.contains(addr, Instant::now())
    }

    /// The registered connection to `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<Arc<ConnHandle>> {
        self.conns.get(peer).map(|c| c.clone())
    }

    /// Registered connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Records that a tracker reported `addr` as an origin.
    pub fn note_origin(&self, addr: SocketAddr) {
        if self.ring_origins.contains(&addr) {
            return;
        }
        let mut noted = self.noted_origins.lock();
        if noted.len() >= MAX_NOTED_ORIGINS
            && !noted.contains_key(&addr)
            && let Some(oldest) = noted.iter().min_by_key(|(_, at)| **at).map(|(a, _)| *a)
        {
            noted.remove(&oldest);
        }
        noted.insert(addr, Instant::now());
    }

    pub fn is_origin_addr(&self, addr: &SocketAddr) -> bool {
        self.ring_origins.contains(addr) || self.noted_origins.lock().contains_key(addr)
    }

    /// Up to `n` connected peers other than origins, those in `skip` and those `keep` refuses,
    /// chosen at random (so that repeated calls reach different peers).
    pub fn sample(&self, n: usize, skip: &HashSet<PeerId>, keep: impl Fn(&ConnHandle) -> bool) -> Vec<Arc<ConnHandle>> {
        use rand::seq::IndexedRandom;
        let candidates: Vec<Arc<ConnHandle>> = self
            .conns
            .iter()
            .filter(|c| !c.is_origin && !skip.contains(c.key()) && keep(c.value()))
            .map(|c| c.value().clone())
            .collect();
        candidates.choose_multiple(&mut rand::rng(), n).cloned().collect()
    }

    fn forget_addrs(&self, peer: &PeerId) {
        self.addr_peer.retain(|_, p| p != peer);
    }
}

/// Clears an address's dialing mark when the dial ends or its future is dropped.
struct DialMark<'a> {
    dialing: &'a DashMap<SocketAddr, ()>,
    addr: SocketAddr,
}

impl Drop for DialMark<'_> {
    fn drop(&mut self) {
        self.dialing.remove(&self.addr);
    }
}

/// Shunned remotes and dialed addresses, each until an instant.
#[derive(Default)]
struct Shunned {
    remotes: Blacklist<Remote>,
    addrs: Blacklist<SocketAddr>,
}

/// Keys shunned until an instant, at most [`MAX_SHUNNED`] of them.
struct Blacklist<K> {
    until: HashMap<K, Instant>,
}

impl<K> Default for Blacklist<K> {
    fn default() -> Self {
        Blacklist { until: HashMap::new() }
    }
}

impl<K: Hash + Eq + Clone> Blacklist<K> {
    /// Shuns `key` until `until` (or later, if it already is), after dropping expired
    /// entries; when the table is still full, the entry that expires first goes.
    fn insert(&mut self, key: K, until: Instant, now: Instant) {
        self.until.retain(|_, u| *u > now);
        if self.until.len() >= MAX_SHUNNED
            && !self.until.contains_key(&key)
            && let Some(first) = self.until.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone())
        {
            self.until.remove(&first);
        }
        let u = self.until.entry(key).or_insert(until);
        *u = (*u).max(until);
    }

    /// Whether `key` is shunned at `now`; an expired entry is dropped.
    fn contains(&mut self, key: &K, now: Instant) -> bool {
        match self.until.get(key) {
            Some(u) if *u > now => true,
            Some(_) => {
                self.until.remove(key);
                false
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio_util::sync::CancellationToken;

    use super::*;

    const SHUN: Duration = Duration::from_secs(60);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn id(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    fn limits(max_connections: usize, dial_reserve: usize) -> Limits {
        Limits { max_connections, dial_reserve, shun_for: SHUN }
    }

    fn peers(me: u8) -> Peers {
        Peers::new(id(me), addr(1), limits(8, 2), HashSet::new())
    }

    /// A connection to peer `peer`, from 127.0.0.`peer`.
    fn conn(peer: u8, outbound: bool) -> Arc<ConnHandle> {
        conn_from(peer, peer, outbound)
    }

    /// A connection claiming peer id `peer`, from 127.0.0.`ip`.
    fn conn_from(peer: u8, ip: u8, outbound: bool) -> Arc<ConnHandle> {
        let remote = Remote::plain(SocketAddr::from(([127, 0, 0, ip], 4000)));
        let queued = prometheus::IntGauge::new("queued", "test").unwrap();
        ConnHandle::new(id(peer), outbound, false, remote, CancellationToken::new(), queued).0
    }

    #[test]
    fn blacklist_is_bounded_and_evicts_what_expires_first() {
        let now = Instant::now();
        let mut b = Blacklist::default();
        for k in 0..MAX_SHUNNED + 10 {
            b.insert(k, now + Duration::from_secs(10 + k as u64), now);
        }
        assert_eq!(b.len(), MAX_SHUNNED);
        for k in 0..10 {
            assert!(!b.contains(&k, now), "{k} expires first and made room");
        }
        assert!(b.contains(&10, now));
        assert!(b.contains(&(MAX_SHUNNED + 9), now));
    }

    #[test]
    fn blacklist_entries_expire_and_are_pruned() {
        let now = Instant::now();
        let mut b = Blacklist::default();
        for k in 0..100u32 {
            b.insert(k, now + Duration::from_secs(5), now);
        }
        b.insert(1000, now + Duration::from_secs(60), now);
        assert!(b.contains(&7, now + Duration::from_secs(4)));
        // Once they expired, the next insert drops all of them, looked up or not.
        let later = now + Duration::from_secs(6);
        b.insert(2000, later + SHUN, later);
        assert_eq!(b.len(), 2);
        assert!(!b.contains(&7, later));
        assert!(b.contains(&1000, later));
        // Shunned again while shunned: the later deadline holds.
        b.insert(1000, now + Duration::from_secs(30), later);
        assert!(b.contains(&1000, now + Duration::from_secs(59)));
        assert!(!b.contains(&1000, now + Duration::from_secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn shun_refuses_the_peer_and_its_address_until_it_expires() {
        let p = peers(1);
        let c = conn(2, true);
        p.register(addr(2), &c).unwrap();
        p.shun(&c.remote, id(2), Some(addr(2)));
        assert!(c.is_closed(), "the shunned peer's connection is closed");
        assert!(p.get(&id(2)).is_none());
        assert!(p.is_shunned(&c.remote) && p.is_addr_shunned(&addr(2)));
        assert_eq!(p.register(addr(2), &conn(2, false)), Err(Refusal::Shunned));
        assert_eq!(p.register(addr(2), &conn_from(9, 2, false)), Err(Refusal::Shunned), "whatever id it claims");
        assert!(p.connect(addr(2), || async { panic!("a shunned address is not dialed") }).await.is_none());
        tokio::time::advance(SHUN).await;
        assert!(!p.is_shunned(&c.remote) && !p.is_addr_shunned(&addr(2)));
        assert_eq!(p.register(addr(2), &conn(2, false)), Ok(()));
    }

    /// The hole of a self-declared id: a connection claiming a peer's id, then misbehaving,
    /// got that peer blacklisted. Only the claimant is shunned now, and while the peer is
    /// connected a claim of its id from elsewhere does not replace its connection.
    #[tokio::test(start_paused = true)]
    async fn a_claimed_id_gets_only_the_claimant_shunned() {
        let p = peers(1);
        let origin = conn(2, false);
        p.register(addr(2), &origin).unwrap();
        let claim = conn_from(2, 66, false);
        assert_eq!(p.register(addr(66), &claim), Err(Refusal::Duplicate), "a claim does not replace the peer");
        assert!(!origin.is_closed());
        p.shun(&claim.remote, id(2), None);
        assert!(!origin.is_closed(), "the peer whose id was claimed keeps its connection");
        assert!(Arc::ptr_eq(&p.get(&id(2)).unwrap(), &origin));
        assert!(p.is_shunned(&claim.remote) && !p.is_shunned(&origin.remote));
        // The peer reconnects (same remote): admitted; the claimant, under any id: refused.
        p.unregister(&origin);
        assert_eq!(p.register(addr(2), &conn(2, false)), Ok(()));
        assert_eq!(p.register(addr(66), &conn_from(7, 66, false)), Err(Refusal::Shunned));
    }

    /// Who dialed each of two connections between us and a peer, and which one both sides
    /// keep: the one dialed by the smaller peer id.
    #[test]
    fn duplicates_resolve_to_the_smaller_dialer() {
        // (me, old is outbound, new is outbound, new is kept)
        let table = [
            (1, true, false, false), // we (1) dialed the old one: keep ours
            (1, false, true, true),  // we (1) dialed the new one: keep it
            (3, true, false, true),  // the peer (2) dialed the new one
            (3, false, true, false), // the peer (2) dialed the old one
            (1, true, true, true),   // same direction and remote: a reconnect replaces
            (3, false, false, true),
        ];
        for (me, old_out, new_out, keep_new) in table {
            let p = peers(me);
            let (old, new) = (conn(2, old_out), conn(2, new_out));
            p.register(addr(2), &old).unwrap();
            let res = p.register(addr(2), &new);
            let case = format!("me {me}, old out {old_out}, new out {new_out}");
            if keep_new {
                assert_eq!(res, Ok(()), "{case}");
                assert!(old.is_closed() && Arc::ptr_eq(&p.get(&id(2)).unwrap(), &new), "{case}");
            } else {
                assert_eq!(res, Err(Refusal::Duplicate), "{case}");
                assert!(!old.is_closed() && Arc::ptr_eq(&p.get(&id(2)).unwrap(), &old), "{case}");
            }
            assert_eq!(p.len(), 1);
        }
    }

    #[test]
    fn own_id_is_refused() {
        assert_eq!(peers(1).register(addr(9), &conn(1, true)), Err(Refusal::OwnId));
    }

    #[test]
    fn unregister_removes_only_the_registered_connection() {
        let p = peers(1);
        let (old, new) = (conn(2, true), conn(2, true));
        p.register(addr(2), &old).unwrap();
        p.register(addr(2), &new).unwrap();
        assert!(!p.unregister(&old), "replaced: the new one stays");
        assert!(p.get(&id(2)).is_some());
        assert!(p.unregister(&new));
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn connect_dials_once_and_then_reuses_the_connection() {
        let p = peers(1);
        let dials = AtomicUsize::new(0);
        let c = conn(2, true);
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let first = p.connect(addr(2), || async {
            dials.fetch_add(1, Ordering::Relaxed);
            wait.await.unwrap();
            p.register(addr(2), &c).unwrap();
            Some(c.clone())
        });
        let second = async {
            // While the first dial is in flight, a second one to the address does nothing.
            let res = p.connect(addr(2), || async { panic!("dialed twice") }).await;
            go.send(()).unwrap();
            res
        };
        let (first, second) = tokio::join!(first, second);
        assert!(second.is_none());
        assert!(Arc::ptr_eq(&first.unwrap(), &c));
        assert_eq!(dials.load(Ordering::Relaxed), 1);
        // The address now resolves to the connection.
        let again = p.connect(addr(2), || async { panic!("dialed a connected peer") }).await;
        assert!(Arc::ptr_eq(&again.unwrap(), &c));
        // Once it is gone the address is dialed again.
        p.unregister(&c);
        assert!(p.connect(addr(2), || async { None }).await.is_none());
        assert!(p.connect(addr(1), || async { panic!("dialed our own address") }).await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_dial_clears_its_mark() {
        let p = peers(1);
        let dial = p.connect(addr(2), std::future::pending);
        // Polled once (it is dialing), then dropped.
        assert!(tokio::time::timeout(Duration::from_millis(1), dial).await.is_err());
        let c = conn(2, true);
        let res = p.connect(addr(2), || async { Some(c.clone()) }).await;
        assert!(res.is_some(), "the address is dialed again");
    }

    /// The sample leaves out origins and the peers skipped, and reaches every other peer over
    /// repeated calls.
    #[test]
    fn samples_of_connected_peers() {
        let p = Peers::new(id(1), addr(1), limits(64, 0), HashSet::new());
        for n in 2..22 {
            p.register(addr(u16::from(n)), &conn(n, false)).unwrap();
        }
        let queued = prometheus::IntGauge::new("queued", "test").unwrap();
        let origin = ConnHandle::new(id(30), false, true, Remote::plain(addr(30)), CancellationToken::new(), queued).0;
        p.register(addr(30), &origin).unwrap();
        let skip = HashSet::from([id(2), id(3)]);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let s = p.sample(4, &skip, |_| true);
            assert_eq!(s.len(), 4);
            assert!(s.iter().all(|c| !c.is_origin && !skip.contains(&c.peer_id)));
            seen.extend(s.iter().map(|c| c.peer_id));
        }
        assert_eq!(seen.len(), 18, "every peer but the skipped ones and the origin is reached");
        assert_eq!(p.sample(100, &skip, |_| true).len(), 18);
        let far = |c: &ConnHandle| c.peer_id != id(4);
        assert!(p.sample(100, &skip, far).iter().all(|c| c.peer_id != id(4)), "the filter is applied");
        assert_eq!(p.sample(100, &skip, far).len(), 17);
    }

    #[test]
    fn origin_addresses_are_remembered() {
        let p = peers(1);
        assert!(!p.is_origin_addr(&addr(7)));
        p.note_origin(addr(7));
        assert!(p.is_origin_addr(&addr(7)));
    }

    /// Trackers may report any number of origin addresses over a node's life (origins move);
    /// the node keeps the ring's and the most recently reported others.
    #[tokio::test(start_paused = true)]
    async fn noted_origin_addresses_are_bounded() {
        let ring = SocketAddr::from(([10, 0, 0, 1], 7801));
        let p = Peers::new(id(1), addr(1), limits(8, 2), HashSet::from([ring]));
        assert!(p.is_origin_addr(&ring));
        let noted = |i: usize| {
            let [.., hi, lo] = u32::try_from(i).expect("a few hundred").to_be_bytes();
            SocketAddr::from(([10, 1, hi, lo], 7801))
        };
        for i in 0..MAX_NOTED_ORIGINS + 100 {
            p.note_origin(noted(i));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(p.noted_origins.lock().len(), MAX_NOTED_ORIGINS);
        assert!(!p.is_origin_addr(&noted(0)), "the one reported longest ago made room");
        assert!(p.is_origin_addr(&noted(MAX_NOTED_ORIGINS + 99)));
        p.note_origin(ring);
        assert!(p.is_origin_addr(&ring), "the ring's own are always origins");
        assert_eq!(p.noted_origins.lock().len(), MAX_NOTED_ORIGINS);
    }

    /// Inbound connections take at most `max_connections` minus the dial reserve; dials take
    /// what is left, and a freed inbound slot serves the next inbound connection.
    #[test]
    fn inbound_connections_leave_the_dial_reserve() {
        let p = Peers::new(id(1), addr(1), limits(4, 1), HashSet::new());
        let inbound: Vec<Slot> = (0..3).map(|_| p.try_inbound_slot().expect("an inbound slot")).collect();
        assert!(p.try_inbound_slot().is_none(), "the last slot is the dials'");
        let dial = p.try_slot().expect("a dial finds the reserved slot");
        assert!(p.try_slot().is_none() && p.try_inbound_slot().is_none(), "all four are taken");
        drop(inbound);
        assert!(p.try_inbound_slot().is_some());
        drop(dial);
        // An origin reserves nothing.
        let p = Peers::new(id(1), addr(1), limits(2, 0), HashSet::new());
        let _all: Vec<Slot> = (0..2).map(|_| p.try_inbound_slot().expect("an inbound slot")).collect();
    }
}
