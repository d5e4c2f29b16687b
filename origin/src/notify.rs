//! Preheat on push: `POST /notifications` takes a registry's push notifications and preheats
//! each pushed image, so its first pull is served from the swarm.
//!
//! Two formats are read, told apart by their shape:
//!
//! - docker/distribution's notification envelope (`application/vnd.docker.distribution.events.v1+json`):
//!   `{"events": [{"action": "push", "target": {"mediaType", "digest", "repository", "url", "tag"}}]}`.
//!   Only pushes of manifests count (blob pushes and pulls are skipped).
//! - Harbor's webhook: `{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"digest", "tag"}],
//!   "repository": {"repo_full_name"}}}`. Other event types are skipped.
//!
//! Each image is preheated by its manifest digest, here when this origin owns the digest on the
//! ring (or there is no ring), else by the owners through their `POST /preheat`. With
//! `notifications.prefetch`, the agents listed for a matching repository are asked to prefetch
//! it (their `POST /preheat` with `prefetch`). All of it runs in the background: the answer
//! (202, with the number of images taken) goes back at once, as registries wait on it.
//! At most [`MAX_PUSH_TASKS`] images are in hand at once (a local preheat waits for one of
//! the `max_preheats` turns); a notification with more than the room left is answered 503
//! with `Retry-After`, and the registry sends it again.
//!
//! Only callers the origin's `auth` allows are heard (a registry sends its token with
//! `endpoints[].headers`, Harbor with its webhook's `auth_header`), and the forwarded preheats
//! carry the caller's bearer token on to the owners and agents.
//!
//! Invariant: a notification never decides which bytes are accepted. It only names digests;
//! every blob is fetched and verified as in any preheat.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use shoal_core::Digest;
use shoal_core::api::{AgentPreheatRequest, PreheatRequest};
use shoal_core::registry::RepoName;
use shoal_core::ring::Ring;
use shoal_runtime::{ApiError, Cap};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Largest notification body read. Hard-coded: docker/distribution batches a few events per
/// envelope, and Harbor sends one artifact per webhook.
pub const MAX_NOTIFICATION_BODY: usize = 1 << 20;
/// Most images one notification preheats. Hard-coded.
pub const MAX_IMAGES: usize = 100;
/// Most notified images in hand at once (waiting for a preheat turn, preheating, or
/// forwarding to their owners and agents). Hard-coded: several full notifications' worth.
pub const MAX_PUSH_TASKS: usize = 256;
/// `Retry-After` of a notification refused because [`MAX_PUSH_TASKS`] are in hand.
pub const NOTIFY_RETRY_AFTER: u32 = 10;
/// The media types of manifests, which alone are preheated.
const MANIFEST_TYPES: [&str; 4] = [
    shoal_core::manifest::DOCKER_MANIFEST,
    shoal_core::manifest::DOCKER_MANIFEST_LIST,
    shoal_core::manifest::OCI_MANIFEST,
    shoal_core::manifest::OCI_INDEX,
];
/// Timeout of one forwarded preheat or prefetch request. Hard-coded.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);

/// The `notifications:` section of the origin's config. Who may notify is the origin's
/// `auth:`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Agents that prefetch what is pushed to matching repositories.
    pub prefetch: Vec<PrefetchRule>,
}

/// Pushed repositories matching any of `repositories` are prefetched by every agent in `agents`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRule {
    /// Repository patterns: `*` matches any run of characters, `/` included (`team/*`, `*`).
    pub repositories: Vec<String>,
    /// Agent API base URLs (`http://10.0.0.5:7700`).
    pub agents: Vec<String>,
}

impl NotifyConfig {
    pub fn validate(&self) -> Result<(), String> {
        for rule in &self.prefetch {
            if rule.repositories.iter().any(|p| p.is_empty()) || rule.repositories.is_empty() {
                return Err("notifications.prefetch: every rule needs non-empty repository patterns".into());
            }
            if let Some(a) = rule.agents.iter().find(|a| !(a.starts_with("http://") || a.starts_with("https://"))) {
                return Err(format!("notifications.prefetch: agent {a:?} is not an http(s) URL"));
            }
        }
        Ok(())
    }

    /// The agents that prefetch `repo`, each once.
    pub fn agents_for(&self, repo: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for rule in self.prefetch.iter().filter(|r| r.repositories.iter().any(|p| glob(p, repo))) {
            for a in &rule.agents {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
        out
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// One pushed image, as a notification names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub name: RepoName,
    pub digest: Digest,
    pub tag: Option<String>,
}

/// Why a notification body is refused (400).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("neither a docker/distribution envelope nor a Harbor webhook")]
    UnknownFormat,
}

#[derive(serde::Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(serde::Deserialize)]
struct Event {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: Target,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(serde::Deserialize)]
struct Harbor {
    #[serde(rename = "type")]
    kind: String,
    event_data: HarborData,
}

#[derive(serde::Deserialize)]
struct HarborData {
    #[serde(default)]
    resources: Vec<HarborResource>,
    repository: HarborRepo,
}

#[derive(serde::Deserialize)]
struct HarborResource {
    #[serde(default)]
    digest: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(serde::Deserialize)]
struct HarborRepo {
    repo_full_name: String,
}

/// The images a notification body names as pushed, each once, at most [`MAX_IMAGES`]. Events
/// that are not manifest pushes, or whose repository or digest is malformed, are skipped.
pub fn parse(body: &[u8]) -> Result<Vec<Pushed>, NotifyError> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    let mut out: Vec<Pushed> = Vec::new();
    let mut add = |name: &str, digest: &str, tag: Option<String>| {
        let (Ok(name), Ok(digest)) = (RepoName::parse(name), digest.parse::<Digest>()) else {
            tracing::debug!(name, digest, "notification names no valid image; skipped");
            return;
        };
        if out.len() < MAX_IMAGES && !out.iter().any(|p| p.name == name && p.digest == digest) {
            out.push(Pushed { name, digest, tag: tag.filter(|t| !t.is_empty()) });
        }
    };
    if v.get("events").is_some() {
        let env: Envelope = serde_json::from_value(v)?;
        for e in env.events.into_iter().filter(|e| e.action == "push") {
            let t = e.target;
            let is_manifest = t.url.contains("/manifests/") || MANIFEST_TYPES.contains(&t.media_type.as_str());
            if is_manifest {
                add(&t.repository, &t.digest, t.tag);
            }
        }
        return Ok(out);
    }
    if v.get("event_data").is_some() && v.get("type").is_some() {
        let h: Harbor = serde_json::from_value(v)?;
        if h.kind == "PUSH_ARTIFACT" {
            for r in h.event_data.resources {
                add(&h.event_data.repository.repo_full_name, &r.digest, r.tag);
            }
        }
        return Ok(out);
    }
    Err(NotifyError::UnknownFormat)
}

/// What the notification handler needs.
#[derive(Clone)]
pub struct NotifyState {
    pub app: AppState,
    pub config: NotifyConfig,
    /// This origin's ring id, and the ring when a cluster is configured.
    pub id: String,
    pub ring: Option<Ring>,
    pub http: reqwest::Client,
    /// Notified images in hand ([`MAX_PUSH_TASKS`]).
    pub tasks: Cap,
    pub shutdown: CancellationToken,
}

pub fn router(state: NotifyState) -> Router {
    let limit = axum::extract::DefaultBodyLimit::max(MAX_NOTIFICATION_BODY);
    Router::new().route("/notifications", post(notifications).layer(limit)).with_state(state)
}

async fn notifications(
    State(st): State<NotifyState>,
    caller: shoal_runtime::Caller,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, Response> {
    let grant = st.app.auth.authorize(&caller, &headers).map_err(crate::api::refused)?;
    let body = body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "PAYLOAD_TOO_LARGE" } else { "BAD_REQUEST" };
        ApiError::new(status, code, r.body_text()).into_response()
    })?;
    let pushed = parse(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", e.to_string()).into_response())?;
    let n = pushed.len();
    let permits = st.tasks.try_take_many(n).map_err(|_| {
        st.app.metrics.busy.with_label_values(&["notification"]).inc();
        let message = format!("{MAX_PUSH_TASKS} notified images are already in hand; {n} more do not fit");
        ApiError::busy(message, NOTIFY_RETRY_AFTER).into_response()
    })?;
    for (p, permit) in pushed.into_iter().zip(permits) {
        tracing::info!(name = %p.name, digest = %p.digest, tag = p.tag.as_deref(), "push notified; preheating");
        let st2 = st.clone();
        let bearer = grant.bearer.clone();
        shoal_runtime::spawn(
            "push-preheat",
            st.shutdown.clone(),
            shoal_runtime::request_id::inherit(async move {
                preheat_pushed(&st2, &p, bearer.as_deref()).await;
                drop(permit);
                Ok(())
            }),
        );
    }
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "images": n }))).into_response())
}

/// Preheats one pushed image (here or at its owners) and asks the matching agents to prefetch
/// it, passing the notifier's bearer token (if any) on.
async fn preheat_pushed(st: &NotifyState, p: &Pushed, bearer: Option<&str>) {
    let owners: Vec<String> = match &st.ring {
        Some(ring) => ring.owners(&p.digest).into_iter().map(|o| o.id.clone()).collect(),
        None => Vec::new(),
    };
    let req = PreheatRequest { name: p.name.to_string(), reference: p.digest.to_string(), ns: None, pin: None };
    if st.ring.is_none() || owners.contains(&st.id) {
        let app = &st.app;
        match app.preheats.start_waiting(&app.fetcher, app.upstreams.as_ref(), req).await {
            Ok(_) => tracing::debug!(name = %p.name, digest = %p.digest, "preheat started"),
            Err(e) => tracing::warn!(name = %p.name, digest = %p.digest, "preheat failed: {e:#}"),
        }
    } else if let Some(ring) = &st.ring {
        let urls = ring.owners(&p.digest).into_iter().map(|o| format!("{}/preheat", o.http.trim_end_matches('/')));
        let sent = post_first(&st.http, urls, &req, bearer).await;
        if let Err(e) = sent {
            tracing::warn!(name = %p.name, digest = %p.digest, "no owner took the preheat: {e}");
        }
    }
    let body = AgentPreheatRequest {
        name: p.name.to_string(),
        reference: p.digest.to_string(),
        ns: None,
        prefetch: true,
        pin: None,
    };
    for agent in st.config.agents_for(p.name.as_str()) {
        let url = format!("{}/preheat", agent.trim_end_matches('/'));
        if let Err(e) = post_first(&st.http, std::iter::once(url), &body, bearer).await {
            tracing::warn!(name = %p.name, digest = %p.digest, "agent prefetch not started: {e}");
        }
    }
}

/// Posts `body` to each URL in turn until one answers 2xx.
async fn post_first(
    http: &reqwest::Client,
    urls: impl Iterator<Item = String>,
    body: &impl serde::Serialize,
    bearer: Option<&str>,
) -> Result<(), String> {
    let mut last = String::from("no URL");
    for url in urls {
        let mut req = http.post(&url).timeout(FORWARD_TIMEOUT).json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(id) = shoal_runtime::request_id::current() {
            req = req.header(shoal_runtime::request_id::HEADER, id.as_str());
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("{url}: status {}", r.status()),
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("team/*", "team/app", true),
            ("team/*", "team/a/b", true),
            ("team/*", "other/app", false),
            ("*", "anything", true),
            ("*/app", "team/app", true),
            ("*/app", "team/apps", false),
            ("team/app", "team/app", true),
            ("team/app", "team/app2", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} ~ {t}");
        }
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn docker_envelopes_name_manifest_pushes_only() {
        let body = serde_json::json!({"events": [
            {"action": "push", "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": d('a'), "repository": "team/app", "url": "http://r:5000/v2/team/app/manifests/".to_string() + &d('a'), "tag": "v1"}},
            // A layer push and a pull: skipped.
            {"action": "push", "target": {"mediaType": "application/octet-stream", "digest": d('b'),
             "repository": "team/app", "url": "http://r:5000/v2/team/app/blobs/".to_string() + &d('b')}},
            {"action": "pull", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('c'),
             "repository": "team/app", "url": "http://r:5000/v2/team/app/manifests/v1"}},
            // The same manifest again, and a malformed repository: skipped.
            {"action": "push", "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": d('a'), "repository": "team/app", "url": "", "tag": "v1"}},
            {"action": "push", "target": {"mediaType": "application/vnd.oci.image.index.v1+json",
             "digest": d('e'), "repository": "Bad//Name", "url": ""}},
            {"action": "push", "target": {"mediaType": "application/vnd.oci.image.index.v1+json",
             "digest": d('f'), "repository": "team/multi", "url": ""}},
        ]});
        let got = parse(body.to_string().as_bytes()).unwrap();
        let got: Vec<(&str, String, Option<&str>)> =
            got.iter().map(|p| (p.name.as_str(), p.digest.to_string(), p.tag.as_deref())).collect();
        assert_eq!(got, [("team/app", d('a'), Some("v1")), ("team/multi", d('f'), None)]);
    }

    /// docker-registry 2.8's envelopes for `skopeo copy` of a one-layer image as `team/app:v1`,
    /// as it sent them (a blob push, then the manifest push), joined into one.
    #[test]
    fn a_captured_registry_envelope() {
        let got = parse(include_bytes!("../tests/data/registry-notification.json")).unwrap();
        let want = "sha256:3d5f9eeb2c10e6e04a852f7efd601fb6f7b9d614bc62b74ce7abb0a496f05467";
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].name.as_str(), got[0].digest.to_string().as_str(), got[0].tag.as_deref()),
            ("team/app", want, Some("v1"))
        );
    }

    #[test]
    fn harbor_webhooks_name_push_artifacts() {
        let body = |kind: &str| {
            serde_json::json!({"type": kind, "occur_at": 1, "operator": "admin", "event_data": {
                "resources": [{"digest": d('a'), "tag": "1.0", "resource_url": "harbor.example/library/app:1.0"}],
                "repository": {"name": "app", "namespace": "library", "repo_full_name": "library/app", "repo_type": "private"}}})
            .to_string()
        };
        let got = parse(body("PUSH_ARTIFACT").as_bytes()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].name.as_str(), got[0].digest.to_string(), got[0].tag.as_deref()),
            ("library/app", d('a'), Some("1.0"))
        );
        assert!(parse(body("DELETE_ARTIFACT").as_bytes()).unwrap().is_empty());
    }

    #[test]
    fn other_bodies_are_refused() {
        assert!(matches!(parse(b"{\"hello\": 1}"), Err(NotifyError::UnknownFormat)));
        assert!(matches!(parse(b"not json"), Err(NotifyError::Json(_))));
    }

    /// Notified images in hand are bounded: a notification that does not fit is answered 503
    /// with `Retry-After` (the registry sends it again), one that fits is taken.
    #[tokio::test]
    async fn notifications_past_the_bound_get_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let (app, shutdown) = crate::api::tests::state(dir.path()).await;
        let st = NotifyState {
            app,
            config: NotifyConfig::default(),
            id: "origin-0".into(),
            ring: None,
            http: reqwest::Client::new(),
            tasks: Cap::new("notified images", "MAX_PUSH_TASKS", 2),
            shutdown: shutdown.clone(),
        };
        let push = |n: u8| {
            let events: Vec<_> = (0..n)
                .map(|i| {
                    serde_json::json!({"action": "push", "target": {"mediaType": shoal_core::manifest::OCI_MANIFEST,
                    "digest": d(char::from(b'a' + i)), "repository": "team/app", "url": ""}})
                })
                .collect();
            Bytes::from(serde_json::json!({ "events": events }).to_string())
        };
        let caller = || shoal_runtime::Caller { addr: "127.0.0.1:5000".parse().unwrap(), identity: None };
        let err = notifications(State(st.clone()), caller(), HeaderMap::new(), Ok(push(3)))
            .await
            .expect_err("three do not fit in two");
        assert_eq!(
            (err.status(), err.headers().get(axum::http::header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned())),
            (StatusCode::SERVICE_UNAVAILABLE, Some(NOTIFY_RETRY_AFTER.to_string()))
        );
        assert_eq!(st.app.metrics.busy.with_label_values(&["notification"]).get(), 1);
        assert_eq!(st.tasks.available(), 2, "a refused notification holds nothing");
        let resp = notifications(State(st.clone()), caller(), HeaderMap::new(), Ok(push(2))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        shutdown.cancel();
    }

    #[test]
    fn prefetch_rules_pick_agents_once() {
        let cfg = NotifyConfig {
            prefetch: vec![
                PrefetchRule { repositories: vec!["team/*".into()], agents: vec!["http://a:7700".into()] },
                PrefetchRule {
                    repositories: vec!["*".into()],
                    agents: vec!["http://a:7700".into(), "http://b:7700".into()],
                },
            ],
        };
        assert_eq!(cfg.agents_for("team/app"), ["http://a:7700", "http://b:7700"]);
        assert!(cfg.validate().is_ok());
        let bad = NotifyConfig {
            prefetch: vec![PrefetchRule { repositories: vec!["x".into()], agents: vec!["a:7700".into()] }],
        };
        assert!(bad.validate().is_err());
    }
}
