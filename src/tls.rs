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
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca_file)?, provider())
        .build()
        .map_err(|e| file_err(&files.ca_file, e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert_file)?, key(&files.key_file)?)
        .map_err(|e| file_err(&files.cert_file, e))?;
    Ok(Arc::new(config))
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
