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
//!
//! Locks: the maps are `DashMap`s, and no method holds a guard of one map while it takes
//! another, or across an await. The blacklist is a sync mutex held only around its own maps.

use std::collections::HashMap;
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
    /// Addresses the tracker reported as origins: a connection from or to one is an origin
    /// connection (the picker asks origins last). As many as the tracker hands out origins.
    origin_addrs: DashMap<SocketAddr, ()>,
    /// Shunned remotes and dialed addresses, bounded.
    shunned: Mutex<Shunned>,
    /// Connection slots (`max_connections`), taken before an accept or a dial and held by the
    /// connection task until it ends.
    slots: Arc<Semaphore>,
}

impl Peers {
    pub fn new(me: PeerId, advertise: SocketAddr, max_connections: usize, shun_for: Duration) -> Peers {
        Peers {
            me,
            advertise,
            shun_for,
            conns: DashMap::new(),
            addr_peer: DashMap::new(),
            dialing: DashMap::new(),
            origin_addrs: DashMap::new(),
            shunned: Mutex::new(Shunned::default()),
            slots: Arc::new(Semaphore::new(max_connections)),
        }
    }

    /// Waits for a connection slot (for an accept).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// A connection slot if one is free (for a dial: a full node dials nobody).
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
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
        if conn.outbound {
            // Recorded even if this connection loses: the address then resolves to the
            // connection that won.
            self.addr_peer.insert(addr, peer);
        }
        match self.conns.entry(peer) {
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

    /// Records that the tracker reported `addr` as an origin.
    pub fn note_origin(&self, addr: SocketAddr) {
        self.origin_addrs.insert(addr, ());
    }

    pub fn is_origin_addr(&self, addr: &SocketAddr) -> bool {
        self.origin_addrs.contains_key(addr)
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

    fn peers(me: u8) -> Peers {
        Peers::new(id(me), addr(1), 8, SHUN)
    }

    /// A connection to peer `peer`, from 127.0.0.`peer`.
    fn conn(peer: u8, outbound: bool) -> Arc<ConnHandle> {
        conn_from(peer, peer, outbound)
    }

    /// A connection claiming peer id `peer`, from 127.0.0.`ip`.
    fn conn_from(peer: u8, ip: u8, outbound: bool) -> Arc<ConnHandle> {
        let remote = Remote::plain(SocketAddr::from(([127, 0, 0, ip], 4000)));
        ConnHandle::new(id(peer), outbound, false, remote, CancellationToken::new()).0
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

    #[test]
    fn origin_addresses_are_remembered() {
        let p = peers(1);
        assert!(!p.is_origin_addr(&addr(7)));
        p.note_origin(addr(7));
        assert!(p.is_origin_addr(&addr(7)));
    }
}
