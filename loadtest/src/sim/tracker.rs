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
use shoal_core::handout;

/// One entry of a handout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handed {
    pub host: u32,
    pub complete: bool,
    pub origin: bool,
}

/// One blob's swarm as the tracker knows it.
pub struct Swarm {
    /// Complete peers, in no particular order (swap-removed).
    seeders: Vec<u32>,
    /// Incomplete peers.
    leechers: Vec<u32>,
    /// Host → (complete, index in its vector, origin).
    index: HashMap<u32, (bool, usize, bool)>,
    /// Ring owners of the blob, best first (from `shoal_core::ring::Ring::owners`).
    owners: Vec<u32>,
    max_peers: usize,
}

impl Swarm {
    pub fn new(owners: Vec<u32>, max_peers: usize) -> Swarm {
        Swarm { seeders: Vec::new(), leechers: Vec::new(), index: HashMap::new(), owners, max_peers }
    }

    /// Records (or refreshes) `host` without answering, as a completed node's announce does.
    pub fn record(&mut self, host: u32, complete: bool, origin: bool) {
        if let Some(&(was_complete, i, _)) = self.index.get(&host) {
            if was_complete == complete {
                self.index.insert(host, (complete, i, origin));
                return;
            }
            let list = if was_complete { &mut self.seeders } else { &mut self.leechers };
            list.swap_remove(i);
            if let Some(&moved) = list.get(i) {
                self.index.get_mut(&moved).expect("indexed").1 = i;
            }
        }
        let list = if complete { &mut self.seeders } else { &mut self.leechers };
        list.push(host);
        self.index.insert(host, (complete, list.len() - 1, origin));
    }

    /// Records `host` and returns its handout, composed as the tracker composes its own
    /// (`shoal_core::handout::compose`) from uniform samples of the seeders and leechers.
    pub fn announce<R: Rng + ?Sized>(&mut self, host: u32, complete: bool, origin: bool, rng: &mut R) -> Vec<Handed> {
        self.record(host, complete, origin);
        let entry =
            |h: u32, complete: bool| Handed { host: h, complete, origin: self.index.get(&h).is_some_and(|e| e.2) };
        let seeders =
            sample_excluding(&self.seeders, host, self.max_peers, rng).into_iter().map(|h| entry(h, true)).collect();
        let leechers =
            sample_excluding(&self.leechers, host, self.max_peers, rng).into_iter().map(|h| entry(h, false)).collect();
        let owners = self.owners.iter().filter(|&&o| o != host).map(|&o| Handed {
            host: o,
            complete: self.index.get(&o).is_some_and(|e| e.0),
            origin: true,
        });
        handout::compose(seeders, leechers, self.max_peers, owners, |a, b| a.host == b.host, rng)
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
        let out = s.announce(5, false, false, &mut rng);
        assert_eq!(out.len(), 5);
        assert!(out[0].complete && out[1].complete && !out[2].complete);
        assert!(out.iter().all(|h| h.host != 5));
        assert_eq!((out[3].host, out[4].host), (100, 101));
        assert!(out[3].origin);
        // Completing moves a host to the seeders.
        s.record(7, true, false);
        let out = s.announce(5, false, false, &mut rng);
        assert_eq!(out.iter().filter(|h| h.complete).count(), 3);
    }
}
