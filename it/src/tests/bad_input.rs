//! Bad input gets a clear error and loses nothing.

use std::time::Duration;

use shoal_core::Digest;
use shoal_loadtest::cluster::{Cluster, counter, random_blob};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_with_wrong_bytes_is_rejected_and_leaves_nothing() {
    let c = Cluster::builder().agents(1).start().await.unwrap();
    let origin = c.origins[0].handle.http_addr;
    let http = reqwest::Client::new();
    let good = random_blob(100_000, 11);
    let d = Digest::of(&good);
    let mut bad = good.clone();
    bad[5] ^= 1;
    let resp = http.put(format!("http://{origin}/blobs/{d}")).body(bad).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "DIGEST_INVALID");
    // Nothing in the backend, the origin's store or its staging area.
    assert!(!c.root().join("backend/sha256").join(d.hex()).exists());
    let origin_store = c.root().join("origin-0");
    assert!(!origin_store.join("blobs").join(d.hex()).exists());
    assert_eq!(std::fs::read_dir(origin_store.join("tmp")).unwrap().count(), 0);
    // The agent cannot find it either.
    let resp = http.get(format!("http://{}/blobs/{d}", c.agent(0).http_addr)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["code"], "BLOB_UNKNOWN");

    // The right bytes are accepted, written back to the backend and pulled.
    let resp = http.put(format!("http://{origin}/blobs/{d}")).body(good.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(std::fs::read(c.root().join("backend/sha256").join(d.hex())).unwrap(), good);
    assert_eq!(c.fetch(0, &d).await.unwrap(), good);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_digests_get_400() {
    let c = Cluster::builder().agents(1).start().await.unwrap();
    let http = reqwest::Client::new();
    let agent = c.agent(0).http_addr;
    let origin = c.origins[0].handle.http_addr;
    for bad in
        ["sha256:xyz", "md5:abcd", "sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789", "nope"]
    {
        for url in [format!("http://{agent}/blobs/{bad}"), format!("http://{origin}/blobs/{bad}/metainfo")] {
            let resp = http.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 400, "{url}");
            assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["code"], "DIGEST_INVALID", "{url}");
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_peer_port_closes_that_connection_only() {
    let c = Cluster::builder().agents(2).start().await.unwrap();
    let data = random_blob(4 << 20, 13);
    let d = c.put_backend_blob(&data).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    let peer = c.agent(0).swarm.advertise_addr();
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff, 0xff, 0xff, 0xff, 0, 1, 2, 3],
        &[
            0, 0, 0, 27, 0, b'N', b'O', b'T', b'S', b'H', b'O', b'A', b'L', 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0,
        ],
    ];
    for g in garbage {
        let mut s = tokio::net::TcpStream::connect(peer).await.unwrap();
        let _ = s.write_all(g).await;
        // The agent sends its handshake, then closes on the garbage.
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "connection was not closed");
    }
    let errors = counter(&c.agents[0].as_ref().unwrap().registry, "shoal_swarm_protocol_errors_total", None);
    assert!(errors >= 3, "protocol errors counted: {errors}");
    // The agent still works: agent 1 pulls from it (and the origin).
    assert_eq!(c.fetch(1, &d).await.unwrap(), data);
    c.shutdown().await;
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct TinyFs {
    dir: std::path::PathBuf,
}

impl TinyFs {
    fn mount(size: &str) -> TinyFs {
        let dir = std::env::temp_dir().join(format!("shoal-tinyfs-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill a disk and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyFs { dir }
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_the_download_clearly_and_the_agent_keeps_working() {
    let mut c = Cluster::builder().agents(1).start().await.unwrap();
    let disk = TinyFs::mount("3m");
    let mut cfg = c.agent_config(0);
    cfg.swarm.store_dir = disk.dir.join("store");
    // A budget beyond the disk: this is about the disk filling, not about eviction making room.
    cfg.swarm.store.max_size = shoal_runtime::SizeLimit::Bytes(shoal_runtime::ByteSize(1 << 30));
    c.start_agent(0, Some(cfg)).await.unwrap();
    // A small blob first: it must stay servable after the disk fills.
    let small = random_blob(200_000, 32);
    let s = c.put_backend_blob(&small).unwrap();
    assert_eq!(c.fetch(0, &s).await.unwrap(), small);
    let big = random_blob(8 << 20, 31);
    let d = c.put_backend_blob(&big).unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/blobs/{d}", c.agent(0).http_addr);
    for attempt in 0..2 {
        let mut resp = http.get(&url).send().await.unwrap();
        if resp.status() == 507 {
            // The disk filled before the first piece: the status says so.
            let body = resp.text().await.unwrap();
            assert!(body.contains("No space left"), "attempt {attempt}: {body}");
            continue;
        }
        // The first piece made it and the response had started streaming: the body must end
        // in an error, never as a short success.
        assert_eq!(resp.status(), 200, "attempt {attempt}");
        let mut got = 0usize;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => got += chunk.len(),
                Ok(None) => panic!("attempt {attempt}: body ended cleanly after {got} of {} bytes", big.len()),
                Err(_) => break,
            }
        }
        assert!(got < big.len(), "attempt {attempt}");
    }
    // Nothing unverified is visible; the verified pieces are kept for a resume.
    assert!(!disk.dir.join("store/blobs").join(d.hex()).exists());
    let bits = std::fs::read(disk.dir.join("store/partial").join(format!("{}.bits", d.hex()))).unwrap();
    assert!(bits.iter().any(|b| *b != 0), "no written piece was recorded");
    assert_eq!(c.fetch(0, &s).await.unwrap(), small);
    c.shutdown().await;
}
