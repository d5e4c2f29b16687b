//! The Shoal agent: runs on every host. Its HTTP API serves blobs by digest; a blob it does
//! not hold is downloaded through the swarm (metainfo from the origin ring, pieces from peers
//! and origins) and streamed to the client piece by piece as each piece verifies. Completed
//! blobs stay in the local store and are seeded to other agents. Under `/v2/` the same API
//! speaks the Registry v2 / OCI distribution read protocol ([`registry`]), so container
//! runtimes pull through it.
//!
//! Invariant: every byte served matched a piece hash of the blob's metainfo, and a blob read
//! from the store also matched its sha256. A response for a blob still downloading (whole or
//! a `Range`) ends once its range is covered, before the whole blob's sha256 is checked, so
//! its bytes are the blob's because the metainfo is: authentic when it came from an origin
//! over TLS (`tls`), which built it from content that matched the digest. Without TLS anyone
//! who can answer for an origin can make the agent stream other content under a digest until
//! the commit's sha256 check fails the download; a client that checks the digest (registry
//! clients do) still rejects it.
//!
//! Entry point: [`run`] takes its listeners and a shutdown token, so tests bind port 0 and
//! many agents run in one process.

pub mod access;
pub mod api;
pub mod config;
pub mod metrics;
pub mod origin_client;
pub mod registry;
pub mod runtime_config;
pub mod stat;

use std::net::SocketAddr;

use shoal_runtime::Admin;
use shoal_swarm::{Role, Swarm};
use tokio_util::sync::CancellationToken;

pub use config::{Config, ValidConfig};

pub use shoal_runtime::Listeners;

/// A running agent.
#[derive(Clone)]
pub struct Agent {
    pub swarm: Swarm,
    pub http_addr: SocketAddr,
    pub admin: Admin,
    /// The HTTP servers' deadlines and connection cap (the config's `http:`).
    pub http: shoal_runtime::HttpConfig,
}

/// Starts an agent; it runs until `shutdown` is cancelled. The returned future of
/// [`Agent::serve`] completes when the agent has drained.
pub async fn start(
    config: ValidConfig,
    listeners: Listeners,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<(Agent, impl Future<Output = std::io::Result<()>> + use<>)> {
    let cfg = &config.config;
    // After the origins' names are looked up (a `--check-config` only checks their form).
    cfg.swarm.check_origins(&cfg.origins).map_err(anyhow::Error::msg)?;
    let admin = Admin::new(registry.clone());
    let tls = config.tls.clone();
    if let Some(t) = &tls {
        t.register(&registry)?;
    }
    let role = Role::Agent { origins: config.ring.clone() };
    let swarm = Swarm::start(cfg.swarm.clone(), listeners.peer, &registry, role, tls.clone(), shutdown.clone())?;
    let http_addr = listeners.http.local_addr()?;
    let origins = origin_client::OriginClient::new(config.ring.clone(), cfg.origin_fetch_timeout.get(), tls.as_ref());
    let metrics = metrics::AgentMetrics::new(&registry)?;
    let registry_state = registry::RegistryState {
        swarm: swarm.clone(),
        origins: origins.clone(),
        metrics: metrics.clone(),
        tags: registry::TagResolver::new(config.ring.clone(), cfg.tag_ttl.get(), tls.as_ref()),
        shutdown: shutdown.child_token(),
        auth: config.auth.clone(),
        prefetches: shoal_runtime::Cap::new("prefetches", "max_prefetches", cfg.max_prefetches),
    };
    let stat_state = stat::StatState::new(
        swarm.clone(),
        origins.clone(),
        config.ring.clone(),
        cfg.swarm.trackers.clone(),
        tls.as_ref(),
    );
    let state = api::AppState { swarm: swarm.clone(), origins, metrics };
    let router = api::router(state).merge(registry::router(registry_state)).merge(stat::router(stat_state));
    let router = access::host_only(router, cfg.api_networks.clone());
    let router = shoal_runtime::request_id::with_request_id(router, "agent").merge(admin.router());
    let api_tls = if cfg.api_tls { tls.as_ref() } else { None };
    let client_auth = tls.as_ref().map(|t| t.config().http_client_auth).unwrap_or_default();
    let listener = shoal_runtime::tls::HttpListener::new(listeners.http, api_tls, client_auth)?;
    tracing::info!(%http_addr, tls = api_tls.is_some(), "agent api listening");
    let grace = cfg.shutdown_grace.get();
    let http = cfg.http.clone();
    let (a, s) = (admin.clone(), swarm.clone());
    let serve = async move {
        let served = a.serve(listener, router, shutdown, grace, &http).await;
        // The next start ranks the store's blobs by these last uses.
        s.persist_last_uses().await;
        served
    };
    Ok((Agent { swarm, http_addr, admin, http: cfg.http.clone() }, serve))
}

/// Serves the agent's `/health`, `/ready` and `/metrics` alone on `listener` (the config's
/// `metrics_listen`) until `shutdown` is cancelled, beside the API [`start`] serves.
pub fn serve_admin(
    agent: &Agent,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    grace: std::time::Duration,
) -> impl Future<Output = std::io::Result<()>> + use<> {
    let router = agent.admin.router();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "agent metrics listening");
    }
    let http = agent.http.clone();
    async move { shoal_runtime::serve_with(listener, router, shutdown, grace, &http).await }
}

/// Runs an agent until `shutdown` is cancelled and its HTTP server has drained.
pub async fn run(
    config: ValidConfig,
    listeners: Listeners,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (_agent, serve) = start(config, listeners, registry, shutdown).await?;
    serve.await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent on loopback ports whose origin does not answer: enough for the HTTP surface.
    async fn agent(
        dir: &std::path::Path,
        registry: prometheus::Registry,
    ) -> (Agent, CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>) {
        agent_with(dir, registry, "http://127.0.0.1:9", "").await
    }

    /// An agent whose one origin's API is `origin`, with more config lines.
    async fn agent_with(
        dir: &std::path::Path,
        registry: prometheus::Registry,
        origin: &str,
        extra: &str,
    ) -> (Agent, CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>) {
        let cfg: Config = shoal_runtime::config::parse(&format!(
            "origins: [{{ id: o0, http: '{origin}', peer: '127.0.0.1:9' }}]\n\
             origin_replicas: 1\nswarm: {{ store_dir: '{}' }}\n{extra}",
            dir.display()
        ))
        .unwrap();
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let listeners = Listeners { http: bind().await.unwrap(), peer: bind().await.unwrap() };
        let shutdown = CancellationToken::new();
        let (agent, serve) = start(cfg.validate().unwrap(), listeners, registry, shutdown.clone()).await.unwrap();
        // Test-only: the handle is awaited for the drain's result.
        (agent, shutdown, tokio::spawn(serve))
    }

    async fn status(url: String) -> u16 {
        reqwest::get(url).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn the_admin_listener_serves_health_and_metrics_but_not_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let (agent, shutdown, task) = agent(dir.path(), prometheus::Registry::new()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = format!("http://{}", listener.local_addr().unwrap());
        // Test-only: the handle is awaited.
        let admin_task =
            tokio::spawn(serve_admin(&agent, listener, shutdown.clone(), std::time::Duration::from_secs(1)));
        let api = format!("http://{}", agent.http_addr);

        assert_eq!(status(format!("{api}/v2/")).await, 200);
        assert_eq!(status(format!("{admin}/health")).await, 200);
        assert_eq!(status(format!("{admin}/ready")).await, 200);
        assert_eq!(status(format!("{admin}/metrics")).await, 200);
        for path in ["/v2/", "/blobs/sha256:00", "/debug/blobs/sha256:00"] {
            assert_eq!(status(format!("{admin}{path}")).await, 404, "{path} on the admin listener");
        }
        let res = reqwest::Client::new().post(format!("{admin}/preheat")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 404);

        shutdown.cancel();
        task.await.unwrap().unwrap();
        admin_task.await.unwrap().unwrap();
    }

    fn value(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
        let families = registry.gather();
        let Some(f) = families.iter().find(|f| f.name() == name) else {
            return 0.0;
        };
        f.get_metric()
            .iter()
            .filter(|m| labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    #[tokio::test]
    async fn registry_requests_cache_hits_and_served_bytes_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let registry = prometheus::Registry::new();
        let (agent, shutdown, task) = agent(dir.path(), registry.clone()).await;
        let data = b"a layer, already in the local store".to_vec();
        let meta = shoal_core::MetaInfo::build(&data);
        let store = agent.swarm.store();
        let staged = store.tmp_path();
        std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
        std::fs::write(&staged, &data).unwrap();
        store.commit_verified(meta.clone(), staged).await.unwrap();
        let api = format!("http://{}", agent.http_addr);
        let missing = shoal_core::MetaInfo::build(b"not stored anywhere").digest();

        assert_eq!(status(format!("{api}/v2/")).await, 200);
        let body = reqwest::get(format!("{api}/v2/library/x/blobs/{}", meta.digest())).await.unwrap();
        assert_eq!(body.status().as_u16(), 200);
        assert_eq!(body.bytes().await.unwrap().as_ref(), &data[..]);
        let res =
            reqwest::Client::new().head(format!("{api}/v2/library/x/blobs/{}", meta.digest())).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let miss = status(format!("{api}/v2/library/x/blobs/{missing}")).await;
        assert!(miss >= 500, "the origin does not answer: {miss}");
        assert_eq!(status(format!("{api}/v2/library/x/blobs/sha256:zz")).await, 400);

        let requests = "shoal_agent_registry_requests_total";
        assert_eq!(value(&registry, requests, &[("route", "base"), ("status", "200")]), 1.0);
        assert_eq!(value(&registry, requests, &[("route", "blob"), ("status", "200")]), 2.0);
        assert_eq!(value(&registry, requests, &[("route", "blob"), ("status", &miss.to_string())]), 1.0);
        assert_eq!(value(&registry, requests, &[("route", "invalid")]), 1.0);
        assert_eq!(value(&registry, "shoal_agent_cache_total", &[("result", "hit")]), 2.0);
        assert_eq!(value(&registry, "shoal_agent_cache_total", &[("result", "miss")]), 1.0);
        assert_eq!(value(&registry, "shoal_agent_served_bytes_total", &[]), data.len() as f64, "HEAD sends no body");

        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn origins_outside_the_peer_networks_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: Config = shoal_runtime::config::parse(&format!(
            "origins: [{{ id: o0, http: 'http://127.0.0.1:9', peer: '10.0.0.1:7801' }}]\n\
             origin_replicas: 1\nswarm: {{ store_dir: '{}', peer_networks: ['127.0.0.0/8'] }}\n",
            dir.path().display()
        ))
        .unwrap();
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let listeners = Listeners { http: bind().await.unwrap(), peer: bind().await.unwrap() };
        let res =
            start(cfg.validate().unwrap(), listeners, prometheus::Registry::new(), CancellationToken::new()).await;
        let err = format!("{:#}", res.err().expect("refused"));
        assert!(err.contains("o0's peer address 10.0.0.1:7801 is outside swarm.peer_networks"), "{err}");
    }

    /// A client whose connections come from `ip`.
    fn client_from(ip: &str) -> reqwest::Client {
        reqwest::Client::builder().local_address(ip.parse::<std::net::IpAddr>().unwrap()).build().unwrap()
    }

    /// Reading through an agent is bound to its host: a caller outside `api_networks` gets
    /// 403, in the Registry's form under `/v2/`; health and metrics stay open.
    #[tokio::test]
    async fn callers_outside_the_api_networks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (agent, shutdown, task) =
            agent_with(dir.path(), prometheus::Registry::new(), "http://127.0.0.1:9", "api_networks: ['127.0.0.2']\n")
                .await;
        let api = format!("http://{}", agent.http_addr);
        let outside = client_from("127.0.0.1");
        let res = outside.get(format!("{api}/v2/")).send().await.unwrap();
        assert_eq!(res.status(), 403);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED", "{body}");
        let d = shoal_core::Digest::of(b"x");
        for path in [format!("/blobs/{d}"), format!("/stat/blobs/{d}"), format!("/debug/blobs/{d}")] {
            let res = outside.get(format!("{api}{path}")).send().await.unwrap();
            assert_eq!(res.status(), 403, "{path}");
            let body: shoal_core::api::ErrorBody = res.json().await.unwrap();
            assert_eq!(body.code, "DENIED", "{path}");
        }
        let res = outside.post(format!("{api}/preheat")).json(&serde_json::json!({})).send().await.unwrap();
        assert_eq!(res.status(), 403);
        assert_eq!(outside.get(format!("{api}/health")).send().await.unwrap().status(), 200);
        // From inside the networks, the same API answers.
        assert_eq!(client_from("127.0.0.2").get(format!("{api}/v2/")).send().await.unwrap().status(), 200);
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    /// `POST /preheat` needs a caller `auth` allows, and its token goes on to the origin.
    #[tokio::test]
    async fn a_preheat_needs_an_allowed_caller_whose_token_goes_to_the_origin() {
        let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let s = seen.clone();
        let origin = axum::Router::new().route(
            "/preheat",
            axum::routing::post(move |h: axum::http::HeaderMap| {
                let auth = h.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                s.lock().unwrap().push(auth);
                async {
                    let m = shoal_core::Digest::of(b"m");
                    let status = shoal_core::api::PreheatStatus {
                        id: "ph-1".into(),
                        name: "team/app".into(),
                        reference: m.to_string(),
                        manifest: m,
                        digests: vec![m],
                        states: [(m, shoal_core::api::BlobState::Done)].into(),
                        errors: Default::default(),
                    };
                    (axum::http::StatusCode::ACCEPTED, axum::Json(status))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin_url = format!("http://{}", listener.local_addr().unwrap());
        // Test-only server: it ends with the test's runtime.
        tokio::spawn(async move { axum::serve(listener, origin).await });
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "ops-token\n").unwrap();
        let extra = format!("auth: {{ tokens_file: '{}' }}\n", tokens.display());
        let (agent, shutdown, task) =
            agent_with(&dir.path().join("store"), prometheus::Registry::new(), &origin_url, &extra).await;
        let url = format!("http://{}/preheat", agent.http_addr);
        let body = serde_json::json!({"name": "team/app", "reference": shoal_core::Digest::of(b"m").to_string()});
        let http = reqwest::Client::new();
        let res = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"shoal\"");
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{v}");
        let res = http.post(&url).bearer_auth("guessed").json(&body).send().await.unwrap();
        assert_eq!(res.status(), 403);
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "DENIED", "{v}");
        assert!(seen.lock().unwrap().is_empty(), "nothing reached the origin");
        let res = http.post(&url).bearer_auth("ops-token").json(&body).send().await.unwrap();
        assert_eq!(res.status(), 202);
        assert_eq!(seen.lock().unwrap().as_slice(), ["Bearer ops-token"]);
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }
}
