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

use std::io::Write;
use std::sync::Arc;

use dashmap::DashMap;
use futures::StreamExt;
use shoal_core::metainfo::MetaInfoBuilder;
use shoal_core::{Digest, MetaInfo};
use shoal_swarm::Swarm;
use tokio::sync::{Semaphore, watch};
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
}

impl FetchError {
    fn from_upstream(digest: Digest, e: UpstreamError) -> FetchError {
        match e {
            UpstreamError::NotFound => FetchError::NotFound(digest),
            e => FetchError::Upstream(e),
        }
    }
}

#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    swarm: Swarm,
    backend: Arc<dyn Backend>,
    running: DashMap<Digest, watch::Receiver<FetchState>>,
    /// Failures by digest: when, why, and whether an upstream was tried.
    failed: DashMap<Digest, (Instant, FetchError, bool)>,
    slots: Semaphore,
    failure_ttl: std::time::Duration,
    metrics: crate::metrics::OriginMetrics,
}

impl Fetcher {
    pub fn new(
        swarm: Swarm,
        backend: Arc<dyn Backend>,
        max_concurrent: usize,
        failure_ttl: std::time::Duration,
        metrics: crate::metrics::OriginMetrics,
    ) -> Fetcher {
        Fetcher {
            inner: Arc::new(Inner {
                swarm,
                backend,
                running: DashMap::new(),
                failed: DashMap::new(),
                slots: Semaphore::new(max_concurrent),
                failure_ttl,
                metrics,
            }),
        }
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
        if let Some(e) = inner.failed.get(&digest)
            && e.0.elapsed() < inner.failure_ttl
            && (e.2 || source.is_none())
        {
            return watch::channel(FetchState::Failed(e.1.clone())).1;
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
        tokio::spawn(async move {
            let tried_upstream = source.is_some();
            let state = match this.fetch(digest, source).await {
                Ok(meta) => {
                    this.inner.metrics.fetches.with_label_values(&["ok"]).inc();
                    FetchState::Done(meta)
                }
                Err(e) => {
                    tracing::warn!(%digest, "fetch failed: {e:#}");
                    let label = if matches!(e, FetchError::NotFound(_)) { "not_found" } else { "error" };
                    this.inner.metrics.fetches.with_label_values(&[label]).inc();
                    this.inner.failed.insert(digest, (Instant::now(), e.clone(), tried_upstream));
                    FetchState::Failed(e)
                }
            };
            tx.send_replace(state);
            this.inner.running.remove(&digest);
        });
        rx
    }

    async fn fetch(&self, digest: Digest, source: Option<Source>) -> Result<MetaInfo, FetchError> {
        let inner = &self.inner;
        let _slot = inner.slots.acquire().await.expect("never closed");
        let started = Instant::now();
        let (blob, upstream) = match inner.backend.get(&digest).await {
            Ok(b) => (b, None),
            Err(BackendError::NotFound) => match &source {
                Some(src) => (pull_through(src, digest).await?, Some(&src.upstream)),
                None => return Err(FetchError::NotFound(digest)),
            },
            Err(other) => return Err(FetchError::Backend(format!("{other:#}").into())),
        };
        let store = inner.swarm.store().clone();
        let staged = store.tmp_path();
        let res = stage(&store, &staged, digest, blob, &inner.metrics).await;
        let meta = match res {
            Ok(m) => m,
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
