//! Loading, mutual handshakes on loopback, refusals by reason, rotation on disk, and the
//! client's identity on HTTP requests, with CAs made by rcgen.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::test_ca::TestCa;
use super::*;

fn node(ca: &TestCa, dir: &TempDir, name: &str, identity: &str) -> TlsConfig {
    ca.write(dir.path(), name, &ca.issue(identity)).unwrap()
}

fn client_presenting(cert: Option<&test_ca::NodeCert>, trust: &Tls) -> Arc<rustls::ClientConfig> {
    Arc::new(test_ca::client_config(cert, trust))
}

#[test]
fn load_checks_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("shoal test");
    let cfg = node(&ca, &dir, "a", "spiffe://shoal/a");
    let tls = Tls::load(&cfg).unwrap();
    assert_eq!(tls.identity().as_str(), "spiffe://shoal/a");

    let missing = TlsConfig { key_file: dir.path().join("nope.key"), ..cfg.clone() };
    assert!(matches!(Tls::load(&missing), Err(TlsError::Read { .. })));

    let other = TestCa::new("another");
    let (cert_file, key_file) = other.issue("spiffe://shoal/a").write(dir.path(), "stranger").unwrap();
    let untrusted = TlsConfig { cert_file, key_file, ..cfg.clone() };
    assert!(
        matches!(Tls::load(&untrusted), Err(TlsError::Untrusted { .. })),
        "our own cert must pass our peers' check"
    );

    let (cert_file, key_file) = ca.issue_expired("spiffe://shoal/a").write(dir.path(), "old").unwrap();
    let expired = TlsConfig { cert_file, key_file, ..cfg.clone() };
    assert!(matches!(Tls::load(&expired), Err(TlsError::Untrusted { .. })));

    let (_, key_file) = ca.issue("spiffe://shoal/b").write(dir.path(), "b").unwrap();
    let mismatch = TlsConfig { key_file, ..cfg.clone() };
    assert!(matches!(Tls::load(&mismatch), Err(TlsError::Key { .. })));

    std::fs::write(&cfg.ca_file, "not pem").unwrap();
    assert!(matches!(Tls::load(&cfg), Err(TlsError::Pem { .. })));
}

#[test]
fn config_rejects_unknown_keys_and_has_defaults() {
    let c: TlsConfig = crate::config::parse("ca_file: /c\ncert_file: /t\nkey_file: /k\n").unwrap();
    assert_eq!(c.http_client_auth, ClientAuth::Required);
    assert_eq!(c.reload_interval.get(), std::time::Duration::from_secs(10));
    let c: TlsConfig =
        crate::config::parse("ca_file: /c\ncert_file: /t\nkey_file: /k\nhttp_client_auth: optional\n").unwrap();
    assert_eq!(c.http_client_auth, ClientAuth::Optional);
    assert!(crate::config::parse::<TlsConfig>("ca_file: /c\ncert_file: /t\nkey_file: /k\ncafile: x\n").is_err());
}

/// Accepts one connection with `server` on the peer link and reports the client's identity.
async fn accept_one(
    server: &Tls,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<std::io::Result<Option<Identity>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.acceptor(Link::Peer, ClientAuth::Required);
    let server = server.clone();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        match acceptor.accept(tcp).await {
            Ok(mut s) => {
                let id = s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(Identity::of_cert);
                s.write_all(b"ok").await?;
                s.shutdown().await?;
                Ok(id)
            }
            Err(e) => {
                server.count_refusal(Link::Peer, Side::Server, Refusal::of_io(&e));
                Err(e)
            }
        }
    });
    (addr, task)
}

/// Connects with `client` and reads the server's "ok".
async fn connect(client: Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut s = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok(buf)
}

#[tokio::test]
async fn handshakes_are_mutual_and_refusals_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("shoal test");
    let server = Tls::load(&node(&ca, &dir, "server", "shoal-origin.shoal.svc")).unwrap();
    let client = Tls::load(&node(&ca, &dir, "client", "spiffe://shoal/agent-1")).unwrap();

    let (addr, task) = accept_one(&server).await;
    assert_eq!(connect(client.client_config(Link::Peer), addr).await.unwrap(), b"ok");
    assert_eq!(task.await.unwrap().unwrap().unwrap().as_str(), "spiffe://shoal/agent-1");

    // A client from another CA, with an expired certificate, and with none.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestCa::new("another");
    let stranger = Tls::load(&node(&other, &other_dir, "stranger", "spiffe://shoal/agent-1")).unwrap();
    let late = Tls::load(&node(&ca, &dir, "late", "spiffe://shoal/late")).unwrap();
    // Rotated to an expired certificate behind its back.
    ca.issue_expired("spiffe://shoal/late").write(dir.path(), "late").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    for (cert, reason) in [
        (Some(other.issue("spiffe://shoal/agent-1")), Refusal::UnknownCa),
        (Some(ca.issue_expired("spiffe://shoal/agent-1")), Refusal::Expired),
        (None, Refusal::NoCertificate),
    ] {
        let (addr, task) = accept_one(&server).await;
        let _ = connect(client_presenting(cert.as_ref(), &client), addr).await;
        assert!(task.await.unwrap().is_err(), "{reason:?} is refused");
        assert_eq!(server.refusals(Link::Peer, Side::Server, reason), 1, "{reason:?}");
    }
    // The expired node's rotation is refused (it would not pass its peers), so it keeps its
    // valid certificate.
    let (addr, task) = accept_one(&server).await;
    assert_eq!(connect(late.client_config(Link::Peer), addr).await.unwrap(), b"ok");
    assert!(task.await.unwrap().is_ok());
    assert_eq!(late.reload_counter("error").get(), 1);

    // A server from another CA is refused by the client, and counted there.
    let (addr, _task) = accept_one(&stranger).await;
    assert!(connect(client.client_config(Link::Peer), addr).await.is_err());
    assert_eq!(client.refusals(Link::Peer, Side::Client, Refusal::UnknownCa), 1);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("shoal test");
    let cfg = node(&ca, &dir, "server", "shoal-origin");
    let server = Tls::load(&cfg).unwrap();
    let client = Tls::load(&node(&ca, &dir, "client", "shoal-agent")).unwrap();
    let served = |addr| {
        let cfg = client.client_config(Link::Peer);
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
            let s = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
            s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        }
    };
    let (addr, _t) = accept_one(&server).await;
    let first = served(addr).await;

    // cert-manager renews: same identity, new key and certificate.
    ca.issue("shoal-origin").write(dir.path(), "server").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let (addr, _t) = accept_one(&server).await;
    let second = served(addr).await;
    assert_ne!(first, second, "the new certificate is served");
    assert_eq!(server.reload_counter("ok").get(), 1);

    // A certificate for another identity is refused; the node keeps the one it has.
    ca.issue("shoal-agent").write(dir.path(), "server").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let (addr, _t) = accept_one(&server).await;
    assert_eq!(served(addr).await, second);
    assert_eq!(server.reload_counter("error").get(), 1);
    assert_eq!(server.identity().as_str(), "shoal-origin");
}

#[tokio::test]
async fn http_handlers_see_the_client_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("shoal test");
    let mut cfg = node(&ca, &dir, "server", "shoal-origin");
    cfg.http_client_auth = ClientAuth::Optional;
    let server = Tls::load(&cfg).unwrap();
    let client = Tls::load(&node(&ca, &dir, "client", "spiffe://shoal/agent-7")).unwrap();
    let router = Router::new().route(
        "/who",
        get(|ClientIdentity(id): ClientIdentity| async move {
            id.map(|i| i.to_string()).unwrap_or_else(|| "nobody".into())
        }),
    );
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = HttpListener::new(tcp, Some(&server), server.config().http_client_auth).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(crate::serve(listener, router, stop.clone(), std::time::Duration::from_secs(1)));
    let url = format!("https://{addr}/who");

    let with_cert = client.http_client(reqwest::Client::builder()).build().unwrap();
    assert_eq!(with_cert.get(&url).send().await.unwrap().text().await.unwrap(), "spiffe://shoal/agent-7");
    // Optional client auth: no certificate is let in, with no identity.
    let without = rustls::ClientConfig::clone(&client_presenting(None, &client));
    let anonymous = reqwest::Client::builder().use_preconfigured_tls(without).build().unwrap();
    assert_eq!(anonymous.get(&url).send().await.unwrap().text().await.unwrap(), "nobody");
    // Plain HTTP to the TLS port is refused at the handshake.
    assert!(reqwest::get(format!("http://{addr}/who")).await.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(server.refusals(Link::Http, Side::Server, Refusal::NotTls), 1);
    stop.cancel();
    served.await.unwrap().unwrap();
}
