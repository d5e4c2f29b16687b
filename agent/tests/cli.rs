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
fn origin_names_and_the_advertise_ip_as_a_daemonset_gives_them() {
    // Names are checked for form only, so this passes where they do not resolve.
    let yaml = "peer_listen: 0.0.0.0:7701\norigins:\n  - id: o1\n    http: http://shoal-origin-0.shoal.svc:7800\n    \
                peer: shoal-origin-0.shoal.svc:7801\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    let run = |ip: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&path).arg("--check-config").env_remove("SHOAL_AGENT_ADVERTISE_IP");
        if let Some(ip) = ip {
            cmd.env("SHOAL_AGENT_ADVERTISE_IP", ip);
        }
        let out = cmd.output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(None);
    assert_eq!(code, 64);
    assert!(err.contains("swarm.advertise_addr is required"), "{err}");
    let (code, err) = run(Some("10.1.2.3"));
    assert_eq!(code, 0, "{err}");
    let (code, err) = run(Some("node-1"));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn the_zone_comes_from_the_environment_and_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    let yaml = "peer_listen: 0.0.0.0:7701\norigins:\n  - id: o1\n    http: http://shoal-origin-0.shoal.svc:7800\n    \
                peer: shoal-origin-0.shoal.svc:7801\n";
    std::fs::write(&path, yaml).unwrap();
    let run = |zone: &str| {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .env("SHOAL_AGENT_ADVERTISE_IP", "10.1.2.3")
            .env("SHOAL_AGENT_ZONE", zone)
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run("europe-west4-a");
    assert_eq!(code, 0, "{err}");
    // Empty (the pod has no zone label): the config's, here none.
    let (code, err) = run("");
    assert_eq!(code, 0, "{err}");
    let (code, err) = run("not a zone");
    assert_eq!(code, 64);
    assert!(err.contains("swarm.zone"), "{err}");
}

#[test]
fn missing_config_file_exits_64() {
    let out = Command::new(BIN).args(["--config", "/nonexistent/agent.yaml", "--check-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

fn configure(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("configure").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configure_containerd_writes_hosts_files_once() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("certs.d");
    let hosts_arg = hosts.to_str().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "version = 2\n").unwrap();
    let args = [
        "containerd",
        "--agent",
        "127.0.0.1:7700",
        "--hosts-dir",
        hosts_arg,
        "--containerd-config",
        cfg.to_str().unwrap(),
        "--upstream",
        "reg.local:5000=http://reg.local:5000",
    ];
    let (code, out, err) = configure(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config_path"), "the missing config_path is pointed out: {out}");
    let hub = std::fs::read_to_string(hosts.join("docker.io/hosts.toml")).unwrap();
    assert!(hub.contains("server = \"https://registry-1.docker.io\""), "{hub}");
    assert!(hub.contains("[host.\"http://127.0.0.1:7700\"]"), "{hub}");
    let local = std::fs::read_to_string(hosts.join("reg.local:5000/hosts.toml")).unwrap();
    assert!(local.contains("server = \"http://reg.local:5000\""), "{local}");
    let default = std::fs::read_to_string(hosts.join("_default/hosts.toml")).unwrap();
    assert!(!default.contains("server"), "{default}");

    let (code, out, _) = configure(&args);
    assert_eq!(code, 0);
    assert_eq!(out.lines().filter(|l| l.starts_with("unchanged ")).count(), 3, "{out}");
    assert_eq!(std::fs::read_to_string(hosts.join("docker.io/hosts.toml")).unwrap(), hub);

    std::fs::write(&cfg, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/x\"\n")
        .unwrap();
    let (code, out, _) = configure(&args);
    assert_eq!(code, 0);
    assert!(!out.contains("config_path"), "{out}");
}

#[test]
fn configure_dry_run_prints_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shoal.conf");
    let (code, out, err) =
        configure(&["podman", "--agent", "10.0.0.1:7700", "--file", file.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[[registry.mirror]]\nlocation = \"10.0.0.1:7700\""), "{out}");
    assert!(!file.exists());
}

#[test]
fn configure_docker_merges_daemon_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daemon.json");
    std::fs::write(&file, r#"{"log-driver": "journald", "registry-mirrors": ["https://m.example"]}"#).unwrap();
    let args = ["docker", "--agent", "127.0.0.1:7700", "--daemon-json", file.to_str().unwrap()];
    let (code, out, err) = configure(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SIGHUP") && out.contains("Docker Hub"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v["log-driver"], "journald");
    assert_eq!(v["registry-mirrors"], serde_json::json!(["https://m.example", "http://127.0.0.1:7700"]));
    let (code, out, _) = configure(&args);
    assert_eq!(code, 0);
    assert!(out.starts_with("unchanged "), "{out}");
}

#[test]
fn configure_bad_input_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daemon.json");
    std::fs::write(&file, "{ not json").unwrap();
    for args in [
        vec!["podman", "--agent", "no-port", "--dry-run"],
        vec!["podman", "--registry", "a/b", "--dry-run"],
        vec!["podman", "--upstream", "docker.io=ftp://x", "--dry-run"],
        vec!["docker", "--daemon-json", file.to_str().unwrap()],
    ] {
        let (code, _, err) = configure(&args);
        assert_eq!(code, 64, "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{ not json", "a file it cannot merge is left alone");
}

#[test]
fn version_names_the_git_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("shoal-agent {}", shoal_runtime::VERSION));
    assert!(text.contains(&format!("({})", shoal_runtime::version::GIT_COMMIT)), "{text}");
}

#[test]
fn log_format_is_text_or_json() {
    assert_eq!(check(&format!("{ORIGINS}log_format: json\n")).0, 0);
    assert_eq!(check(&format!("{ORIGINS}log_format: text\n")).0, 0);
    let (code, err) = check(&format!("{ORIGINS}log_format: xml\n"));
    assert_eq!(code, 64);
    assert!(err.contains("log_format"), "{err}");
}
