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
//!    peers fill the list. Far peers go only to the zone's gateways: at most
//!    [`ZONE_GATEWAYS`] of its peers, each holding a slot ([`gateway_slot`], decided by the
//!    caller before it composes, kept until its entry expires), so that a zone's imports do
//!    not grow with its size, with the length of the download or with how many of its peers
//!    announce at once;
//! 4. 1 to 3 together at most `max_peers`, the near ones filling all but the far share;
//! 5. then every ring owner of the blob not already listed, best owner first, even past
//!    `max_peers`, so every node can always reach a seed of last resort.
//!
//! With the handout the tracker tells a zoned asker what to import ([`Imports`]): a gateway
//! the pieces of its slot's share, the others nothing. The pieces are split into as many
//! shares as the zone has gateways so far ([`Imports::of_slot`], [`in_share`]), the way
//! linear hashing splits buckets: a gateway told of fewer gateways holds a superset of the
//! share it would hold now, so the shares of a growing zone overlap for an announce interval
//! but never leave a piece to nobody. So each piece crosses into a zone
//! about once, through the gateway whose share it is, since the picker (`crate::picker`, its
//! zone preference) asks far peers only for pieces of its share that no near peer has; a
//! download that gets no new piece for a while asks them for anything its zone lacks
//! (`crate::download::FAR_FALLBACK`), so a dead or slow gateway's share still comes.

use rand::Rng;
use rand::seq::SliceRandom;

/// The far share of a handout of `max_peers`: at most this many peers of other zones when
/// enough peers of the asker's own zone fill the rest. `max(2, max_peers / 8)`, never more
/// than `max_peers`.
pub fn cross_zone_peers(max_peers: usize) -> usize {
    (max_peers / 8).max(2).min(max_peers)
}

/// Gateways of a zone: at most this many of a zone's peers of a blob hold a share
/// ([`gateway_slot`]), and only they are handed peers of other zones. Each imports the pieces
/// of its share ([`Imports::Share`]), so a zone imports each piece through one link whatever
/// its size (fewer gateways import as little but feed the zone more slowly: see
/// BENCHMARKS.md, "Zones").
pub const ZONE_GATEWAYS: u8 = 16;

/// How soon a gateway of a zone that may still grow is told to announce again: its share
/// ([`Imports::of_slot`]) was cut for the gateways the tracker knew of, and narrows as more
/// take a slot. Only a zone's (at most [`ZONE_GATEWAYS`]) gateways announce this often, and only
/// while their share is not the smallest one.
pub const SHARE_REFRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// The interval to tell an asker: `base`, or [`SHARE_REFRESH`] when shorter for a gateway
/// whose share may still narrow.
pub fn announce_interval(base: std::time::Duration, imports: Option<Imports>) -> std::time::Duration {
    match imports {
        Some(Imports::Share { of, .. }) if of < u32::from(ZONE_GATEWAYS) => base.min(SHARE_REFRESH),
        _ => base,
    }
}

/// Which pieces a download asks peers of other zones for: the tracker's answer to a zoned
/// asker (`imports` in `crate::api::AnnounceResponse`, absent from an older tracker and for
/// an asker without a zone), read by the picker (`crate::picker`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Imports {
    /// Any piece no peer of its zone has: what a download does when told nothing.
    #[default]
    All,
    /// The pieces of share `slot` of `of` ([`in_share`]): the asker is one of its zone's
    /// `of` gateways (as far as the tracker knew), and the others import the other shares.
    Share { slot: u32, of: u32 },
    /// None: the zone's gateways import for it.
    None,
}

impl Imports {
    /// What the tracker tells a zoned asker that holds `slot` ([`gateway_slot`]), or none.
    /// `taken`: the slots the zone's other live peers hold (bit `k` for slot `k`). The
    /// pieces are split into shares up to the highest slot held: a zone of 4 askers splits
    /// them in 4, not in [`ZONE_GATEWAYS`] with 12 shares nobody imports.
    pub fn of_slot(slot: Option<u8>, taken: u32) -> Imports {
        match slot {
            Some(k) => {
                let held = taken | 1 << k;
                Imports::Share { slot: u32::from(k), of: u32::BITS - held.leading_zeros() }
            }
            None => Imports::None,
        }
    }

    /// Whether `piece` may be asked from a peer of another zone (before any fallback).
    pub fn includes(self, piece: u32) -> bool {
        match self {
            Imports::All => true,
            Imports::Share { slot, of } => in_share(piece, slot, of),
            Imports::None => false,
        }
    }
}

/// Whether `piece` is in share `slot` of `of` (`of` 0 is every piece). The share of a piece
/// is its index modulo `m`, the power of two at or above `of`, or modulo `m / 2` when that is
/// `of` or more (linear hashing). So each share has pieces of every stripe (the picker's
/// in-order preference) and the gateways import in the zone's order side by side; and going
/// from `of` to `of + 1` shares only moves pieces of one share into the new one, so share
/// `slot` of `of` holds share `slot` of any larger `of`.
pub fn in_share(piece: u32, slot: u32, of: u32) -> bool {
    if of == 0 {
        return true;
    }
    let m = of.next_power_of_two();
    let b = piece % m;
    let share = if b < of { b } else { b - m / 2 };
    share == slot
}

/// The gateway slot of an announce for a blob: the slot the asker already holds (`held`, as
/// long as it announces the same zone), else, for an incomplete asker with a zone, the lowest
/// of the [`ZONE_GATEWAYS`] slots that no live peer of its zone holds (`taken`, bit `k` for
/// slot `k`), else none. A holder keeps its slot until its entry expires or leaves, so a
/// zone has at most [`ZONE_GATEWAYS`] gateways however its peers announce (at once, say),
/// each with a share of its own, and a dead gateway's share passes to the next asker of its
/// zone once its entry expires.
pub fn gateway_slot(held: Option<u8>, taken: u32, complete: bool, zoned: bool) -> Option<u8> {
    if !zoned {
        return None;
    }
    if held.is_some_and(|k| k < ZONE_GATEWAYS) {
        return held;
    }
    if complete {
        return None;
    }
    (0..ZONE_GATEWAYS).find(|k| taken & (1 << k) == 0)
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
    fn shares_cover_every_piece_once_and_only_shrink_as_a_zone_grows() {
        // (piece, of, share)
        let table: [(u32, u32, u32); 10] = [
            (7, 1, 0),
            (7, 2, 1),
            (6, 3, 2),
            (7, 3, 1),
            (5, 3, 1),
            (4, 3, 0),
            (12, 5, 4),
            (13, 5, 1),
            (15, 16, 15),
            (31, 16, 15),
        ];
        for (piece, of, share) in table {
            assert!(in_share(piece, share, of), "piece {piece} of {of}");
        }
        let pieces = 0..1000u32;
        for of in 1..=u32::from(ZONE_GATEWAYS) {
            for p in pieces.clone() {
                let holders = (0..of).filter(|&k| in_share(p, k, of)).count();
                assert_eq!(holders, 1, "piece {p} in {holders} of {of} shares");
                for k in 0..of {
                    assert!(!in_share(p, k, of + 1) || in_share(p, k, of), "share {k} grew from {of} to {}", of + 1);
                }
            }
            // Within one piece of even: no gateway carries twice another's load.
            let sizes: Vec<usize> = (0..of).map(|k| pieces.clone().filter(|&p| in_share(p, k, of)).count()).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(*hi <= 2 * lo + 1, "{of}: {sizes:?}");
        }
        assert!(pieces.clone().all(|p| in_share(p, 3, 0)), "of 0 is every piece");
        // Gateways told of 1, 2, 3, 4 gateways as the zone grew still cover every piece.
        assert!(pieces.clone().all(|p| (0..4).any(|k| in_share(p, k, k + 1))));
    }

    #[test]
    fn the_share_count_follows_the_highest_slot_held() {
        assert_eq!(Imports::of_slot(Some(0), 0), Imports::Share { slot: 0, of: 1 });
        assert_eq!(Imports::of_slot(Some(2), 0b11), Imports::Share { slot: 2, of: 3 });
        assert_eq!(Imports::of_slot(Some(1), 0b1001), Imports::Share { slot: 1, of: 4 });
        let all = (1u32 << ZONE_GATEWAYS) - 1;
        assert_eq!(Imports::of_slot(Some(15), all), Imports::Share { slot: 15, of: 16 });
        assert_eq!(Imports::of_slot(None, all), Imports::None);
    }

    #[test]
    fn gateway_slots_are_kept_and_handed_lowest_free_first() {
        let full = (1u32 << ZONE_GATEWAYS) - 1;
        // (held, taken, complete, zoned, slot)
        type Row = (Option<u8>, u32, bool, bool, Option<u8>);
        let table: [Row; 9] = [
            (None, 0, false, true, Some(0)),                // the first asker of a zone
            (None, 0b1011, false, true, Some(2)),           // the lowest free slot
            (None, full, false, true, None),                // every slot held: not a gateway
            (Some(5), full, false, true, Some(5)),          // a holder keeps its slot
            (Some(5), 0, true, true, Some(5)),              // also once complete
            (None, 0, true, true, None),                    // a seeder takes none
            (None, 0, false, false, None),                  // no zone: no slot
            (Some(3), 0, false, false, None),               // nor after leaving its zone
            (Some(ZONE_GATEWAYS), 0, false, true, Some(0)), // out of range: a new one
        ];
        for (held, taken, complete, zoned, slot) in table {
            assert_eq!(gateway_slot(held, taken, complete, zoned), slot, "{held:?} {taken:b} {complete} {zoned}");
        }
        // A zone filling up slot by slot has at most ZONE_GATEWAYS gateways, each its own.
        let mut taken = 0u32;
        let mut slots = Vec::new();
        for _ in 0..100 {
            if let Some(k) = gateway_slot(None, taken, false, true) {
                assert_eq!(taken & (1 << k), 0);
                taken |= 1 << k;
                slots.push(k);
            }
        }
        assert_eq!(slots, (0..ZONE_GATEWAYS).collect::<Vec<u8>>());
    }

    #[test]
    fn the_shares_split_the_pieces() {
        // (imports, pieces 0..8 it includes)
        let share = |slot| Imports::Share { slot, of: 4 };
        let table: [(Imports, [bool; 8]); 6] = [
            (Imports::All, [true; 8]),
            (Imports::None, [false; 8]),
            (share(0), [true, false, false, false, true, false, false, false]),
            (share(3), [false, false, false, true, false, false, false, true]),
            (Imports::Share { slot: 0, of: 0 }, [true; 8]),
            (Imports::Share { slot: 9, of: 4 }, [false; 8]), // a slot past the shares: none
        ];
        for (imports, expect) in table {
            let got: Vec<bool> = (0..8).map(|p| imports.includes(p)).collect();
            assert_eq!(got, expect, "{imports:?}");
        }
        // Every piece is in exactly one of the shares of a full zone.
        let all = (1u32 << ZONE_GATEWAYS) - 1;
        for piece in 0..1000 {
            let n = (0..ZONE_GATEWAYS).filter(|&k| Imports::of_slot(Some(k), all).includes(piece)).count();
            assert_eq!(n, 1, "piece {piece}");
        }
        assert_eq!(Imports::of_slot(None, 0), Imports::None);
    }

    #[test]
    fn imports_on_the_wire() {
        let table = [
            (Imports::Share { slot: 3, of: 16 }, r#"{"share":{"slot":3,"of":16}}"#),
            (Imports::None, r#""none""#),
            (Imports::All, r#""all""#),
        ];
        for (imports, json) in table {
            assert_eq!(serde_json::to_string(&imports).unwrap(), json);
            assert_eq!(serde_json::from_str::<Imports>(json).unwrap(), imports);
        }
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
