//! The tracker's handout policy: which peers an announcing node is told about.
//!
//! The tracker (`tracker/src/store.rs`) and the load-test simulator both compose their
//! answers with [`compose`], so the simulated swarms are handed out what the real tracker hands
//! out. Each samples the blob's peers its own way (the tracker with a reservoir over its map
//! in one pass that also purges, the simulator by index over vectors, O(`max_peers`) per
//! announce so 10,000 hosts stay cheap); both samples are uniform, at most `max_peers` long,
//! and never hold the asker.
//!
//! The policy, in order, for an asker in zone `Z` (`near` tells which entries are in `Z`;
//! without zones every entry is near and steps 3 and 4 never apply):
//! 1. near complete peers (seeders), in random order;
//! 2. then near incomplete peers, in random order;
//! 3. then peers of other zones (far), seeders first, each class in random order: at least
//!    [`cross_zone_peers`] of them when there are that many, so every zone can fetch its
//!    first copy of a piece and the swarm stays connected, and more only when too few near
//!    peers fill the list. Far peers go only to some askers of a large zone
//!    ([`gets_far_peers`], decided by the caller before it composes: about [`ZONE_GATEWAYS`]
//!    of the zone's peers, the same ones at every announce), so that a zone's imports do not
//!    grow with its size or with the length of the download;
//! 4. 1 to 3 together at most `max_peers`, the near ones filling all but the far share;
//! 5. then every ring owner of the blob not already listed, best owner first, even past
//!    `max_peers`, so every node can always reach a seed of last resort.
//!
//! So each blob crosses a zone boundary about once per zone rather than once per host, since
//! the picker (`crate::picker`, its zone preference) asks far peers only for what no near
//! peer has.

use rand::Rng;
use rand::seq::SliceRandom;

/// The far share of a handout of `max_peers`: at most this many peers of other zones when
/// enough peers of the asker's own zone fill the rest. `max(2, max_peers / 8)`, never more
/// than `max_peers`.
pub fn cross_zone_peers(max_peers: usize) -> usize {
    (max_peers / 8).max(2).min(max_peers)
}

/// Askers of one zone that get peers of other zones in a handout, about: the share of a
/// swarm's askers in a zone that are given far peers is `ZONE_GATEWAYS` over the blob's peers in
/// that zone ([`gets_far_peers`]), so a zone imports each piece through a bounded number of
/// links whatever its size (fewer import the same pieces fewer times, but feed the zone more
/// slowly: see BENCHMARKS.md, "Zones").
pub const ZONE_GATEWAYS: usize = 16;

/// Whether an asker whose zone has `near` peers in the blob's swarm (the asker not counted)
/// is handed peers of other zones: always while the zone has at most [`ZONE_GATEWAYS`], else
/// when its `key` ([`gateway_key`]: a hash of the blob and the asker) falls in the lowest
/// `ZONE_GATEWAYS / near` of the key space. The choice is the same at every announce of that
/// node for that blob, so a zone imports through the same few nodes all along; a draw per
/// announce would hand far peers to a growing share of the zone over a download.
pub fn gets_far_peers(near: usize, key: u64) -> bool {
    near <= ZONE_GATEWAYS || (u128::from(key) * near as u128) >> 64 < ZONE_GATEWAYS as u128
}

/// The key of a node (`node`: its peer id, or its address when it announced none) for `blob`
/// in [`gets_far_peers`]: uniform over `u64`, and the same in every tracker and simulator.
pub fn gateway_key(blob: &[u8], node: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(blob);
    h.update(node);
    let out = h.finalize();
    u64::from_le_bytes(out.as_bytes()[..8].try_into().unwrap_or_default())
}

/// Whether two nodes are in the same zone for the handout, the dials and the picker (the
/// tracker's and the swarm's zone names, the simulator's zone numbers): a node of unknown
/// zone is near to everyone, so a cluster without zones behaves as one zone.
pub fn same_zone<Z: PartialEq + ?Sized>(a: Option<&Z>, b: Option<&Z>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The handout from samples of the blob's `seeders` and `leechers` (see the module docs) and
/// its ring `owners`, best first (what each announced, if it did). `same` tells whether two
/// entries are the same node; `near` whether an entry is in the asker's zone. The samples
/// should hold up to `max_peers` near entries of each class and some far ones, so the near
/// ones can fill the list.
pub fn compose<T, R: Rng + ?Sized>(
    seeders: Vec<T>,
    leechers: Vec<T>,
    max_peers: usize,
    owners: impl IntoIterator<Item = T>,
    same: impl Fn(&T, &T) -> bool,
    near: impl Fn(&T) -> bool,
    rng: &mut R,
) -> Vec<T> {
    let (mut near_seeders, mut far_seeders): (Vec<T>, Vec<T>) = seeders.into_iter().partition(|p| near(p));
    let (mut near_leechers, mut far_leechers): (Vec<T>, Vec<T>) = leechers.into_iter().partition(|p| near(p));
    near_seeders.shuffle(rng);
    near_leechers.shuffle(rng);
    let mut out = near_seeders;
    out.append(&mut near_leechers);
    if far_seeders.is_empty() && far_leechers.is_empty() {
        out.truncate(max_peers);
    } else {
        far_seeders.shuffle(rng);
        far_leechers.shuffle(rng);
        let mut far = far_seeders;
        far.append(&mut far_leechers);
        let far_share = cross_zone_peers(max_peers).min(far.len());
        out.truncate(max_peers - far_share);
        far.truncate(max_peers - out.len());
        out.append(&mut far);
    }
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
            let out = compose(
                seeders.to_vec(),
                leechers.to_vec(),
                max,
                owners.iter().copied(),
                |a, b| a == b,
                |_| true,
                &mut rng,
            );
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
        let firsts: std::collections::HashSet<u32> = (0..50)
            .map(|_| compose(seeders.clone(), Vec::new(), 8, [], |a, b| a == b, |_| true, &mut rng)[0])
            .collect();
        assert!(firsts.len() > 3, "{firsts:?}");
    }

    /// Entries of the zone tests: (zone, id); zone 0 is the asker's.
    type Z = (u8, u32);

    fn zoned(zone: u8, ids: std::ops::Range<u32>) -> Vec<Z> {
        ids.map(|i| (zone, i)).collect()
    }

    #[test]
    fn near_peers_first_then_a_far_share_then_owners() {
        let mut rng = StdRng::seed_from_u64(9);
        // (near seeders, near leechers, far seeders, far leechers, max_peers, near listed, far listed)
        let table: [(u32, u32, u32, u32, usize, usize, usize); 7] = [
            (20, 20, 10, 10, 16, 14, 2), // plenty near: the far share is max(2, 16 / 8)
            (40, 40, 40, 40, 64, 56, 8), // max_peers / 8
            (3, 2, 10, 10, 16, 5, 11),   // few near: far peers fill the rest
            (20, 0, 1, 0, 16, 15, 1),    // one far peer only
            (0, 0, 5, 5, 8, 0, 8),       // no near peer at all
            (20, 20, 0, 0, 16, 16, 0),   // no far peer: as without zones
            (5, 0, 5, 0, 1, 0, 1),       // max_peers 1: the far share wins
        ];
        for (ns, nl, fs, fl, max, near_n, far_n) in table {
            let mut seeders = zoned(0, 0..ns);
            seeders.extend(zoned(1, 100..100 + fs));
            let mut leechers = zoned(0, 1000..1000 + nl);
            leechers.extend(zoned(2, 1100..1100 + fl));
            let owners = [(3u8, 5000u32)];
            let out = compose(seeders, leechers, max, owners, |a, b| a == b, |p| p.0 == 0, &mut rng);
            let case = format!("{ns} {nl} {fs} {fl} {max}: {out:?}");
            assert_eq!(out.len(), near_n + far_n + 1, "{case}");
            assert!(out[..near_n].iter().all(|p| p.0 == 0), "{case}");
            assert!(out[near_n..near_n + far_n].iter().all(|p| p.0 == 1 || p.0 == 2), "{case}");
            assert_eq!(out[near_n + far_n], (3, 5000), "{case}");
            // Within the near and the far parts, seeders first.
            let seeder = |p: &Z| p.1 < 1000;
            for part in [&out[..near_n], &out[near_n..near_n + far_n]] {
                let k = part.iter().take_while(|p| seeder(p)).count();
                assert!(part[k..].iter().all(|p| !seeder(p)), "{case}");
            }
        }
    }

    /// Without zones the answer, random order included, is the one of the zone-less policy:
    /// shuffled seeders, then shuffled leechers, cut at `max_peers`.
    #[test]
    fn unzoned_is_the_plain_policy() {
        for seed in 0..20 {
            let seeders: Vec<u32> = (0..10).collect();
            let leechers: Vec<u32> = (10..30).collect();
            let out = compose(
                seeders.clone(),
                leechers.clone(),
                16,
                [99],
                |a, b| a == b,
                |_| true,
                &mut StdRng::seed_from_u64(seed),
            );
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut s, mut l) = (seeders, leechers);
            s.shuffle(&mut rng);
            l.shuffle(&mut rng);
            s.append(&mut l);
            s.truncate(16);
            s.push(99);
            assert_eq!(out, s);
        }
    }

    #[test]
    fn far_peers_go_to_about_zone_gateways_askers_and_always_the_same() {
        let blob = [7u8; 32];
        let keys: Vec<u64> = (0u32..10_000).map(|n| gateway_key(&blob, &n.to_be_bytes())).collect();
        assert!(keys.iter().all(|&k| gets_far_peers(ZONE_GATEWAYS, k)), "a small zone: everybody");
        let n = 20 * ZONE_GATEWAYS;
        let got: Vec<bool> = keys.iter().map(|&k| gets_far_peers(n, k)).collect();
        let count = got.iter().filter(|g| **g).count();
        // 1/20 of 10,000 askers: 500, within a wide margin (the keys are fixed, so exact anyway).
        assert!((350..650).contains(&count), "{count}");
        // The same asker gets the same answer every time; a larger zone keeps a subset.
        let again: Vec<bool> = keys.iter().map(|&k| gets_far_peers(n, k)).collect();
        assert_eq!(got, again);
        assert!(keys.iter().all(|&k| !gets_far_peers(2 * n, k) || gets_far_peers(n, k)));
        // Another blob picks other gateways.
        let other: Vec<bool> =
            (0u32..10_000).map(|i| gets_far_peers(n, gateway_key(&[8u8; 32], &i.to_be_bytes()))).collect();
        assert_ne!(got, other);
        assert!(gets_far_peers(n, 0) && !gets_far_peers(n, u64::MAX));
    }

    proptest::proptest! {
        /// Whatever the mix: no entry twice, at most `max_peers` before the owners, near before
        /// far, the far share honoured, and as many near entries as fit.
        #[test]
        fn zoned_handouts_keep_the_rules(
            near_s in 0u32..30, near_l in 0u32..30, far_s in 0u32..30, far_l in 0u32..30,
            max in 0usize..40, seed in proptest::prelude::any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut seeders = zoned(0, 0..near_s);
            seeders.extend(zoned(1, 100..100 + far_s));
            let mut leechers = zoned(0, 1000..1000 + near_l);
            leechers.extend(zoned(1, 1100..1100 + far_l));
            let out = compose(seeders, leechers, max, [], |a, b| a == b, |p| p.0 == 0, &mut rng);
            let distinct: std::collections::HashSet<Z> = out.iter().copied().collect();
            proptest::prop_assert_eq!(distinct.len(), out.len());
            proptest::prop_assert!(out.len() <= max);
            let n_near = out.iter().take_while(|p| p.0 == 0).count();
            proptest::prop_assert!(out[n_near..].iter().all(|p| p.0 == 1));
            let (near_all, far_all) = ((near_s + near_l) as usize, (far_s + far_l) as usize);
            let share = if far_all == 0 { 0 } else { cross_zone_peers(max).min(far_all) };
            proptest::prop_assert_eq!(n_near, near_all.min(max - share));
            proptest::prop_assert_eq!(out.len() - n_near, far_all.min(max - n_near));
        }
    }
}
