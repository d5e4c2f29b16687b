//! Preheat on push: a registry's notification (docker/distribution's envelope, or Harbor's
//! webhook) sent to an origin's `POST /notifications` puts every blob of the pushed image in
//! the origin's store before anyone pulls it, and a prefetch rule puts it in an agent's store.

use std::time::Duration;

use shoal_core::Digest;
use shoal_loadtest::cluster::{Cluster, random_blob};
use tokio_util::sync::CancellationToken;

use super::cli::put_image;

/// Longest wait for a preheat to land.
const WAIT: Duration = Duration::from_secs(30);

async fn wait_stored(swarm: &shoal_swarm::Swarm, digests: &[Digest]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for d in digests {
        while swarm.complete(*d).await.unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "{d} not stored within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn docker_envelope(name: &str, manifest: Digest) -> serde_json::Value {
    serde_json::json!({"events": [{
        "id": "e1", "timestamp": "2026-01-01T00:00:00Z", "action": "push",
        "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 100,
            "digest": manifest, "length": 100, "repository": name,
            "url": format!("http://registry.test:5000/v2/{name}/manifests/{manifest}"), "tag": "v1",
        },
        "request": {"id": "r1", "addr": "127.0.0.1:1", "host": "registry.test:5000", "method": "PUT", "useragent": "t"},
        "actor": {}, "source": {"addr": "registry.test:5000", "instanceID": "i"},
    }]})
}

async fn notify(origin: &str, body: &serde_json::Value, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(format!("{origin}/notifications"))
        .header("Content-Type", "application/vnd.docker.distribution.events.v1+json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_push_notification_preheats_the_image() {
    let c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    let (manifest, blobs) = put_image(&c, "team/app", "v1", &[random_blob(2 << 20, 3), random_blob(1 << 20, 4)]);
    let origin = format!("http://{}", c.origins[0].handle.http_addr);
    let swarm = &c.origins[0].handle.swarm;
    for d in &blobs {
        assert!(swarm.complete(*d).await.unwrap().is_none(), "nothing is stored before the push");
    }
    assert_eq!(notify(&origin, &docker_envelope("team/app", manifest), None).await, 202);
    wait_stored(swarm, &blobs).await;
    wait_stored(swarm, &[manifest]).await;
    // Nothing came through an agent.
    assert!(c.agent(0).swarm.complete(blobs[1]).await.unwrap().is_none());
    assert_eq!(notify(&origin, &serde_json::json!({"hello": "world"}), None).await, 400);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harbor_webhook_with_a_prefetch_rule_fills_the_agent_too() {
    let c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    let (manifest, blobs) = put_image(&c, "library/web", "1.0", &[random_blob(3 << 20, 5)]);
    // A second origin, outside the agents' ring, that takes the webhooks: it preheats into its
    // own store and asks agent 0 to prefetch, which goes through the ring's origin.
    let tokens = c.root().join("hook-tokens");
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let cfg = shoal_origin::Config {
        id: "hook".into(),
        auth: shoal_runtime::AuthConfig { tokens_file: Some(tokens), identities: Vec::new() },
        backend: shoal_origin::backend::BackendConfig::Fs(shoal_origin::backend::fs::FsConfig {
            root: c.root().join("backend"),
            ..Default::default()
        }),
        notifications: shoal_origin::notify::NotifyConfig {
            prefetch: vec![shoal_origin::notify::PrefetchRule {
                repositories: vec!["library/*".into()],
                agents: vec![format!("http://{}", c.agent(0).http_addr)],
            }],
        },
        swarm: shoal_swarm::SwarmConfig {
            store_dir: c.root().join("hook-origin"),
            ..shoal_loadtest::cluster::test_swarm_config()
        },
        ..shoal_origin::Config::default()
    }
    .validate()
    .unwrap();
    let listeners = shoal_origin::Listeners {
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        peer: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let shutdown = CancellationToken::new();
    let (hook, serve) =
        shoal_origin::start(cfg, listeners, prometheus::Registry::new(), shutdown.clone()).await.unwrap();
    let served = tokio::spawn(serve);
    let url = format!("http://{}", hook.http_addr);

    let webhook = serde_json::json!({
        "type": "PUSH_ARTIFACT", "occur_at": 1, "operator": "admin",
        "event_data": {
            "resources": [{"digest": manifest, "tag": "1.0", "resource_url": "harbor.test/library/web:1.0"}],
            "repository": {"name": "web", "namespace": "library", "repo_full_name": "library/web", "repo_type": "public"},
        },
    });
    assert_eq!(notify(&url, &webhook, None).await, 401, "the token is required");
    assert_eq!(notify(&url, &webhook, Some("wrong")).await, 403);
    assert_eq!(notify(&url, &webhook, Some("s3cret")).await, 202);
    wait_stored(&hook.swarm, &blobs).await;
    wait_stored(&c.agent(0).swarm, &blobs).await;
    shutdown.cancel();
    served.await.unwrap().unwrap();
    c.shutdown().await;
}
