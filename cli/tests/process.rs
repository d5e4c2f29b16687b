//! The `shoal` binary as a script runs it, against a cluster started in this process: output,
//! files and exit codes. Stdout is a pipe here, so no progress bar may be drawn.

use std::process::{Command, Output};

use shoal_core::Digest;
use shoal_loadtest::cluster::{Cluster, random_blob};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

/// Runs `shoal ARGS` on a blocking thread (the cluster runs on this test's runtime).
async fn shoal(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN).args(&args).env_remove("SHOAL_AGENT_URL").env_remove("SHOAL_ORIGIN_URL").output().unwrap()
    })
    .await
    .unwrap()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_stat_and_exit_codes_as_a_process() {
    let c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_blob((3 << 20) + 7, 21);
    let file = dir.path().join("in.bin");
    std::fs::write(&file, &data).unwrap();
    let agent = format!("http://{}", c.agent(0).http_addr);
    let origin = format!("http://{}", c.origins[0].handle.http_addr);
    let d = Digest::of(&data).to_string();

    let out = shoal(args(&["--origin", &origin, "push", file.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{d}\n"), "push prints the digest alone");
    assert!(out.stderr.is_empty(), "no progress on a pipe: {:?}", text(&out.stderr));

    let dest = dir.path().join("out.bin");
    let out = shoal(args(&["--agent", &agent, "pull", &d, "-o", dest.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let summary = text(&out.stdout);
    assert!(summary.starts_with(&format!("pulled {d}: 3.00 MiB in ")), "{summary}");
    assert!(summary.contains("from origins") && summary.ends_with(&format!("-> {}\n", dest.display())), "{summary}");
    assert!(out.stderr.is_empty(), "{:?}", text(&out.stderr));

    // To stdout (a pipe): the bytes alone, the summary on stderr.
    let out = shoal(args(&["--agent", &agent, "pull", &d])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, data);
    assert!(text(&out.stderr).starts_with(&format!("pulled {d}: ")), "{}", text(&out.stderr));

    let out = shoal(args(&["--agent", &agent, "--json", "stat", &d])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((s["size"].as_u64(), s["local"]["complete"].as_bool()), (Some(data.len() as u64), Some(true)));

    let unknown = Digest::of(b"absent").to_string();
    let out = shoal(args(&["--agent", &agent, "pull", &unknown, "-o", dest.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("shoal: "), "{}", text(&out.stderr));
    let out = shoal(args(&["--agent", &agent, "stat", "sha256:nothex"])).await;
    assert_eq!(out.status.code(), Some(2));
    let out = shoal(args(&["--agent", "http://127.0.0.1:9", "stat", &d])).await;
    assert_eq!(out.status.code(), Some(1), "an unreachable agent: {}", text(&out.stderr));
    let out = shoal(args(&["--agent", &agent, "preheat", "status", "no-slash"])).await;
    assert_eq!(out.status.code(), Some(2));
    c.shutdown().await;
}

#[test]
fn version_names_the_git_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).trim(), format!("shoal {}", shoal_runtime::VERSION));
}
