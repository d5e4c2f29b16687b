//! The `shoal-origin` binary: config checking and graceful shutdown, as an operator runs it.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-origin");

fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("origin.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN).arg("--config").arg(&path).arg("--check-config").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn good_config_passes_check() {
    let (code, err) =
        check("listen: 127.0.0.1:0\nbackend:\n  type: fs\n  root: /tmp/x\nswarm:\n  egress_rate: 100MiB\n");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn unknown_key_exits_64_and_names_it() {
    let (code, err) = check("listen: 127.0.0.1:0\nswarm:\n  egres_rate: 100MiB\n");
    assert_eq!(code, 64);
    assert!(err.contains("egres_rate"), "{err}");
}

#[test]
fn bad_values_exit_64() {
    for yaml in ["id: ''\n", "swarm:\n  pipeline_depth: 0\n", "backend:\n  type: ftp\n", "max_upload: lots\n"] {
        let (code, err) = check(yaml);
        assert_eq!(code, 64, "{yaml}: {err}");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn serves_then_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (http, peer) = (free_port(), free_port());
    let yaml = format!(
        "listen: 127.0.0.1:{http}\npeer_listen: 127.0.0.1:{peer}\nbackend:\n  type: fs\n  root: {}\nswarm:\n  store_dir: {}\n",
        dir.path().join("backend").display(),
        dir.path().join("store").display()
    );
    let path = dir.path().join("origin.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child =
        Command::new(BIN).arg("--config").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = std::net::TcpStream::connect(("127.0.0.1", http)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            r.starts_with("HTTP/1.1 200")
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "origin never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "origin exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "origin did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn version_names_the_git_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("shoal-origin {}", shoal_runtime::VERSION));
}
