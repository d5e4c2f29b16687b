//! The rustls hooks that read the node's current material at each handshake: its own
//! certificate ([`OwnCert`], for both sides), client certificates ([`Clients`]) and server
//! certificates ([`Servers`]). Each asks [`Tls::current`], which reloads rotated files first.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::{ClientAuth, Identity, Link, Refusal, Side, Tls};

/// Checks that `end_entity` chains to `roots` and is valid now; names are not checked.
pub(super) fn chain(
    roots: &RootCertStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    provider: &CryptoProvider,
) -> Result<(), rustls::Error> {
    let cert = ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &cert,
        roots,
        intermediates,
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
}

/// A verified certificate without an identity is refused: nothing could be blamed for it.
fn identity_of(end_entity: &CertificateDer<'_>) -> Result<Identity, rustls::Error> {
    Identity::of_cert(end_entity)
        .ok_or(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
}

/// This node's certificate, as a server and as a client.
#[derive(Debug)]
pub(super) struct OwnCert {
    pub tls: Tls,
}

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.tls.current().key.clone())
    }
}

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.tls.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client certificates: chained to the current CA bundle and named. Refusals are counted
/// where the accept fails (rustls refuses a missing certificate before asking us).
#[derive(Debug)]
pub(super) struct Clients {
    pub tls: Tls,
    pub auth: ClientAuth,
}

impl ClientCertVerifier for Clients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle can change under us; no hints (a client sends the one certificate it has).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.tls.current().clients.verify_client_cert(end_entity, intermediates, now)?;
        identity_of(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.tls.inner.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.tls.inner.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls.inner.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Server certificates: chained to the current CA bundle and named; a refusal is counted here,
/// since an HTTP client's connect error does not say why.
#[derive(Debug)]
pub(super) struct Servers {
    pub tls: Tls,
    pub link: Link,
}

impl ServerCertVerifier for Servers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let m = self.tls.current();
        let res =
            chain(&m.roots, end_entity, intermediates, &self.tls.inner.provider).and_then(|()| identity_of(end_entity));
        match res {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                self.tls.count_refusal(self.link, Side::Client, Refusal::of_rustls(&e));
                Err(e)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.tls.inner.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.tls.inner.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls.inner.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("identity", &self.identity()).finish_non_exhaustive()
    }
}
