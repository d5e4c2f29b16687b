//! Reused read buffers for the bytes a node sends: pieces read for upload and chunks read for
//! an HTTP client come from a [`BufPool`] and go back to it once the socket has taken them.
//!
//! A fresh 1–4 MiB buffer per piece is memory the allocator has just mapped, so every page of
//! it faults and the kernel zeroes it before `pread` fills it: that zeroing was about 6% of the
//! node's CPU in the main job (`clear_page_erms` under `BlobFile::read_at`, see BENCHMARKS.md).
//! A buffer from the pool is already faulted in.
//!
//! The pool keeps at most [`MAX_POOLED_BYTES`] of idle buffers; a buffer returned past that
//! is freed. [`BufPool::trim`] (each store round, `swarm::gc`) frees the buffers that stayed
//! idle since the round before, so what a burst of uploads took is given back once the burst
//! is over instead of being held for the node's life. The bytes handed out are ordinary [`Bytes`], whose owner gives the buffer back
//! when the last clone is dropped.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

/// Idle buffer bytes a pool keeps at most (four of the largest pieces).
pub const MAX_POOLED_BYTES: usize = 16 << 20;

/// A bounded stack of idle read buffers, shared by clones.
#[derive(Clone, Default)]
pub struct BufPool {
    idle: Arc<Mutex<Idle>>,
}

#[derive(Default)]
struct Idle {
    /// Oldest first: a taken buffer is removed where it sits, a returned one pushed last.
    bufs: Vec<Vec<u8>>,
    bytes: usize,
    /// The fewest idle buffers since the last [`BufPool::trim`]: that many of the oldest were
    /// never needed in between.
    low: usize,
}

impl BufPool {
    pub fn new() -> BufPool {
        BufPool::default()
    }

    /// An empty buffer with room for exactly `len` bytes (so a read into its spare capacity
    /// stops at `len`): an idle one of that size if there is one, else a new one. A blob's
    /// pieces and a stream's chunks are all of one size but the last.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut idle = self.idle.lock();
        // The newest of that size: warmest in cache, and it leaves the oldest for `trim`.
        match idle.bufs.iter().rposition(|b| b.capacity() == len) {
            Some(i) => {
                let buf = idle.bufs.remove(i);
                idle.bytes -= buf.capacity();
                idle.low = idle.low.min(idle.bufs.len());
                buf
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Frees as many idle buffers as no [`take`](Self::take) needed since the last trim, the
    /// oldest first (takes reach for the newest), and returns the bytes freed.
    pub fn trim(&self) -> usize {
        let freed: Vec<Vec<u8>> = {
            let mut idle = self.idle.lock();
            let n = idle.low.min(idle.bufs.len());
            let freed: Vec<Vec<u8>> = idle.bufs.drain(..n).collect();
            idle.bytes -= freed.iter().map(Vec::capacity).sum::<usize>();
            idle.low = idle.bufs.len();
            freed
        };
        // Freed outside the lock.
        freed.iter().map(Vec::capacity).sum()
    }

    /// `buf` as [`Bytes`] that return it to this pool when the last clone is dropped.
    pub fn share(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled { buf, pool: Arc::downgrade(&self.idle) })
    }

    /// Idle bytes held now.
    pub fn idle_bytes(&self) -> usize {
        self.idle.lock().bytes
    }

    fn give_back(idle: &Mutex<Idle>, mut buf: Vec<u8>) {
        buf.clear();
        let mut idle = idle.lock();
        if idle.bytes + buf.capacity() <= MAX_POOLED_BYTES {
            idle.bytes += buf.capacity();
            idle.bufs.push(buf);
        }
    }
}

/// A pooled buffer behind a [`Bytes`].
struct Pooled {
    buf: Vec<u8>,
    pool: Weak<Mutex<Idle>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(idle) = self.pool.upgrade() {
            BufPool::give_back(&idle, std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_clone_is_dropped() {
        let pool = BufPool::new();
        let mut buf = pool.take(1000);
        buf.extend_from_slice(&[7; 1000]);
        let ptr = buf.as_ptr();
        let bytes = pool.share(buf);
        let clone = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a clone still holds it");
        assert_eq!(&clone[..], &[7; 10]);
        drop(clone);
        assert!(pool.idle_bytes() >= 1000);
        let again = pool.take(1000);
        assert_eq!(again.as_ptr(), ptr, "the same memory, reused");
        assert!(again.is_empty());
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn trim_frees_what_stayed_idle_since_the_last_trim() {
        let pool = BufPool::new();
        // A burst: eight buffers out at once, all back.
        let burst: Vec<Bytes> = (0..8).map(|_| pool.share(pool.take(1000))).collect();
        drop(burst);
        assert_eq!(pool.idle_bytes(), 8000);
        assert_eq!(pool.trim(), 0, "the first trim only marks what is idle");
        // From now on two at a time are in use.
        for _ in 0..5 {
            let two = [pool.share(pool.take(1000)), pool.share(pool.take(1000))];
            drop(two);
        }
        assert_eq!(pool.trim(), 6000, "six were never needed since the last trim");
        assert_eq!(pool.idle_bytes(), 2000);
        // Nothing taken at all: the next trim frees the rest.
        assert_eq!(pool.trim(), 2000);
        assert_eq!(pool.idle_bytes(), 0);
        assert_eq!(pool.trim(), 0);
    }

    #[test]
    fn buffers_of_another_size_are_left_and_the_pool_is_bounded() {
        let pool = BufPool::new();
        drop(pool.share(Vec::with_capacity(100)));
        let big = pool.take(4096);
        assert_eq!(big.capacity(), 4096);
        assert_eq!(pool.idle_bytes(), 100, "the small one stays idle");
        let many: Vec<Bytes> = (0..40).map(|_| pool.share(vec![0; 1 << 20])).collect();
        drop(many);
        assert!(pool.idle_bytes() <= MAX_POOLED_BYTES);
        // A buffer outliving its pool is simply freed.
        let orphan = pool.share(vec![1; 10]);
        drop(pool);
        drop(orphan);
    }
}
