//! Preheat: warming an image in the origin's store before anyone pulls it, so the first
//! pull of a new release is served from the swarm at once. This module knows nothing of
//! HTTP: `POST /preheat` and `GET /preheat/<id>` are `crate::api`'s, over [`Preheats`].
//!
//! A preheat ([`PreheatRequest`], from a caller `auth` allows) resolves the tag (backend, then upstream), fetches the manifest, every child manifest of
//! an index or manifest list, then each image's config and layers, all through the
//! [`Fetcher`] (so from the backend or pulled through, verified, stored and seeded). Manifests are fetched during the request, so its
//! answer (202) lists every digest; blobs are fetched in the background, at most
//! `preheat_concurrency` at a time. `GET /preheat/<id>` gives each digest's state. With
//! `"pin": true` every digest is pinned in the origin's store (never evicted) before it is
//! fetched; `"pin": false` unpins them. A repository listed in `swarm.store.pin.repositories`
//! pins its preheated digests as well.
//!
//! At most `max_preheats` jobs run at once, from the request to the last blob; another
//! request is answered 503 with `Retry-After` ([`PREHEAT_RETRY_AFTER`]), while a preheat for
//! a push notification waits for its turn ([`Preheats::start_waiting`]).
//!
//! Jobs are kept in memory, the newest [`MAX_JOBS`]; their lock is a sync `Mutex` held only
//! for map operations, never across an `.await`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use shoal_core::Digest;
use shoal_core::api::{BlobState, PreheatRequest, PreheatStatus};
use shoal_core::manifest::{MAX_MANIFEST_LEN, Manifest};
use shoal_core::registry::{Reference, RegistryHost, RepoName};
use shoal_runtime::Cap;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::fetch::{FetchError, FetchState, Fetcher, Source};
use crate::state::{Hints, settle};
use crate::upstream::Upstreams;

/// Jobs remembered. Hard-coded: the oldest is forgotten past it.
pub const MAX_JOBS: usize = 1000;
/// Most manifests one preheat walks (an index and its children). Hard-coded: real indexes
/// list a few dozen platforms at most.
pub const MAX_MANIFESTS: usize = 128;
/// Longest wait for one manifest during the request. Hard-coded.
const MANIFEST_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// `Retry-After` of a preheat refused because `max_preheats` are running.
pub const PREHEAT_RETRY_AFTER: u32 = 10;

/// The preheat jobs of one origin; cheap to clone.
#[derive(Clone)]
pub struct Preheats {
    inner: Arc<PreheatsInner>,
}

struct PreheatsInner {
    concurrency: usize,
    /// Jobs running (`max_preheats`).
    running: Cap,
    shutdown: CancellationToken,
    next: AtomicU64,
    /// Jobs by id, and ids oldest first for eviction.
    jobs: Mutex<(BTreeMap<String, PreheatStatus>, VecDeque<String>)>,
}

impl Preheats {
    pub fn new(concurrency: usize, max_running: usize, shutdown: CancellationToken) -> Preheats {
        Preheats {
            inner: Arc::new(PreheatsInner {
                concurrency: concurrency.max(1),
                running: Cap::new("preheats", "max_preheats", max_running),
                shutdown,
                next: AtomicU64::new(1),
                jobs: Mutex::new((BTreeMap::new(), VecDeque::new())),
            }),
        }
    }

    pub fn get(&self, id: &str) -> Option<PreheatStatus> {
        self.inner.jobs.lock().expect("preheat lock").0.get(id).cloned()
    }

    fn insert(&self, status: PreheatStatus) {
        let mut jobs = self.inner.jobs.lock().expect("preheat lock");
        let (map, order) = &mut *jobs;
        while order.len() >= MAX_JOBS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        order.push_back(status.id.clone());
        map.insert(status.id.clone(), status);
    }

    fn set(&self, id: &str, digest: Digest, state: BlobState, error: Option<String>) {
        let mut jobs = self.inner.jobs.lock().expect("preheat lock");
        if let Some(s) = jobs.0.get_mut(id) {
            s.states.insert(digest, state);
            if let Some(e) = error {
                s.errors.insert(digest, e);
            }
        }
    }
}

/// Why a preheat could not start.
#[derive(Debug, thiserror::Error)]
pub enum PreheatError {
    /// `max_preheats` jobs run (only [`Preheats::start`] refuses; the waiting start waits).
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Name(String),
    #[error("{0}")]
    Reference(String),
    /// The `ns` is not a registry host.
    #[error("{0}")]
    Ns(String),
    #[error("resolving the reference: {0}")]
    Tag(#[from] crate::tags::TagError),
    #[error("manifest {digest}: {source}")]
    Fetch { digest: Digest, source: FetchError },
    #[error("manifest {digest}: still fetching after {}s", MANIFEST_WAIT.as_secs())]
    Timeout { digest: Digest },
    #[error("{digest} is not a usable manifest: {reason}")]
    BadManifest { digest: Digest, reason: String },
    #[error("more than {MAX_MANIFESTS} manifests")]
    TooManyManifests,
}

impl Preheats {
    /// Starts a preheat with the fetcher (and its backend) and the pull-through `upstreams`:
    /// its status once every manifest is fetched, or [`PreheatError::Busy`] while
    /// `max_preheats` jobs run.
    pub async fn start(
        &self,
        fetcher: &Fetcher,
        upstreams: Option<&Arc<Upstreams>>,
        req: PreheatRequest,
    ) -> Result<PreheatStatus, PreheatError> {
        let running = self.inner.running.try_take().map_err(|full| PreheatError::Busy(full.to_string()))?;
        self.run(fetcher, upstreams, req, running).await
    }

    /// A preheat that waits for one of the `max_preheats` turns instead of being refused.
    pub async fn start_waiting(
        &self,
        fetcher: &Fetcher,
        upstreams: Option<&Arc<Upstreams>>,
        req: PreheatRequest,
    ) -> Result<PreheatStatus, PreheatError> {
        let running = self.inner.running.take().await;
        self.run(fetcher, upstreams, req, running).await
    }

    /// Runs a preheat holding `running` until its last blob is fetched.
    async fn run(
        &self,
        fetcher: &Fetcher,
        upstreams: Option<&Arc<Upstreams>>,
        req: PreheatRequest,
        running: OwnedSemaphorePermit,
    ) -> Result<PreheatStatus, PreheatError> {
        let name = RepoName::parse(&req.name).map_err(|e| PreheatError::Name(e.to_string()))?;
        let reference = Reference::parse(&req.reference).map_err(|e| PreheatError::Reference(e.to_string()))?;
        let ns = match req.ns.as_deref().filter(|s| !s.is_empty()) {
            Some(h) => Some(RegistryHost::parse(h).map_err(|e| PreheatError::Ns(e.to_string()))?),
            None => None,
        };
        let upstreams = upstreams.map(Arc::as_ref);
        let digest = match &reference {
            Reference::Digest(d) => *d,
            Reference::Tag(t) => crate::tags::resolve_through(fetcher, upstreams, &name, t, ns.as_ref()).await?,
        };
        let source = crate::state::source(upstreams, &Hints { name: Some(name.clone()), ns });
        let (manifests, blobs) = walk(fetcher, digest, source.clone()).await?;
        let swarm = fetcher.swarm();
        for d in manifests.iter().chain(&blobs) {
            if let Some(pin) = req.pin
                && let Err(e) = swarm.pin(*d, pin).await
            {
                tracing::warn!(%d, "cannot record the pin: {e:#}");
            }
            swarm.note_repository(name.as_str(), *d).await;
        }
        let id = format!("ph-{}", self.inner.next.fetch_add(1, Ordering::Relaxed));
        let mut states = BTreeMap::new();
        for d in &manifests {
            states.insert(*d, BlobState::Done);
        }
        for d in &blobs {
            states.entry(*d).or_insert(BlobState::Pending);
        }
        let status = PreheatStatus {
            id: id.clone(),
            name: name.to_string(),
            reference: reference.to_string(),
            manifest: digest,
            digests: manifests.iter().chain(blobs.iter()).copied().collect(),
            states,
            errors: BTreeMap::new(),
        };
        self.insert(status.clone());
        tracing::info!(%name, %reference, %digest, id, manifests = manifests.len(), blobs = blobs.len(), "preheat started");
        let preheats = self.clone();
        let fetcher = fetcher.clone();
        shoal_runtime::spawn("preheat", preheats.inner.shutdown.clone(), async move {
            fetch_all(&preheats, &fetcher, &id, blobs, source).await;
            drop(running);
            Ok(())
        });
        Ok(status)
    }
}

/// Fetches the manifest `root` and every manifest below it; returns the manifests (in walk
/// order) and the config and layer blobs they reference (first appearance order).
async fn walk(
    fetcher: &Fetcher,
    root: Digest,
    source: Option<Source>,
) -> Result<(Vec<Digest>, Vec<Digest>), PreheatError> {
    let mut queue = VecDeque::from([root]);
    let (mut manifests, mut blobs) = (Vec::new(), Vec::new());
    while let Some(d) = queue.pop_front() {
        if manifests.contains(&d) {
            continue;
        }
        if manifests.len() >= MAX_MANIFESTS {
            return Err(PreheatError::TooManyManifests);
        }
        let bytes = read_manifest(fetcher, d, source.clone()).await?;
        manifests.push(d);
        match shoal_core::manifest::parse(&bytes) {
            Ok(m @ Manifest::Index { .. }) => queue.extend(m.references()),
            Ok(m @ Manifest::Image { .. }) => {
                for r in m.references() {
                    if !blobs.contains(&r) {
                        blobs.push(r);
                    }
                }
            }
            Err(e) => return Err(PreheatError::BadManifest { digest: d, reason: e.to_string() }),
        }
    }
    Ok((manifests, blobs))
}

/// The bytes of manifest `digest`, fetched into the store first if needed.
async fn read_manifest(fetcher: &Fetcher, digest: Digest, source: Option<Source>) -> Result<Vec<u8>, PreheatError> {
    match settle(fetcher.ensure_from(digest, source).await, MANIFEST_WAIT).await {
        FetchState::Done(_) => {}
        FetchState::Running => return Err(PreheatError::Timeout { digest }),
        FetchState::Failed(source) => return Err(PreheatError::Fetch { digest, source }),
    }
    let store_err = |m: String| PreheatError::Fetch { digest, source: FetchError::Store(m.into()) };
    let swarm = fetcher.swarm();
    let file = swarm
        .complete(digest)
        .await
        .map_err(|e| store_err(format!("{e:#}")))?
        .ok_or_else(|| store_err("blob vanished from the store".into()))?;
    let len = file.meta().length();
    if len > MAX_MANIFEST_LEN {
        return Err(PreheatError::BadManifest { digest, reason: format!("{len} bytes is too large for a manifest") });
    }
    let len = usize::try_from(len).map_err(|_| store_err("length".into()))?;
    swarm.store().blocking().run(move || file.read_at(0, len)).await.map_err(|e| store_err(e.to_string()))
}

/// Fetches `blobs` through the fetcher, a bounded number at a time, recording each outcome.
async fn fetch_all(preheats: &Preheats, fetcher: &Fetcher, id: &str, blobs: Vec<Digest>, source: Option<Source>) {
    let n = preheats.inner.concurrency;
    futures::stream::iter(blobs)
        .for_each_concurrent(n, |d| {
            let source = source.clone();
            async move {
                let mut rx = fetcher.ensure_from(d, source).await;
                // A fetch always ends (done or failed); its own timeouts bound it.
                let _ = rx.wait_for(|s| !matches!(s, FetchState::Running)).await;
                let state = rx.borrow().clone();
                match state {
                    FetchState::Done(_) => preheats.set(id, d, BlobState::Done, None),
                    FetchState::Failed(e) => preheats.set(id, d, BlobState::Failed, Some(format!("{e:#}"))),
                    FetchState::Running => {
                        preheats.set(id, d, BlobState::Failed, Some("fetch ended without a result".into()))
                    }
                }
            }
        })
        .await;
    tracing::info!(id, "preheat finished");
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn status(id: &str) -> PreheatStatus {
        PreheatStatus {
            id: id.into(),
            name: "a".into(),
            reference: "v1".into(),
            manifest: Digest::of(b"m"),
            digests: vec![Digest::of(b"m"), Digest::of(b"l")],
            states: BTreeMap::from([(Digest::of(b"m"), BlobState::Done), (Digest::of(b"l"), BlobState::Pending)]),
            errors: BTreeMap::new(),
        }
    }

    #[test]
    fn jobs_are_bounded_and_updated() {
        let p = Preheats::new(2, 1, CancellationToken::new());
        for i in 0..MAX_JOBS + 5 {
            p.insert(status(&format!("ph-{i}")));
        }
        assert!(p.get("ph-0").is_none(), "the oldest jobs are forgotten");
        assert!(p.get(&format!("ph-{}", MAX_JOBS + 4)).is_some());
        let id = format!("ph-{}", MAX_JOBS);
        assert!(!p.get(&id).unwrap().finished());
        p.set(&id, Digest::of(b"l"), BlobState::Failed, Some("boom".into()));
        let s = p.get(&id).unwrap();
        assert!(s.finished());
        assert_eq!(s.errors.get(&Digest::of(b"l")).map(String::as_str), Some("boom"));
    }

    /// `max_preheats` jobs run at once; one more request is answered 503 with `Retry-After`
    /// before any work, and goes on once a job ended.
    #[tokio::test]
    async fn preheats_past_max_preheats_get_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let (st, shutdown) = crate::api::tests::state(dir.path()).await;
        let req = || PreheatRequest {
            name: "team/app".into(),
            reference: Digest::of(b"no manifest").to_string(),
            ns: None,
            pin: None,
        };
        let running = st.preheats.inner.running.try_take().unwrap();
        let err = crate::api::start_preheat(&st, req()).await.expect_err("refused while a job runs");
        assert_eq!((err.status, err.retry_after), (StatusCode::SERVICE_UNAVAILABLE, Some(PREHEAT_RETRY_AFTER)));
        assert!(err.message.contains("max_preheats"), "{}", err.message);
        assert_eq!(st.metrics.busy.with_label_values(&["preheat"]).get(), 1);
        drop(running);
        let err = crate::api::start_preheat(&st, req()).await.expect_err("the manifest is missing");
        assert_eq!(
            (err.status, err.code),
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            "past the cap: {}",
            err.message
        );
        assert_eq!(st.preheats.inner.running.available(), 1, "a failed walk gives its turn back");
        shutdown.cancel();
    }

    #[test]
    fn status_json_shape() {
        let json = serde_json::to_value(status("ph-1")).unwrap();
        assert_eq!(json["id"], "ph-1");
        assert_eq!(json["states"][Digest::of(b"l").to_string()], "pending");
        assert_eq!(json["digests"].as_array().map(Vec::len), Some(2));
    }
}
