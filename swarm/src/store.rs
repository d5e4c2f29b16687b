//! The on-disk piece store.
//!
//! Layout under the store root:
//! - `blobs/<hex>`: a complete blob, visible only after every piece was verified and the
//!   whole blob's sha256 matched; `blobs/<hex>.meta` is its metainfo (JSON).
//! - `partial/<hex>.data`: a blob being downloaded, pieces written in place at their offsets;
//!   `partial/<hex>.meta` its metainfo; `partial/<hex>.bits` the packed bitfield of pieces
//!   written and verified, rewritten after each piece so a restarted node resumes.
//! - `tmp/`: uploads and backend fetches in progress; emptied at open.
//! - `pins.json`: the pins recorded by preheats and pinned repositories.
//!
//! Invariants: a file under `blobs/` always matches its digest (commit is a rename after the
//! check, and the data, its metainfo and the directory are synced to disk before the commit
//! returns, so a power loss leaves the old state or the new one); a bit is set in `.bits` only
//! after its piece's bytes were verified and written; on resume every piece marked present is
//! hashed again, so a torn write or a disk error costs that piece, never a wrong byte. A
//! complete blob is checked each time it is opened: its metainfo must parse and name it, and
//! the file must be exactly the metainfo's length; one that fails is removed (that blob is
//! downloaded again, nothing else is lost). All calls that touch the disk run on the
//! [`Blocking`] pool, but for [`BlobFile::send_to`]: an upload's `sendfile(2)` on a plain TCP
//! connection runs where the socket is ready, on the runtime's threads, and reads pages there
//! (cached ones, usually: the blob was just downloaded or served; `swarm.sendfile: false`
//! reads every upload on the pool instead).
//!
//! The store keeps an [`Index`](crate::index) of what it holds, rebuilt at open from a listing
//! (a `stat` per blob, no open): asking for a blob it lacks touches no disk, a complete blob's
//! file is open only while someone uses it, and eviction ranks blobs by their last use, which
//! is written to disk as the data file's mtime (`persist_last_uses`), so it survives a restart.
//!
//! The whole blob's sha256 is computed while it downloads, over the contiguous prefix of
//! present pieces (a piece that extends the prefix is hashed from memory as it is written,
//! later ones from the file once the gap before them fills), so the commit only finishes it.
//! While a client streams the blob from its start, the bytes its response reads are hashed
//! instead ([`PrefixFeeder`]), on the thread that just read them: the pieces that arrived
//! ahead of the prefix are then read once, not twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;
use shoal_core::store_files;
use shoal_core::wire::pack_bits;
use shoal_core::{Digest, DigestHasher, MetaInfo, PieceIndex};

use shoal_core::cache::Reason;

use crate::blocking::Blocking;
use crate::bufpool::BufPool;
use crate::index::{Index, Lookup};
use crate::store_metrics::Evictions;

/// What went wrong in the store. `Io` carries the path; a full disk shows up as `Io` with
/// `ErrorKind::StorageFull`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("blob {digest} failed its final sha256 check (got {got}); partial download discarded")]
    Corrupt { digest: Digest, got: Digest },
    #[error("metainfo file {path} is invalid: {reason}")]
    BadMeta { path: PathBuf, reason: String },
}

impl StoreError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
        let path = path.to_path_buf();
        move |source| StoreError::Io { op, path, source }
    }

    /// Whether the disk is full (the caller frees space or fails the download, keeping the
    /// pieces it has).
    pub fn is_storage_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}

/// The store of one node.
#[derive(Clone)]
pub struct Store {
    root: Arc<PathBuf>,
    blocking: Blocking,
    tmp_seq: Arc<AtomicU64>,
    index: Arc<Index>,
    evictions: Evictions,
    /// `shoal_swarm_digest_read_back_bytes_total`: bytes read back from the store for the
    /// whole-blob sha256, over every download.
    read_back: prometheus::IntCounter,
    /// Downloads check the whole blob's sha256 before commit ([`Store::verify_blob_digest`]).
    verify_digest: bool,
    /// Buffers for the pieces and chunks read to be sent ([`Store::read_shared`]).
    bufs: BufPool,
}

/// The size and free space of the filesystem holding a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsSpace {
    pub total: u64,
    /// Free to an unprivileged process.
    pub free: u64,
}

/// An open blob file, complete or partial, from which verified pieces are read.
pub struct BlobFile {
    meta: MetaInfo,
    file: File,
}

/// A blob being downloaded.
pub struct PartialBlob {
    blob: Arc<BlobFile>,
    root: PathBuf,
    dir: PathBuf,
    index: Arc<Index>,
    /// Which pieces are written and verified; guarded by a sync mutex held only to flip a bit
    /// and write the bitfield file.
    have: Mutex<Vec<bool>>,
    bits_file: File,
    /// The whole blob's sha256 over the contiguous prefix of present pieces, advanced as
    /// pieces arrive so the commit does not read the whole blob again; `None` when the store
    /// does not check it ([`Store::verify_blob_digest`]).
    prefix: Option<Mutex<PrefixHash>>,
    /// Readers streaming the blob from its start that feed the prefix hash what they read
    /// ([`PrefixFeeder`]): while there is one, a piece written ahead of the prefix is left to
    /// it rather than read back.
    feeders: AtomicUsize,
    /// The store's `shoal_swarm_digest_read_back_bytes_total`: bytes read back from the file
    /// for the prefix hash.
    read_back: prometheus::IntCounter,
    /// How far the prefix hash may trail the present pieces and wait for a feeder: past
    /// that its reader is slow (a client reading slower than the download), and the writers
    /// read back, so the commit never has much left to hash.
    feed_lag: AtomicU64,
}

/// [`PartialBlob`]'s `feed_lag`.
const FEED_LAG: u64 = 32 << 20;

/// A sha256 over the blob's first `at` bytes.
struct PrefixHash {
    hasher: DigestHasher,
    at: u64,
}

/// Held by a reader streaming a download from its start, which hands it each chunk it reads
/// ([`PrefixFeeder::feed`]) so the prefix hash takes those bytes instead of reading them
/// again. Dropped, the writers read back again what they skip. It does not keep the
/// download's partial files open: once the download is over, feeding does nothing.
pub struct PrefixFeeder(Weak<PartialBlob>);

impl PrefixFeeder {
    /// Hashes `bytes`, read from the blob at `offset` out of present pieces, if the prefix
    /// hash has reached `offset` and not beyond. Blocking (a sha256 of the chunk).
    pub fn feed(&self, offset: u64, bytes: &[u8]) {
        let Some(partial) = self.0.upgrade() else { return };
        if let Some(prefix) = &partial.prefix {
            let mut prefix = prefix.lock();
            if prefix.at == offset && offset + bytes.len() as u64 <= partial.blob.meta.length() {
                prefix.hasher.update(bytes);
                prefix.at += bytes.len() as u64;
            }
        }
    }
}

impl Drop for PrefixFeeder {
    fn drop(&mut self) {
        if let Some(partial) = self.0.upgrade() {
            partial.feeders.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Store {
    /// Opens (creating) a store at `root`: empties its `tmp/`, lists what it holds into the
    /// index (removing a blob's metainfo without its data and the like), and reads its pins.
    pub fn open(root: impl Into<PathBuf>, blocking: Blocking) -> Result<Store, StoreError> {
        let root = root.into();
        for sub in ["blobs", "partial", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(StoreError::io("create", &p))?;
        }
        let tmp = root.join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let store = Store {
            index: Arc::new(Index::new()),
            evictions: Evictions::new(),
            read_back: prometheus::IntCounter::new(
                "shoal_swarm_digest_read_back_bytes_total",
                "Bytes read back from the store for the whole-blob sha256: pieces that arrived ahead of the verified prefix and no streaming client fed it",
            )
            .expect("valid metric"),
            root: Arc::new(root),
            blocking,
            tmp_seq: Arc::new(AtomicU64::new(0)),
            verify_digest: true,
            bufs: BufPool::new(),
        };
        store.scan_complete()?;
        store.scan_partial()?;
        store.index.load_pins(read_pins(&store.pins_path()));
        Ok(store)
    }

    /// Reads `len` bytes at `offset` of `file` on the blocking pool into a reused buffer
    /// ([`BufPool`]), for bytes that go to a socket: the buffer returns to the pool when the
    /// last clone of the answer is dropped.
    pub async fn read_shared(&self, file: Arc<BlobFile>, offset: u64, len: usize) -> io::Result<Bytes> {
        self.read_feeding(file, offset, len, None).await
    }

    /// [`Store::read_shared`], for a reader streaming a download from its start with a
    /// `feeder`: the bytes read go to it too, on the thread that read them, while they are in
    /// its cache.
    pub async fn read_feeding(
        &self,
        file: Arc<BlobFile>,
        offset: u64,
        len: usize,
        feeder: Option<Arc<PrefixFeeder>>,
    ) -> io::Result<Bytes> {
        let bufs = self.bufs.clone();
        self.blocking
            .run(move || {
                let mut buf = bufs.take(len);
                file.read_into(offset, len, &mut buf)?;
                if let Some(f) = feeder {
                    f.feed(offset, &buf);
                }
                Ok(bufs.share(buf))
            })
            .await
    }

    /// The pool of reused buffers: read buffers for bytes going to a socket, and the receive
    /// buffers of piece frames.
    pub(crate) fn buffers(&self) -> &BufPool {
        &self.bufs
    }

    /// Frees the read buffers that stayed idle since the last call ([`BufPool::trim`]);
    /// returns the bytes freed.
    pub fn trim_buffers(&self) -> usize {
        self.bufs.trim()
    }

    /// Bytes of read buffers idle in the pool: 0 while no piece or chunk was read to be sent.
    #[cfg(test)]
    pub(crate) fn idle_buffer_bytes(&self) -> usize {
        self.bufs.idle_bytes()
    }

    /// Streams `[start, end)` of `file` in 1 MiB chunks read on the blocking pool into reused
    /// buffers.
    pub fn stream(
        &self,
        file: &Arc<BlobFile>,
        start: u64,
        end: u64,
    ) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static + use<> {
        const CHUNK: u64 = 1 << 20;
        let (file, store) = (file.clone(), self.clone());
        futures::stream::unfold(start, move |off| {
            let (file, store) = (file.clone(), store.clone());
            async move {
                if off >= end {
                    return None;
                }
                let n = usize::try_from((end - off).min(CHUNK)).expect("at most a chunk");
                let res = store.read_shared(file, off, n).await;
                Some((res, off + n as u64))
            }
        })
    }

    /// Whether downloads opened from now on check the whole blob's sha256 before commit
    /// (`swarm.verify_blob_digest`; on by default). Pieces are verified against the metainfo
    /// either way.
    pub fn verify_blob_digest(&mut self, on: bool) {
        self.verify_digest = on;
    }

    /// Lists `blobs/` into the index. A data file without its metainfo, or the reverse, is
    /// the leftover of an interrupted commit or removal: it goes.
    fn scan_complete(&self) -> Result<(), StoreError> {
        let dir = self.root.join("blobs");
        let rd = fs::read_dir(&dir).map_err(StoreError::io("list", &dir))?;
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            } else if let Some(hex) = name.strip_suffix(".meta") {
                if Digest::from_hex(hex).is_ok() && !dir.join(hex).exists() {
                    let _ = fs::remove_file(e.path());
                }
            } else if let Ok(d) = Digest::from_hex(name) {
                let Ok(m) = e.metadata() else { continue };
                if !self.complete_meta_path(&d).exists() {
                    tracing::warn!(%d, "stored blob has no metainfo; removed");
                    let _ = fs::remove_file(e.path());
                    self.evictions.record(Reason::Corrupt, m.len());
                    continue;
                }
                self.index.found_complete(d, m.len(), m.modified().unwrap_or_else(|_| SystemTime::now()));
            }
        }
        Ok(())
    }

    /// Lists `partial/` into the index; a `.meta` or `.bits` without its `.data` goes.
    fn scan_partial(&self) -> Result<(), StoreError> {
        let dir = self.root.join("partial");
        let rd = fs::read_dir(&dir).map_err(StoreError::io("list", &dir))?;
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((hex, ext)) = name.split_once('.') else { continue };
            let Ok(d) = Digest::from_hex(hex) else { continue };
            match ext {
                "data" => {
                    let Ok(m) = e.metadata() else { continue };
                    self.index.found_partial(d, m.len(), m.modified().unwrap_or_else(|_| SystemTime::now()));
                }
                "meta" | "bits" if !dir.join(format!("{hex}.data")).exists() => {
                    let _ = fs::remove_file(e.path());
                }
                "meta.tmp" => {
                    let _ = fs::remove_file(e.path());
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blocking(&self) -> &Blocking {
        &self.blocking
    }

    pub(crate) fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub(crate) fn evictions(&self) -> &Evictions {
        &self.evictions
    }

    /// `shoal_swarm_digest_read_back_bytes_total`, for the node's registry.
    pub(crate) fn read_back_counter(&self) -> &prometheus::IntCounter {
        &self.read_back
    }

    /// Path of the complete blob (it may not exist).
    pub fn complete_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.hex())
    }

    fn complete_meta_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(format!("{}.meta", d.hex()))
    }

    fn pins_path(&self) -> PathBuf {
        self.root.join("pins.json")
    }

    /// A fresh path under `tmp/` on the store's file system, for staging.
    pub fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}-{n}", std::process::id()))
    }

    /// Whether the store holds `d` complete (from the index: no disk access).
    pub fn contains(&self, d: &Digest) -> bool {
        self.index.contains(d)
    }

    /// Opens a complete blob, if the store has it: the file already open if anyone uses it,
    /// else opened and checked (see the module docs). A blob that fails the check is removed
    /// and reported absent, so it is downloaded again.
    pub async fn open_complete(&self, d: Digest) -> Result<Option<Arc<BlobFile>>, StoreError> {
        match self.index.lookup(&d) {
            Lookup::Unknown => return Ok(None),
            Lookup::Open(f) => return Ok(Some(f)),
            Lookup::Closed => {}
        }
        let (data, meta) = (self.complete_path(&d), self.complete_meta_path(&d));
        let opened = self.blocking.run(move || open_checked(d, &data, &meta)).await;
        match opened {
            Ok(Some(file)) => Ok(self.index.adopt(d, Arc::new(file))),
            Ok(None) => {
                // Gone from the disk behind the store's back.
                self.index.remove_complete(&d, true);
                Ok(None)
            }
            Err(Opened::Corrupt(why)) => {
                tracing::warn!(%d, "stored blob is corrupt ({why}); removed, it will be downloaded again");
                self.evict(d, true, Reason::Corrupt).await?;
                Ok(None)
            }
            Err(Opened::Io(e)) => Err(e),
        }
    }

    /// Digests of every complete blob in the store.
    pub fn complete_digests(&self) -> Vec<Digest> {
        self.index.complete_digests()
    }

    /// Bytes of complete blobs and partial downloads in the store.
    pub fn used(&self) -> u64 {
        self.index.used()
    }

    /// Records a use of complete blob `d` (served to a client or a peer) for eviction's
    /// least-recently-used order; in memory until [`Store::persist_last_uses`].
    pub fn touch(&self, d: &Digest) {
        self.index.touch(d);
    }

    /// Writes the last uses recorded since the previous call to disk, as each data file's
    /// mtime, where the next start finds them.
    pub async fn persist_last_uses(&self) {
        let todo = self.index.unpersisted();
        if todo.is_empty() {
            return;
        }
        let store = self.clone();
        self.blocking
            .run(move || {
                for (d, at) in todo {
                    let path = store.complete_path(&d);
                    match File::open(&path).and_then(|f| f.set_modified(at)) {
                        Ok(()) => store.index.persisted(&d, at),
                        Err(e) => tracing::debug!(%d, "cannot record the last use: {e}"),
                    }
                }
            })
            .await;
    }

    /// For each partial download in `partials`, the bytes of its data file that the filesystem
    /// does not hold yet (its length less its allocated blocks): what finishing it will take
    /// from the free space. A file that cannot be read counts 0.
    pub async fn unwritten(&self, partials: Vec<(Digest, u64)>) -> HashMap<Digest, u64> {
        use std::os::unix::fs::MetadataExt as _;
        let dir = self.root.join("partial");
        self.blocking
            .run(move || {
                partials
                    .into_iter()
                    .map(|(d, len)| {
                        let held = fs::metadata(dir.join(format!("{}.data", d.hex())))
                            .map_or(len, |m| m.blocks().saturating_mul(512));
                        (d, len.saturating_sub(held))
                    })
                    .collect()
            })
            .await
    }

    /// The size and free space of the store's filesystem.
    pub async fn space(&self) -> Result<FsSpace, StoreError> {
        let root = self.root.clone();
        self.blocking.run(move || space_of(&root)).await
    }

    /// Moves a staged file whose content already matched `meta` into `blobs/`, synced to disk
    /// first.
    pub async fn commit_verified(&self, meta: MetaInfo, staged: PathBuf) -> Result<Arc<BlobFile>, StoreError> {
        let d = meta.digest();
        let data = self.complete_path(&d);
        let meta_path = self.complete_meta_path(&d);
        let index = self.index.clone();
        self.blocking
            .run(move || {
                File::open(&staged).and_then(|f| f.sync_all()).map_err(StoreError::io("sync", &staged))?;
                write_meta(&meta_path, &meta)?;
                let len = meta.length();
                let file = {
                    let _gate = index.gate.lock();
                    fs::rename(&staged, &data).map_err(StoreError::io("commit", &data))?;
                    let file = File::open(&data).map_err(StoreError::io("open", &data))?;
                    let file = Arc::new(BlobFile { meta, file });
                    index.committed(d, len, &file);
                    file
                };
                sync_dir(data.parent().expect("blobs/ holds it"))?;
                Ok(file)
            })
            .await
    }

    /// Opens or resumes a download of `meta`. Pieces the bitfield marks present are hashed
    /// again; any that fail are cleared. A `.meta` or `.bits` that cannot be read costs this
    /// blob's progress only: it starts over.
    pub async fn open_partial(&self, meta: MetaInfo) -> Result<Arc<PartialBlob>, StoreError> {
        let root = self.root.to_path_buf();
        let index = self.index.clone();
        let verify = self.verify_digest;
        let read_back = self.read_back.clone();
        self.blocking
            .run(move || {
                let d = meta.digest();
                {
                    // Open before its files are touched, so no eviction removes them under us.
                    let _gate = index.gate.lock();
                    index.partial_opened(d, meta.length());
                }
                PartialBlob::open(&root, meta, index.clone(), verify, read_back)
                    .inspect_err(|_| index.partial_closed(&d))
            })
            .await
            .map(Arc::new)
    }

    /// Evicts complete blob `d` unless someone has it open (or, with `force`, whatever has):
    /// it leaves the index, then its files go. Returns its size if it was evicted, and counts
    /// it under `reason`.
    pub(crate) async fn evict(&self, d: Digest, force: bool, reason: Reason) -> Result<Option<u64>, StoreError> {
        let store = self.clone();
        let size = self
            .blocking
            .run(move || {
                let _gate = store.index.gate.lock();
                let Some(size) = store.index.remove_complete(&d, force) else { return Ok(None) };
                for p in [store.complete_path(&d), store.complete_meta_path(&d)] {
                    remove_if_present(&p)?;
                }
                Ok(Some(size))
            })
            .await?;
        if let Some(size) = size {
            self.evictions.record(reason, size);
        }
        Ok(size)
    }

    /// Removes partial download `d` unless a download has it open; returns its size if it
    /// was removed, counted under `reason`.
    pub(crate) async fn remove_partial(&self, d: Digest, reason: Reason) -> Result<Option<u64>, StoreError> {
        let store = self.clone();
        let size = self
            .blocking
            .run(move || {
                let _gate = store.index.gate.lock();
                let Some(size) = store.index.remove_partial(&d, false) else { return Ok(None) };
                let dir = store.root.join("partial");
                for ext in ["data", "meta", "bits"] {
                    remove_if_present(&dir.join(format!("{}.{ext}", d.hex())))?;
                }
                Ok(Some(size))
            })
            .await?;
        if let Some(size) = size {
            self.evictions.record(reason, size);
        }
        Ok(size)
    }

    /// Records (or with `pin == false` removes) pin `why` of `d`, and writes the pins to disk
    /// if they changed.
    pub async fn set_pin(&self, d: Digest, why: &str, pin: bool) -> Result<(), StoreError> {
        if self.index.set_pin(d, why, pin) {
            self.write_pins().await?;
        }
        Ok(())
    }

    /// Whether `d` is pinned (configured, preheated with a pin, or in a pinned repository).
    pub fn is_pinned(&self, d: &Digest) -> bool {
        self.index.is_pinned(d)
    }

    /// Sets the configured pins (see `swarm.store.pin`); a recorded repository pin whose
    /// repository is no longer configured goes.
    pub(crate) fn configure_pins(&self, digests: &[Digest], repositories: &[String]) -> Result<(), StoreError> {
        if self.index.configure_pins(digests, repositories) {
            write_pins(&self.pins_path(), &self.index.recorded_pins())?;
        }
        Ok(())
    }

    async fn write_pins(&self) -> Result<(), StoreError> {
        let store = self.clone();
        self.blocking.run(move || write_pins(&store.pins_path(), &store.index.recorded_pins())).await
    }
}

/// Why a complete blob could not be opened.
enum Opened {
    /// It failed its checks: it must go.
    Corrupt(String),
    Io(StoreError),
}

/// Opens complete blob `d`, checking that its metainfo parses and names it and that the data
/// file is exactly as long as the metainfo says. `Ok(None)` if the data file is gone.
fn open_checked(d: Digest, data: &Path, meta: &Path) -> Result<Option<BlobFile>, Opened> {
    let file = match File::open(data) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Opened::Io(StoreError::io("open", data)(e))),
    };
    let meta = match read_meta(meta) {
        Ok(m) => m,
        Err(StoreError::Io { source, .. }) if source.kind() != io::ErrorKind::NotFound => {
            return Err(Opened::Io(StoreError::io("read", meta)(source)));
        }
        Err(e) => return Err(Opened::Corrupt(format!("{e}"))),
    };
    if meta.digest() != d {
        return Err(Opened::Corrupt(format!("its metainfo is for {}", meta.digest())));
    }
    let len = file.metadata().map_err(|e| Opened::Io(StoreError::io("stat", data)(e)))?.len();
    if len != meta.length() {
        return Err(Opened::Corrupt(format!("the file is {len} bytes, its metainfo says {}", meta.length())));
    }
    Ok(Some(BlobFile { meta, file }))
}

fn remove_if_present(p: &Path) -> Result<(), StoreError> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", p)(e)),
    }
}

/// Makes the entries of `dir` (a rename into it) durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(StoreError::io("sync", dir))
}

pub(crate) fn space_of(root: &Path) -> Result<FsSpace, StoreError> {
    let st = rustix::fs::statvfs(root).map_err(|e| StoreError::io("statvfs", root)(e.into()))?;
    Ok(FsSpace { total: st.f_blocks.saturating_mul(st.f_frsize), free: st.f_bavail.saturating_mul(st.f_frsize) })
}

/// The pins in `path`; a missing file is none, an unreadable one is logged and counts as none
/// (the pins it held are lost, nothing else).
fn read_pins(path: &Path) -> BTreeMap<Digest, BTreeSet<String>> {
    match fs::read(path) {
        Ok(text) => serde_json::from_slice(&text).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), "pins file is invalid, pins start empty: {e}");
            BTreeMap::new()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot read the pins file, pins start empty: {e}");
            BTreeMap::new()
        }
    }
}

fn write_pins(path: &Path, pins: &BTreeMap<Digest, BTreeSet<String>>) -> Result<(), StoreError> {
    let json = serde_json::to_vec_pretty(pins).expect("pins serialize");
    write_durably(path, &json)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename: a crash leaves the
/// old content or the new.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp_name = path.file_name().expect("a file path").to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(StoreError::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(StoreError::io("rename", path))
}

fn read_meta(path: &Path) -> Result<MetaInfo, StoreError> {
    // Bounded: a file longer than any metainfo is refused without reading it all.
    let mut text = Vec::new();
    File::open(path)
        .and_then(|f| f.take(store_files::MAX_META_LEN as u64 + 1).read_to_end(&mut text))
        .map_err(StoreError::io("read", path))?;
    store_files::parse_meta(&text).map_err(|e| StoreError::BadMeta { path: path.to_path_buf(), reason: e.to_string() })
}

fn write_meta(path: &Path, meta: &MetaInfo) -> Result<(), StoreError> {
    write_durably(path, &serde_json::to_vec(meta).expect("metainfo serializes"))
}

impl BlobFile {
    pub fn meta(&self) -> &MetaInfo {
        &self.meta
    }

    /// Reads `len` bytes at `offset` (the caller keeps it in bounds). The bytes go straight
    /// into the new buffer's spare capacity: zeroing a piece first, only to overwrite it, was
    /// about 2% of a loaded agent's CPU.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len);
        self.read_into(offset, len, &mut buf)?;
        Ok(buf)
    }

    /// As [`BlobFile::read_at`], into `buf` (emptied first; a buffer of exactly `len` bytes'
    /// capacity from a [`BufPool`](crate::bufpool::BufPool) is read into without zeroing).
    pub fn read_into(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        buf.reserve_exact(len);
        if buf.capacity() != len {
            // Reading into the spare capacity would read past `len`: zero and read exactly.
            buf.resize(len, 0);
            return self.file.read_exact_at(buf, offset);
        }
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            let n = rustix::io::pread(&self.file, rustix::buffer::spare_capacity(buf), at).map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{len} bytes at {offset}: file ends"),
                ));
            }
        }
        Ok(())
    }

    /// Reads one piece.
    pub fn read_piece(&self, i: PieceIndex) -> io::Result<Bytes> {
        self.read_at(self.meta.piece_offset(i), self.meta.piece_len(i) as usize).map(Bytes::from)
    }

    /// One `sendfile(2)` of up to `len` bytes at `offset` of this file to `out`: the bytes
    /// go from the page cache to the socket without a copy through user memory. The file's
    /// own position is not used, so uploads of one file may run at once. Returns how many
    /// bytes went (0 at the end of the file; on a non-blocking socket, `WouldBlock` when it
    /// takes nothing). It reads the file on the calling thread: cached pages cost nothing,
    /// others wait for the disk.
    pub(crate) fn send_to(&self, out: impl std::os::fd::AsFd, offset: u64, len: usize) -> io::Result<usize> {
        let mut at = offset;
        rustix::fs::sendfile(out, &self.file, Some(&mut at), len).map_err(io::Error::from)
    }
}

impl PartialBlob {
    fn open(
        root: &Path,
        meta: MetaInfo,
        index: Arc<Index>,
        verify_digest: bool,
        read_back: prometheus::IntCounter,
    ) -> Result<PartialBlob, StoreError> {
        let dir = root.join("partial");
        let hex = meta.digest().hex();
        let data_path = dir.join(format!("{hex}.data"));
        let meta_path = dir.join(format!("{hex}.meta"));
        let bits_path = dir.join(format!("{hex}.bits"));
        let n = meta.num_pieces();
        let nbytes = (n as usize).div_ceil(8);

        // Resume only if the stored metainfo is the same one; otherwise start over.
        let resumable = matches!(read_meta(&meta_path), Ok(m) if m == meta);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(StoreError::io("open", &data_path))?;
        file.set_len(meta.length()).map_err(StoreError::io("allocate", &data_path))?;
        let mut claimed = vec![false; n as usize];
        if resumable {
            if let Ok(f) = File::open(&bits_path) {
                let mut got = Vec::new();
                if f.take(nbytes as u64 + 1).read_to_end(&mut got).is_ok()
                    && let Some(bits) = store_files::parse_bits(&got, n)
                {
                    claimed = bits;
                }
            }
        } else {
            write_meta(&meta_path, &meta)?;
        }
        let blob = BlobFile { meta, file };
        // Hash again every piece the bitfield claims.
        let have: Vec<bool> = blob
            .meta
            .all_pieces()
            .map(|p| claimed[p.as_usize()] && blob.read_piece(p).is_ok_and(|d| blob.meta.verify_piece(p, &d)))
            .collect();
        let bits_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&bits_path)
            .map_err(StoreError::io("open", &bits_path))?;
        let packed = pack_bits(n, |i| have[i as usize]);
        bits_file.set_len(nbytes as u64).map_err(StoreError::io("allocate", &bits_path))?;
        bits_file.write_all_at(&packed, 0).map_err(StoreError::io("write", &bits_path))?;
        let prefix = verify_digest.then(|| Mutex::new(PrefixHash { hasher: DigestHasher::new(), at: 0 }));
        Ok(PartialBlob {
            blob: Arc::new(blob),
            root: root.to_path_buf(),
            dir,
            index,
            have: Mutex::new(have),
            bits_file,
            prefix,
            feeders: AtomicUsize::new(0),
            read_back,
            feed_lag: AtomicU64::new(FEED_LAG),
        })
    }

    /// The file to read verified pieces from (valid after commit too).
    pub fn file(&self) -> &Arc<BlobFile> {
        &self.blob
    }

    pub fn meta(&self) -> &MetaInfo {
        &self.blob.meta
    }

    /// A feeder for a reader streaming this blob from its start; `None` when the store does
    /// not check the whole blob's sha256.
    pub fn feeder(self: &Arc<Self>) -> Option<PrefixFeeder> {
        self.prefix.as_ref()?;
        self.feeders.fetch_add(1, Ordering::Relaxed);
        Some(PrefixFeeder(Arc::downgrade(self)))
    }

    /// Which pieces are present.
    pub fn have(&self) -> Vec<bool> {
        self.have.lock().clone()
    }

    /// Writes a piece the caller has verified, then records it, and advances the prefix hash
    /// if the piece extends it. Blocking. Returns the CPU-seconds the write of the data itself
    /// took on this thread (`shoal_swarm_store_write_seconds_total`).
    pub fn write_piece(&self, i: PieceIndex, data: &[u8]) -> Result<f64, StoreError> {
        let path = || self.dir.join(format!("{}.data", self.blob.meta.digest().hex()));
        let started = crate::metrics::thread_cpu_secs();
        self.blob
            .file
            .write_all_at(data, self.blob.meta.piece_offset(i))
            .map_err(|e| StoreError::io("write", &path())(e))?;
        let write_secs = (crate::metrics::thread_cpu_secs() - started).max(0.0);
        {
            let mut have = self.have.lock();
            have[i.as_usize()] = true;
            let byte_idx = i.as_usize() / 8;
            let mut byte = 0u8;
            for (k, h) in have[byte_idx * 8..].iter().take(8).enumerate() {
                if *h {
                    byte |= 0x80 >> k;
                }
            }
            let bits_path = self.dir.join(format!("{}.bits", self.blob.meta.digest().hex()));
            self.bits_file.write_all_at(&[byte], byte_idx as u64).map_err(StoreError::io("write", &bits_path))?;
        }
        // Another thread extending the prefix picks this piece up when it gets there; a piece
        // both miss is hashed at commit. Pieces written earlier are read back unless a
        // streaming reader will hand them over.
        if let Some(mut prefix) = self.prefix.as_ref().and_then(|p| p.try_lock()) {
            let read_back = self.feeders.load(Ordering::Relaxed) == 0;
            self.advance_prefix(&mut prefix, Some((i, data)), read_back)
                .map_err(|e| StoreError::io("read", &path())(e))?;
        }
        Ok(write_secs)
    }

    /// Hashes present pieces from `prefix.at` on, using `fresh` (a piece just written)
    /// instead of reading it back; without `read_back`, stops at the first byte it would have
    /// to read.
    fn advance_prefix(
        &self,
        prefix: &mut PrefixHash,
        fresh: Option<(PieceIndex, &[u8])>,
        read_back: bool,
    ) -> io::Result<()> {
        let meta = &self.blob.meta;
        while let Some(next) = meta.piece_at(prefix.at) {
            if !self.have.lock()[next.as_usize()] {
                break;
            }
            let (start, end) = (meta.piece_offset(next), meta.piece_offset(next) + u64::from(meta.piece_len(next)));
            match fresh {
                Some((i, data)) if i == next && prefix.at == start => prefix.hasher.update(data),
                _ if !read_back && self.present_run(prefix.at) < self.feed_lag.load(Ordering::Relaxed) => break,
                _ => {
                    // The whole piece, or the rest of it past what a streaming reader fed.
                    let len = usize::try_from(end - prefix.at).expect("at most a piece");
                    prefix.hasher.update(&self.blob.read_at(prefix.at, len)?);
                    self.read_back.inc_by(len as u64);
                }
            }
            prefix.at = end;
        }
        Ok(())
    }

    /// Bytes of present pieces from `from` on, counted up to `feed_lag`.
    fn present_run(&self, from: u64) -> u64 {
        let (meta, limit) = (&self.blob.meta, self.feed_lag.load(Ordering::Relaxed));
        let have = self.have.lock();
        let mut at = from;
        while let Some(k) = meta.piece_at(at).filter(|_| at - from < limit) {
            if !have[k.as_usize()] {
                break;
            }
            at = meta.piece_offset(k) + u64::from(meta.piece_len(k));
        }
        at - from
    }

    /// Checks the whole blob's sha256 (unless the store skips it) and moves it into `blobs/`,
    /// synced to disk: the data, then its metainfo, then the rename and the directory.
    /// Blocking. On a mismatch the partial files are removed: its pieces all verified yet the
    /// whole is wrong, so the metainfo itself was bad.
    pub fn commit(&self) -> Result<(), StoreError> {
        let meta = &self.blob.meta;
        let digest = meta.digest();
        let hex = digest.hex();
        let data_path = self.dir.join(format!("{hex}.data"));
        let missing = |piece: u32| StoreError::Io {
            op: "commit",
            path: data_path.clone(),
            source: io::Error::other(format!("piece {piece} is missing")),
        };
        let got = match &self.prefix {
            Some(prefix) => {
                let mut prefix = prefix.lock();
                self.advance_prefix(&mut prefix, None, true).map_err(StoreError::io("read", &data_path))?;
                if let Some(piece) = meta.piece_at(prefix.at) {
                    return Err(missing(piece.get()));
                }
                std::mem::take(&mut prefix.hasher).finish()
            }
            None => {
                if let Some(first) = self.have.lock().iter().position(|h| !h) {
                    return Err(missing(u32::try_from(first).expect("piece indexes fit u32")));
                }
                digest
            }
        };
        let remove = |ext: &str| {
            let _ = fs::remove_file(self.dir.join(format!("{hex}.{ext}")));
        };
        if got != digest {
            let _gate = self.index.gate.lock();
            for ext in ["data", "meta", "bits"] {
                remove(ext);
            }
            self.index.remove_partial(&digest, true);
            return Err(StoreError::Corrupt { digest, got });
        }
        self.blob.file.sync_all().map_err(StoreError::io("sync", &data_path))?;
        let blobs = self.root.join("blobs");
        write_meta(&blobs.join(format!("{hex}.meta")), meta)?;
        let dest = blobs.join(&hex);
        {
            let _gate = self.index.gate.lock();
            fs::rename(&data_path, &dest).map_err(StoreError::io("commit", &dest))?;
            self.index.committed(digest, meta.length(), &self.blob);
        }
        sync_dir(&blobs)?;
        remove("meta");
        remove("bits");
        Ok(())
    }
}

impl Drop for PartialBlob {
    fn drop(&mut self) {
        self.index.partial_closed(&self.blob.meta.digest());
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // Test data sizes are small.
mod tests {
    use super::*;
    use shoal_core::metainfo::{MIN_PIECE_LEN, MetaInfoBuilder};

    fn meta_of(data: &[u8]) -> MetaInfo {
        let mut b = MetaInfoBuilder::with_piece_length(data.len() as u64, MIN_PIECE_LEN).unwrap();
        b.update(data);
        b.finish().unwrap()
    }

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Piece `i`'s bytes within the whole blob `data`.
    fn piece_bytes<'a>(meta: &MetaInfo, data: &'a [u8], i: PieceIndex) -> &'a [u8] {
        let o = meta.piece_offset(i) as usize;
        &data[o..o + meta.piece_len(i) as usize]
    }

    #[tokio::test]
    async fn write_resume_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(3 * MIN_PIECE_LEN as usize + 10);
        let meta = meta_of(&data);
        let p = store.open_partial(meta.clone()).await.unwrap();
        assert_eq!(p.have(), vec![false; 4]);
        let write = |p: &PartialBlob, k: u32| {
            let i = meta.piece(k).unwrap();
            p.write_piece(i, piece_bytes(&meta, &data, i)).unwrap();
        };
        for k in [0, 2] {
            write(&p, k);
        }
        drop(p);
        // Resume: the two pieces are still there.
        let p = store.open_partial(meta.clone()).await.unwrap();
        assert_eq!(p.have(), vec![true, false, true, false]);
        for k in [1, 3] {
            write(&p, k);
        }
        p.commit().unwrap();
        let f = store.open_complete(meta.digest()).await.unwrap().unwrap();
        assert_eq!(f.read_at(0, data.len()).unwrap(), data);
        assert_eq!(store.complete_digests(), vec![meta.digest()]);
        assert!(fs::read_dir(dir.path().join("partial")).unwrap().next().is_none());
    }

    /// Pieces written in any order from several threads at once: the prefix hash catches up
    /// with whatever a racing writer skipped, and the commit checks the true sha256.
    #[tokio::test]
    async fn pieces_in_any_order_from_many_threads_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = Arc::new(blob(9 * MIN_PIECE_LEN as usize + 123));
        let meta = meta_of(&data);
        let p = store.open_partial(meta.clone()).await.unwrap();
        let order = [7u32, 0, 3, 1, 9, 2, 8, 4, 6, 5];
        std::thread::scope(|s| {
            for chunk in order.chunks(3) {
                let (p, data, meta) = (&p, &data, &meta);
                s.spawn(move || {
                    for &k in chunk {
                        let i = meta.piece(k).unwrap();
                        p.write_piece(i, piece_bytes(meta, data, i)).unwrap();
                    }
                });
            }
        });
        p.commit().unwrap();
        let f = store.open_complete(meta.digest()).await.unwrap().unwrap();
        assert!(f.read_at(0, data.len()).unwrap() == *data);
    }

    /// A reader streaming the download from its start, as `Swarm::stream` does: after each
    /// piece is written it reads (in chunks of `chunk` bytes, from the file) and feeds the
    /// prefix hash whatever is present from its position on, as long as `stop` allows.
    fn stream_while_writing(
        p: &Arc<PartialBlob>,
        data: &[u8],
        order: &[u32],
        chunk: u64,
        stop: u64,
    ) -> (u64, Option<PrefixFeeder>) {
        let meta = p.meta().clone();
        let mut feeder = p.feeder();
        let mut pos = 0u64;
        for &k in order {
            let i = meta.piece(k).unwrap();
            p.write_piece(i, piece_bytes(&meta, data, i)).unwrap();
            while let Some(f) = feeder.as_ref().filter(|_| pos < stop.min(meta.length())) {
                let piece = meta.piece_at(pos).unwrap();
                if !p.have()[piece.as_usize()] {
                    break;
                }
                let piece_end = meta.piece_offset(piece) + u64::from(meta.piece_len(piece));
                let len = piece_end.min(pos + chunk).min(stop) - pos;
                let bytes = p.file().read_at(pos, len as usize).unwrap();
                f.feed(pos, &bytes);
                pos += len;
            }
            if pos >= stop {
                feeder = None;
            }
        }
        (pos, feeder)
    }

    /// With a reader streaming from the start, the pieces that arrived ahead of the prefix
    /// are hashed from what the reader read: nothing is read back for the sha256, and the
    /// commit checks it as ever. Chunks smaller than a piece, and a last piece shorter than
    /// the others, included.
    #[tokio::test]
    async fn a_streaming_reader_feeds_the_digest_and_nothing_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(9 * MIN_PIECE_LEN as usize + 123);
        let meta = meta_of(&data);
        for chunk in [u64::from(MIN_PIECE_LEN), u64::from(MIN_PIECE_LEN) / 3 + 1] {
            let p = store.open_partial(meta.clone()).await.unwrap();
            let (pos, _feeder) = stream_while_writing(&p, &data, &[7, 0, 3, 1, 9, 2, 8, 4, 6, 5], chunk, u64::MAX);
            assert_eq!(pos, data.len() as u64, "chunk {chunk}: the reader read it all");
            p.commit().unwrap();
            assert_eq!(store.read_back_counter().get(), 0, "chunk {chunk}: nothing read back for the sha256");
            let f = store.open_complete(meta.digest()).await.unwrap().unwrap();
            assert!(f.read_at(0, data.len()).unwrap() == data);
            store.evict(meta.digest(), true, Reason::Size).await.unwrap();
        }
    }

    /// Without a reader every piece written ahead of the prefix is read back once; a reader
    /// that stops mid-piece leaves the rest of the piece and everything after it to the
    /// writers and the commit, which still finds the true sha256.
    #[tokio::test]
    async fn without_a_reader_the_writers_read_back_what_is_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(9 * MIN_PIECE_LEN as usize + 123);
        let meta = meta_of(&data);
        let order = [7u32, 0, 3, 1, 9, 2, 8, 4, 6, 5];
        // No reader: pieces 1, 2 (after 0 and 1 came), then 3, 4 (when 2 came)... Piece 0
        // arrives second and 1 fourth, and each piece that did not extend the prefix when it
        // came is read back once.
        let p = store.open_partial(meta.clone()).await.unwrap();
        for &k in &order {
            let i = meta.piece(k).unwrap();
            p.write_piece(i, piece_bytes(&meta, &data, i)).unwrap();
        }
        let ahead: u64 = [7u32, 3, 9, 8, 6].iter().map(|&k| u64::from(meta.piece_len(meta.piece(k).unwrap()))).sum();
        assert_eq!(store.read_back_counter().get(), ahead);
        p.commit().unwrap();
        store.evict(meta.digest(), true, Reason::Size).await.unwrap();

        // A reader that stops half-way through piece 2 and goes away.
        let p = store.open_partial(meta.clone()).await.unwrap();
        let stop = 2 * u64::from(MIN_PIECE_LEN) + u64::from(MIN_PIECE_LEN) / 2;
        let (pos, feeder) = stream_while_writing(&p, &data, &order, u64::from(MIN_PIECE_LEN) / 4, stop);
        assert_eq!(pos, stop);
        assert!(feeder.is_none());
        p.commit().unwrap();
        assert!(store.read_back_counter().get() > ahead, "the rest was read back");
        let f = store.open_complete(meta.digest()).await.unwrap().unwrap();
        assert!(f.read_at(0, data.len()).unwrap() == data);
    }

    /// A reader that does not keep up (it never feeds here): once the present pieces run
    /// `feed_lag` past the prefix hash, the writers read them back after all.
    #[tokio::test]
    async fn a_reader_that_falls_behind_leaves_the_hash_to_the_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(10 * MIN_PIECE_LEN as usize);
        let meta = meta_of(&data);
        let p = store.open_partial(meta.clone()).await.unwrap();
        p.feed_lag.store(3 * u64::from(MIN_PIECE_LEN), Ordering::Relaxed);
        let _feeder = p.feeder().unwrap();
        let piece = u64::from(MIN_PIECE_LEN);
        // (piece written, bytes read back by then): 1 to 3 wait, the prefix cannot pass the
        // missing piece 0; 0 extends it, and of the run 1-3 after it the writer reads back
        // piece 1, which leaves the prefix trailing by less than the lag; 5 leaves it there
        // (pieces 2-3 present after it); 4 makes the run 2-5: 2 and 3 are read back, 4 is
        // hashed as it is written, and the prefix waits before 5.
        for (k, read_back) in [(1, 0), (2, 0), (3, 0), (0, piece), (5, piece), (4, 3 * piece)] {
            let i = meta.piece(k).unwrap();
            p.write_piece(i, piece_bytes(&meta, &data, i)).unwrap();
            assert_eq!(store.read_back_counter().get(), read_back, "after piece {k}");
        }
        for k in 6..10 {
            let i = meta.piece(k).unwrap();
            p.write_piece(i, piece_bytes(&meta, &data, i)).unwrap();
        }
        p.commit().unwrap();
        // Every piece but 0 and 4, each hashed as it was written: it extended the prefix.
        assert_eq!(store.read_back_counter().get(), 8 * piece);
    }

    /// What a feeder hands over is checked like everything else: bytes that are not the
    /// blob's make the commit fail, and the partial download is discarded.
    #[tokio::test]
    async fn a_feeder_cannot_make_a_wrong_blob_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(3 * MIN_PIECE_LEN as usize);
        let meta = meta_of(&data);
        let p = store.open_partial(meta.clone()).await.unwrap();
        let feeder = p.feeder().unwrap();
        // Pieces 1 and 2 come first and are left to the reader; piece 0 extends the prefix.
        for k in [1, 2, 0] {
            let i = meta.piece(k).unwrap();
            p.write_piece(i, piece_bytes(&meta, &data, i)).unwrap();
        }
        // Out of place (behind the prefix, or ahead of it): ignored.
        feeder.feed(0, &vec![0u8; MIN_PIECE_LEN as usize]);
        feeder.feed(2 * u64::from(MIN_PIECE_LEN), &vec![0u8; MIN_PIECE_LEN as usize]);
        assert_eq!(store.read_back_counter().get(), 0);
        // In place, but not the blob's bytes.
        feeder.feed(u64::from(MIN_PIECE_LEN), &vec![0u8; MIN_PIECE_LEN as usize]);
        assert!(matches!(p.commit(), Err(StoreError::Corrupt { .. })));
        assert!(store.open_complete(meta.digest()).await.unwrap().is_none());
    }

    /// Reads at any offset and length within the file give exactly those bytes; a read past
    /// its end (a store file truncated under the agent) is an error, not a short buffer.
    #[tokio::test]
    async fn read_at_gives_exact_ranges_and_fails_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(2 * MIN_PIECE_LEN as usize + 7);
        let meta = meta_of(&data);
        let p = store.open_partial(meta.clone()).await.unwrap();
        for i in meta.all_pieces() {
            p.write_piece(i, piece_bytes(&meta, &data, i)).unwrap();
        }
        let f = p.file();
        let n = data.len();
        for (off, len) in [(0, 0), (0, 1), (0, n), (5, 100), (n - 7, 7), (MIN_PIECE_LEN as usize - 3, 10)] {
            assert_eq!(f.read_at(off as u64, len).unwrap(), &data[off..off + len], "{len} bytes at {off}");
        }
        assert_eq!(f.read_piece(meta.piece(2).unwrap()).unwrap(), &data[2 * MIN_PIECE_LEN as usize..]);
        let err = f.read_at((n - 3) as u64, 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn commit_with_a_missing_piece_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(2 * MIN_PIECE_LEN as usize);
        let meta = meta_of(&data);
        let p = store.open_partial(meta.clone()).await.unwrap();
        p.write_piece(meta.piece(1).unwrap(), &data[MIN_PIECE_LEN as usize..]).unwrap();
        assert!(matches!(p.commit(), Err(StoreError::Io { op: "commit", .. })));
        assert!(store.open_complete(meta.digest()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn resume_drops_corrupted_piece() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(2 * MIN_PIECE_LEN as usize);
        let meta = meta_of(&data);
        let p = store.open_partial(meta.clone()).await.unwrap();
        for i in meta.all_pieces() {
            p.write_piece(i, piece_bytes(&meta, &data, i)).unwrap();
        }
        drop(p);
        // Flip a byte of piece 1 behind the store's back.
        let path = dir.path().join("partial").join(format!("{}.data", meta.digest().hex()));
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[data[MIN_PIECE_LEN as usize] ^ 1], MIN_PIECE_LEN as u64).unwrap();
        let p = store.open_partial(meta.clone()).await.unwrap();
        assert_eq!(p.have(), vec![true, false]);
    }

    #[tokio::test]
    async fn commit_rejects_whole_blob_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(100);
        let good = meta_of(&data);
        // Same pieces, wrong digest: pieces verify, the whole does not.
        let bad = MetaInfo::from_parts(
            Digest::of(b"other"),
            good.length(),
            good.piece_length(),
            good.piece_hashes().to_vec(),
        )
        .unwrap();
        let p = store.open_partial(bad.clone()).await.unwrap();
        p.write_piece(bad.piece(0).unwrap(), &data).unwrap();
        assert!(matches!(p.commit(), Err(StoreError::Corrupt { .. })));
        assert!(store.open_complete(bad.digest()).await.unwrap().is_none());
    }

    /// `swarm.verify_blob_digest: false`: the pieces' BLAKE3 hashes are all that is checked,
    /// so the commit takes what the metainfo describes (the trade the option documents), and
    /// still refuses a blob with a piece missing.
    #[tokio::test]
    async fn without_the_digest_check_the_metainfo_alone_decides() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        store.verify_blob_digest(false);
        let data = blob(2 * MIN_PIECE_LEN as usize);
        let good = meta_of(&data);
        let other = MetaInfo::from_parts(
            Digest::of(b"other"),
            good.length(),
            good.piece_length(),
            good.piece_hashes().to_vec(),
        )
        .unwrap();
        let p = store.open_partial(other.clone()).await.unwrap();
        p.write_piece(other.piece(1).unwrap(), piece_bytes(&other, &data, other.piece(1).unwrap())).unwrap();
        assert!(matches!(p.commit(), Err(StoreError::Io { op: "commit", .. })), "piece 0 is missing");
        p.write_piece(other.piece(0).unwrap(), piece_bytes(&other, &data, other.piece(0).unwrap())).unwrap();
        p.commit().unwrap();
        let f = store.open_complete(other.digest()).await.unwrap().unwrap();
        assert_eq!(f.read_at(0, data.len()).unwrap(), data);
    }

    #[tokio::test]
    async fn missing_blob_is_none_and_tmp_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        let store = Store::open(dir.path(), Blocking::new(1)).unwrap();
        assert!(store.open_complete(Digest::of(b"nope")).await.unwrap().is_none());
        assert!(!dir.path().join("tmp/leftover").exists());
    }

    /// Commits `data` through a staged file, as an origin's fetch does.
    async fn put(store: &Store, data: &[u8]) -> MetaInfo {
        let meta = MetaInfo::build(data);
        let staged = store.tmp_path();
        fs::write(&staged, data).unwrap();
        store.commit_verified(meta.clone(), staged).await.unwrap();
        meta
    }

    /// The index's last uses, oldest first.
    fn by_last_use(store: &Store) -> Vec<Digest> {
        let mut all: Vec<_> = store.index().snapshot().into_iter().map(|s| (s.last_used, s.digest)).collect();
        all.sort();
        all.into_iter().map(|(_, d)| d).collect()
    }

    /// Last uses are written to disk (the data files' mtimes) and read back at the next open,
    /// so the least-recently-used order survives a restart.
    #[tokio::test]
    async fn restart_keeps_the_order_of_last_uses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let [a, b, c] = [b"a" as &[u8], b"b", b"c"];
        let (a, b, c) = (put(&store, a).await.digest(), put(&store, b).await.digest(), put(&store, c).await.digest());
        for d in [&b, &c, &a] {
            // Distinct clock readings, whatever the clock's resolution.
            std::thread::sleep(std::time::Duration::from_millis(2));
            store.touch(d);
        }
        assert_eq!(by_last_use(&store), [b, c, a]);
        store.persist_last_uses().await;
        drop(store);
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        assert_eq!(by_last_use(&store), [b, c, a], "the order is read back from disk");
        assert_eq!(store.index().unpersisted(), vec![], "nothing left to write after a restart");
    }

    /// A complete blob whose file is short (a power loss before its data reached the disk;
    /// here truncated by hand) or whose metainfo is unreadable or names another blob is not
    /// served: it is removed at its next open, counted as corrupt, and the others are served.
    #[tokio::test]
    async fn a_damaged_complete_blob_costs_that_blob_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let good = put(&store, &blob(3000)).await;
        let short = put(&store, &blob(2000)).await;
        let garbled = put(&store, b"garbled metainfo").await;
        let other = put(&store, b"metainfo of another blob").await;
        drop(store);
        File::options()
            .write(true)
            .open(dir.path().join("blobs").join(short.digest().hex()))
            .unwrap()
            .set_len(1500)
            .unwrap();
        let meta_path = |m: &MetaInfo| dir.path().join("blobs").join(format!("{}.meta", m.digest().hex()));
        fs::write(meta_path(&garbled), b"{not json").unwrap();
        fs::copy(meta_path(&good), meta_path(&other)).unwrap();

        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        for bad in [&short, &garbled, &other] {
            assert!(store.open_complete(bad.digest()).await.unwrap().is_none(), "{} served", bad.digest());
            assert!(!store.contains(&bad.digest()));
            assert!(!store.complete_path(&bad.digest()).exists() && !meta_path(bad).exists(), "files removed");
        }
        let f = store.open_complete(good.digest()).await.unwrap().expect("the good blob is served");
        assert_eq!(f.read_at(0, 3000).unwrap(), blob(3000));
        assert_eq!(store.evictions().get(Reason::Corrupt), 3);
        assert_eq!(store.used(), 3000);
    }

    /// A download's `.bits` or `.meta` that cannot be read costs that download's progress:
    /// it starts over, and another download's pieces are kept.
    #[tokio::test]
    async fn corrupt_partial_files_restart_that_download_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let datas: Vec<Vec<u8>> = (1..=3).map(|k| blob(2 * MIN_PIECE_LEN as usize + k)).collect();
        let metas: Vec<MetaInfo> = datas.iter().map(|d| meta_of(d)).collect();
        for (m, d) in metas.iter().zip(&datas) {
            let p = store.open_partial(m.clone()).await.unwrap();
            let i = m.piece(0).unwrap();
            p.write_piece(i, piece_bytes(m, d, i)).unwrap();
        }
        let path = |m: &MetaInfo, ext: &str| dir.path().join("partial").join(format!("{}.{ext}", m.digest().hex()));
        fs::write(path(&metas[0], "bits"), b"a bitfield far longer than three pieces need").unwrap();
        fs::write(path(&metas[1], "meta"), b"\x00\x01 not a metainfo").unwrap();
        drop(store);
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let have = |k: usize| {
            let store = store.clone();
            let m = metas[k].clone();
            async move { store.open_partial(m).await.unwrap().have() }
        };
        assert_eq!(have(0).await, vec![false, false, false], "bad .bits: starts over");
        assert_eq!(have(1).await, vec![false, false, false], "bad .meta: starts over");
        assert_eq!(have(2).await, vec![true, false, false], "the other download resumes");
    }

    /// The index counts partial downloads and complete blobs; a blob whose file someone holds
    /// is not evicted until they let go, and a partial a download has open is not removed.
    #[tokio::test]
    async fn eviction_spares_open_files_and_open_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let data = blob(2 * MIN_PIECE_LEN as usize);
        let meta = meta_of(&data);
        let p = store.open_partial(meta.clone()).await.unwrap();
        assert_eq!(store.used(), meta.length());
        assert_eq!(store.remove_partial(meta.digest(), Reason::PartialTtl).await.unwrap(), None, "in use");
        for i in meta.all_pieces() {
            p.write_piece(i, piece_bytes(&meta, &data, i)).unwrap();
        }
        p.commit().unwrap();
        drop(p);
        assert_eq!(store.used(), meta.length(), "counted once, as complete");
        let held = store.open_complete(meta.digest()).await.unwrap().unwrap();
        assert_eq!(store.evict(meta.digest(), false, Reason::Size).await.unwrap(), None, "in use");
        drop(held);
        assert_eq!(store.evict(meta.digest(), false, Reason::Size).await.unwrap(), Some(meta.length()));
        assert_eq!(store.used(), 0);
        assert!(store.open_complete(meta.digest()).await.unwrap().is_none());
        assert!(!store.complete_path(&meta.digest()).exists());
        assert_eq!(store.evictions().get(Reason::Size), 1);

        // An abandoned download goes once nothing has it open.
        let other = meta_of(&blob(100));
        drop(store.open_partial(other.clone()).await.unwrap());
        assert_eq!(store.remove_partial(other.digest(), Reason::PartialTtl).await.unwrap(), Some(100));
        assert!(fs::read_dir(dir.path().join("partial")).unwrap().next().is_none());
    }

    /// Leftovers of an interrupted commit or removal go at open: a metainfo without its data,
    /// data without its metainfo, a partial's `.bits` without its `.data`, temporary files.
    #[tokio::test]
    async fn open_clears_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        let kept = put(&store, b"kept").await;
        drop(store);
        let hex = |b: &[u8]| Digest::of(b).hex();
        let blobs = dir.path().join("blobs");
        let partial = dir.path().join("partial");
        let leftovers = [
            blobs.join(format!("{}.meta", hex(b"x"))),
            blobs.join(hex(b"y")),
            blobs.join(format!("{}.meta.tmp", hex(b"z"))),
            partial.join(format!("{}.bits", hex(b"w"))),
            partial.join(format!("{}.meta.tmp", hex(b"v"))),
        ];
        for p in &leftovers {
            fs::write(p, b"left over").unwrap();
        }
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        for p in &leftovers {
            assert!(!p.exists(), "{} is still there", p.display());
        }
        assert_eq!(store.complete_digests(), vec![kept.digest()]);
        assert_eq!(store.evictions().get(Reason::Corrupt), 1, "the data without its metainfo");
    }

    /// Pins are kept on disk; a repository's pins go when it leaves the configured list,
    /// a preheat's stay until unpinned, and an unreadable pins file costs the pins only.
    #[tokio::test]
    async fn pins_survive_a_restart_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let repos = vec!["library/nginx".to_string()];
        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        store.configure_pins(&[c], &repos).unwrap();
        store.set_pin(a, crate::index::PIN_PREHEAT, true).await.unwrap();
        store.set_pin(b, &crate::index::repository_pin("library/nginx"), true).await.unwrap();
        assert!(store.is_pinned(&a) && store.is_pinned(&b) && store.is_pinned(&c));
        drop(store);

        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        store.configure_pins(&[], &repos).unwrap();
        assert!(store.is_pinned(&a) && store.is_pinned(&b) && !store.is_pinned(&c));
        store.set_pin(a, crate::index::PIN_PREHEAT, false).await.unwrap();
        drop(store);

        let store = Store::open(dir.path(), Blocking::new(2)).unwrap();
        store.configure_pins(&[], &[]).unwrap();
        assert!(!store.is_pinned(&a) && !store.is_pinned(&b), "unpinned; repository no longer listed");
        store.set_pin(a, crate::index::PIN_PREHEAT, true).await.unwrap();
        drop(store);
        fs::write(dir.path().join("pins.json"), b"[garbage").unwrap();
        let store = Store::open(dir.path(), Blocking::new(2)).expect("an unreadable pins file does not stop the store");
        assert!(!store.is_pinned(&a));
    }
}
