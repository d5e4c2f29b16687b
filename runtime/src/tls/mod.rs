//! TLS for every link between Shoal nodes: the peer wire protocol, the HTTP APIs of the origin
//! and the tracker, and the HTTP clients that call them. Mutual: a node presents its own
//! certificate and accepts only peers whose certificate chains to the configured CA.
//!
//! [`TlsConfig`] names three PEM files (the CA bundle, the node's certificate chain and its
//! key). [`Tls::load`] reads and checks them when the config is validated, before any port is
//! bound. Afterwards the files are watched: at a handshake, at most once every
//! `reload_interval`, their size, mtime and inode are compared with what was loaded, and on a
//! change they are read again (cert-manager rotates them in place). A rotation that fails to
//! load or changes the certificate's identity is refused and logged; the node goes on with the
//! material it had. Established connections are never touched by a rotation.
//!
//! A node's identity ([`Identity`]) is the first URI SAN of its certificate, else its first DNS
//! SAN: what cert-manager writes from a Certificate's `uris` and `dnsNames`. Names are not
//! checked against addresses (nodes dial each other by IP, and a certificate shared by a
//! DaemonSet cannot name every node's address): any certificate the CA signed is a Shoal node,
//! and its identity is what the rest of the code authorizes and blames. Give Shoal a CA of its
//! own.
//!
//! Handshakes refused, on either side of every link, are counted in
//! `shoal_tls_handshakes_refused_total{link, side, reason}` ([`Refusal`]).

mod http;
#[cfg(any(test, feature = "test-ca"))]
pub mod test_ca;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

pub use http::{ClientIdentity, HttpListener, HttpStream, TlsListener, client_identity};

use crate::units::Duration;

/// The `tls:` section of every service's config. Without it the node speaks plaintext and
/// says so loudly at start ([`warn_plaintext`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM bundle of the CA certificates a peer's certificate must chain to.
    pub ca_file: PathBuf,
    /// PEM certificate chain of this node, its own certificate first (cert-manager's
    /// `tls.crt`). It must carry a URI or DNS SAN, and be valid for both server and client
    /// authentication: every node is both.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1; cert-manager's `tls.key`).
    pub key_file: PathBuf,
    /// Whether clients of this node's HTTP API must present a certificate (`required`, the
    /// default) or may come without one (`optional`: kubelet probes, Prometheus, the `shoal`
    /// CLI, a registry's notifications). A certificate that is presented is always checked:
    /// one from another CA or expired is refused at the handshake either way. The peer port
    /// always requires one.
    #[serde(default)]
    pub http_client_auth: ClientAuth,
    /// How often, at most, the three files are checked for a rotation (at a handshake).
    /// Default 10s.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

/// Whether a TLS server requires a client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// Which link a TLS endpoint serves, a label of the refusal metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The peer wire protocol.
    Peer,
    /// An HTTP API (origin, tracker, agent) or a client of one.
    Http,
}

impl Link {
    fn label(self) -> &'static str {
        match self {
            Link::Peer => "peer",
            Link::Http => "http",
        }
    }
}

/// Why a handshake was refused, the `reason` label of
/// `shoal_tls_handshakes_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate does not chain to our CA (another CA, self-signed, bad signature).
    UnknownCa,
    /// The certificate is expired or not yet valid.
    Expired,
    /// No certificate where one is required.
    NoCertificate,
    /// A valid certificate without a URI or DNS SAN to name the node.
    NoIdentity,
    /// The peer id in the wire `Handshake` is not bound to the certificate's identity.
    PeerId,
    /// The other end does not speak TLS (a plaintext node).
    NotTls,
    /// The handshake did not finish within its deadline.
    Timeout,
    /// Anything else (a protocol error, a reset).
    Other,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownCa => "unknown_ca",
            Refusal::Expired => "expired",
            Refusal::NoCertificate => "no_certificate",
            Refusal::NoIdentity => "no_identity",
            Refusal::PeerId => "peer_id",
            Refusal::NotTls => "not_tls",
            Refusal::Timeout => "timeout",
            Refusal::Other => "other",
        }
    }

    /// Why rustls failed a handshake.
    pub fn of_rustls(e: &rustls::Error) -> Refusal {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::NoCertificatesPresented => Refusal::NoCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                    Refusal::Expired
                }
                C::UnknownIssuer | C::BadSignature | C::BadEncoding => Refusal::UnknownCa,
                C::ApplicationVerificationFailure => Refusal::NoIdentity,
                _ => Refusal::Other,
            },
            rustls::Error::InvalidMessage(_) => Refusal::NotTls,
            _ => Refusal::Other,
        }
    }

    /// Why a TLS accept or connect failed, from the error tokio-rustls returns.
    pub fn of_io(e: &std::io::Error) -> Refusal {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => Refusal::of_rustls(tls),
            None => Refusal::Other,
        }
    }
}

/// Which side of a handshake refused, the `side` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// We accepted the connection and refused the client.
    Server,
    /// We connected and refused the server.
    Client,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// What a certificate proves about the node holding it: its first URI SAN, else its first
/// DNS SAN. Cheap to clone; compared as a string. In a config (`auth.identities`) it is
/// written as that string, and matches the certificates that name it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<str>);

impl Identity {
    /// The identity of a DER certificate, `None` if it has neither SAN (or does not parse).
    pub fn of_cert(der: &CertificateDer<'_>) -> Option<Identity> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        let name = cert.valid_uri_names().next().or_else(|| cert.valid_dns_names().next())?;
        Some(Identity(name.into()))
    }

    /// The identity a certificate naming `name` proves (for a config's allow-list).
    pub fn named(name: &str) -> Identity {
        Identity(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Identity, D::Error> {
        String::deserialize(d).map(|s| Identity(s.into()))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.0)
    }
}

/// Why the TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: the key does not fit the certificate or cannot be used: {source}", path.display())]
    Key { path: PathBuf, source: rustls::Error },
    #[error("{}: the certificate has no URI or DNS SAN to name this node", path.display())]
    NoIdentity { path: PathBuf },
    #[error("{}: the certificate does not chain to the CA bundle or is not valid now: {source}", path.display())]
    Untrusted { path: PathBuf, source: rustls::Error },
    #[error("the rotated certificate names {new}, not {old}: a node keeps its identity while it runs")]
    IdentityChanged { old: Identity, new: Identity },
}

/// A node's TLS material and the configs built on it; cheap to clone, shared by every link of
/// the node.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: TlsConfig,
    provider: Arc<CryptoProvider>,
    /// The material in use; swapped whole by a reload.
    material: RwLock<Arc<Material>>,
    /// When the files are next compared with what was loaded.
    next_check: Mutex<Instant>,
    refused: IntCounterVec,
    reloads: IntCounterVec,
}

/// One loading of the three files.
struct Material {
    key: Arc<CertifiedKey>,
    identity: Identity,
    roots: Arc<RootCertStore>,
    /// Chain checks for client certificates, built on `roots`.
    clients: Arc<dyn ClientCertVerifier>,
    stamps: [Stamp; 3],
}

/// What identifies one version of a file on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    ino: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0;
        Some(Stamp { len: m.len(), modified: m.modified().ok(), ino })
    }
}

impl Tls {
    /// Reads and checks the files: a CA bundle with at least one certificate, a certificate
    /// chain with an identity that chains to that bundle and is valid now, and its key.
    pub fn load(cfg: &TlsConfig) -> Result<Tls, TlsError> {
        let provider = Arc::new(provider());
        let material = load_material(cfg, &provider)?;
        let refused = IntCounterVec::new(
            Opts::new(
                "shoal_tls_handshakes_refused_total",
                "TLS handshakes refused, by link (peer, http), side (server: we refused a client; client: we refused a server) and reason",
            ),
            &["link", "side", "reason"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new("shoal_tls_reloads_total", "rotations of the TLS files picked up (ok) or refused (error)"),
            &["result"],
        )
        .expect("valid metric");
        Ok(Tls {
            inner: Arc::new(Inner {
                next_check: Mutex::new(Instant::now() + cfg.reload_interval.get()),
                cfg: cfg.clone(),
                provider,
                material: RwLock::new(Arc::new(material)),
                refused,
                reloads,
            }),
        })
    }

    /// Registers the TLS metrics on a node's registry (a registry that has them keeps its own).
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        for c in [self.inner.refused.clone(), self.inner.reloads.clone()] {
            match registry.register(Box::new(c)) {
                Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// This node's identity (fixed while it runs: a rotation may not change it).
    pub fn identity(&self) -> Identity {
        self.inner.material.read().identity.clone()
    }

    pub fn config(&self) -> &TlsConfig {
        &self.inner.cfg
    }

    /// Counts a refused handshake.
    pub fn count_refusal(&self, link: Link, side: Side, reason: Refusal) {
        self.inner.refused.with_label_values(&[link.label(), side.label(), reason.label()]).inc();
    }

    /// How many handshakes were refused for `reason` on `link` and `side` (for tests and the
    /// harness).
    pub fn refusals(&self, link: Link, side: Side, reason: Refusal) -> u64 {
        self.inner.refused.with_label_values(&[link.label(), side.label(), reason.label()]).get()
    }

    /// The reload counter for `result` ("ok" or "error").
    fn reload_counter(&self, result: &str) -> IntCounter {
        self.inner.reloads.with_label_values(&[result])
    }

    /// A server config for `link`: TLS 1.3, this node's certificate (re-read on rotation), and
    /// client certificates checked against the CA (re-read too), required or not.
    pub fn server_config(&self, link: Link, auth: ClientAuth) -> Arc<ServerConfig> {
        let verifier = Arc::new(verify::Clients { tls: self.clone(), auth });
        let mut cfg = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the provider supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(verify::OwnCert { tls: self.clone() }));
        // No resumption: every connection proves a certificate valid now.
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        let _ = link;
        Arc::new(cfg)
    }

    /// A client config for `link`: TLS 1.3, this node's certificate, and the server's checked
    /// against the CA (its names are not: see the module doc).
    pub fn client_config(&self, link: Link) -> Arc<ClientConfig> {
        let mut cfg = ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::Servers { tls: self.clone(), link }))
            .with_client_cert_resolver(Arc::new(verify::OwnCert { tls: self.clone() }));
        cfg.resumption = rustls::client::Resumption::disabled();
        Arc::new(cfg)
    }

    pub fn acceptor(&self, link: Link, auth: ClientAuth) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_config(link, auth))
    }

    pub fn connector(&self, link: Link) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client_config(link))
    }

    /// `builder` with this node's TLS client config, for calls to other nodes' HTTP APIs
    /// (`https://` URLs).
    pub fn http_client(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder.use_preconfigured_tls(ClientConfig::clone(&self.client_config(Link::Http)))
    }

    /// The material in use, reloaded first if the check is due and the files changed.
    fn current(&self) -> Arc<Material> {
        self.reload_if_due();
        self.inner.material.read().clone()
    }

    fn reload_if_due(&self) {
        let now = Instant::now();
        {
            let mut next = self.inner.next_check.lock();
            if now < *next {
                return;
            }
            *next = now + self.inner.cfg.reload_interval.get();
        }
        let cfg = &self.inner.cfg;
        let stamps = stamps(cfg);
        if stamps == self.inner.material.read().stamps {
            return;
        }
        match self.reload(&stamps) {
            Ok(identity) => {
                self.reload_counter("ok").inc();
                tracing::info!(%identity, cert = %cfg.cert_file.display(), "tls: rotated certificate loaded");
            }
            Err(e) => {
                self.reload_counter("error").inc();
                tracing::error!("tls: rotation refused, keeping the current certificate: {e}");
                // Not retried until the files change again: a rotation written in several
                // steps (the certificate, then the key) loads once its last file is there.
                let mut m = self.inner.material.write();
                *m = Arc::new(m.with_stamps(stamps));
            }
        }
    }

    fn reload(&self, stamps: &[Stamp; 3]) -> Result<Identity, TlsError> {
        let mut fresh = load_material(&self.inner.cfg, &self.inner.provider)?;
        fresh.stamps = *stamps;
        let old = self.identity();
        if fresh.identity != old {
            return Err(TlsError::IdentityChanged { old, new: fresh.identity });
        }
        let identity = fresh.identity.clone();
        *self.inner.material.write() = Arc::new(fresh);
        Ok(identity)
    }
}

impl Material {
    /// Remembers `stamps` as seen without taking the files they describe.
    fn with_stamps(&self, stamps: [Stamp; 3]) -> Material {
        Material {
            key: self.key.clone(),
            identity: self.identity.clone(),
            roots: self.roots.clone(),
            clients: self.clients.clone(),
            stamps,
        }
    }
}

/// The crypto provider of every link: ring, TLS 1.3 suites only, AES-128-GCM first (the
/// cheapest per byte with AES-NI), then AES-256-GCM and ChaCha20 for CPUs without it.
pub fn provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite as cs;
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

fn stamps(cfg: &TlsConfig) -> [Stamp; 3] {
    let none = Stamp { len: 0, modified: None, ino: 0 };
    [&cfg.ca_file, &cfg.cert_file, &cfg.key_file].map(|p| Stamp::of(p).unwrap_or(none))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem { path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn load_material(cfg: &TlsConfig, provider: &Arc<CryptoProvider>) -> Result<Material, TlsError> {
    // Stamped before reading, so a file rewritten while it is read is read again.
    let stamps = stamps(cfg);
    let ca = certs(&cfg.ca_file, &read(&cfg.ca_file)?)?;
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c)
            .map_err(|e| TlsError::Pem { path: cfg.ca_file.clone(), reason: format!("not a CA certificate: {e}") })?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&cfg.cert_file, &read(&cfg.cert_file)?)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&cfg.key_file)?)
        .map_err(|e| TlsError::Pem { path: cfg.key_file.clone(), reason: e.to_string() })?;
    let key = CertifiedKey::from_der(chain.clone(), key, provider)
        .map_err(|source| TlsError::Key { path: cfg.key_file.clone(), source })?;
    let identity = Identity::of_cert(&chain[0]).ok_or_else(|| TlsError::NoIdentity { path: cfg.cert_file.clone() })?;
    // Our own certificate must pass the checks our peers run, or every handshake fails.
    verify::chain(&roots, &chain[0], &chain[1..], provider)
        .map_err(|source| TlsError::Untrusted { path: cfg.cert_file.clone(), source })?;
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Pem { path: cfg.ca_file.clone(), reason: e.to_string() })?;
    Ok(Material { key: Arc::new(key), identity, roots, clients, stamps })
}

/// Loads a service's `tls:` section when it has one, and checks that every URL of another
/// node it calls (`(key, url)`, the key naming it in an error) has the matching scheme:
/// `https://` with TLS, `http://` without. Run by each service's `validate`, before binding.
pub fn validate<'a>(
    cfg: Option<&TlsConfig>,
    urls: impl IntoIterator<Item = (String, &'a str)>,
) -> Result<Option<Tls>, crate::ConfigError> {
    let want = if cfg.is_some() { "https://" } else { "http://" };
    for (key, url) in urls {
        if !url.starts_with(want) {
            let why = if cfg.is_some() { "tls is configured" } else { "tls is not configured" };
            return Err(crate::ConfigError::Invalid(format!("{key}: {url:?} must start with {want}: {why}")));
        }
    }
    cfg.map(Tls::load).transpose().map_err(|e| crate::ConfigError::Invalid(format!("tls: {e}")))
}

/// Logs, loudly, that a node runs without TLS: every byte and every claim on its links is
/// unauthenticated.
pub fn warn_plaintext(service: &str) {
    tracing::warn!(
        service,
        "TLS IS OFF: no `tls:` section in the config. Every link of this {service} (the peer \
         protocol, the HTTP APIs between nodes) is plaintext and unauthenticated: anyone who can \
         reach its ports can read what it sends, claim any peer id and forge metainfo. Use this \
         only in a lab."
    );
}

#[cfg(test)]
mod tests;
