//! The Grafana dashboard (`charts/shoal/dashboards/shoal.json`) queries only metrics that the
//! services register: every `shoal_*` name in its PromQL is gathered from the registries of a
//! tracker, an origin and an agent that have done a pull and an upload.

use std::collections::BTreeSet;

use shoal_core::Digest;
use shoal_loadtest::cluster::{Cluster, random_blob};

const DASHBOARD: &str = include_str!("../../../charts/shoal/dashboards/shoal.json");

/// Every `shoal_*` metric name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = bytes[i].is_ascii_alphabetic() || bytes[i] == b'_';
        let after_word = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && !after_word {
            let end = bytes[i..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .map_or(bytes.len(), |k| i + k);
            let word = &expr[i..end];
            if word.starts_with("shoal_") {
                out.push(word.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

fn gathered(registry: &prometheus::Registry) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for fam in registry.gather() {
        if fam.get_field_type() == prometheus::proto::MetricType::HISTOGRAM {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", fam.name()));
            }
        }
        names.insert(fam.name().to_string());
    }
    names
}

#[test]
fn names_are_found_in_promql() {
    assert_eq!(
        metric_names(r#"sum by (le) (rate(shoal_a_bucket{job=~"x"}[5m])) / clamp_min(shoal_b, 1) + notshoal_c"#),
        ["shoal_a_bucket", "shoal_b"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_registered_metric() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut used = BTreeSet::new();
    let mut n_targets = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{:?}: {expr}", panel["title"]);
            used.extend(names);
            n_targets += 1;
        }
    }
    assert!(n_targets >= 10, "{n_targets} queries");

    let c = Cluster::builder().agents(2).origins(1).start().await.unwrap();
    let data = random_blob(3 << 20, 5);
    let d = c.put_backend_blob(&data).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    assert_eq!(c.fetch(1, &d).await.unwrap(), data);
    let upload = random_blob(1 << 20, 6);
    let resp = reqwest::Client::new()
        .put(format!("http://{}/blobs/{}", c.origins[0].handle.http_addr, Digest::of(&upload)))
        .body(upload)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    // The cluster's tracker keeps its registry to itself; one of the test's own, announced to.
    let tracker_registry = prometheus::Registry::new();
    let cfg = shoal_tracker::Config::default().validate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracker = shoal_tracker::Tracker::start(cfg, listener, tracker_registry.clone()).await.unwrap();
    let announce = serde_json::json!({
        // The caller's own address: the tracker trusts nobody to announce another.
        "blob": d, "peer_id": "00112233445566778899aabbccddeeff", "addr": "127.0.0.1:7701", "complete": true,
    });
    let resp = reqwest::Client::new().post(format!("{}/announce", tracker.url())).json(&announce).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    let mut registered = gathered(&tracker_registry);
    registered.extend(gathered(&c.origins[0].registry));
    for a in c.agents.iter().flatten() {
        registered.extend(gathered(&a.registry));
    }
    let missing: Vec<&String> = used.iter().filter(|n| !registered.contains(*n)).collect();
    assert!(missing.is_empty(), "the dashboard queries unregistered metrics {missing:?}; registered: {registered:?}");
    tracker.stop().await.unwrap();
    c.shutdown().await;
}
