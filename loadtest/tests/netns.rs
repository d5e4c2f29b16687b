//! Network-namespace mode on this machine: two agents, 8 MiB, links capped by tc. Needs root;
//! as root, a machine where `ip netns add` fails makes this test fail with the harness's own
//! message (it does not pass silently). Without root it says so and checks that the harness
//! refuses with a clear error. Needs the service binaries next to the test binary (as
//! `cargo test --workspace` builds them).

use std::time::Duration;

use shoal_loadtest::modes::{LocalOptions, Mode};
use shoal_loadtest::run::run;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|v| v.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[tokio::test]
async fn netns_two_agents_tc_capped() {
    let dir = tempfile::tempdir().unwrap();
    let o = LocalOptions {
        mode: Mode::Netns,
        agents: 2,
        size: 8 << 20,
        agent_rate: Some(32 << 20),
        origin_rate: Some(32 << 20),
        dir: Some(dir.path().join("stores")),
        timeout: Duration::from_secs(90),
        verbose: false,
        ..LocalOptions::default()
    };
    if !is_root() {
        let e = run(&o).await.unwrap_err();
        assert!(format!("{e:#}").contains("needs root"), "{e:#}");
        eprintln!("not root: netns mode refused as it should; the tc-capped run needs root");
        return;
    }
    let r = match run(&o).await {
        Ok(r) => r,
        Err(e) => panic!("netns run failed: {e:#}"),
    };
    assert!(r.verified_all, "{}", r.table());
    assert_eq!(r.mode, "netns");
    assert_eq!(r.link_emulation, "tc htb");
    assert_eq!(r.agents.len(), 2);
    // The links are really capped: 8 MiB at 32 MiB/s cannot arrive in under 0.25 s.
    assert!(r.percentiles.unwrap().max >= 0.2, "{}", r.table());
    // Nothing is left behind.
    let names =
        String::from_utf8(std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    let mine = format!("shoal-lt-{}-", std::process::id());
    assert!(!names.contains(&mine), "{names}");
}
