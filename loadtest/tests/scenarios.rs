//! Scenario runs on real clusters, each a few agents and a few MiB with capped links so the
//! swarm has something to share: an image of several layers, late joiners and churn, in
//! process, and churn with SIGKILL on the real binaries. Correctness only (every agent done,
//! every copy matching its sha256, the scenario stated in the JSON report); no timing
//! assertions.

use std::time::Duration;

use shoal_loadtest::modes::{LocalOptions, Mode};
use shoal_loadtest::report::RunReport;
use shoal_loadtest::run::run;
use shoal_loadtest::scenario::{AtTime, BlobSet, Churn, Scenario};

const MIB: u64 = 1 << 20;

fn options(dir: &std::path::Path, agents: usize, rate: u64, sc: Scenario) -> LocalOptions {
    LocalOptions {
        agents,
        size: sc.total_bytes(),
        scenario: Some(sc),
        agent_rate: Some(rate),
        origin_rate: Some(rate),
        dir: Some(dir.join("stores")),
        timeout: Duration::from_secs(120),
        verbose: false,
        ..LocalOptions::default()
    }
}

/// Writes the report and reads its JSON back.
fn round_trip(r: &RunReport, dir: &std::path::Path) -> serde_json::Value {
    r.write(&dir.join("report")).unwrap();
    let text = std::fs::read_to_string(dir.join("report/report.json")).unwrap();
    let back: RunReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back.scenario, r.scenario);
    assert!(std::fs::read_to_string(dir.join("report/report.html")).unwrap().contains(&r.scenario));
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn image_layers_pulled_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Scenario { set: BlobSet::Layers, blobs: vec![2 * MIB, MIB, MIB / 2], late: None, churn: None };
    let r = run(&options(dir.path(), 3, 16 * MIB, sc)).await.unwrap();
    assert!(r.verified_all, "{}", r.table());
    assert_eq!(r.blob_bytes, 2 * MIB + MIB + MIB / 2);
    assert!(r.agents.iter().all(|a| a.finished && a.verified && a.bytes == r.blob_bytes), "{}", r.table());
    assert_eq!(r.digest.split(',').count(), 3);
    assert!(r.bound.is_some());
    let json = round_trip(&r, dir.path());
    assert_eq!(json["scenario_info"]["set"], "layers");
    assert_eq!(json["scenario_info"]["blobs"].as_array().unwrap().len(), 3);
    assert!(json["scenario"].as_str().unwrap().starts_with("image of 3 layers"));
    assert_eq!(json["link_emulation"], "agent limiter");
}

#[tokio::test]
async fn many_blobs_and_late_joiners() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Scenario {
        set: BlobSet::Blobs,
        blobs: vec![MIB; 3],
        late: Some(AtTime { count: 1, at: Duration::from_millis(800) }),
        churn: None,
    };
    let r = run(&options(dir.path(), 3, 16 * MIB, sc)).await.unwrap();
    assert!(r.verified_all, "{}", r.table());
    let late: Vec<_> = r.agents.iter().filter(|a| a.late).collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].agent, 2);
    assert!((late[0].started_secs - 0.8).abs() < 1e-9);
    assert!(r.table().contains("late: started at 0.8s"), "{}", r.table());
    let json = round_trip(&r, dir.path());
    assert_eq!(json["scenario_info"]["late_join"]["count"], 1);
    assert!(json["scenario_info"]["bound_note"].as_str().unwrap().contains("static case"));
}

/// Kills one agent mid-download through its shutdown token and restarts it on its store:
/// it and the survivors finish with matching copies.
#[tokio::test]
async fn churn_in_process_with_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Scenario {
        churn: Some(Churn { count: 1, at: Duration::from_millis(500), restart: Some(Duration::from_millis(500)) }),
        ..Scenario::single(8 * MIB)
    };
    // 8 MiB at 4 MiB/s: at least 2 s, so the kill at 0.5 s lands mid-download.
    let r = run(&options(dir.path(), 3, 4 * MIB, sc)).await.unwrap();
    assert!(r.verified_all, "{}", r.table());
    let a0 = &r.agents[0];
    assert!(a0.killed_secs.is_some() && a0.restarted_secs.is_some(), "{a0:?}");
    assert!(a0.finished && a0.verified && a0.secs > 0.9, "{a0:?}");
    assert!(r.agents.iter().all(|a| a.finished && a.verified));
    let json = round_trip(&r, dir.path());
    assert_eq!(json["scenario_info"]["churn"]["count"], 1);
    assert!(json["scenario"].as_str().unwrap().contains("restarted"));
}

/// Kills one agent for good: the survivors still finish, and the report counts only them.
#[tokio::test]
async fn churn_in_process_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Scenario {
        churn: Some(Churn { count: 1, at: Duration::from_millis(500), restart: None }),
        ..Scenario::single(8 * MIB)
    };
    let r = run(&options(dir.path(), 3, 4 * MIB, sc)).await.unwrap();
    assert!(r.verified_all, "{}", r.table());
    assert!(!r.agents[0].finished, "{:?}", r.agents[0]);
    assert!(r.agents[1..].iter().all(|a| a.finished && a.verified));
    assert_eq!(r.percentiles.unwrap().n, 2);
}

/// The same with the real binaries: SIGKILL mid-download, restart on the same store.
/// Needs shoal-tracker, shoal-origin and shoal-agent built next to the test binary (as
/// `cargo test --workspace` does); otherwise it fails saying how to build them.
#[tokio::test]
async fn churn_processes_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Scenario {
        churn: Some(Churn { count: 1, at: Duration::from_millis(700), restart: Some(Duration::from_millis(500)) }),
        ..Scenario::single(8 * MIB)
    };
    let o = LocalOptions { mode: Mode::Processes, ..options(dir.path(), 3, 4 * MIB, sc) };
    let r = run(&o).await.unwrap();
    assert!(r.verified_all, "{}", r.table());
    assert_eq!(r.mode, "processes");
    assert!(r.agents[0].killed_secs.is_some() && r.agents[0].restarted_secs.is_some());
    assert!(r.agents.iter().all(|a| a.finished && a.verified));
}
