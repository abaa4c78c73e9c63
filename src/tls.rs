//! rustls settings for the cloud link, built from PEM files: the server requires and
//! verifies client certificates; the client presents its node certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{}: {reason}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn roots(ca_file: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_file)? {
        roots.add(cert).map_err(|e| file_err(ca_file, e))?;
    }
    Ok(Arc::new(roots))
}

/// cloudhub's TLS: its own certificate, and client certificates required and verified
/// against `ca_file`.
pub fn server_config(files: &cloudhub::TlsFiles) -> Result<Arc<ServerConfig>> {
    server_with(files, true)
}

/// The PKI port's TLS: the server certificate, and a client certificate verified when one
/// is presented but not required (a joining node has none yet; a renewing one does).
pub fn server_config_optional_client(files: &cloudhub::TlsFiles) -> Result<Arc<ServerConfig>> {
    server_with(files, false)
}

fn server_with(files: &cloudhub::TlsFiles, client_required: bool) -> Result<Arc<ServerConfig>> {
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&files.ca_file)?, provider());
    if !client_required {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(|e| file_err(&files.ca_file, e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert_file)?, key(&files.key_file)?)
        .map_err(|e| file_err(&files.cert_file, e))?;
    Ok(Arc::new(config))
}

/// A client that trusts `ca_der` alone, presenting `identity` (certificate chain and key)
/// when given.
pub fn client_trusting(
    ca_der: &[u8],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::Tls(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A client that accepts any server certificate: only for fetching a CA certificate whose
/// hash is checked afterwards against a join token (the token pins it; nothing secret
/// travels on this connection).
pub fn client_for_ca_fetch() -> Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedLater(provider())))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts any certificate, checking only that the handshake's signatures are sound; see
/// [`client_for_ca_fetch`].
#[derive(Debug)]
struct PinnedLater(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for PinnedLater {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// edgehub's TLS: cloudhub verified against `ca_file`, this node's certificate presented.
pub fn client_config(files: &edgehub::TlsFiles) -> Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots(&files.ca_file)?)
        .with_client_auth_cert(certs(&files.cert_file)?, key(&files.key_file)?)
        .map_err(|e| file_err(&files.cert_file, e))?;
    Ok(Arc::new(config))
}
