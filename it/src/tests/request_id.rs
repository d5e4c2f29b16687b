//! A request id sent to an agent reaches the origin's and the tracker's logs: the agent passes
//! it on in `X-Request-Id` with its metainfo request, and its download's announces carry it too.
//!
//! The nodes' request spans go to a process-wide log subscriber that writes into a buffer. It
//! is global rather than scoped to the test's thread: a scoped one can miss a callsite that
//! another test's thread registered first. Its filter keeps only the request-id events, so
//! the other tests in this binary pay almost nothing for it.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use shoal_loadtest::cluster::{Cluster, random_blob};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The logged lines of `service`'s request spans that name `id`.
fn lines_of(logs: &str, service: &str, id: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| {
            let named = l.contains(&format!("service=\"{service}\"")) || l.contains(&format!("service={service} "));
            named && l.contains(&format!("request_id={id}"))
        })
        .map(str::to_string)
        .collect()
}

/// The buffer of the process-wide subscriber, installed on first use.
fn log_buffer() -> &'static Buffer {
    static BUF: OnceLock<Buffer> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Buffer::default();
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("shoal_runtime::request_id=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("no other global log subscriber in this test binary");
        buf
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_request_id_reaches_origin_and_tracker_logs() {
    let buf = log_buffer();

    let c = Cluster::builder().agents(1).origins(1).start().await.unwrap();
    let data = random_blob(3 << 20, 7);
    let d = c.put_backend_blob(&data).unwrap();
    let resp = reqwest::Client::new()
        .get(format!("http://{}/blobs/{d}", c.agent(0).http_addr))
        .header("X-Request-Id", "pull-4711")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "pull-4711", "the agent echoes the id");
    assert_eq!(resp.bytes().await.unwrap().len(), data.len());
    c.shutdown().await;

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let agent = lines_of(&logs, "agent", "pull-4711");
    assert!(agent.iter().any(|l| l.contains(&format!("path=/blobs/{d}"))), "{logs}");
    let origin = lines_of(&logs, "origin", "pull-4711");
    assert!(origin.iter().any(|l| l.contains(&format!("path=/blobs/{d}/metainfo"))), "{logs}");
    let tracker = lines_of(&logs, "tracker", "pull-4711");
    assert!(tracker.iter().any(|l| l.contains("path=/announce")), "{logs}");
}
