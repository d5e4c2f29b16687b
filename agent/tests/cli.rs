//! The `shoal-agent` binary: config checking as an operator runs it.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shoal-agent");

fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN).arg("--config").arg(&path).arg("--check-config").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

const ORIGINS: &str = "origins:\n  - id: o1\n    http: http://127.0.0.1:7800\n    peer: 127.0.0.1:7801\n";

#[test]
fn good_config_passes_check() {
    let (code, err) = check(&format!("{ORIGINS}swarm:\n  trackers: [http://127.0.0.1:7600]\n  ingress_rate: 1GiB\n"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn unknown_key_exits_64_and_names_it() {
    let (code, err) = check(&format!("{ORIGINS}swarm:\n  trakers: [http://127.0.0.1:7600]\n"));
    assert_eq!(code, 64);
    assert!(err.contains("trakers"), "{err}");
}

#[test]
fn bad_values_exit_64() {
    for yaml in [
        "swarm:\n  trackers: [http://127.0.0.1:7600]\n".to_string(), // No origins.
        format!("{ORIGINS}swarm:\n  trackers: [ftp://x]\n"),
        format!("{ORIGINS}origin_replicas: 0\n"),
        format!("{ORIGINS}swarm:\n  request_timeout: soon\n"),
    ] {
        let (code, err) = check(&yaml);
        assert_eq!(code, 64, "{yaml}: {err}");
    }
}

#[test]
fn missing_config_file_exits_64() {
    let out = Command::new(BIN).args(["--config", "/nonexistent/agent.yaml", "--check-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}
