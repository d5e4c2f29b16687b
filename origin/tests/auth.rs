//! Who may write to an origin: uploads, preheats and notifications need a caller the
//! origin's `auth:` allows. Without credentials the answer is 401, with wrong ones 403, both
//! with an error body, and a refused request leaves nothing in the backend or the store.

use std::path::Path;

use shoal_core::Digest;
use shoal_core::api::ErrorBody;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "writer-token";

struct Running {
    url: String,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn origin() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# writers\n{TOKEN}\n")).unwrap();
    let yaml = format!(
        "backend: {{ type: fs, root: '{}' }}\nswarm: {{ store_dir: '{}' }}\nauth: {{ tokens_file: '{}' }}\n",
        dir.path().join("backend").display(),
        dir.path().join("store").display(),
        tokens.display()
    );
    let cfg: shoal_origin::Config = shoal_runtime::config::parse(&yaml).unwrap();
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let listeners = shoal_origin::Listeners { http: bind().await.unwrap(), peer: bind().await.unwrap() };
    let shutdown = CancellationToken::new();
    let (o, serve) =
        shoal_origin::start(cfg.validate().unwrap(), listeners, prometheus::Registry::new(), shutdown.clone())
            .await
            .unwrap();
    Running { url: format!("http://{}", o.http_addr), dir, shutdown, task: tokio::spawn(serve) }
}

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(files(&p)) } else { out.push(p) }
    }
    out
}

async fn send(req: reqwest::RequestBuilder, token: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.headers().clone(), res.text().await.unwrap())
}

fn refused(status: u16, headers: &reqwest::header::HeaderMap, body: &str, want: u16) {
    assert_eq!(status, want, "{body}");
    let body: ErrorBody = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    match want {
        401 => {
            assert_eq!(body.code, "UNAUTHORIZED");
            assert_eq!(headers["www-authenticate"], "Bearer realm=\"shoal\"");
        }
        _ => assert_eq!(body.code, "DENIED"),
    }
}

#[tokio::test]
async fn an_upload_needs_an_allowed_caller_and_a_refused_one_leaves_nothing() {
    let o = origin().await;
    let http = reqwest::Client::new();
    let data = b"a layer someone wants to plant".to_vec();
    let d = Digest::of(&data);
    let put = || http.put(format!("{}/blobs/{d}", o.url)).body(data.clone());
    for (token, want) in [(None, 401), (Some("guessed"), 403)] {
        let (status, headers, body) = send(put(), token).await;
        refused(status, &headers, &body, want);
    }
    assert!(files(&o.dir.path().join("backend")).is_empty(), "nothing in the backend");
    let stored: Vec<_> = files(&o.dir.path().join("store")).into_iter().filter(|p| !p.ends_with("tokens")).collect();
    assert!(stored.is_empty(), "nothing in the store: {stored:?}");
    assert_eq!(http.get(format!("{}/blobs/{d}/metainfo", o.url)).send().await.unwrap().status(), 404);

    let (status, _, body) = send(put(), Some(TOKEN)).await;
    assert_eq!(status, 201, "{body}");
    let got = http.get(format!("{}/blobs/{d}", o.url)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], &data[..]);
    o.shutdown.cancel();
    o.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn preheats_and_notifications_need_an_allowed_caller() {
    let o = origin().await;
    let http = reqwest::Client::new();
    let preheat = serde_json::json!({"name": "team/app", "reference": Digest::of(b"m").to_string()});
    for (token, want) in [(None, 401), (Some("guessed"), 403)] {
        let (status, headers, body) = send(http.post(format!("{}/preheat", o.url)).json(&preheat), token).await;
        refused(status, &headers, &body, want);
        let envelope = serde_json::json!({"events": []});
        let (status, headers, body) = send(http.post(format!("{}/notifications", o.url)).json(&envelope), token).await;
        refused(status, &headers, &body, want);
    }
    assert_eq!(http.get(format!("{}/preheat/ph-1", o.url)).send().await.unwrap().status(), 404, "no job was made");
    // Allowed: the preheat runs (and fails, as the backend has no such manifest).
    let (status, _, body) = send(http.post(format!("{}/preheat", o.url)).json(&preheat), Some(TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) =
        send(http.post(format!("{}/notifications", o.url)).json(&serde_json::json!({"events": []})), Some(TOKEN)).await;
    assert_eq!(status, 202, "{body}");
    o.shutdown.cancel();
    o.task.await.unwrap().unwrap();
}

/// Only the upload route reads a body of any size: a preheat or notification body past its
/// limit is refused with 413 before it is parsed.
#[tokio::test]
async fn preheat_and_notification_bodies_are_bounded() {
    let o = origin().await;
    let http = reqwest::Client::new();
    let huge = serde_json::json!({"name": "a".repeat(2 << 20), "reference": "v1"});
    for path in ["preheat", "notifications"] {
        let (status, _, body) = send(http.post(format!("{}/{path}", o.url)).json(&huge), Some(TOKEN)).await;
        assert_eq!(status, 413, "{path}: {body}");
        let body: ErrorBody = serde_json::from_str(&body).unwrap();
        assert_eq!(body.code, "PAYLOAD_TOO_LARGE", "{path}");
    }
    o.shutdown.cancel();
    o.task.await.unwrap().unwrap();
}
