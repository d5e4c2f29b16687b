//! A fault-injecting HTTP proxy for the S3 backend: it sits between the origins and a real
//! S3 server (s3s-fs) on loopback and, per request, passes it on, answers 503 itself, never
//! answers (a request that times out), trickles the response body (a slow read), or flips a
//! byte of the body (corruption the origin's sha256 check must catch).
//!
//! It works on TCP, one request per connection: it reads the request head, forwards it with
//! `Connection: close` (the body too, by its `Content-Length`), and copies the answer back
//! until the server closes. Headers pass unchanged otherwise, so the client's SigV4
//! signature (which covers `Host`) still verifies at the server. Which requests meet which
//! fault is drawn from a seeded RNG, except for keys the [`Rules`] name. Every wait is bounded
//! by [`HOLD_MAX`] and by the proxy's stop token.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The longest the proxy holds a request it will not answer, or a stalled body.
pub const HOLD_MAX: Duration = Duration::from_secs(600);
/// The largest request head read.
const MAX_HEAD: usize = 64 << 10;

/// What the proxy does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    /// Answers `503 SlowDown` itself, as S3 does when throttling.
    Error,
    /// Reads the request and never answers (until [`HOLD_MAX`] or the proxy stops).
    Hang,
    /// Passes it on and sends the body at `Rules::slow_rate`.
    Slow,
    /// Passes it on with one body byte flipped.
    Corrupt,
}

/// How the proxy chooses.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Share of requests answered 503.
    pub error_rate: f64,
    /// Share of requests never answered.
    pub hang_rate: f64,
    /// Share of requests whose body is trickled.
    pub slow_rate_share: f64,
    /// Bytes/s of a trickled body.
    pub slow_rate: u64,
    /// Requests whose path contains one of these always get the action given.
    pub by_path: Vec<(String, Action)>,
    pub seed: u64,
}

/// Requests seen, by what was done to them.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub hangs: AtomicU64,
    pub slow: AtomicU64,
    pub corrupted: AtomicU64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream` under `rules`.
    pub async fn start(upstream: SocketAddr, rules: Rules) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(rules.seed)));
        let rules = Arc::new(rules);
        let (c, s) = (counts.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let sock = tokio::select! {
                    r = listener.accept() => match r { Ok((sock, _)) => sock, Err(_) => continue },
                    () = s.cancelled() => return,
                };
                let (c, s, rules, rng) = (c.clone(), s.clone(), rules.clone(), rng.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(sock, upstream, &rules, &rng, &c) => {}
                        () = s.cancelled() => {}
                    }
                });
            }
        });
        Ok(FaultProxy { addr, counts, stop })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn choose(rules: &Rules, path: &str, rng: &Mutex<rand::rngs::StdRng>) -> Action {
    if let Some((_, a)) = rules.by_path.iter().find(|(p, _)| path.contains(p.as_str())) {
        return *a;
    }
    let x: f64 = rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner).random();
    if x < rules.error_rate {
        Action::Error
    } else if x < rules.error_rate + rules.hang_rate {
        Action::Hang
    } else if x < rules.error_rate + rules.hang_rate + rules.slow_rate_share {
        Action::Slow
    } else {
        Action::Pass
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    rules: &Rules,
    rng: &Mutex<rand::rngs::StdRng>,
    counts: &Counts,
) -> anyhow::Result<()> {
    let (head, rest) = read_head(&mut client).await?;
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
    let action = choose(rules, &path, rng);
    match action {
        Action::Error => {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                        <Message>Please reduce your request rate.</Message></Error>";
            let resp = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(resp.as_bytes()).await?;
            return Ok(());
        }
        Action::Hang => {
            counts.hangs.fetch_add(1, Ordering::Relaxed);
            // Hold the connection open without a word; read and drop whatever the client
            // sends, so its closing is seen.
            let mut sink = [0u8; 4096];
            let _ =
                tokio::time::timeout(HOLD_MAX, async { while client.read(&mut sink).await.is_ok_and(|n| n > 0) {} })
                    .await;
            return Ok(());
        }
        Action::Slow => {
            counts.slow.fetch_add(1, Ordering::Relaxed);
        }
        Action::Corrupt => {
            counts.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        Action::Pass => {}
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&close_connection(&text)).await?;
    // The request body: what came with the head, then the rest by Content-Length.
    let body_len = header(&text, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    server.write_all(&rest).await?;
    let mut left = body_len.saturating_sub(rest.len());
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let n = client.read(&mut buf[..left.min(64 << 10)]).await?;
        anyhow::ensure!(n > 0, "client closed mid-body");
        server.write_all(&buf[..n]).await?;
        left -= n;
    }
    // The answer, until the server closes.
    let mut head_seen = false;
    let mut seen = 0usize;
    let mut flipped = false;
    loop {
        let n = server.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let chunk = &mut buf[..n];
        if action == Action::Corrupt && !flipped {
            // Flip a byte well past the head: the head ends in the first chunk for any
            // answer this proxy sees; the byte is in the body.
            if let Some(end) = chunk.windows(4).position(|w| w == b"\r\n\r\n").filter(|_| !head_seen) {
                head_seen = true;
                if end + 4 + 100 < n {
                    chunk[end + 4 + 100] ^= 0x5A;
                    flipped = true;
                }
            } else if head_seen && seen > 0 {
                chunk[0] ^= 0x5A;
                flipped = true;
            }
        }
        seen += n;
        client.write_all(chunk).await?;
        if action == Action::Slow && rules.slow_rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rules.slow_rate as f64)).await;
        }
    }
}

/// Reads until the end of the request head; returns the head and any bytes after it.
async fn read_head(sock: &mut TcpStream) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before a request head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        anyhow::ensure!(buf.len() <= MAX_HEAD, "request head over {MAX_HEAD} bytes");
    }
}

/// The value of header `name` (case-insensitive) in a request or response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn close_connection(head: &str) -> Vec<u8> {
    let mut out = String::with_capacity(head.len() + 20);
    let body = head.trim_end_matches("\r\n");
    for (i, line) in body.split("\r\n").enumerate() {
        if i > 0 && line.split_once(':').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection")) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_rewritten_to_close() {
        let head = "GET /b/k HTTP/1.1\r\nHost: x\r\nconnection: keep-alive\r\nContent-Length: 3\r\n\r\n";
        let out = String::from_utf8(close_connection(head)).unwrap();
        assert_eq!(out, "GET /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n");
        assert_eq!(header(head, "content-length"), Some("3"));
        assert_eq!(header(head, "host"), Some("x"));
        assert_eq!(header(head, "range"), None);
    }

    #[test]
    fn rules_pick_by_path_then_by_share() {
        let rng = Mutex::new(rand::rngs::StdRng::seed_from_u64(1));
        let rules = Rules { by_path: vec![("poison".into(), Action::Error)], ..Rules::default() };
        assert_eq!(choose(&rules, "/b/poison", &rng), Action::Error);
        assert_eq!(choose(&rules, "/b/fine", &rng), Action::Pass);
        let all_hang = Rules { hang_rate: 1.0, ..Rules::default() };
        assert_eq!(choose(&all_hang, "/b/x", &rng), Action::Hang);
        let mixed = Rules { error_rate: 0.1, hang_rate: 0.1, ..Rules::default() };
        let n = 10_000;
        let faults = (0..n).filter(|_| choose(&mixed, "/x", &rng) != Action::Pass).count();
        assert!((1_500..2_500).contains(&faults), "{faults} of {n}");
    }

    /// Through the proxy to a one-shot server on loopback: a passed request arrives with
    /// `Connection: close`, and its answer comes back whole; an error never reaches it.
    #[tokio::test]
    async fn forwards_and_injects() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = server.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = server.accept().await.unwrap();
                let (head, _) = read_head(&mut s).await.unwrap();
                let head = String::from_utf8(head).unwrap();
                assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
                let body = "x".repeat(1000);
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let rules = Rules {
            by_path: vec![("/err".into(), Action::Error), ("/bad".into(), Action::Corrupt)],
            ..Rules::default()
        };
        let proxy = FaultProxy::start(upstream, rules).await.unwrap();
        let http = reqwest::Client::new();
        let ok = http.get(format!("{}/ok", proxy.endpoint())).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.text().await.unwrap(), "x".repeat(1000));
        let err = http.get(format!("{}/err", proxy.endpoint())).send().await.unwrap();
        assert_eq!(err.status(), 503);
        let bad = http.get(format!("{}/bad", proxy.endpoint())).send().await.unwrap();
        let text = bad.bytes().await.unwrap();
        assert_eq!(text.len(), 1000);
        assert_eq!(text.iter().filter(|&&b| b != b'x').count(), 1, "one byte flipped");
        assert_eq!(proxy.counts.requests.load(Ordering::Relaxed), 3);
        assert_eq!(proxy.counts.errors.load(Ordering::Relaxed), 1);
    }
}
