//! The zones of the peers this node heard of, and how each ranks as a source.
//!
//! A node learns a peer's zone from the peer's handshake (its zone extension) and from a
//! tracker's handout (`PeerInfo::zone`), keyed by peer id, the newer word winning: a
//! connection's peer id is what its handshake proved, so a connection is matched with its
//! zone whichever side dialed. A peer the node has no zone for (an origin or a node without a
//! zone) counts as near, as does every peer when this node has no zone: without zones nothing
//! changes.
//!
//! Bounded: at most [`MAX_PEER_ZONES`] peers are remembered; when full the table is emptied
//! and refilled from the next handouts (a peer forgotten meanwhile only counts as near).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use shoal_core::PeerId;
use shoal_core::api::is_valid_zone;
use shoal_core::handout::same_zone;
use shoal_core::picker::PeerKind;

/// Peers whose zone is remembered at most. Hard-coded: a node meets a few thousand peers.
pub(crate) const MAX_PEER_ZONES: usize = 16_384;

/// This node's zone and its peers'.
pub(crate) struct Zones {
    ours: Option<Arc<str>>,
    /// Written by announces (their handouts), read by download actors.
    peers: Mutex<HashMap<PeerId, Arc<str>>>,
}

impl Zones {
    pub fn new(ours: Option<&str>) -> Zones {
        Zones { ours: ours.map(Arc::from), peers: Mutex::new(HashMap::new()) }
    }

    /// A handout said `peer` is in `zone` (or named none: the peer is forgotten). An invalid
    /// zone is ignored; nothing is kept by a node without a zone of its own.
    pub fn note(&self, peer: PeerId, zone: Option<&str>) {
        if self.ours.is_none() {
            return;
        }
        let mut peers = self.peers.lock();
        match zone.filter(|z| is_valid_zone(z)) {
            Some(z) if peers.get(&peer).is_some_and(|old| **old == *z) => {}
            Some(z) => {
                if peers.len() >= MAX_PEER_ZONES && !peers.contains_key(&peer) {
                    peers.clear();
                }
                peers.insert(peer, Arc::from(z));
            }
            None => {
                peers.remove(&peer);
            }
        }
    }

    /// `peer`'s handshake named `zone`. A missing or invalid zone changes nothing: the
    /// tracker's word, if any, stands.
    pub fn heard(&self, peer: PeerId, zone: Option<&str>) {
        if let Some(z) = zone.filter(|z| is_valid_zone(z)) {
            self.note(peer, Some(z));
        }
    }

    /// The zone a handout gave for `peer`, if any.
    fn zone_of(&self, peer: &PeerId) -> Option<Arc<str>> {
        self.peers.lock().get(peer).cloned()
    }

    /// Whether `peer` is known to be in a zone other than ours.
    pub fn is_far(&self, peer: &PeerId) -> bool {
        !same_zone(self.ours.as_deref(), self.zone_of(peer).as_deref())
    }

    /// How the picker ranks `peer`: an origin as an origin, else far or near by zone.
    pub fn kind(&self, peer: &PeerId, is_origin: bool) -> PeerKind {
        PeerKind::of_zones(is_origin, self.ours.as_deref(), self.zone_of(peer).as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_zone() {
        let (a, b, c) = (PeerId([1; 16]), PeerId([2; 16]), PeerId([3; 16]));
        let z = Zones::new(Some("za"));
        z.note(a, Some("za"));
        z.note(b, Some("zb"));
        z.note(c, Some("not a zone"));
        assert_eq!(z.kind(&a, false), PeerKind::Near);
        assert_eq!(z.kind(&b, false), PeerKind::Far);
        assert_eq!(z.kind(&b, true), PeerKind::Origin);
        assert_eq!(z.kind(&c, false), PeerKind::Near, "an invalid zone is ignored");
        z.note(b, None);
        assert_eq!(z.kind(&b, false), PeerKind::Near, "a peer that no longer names a zone");
        // Without a zone of our own, everybody is near.
        let plain = Zones::new(None);
        plain.note(b, Some("zb"));
        assert_eq!(plain.kind(&b, false), PeerKind::Near);
        assert!(!plain.is_far(&b));
    }

    #[test]
    fn a_handshake_names_a_zone_but_never_unnames_one() {
        let b = PeerId([2; 16]);
        let z = Zones::new(Some("za"));
        z.heard(b, Some("zb"));
        assert_eq!(z.kind(&b, false), PeerKind::Far);
        z.heard(b, None);
        z.heard(b, Some("not a zone"));
        assert_eq!(z.kind(&b, false), PeerKind::Far, "silence or nonsense keeps what was known");
        z.heard(b, Some("za"));
        assert_eq!(z.kind(&b, false), PeerKind::Near, "the newer word wins");
        z.note(b, Some("zc"));
        assert_eq!(z.kind(&b, false), PeerKind::Far);
    }

    #[test]
    fn the_table_is_bounded() {
        let z = Zones::new(Some("za"));
        for i in 0..=MAX_PEER_ZONES {
            let mut id = [0; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            z.note(PeerId(id), Some("zb"));
        }
        assert!(z.peers.lock().len() <= MAX_PEER_ZONES);
    }
}
