//! A TLS upstream on loopback with a CA and a client-certificate CA made at test time: the
//! origin reaches it only with the right `ca_file` and, where the upstream asks for one, the
//! right client certificate. [`Ca`] and [`tls_server`] serve the S3 backend's test too.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use shoal_core::Digest;
use shoal_core::registry::{Reference, RegistryHost, RepoName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{PullThroughConfig, UpstreamError, UpstreamMetrics, Upstreams};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

/// A certificate authority made for one test.
pub(crate) struct Ca {
    pub(crate) cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A leaf for `names`, for a server or a client.
    pub(crate) fn issue(&self, names: &[&str], client: bool) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        (params.signed_by(&key, &self.cert, &self.key).unwrap(), key)
    }
}

/// Serves MANIFEST over TLS on 127.0.0.1 to every connection that completes the handshake,
/// asking for a client certificate from `client_ca` when given.
async fn tls_upstream(server_ca: &Ca, client_ca: Option<&Ca>) -> std::net::SocketAddr {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        MANIFEST.len()
    );
    let mut answer = head.into_bytes();
    answer.extend_from_slice(MANIFEST);
    tls_server(server_ca, client_ca, answer).await
}

/// Answers every request with `answer` (a whole HTTP/1.1 response) over TLS on 127.0.0.1,
/// with a certificate for localhost from `server_ca`, asking for a client certificate from
/// `client_ca` when given.
pub(crate) async fn tls_server(server_ca: &Ca, client_ca: Option<&Ca>, answer: Vec<u8>) -> std::net::SocketAddr {
    let answer: Arc<[u8]> = answer.into();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = server_ca.issue(&["localhost", "127.0.0.1"], false);
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = builder.with_single_cert(vec![cert.der().clone()], key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Test-only server: its tasks end with the test's runtime.
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(&answer).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

pub(crate) fn write_pem(dir: &std::path::Path, name: &str, pem: String) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p.display().to_string()
}

/// Fetches MANIFEST by digest from `addr` with the extra upstream keys `tls_yaml`.
async fn fetch(addr: std::net::SocketAddr, tls_yaml: &str) -> Result<Digest, UpstreamError> {
    let yaml = format!("upstreams:\n- host: secure.test\n  url: https://localhost:{}\n{tls_yaml}", addr.port());
    let cfg: PullThroughConfig = shoal_runtime::config::parse(&yaml).unwrap();
    let valid = cfg.validate().unwrap();
    let ups = Upstreams::new(&valid, UpstreamMetrics::new(&prometheus::Registry::new()).unwrap()).unwrap();
    let up = ups.select(Some(&RegistryHost::parse("secure.test").unwrap()), &RepoName::parse("x").unwrap()).unwrap();
    let name = RepoName::parse("team/app").unwrap();
    up.manifest(&name, &Reference::Digest(Digest::of(MANIFEST))).await.map(|m| m.digest)
}

#[tokio::test]
async fn a_private_ca_and_a_client_certificate_reach_a_tls_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("shoal test server CA");
    let client_ca = Ca::new("shoal test client CA");
    let ca_file = write_pem(dir.path(), "ca.pem", server_ca.cert.pem());
    let (client, client_key) = client_ca.issue(&["origin.test"], true);
    let cert_file = write_pem(dir.path(), "client.pem", client.pem());
    let key_file = write_pem(dir.path(), "client.key", client_key.serialize_pem());
    let ca_yaml = format!("  ca_file: {ca_file}\n");
    let mtls_yaml = format!("{ca_yaml}  client_cert_file: {cert_file}\n  client_key_file: {key_file}\n");

    // Server auth only: the private CA is needed, and enough.
    let plain = tls_upstream(&server_ca, None).await;
    assert_eq!(fetch(plain, &ca_yaml).await.unwrap(), Digest::of(MANIFEST));
    let err = fetch(plain, "").await.unwrap_err();
    assert!(err.is_transient(), "an unknown CA fails the request: {err}");

    // The upstream asks for a client certificate from its own CA.
    let mtls = tls_upstream(&server_ca, Some(&client_ca)).await;
    assert_eq!(fetch(mtls, &mtls_yaml).await.unwrap(), Digest::of(MANIFEST));
    assert!(fetch(mtls, &ca_yaml).await.is_err(), "no client certificate, no answer");
    // A certificate from another CA is refused too.
    let (other, other_key) = Ca::new("someone else").issue(&["origin.test"], true);
    let other_yaml = format!(
        "{ca_yaml}  client_cert_file: {}\n  client_key_file: {}\n",
        write_pem(dir.path(), "other.pem", other.pem()),
        write_pem(dir.path(), "other.key", other_key.serialize_pem())
    );
    assert!(fetch(mtls, &other_yaml).await.is_err());
}

#[test]
fn tls_files_are_checked_when_the_config_is() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("shoal test CA");
    let (leaf, key) = ca.issue(&["origin.test"], true);
    let cert_file = write_pem(dir.path(), "c.pem", leaf.pem());
    let key_file = write_pem(dir.path(), "c.key", key.serialize_pem());
    let junk = write_pem(dir.path(), "junk.pem", "not a certificate\n".into());
    let check = |keys: &str| {
        let yaml = format!("upstreams:\n- host: a.test\n  url: https://a.test\n{keys}");
        let cfg: PullThroughConfig = shoal_runtime::config::parse(&yaml).unwrap();
        cfg.validate().map(|_| ()).map_err(|e| e.to_string())
    };
    check(&format!("  ca_file: {}\n", write_pem(dir.path(), "ca.pem", ca.cert.pem()))).unwrap();
    check(&format!("  client_cert_file: {cert_file}\n  client_key_file: {key_file}\n")).unwrap();
    let err = check(&format!("  ca_file: {junk}\n")).unwrap_err();
    assert!(err.contains("a.test: ca_file") && err.contains("no PEM certificate"), "{err}");
    let err = check("  ca_file: /nonexistent/ca.pem\n").unwrap_err();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let err = check(&format!("  client_cert_file: {cert_file}\n")).unwrap_err();
    assert!(err.contains("client_cert_file and client_key_file go together"), "{err}");
    let err = check(&format!("  client_cert_file: {cert_file}\n  client_key_file: {junk}\n")).unwrap_err();
    assert!(err.contains("client_cert_file"), "{err}");
}
