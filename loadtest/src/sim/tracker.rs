//! One blob's swarm as the tracker knows it, over simulated host ids.
//!
//! The handout is the tracker's own policy, [`shoal_core::handout::compose`]. What differs is
//! the bookkeeping and the sampling: `shoal_tracker::store::PeerStore` keys peers in a
//! `HashMap` with a per-process random hasher and samples while iterating it, so its handouts
//! differ from one process to the next even with a seeded RNG. The simulator must replay
//! exactly, so it keeps seeders and leechers in vectors and samples them by index, uniformly
//! as the tracker's reservoir does. Nothing expires: simulated hosts never leave, so the TTL
//! never matters. Cost: O(max_peers) per announce (index sampling), not O(swarm).

use std::collections::HashMap;

use rand::Rng;
use shoal_core::handout::{self, Imports};

/// One entry of a handout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handed {
    pub host: u32,
    pub complete: bool,
    pub origin: bool,
}

/// One blob's swarm as the tracker knows it.
pub struct Swarm {
    /// Complete and incomplete peers of each zone group (group 0: no zone; group `z + 1`:
    /// zone `z`), in no particular order (swap-removed).
    groups: Vec<Group>,
    /// Host → (complete, index in its vector, origin).
    index: HashMap<u32, (bool, usize, bool)>,
    /// Each host's zone, by host id (hosts past its end have none).
    zones: Vec<Option<u32>>,
    /// Ring owners of the blob, best first (from `shoal_core::ring::Ring::owners`).
    owners: Vec<u32>,
    max_peers: usize,
    /// Gateway slots held (`handout::gateway_slot`): by host, and per zone the slots taken.
    slots: HashMap<u32, u8>,
    taken: Vec<u32>,
}

#[derive(Default)]
struct Group {
    seeders: Vec<u32>,
    leechers: Vec<u32>,
}

impl Swarm {
    pub fn new(owners: Vec<u32>, max_peers: usize) -> Swarm {
        Swarm::zoned(owners, max_peers, Vec::new())
    }

    /// A swarm of `blob` whose hosts are in `zones` (by host id; `None` or past the end: no
    /// zone).
    pub fn zoned(owners: Vec<u32>, max_peers: usize, zones: Vec<Option<u32>>) -> Swarm {
        let n_groups = zones.iter().flatten().max().map_or(1, |z| *z as usize + 2);
        let groups = (0..n_groups).map(|_| Group::default()).collect();
        Swarm {
            groups,
            index: HashMap::new(),
            zones,
            owners,
            max_peers,
            slots: HashMap::new(),
            taken: vec![0; n_groups],
        }
    }

    fn zone(&self, host: u32) -> Option<u32> {
        self.zones.get(host as usize).copied().flatten()
    }

    fn group(&self, host: u32) -> usize {
        self.zone(host).map_or(0, |z| z as usize + 1)
    }

    /// Records (or refreshes) `host` without answering, as a completed node's announce does.
    pub fn record(&mut self, host: u32, complete: bool, origin: bool) {
        let g = self.group(host);
        if let Some(&(was_complete, i, _)) = self.index.get(&host) {
            if was_complete == complete {
                self.index.insert(host, (complete, i, origin));
                return;
            }
            let group = &mut self.groups[g];
            let list = if was_complete { &mut group.seeders } else { &mut group.leechers };
            list.swap_remove(i);
            if let Some(&moved) = list.get(i) {
                self.index.get_mut(&moved).expect("indexed").1 = i;
            }
        }
        let group = &mut self.groups[g];
        let list = if complete { &mut group.seeders } else { &mut group.leechers };
        list.push(host);
        self.index.insert(host, (complete, list.len() - 1, origin));
    }

    /// Records `host` and returns its handout, composed as the tracker composes its own
    /// (`shoal_core::handout::compose`) from uniform samples of the seeders and leechers,
    /// drawn per zone group as the tracker's reservoirs are drawn per zone class (near, far):
    /// up to `max_peers` of each class from every group; and what it imports from other
    /// zones, as the tracker tells a zoned asker (`handout::gateway_slot`; `None` without a
    /// zone). Far peers go only to the zone's gateways.
    pub fn announce<R: Rng + ?Sized>(
        &mut self,
        host: u32,
        complete: bool,
        origin: bool,
        rng: &mut R,
    ) -> (Vec<Handed>, Option<Imports>) {
        self.record(host, complete, origin);
        let zoned = self.zone(host).is_some();
        let g = self.group(host);
        let slot = handout::gateway_slot(self.slots.get(&host).copied(), self.taken[g], complete, zoned);
        if let Some(k) = slot {
            self.slots.insert(host, k);
            self.taken[g] |= 1 << k;
        }
        let imports = zoned.then(|| Imports::of_slot(slot, self.taken[g]));
        let entry =
            |h: u32, complete: bool| Handed { host: h, complete, origin: self.index.get(&h).is_some_and(|e| e.2) };
        let ours = self.zone(host);
        let mine = self.group(host);
        let is_near_group = |g: usize| ours.is_none() || g == 0 || g == mine;
        let far_groups = (0..self.groups.len()).any(|g| !is_near_group(g));
        let with_far = !far_groups || slot.is_some();
        let wanted = |g: usize| with_far || is_near_group(g);
        let mut seeders = Vec::new();
        let mut leechers = Vec::new();
        for (_, g) in self.groups.iter().enumerate().filter(|(i, _)| wanted(*i)) {
            seeders.extend(sample_excluding(&g.seeders, host, self.max_peers, rng).into_iter().map(|h| entry(h, true)));
        }
        for (_, g) in self.groups.iter().enumerate().filter(|(i, _)| wanted(*i)) {
            leechers
                .extend(sample_excluding(&g.leechers, host, self.max_peers, rng).into_iter().map(|h| entry(h, false)));
        }
        let owners = self.owners.iter().filter(|&&o| o != host).map(|&o| Handed {
            host: o,
            complete: self.index.get(&o).is_some_and(|e| e.0),
            origin: true,
        });
        let near = |p: &Handed| handout::same_zone(ours.as_ref(), self.zone(p.host).as_ref());
        let peers = handout::compose(seeders, leechers, self.max_peers, owners, |a, b| a.host == b.host, near, rng);
        (peers, imports)
    }
}

/// Up to `k` distinct entries of `list` other than `skip`, uniformly at random.
fn sample_excluding<R: Rng + ?Sized>(list: &[u32], skip: u32, k: usize, rng: &mut R) -> Vec<u32> {
    if k == 0 || list.is_empty() {
        return Vec::new();
    }
    let amount = (k + 1).min(list.len());
    let mut picked: Vec<u32> =
        rand::seq::index::sample(rng, list.len(), amount).into_iter().map(|i| list[i]).filter(|&h| h != skip).collect();
    picked.sort_unstable();
    picked.truncate(k);
    picked
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn seeders_first_then_owners_past_max_peers() {
        let mut s = Swarm::new(vec![100, 101], 3);
        let mut rng = StdRng::seed_from_u64(1);
        for h in 0..10 {
            s.record(h, h < 2, false);
        }
        let (out, imports) = s.announce(5, false, false, &mut rng);
        assert_eq!(imports, None, "no zone: nothing said");
        assert_eq!(out.len(), 5);
        assert!(out[0].complete && out[1].complete && !out[2].complete);
        assert!(out.iter().all(|h| h.host != 5));
        assert_eq!((out[3].host, out[4].host), (100, 101));
        assert!(out[3].origin);
        // Completing moves a host to the seeders.
        s.record(7, true, false);
        let (out, _) = s.announce(5, false, false, &mut rng);
        assert_eq!(out.iter().filter(|h| h.complete).count(), 3);
    }

    /// A zoned host gets its zone's peers first and `max(2, max_peers / 8)` of the others
    /// when it is a gateway (its zone's first incomplete asker here); past the zone's
    /// `ZONE_GATEWAYS` gateways, only its zone's peers, and nothing to import.
    #[test]
    fn zoned_hosts_get_their_zone_first() {
        let zones: Vec<Option<u32>> = (0..60).map(|h| Some(h % 3)).collect();
        let mut s = Swarm::zoned(vec![100], 16, zones);
        let mut rng = StdRng::seed_from_u64(2);
        for h in 0..60 {
            s.record(h, h % 2 == 0, false);
        }
        let (out, imports) = s.announce(0, false, false, &mut rng);
        assert_eq!(imports, Some(Imports::Share { slot: 0, of: 1 }), "the zone's first gateway");
        assert_eq!(out.len(), 17);
        assert!(out[..14].iter().all(|p| p.host % 3 == 0), "{out:?}");
        assert!(out[14..16].iter().all(|p| p.host % 3 != 0), "{out:?}");
        assert_eq!(out[16].host, 100);
        let askers: Vec<u32> = (1..60).filter(|h| h % 3 == 0).collect();
        let told: Vec<Option<Imports>> = askers.iter().map(|&h| s.announce(h, false, false, &mut rng).1).collect();
        let gateways = told.iter().filter(|t| matches!(t, Some(Imports::Share { .. }))).count();
        assert_eq!(gateways, usize::from(handout::ZONE_GATEWAYS) - 1, "{told:?}");
        // Each told of the gateways so far, itself included.
        for (k, t) in told.iter().take(gateways).enumerate() {
            let k = u32::try_from(k).unwrap() + 1;
            assert_eq!(*t, Some(Imports::Share { slot: k, of: k + 1 }), "{told:?}");
        }
        let (out, imports) = s.announce(57, false, false, &mut rng);
        assert_eq!(imports, Some(Imports::None));
        assert!(out[..16].iter().all(|p| p.host % 3 == 0), "{out:?}");
    }
}
