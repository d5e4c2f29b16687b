//! The store's eviction policy: which of a node's stored blobs to delete, given their sizes,
//! how long each has been unused, which are pinned or in use, how much the store holds and how
//! much room the filesystem has left. Agents and origins run the same policy; an origin's
//! store is a cache of its backend, which nothing here ever touches.
//!
//! The rules, in the order [`plan`] applies them:
//!
//! 1. **Expiry.** A partial download nobody has written to for `partial_ttl` is removed (a
//!    crash or a cancelled pull left it; asked for again sooner, it resumes). With a `ttl`, a
//!    complete blob unused for longer than that is evicted whatever the usage.
//! 2. **Budget.** Above the `high` mark (bytes of complete blobs and partial downloads), blobs
//!    are evicted least recently used first (last served to a client or a peer, or written)
//!    until the store is at or under the `low` mark.
//! 3. **Free-space floor.** When the filesystem's free space is under `min_free`, whoever
//!    filled it, blobs are evicted in the same order until the free space is back to
//!    `free_target` (the floor plus the gap between the two marks), so one freed blob does not
//!    leave the next write to trip the floor again. Unless it cannot help: when the downloads
//!    in progress still have more to write than the free space would be after evicting every
//!    evictable blob, they fail for lack of room whatever is evicted, so the floor evicts
//!    nothing and the node keeps serving what it holds ([`Plan::floor_futile`]).
//!
//! Never evicted: a candidate in use (a download writing it, a client reading it, a piece of
//! it on its way to a peer), and a pinned complete blob. A pin does not keep an abandoned
//! partial download past `partial_ttl`. Ties in last use go by key, so a plan is a function of
//! its inputs alone.
//!
//! Sans-IO: the swarm's store measures and carries the plan out.

use std::time::Duration;

/// What a candidate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A complete, verified blob.
    Complete,
    /// The pieces of a download in progress or abandoned.
    Partial,
}

/// One blob (or partial download) the store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<K> {
    pub key: K,
    pub kind: Kind,
    /// Bytes it holds on disk.
    pub size: u64,
    /// Time since it was last used: served to a client or a peer, or written.
    pub idle: Duration,
    pub pinned: bool,
    /// Being downloaded, streamed to a client or uploaded to a peer.
    pub in_use: bool,
    /// For a download in progress: the bytes it has still to write (its length less what the
    /// filesystem holds of it), which it will take from the free space. 0 otherwise.
    pub unwritten: u64,
}

/// Why a blob left the store; the label of `shoal_swarm_store_evictions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The store was above its high mark.
    Size,
    /// The filesystem's free space was under the floor.
    DiskFree,
    /// Unused for longer than the TTL.
    Ttl,
    /// A partial download left untouched for longer than the partial TTL.
    PartialTtl,
    /// It failed a check: a short file, unreadable metadata, a piece that no longer matches
    /// its hash.
    Corrupt,
}

impl Reason {
    pub const ALL: [Reason; 5] = [Reason::Size, Reason::DiskFree, Reason::Ttl, Reason::PartialTtl, Reason::Corrupt];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::DiskFree => "disk_free",
            Reason::Ttl => "ttl",
            Reason::PartialTtl => "partial_ttl",
            Reason::Corrupt => "corrupt",
        }
    }
}

/// A store's limits, in bytes, resolved from its config and the filesystem's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The budget.
    pub max: u64,
    /// Above this, evict...
    pub high: u64,
    /// ...down to this.
    pub low: u64,
    /// Evict when the filesystem has less free space than this...
    pub min_free: u64,
    /// ...until it has this much.
    pub free_target: u64,
    /// Evict a complete blob unused for longer than this.
    pub ttl: Option<Duration>,
    /// Remove a partial download untouched for longer than this.
    pub partial_ttl: Duration,
}

impl Limits {
    /// The limits of a budget of `max` bytes whose marks are `high_bp` and `low_bp` basis
    /// points (hundredths of a percent) of it, with a floor of `min_free` free bytes.
    pub fn new(
        max: u64,
        high_bp: u32,
        low_bp: u32,
        min_free: u64,
        ttl: Option<Duration>,
        partial_ttl: Duration,
    ) -> Limits {
        let share =
            |bp: u32| u64::try_from(u128::from(max) * u128::from(bp.min(10_000)) / 10_000).expect("at most max");
        let (high, low) = (share(high_bp), share(low_bp));
        let low = low.min(high);
        Limits { max, high, low, min_free, free_target: min_free.saturating_add(high - low), ttl, partial_ttl }
    }
}

/// What the store holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of complete blobs and partial downloads.
    pub used: u64,
    /// The filesystem's free space, as an unprivileged process sees it.
    pub free: u64,
}

/// What to evict, and where that leaves the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<K> {
    /// In the order to evict them.
    pub evict: Vec<(K, Reason)>,
    /// Usage once they are gone (free space assumes each frees its size).
    pub after: Usage,
    /// Bytes the plan could not free to reach its targets, because everything left is pinned
    /// or in use, or because the floor could not be helped; 0 when it reaches them.
    pub short: u64,
    /// Under the floor, evicting every evictable blob would not leave room for what the
    /// downloads in progress still have to write, so the floor evicted nothing.
    pub floor_futile: bool,
}

/// Decides what to evict (see the module docs).
pub fn plan<K: Ord + Clone>(candidates: &[Candidate<K>], usage: Usage, limits: &Limits) -> Plan<K> {
    let mut after = usage;
    let mut evict = Vec::new();
    let mut taken = vec![false; candidates.len()];
    let mut take = |i: usize, reason: Reason, after: &mut Usage, taken: &mut [bool]| {
        taken[i] = true;
        let size = candidates[i].size;
        after.used = after.used.saturating_sub(size);
        after.free = after.free.saturating_add(size);
        evict.push((candidates[i].key.clone(), reason));
    };

    // Expiry, oldest first.
    let mut expired: Vec<(usize, Reason)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.in_use)
        .filter_map(|(i, c)| match c.kind {
            Kind::Partial if c.idle > limits.partial_ttl => Some((i, Reason::PartialTtl)),
            Kind::Complete if !c.pinned && limits.ttl.is_some_and(|t| c.idle > t) => Some((i, Reason::Ttl)),
            _ => None,
        })
        .collect();
    expired.sort_by(|(a, _), (b, _)| lru_order(&candidates[*a], &candidates[*b]));
    for (i, reason) in expired {
        take(i, reason, &mut after, &mut taken);
    }

    // The budget and the floor, least recently used first.
    let over_high = after.used > limits.high;
    let under_floor = after.free < limits.min_free;
    let mut floor_futile = false;
    if over_high || under_floor {
        let mut order: Vec<usize> =
            (0..candidates.len()).filter(|&i| !taken[i] && !candidates[i].in_use && !candidates[i].pinned).collect();
        order.sort_by(|&a, &b| lru_order(&candidates[a], &candidates[b]));
        if under_floor {
            let evictable: u64 = order.iter().map(|&i| candidates[i].size).sum();
            let demand: u64 =
                candidates.iter().filter(|c| c.in_use && c.kind == Kind::Partial).map(|c| c.unwritten).sum();
            floor_futile = demand > after.free.saturating_add(evictable);
        }
        for i in order {
            let for_size = over_high && after.used > limits.low;
            let for_floor = under_floor && !floor_futile && after.free < limits.free_target;
            if !for_size && !for_floor {
                break;
            }
            take(i, if for_size { Reason::Size } else { Reason::DiskFree }, &mut after, &mut taken);
        }
    }
    let size_short = if over_high { after.used.saturating_sub(limits.low) } else { 0 };
    let floor_short = if under_floor { limits.free_target.saturating_sub(after.free) } else { 0 };
    Plan { evict, after, short: size_short.max(floor_short), floor_futile }
}

/// Longest unused first; equal ones by key.
fn lru_order<K: Ord>(a: &Candidate<K>, b: &Candidate<K>) -> std::cmp::Ordering {
    b.idle.cmp(&a.idle).then_with(|| a.key.cmp(&b.key))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: u64 = 3600;

    /// A complete blob `key` of `size` bytes unused for `idle` seconds.
    fn blob(key: &'static str, size: u64, idle: u64) -> Candidate<&'static str> {
        Candidate {
            key,
            kind: Kind::Complete,
            size,
            idle: Duration::from_secs(idle),
            pinned: false,
            in_use: false,
            unwritten: 0,
        }
    }

    fn partial(key: &'static str, size: u64, idle: u64) -> Candidate<&'static str> {
        Candidate { kind: Kind::Partial, ..blob(key, size, idle) }
    }

    fn pinned(c: Candidate<&'static str>) -> Candidate<&'static str> {
        Candidate { pinned: true, ..c }
    }

    fn in_use(c: Candidate<&'static str>) -> Candidate<&'static str> {
        Candidate { in_use: true, ..c }
    }

    /// A download in progress of `size` bytes with `unwritten` of them still to write.
    fn downloading(key: &'static str, size: u64, unwritten: u64) -> Candidate<&'static str> {
        Candidate { unwritten, ..in_use(partial(key, size, 0)) }
    }

    /// A budget of 1000 bytes, marks at 90% and 60%, no floor, no TTL, partials kept an hour.
    fn limits() -> Limits {
        Limits::new(1000, 9000, 6000, 0, None, Duration::from_secs(HOUR))
    }

    fn used(cs: &[Candidate<&'static str>]) -> u64 {
        cs.iter().map(|c| c.size).sum()
    }

    #[test]
    fn limits_resolve_marks_and_the_floor_target() {
        let l = Limits::new(1000, 9000, 6000, 50, None, Duration::ZERO);
        assert_eq!((l.max, l.high, l.low, l.min_free, l.free_target), (1000, 900, 600, 50, 350));
        // A low mark above the high one is clamped to it; marks above 100% to the budget.
        let l = Limits::new(1000, 12_000, 11_000, 0, None, Duration::ZERO);
        assert_eq!((l.high, l.low, l.free_target), (1000, 1000, 0));
        let l = Limits::new(u64::MAX, 10_000, 5000, u64::MAX, None, Duration::ZERO);
        assert_eq!((l.high, l.free_target), (u64::MAX, u64::MAX));
    }

    /// (case, candidates, free bytes, limits) -> evicted keys with reasons, bytes short.
    #[test]
    fn plans() {
        use Reason::*;
        let ttl = |secs| Limits { ttl: Some(Duration::from_secs(secs)), ..limits() };
        let floor = |min_free| Limits::new(1000, 9000, 6000, min_free, None, Duration::from_secs(HOUR));
        type Case = (&'static str, Vec<Candidate<&'static str>>, u64, Limits, Vec<(&'static str, Reason)>, u64);
        let table: Vec<Case> = vec![
            ("under the high mark: nothing", vec![blob("a", 400, 50), blob("b", 300, 10)], 10_000, limits(), vec![], 0),
            ("at the high mark: nothing", vec![blob("a", 400, 50), blob("b", 500, 10)], 10_000, limits(), vec![], 0),
            (
                "above it: least recently used first, down to the low mark",
                vec![blob("new", 300, 1), blob("old", 300, 300), blob("mid", 300, 20), blob("older", 100, 200)],
                10_000,
                limits(),
                vec![("old", Size), ("older", Size)],
                0,
            ),
            (
                "pinned and in-use blobs are skipped however old",
                vec![pinned(blob("p", 300, 900)), in_use(blob("u", 300, 800)), blob("x", 300, 5), blob("y", 100, 1)],
                10_000,
                limits(),
                vec![("x", Size), ("y", Size)],
                0,
            ),
            (
                "everything left pinned or in use: short of the low mark",
                vec![pinned(blob("p", 500, 900)), in_use(blob("u", 450, 800)), blob("x", 50, 5)],
                10_000,
                limits(),
                vec![("x", Size)],
                350,
            ),
            (
                "equal idle times go by key",
                vec![blob("b", 200, 7), blob("a", 200, 7), blob("c", 600, 1)],
                10_000,
                limits(),
                vec![("a", Size), ("b", Size)],
                0,
            ),
            (
                "under the floor, within budget: evict until the floor's target",
                vec![blob("a", 100, 9), blob("b", 100, 8), blob("c", 150, 7), blob("d", 100, 6)],
                40,
                floor(50),
                vec![("a", DiskFree), ("b", DiskFree), ("c", DiskFree)],
                0,
            ),
            (
                "above the high mark and under the floor: size first, then the floor",
                vec![blob("a", 400, 9), blob("b", 400, 8), blob("c", 100, 7), blob("d", 50, 6)],
                0,
                floor(400),
                vec![("a", Size), ("b", DiskFree)],
                0,
            ),
            ("the floor with nothing to evict", vec![pinned(blob("a", 100, 9))], 10, floor(50), vec![], 340),
            (
                "under the floor, a download that cannot fit even after every eviction: nothing goes",
                vec![blob("a", 100, 9), downloading("dl", 600, 400)],
                40,
                floor(50),
                vec![],
                310,
            ),
            (
                "under the floor, a download that fits once the floor evicts: evicted as usual",
                vec![blob("a", 100, 9), downloading("dl", 600, 100)],
                40,
                floor(50),
                vec![("a", DiskFree)],
                210,
            ),
            (
                "ttl: idle past it goes even under the mark; at it, stays",
                vec![
                    blob("stale", 10, 101),
                    blob("edge", 10, 100),
                    pinned(blob("kept", 10, 500)),
                    in_use(blob("busy", 10, 500)),
                ],
                10_000,
                ttl(100),
                vec![("stale", Ttl)],
                0,
            ),
            (
                "an expired partial goes, pinned or not; an active one stays",
                vec![
                    partial("gone", 10, HOUR + 1),
                    pinned(partial("pinned", 10, HOUR + 5)),
                    in_use(partial("active", 10, 2 * HOUR)),
                    partial("fresh", 10, 60),
                ],
                10_000,
                limits(),
                vec![("pinned", PartialTtl), ("gone", PartialTtl)],
                0,
            ),
            (
                "expiry first, then the budget counts what expiry freed",
                vec![blob("stale", 200, 500), blob("a", 400, 50), blob("b", 350, 40)],
                10_000,
                ttl(100),
                vec![("stale", Ttl)],
                0,
            ),
            (
                "an idle partial is evicted for room like a blob",
                vec![partial("p", 500, 600), blob("a", 450, 10)],
                10_000,
                limits(),
                vec![("p", Size)],
                0,
            ),
        ];
        for (case, cands, free, limits, want, short) in table {
            let usage = Usage { used: used(&cands), free };
            let p = plan(&cands, usage, &limits);
            assert_eq!(p.evict, want, "{case}");
            assert_eq!(p.short, short, "{case}: short");
            let freed: u64 = want.iter().map(|(k, _)| cands.iter().find(|c| c.key == *k).unwrap().size).sum();
            assert_eq!(p.after, Usage { used: usage.used - freed, free: free + freed }, "{case}: after");
        }
    }

    fn candidate() -> impl Strategy<Value = (u64, u64, bool, bool, bool)> {
        (1u64..500, 0u64..10_000, any::<bool>(), any::<bool>(), any::<bool>())
    }

    proptest! {
        /// Whatever the store holds: pinned complete blobs and anything in use are never
        /// evicted, nothing is evicted twice, the store is never left above its high mark nor,
        /// once evicting for size, above its low mark while something evictable is left.
        #[test]
        fn never_evicts_what_it_must_keep(
            specs in proptest::collection::vec(candidate(), 0..40),
            free in 0u64..20_000,
            min_free in 0u64..5_000,
            ttl in proptest::option::of(0u64..10_000),
        ) {
            let cands: Vec<Candidate<usize>> = specs.iter().enumerate().map(|(i, &(size, idle, pinned, in_use, is_partial))| Candidate {
                key: i,
                kind: if is_partial { Kind::Partial } else { Kind::Complete },
                size,
                idle: Duration::from_secs(idle),
                pinned,
                in_use,
                unwritten: if is_partial && in_use { size / 2 } else { 0 },
            }).collect();
            let limits = Limits::new(4000, 9000, 6000, min_free, ttl.map(Duration::from_secs), Duration::from_secs(5000));
            let usage = Usage { used: cands.iter().map(|c| c.size).sum(), free };
            let p = plan(&cands, usage, &limits);
            let mut seen = std::collections::HashSet::new();
            for (k, reason) in &p.evict {
                let c = &cands[*k];
                prop_assert!(seen.insert(*k), "evicted twice");
                prop_assert!(!c.in_use, "evicted a candidate in use");
                prop_assert!(!(c.pinned && c.kind == Kind::Complete), "evicted a pinned blob");
                prop_assert!(c.kind == Kind::Partial || *reason != Reason::PartialTtl);
            }
            let evictable_left = cands.iter().enumerate().any(|(i, c)| !seen.contains(&i) && !c.in_use && !c.pinned);
            if p.short > 0 {
                prop_assert!(!evictable_left || p.floor_futile, "short while something evictable is left");
            }
            if p.floor_futile {
                prop_assert!(p.evict.iter().all(|(_, r)| *r != Reason::DiskFree), "a futile floor evicted");
            }
            if p.after.used > limits.high {
                prop_assert!(!evictable_left && p.short > 0, "left above the high mark");
            }
            if p.evict.iter().any(|(_, r)| *r == Reason::Size) {
                prop_assert!(p.after.used <= limits.low || !evictable_left, "stopped above the low mark");
            }
        }
    }
}
