//! Real-process tests of the `shoal-tracker` binary: `--check-config` exit codes and messages,
//! and a start-serve-SIGTERM cycle.
//!
//! Invariant: each test runs the built binary in its own temp dir, with the environment
//! variables it reads set or cleared explicitly, so the caller's environment cannot change
//! the result.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-tracker");

fn tracker(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("SHOAL_TRACKER_CONFIG")
        .env_remove("SHOAL_TRACKER_LISTEN")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

fn check_config(yaml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tracker.yaml"), yaml).unwrap();
    tracker(dir.path()).args(["--config", "tracker.yaml", "--check-config"]).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_config_accepts_a_good_file() {
    let out = check_config(
        "listen: '[::]:7600'\npeer_ttl: 30s\nannounce_interval: 3s\nmax_peers: 20\norigin_replicas: 2\n\
         origins:\n\
         - { id: o0, http: 'http://o0:7602', peer: '10.0.0.10:7603' }\n\
         - { id: o1, http: 'http://o1:7602', peer: '10.0.0.11:7603' }\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("config ok"));
}

#[test]
fn check_config_names_an_unknown_key_and_exits_64() {
    let out = check_config("listen: 127.0.0.1:7600\nmax_peerz: 20\n");
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(err.contains("unknown field `max_peerz`"), "{err}");
    assert!(err.contains("tracker.yaml"), "the message names the file: {err}");
}

#[test]
fn check_config_rejects_bad_values_with_64() {
    let out = check_config("peer_ttl: 1s\n");
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("peer_ttl (1s) must be at least twice announce_interval (3s)"), "{}", stderr(&out));

    let out = check_config("origins:\n- { id: a, http: 'http://a', peer: '10.0.0.1:1' }\norigin_replicas: 0\n");
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("origin_replicas must be at least 1"), "{}", stderr(&out));

    let out = check_config(
        "origins:\n- { id: a, http: 'http://a', peer: '10.0.0.1:1' }\n- { id: a, http: 'http://b', peer: '10.0.0.2:1' }\n",
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("invalid origins: origin id \"a\" appears more than once"), "{}", stderr(&out));
}

#[test]
fn bad_listen_flag_and_missing_file_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = tracker(dir.path()).args(["--listen", "nowhere", "--check-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("invalid --listen"), "{}", stderr(&out));

    let out = tracker(dir.path()).env("SHOAL_TRACKER_CONFIG", "missing.yaml").arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("missing.yaml"), "{}", stderr(&out));
}

#[test]
fn defaults_pass_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = tracker(dir.path()).arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test]
async fn serves_then_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::from(tracker(dir.path()))
        .env("SHOAL_TRACKER_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("tracker listening") {
                return bound_addr(&line);
            }
        }
        panic!("the tracker exited without logging its address");
    })
    .await
    .expect("no 'tracker listening' line within 20s");
    // Keep reading stderr so the child never blocks on a full pipe.
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });

    let res = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
    assert_eq!(res.status(), 200);

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status =
        tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("no exit after SIGTERM").unwrap();
    let rest = rest.await.unwrap().join("\n");
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("draining") && rest.contains("tracker stopped"), "{rest}");
}

/// The `addr=` field of a log line, with any ANSI styling removed.
fn bound_addr(line: &str) -> std::net::SocketAddr {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let field = plain.split_whitespace().find_map(|w| w.strip_prefix("addr=")).unwrap_or_else(|| panic!("{plain}"));
    field.parse().unwrap_or_else(|e| panic!("{field:?}: {e}"))
}

#[test]
fn version_names_the_git_commit() {
    let dir = tempfile::tempdir().unwrap();
    let out = tracker(dir.path()).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("shoal-tracker {}", shoal_runtime::VERSION));
}

#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tracker.yaml"), "listen: 127.0.0.1:0\nlog_format: json\n").unwrap();
    let mut child = tokio::process::Command::from(tracker(dir.path()))
        .args(["--config", "tracker.yaml"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next_json = async || -> serde_json::Value {
        let line = lines.next_line().await.unwrap().expect("the tracker exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
    };
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = next_json().await;
            if ev["fields"]["message"] == "tracker listening" {
                return ev["fields"]["addr"].as_str().unwrap().to_string();
            }
        }
    })
    .await
    .expect("no 'tracker listening' event within 20s");

    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/announce"))
        .header("X-Request-Id", "json-42")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-request-id"], "json-42");
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = next_json().await;
            if ev["fields"]["message"] == "request answered" {
                return ev;
            }
        }
    })
    .await
    .expect("no 'request answered' event within 20s");
    assert_eq!(answered["span"]["request_id"], "json-42", "{answered}");
    assert_eq!(answered["span"]["service"], "tracker", "{answered}");
    assert_eq!(answered["fields"]["status"], 400, "{answered}");
    child.kill().await.unwrap();
}
