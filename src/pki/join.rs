//! The edge's side of the PKI: join with a token, renew with the current certificate.
//!
//! Join: fetch the CA from cloudcore's PKI port, check its SHA-256 against the token's
//! (refusing, with both hashes named, on a mismatch: someone else answered), make a key,
//! send a certificate request authenticated by the token, and keep the certificate with
//! the key (0600). Renewal sends a request for a new key, authenticated by the current
//! certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};
use crate::pki::files;
use crate::pki::server::NODE_NAME_HEADER;
use crate::pki::token;

/// How long any one exchange with the PKI port may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Where a node keeps its PKI files. When `cert` and `key` are one path (what join
/// writes: `node.pem`), certificate and key are replaced together by one rename, so a
/// crash mid-renewal never leaves a key beside a certificate that is not its own.
#[derive(Clone, Debug)]
pub struct NodeFiles {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The node's certificate (PEM).
    pub cert: PathBuf,
    /// The node's key (PEM, 0600).
    pub key: PathBuf,
}

impl NodeFiles {
    /// `ca.crt`, and `node.pem` holding certificate and key, in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        NodeFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("node.pem"),
            key: dir.join("node.pem"),
        }
    }

    /// The files an edgehub TLS setting names.
    pub fn of(tls: &edgehub::TlsFiles) -> Self {
        NodeFiles {
            ca: tls.ca_file.clone(),
            cert: tls.cert_file.clone(),
            key: tls.key_file.clone(),
        }
    }
}

fn pki_err(what: impl std::fmt::Display) -> Error {
    Error::Pki(what.to_string())
}

/// The host part of `host:port`, as a TLS server name.
fn server_name(addr: &str) -> Result<ServerName<'static>> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(['[', ']']);
    ServerName::try_from(host.to_owned()).map_err(|_| pki_err(format!("{addr}: not host:port")))
}

/// One HTTPS request to the PKI port at `addr`: status and body.
async fn exchange(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    request: Request<Full<Bytes>>,
) -> Result<(u16, Bytes)> {
    let name = server_name(addr)?;
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| pki_err(format!("cannot reach cloudcore's PKI port {addr}: {e}")))?;
        let tls = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| pki_err(format!("TLS with {addr}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| pki_err(format!("HTTP with {addr}: {e}")))?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| pki_err(format!("HTTP with {addr}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| pki_err(format!("HTTP with {addr}: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| pki_err(format!("{addr}: no answer in {TIMEOUT:?}")))?
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(hyper::header::HOST, "cloudcore")
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// A new key and a request for `node`'s certificate (the name is only a hint: cloudcore
/// names the certificate after the authenticated node).
fn key_and_request(node: &str) -> Result<(KeyPair, Vec<u8>)> {
    let key = KeyPair::generate().map_err(|e| pki_err(format!("key generation: {e}")))?;
    let mut params = CertificateParams::new(vec![node.to_owned()])
        .map_err(|e| pki_err(format!("certificate request: {e}")))?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    let csr = params
        .serialize_request(&key)
        .map_err(|e| pki_err(format!("certificate request: {e}")))?;
    Ok((key, csr.der().to_vec()))
}

/// Asks for `node`'s certificate with `auth` (a Bearer token, or none when `tls` presents
/// the current certificate); writes certificate and key to `files`.
async fn request_certificate(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    node: &str,
    bearer: Option<&str>,
    files: &NodeFiles,
) -> Result<()> {
    let (key, csr) = key_and_request(node)?;
    let mut request = Request::post("/edge.crt")
        .header(hyper::header::HOST, "cloudcore")
        .header(NODE_NAME_HEADER, node);
    if let Some(token) = bearer {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(csr)))
        .map_err(|e| pki_err(format!("certificate request: {e}")))?;
    let (status, body) = exchange(addr, tls, request).await?;
    if status != 200 {
        return Err(pki_err(format!(
            "cloudcore refused the certificate request ({status}): {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let cert = CertificateDer::from(body.to_vec());
    let pem = pem_of("CERTIFICATE", &cert);
    if files.cert == files.key {
        files::write_private(
            &files.cert,
            format!("{pem}{}", key.serialize_pem()).as_bytes(),
        )
    } else {
        // Key first: a certificate is never on disk without its key.
        files::write_private(&files.key, key.serialize_pem().as_bytes())?;
        files::write_mode(&files.cert, pem.as_bytes(), 0o644)
    }
}

fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Joins node `node` through the PKI port at `addr` with `token`; writes the CA, the
/// certificate and the key to `files`.
pub async fn join(addr: &str, token: &str, node: &str, files: &NodeFiles) -> Result<()> {
    if !cloudhub::hub::valid_node_id(node) {
        return Err(pki_err(format!("{node:?} is not a valid node name")));
    }
    let (expected, jwt) = token::split(token.trim()).map_err(pki_err)?;
    let (status, ca) = exchange(addr, crate::tls::client_for_ca_fetch()?, get("/ca.crt")).await?;
    if status != 200 {
        return Err(pki_err(format!("{addr}/ca.crt answered {status}")));
    }
    let presented = token::ca_hash(&ca);
    if !presented.eq_ignore_ascii_case(expected) {
        return Err(pki_err(format!(
            "CA hash mismatch: the token expects {expected}, {addr} presented a CA with \
             {presented}; refusing to trust it"
        )));
    }
    if let Some(dir) = files.cert.parent() {
        files::private_dir(dir)?;
    }
    files::write_mode(&files.ca, pem_of("CERTIFICATE", &ca).as_bytes(), 0o644)?;
    // From here on cloudcore's certificate is verified against the pinned CA.
    let tls = crate::tls::client_trusting(&ca, None)?;
    request_certificate(addr, tls, node, Some(jwt), files).await
}

/// Renews node `node`'s certificate in `files` through `addr`, authenticated by the
/// current one.
pub async fn renew(addr: &str, node: &str, files: &NodeFiles) -> Result<()> {
    let ca = CertificateDer::from_pem_file(&files.ca)
        .map_err(|e| pki_err(format!("{}: {e}", files.ca.display())))?;
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| pki_err(format!("{}: {e}", files.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| pki_err(format!("{}: {e}", files.key.display())))?;
    let tls = crate::tls::client_trusting(&ca, Some((chain, key)))?;
    request_certificate(addr, tls, node, None, files).await
}

/// The validity of the certificate in `path`: (not before, not after), seconds since the
/// epoch.
pub fn validity(path: &Path) -> Result<(i64, i64)> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| pki_err(format!("{}: {e}", path.display())))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| pki_err(format!("{}: {e}", path.display())))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}
