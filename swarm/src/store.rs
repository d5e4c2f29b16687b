//! The on-disk piece store.
//!
//! Layout under the store root:
//! - `blobs/<hex>`: a complete blob, visible only after every piece was verified and the
//!   whole blob's sha256 matched; `blobs/<hex>.meta` is its metainfo (JSON).
//! - `partial/<hex>.data`: a blob being downloaded, pieces written in place at their offsets;
//!   `partial/<hex>.meta` its metainfo; `partial/<hex>.bits` the packed bitfield of pieces
//!   written and verified, rewritten after each piece so a restarted node resumes.
//! - `tmp/`: uploads and backend fetches in progress; emptied at open.
//!
//! Invariants: a file under `blobs/` always matches its digest (commit is a rename after the
//! check); a bit is set in `.bits` only after its piece's bytes were verified and written; on
//! resume every piece marked present is hashed again, so a torn write or a disk error costs
//! that piece, never a wrong byte. All calls that touch the disk run on the [`Blocking`] pool.
//!
//! The whole blob's sha256 is computed while it downloads, over the contiguous prefix of
//! present pieces (a piece that extends the prefix is hashed from memory as it is written,
//! later ones from the file once the gap before them fills), so the commit only finishes it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use shoal_core::store_files;
use shoal_core::wire::pack_bits;
use shoal_core::{Digest, DigestHasher, MetaInfo, PieceIndex};

use crate::blocking::Blocking;

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
}

/// An open blob file, complete or partial, from which verified pieces are read.
pub struct BlobFile {
    meta: MetaInfo,
    file: File,
}

/// A blob being downloaded.
pub struct PartialBlob {
    blob: Arc<BlobFile>,
    dir: PathBuf,
    /// Which pieces are written and verified; guarded by a sync mutex held only to flip a bit
    /// and write the bitfield file.
    have: Mutex<Vec<bool>>,
    bits_file: File,
    /// The whole blob's sha256 over the contiguous prefix of present pieces, advanced as
    /// pieces arrive so the commit does not read the whole blob again.
    prefix: Mutex<PrefixHash>,
}

/// A sha256 over pieces `0..next`.
struct PrefixHash {
    hasher: DigestHasher,
    next: u32,
}

impl Store {
    /// Opens (creating) a store at `root`, emptying its `tmp/`.
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
        Ok(Store { root: Arc::new(root), blocking, tmp_seq: Arc::new(AtomicU64::new(0)) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blocking(&self) -> &Blocking {
        &self.blocking
    }

    /// Path of the complete blob (it may not exist).
    pub fn complete_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.hex())
    }

    fn complete_meta_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(format!("{}.meta", d.hex()))
    }

    /// A fresh path under `tmp/` on the store's file system, for staging.
    pub fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}-{n}", std::process::id()))
    }

    /// Opens a complete blob, if the store has it.
    pub async fn open_complete(&self, d: Digest) -> Result<Option<Arc<BlobFile>>, StoreError> {
        let data = self.complete_path(&d);
        let meta = self.complete_meta_path(&d);
        self.blocking
            .run(move || {
                let file = match File::open(&data) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(StoreError::io("open", &data)(e)),
                };
                let meta = read_meta(&meta)?;
                Ok(Some(Arc::new(BlobFile { meta, file })))
            })
            .await
    }

    /// Digests of every complete blob in the store.
    pub async fn list_complete(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.root.join("blobs");
        self.blocking
            .run(move || {
                let rd = fs::read_dir(&dir).map_err(StoreError::io("list", &dir))?;
                Ok(rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| Digest::from_hex(n).ok())).collect())
            })
            .await
    }

    /// Moves a staged file whose content already matched `meta` into `blobs/`.
    pub async fn commit_verified(&self, meta: MetaInfo, staged: PathBuf) -> Result<Arc<BlobFile>, StoreError> {
        let data = self.complete_path(&meta.digest());
        let meta_path = self.complete_meta_path(&meta.digest());
        self.blocking
            .run(move || {
                write_meta(&meta_path, &meta)?;
                fs::rename(&staged, &data).map_err(StoreError::io("commit", &data))?;
                let file = File::open(&data).map_err(StoreError::io("open", &data))?;
                Ok(Arc::new(BlobFile { meta, file }))
            })
            .await
    }

    /// Opens or resumes a download of `meta`. Pieces the bitfield marks present are hashed
    /// again; any that fail are cleared.
    pub async fn open_partial(&self, meta: MetaInfo) -> Result<Arc<PartialBlob>, StoreError> {
        let dir = self.root.clone();
        self.blocking.run(move || PartialBlob::open(&dir, meta)).await.map(Arc::new)
    }

    /// Removes a complete blob (used when a caller finds it unwanted or corrupt).
    pub async fn remove(&self, d: Digest) -> Result<(), StoreError> {
        let data = self.complete_path(&d);
        let meta = self.complete_meta_path(&d);
        self.blocking
            .run(move || {
                for p in [&data, &meta] {
                    match fs::remove_file(p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(StoreError::io("remove", p)(e)),
                    }
                }
                Ok(())
            })
            .await
    }
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
    let tmp = path.with_extension("meta.tmp");
    let json = serde_json::to_vec(meta).expect("metainfo serializes");
    fs::write(&tmp, json).map_err(StoreError::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(StoreError::io("rename", path))
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
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            let n =
                rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at).map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{len} bytes at {offset}: file ends"),
                ));
            }
        }
        buf.truncate(len);
        Ok(buf)
    }

    /// Streams `[start, end)` in 1 MiB chunks read on the blocking pool.
    pub fn stream(
        self: &Arc<Self>,
        blocking: Blocking,
        start: u64,
        end: u64,
    ) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static + use<> {
        const CHUNK: u64 = 1 << 20;
        let file = self.clone();
        futures::stream::unfold(start, move |off| {
            let (file, blocking) = (file.clone(), blocking.clone());
            async move {
                if off >= end {
                    return None;
                }
                let n = usize::try_from((end - off).min(CHUNK)).expect("at most a chunk");
                let res = blocking.run(move || file.read_at(off, n)).await;
                Some((res.map(Bytes::from), off + n as u64))
            }
        })
    }

    /// Reads one piece.
    pub fn read_piece(&self, i: PieceIndex) -> io::Result<Bytes> {
        self.read_at(self.meta.piece_offset(i), self.meta.piece_len(i) as usize).map(Bytes::from)
    }
}

impl PartialBlob {
    fn open(root: &Path, meta: MetaInfo) -> Result<PartialBlob, StoreError> {
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
        let prefix = Mutex::new(PrefixHash { hasher: DigestHasher::new(), next: 0 });
        Ok(PartialBlob { blob: Arc::new(blob), dir, have: Mutex::new(have), bits_file, prefix })
    }

    /// The file to read verified pieces from (valid after commit too).
    pub fn file(&self) -> &Arc<BlobFile> {
        &self.blob
    }

    pub fn meta(&self) -> &MetaInfo {
        &self.blob.meta
    }

    /// Which pieces are present.
    pub fn have(&self) -> Vec<bool> {
        self.have.lock().clone()
    }

    /// Writes a piece the caller has verified, then records it, and advances the prefix hash
    /// if the piece extends it. Blocking.
    pub fn write_piece(&self, i: PieceIndex, data: &[u8]) -> Result<(), StoreError> {
        let path = || self.dir.join(format!("{}.data", self.blob.meta.digest().hex()));
        self.blob
            .file
            .write_all_at(data, self.blob.meta.piece_offset(i))
            .map_err(|e| StoreError::io("write", &path())(e))?;
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
        // both miss is hashed at commit.
        if let Some(mut prefix) = self.prefix.try_lock() {
            self.advance_prefix(&mut prefix, Some((i, data))).map_err(|e| StoreError::io("read", &path())(e))?;
        }
        Ok(())
    }

    /// Hashes present pieces from `prefix.next` on, using `fresh` (a piece just written)
    /// instead of reading it back.
    fn advance_prefix(&self, prefix: &mut PrefixHash, fresh: Option<(PieceIndex, &[u8])>) -> io::Result<()> {
        let meta = &self.blob.meta;
        while let Some(next) = meta.piece(prefix.next) {
            if !self.have.lock()[next.as_usize()] {
                break;
            }
            match fresh {
                Some((i, data)) if i == next => prefix.hasher.update(data),
                _ => prefix.hasher.update(&self.blob.read_piece(next)?),
            }
            prefix.next += 1;
        }
        Ok(())
    }

    /// Checks the whole blob's sha256 and moves it into `blobs/`. Blocking. On a mismatch the
    /// partial files are removed: its pieces all verified yet the whole is wrong, so the
    /// metainfo itself was bad.
    pub fn commit(&self, store_root: &Path) -> Result<(), StoreError> {
        let meta = &self.blob.meta;
        let hex = meta.digest().hex();
        let data_path = self.dir.join(format!("{hex}.data"));
        let got = {
            let mut prefix = self.prefix.lock();
            self.advance_prefix(&mut prefix, None).map_err(StoreError::io("read", &data_path))?;
            if prefix.next != meta.num_pieces() {
                return Err(StoreError::Io {
                    op: "commit",
                    path: data_path,
                    source: io::Error::other(format!("piece {} is missing", prefix.next)),
                });
            }
            std::mem::take(&mut prefix.hasher).finish()
        };
        let remove = |ext: &str| {
            let _ = fs::remove_file(self.dir.join(format!("{hex}.{ext}")));
        };
        if got != meta.digest() {
            for ext in ["data", "meta", "bits"] {
                remove(ext);
            }
            return Err(StoreError::Corrupt { digest: meta.digest(), got });
        }
        let blobs = store_root.join("blobs");
        write_meta(&blobs.join(format!("{hex}.meta")), meta)?;
        let dest = blobs.join(&hex);
        fs::rename(&data_path, &dest).map_err(StoreError::io("commit", &dest))?;
        remove("meta");
        remove("bits");
        Ok(())
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
        p.commit(store.root()).unwrap();
        let f = store.open_complete(meta.digest()).await.unwrap().unwrap();
        assert_eq!(f.read_at(0, data.len()).unwrap(), data);
        assert_eq!(store.list_complete().await.unwrap(), vec![meta.digest()]);
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
        p.commit(store.root()).unwrap();
        let f = store.open_complete(meta.digest()).await.unwrap().unwrap();
        assert!(f.read_at(0, data.len()).unwrap() == *data);
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
        assert!(matches!(p.commit(store.root()), Err(StoreError::Io { op: "commit", .. })));
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
        assert!(matches!(p.commit(store.root()), Err(StoreError::Corrupt { .. })));
        assert!(store.open_complete(bad.digest()).await.unwrap().is_none());
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
}
