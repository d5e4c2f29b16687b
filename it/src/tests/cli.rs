//! `shoal` (the `shoal-cli` library) against an in-process cluster: push to the origin, pull
//! through an agent, stat, and preheat an image that sits in the origins' backend.

use std::path::Path;

use clap::Parser;
use shoal_cli::{Cli, CliError};
use shoal_core::Digest;
use shoal_loadtest::cluster::{Cluster, random_blob};

/// Runs `shoal ARGS` and returns its stdout, or its error.
async fn shoal(args: &[&str]) -> Result<String, CliError> {
    let cli = Cli::try_parse_from(std::iter::once("shoal").chain(args.iter().copied())).expect("valid arguments");
    let mut out = Vec::new();
    shoal_cli::run(&cli, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Writes an image (a config and `layers`, a manifest, and the tag's link file) into the
/// origins' fs backend, as a registry writing to the same storage would. Returns the manifest
/// digest and every blob digest.
pub(crate) fn put_image(c: &Cluster, name: &str, tag: &str, layers: &[Vec<u8>]) -> (Digest, Vec<Digest>) {
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux"})).unwrap();
    let config_d = c.put_backend_blob(&config).unwrap();
    let mut blobs = vec![config_d];
    let mut entries = Vec::new();
    for l in layers {
        let d = c.put_backend_blob(l).unwrap();
        blobs.push(d);
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": l.len(), "digest": d,
        }));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_d},
        "layers": entries,
    }))
    .unwrap();
    let m = c.put_backend_blob(&manifest).unwrap();
    let link =
        c.root().join(format!("backend/docker/registry/v2/repositories/{name}/_manifests/tags/{tag}/current/link"));
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::fs::write(link, m.to_string()).unwrap();
    (m, blobs)
}

fn url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_and_stat_through_the_cli() {
    let c = Cluster::builder().agents(2).origins(1).start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_blob((5 << 20) + 123, 11);
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &data).unwrap();
    let origin = url(c.origins[0].handle.http_addr);
    let (a0, a1) = (url(c.agent(0).http_addr), url(c.agent(1).http_addr));

    // Push prints the digest, and the origin then serves it.
    let out = shoal(&["--origin", &origin, "push", file.to_str().unwrap()]).await.unwrap();
    let digest = Digest::of(&data);
    assert_eq!(out.trim(), digest.to_string());
    let d = digest.to_string();

    // Pull through agent 0: the file appears whole, and the report counts the bytes.
    let dest = dir.path().join("out.bin");
    let out = shoal(&["--agent", &a0, "--json", "pull", &d, "-o", dest.to_str().unwrap()]).await.unwrap();
    let report = json(&out);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(report["bytes"], data.len());
    assert_eq!(report["from_peers"].as_u64().unwrap() + report["from_origin"].as_u64().unwrap(), data.len() as u64);
    assert!(!Path::new(&format!("{}.part", dest.display())).exists());

    // Stat on agent 1, which has never seen it, then on agent 0, which holds it. Agent 0
    // announces itself complete just after the last byte, so the swarm is polled for it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let s = loop {
        let s = json(&shoal(&["--agent", &a1, "--json", "stat", &d]).await.unwrap());
        if s["swarm"]["seeders"].as_u64() >= Some(2) || tokio::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(s["size"], data.len());
    assert_eq!(s["pieces"], 6);
    assert_eq!(s["local"]["complete"], false);
    assert_eq!(s["origins"], serde_json::json!(["origin-0"]));
    // Agent 0 and the origin seed it.
    assert!(s["swarm"]["seeders"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["swarm"]["origins"], 1, "{s}");
    let text = shoal(&["--agent", &a0, "stat", &d]).await.unwrap();
    assert!(text.contains("complete on this host"), "{text}");
    assert!(text.contains("5.00 MiB"), "{text}");

    // An unknown blob is exit 3; a bad digest is a usage error.
    let unknown = Digest::of(b"nobody has this").to_string();
    let e = shoal(&["--agent", &a0, "pull", &unknown, "-o", dest.to_str().unwrap()]).await.unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    assert_eq!(shoal(&["--agent", &a0, "stat", "sha256:abc"]).await.unwrap_err().exit_code(), 2);
    // The failed pull left the earlier file alone.
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preheat_and_its_status_through_the_cli() {
    let c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    let layers = [random_blob(2 << 20, 1), random_blob(3 << 20, 2)];
    let (manifest, blobs) = put_image(&c, "team/app", "v1", &layers);
    let a0 = url(c.agent(0).http_addr);

    let out = shoal(&["--agent", &a0, "--json", "preheat", "team/app:v1", "--prefetch", "--wait"]).await.unwrap();
    let r = json(&out);
    assert_eq!(r["finished"]["manifest"], manifest.to_string());
    assert_eq!(r["finished"]["blobs"], 1 + blobs.len());
    assert_eq!((r["finished"]["done"].as_u64(), r["finished"]["failed"].as_u64()), (Some(3 + 1), Some(0)), "{r}");
    // The origin holds every blob before anyone pulled one.
    for d in &blobs {
        assert!(c.origins[0].handle.swarm.complete(*d).await.unwrap().is_some(), "{d}");
    }
    let handle = r["handle"].as_str().unwrap().to_string();
    assert!(handle.starts_with("origin-0/"), "{handle}");
    let status = shoal(&["--agent", &a0, "preheat", "status", &handle]).await.unwrap();
    assert!(status.contains("4 done, 0 pending, 0 failed of 4"), "{status}");

    // Unknown images and ids are exit 3; a malformed id is a usage error.
    assert_eq!(shoal(&["--agent", &a0, "preheat", "team/app:v9"]).await.unwrap_err().exit_code(), 3);
    assert_eq!(shoal(&["--agent", &a0, "preheat", "status", "origin-0/ph-999"]).await.unwrap_err().exit_code(), 3);
    assert_eq!(shoal(&["--agent", &a0, "preheat", "status", "ph-1"]).await.unwrap_err().exit_code(), 2);
    c.shutdown().await;
}

/// `push` to an origin whose `auth:` asks for a token: refused without one (exit 1, the 401
/// named), accepted with `--token-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sends_the_token_of_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ci-pusher\n").unwrap();
    let cfg = shoal_origin::Config {
        backend: shoal_origin::backend::BackendConfig::Fs(shoal_origin::backend::fs::FsConfig {
            root: dir.path().join("backend"),
            ..Default::default()
        }),
        auth: shoal_runtime::AuthConfig { tokens_file: Some(tokens.clone()), identities: Vec::new() },
        swarm: shoal_swarm::SwarmConfig {
            store_dir: dir.path().join("store"),
            ..shoal_loadtest::cluster::test_swarm_config()
        },
        ..shoal_origin::Config::default()
    };
    let listeners = shoal_origin::Listeners {
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        peer: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (origin, serve) =
        shoal_origin::start(cfg.validate().unwrap(), listeners, prometheus::Registry::new(), shutdown.clone())
            .await
            .unwrap();
    let served = tokio::spawn(serve);
    let data = random_blob(1 << 20, 31);
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &data).unwrap();
    let o = url(origin.http_addr);
    let f = file.to_str().unwrap();

    let e = shoal(&["--origin", &o, "push", f]).await.unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(e.to_string().contains("401") && e.to_string().contains("UNAUTHORIZED"), "{e}");
    let out = shoal(&["--origin", &o, "--token-file", tokens.to_str().unwrap(), "push", f]).await.unwrap();
    assert_eq!(out.trim(), Digest::of(&data).to_string());
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

/// `preheat --pin` / `--unpin` to an agent whose `auth:` asks for a token: refused without
/// one (exit 1, the 401 named, nothing pinned), and with `--token-file` the pin reaches the
/// agent and the origin, as does the unpin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preheat_pin_and_unpin_send_the_token_of_token_file() {
    let mut c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    let (manifest, blobs) = put_image(&c, "team/app", "v1", &[random_blob(2 << 20, 5)]);
    let tokens = c.root().join("agent-tokens");
    std::fs::write(&tokens, "preheater\n").unwrap();
    let mut cfg = c.agent_config(0);
    cfg.auth = shoal_runtime::AuthConfig { tokens_file: Some(tokens.clone()), identities: Vec::new() };
    c.start_agent(0, Some(cfg)).await.unwrap();
    let a0 = url(c.agent(0).http_addr);
    let t = tokens.to_str().unwrap();
    let every: Vec<Digest> = std::iter::once(manifest).chain(blobs.iter().copied()).collect();
    let pinned = |c: &Cluster, d: &Digest| {
        (c.agent(0).swarm.store().is_pinned(d), c.origins[0].handle.swarm.store().is_pinned(d))
    };

    let e = shoal(&["--agent", &a0, "preheat", "team/app:v1", "--prefetch", "--pin"]).await.unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(e.to_string().contains("401") && e.to_string().contains("UNAUTHORIZED"), "{e}");
    assert!(every.iter().all(|d| pinned(&c, d) == (false, false)), "a refused preheat pins nothing");

    let out = shoal(&[
        "--agent",
        &a0,
        "--token-file",
        t,
        "--json",
        "preheat",
        "team/app:v1",
        "--prefetch",
        "--pin",
        "--wait",
    ])
    .await
    .unwrap();
    assert_eq!(json(&out)["finished"]["failed"].as_u64(), Some(0), "{out}");
    for d in &every {
        assert_eq!(pinned(&c, d), (true, true), "{d} pinned on the agent and the origin");
    }
    let e = shoal(&["--agent", &a0, "preheat", "team/app:v1", "--unpin"]).await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    shoal(&["--agent", &a0, "--token-file", t, "preheat", "team/app:v1", "--unpin"]).await.unwrap();
    for d in &every {
        assert_eq!(pinned(&c, d), (false, false), "{d} unpinned");
    }
    c.shutdown().await;
}
