//! Preheat against a real upstream `docker-registry` with an empty origin backend: after
//! `POST /preheat` of a tag naming a multi-platform index, the origin's store holds the index,
//! both child manifests, their configs and layers before any agent pulls; an agent's preheat
//! with `prefetch` puts them in the agent's own store, and with `pin` pins them there and on
//! the origin.

use std::time::Duration;

use shoal_core::Digest;

use super::pullthrough::{OCI_INDEX, PullCluster, PushedImage, UPSTREAM, push_image, upstream_config};
use crate::registry_server::{RegistryAuth, RegistryServer};

/// Longest wait for a preheat or a prefetch to finish.
const WAIT: Duration = Duration::from_secs(60);

/// Pushes two single-platform images and an OCI index of both as `name:multi`.
async fn push_index(reg: &RegistryServer, name: &str) -> (Digest, Vec<PushedImage>) {
    let amd = push_image(reg, name, "amd64", 100, None).await;
    let arm = push_image(reg, name, "arm64", 200, None).await;
    let entry = |img: &PushedImage, arch: &str| {
        serde_json::json!({
            "mediaType": super::pullthrough::DOCKER_MANIFEST,
            "size": img.manifest.len(),
            "digest": img.digest.to_string(),
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry(&amd, "amd64"), entry(&arm, "arm64")],
    }))
    .unwrap();
    let d = reg.push_manifest(name, "multi", OCI_INDEX, &index, None).await.unwrap();
    (d, vec![amd, arm])
}

/// Every digest of the index: itself, the child manifests, their configs and layers.
fn all_digests(index: Digest, images: &[PushedImage]) -> Vec<Digest> {
    let mut out = vec![index];
    for img in images {
        out.push(img.digest);
        out.extend(img.blobs().into_iter().map(|(d, _)| d));
    }
    out.sort();
    out
}

async fn post(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_preheat_warms_an_index_before_any_pull() {
    let reg = RegistryServer::start(RegistryAuth::Anonymous).await.unwrap();
    let (index, images) = push_index(&reg, "team/multi").await;
    let c = PullCluster::start(upstream_config(&reg, None, false)).await;
    let origin = format!("http://{}", c.origin.http_addr);

    let (status, body) = post(
        &format!("{origin}/preheat"),
        serde_json::json!({"name": "team/multi", "reference": "multi", "ns": UPSTREAM}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["manifest"], index.to_string());
    let mut listed: Vec<Digest> =
        body["digests"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect();
    listed.sort();
    let want = all_digests(index, &images);
    assert_eq!(listed, want, "the answer lists the index, both manifests, configs and layers");

    let id = body["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let s: serde_json::Value = reqwest::get(format!("{origin}/preheat/{id}")).await.unwrap().json().await.unwrap();
        let states = s["states"].as_object().unwrap().clone();
        if states.values().all(|v| v != "pending") {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "preheat still pending after {WAIT:?}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for d in &want {
        assert_eq!(status["states"][d.to_string()], "done", "{status}");
        let f = c.origin.swarm.complete(*d).await.unwrap();
        assert!(f.is_some(), "{d} is in the origin's store");
    }
    assert!(c.agents.is_empty(), "no agent pulled anything");

    // Errors: an unknown tag, a bad name, an unknown job.
    let (status, _) = post(
        &format!("{origin}/preheat"),
        serde_json::json!({"name": "team/multi", "reference": "nope", "ns": UPSTREAM}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) =
        post(&format!("{origin}/preheat"), serde_json::json!({"name": "Bad//Name", "reference": "v1"})).await;
    assert_eq!(status, 400);
    assert_eq!(reqwest::get(format!("{origin}/preheat/ph-999999")).await.unwrap().status(), 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_preheat_with_prefetch_fills_the_agent_store() {
    let reg = RegistryServer::start(RegistryAuth::Anonymous).await.unwrap();
    let (index, images) = push_index(&reg, "team/pre").await;
    let mut c = PullCluster::start(upstream_config(&reg, None, false)).await;
    let a = c.add_agent().await;
    let (status, body) = post(
        &format!("{}/preheat", c.agent_url(a)),
        serde_json::json!({"name": "team/pre", "reference": "multi", "ns": UPSTREAM, "prefetch": true, "pin": true}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let want = all_digests(index, &images);
    assert_eq!(body["prefetch"], want.len());
    let swarm = c.agents[a].0.swarm.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    for d in &want {
        while swarm.complete(*d).await.unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "{d} not prefetched within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // `"pin": true` pins every blob here and on the origin that fetched it.
        assert!(swarm.store().is_pinned(d) && c.origin.swarm.store().is_pinned(d), "{d} pinned");
    }
    // `"pin": false` releases them, prefetch or not.
    let (status, body) = post(
        &format!("{}/preheat", c.agent_url(a)),
        serde_json::json!({"name": "team/pre", "reference": "multi", "ns": UPSTREAM, "pin": false}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    for d in &want {
        assert!(!swarm.store().is_pinned(d) && !c.origin.swarm.store().is_pinned(d), "{d} unpinned");
    }
    // A pull now needs nothing from the upstream.
    drop(reg);
    let by_digest = images[0].digest.to_string();
    super::pullthrough::pull(&c.agent_url(a), "team/pre", &by_digest, Some(UPSTREAM), &images[0]).await;
    c.shutdown().await;
}

/// containerd resolves an index by tag, then asks for the platform's manifest by digest:
/// registries serve manifests only on the manifest endpoint, and the origin falls back to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_manifest_by_digest_pulls_through() {
    let reg = RegistryServer::start(RegistryAuth::Anonymous).await.unwrap();
    let (_, images) = push_index(&reg, "team/child").await;
    let mut c = PullCluster::start(upstream_config(&reg, None, false)).await;
    let a = c.add_agent().await;
    let by_digest = images[1].digest.to_string();
    super::pullthrough::pull(&c.agent_url(a), "team/child", &by_digest, Some(UPSTREAM), &images[1]).await;
    c.shutdown().await;
}
