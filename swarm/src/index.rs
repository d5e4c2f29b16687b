//! The store's index: what the store holds, in memory, so that asking for a blob it lacks
//! touches no disk and eviction can rank every blob without opening any.
//!
//! For each complete blob: its size, when it was last used (served to a client or a peer, or
//! committed) and when that was last written to disk (the data file's mtime), and the open
//! file while anyone uses it (a `Weak`: the file closes when its last user drops it). For each
//! partial download: its size, when it was last written, and how many handles have it open.
//! The pins, persisted and configured. It is rebuilt at start from a listing of the store (one
//! `stat` per blob, no open), with the mtimes as last uses.
//!
//! Lock notice: `blobs` and `pins` are sync mutexes held only for map operations, never across
//! an await or a file operation, and never together. `gate` is held by the blocking pool alone,
//! around the file operations that create, rename or remove a blob's files (commits, the start
//! of a download, evictions), and may take `blobs` inside it, never the reverse.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::Mutex;
use shoal_core::Digest;
use tokio::sync::Notify;

use crate::store::BlobFile;

/// A pin recorded by a preheat with `"pin": true`.
pub const PIN_PREHEAT: &str = "preheat";

/// The pin recorded for a blob requested through pinned repository `name`.
pub fn repository_pin(name: &str) -> String {
    format!("repository:{name}")
}

pub(crate) struct Index {
    blobs: Mutex<Blobs>,
    pins: Mutex<Pins>,
    /// Held around file operations that create, rename or remove a blob's files.
    pub gate: Mutex<()>,
    /// Woken when the store passes its high mark, so a round of eviction starts at once.
    pub pressure: Notify,
    /// The high mark in bytes, as of the last round; `u64::MAX` before the first.
    high: AtomicU64,
}

#[derive(Default)]
struct Blobs {
    complete: HashMap<Digest, Complete>,
    partial: HashMap<Digest, Partial>,
    /// Sum of every size above.
    used: u64,
}

struct Complete {
    size: u64,
    last_used: SystemTime,
    /// The last use written to disk (as the data file's mtime).
    persisted: SystemTime,
    file: Weak<BlobFile>,
}

struct Partial {
    size: u64,
    last_used: SystemTime,
    /// Handles open on it (downloads writing it).
    open: u32,
}

#[derive(Default)]
struct Pins {
    /// Pins recorded on disk (`pins.json`), with why each was made.
    recorded: BTreeMap<Digest, BTreeSet<String>>,
    /// `swarm.store.pin.digests`.
    digests: HashSet<Digest>,
    /// `swarm.store.pin.repositories`.
    repositories: HashSet<String>,
}

/// One entry as eviction sees it.
pub(crate) struct Snapshot {
    pub digest: Digest,
    pub partial: bool,
    pub size: u64,
    pub last_used: SystemTime,
    pub pinned: bool,
    /// A complete blob's open file, if anyone holds it; for a partial, whether a download has
    /// it open (`in_use`).
    pub file: Option<Arc<BlobFile>>,
    pub in_use: bool,
}

/// Whether the index knows a complete blob, and its open file if anyone holds one.
pub(crate) enum Lookup {
    Unknown,
    Closed,
    Open(Arc<BlobFile>),
}

impl Index {
    pub fn new() -> Index {
        Index {
            blobs: Mutex::new(Blobs::default()),
            pins: Mutex::new(Pins::default()),
            gate: Mutex::new(()),
            pressure: Notify::new(),
            high: AtomicU64::new(u64::MAX),
        }
    }

    /// Records a complete blob found on disk at start.
    pub fn found_complete(&self, d: Digest, size: u64, mtime: SystemTime) {
        let c = Complete { size, last_used: mtime, persisted: mtime, file: Weak::new() };
        self.blobs.lock().put_complete(d, c);
    }

    /// Records a partial download found on disk at start.
    pub fn found_partial(&self, d: Digest, size: u64, mtime: SystemTime) {
        let mut b = self.blobs.lock();
        b.put_partial(d, size);
        if let Some(p) = b.partial.get_mut(&d) {
            p.last_used = mtime;
        }
    }

    pub fn lookup(&self, d: &Digest) -> Lookup {
        match self.blobs.lock().complete.get(d) {
            None => Lookup::Unknown,
            Some(c) => c.file.upgrade().map_or(Lookup::Closed, Lookup::Open),
        }
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.blobs.lock().complete.contains_key(d)
    }

    /// Makes `file` the open file of `d`, or returns the one someone opened meanwhile; `None`
    /// if `d` left the index meanwhile (evicted: the caller must not use what it opened).
    pub fn adopt(&self, d: Digest, file: Arc<BlobFile>) -> Option<Arc<BlobFile>> {
        let mut b = self.blobs.lock();
        let c = b.complete.get_mut(&d)?;
        if let Some(open) = c.file.upgrade() {
            return Some(open);
        }
        c.file = Arc::downgrade(&file);
        Some(file)
    }

    /// Records `d` committed now, with its open file; the partial download it came from, if
    /// any, is gone.
    pub fn committed(&self, d: Digest, size: u64, file: &Arc<BlobFile>) {
        let now = SystemTime::now();
        let c = Complete { size, last_used: now, persisted: SystemTime::UNIX_EPOCH, file: Arc::downgrade(file) };
        let used = {
            let mut b = self.blobs.lock();
            b.drop_partial(&d);
            b.put_complete(d, c);
            b.used
        };
        self.check_pressure(used);
    }

    /// Removes `d` if nothing holds its file (or, with `force`, whatever holds it); returns
    /// its size if it was there and is now gone.
    pub fn remove_complete(&self, d: &Digest, force: bool) -> Option<u64> {
        let mut b = self.blobs.lock();
        let c = b.complete.get(d)?;
        if !force && c.file.strong_count() > 0 {
            return None;
        }
        let size = c.size;
        b.complete.remove(d);
        b.used -= size;
        Some(size)
    }

    /// A download opened the partial `d` of `size` bytes.
    pub fn partial_opened(&self, d: Digest, size: u64) {
        let used = {
            let mut b = self.blobs.lock();
            b.put_partial(d, size);
            if let Some(p) = b.partial.get_mut(&d) {
                p.open += 1;
            }
            b.used
        };
        self.check_pressure(used);
    }

    /// A handle on partial `d` closed: it was last written now.
    pub fn partial_closed(&self, d: &Digest) {
        if let Some(p) = self.blobs.lock().partial.get_mut(d) {
            p.open = p.open.saturating_sub(1);
            p.last_used = SystemTime::now();
        }
    }

    /// Forgets partial `d` if no download has it open (or, with `force`, whatever has);
    /// returns its size if it is gone.
    pub fn remove_partial(&self, d: &Digest, force: bool) -> Option<u64> {
        let mut b = self.blobs.lock();
        if !force && b.partial.get(d)?.open > 0 {
            return None;
        }
        b.drop_partial(d)
    }

    /// Records a use of complete blob `d` now.
    pub fn touch(&self, d: &Digest) {
        if let Some(c) = self.blobs.lock().complete.get_mut(d) {
            c.last_used = SystemTime::now();
        }
    }

    /// When complete blob `d` was last used.
    pub fn last_used(&self, d: &Digest) -> Option<SystemTime> {
        self.blobs.lock().complete.get(d).map(|c| c.last_used)
    }

    /// Complete blobs whose last use is newer than what their file's mtime says.
    pub fn unpersisted(&self) -> Vec<(Digest, SystemTime)> {
        let b = self.blobs.lock();
        b.complete.iter().filter(|(_, c)| c.last_used > c.persisted).map(|(d, c)| (*d, c.last_used)).collect()
    }

    /// Records that `d`'s mtime now says `at`.
    pub fn persisted(&self, d: &Digest, at: SystemTime) {
        if let Some(c) = self.blobs.lock().complete.get_mut(d) {
            c.persisted = c.persisted.max(at);
        }
    }

    /// Bytes of complete blobs and partial downloads.
    pub fn used(&self) -> u64 {
        self.blobs.lock().used
    }

    /// Complete blobs held.
    pub fn complete_digests(&self) -> Vec<Digest> {
        self.blobs.lock().complete.keys().copied().collect()
    }

    /// Every complete blob and partial download, for eviction.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        let mut all: Vec<Snapshot> = {
            let b = self.blobs.lock();
            let complete = b.complete.iter().map(|(d, c)| {
                let file = c.file.upgrade();
                Snapshot {
                    digest: *d,
                    partial: false,
                    size: c.size,
                    last_used: c.last_used,
                    pinned: false,
                    in_use: file.is_some(),
                    file,
                }
            });
            let partial = b.partial.iter().map(|(d, p)| Snapshot {
                digest: *d,
                partial: true,
                size: p.size,
                last_used: p.last_used,
                pinned: false,
                file: None,
                in_use: p.open > 0,
            });
            complete.chain(partial).collect()
        };
        let pins = self.pins.lock();
        for s in &mut all {
            s.pinned = pins.digests.contains(&s.digest) || pins.recorded.contains_key(&s.digest);
        }
        all
    }

    /// Sets the high mark (bytes) that wakes eviction at once when passed.
    pub fn set_high(&self, high: u64) {
        self.high.store(high, Ordering::Relaxed);
    }

    fn check_pressure(&self, used: u64) {
        if used > self.high.load(Ordering::Relaxed) {
            self.pressure.notify_one();
        }
    }

    /// Sets the configured pins; recorded repository pins of repositories no longer listed
    /// are dropped. Returns whether the recorded pins changed.
    pub fn configure_pins(&self, digests: &[Digest], repositories: &[String]) -> bool {
        let mut p = self.pins.lock();
        p.digests = digests.iter().copied().collect();
        p.repositories = repositories.iter().cloned().collect();
        let keep: HashSet<String> = repositories.iter().map(|r| repository_pin(r)).collect();
        let before = p.recorded.clone();
        p.recorded.retain(|_, why| {
            why.retain(|w| w == PIN_PREHEAT || keep.contains(w));
            !why.is_empty()
        });
        p.recorded != before
    }

    /// Whether `name` is a pinned repository.
    pub fn pins_repository(&self, name: &str) -> bool {
        let p = self.pins.lock();
        !p.repositories.is_empty() && p.repositories.contains(name)
    }

    /// Records (or with `pin == false` removes) the pin `why` of `d`; returns whether the
    /// recorded pins changed.
    pub fn set_pin(&self, d: Digest, why: &str, pin: bool) -> bool {
        let mut p = self.pins.lock();
        if pin {
            p.recorded.entry(d).or_default().insert(why.to_string())
        } else {
            let Some(set) = p.recorded.get_mut(&d) else { return false };
            let changed = set.remove(why);
            if set.is_empty() {
                p.recorded.remove(&d);
            }
            changed
        }
    }

    pub fn is_pinned(&self, d: &Digest) -> bool {
        let p = self.pins.lock();
        p.digests.contains(d) || p.recorded.contains_key(d)
    }

    /// The recorded pins, as `pins.json` holds them.
    pub fn recorded_pins(&self) -> BTreeMap<Digest, BTreeSet<String>> {
        self.pins.lock().recorded.clone()
    }

    pub fn load_pins(&self, recorded: BTreeMap<Digest, BTreeSet<String>>) {
        self.pins.lock().recorded = recorded;
    }
}

impl Blobs {
    fn put_complete(&mut self, d: Digest, c: Complete) {
        self.used += c.size;
        if let Some(old) = self.complete.insert(d, c) {
            self.used -= old.size;
        }
    }

    fn put_partial(&mut self, d: Digest, size: u64) {
        let p = self.partial.entry(d).or_insert(Partial { size: 0, last_used: SystemTime::now(), open: 0 });
        self.used = self.used - p.size + size;
        p.size = size;
    }

    fn drop_partial(&mut self, d: &Digest) -> Option<u64> {
        let p = self.partial.remove(d)?;
        self.used -= p.size;
        Some(p.size)
    }
}
