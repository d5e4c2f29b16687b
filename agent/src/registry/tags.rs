//! Tag resolution for the agent: a tag names a manifest digest through the origins
//! (`GET <origin>/tags/<name>/<tag>` → `sha256:<hex>`), cached for a configurable TTL because
//! tags move; digests never do, and the blobs themselves are cached in the store.
//!
//! The tag's origins are the ring owners of a digest made from the tag's name, so every agent
//! asks the same origins about the same tag. When every origin fails, an expired entry is
//! served rather than failing the pull (logged); a tag the origins deny is dropped.
//! The cache is keyed by the `ns` query parameter too, so tags of different upstream
//! registries never mix, and is passed on to the origins (`?ns=`) for pull-through. Its lock is a sync `Mutex` held only for map operations, never across
//! an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_core::Digest;
use shoal_core::registry::{RepoName, Tag};
use shoal_core::ring::Ring;
use tokio::time::Instant;

/// Most tags cached. Hard-coded: past it, expired entries are swept, then all are dropped.
const MAX_CACHED: usize = 10_000;

/// Why a tag could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    /// An origin answered 404: answer `MANIFEST_UNKNOWN`.
    #[error("tag {tag} of {name} is unknown")]
    Unknown { name: RepoName, tag: Tag },
    /// No origin gave an answer: retry later.
    #[error("no origin resolved tag {tag} of {name}: {last}")]
    Unavailable { name: RepoName, tag: Tag, last: String },
}

type Key = (Option<String>, RepoName, Tag);

/// Resolves tags to digests; cheap to clone.
#[derive(Clone)]
pub struct TagResolver {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Ring,
    http: reqwest::Client,
    ttl: Duration,
    cache: Mutex<HashMap<Key, (Digest, Instant)>>,
}

impl TagResolver {
    /// Resolves through the origins of `ring`; answers are reused for `ttl` (zero: never).
    /// With `tls`, the origins are asked over mutual TLS.
    pub fn new(ring: Ring, ttl: Duration, tls: Option<&shoal_runtime::Tls>) -> TagResolver {
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(30));
        if let Some(tls) = tls {
            builder = tls.http_client(builder);
        }
        let http = builder.build().expect("http client builds");
        TagResolver { inner: Arc::new(Inner { ring, http, ttl, cache: Mutex::new(HashMap::new()) }) }
    }

    /// The digest `name:tag` points at. `ns` is the upstream registry the client named (the
    /// `ns` query parameter), kept apart in the cache.
    pub async fn resolve(&self, ns: Option<&str>, name: &RepoName, tag: &Tag) -> Result<Digest, TagError> {
        let key: Key = (ns.map(str::to_owned), name.clone(), tag.clone());
        let cached = self.inner.cache.lock().expect("tag cache lock").get(&key).copied();
        if let Some((d, at)) = cached
            && at.elapsed() < self.inner.ttl
        {
            return Ok(d);
        }
        match self.ask_origins(ns, name, tag).await {
            Ok(d) => {
                self.insert(key, d);
                Ok(d)
            }
            Err(e @ TagError::Unknown { .. }) => {
                self.inner.cache.lock().expect("tag cache lock").remove(&key);
                Err(e)
            }
            Err(e @ TagError::Unavailable { .. }) => match cached {
                Some((d, _)) => {
                    tracing::warn!(%name, %tag, %d, "origins unavailable, serving an expired tag: {e:#}");
                    Ok(d)
                }
                None => Err(e),
            },
        }
    }

    fn insert(&self, key: Key, d: Digest) {
        if self.inner.ttl.is_zero() {
            return;
        }
        let mut cache = self.inner.cache.lock().expect("tag cache lock");
        if cache.len() >= MAX_CACHED {
            let ttl = self.inner.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (d, Instant::now()));
    }

    /// Asks the tag's origins, passing `ns` on so an origin can resolve it upstream.
    async fn ask_origins(&self, ns: Option<&str>, name: &RepoName, tag: &Tag) -> Result<Digest, TagError> {
        let place = Digest::of(format!("tag\0{name}\0{tag}").as_bytes());
        let mut last = String::from("no origin configured");
        for node in self.inner.ring.owners(&place) {
            let url = format!("{}/tags/{name}/{tag}", node.http.trim_end_matches('/'));
            let query: Vec<(&str, &str)> = ns.map(|n| ("ns", n)).into_iter().collect();
            let resp = match self.inner.http.get(&url).query(&query).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            match resp.status().as_u16() {
                200 => {
                    let text = match resp.text().await {
                        Ok(t) => t,
                        Err(e) => {
                            last = format!("{url}: {e}");
                            continue;
                        }
                    };
                    match text.trim().parse() {
                        Ok(d) => return Ok(d),
                        Err(e) => last = format!("{url}: not a digest: {e}"),
                    }
                }
                404 => return Err(TagError::Unknown { name: name.clone(), tag: tag.clone() }),
                s => {
                    // The origin's error body says why (an upstream denial, say); keep a bounded part.
                    let body = resp.text().await.unwrap_or_default();
                    let body: String = body.trim().chars().take(512).collect();
                    last = format!("{url}: status {s}: {body}");
                }
            }
        }
        Err(TagError::Unavailable { name: name.clone(), tag: tag.clone(), last })
    }
}
