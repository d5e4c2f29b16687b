//! The tracker's handout policy: which peers an announcing node is told about.
//!
//! The tracker (`tracker/src/store.rs`) and the load-test simulator both compose their
//! answers with [`compose`], so the simulated swarms are handed out what the real tracker hands
//! out. Each samples the blob's peers its own way (the tracker with a reservoir over its map
//! in one pass that also purges, the simulator by index over vectors, O(`max_peers`) per
//! announce so 10,000 hosts stay cheap); both samples are uniform, at most `max_peers` long,
//! and never hold the asker.
//!
//! The policy, in order:
//! 1. complete peers (seeders), in random order;
//! 2. then incomplete peers, in random order;
//! 3. 1 and 2 together at most `max_peers`, seeders filling it first;
//! 4. then every ring owner of the blob not already listed, best owner first, even past
//!    `max_peers`, so every node can always reach a seed of last resort.

use rand::Rng;
use rand::seq::SliceRandom;

/// The handout from samples of the blob's `seeders` and `leechers` (see the module docs) and
/// its ring `owners`, best first (what each announced, if it did). `same` tells whether two
/// entries are the same node.
pub fn compose<T, R: Rng + ?Sized>(
    mut seeders: Vec<T>,
    mut leechers: Vec<T>,
    max_peers: usize,
    owners: impl IntoIterator<Item = T>,
    same: impl Fn(&T, &T) -> bool,
    rng: &mut R,
) -> Vec<T> {
    seeders.shuffle(rng);
    leechers.shuffle(rng);
    let mut out = seeders;
    out.append(&mut leechers);
    out.truncate(max_peers);
    for owner in owners {
        if !out.iter().any(|p| same(p, &owner)) {
            out.push(owner);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// (seeders, leechers, max_peers, owners, entries listed before the owners, owners appended)
    type Case<'a> = (&'a [u32], &'a [u32], usize, &'a [u32], usize, &'a [u32]);

    #[test]
    fn seeders_first_at_most_max_peers_then_owners_not_listed() {
        let mut rng = StdRng::seed_from_u64(3);
        let table: [Case<'_>; 5] = [
            (&[1, 2], &[10, 11, 12], 4, &[100, 101], 4, &[100, 101]),
            (&[1, 2, 3, 4, 5], &[10], 3, &[100], 3, &[100]),
            (&[], &[10, 11], 5, &[10, 100], 2, &[100]), // an owner already listed is not repeated
            (&[1], &[], 0, &[100], 0, &[100]),          // owners even past max_peers
            (&[], &[], 5, &[], 0, &[]),
        ];
        for (seeders, leechers, max, owners, listed, appended) in table {
            let out =
                compose(seeders.to_vec(), leechers.to_vec(), max, owners.iter().copied(), |a, b| a == b, &mut rng);
            assert_eq!(out.len(), listed + appended.len(), "{seeders:?} {leechers:?} {max}");
            assert_eq!(&out[listed..], appended);
            let head = &out[..listed];
            let n_seeders = head.iter().filter(|p| **p < 10).count();
            assert_eq!(n_seeders, seeders.len().min(listed), "seeders fill the list first");
            assert!(head[..n_seeders].iter().all(|p| *p < 10), "seeders come first: {head:?}");
        }
    }

    #[test]
    fn the_order_within_each_class_is_random() {
        let mut rng = StdRng::seed_from_u64(5);
        let seeders: Vec<u32> = (0..8).collect();
        let firsts: std::collections::HashSet<u32> =
            (0..50).map(|_| compose(seeders.clone(), Vec::new(), 8, [], |a, b| a == b, &mut rng)[0]).collect();
        assert!(firsts.len() > 3, "{firsts:?}");
    }
}
