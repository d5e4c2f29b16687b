//! The origin's shared state, apart from its HTTP layer: [`AppState`] (what every handler
//! reads), the pull-through [`Hints`] of a request, and [`settle`].
//!
//! Tag resolution ([`crate::tags`]) and preheat ([`crate::preheat`]) take the fetcher, the
//! backend and the upstreams they use, not this state, so they run without the HTTP layer;
//! mapping their errors to HTTP answers is `crate::api`'s job alone.

use std::sync::Arc;

use shoal_core::Digest;
use shoal_core::registry::{RegistryHost, RepoName};
use shoal_runtime::{Authorizer, Cap};
use shoal_swarm::Swarm;
use tokio::sync::watch;

use crate::fetch::{FetchState, Fetcher, Source};
use crate::metrics::OriginMetrics;
use crate::upstream::Upstreams;

/// What the origin's handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub swarm: Swarm,
    pub fetcher: Fetcher,
    pub metainfo_wait: std::time::Duration,
    pub max_upload: u64,
    /// Uploads staging at once (`max_uploads`).
    pub uploads: Cap,
    pub metrics: OriginMetrics,
    /// The pull-through upstreams, if configured.
    pub upstreams: Option<Arc<Upstreams>>,
    pub preheats: crate::preheat::Preheats,
    /// Who may upload and preheat.
    pub auth: Authorizer,
}

/// Pull-through hints, validated: the repository a request is for and the registry host
/// the client named. Empty values count as absent.
#[derive(Clone, Debug, Default)]
pub struct Hints {
    pub name: Option<RepoName>,
    pub ns: Option<RegistryHost>,
}

impl AppState {
    /// Records that `digest` was asked for through the repository `hints` name, which pins it
    /// if that repository is pinned (`swarm.store.pin.repositories`).
    pub async fn note_repository(&self, hints: &Hints, digest: Digest) {
        if let Some(name) = &hints.name {
            self.swarm.note_repository(name.as_str(), digest).await;
        }
    }

    /// Where a blob named by `hints` may be pulled from when the backend lacks it.
    pub fn source(&self, hints: &Hints) -> Option<Source> {
        source(self.upstreams.as_deref(), hints)
    }
}

/// Where a blob named by `hints` may be pulled from when the backend lacks it: the upstream
/// `hints.ns` selects (the default one without it), if pull-through is configured.
pub fn source(upstreams: Option<&Upstreams>, hints: &Hints) -> Option<Source> {
    let name = hints.name.clone()?;
    let upstream = upstreams?.select(hints.ns.as_ref(), &name)?;
    Some(Source { upstream, name })
}

/// Waits up to `wait` for a fetch to settle.
pub(crate) async fn settle(mut rx: watch::Receiver<FetchState>, wait: std::time::Duration) -> FetchState {
    let _ = tokio::time::timeout(wait, rx.wait_for(|s| !matches!(s, FetchState::Running))).await;
    rx.borrow().clone()
}
