//! The store's upkeep: one task per node that keeps the store within its budget
//! (`swarm.store`), a thin driver of the pure policy in `shoal_core::cache`.
//!
//! A round, every `check_interval` or at once when a download or commit takes the store over
//! its high mark:
//!
//! 1. closes blobs unused for `idle_timeout` (their in-memory entry and open file; they stay
//!    in the store and are opened again when asked for), drops failed downloads' entries, and
//!    frees the read buffers that stayed idle since the last round (`bufpool`);
//! 2. writes the last uses recorded since the previous round to disk (each data file's mtime);
//! 3. measures the filesystem, resolves the limits, and asks the policy what to evict, from
//!    the index's sizes, last uses and pins and from what is in use;
//! 4. evicts: a complete blob's entry leaves the node (so a peer asking for it from then on is
//!    answered `Reject` `UnknownBlob`, and fetches it elsewhere), then its files, unless
//!    someone took it up meanwhile; an abandoned partial download's files go;
//! 5. tells the tracker, with a `stopped` announce per evicted blob, that this node no longer
//!    holds it.
//!
//! In use, and so never evicted: a partial download a download has open; a complete blob whose
//! file anyone holds (a client's stream, a piece on its way to a peer, a caller of
//! `Swarm::complete`), except when the only holder is the node's own entry and nobody holds
//! that. An upload already reading from a file that is then unlinked reads it whole: the
//! kernel keeps an unlinked file until its last descriptor closes, so no peer ever gets a
//! short or mixed piece.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use shoal_core::Digest;
use shoal_core::cache::{self, Candidate, Kind, Limits, Reason, Usage};

use crate::config::StoreConfig;
use crate::node::Node;
use crate::store::FsSpace;

/// Stopped announces (after evictions) and announces of stored blobs (at an origin's start)
/// in flight at once.
pub(crate) const ANNOUNCE_CONCURRENCY: usize = 8;

/// The limits of a store configured with `cfg` on a filesystem of `space`.
pub(crate) fn limits(cfg: &StoreConfig, space: FsSpace) -> Limits {
    Limits::new(
        cfg.max_size.of(space.total),
        cfg.high_watermark.basis_points(),
        cfg.low_watermark.basis_points(),
        cfg.min_free.of(space.total),
        cfg.ttl.map(|t| t.get()),
        cfg.partial_ttl.get(),
    )
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Store bytes before and after.
    pub used_before: u64,
    pub used_after: u64,
    /// The limits it worked to.
    pub high: u64,
    pub low: u64,
    /// Complete blobs evicted, and partial downloads removed.
    pub evicted: Vec<Digest>,
    pub partials_removed: usize,
    /// Entries closed for being idle.
    pub closed: usize,
    /// Bytes the policy could not free (everything left pinned or in use).
    pub short: u64,
}

/// Runs a round every `check_interval`, and at once when the store passes its high mark,
/// until the node shuts down. The first round comes after one interval (or the first
/// pressure), so a node starts serving at once.
pub(crate) async fn run(node: Arc<Node>) {
    let every = node.cfg.store.check_interval.get();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = node.store.index().pressure.notified() => {}
            () = node.cancel.cancelled() => return,
        }
        round(&node).await;
    }
}

/// One round (see the module docs).
pub(crate) async fn round(node: &Arc<Node>) -> RoundReport {
    let cfg = &node.cfg.store;
    let store = &node.store;
    let closed = node.close_idle(cfg.idle_timeout.get());
    let trimmed = store.trim_buffers();
    if trimmed > 0 {
        tracing::debug!(bytes = trimmed, "freed idle read buffers");
    }
    store.persist_last_uses().await;
    let space = match store.space().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot measure the store's filesystem, no eviction this round: {e:#}");
            return RoundReport { closed, ..RoundReport::default() };
        }
    };
    let limits = limits(cfg, space);
    store.index().set_high(limits.high);

    let now = SystemTime::now();
    let mut snapshot = store.index().snapshot();
    // What the downloads still have to write matters only under the free-space floor
    // (`cache::plan`'s futility rule); above it nothing is read from the disk for it.
    let unwritten = if space.free < limits.min_free {
        let downloading = snapshot.iter().filter(|s| s.partial && s.in_use).map(|s| (s.digest, s.size)).collect();
        store.unwritten(downloading).await
    } else {
        HashMap::new()
    };
    let candidates: Vec<Candidate<(Digest, bool)>> = snapshot
        .iter()
        .map(|s| Candidate {
            key: (s.digest, s.partial),
            kind: if s.partial { Kind::Partial } else { Kind::Complete },
            size: s.size,
            idle: now.duration_since(s.last_used).unwrap_or(Duration::ZERO),
            pinned: s.pinned,
            in_use: match &s.file {
                Some(f) => !node.only_held_by_its_entry(&s.digest, f),
                None => s.in_use,
            },
            unwritten: if s.partial { unwritten.get(&s.digest).copied().unwrap_or(0) } else { 0 },
        })
        .collect();
    // The snapshot's own hold on open files would keep them from being evicted.
    snapshot.clear();
    let usage = Usage { used: store.used(), free: space.free };
    let plan = cache::plan(&candidates, usage, &limits);

    let mut report =
        RoundReport { used_before: usage.used, high: limits.high, low: limits.low, closed, ..RoundReport::default() };
    for ((d, partial), reason) in plan.evict {
        if partial {
            match store.remove_partial(d, reason).await {
                Ok(Some(_)) => report.partials_removed += 1,
                Ok(None) => {}
                Err(e) => tracing::warn!(%d, "cannot remove the partial download: {e:#}"),
            }
        } else if node.evict(d, reason, false).await {
            report.evicted.push(d);
        }
    }
    report.used_after = store.used();
    report.short = plan.short;
    if !report.evicted.is_empty() || report.partials_removed > 0 {
        tracing::info!(
            evicted = report.evicted.len(),
            partials = report.partials_removed,
            before = report.used_before,
            after = report.used_after,
            high = limits.high,
            low = limits.low,
            free = space.free,
            "store evicted"
        );
    }
    if plan.floor_futile {
        tracing::warn!(
            free = space.free,
            min_free = limits.min_free,
            "the filesystem is under the store's free-space floor, and the downloads in progress \
             need more than evicting every blob would free: nothing evicted, they will fail for \
             lack of room"
        );
    } else if plan.short > 0 {
        tracing::warn!(
            short = plan.short,
            used = report.used_after,
            low = limits.low,
            free = space.free,
            min_free = limits.min_free,
            "store cannot get back within its limits: everything left is pinned or in use"
        );
    }
    let stopped = report.evicted.clone();
    if !stopped.is_empty() && !node.tracker.is_empty() {
        let n = node.clone();
        shoal_runtime::spawn("stopped-announces", node.cancel.clone(), async move {
            futures::stream::iter(stopped)
                .for_each_concurrent(ANNOUNCE_CONCURRENCY, |d| {
                    let n = n.clone();
                    async move { crate::download::announce_stopped(&n, d).await }
                })
                .await;
            Ok(())
        });
    }
    report
}

impl Node {
    /// Evicts complete blob `d` for `reason`: its entry leaves the node unless someone holds
    /// it, then its files leave the store unless someone holds its file (with `force`,
    /// whoever holds either). Returns whether it was evicted.
    pub(crate) async fn evict(self: &Arc<Self>, d: Digest, reason: Reason, force: bool) -> bool {
        if !self.remove_settled_entry(&d, force) {
            return false;
        }
        match self.store.evict(d, force, reason).await {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(%d, "cannot evict: {e:#}");
                false
            }
        }
    }

    /// Hashes piece `piece` of complete blob `d` from disk again, after a peer reported that
    /// it failed its hash there; a piece that fails here too means the file is damaged (a
    /// torn write, a disk error), and the blob is evicted so it is not served again. At most
    /// [`REVERIFY_AT_ONCE`] run at once; reports beyond that are dropped.
    pub(crate) async fn reverify_piece(self: &Arc<Self>, d: Digest, piece: u32) {
        let Ok(_permit) = self.reverify.clone().try_acquire_owned() else { return };
        let file = match self.blob(&d) {
            Some(e) if e.shared.lock().complete => Some(e.file.clone()),
            Some(_) => None,
            None => self.store.open_complete(d).await.ok().flatten(),
        };
        let Some(file) = file else { return };
        let Some(idx) = file.meta().piece(piece) else { return };
        let good = self
            .store
            .blocking()
            .run(move || file.read_piece(idx).is_ok_and(|data| file.meta().verify_piece(idx, &data)))
            .await;
        if good {
            tracing::info!(%d, piece, "a peer reported a corrupt piece that matches its hash here");
            return;
        }
        tracing::warn!(%d, piece, "a stored piece no longer matches its hash; the blob is removed");
        if self.evict(d, Reason::Corrupt, true).await {
            crate::download::announce_stopped(self, d).await;
        }
    }
}

/// Piece re-verifications at once (see [`Node::reverify_piece`]).
pub(crate) const REVERIFY_AT_ONCE: usize = 2;

#[cfg(test)]
mod tests {
    use std::fs::File;

    use shoal_core::MetaInfo;
    use shoal_runtime::{ByteSize, Percent, SizeLimit};
    use tempfile::TempDir;

    use super::*;
    use crate::SwarmConfig;
    use crate::blocking::Blocking;
    use crate::store::Store;

    /// A budget of `max` bytes, marks at 90% and 75%, no floor.
    fn budget(max: u64) -> StoreConfig {
        StoreConfig {
            max_size: SizeLimit::Bytes(ByteSize(max)),
            min_free: SizeLimit::Bytes(ByteSize(0)),
            ..StoreConfig::default()
        }
    }

    fn node(dir: &TempDir, store: StoreConfig) -> Arc<Node> {
        Node::for_tests(SwarmConfig { store_dir: dir.path().to_path_buf(), store, ..SwarmConfig::default() }, false)
    }

    /// Stores `data` as a complete blob, as a fetch does.
    async fn put(store: &Store, data: &[u8]) -> Digest {
        let meta = MetaInfo::build(data);
        let staged = store.tmp_path();
        std::fs::write(&staged, data).unwrap();
        store.commit_verified(meta.clone(), staged).await.unwrap();
        meta.digest()
    }

    /// Blob `k` of the tests: 1000 bytes of its own.
    fn data(k: u8) -> Vec<u8> {
        vec![k; 1000]
    }

    /// Marks `d`'s last use `ago` in the past on disk, where a restarted store reads it.
    fn age(path: &std::path::Path, ago: Duration) {
        File::open(path).unwrap().set_modified(SystemTime::now() - ago).unwrap();
    }

    fn evicted(node: &Node, reason: Reason) -> u64 {
        node.store.evictions().get(reason)
    }

    /// Twelve blobs of 1000 bytes in a budget of 10000 (marks 9000 and 7500): the round evicts
    /// least recently used first down to the low mark. A blob whose file a reader holds
    /// survives although it is among the oldest; one held only by the node's own idle entry
    /// does not.
    #[tokio::test]
    async fn a_round_evicts_least_recently_used_to_the_low_mark() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(&dir, budget(10_000));
        let mut ds = Vec::new();
        for k in 0..12 {
            ds.push(put(&node.store, &data(k)).await);
        }
        for d in &ds {
            std::thread::sleep(Duration::from_millis(2));
            node.store.touch(d);
        }
        let reader = node.store.open_complete(ds[1]).await.unwrap().unwrap();
        let opened = node.entry_or_load(ds[2]).await.unwrap();
        drop(opened);
        assert_eq!(node.open_blobs(), 1);

        let r = round(&node).await;
        assert_eq!((r.used_before, r.high, r.low), (12_000, 9000, 7500));
        assert_eq!(r.evicted, [ds[0], ds[2], ds[3], ds[4], ds[5]]);
        assert_eq!(r.used_after, 7000);
        assert_eq!(node.store.used(), 7000);
        let kept: Vec<Digest> = ds.iter().copied().filter(|d| node.store.contains(d)).collect();
        assert_eq!(kept, [&ds[1..2], &ds[6..]].concat(), "the reader's blob and the most recent");
        assert_eq!(node.open_blobs(), 0, "the evicted blob's entry is gone");
        assert_eq!(evicted(&node, Reason::Size), 5);
        assert_eq!(reader.read_at(0, 1000).unwrap(), data(1));
        // Under the mark, the next round evicts nothing.
        assert!(round(&node).await.evicted.is_empty());
    }

    /// With a TTL, a blob unused for longer goes whatever the usage, unless it is pinned (by
    /// the config or by a preheat); a partial download untouched past the partial TTL goes.
    #[tokio::test]
    async fn ttl_pins_and_abandoned_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let [stale, configured, preheated, fresh] = [
            put(&store, &data(1)).await,
            put(&store, &data(2)).await,
            put(&store, &data(3)).await,
            put(&store, &data(4)).await,
        ];
        store.set_pin(preheated, crate::index::PIN_PREHEAT, true).await.unwrap();
        let abandoned = MetaInfo::build(&data(5));
        drop(store.open_partial(abandoned.clone()).await.unwrap());
        let resumable = MetaInfo::build(&data(6));
        drop(store.open_partial(resumable.clone()).await.unwrap());
        for d in [stale, configured, preheated] {
            age(&store.complete_path(&d), Duration::from_secs(7200));
        }
        let partial = |m: &MetaInfo| dir.path().join("partial").join(format!("{}.data", m.digest().hex()));
        age(&partial(&abandoned), Duration::from_secs(7200));
        drop(store);

        let mut cfg = StoreConfig { ttl: Some(shoal_runtime::Duration::from_secs(3600)), ..budget(1 << 40) };
        cfg.pin.digests = vec![configured];
        let node = node(&dir, cfg);
        let r = round(&node).await;
        assert_eq!(r.evicted, [stale]);
        assert_eq!(r.partials_removed, 1);
        for d in [configured, preheated, fresh] {
            assert!(node.store.contains(&d));
        }
        assert!(!partial(&abandoned).exists() && partial(&resumable).exists());
        assert_eq!((evicted(&node, Reason::Ttl), evicted(&node, Reason::PartialTtl)), (1, 1));
    }

    /// A floor above the filesystem's free space evicts every blob it may, pinned ones
    /// excepted, and says how far it stayed from its target.
    #[tokio::test]
    async fn the_free_space_floor_evicts_whatever_fills_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig { min_free: SizeLimit::Percent(Percent::FULL), ..budget(1 << 40) };
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let (a, b) = (put(&store, &data(1)).await, put(&store, &data(2)).await);
        drop(store);
        cfg.pin.digests = vec![b];
        let node = node(&dir, cfg);
        let r = round(&node).await;
        assert_eq!(r.evicted, [a]);
        assert!(r.short > 0);
        assert!(node.store.contains(&b));
        assert_eq!(evicted(&node, Reason::DiskFree), 1);
    }

    /// Under the floor while a download in progress still has more to write than evicting
    /// every blob would free: nothing is evicted (the download fails for lack of room either
    /// way, and the node keeps serving what it holds). Once the download is over, the floor
    /// evicts as usual.
    #[tokio::test]
    async fn the_floor_does_not_evict_for_a_download_that_cannot_fit_anyway() {
        use shoal_core::metainfo::{MAX_PIECE_LEN, MAX_PIECES, PieceHash};
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig { min_free: SizeLimit::Percent(Percent::FULL), ..budget(1 << 40) };
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let a = put(&store, &data(1)).await;
        drop(store);
        let node = node(&dir, cfg);
        // The largest blob there is: a sparse partial file that holds nothing yet.
        let len = u64::from(MAX_PIECE_LEN) * u64::from(MAX_PIECES);
        let free = node.store.space().await.unwrap().free;
        if free >= len {
            eprintln!("skipped: the test filesystem has {free} bytes free, more than a {len}-byte blob needs");
            return;
        }
        let meta = MetaInfo::from_parts(
            Digest::of(b"too big"),
            len,
            MAX_PIECE_LEN,
            vec![PieceHash::of(b""); MAX_PIECES as usize],
        )
        .unwrap();
        let partial = node.store.open_partial(meta).await.unwrap();
        let r = round(&node).await;
        assert!(r.evicted.is_empty() && r.partials_removed == 0, "{r:?}");
        assert!(node.store.contains(&a));
        assert_eq!(evicted(&node, Reason::DiskFree), 0);
        drop(partial);
        let r = round(&node).await;
        assert_eq!((r.evicted.as_slice(), r.partials_removed), ([a].as_slice(), 1));
        assert_eq!(evicted(&node, Reason::DiskFree), 2);
    }

    /// A complete blob unused for `idle_timeout` is closed (entry and file) but stays in the
    /// store, and opens again when asked for.
    #[tokio::test]
    async fn idle_blobs_are_closed_and_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig { idle_timeout: shoal_runtime::Duration::from_secs(3600), ..budget(1 << 40) };
        let node = node(&dir, cfg);
        let d = put(&node.store, &data(1)).await;
        drop(node.entry_or_load(d).await.unwrap());
        assert_eq!(round(&node).await.closed, 0, "used just now");
        assert_eq!(node.close_idle(Duration::ZERO), 1);
        assert_eq!(node.open_blobs(), 0);
        assert!(matches!(node.store.index().lookup(&d), crate::index::Lookup::Closed), "its file is closed");
        let again = node.entry_or_load(d).await.expect("opened again");
        assert_eq!(again.file.read_at(0, 1000).unwrap(), data(1));
    }
}
