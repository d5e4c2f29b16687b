//! Fetching blobs from the backend into the store, once per blob.
//!
//! Concurrent requests for one blob share one fetch (a `watch` channel per digest). A fetch
//! streams the backend object to a staging file while hashing it; only if its sha256 matches
//! the digest is it committed to the store and seeded. A failure is remembered for
//! `failure_ttl` so a missing blob does not send every agent's retry to the backend.
//!
//! When the backend lacks a blob and the request named a [`Source`] (an upstream registry and
//! a repository), the blob is pulled through from the upstream the same way: streamed to the
//! staging file, hashed, checked, and optionally written back to the backend before it is
//! committed. A failure remembered from a fetch without a source does not stop one with a
//! source from trying the upstream.
//!
//! Bounds: at most `max_concurrent_fetches` fetches hold a slot at once; reading the object
//! (from the backend or the upstream, staging included) has `fetch_timeout` in all, so a
//! stalled object frees its slot; at most [`MAX_FAILURES`] failures are remembered.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use futures::StreamExt;
use shoal_core::metainfo::MetaInfoBuilder;
use shoal_core::{Digest, MetaInfo};
use shoal_swarm::Swarm;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use shoal_core::registry::RepoName;

use crate::backend::{Backend, BackendError};
use crate::upstream::{Upstream, UpstreamError, UpstreamManifest};

/// Where a blob may be pulled from when the backend lacks it.
#[derive(Clone)]
pub struct Source {
    pub upstream: Arc<Upstream>,
    /// The repository the request named: upstream registries address blobs per repository.
    pub name: RepoName,
}

/// Where a fetch stands.
#[derive(Clone, Debug)]
pub enum FetchState {
    Running,
    Done(MetaInfo),
    Failed(FetchError),
}

/// Why a fetch failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    #[error("blob {0} is not in the backend")]
    NotFound(Digest),
    #[error("backend content does not match {digest}: {reason}")]
    Mismatch { digest: Digest, reason: String },
    #[error("backend: {0}")]
    Backend(Arc<str>),
    #[error("store: {0}")]
    Store(Arc<str>),
    #[error("{0}")]
    Upstream(UpstreamError),
    #[error("reading {digest} took over {secs}s (fetch_timeout)")]
    Timeout { digest: Digest, secs: u64 },
}

impl FetchError {
    fn from_upstream(digest: Digest, e: UpstreamError) -> FetchError {
        match e {
            UpstreamError::NotFound => FetchError::NotFound(digest),
            e => FetchError::Upstream(e),
        }
    }
}

/// Failures remembered at most. Hard-coded: each is remembered only `failure_ttl`, and
/// requests for random digests must not grow the map for good. When it is full, expired
/// failures go first, then the oldest.
pub const MAX_FAILURES: usize = 10_000;

/// The fetcher's limits, from the origin's config.
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    /// Fetches holding a slot at once (`max_concurrent_fetches`).
    pub max_concurrent: usize,
    /// How long a failure is remembered (`failure_ttl`).
    pub failure_ttl: std::time::Duration,
    /// Longest a fetch may read its object (`fetch_timeout`).
    pub timeout: std::time::Duration,
}

/// Fetches of blobs peers opened on the wire ([`fetch_wanted`]) at once.
const WANTED_AT_ONCE: usize = 4;

/// Fetches from the backend the blobs that peers opened with this origin and that it lacks
/// (`Swarm::wanted`), when this origin owns them on the ring (or there is no ring): an owner
/// that lost its copy, or never had one, seeds it again as soon as the swarm asks, instead of
/// only when an HTTP client asks for its metainfo. At most [`WANTED_AT_ONCE`] at once; the
/// fetcher's failure map keeps a digest the backend lacks from being asked again and again.
pub async fn fetch_wanted(
    fetcher: Fetcher,
    mut wanted: mpsc::Receiver<Digest>,
    ring: Option<shoal_core::ring::Ring>,
    id: String,
) -> anyhow::Result<()> {
    futures::stream::poll_fn(|cx| wanted.poll_recv(cx))
        .filter(|d| {
            let owns = ring.as_ref().is_none_or(|r| r.owners(d).iter().any(|o| o.id == id));
            std::future::ready(owns)
        })
        .for_each_concurrent(WANTED_AT_ONCE, |d| {
            let fetcher = fetcher.clone();
            async move {
                let mut state = fetcher.ensure(d).await;
                let _ = state.wait_for(|s| !matches!(s, FetchState::Running)).await;
            }
        })
        .await;
    Ok(())
}

#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    swarm: Swarm,
    backend: Arc<dyn Backend>,
    running: DashMap<Digest, watch::Receiver<FetchState>>,
    failed: Failures,
    slots: Semaphore,
    timeout: std::time::Duration,
    metrics: crate::metrics::OriginMetrics,
    /// Stops fetches still running at shutdown.
    shutdown: tokio_util::sync::CancellationToken,
}

/// One remembered failure: when, why, and whether an upstream was tried.
struct Failure {
    at: Instant,
    error: FetchError,
    tried_upstream: bool,
}

/// Failures by digest, each for `ttl`, at most [`MAX_FAILURES`]. The lock is held only for
/// map operations.
struct Failures {
    ttl: std::time::Duration,
    map: Mutex<HashMap<Digest, Failure>>,
}

impl Failures {
    fn new(ttl: std::time::Duration) -> Failures {
        Failures { ttl, map: Mutex::new(HashMap::new()) }
    }

    /// The failure of `digest` remembered at `now`, and whether an upstream was tried; an
    /// expired one is dropped.
    fn get(&self, digest: &Digest, now: Instant) -> Option<(FetchError, bool)> {
        let mut map = self.map.lock().expect("failure map lock");
        match map.get(digest) {
            Some(f) if now.duration_since(f.at) < self.ttl => Some((f.error.clone(), f.tried_upstream)),
            Some(_) => {
                map.remove(digest);
                None
            }
            None => None,
        }
    }

    fn insert(&self, digest: Digest, failure: Failure) {
        let mut map = self.map.lock().expect("failure map lock");
        if map.len() >= MAX_FAILURES && !map.contains_key(&digest) {
            let ttl = self.ttl;
            map.retain(|_, f| failure.at.duration_since(f.at) < ttl);
            if map.len() >= MAX_FAILURES
                && let Some(oldest) = map.iter().min_by_key(|(_, f)| f.at).map(|(d, _)| *d)
            {
                map.remove(&oldest);
            }
        }
        map.insert(digest, failure);
    }

    fn remove(&self, digest: &Digest) {
        self.map.lock().expect("failure map lock").remove(digest);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().expect("failure map lock").len()
    }
}

impl Fetcher {
    pub fn new(
        swarm: Swarm,
        backend: Arc<dyn Backend>,
        limits: FetchLimits,
        metrics: crate::metrics::OriginMetrics,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Fetcher {
        Fetcher {
            inner: Arc::new(Inner {
                swarm,
                backend,
                running: DashMap::new(),
                failed: Failures::new(limits.failure_ttl),
                slots: Semaphore::new(limits.max_concurrent),
                timeout: limits.timeout,
                metrics,
                shutdown,
            }),
        }
    }

    /// The swarm fetched blobs are stored in and seeded from.
    pub fn swarm(&self) -> &Swarm {
        &self.inner.swarm
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The state of `digest`, starting a fetch if the store lacks it and none is running.
    pub async fn ensure(&self, digest: Digest) -> watch::Receiver<FetchState> {
        self.ensure_from(digest, None).await
    }

    /// As [`Fetcher::ensure`], pulling through from `source` if the backend lacks the blob.
    pub async fn ensure_from(&self, digest: Digest, source: Option<Source>) -> watch::Receiver<FetchState> {
        let inner = &self.inner;
        if let Ok(Some(f)) = inner.swarm.complete(digest).await {
            return watch::channel(FetchState::Done(f.meta().clone())).1;
        }
        if let Some((error, tried_upstream)) = inner.failed.get(&digest, Instant::now())
            && (tried_upstream || source.is_none())
        {
            return watch::channel(FetchState::Failed(error)).1;
        }
        use dashmap::mapref::entry::Entry;
        let tx = match inner.running.entry(digest) {
            Entry::Occupied(o) => return o.get().clone(),
            Entry::Vacant(v) => {
                let (tx, rx) = watch::channel(FetchState::Running);
                v.insert(rx);
                tx
            }
        };
        let rx = tx.subscribe();
        let this = self.clone();
        let cancel = self.inner.shutdown.clone();
        shoal_runtime::spawn("fetch", cancel, async move {
            let tried_upstream = source.is_some();
            let state = match this.fetch(digest, source).await {
                Ok(meta) => {
                    this.inner.metrics.fetches.with_label_values(&["ok"]).inc();
                    FetchState::Done(meta)
                }
                Err(e) => {
                    tracing::warn!(%digest, "fetch failed: {e:#}");
                    let label = match e {
                        FetchError::NotFound(_) => "not_found",
                        FetchError::Timeout { .. } => "timeout",
                        _ => "error",
                    };
                    this.inner.metrics.fetches.with_label_values(&[label]).inc();
                    let failure = Failure { at: Instant::now(), error: e.clone(), tried_upstream };
                    this.inner.failed.insert(digest, failure);
                    FetchState::Failed(e)
                }
            };
            tx.send_replace(state);
            this.inner.running.remove(&digest);
            Ok(())
        });
        rx
    }

    async fn fetch(&self, digest: Digest, source: Option<Source>) -> Result<MetaInfo, FetchError> {
        let inner = &self.inner;
        let _slot = inner.slots.acquire().await.expect("never closed");
        let started = Instant::now();
        let store = inner.swarm.store().clone();
        let staged = store.tmp_path();
        // Reading the object is what a stalled backend or upstream can hold up: it has
        // `fetch_timeout` in all.
        let read = async {
            let (blob, upstream) = match inner.backend.get(&digest).await {
                Ok(b) => (b, None),
                Err(BackendError::NotFound) => match &source {
                    Some(src) => (pull_through(src, digest).await?, Some(&src.upstream)),
                    None => return Err(FetchError::NotFound(digest)),
                },
                Err(other) => return Err(FetchError::Backend(format!("{other:#}").into())),
            };
            let meta = stage(&store, &staged, digest, blob, &inner.metrics).await?;
            Ok((meta, upstream))
        };
        let res = match tokio::time::timeout(inner.timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout { digest, secs: inner.timeout.as_secs() }),
        };
        let (meta, upstream) = match res {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        };
        if let Some(up) = upstream
            && up.cfg.write_back
        {
            self.write_back(digest, &staged, meta.length()).await;
        }
        store.commit_verified(meta.clone(), staged).await.map_err(|e| FetchError::Store(format!("{e:#}").into()))?;
        inner.swarm.seed(digest).await.map_err(|e| FetchError::Store(format!("{e:#}").into()))?;
        let from = upstream.map_or("backend", |u| u.host().as_str());
        tracing::info!(%digest, bytes = meta.length(), secs = started.elapsed().as_secs_f64(), from, "fetched");
        Ok(meta)
    }

    /// Copies a verified staged blob to the backend. A failure is logged, not returned: the
    /// blob is good and is served; the next miss pulls it through again.
    async fn write_back(&self, digest: Digest, staged: &std::path::Path, len: u64) {
        match self.inner.backend.put(&digest, staged, len).await {
            Ok(()) => tracing::debug!(%digest, "written back to the backend"),
            Err(e) => tracing::warn!(%digest, "cannot write back to the backend: {e:#}"),
        }
    }

    /// Stores a manifest read from an upstream (already verified against its digest) as a blob
    /// and seeds it, so requests by digest find it; with `write_back`, also in the backend.
    pub async fn store_manifest(&self, m: &UpstreamManifest, write_back: bool) -> Result<MetaInfo, FetchError> {
        let inner = &self.inner;
        let store_err = |e: String| FetchError::Store(e.into());
        if let Ok(Some(f)) = inner.swarm.complete(m.digest).await {
            return Ok(f.meta().clone());
        }
        let mut builder =
            MetaInfoBuilder::new(m.bytes.len() as u64).map_err(|e| FetchError::Store(e.to_string().into()))?;
        builder.update(&m.bytes);
        let meta = builder
            .finish_expecting(m.digest)
            .map_err(|e| FetchError::Mismatch { digest: m.digest, reason: e.to_string() })?;
        let store = inner.swarm.store().clone();
        let staged = store.tmp_path();
        let (path, bytes) = (staged.clone(), m.bytes.clone());
        let res = store
            .blocking()
            .run(move || std::fs::write(&path, &bytes).and_then(|()| std::fs::File::open(&path)?.sync_all()))
            .await;
        if let Err(e) = res {
            let _ = std::fs::remove_file(&staged);
            return Err(store_err(format!("{}: {e}", staged.display())));
        }
        if write_back {
            self.write_back(m.digest, &staged, meta.length()).await;
        }
        store.commit_verified(meta.clone(), staged).await.map_err(|e| store_err(format!("{e:#}")))?;
        inner.swarm.seed(m.digest).await.map_err(|e| store_err(format!("{e:#}")))?;
        inner.failed.remove(&m.digest);
        Ok(meta)
    }
}

/// The blob from the upstream: the blob endpoint, else the manifest endpoint, since
/// registries serve manifests only there (a child manifest of an index is asked for by digest).
async fn pull_through(src: &Source, digest: Digest) -> Result<crate::backend::BlobStream, FetchError> {
    match src.upstream.blob(&src.name, &digest).await {
        Ok(b) => Ok(b),
        Err(UpstreamError::NotFound) => {
            let reference = shoal_core::registry::Reference::Digest(digest);
            let m =
                src.upstream.manifest(&src.name, &reference).await.map_err(|e| FetchError::from_upstream(digest, e))?;
            let length = m.bytes.len() as u64;
            let chunk: Result<bytes::Bytes, BackendError> = Ok(m.bytes);
            Ok(crate::backend::BlobStream { length, stream: futures::stream::iter([chunk]).boxed() })
        }
        Err(e) => Err(FetchError::from_upstream(digest, e)),
    }
}

/// Streams a backend object into `path`, hashing as it goes; checks length and digest.
async fn stage(
    store: &shoal_swarm::Store,
    path: &std::path::Path,
    digest: Digest,
    blob: crate::backend::BlobStream,
    metrics: &crate::metrics::OriginMetrics,
) -> Result<MetaInfo, FetchError> {
    let mismatch = |reason: String| FetchError::Mismatch { digest, reason };
    let store_err = |e: std::io::Error| FetchError::Store(format!("{}: {e}", path.display()).into());
    let mut builder = MetaInfoBuilder::new(blob.length).map_err(|e| mismatch(e.to_string()))?;
    let file = std::fs::File::create(path).map_err(store_err)?;
    let mut writer = Some((std::io::BufWriter::with_capacity(1 << 20, file), builder));
    let mut stream = blob.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| FetchError::Backend(format!("{e:#}").into()))?;
        metrics.backend_bytes.inc_by(chunk.len() as u64);
        let (mut w, mut b) = writer.take().expect("writer is put back after each chunk");
        if b.seen() + chunk.len() as u64 > blob.length {
            return Err(mismatch(format!("backend sent more than the {} bytes it announced", blob.length)));
        }
        let (w2, b2, res) = store
            .blocking()
            .run(move || {
                b.update(&chunk);
                let r = w.write_all(&chunk);
                (w, b, r)
            })
            .await;
        res.map_err(store_err)?;
        writer = Some((w2, b2));
    }
    let (w, b) = writer.take().expect("writer present");
    store
        .blocking()
        .run(move || w.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()))
        .await
        .map_err(store_err)?;
    builder = b;
    builder.finish_expecting(digest).map_err(|e| mismatch(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::backend::{BlobStream, FsBackend, FsConfig};

    #[test]
    fn failures_are_bounded_and_expire() {
        let ttl = Duration::from_secs(15);
        let f = Failures::new(ttl);
        let digest = |i: usize| Digest::of(&i.to_be_bytes());
        let t0 = Instant::now();
        let at = |i: usize| t0 + Duration::from_micros(i as u64);
        let failure = |at| Failure { at, error: FetchError::NotFound(digest(0)), tried_upstream: false };
        for i in 0..MAX_FAILURES + 10 {
            f.insert(digest(i), failure(at(i)));
        }
        assert_eq!(f.len(), MAX_FAILURES, "random digests do not grow the map past its bound");
        let now = at(MAX_FAILURES + 10);
        assert!(f.get(&digest(0), now).is_none(), "the oldest made room");
        assert!(f.get(&digest(MAX_FAILURES + 9), now).is_some());
        // Once expired, a lookup drops the failure, and a full map drops every expired one.
        let later = now + ttl;
        assert!(f.get(&digest(MAX_FAILURES + 9), later).is_none());
        assert_eq!(f.len(), MAX_FAILURES - 1);
        f.insert(digest(1), failure(later));
        f.insert(digest(usize::MAX), failure(later));
        assert_eq!(f.len(), 2, "a full map of expired failures is emptied at the next insert");
    }

    /// A directory backend whose object `stall` sends a few bytes, then nothing, for good.
    struct Stalling {
        fs: FsBackend,
        stall: Digest,
    }

    #[async_trait::async_trait]
    impl Backend for Stalling {
        async fn stat(&self, d: &Digest) -> Result<Option<u64>, BackendError> {
            self.fs.stat(d).await
        }
        async fn get(&self, d: &Digest) -> Result<BlobStream, BackendError> {
            if *d != self.stall {
                return self.fs.get(d).await;
            }
            let first = futures::stream::iter([Ok(Bytes::from_static(b"the first bytes"))]);
            Ok(BlobStream { length: 1 << 20, stream: first.chain(futures::stream::pending()).boxed() })
        }
        async fn put(&self, d: &Digest, path: &Path, length: u64) -> Result<(), BackendError> {
            self.fs.put(d, path, length).await
        }
        async fn get_small(&self, key: &str, max: usize) -> Result<Option<Bytes>, BackendError> {
            self.fs.get_small(key, max).await
        }
        async fn put_small(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
            self.fs.put_small(key, data).await
        }
        fn name(&self) -> &str {
            "stalling"
        }
    }

    /// With one fetch slot, a stalled object holds it only for `fetch_timeout`: its fetch
    /// fails (and leaves no staging file), and the fetch queued behind it then runs.
    #[tokio::test]
    async fn a_stalled_object_frees_its_slot_after_fetch_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"a blob the backend serves".to_vec();
        let good_digest = Digest::of(&good);
        let flat = dir.path().join("backend").join("sha256");
        std::fs::create_dir_all(&flat).unwrap();
        std::fs::write(flat.join(good_digest.hex()), &good).unwrap();
        let fs = FsBackend::new(FsConfig { root: dir.path().join("backend"), ..FsConfig::default() }).await.unwrap();
        let stall = Digest::of(b"an object that stalls");
        let registry = prometheus::Registry::new();
        let cfg = shoal_swarm::SwarmConfig { store_dir: dir.path().join("store"), ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let swarm = Swarm::start(cfg, listener, &registry, shoal_swarm::Role::Origin, None, shutdown.clone()).unwrap();
        let metrics = crate::metrics::OriginMetrics::new(&registry).unwrap();
        let limits = FetchLimits {
            max_concurrent: 1,
            failure_ttl: Duration::from_secs(15),
            timeout: Duration::from_millis(300),
        };
        let fetcher = Fetcher::new(swarm, Arc::new(Stalling { fs, stall }), limits, metrics.clone(), shutdown.clone());

        let mut stalled = fetcher.ensure(stall).await;
        let mut queued = fetcher.ensure(good_digest).await;
        let wait = Duration::from_secs(20);
        let done = tokio::time::timeout(wait, queued.wait_for(|s| !matches!(s, FetchState::Running))).await;
        assert!(matches!(*done.expect("the queued fetch ran").unwrap(), FetchState::Done(_)));
        let failed = tokio::time::timeout(wait, stalled.wait_for(|s| !matches!(s, FetchState::Running))).await;
        let state = failed.expect("the stalled fetch ended").unwrap().clone();
        assert!(matches!(state, FetchState::Failed(FetchError::Timeout { .. })), "{state:?}");
        assert_eq!(metrics.fetches.with_label_values(&["timeout"]).get(), 1);
        let staged: Vec<_> = std::fs::read_dir(dir.path().join("store").join("tmp")).unwrap().collect();
        assert!(staged.is_empty(), "the stalled fetch's staging file is removed: {staged:?}");
        shutdown.cancel();
    }

    /// A peer opens (sends the bitfield of) two blobs this origin lacks: the one it owns on
    /// the ring is fetched from the backend and seeded; the one another origin owns is not.
    #[tokio::test]
    async fn a_blob_a_peer_opens_is_fetched_by_its_owner_only() {
        use shoal_core::PeerId;
        use shoal_core::ring::{OriginNode, Ring};
        use shoal_core::wire::{self, Message, PROTOCOL_VERSION};
        use tokio::io::AsyncWriteExt;

        let dir = tempfile::tempdir().unwrap();
        let flat = dir.path().join("backend").join("sha256");
        std::fs::create_dir_all(&flat).unwrap();
        let node = |id: &str, port: u16| OriginNode {
            id: id.into(),
            http: format!("http://127.0.0.1:{port}"),
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let ring = Ring::new(vec![node("o0", 1), node("o1", 2)], 1).unwrap();
        // Blobs until one is owned by each origin.
        let (mut mine, mut theirs) = (None, None);
        for i in 0u32.. {
            let data = format!("blob {i}").into_bytes();
            let d = Digest::of(&data);
            let slot = if ring.owners(&d)[0].id == "o0" { &mut mine } else { &mut theirs };
            if slot.is_none() {
                std::fs::write(flat.join(d.hex()), &data).unwrap();
                *slot = Some((d, data));
            }
            if mine.is_some() && theirs.is_some() {
                break;
            }
        }
        let ((mine, mine_data), (theirs, _)) = (mine.unwrap(), theirs.unwrap());
        let fs = FsBackend::new(FsConfig { root: dir.path().join("backend"), ..FsConfig::default() }).await.unwrap();
        let registry = prometheus::Registry::new();
        let cfg = shoal_swarm::SwarmConfig { store_dir: dir.path().join("store"), ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let swarm = Swarm::start(cfg, listener, &registry, shoal_swarm::Role::Origin, None, shutdown.clone()).unwrap();
        let metrics = crate::metrics::OriginMetrics::new(&registry).unwrap();
        let limits =
            FetchLimits { max_concurrent: 2, failure_ttl: Duration::from_secs(15), timeout: Duration::from_secs(30) };
        let fetcher = Fetcher::new(swarm.clone(), Arc::new(fs), limits, metrics.clone(), shutdown.clone());
        let wanted = swarm.wanted().expect("an origin has a wanted queue");
        assert!(swarm.wanted().is_none(), "taken once");
        // A test's own task, ended with the runtime.
        tokio::spawn(fetch_wanted(fetcher, wanted, Some(ring), "o0".into()));

        let mut peer = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = bytes::BytesMut::new();
        wire::encode(&Message::Handshake { version: PROTOCOL_VERSION, peer_id: PeerId([7; 16]), zone: None }, &mut out);
        for blob in [theirs, mine] {
            wire::encode(&Message::Bitfield { blob, num_pieces: 1, bits: &[0] }, &mut out);
        }
        peer.write_all(&out).await.unwrap();
        let held = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(f) = swarm.complete(mine).await.unwrap() {
                    return f;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the owner fetched the blob a peer opened");
        assert_eq!(held.read_at(0, mine_data.len()).unwrap(), mine_data);
        assert!(swarm.complete(theirs).await.unwrap().is_none(), "another origin's blob is left to it");
        assert_eq!(metrics.fetches.with_label_values(&["ok"]).get(), 1);
        shutdown.cancel();
    }
}
