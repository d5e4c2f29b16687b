//! A throwaway certificate authority for tests and the load-test harness (feature
//! `test-ca`): node certificates with a URI or DNS SAN, valid or expired, written as the PEM
//! files a [`TlsConfig`] names.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use super::{ClientAuth, TlsConfig};
use crate::units::Duration;

/// A CA made for one test or one harness run.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A node's certificate and key, PEM.
#[derive(Clone, Debug)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("key generation");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        TestCa { cert: params.self_signed(&key).expect("self-signed CA"), key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate naming `identity` (a URI SAN if it has a scheme, else a DNS SAN), for
    /// server and client authentication, valid from 1975 to 4096 (rcgen's defaults).
    pub fn issue(&self, identity: &str) -> NodeCert {
        self.issue_with(identity, |_| {})
    }

    /// A certificate naming `identity` that expired in 2001.
    pub fn issue_expired(&self, identity: &str) -> NodeCert {
        self.issue_with(identity, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn issue_with(&self, identity: &str, edit: impl FnOnce(&mut CertificateParams)) -> NodeCert {
        let key = KeyPair::generate().expect("key generation");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty names");
        let san = if identity.contains("://") {
            SanType::URI(identity.try_into().expect("an ASCII URI"))
        } else {
            SanType::DnsName(identity.try_into().expect("an ASCII DNS name"))
        };
        params.subject_alt_names = vec![san];
        params.distinguished_name.push(DnType::CommonName, identity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        edit(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("signed by the CA");
        NodeCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// Writes the CA bundle and `node`'s files under `dir` as `ca.pem`, `<name>.crt` and
    /// `<name>.key`, and returns the config naming them (checked every 100ms).
    pub fn write(&self, dir: &Path, name: &str, node: &NodeCert) -> std::io::Result<TlsConfig> {
        std::fs::create_dir_all(dir)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, self.pem())?;
        let (cert_file, key_file) = node.write(dir, name)?;
        Ok(TlsConfig {
            ca_file,
            cert_file,
            key_file,
            http_client_auth: ClientAuth::Required,
            reload_interval: Duration::from_millis(100),
        })
    }
}

/// A TLS 1.3 client config that presents `cert` (none: no certificate) and checks servers
/// against `trusting`'s CA like a node does, built by hand so a test can present what
/// [`Tls::load`](super::Tls::load) refuses to load (an expired certificate, another CA's).
pub fn client_config(cert: Option<&NodeCert>, trusting: &super::Tls) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let b = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(super::provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(super::verify::Servers {
            tls: trusting.clone(),
            link: super::Link::Http,
        }));
    match cert {
        Some(c) => {
            let chain =
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().expect("PEM");
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("PEM key");
            b.with_client_auth_cert(chain, key).expect("a usable key")
        }
        None => b.with_no_client_auth(),
    }
}

impl NodeCert {
    /// Writes `<name>.crt` and `<name>.key` under `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert_file = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, &self.cert_pem)?;
        std::fs::write(&key_file, &self.key_pem)?;
        Ok((cert_file, key_file))
    }
}
