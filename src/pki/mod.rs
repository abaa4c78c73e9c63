//! cloudcore's PKI: its CA (made on first start, or one given), cloudhub's server
//! certificate, join tokens, node certificates signed from requests, and revocation.
//!
//! Everything lives in one folder (`pki.dir`, mode 0700, keys 0600): `ca.crt`/`ca.key`,
//! `server.crt`/`server.key`, `token.key` and `tokens.json`, `issued.json` (serial, node
//! and expiry of every node certificate signed) and `revoked.json`. The `cloudcore token`
//! and `cloudcore cert` commands edit the folder; the running cloudcore rereads the
//! registries when they change, so a revocation takes effect at once.
//!
//! Edges reach it over HTTPS ([`server`]) at KubeEdge's paths: `GET /ca.crt` and
//! `GET|POST /edge.crt` (a certificate request, authenticated by a join token or by the
//! node's current certificate). [`join`] is the edge's side.

pub mod commands;
pub mod enroll;
pub mod files;
pub mod join;
pub mod renew;
pub mod server;
pub mod token;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::certs::{Ca, Signed};
use crate::error::{Error, Result};
use token::Tokens;

/// cloudcore's PKI settings (`pki:` in its config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PkiConfig {
    /// Folder of the CA, cloudhub's certificate, tokens and the record of node
    /// certificates. Empty: no PKI (cloudhub's TLS files are given by hand, or the link is
    /// insecure). A `ca.crt` and `ca.key` placed here before the first start are used
    /// instead of a new CA. (An edge's own files go to the same path by default, but on
    /// its own machine: `edgecore join --dir`.)
    pub dir: PathBuf,
    /// Names and IP addresses cloudhub's certificate is issued for: what edges dial.
    pub server_names: Vec<String>,
    /// Where edges fetch the CA and have certificates signed (HTTPS; KubeEdge's port).
    pub address: String,
    /// Seconds a node certificate is valid (edges renew at 80% of it).
    pub node_cert_seconds: u64,
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            dir: "/var/lib/edgemesh/cloud-pki".into(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            address: "0.0.0.0:10002".into(),
            node_cert_seconds: 365 * 24 * 3600,
        }
    }
}

impl PkiConfig {
    /// Whether the PKI is on.
    pub fn enabled(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }

    /// Every problem with the settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.enabled() {
            return problems;
        }
        if self.server_names.is_empty() {
            problems.push("serverNames: must name at least one name or address".into());
        }
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("address: {:?} is not IP:port", self.address));
        }
        if self.node_cert_seconds < 60 {
            problems.push("nodeCertSeconds: must be at least 60".into());
        }
        problems
    }
}

/// A node certificate signed by this CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Serial number, hex.
    pub serial: String,
    /// The node.
    pub node: String,
    /// Seconds since the epoch it expires.
    pub not_after: u64,
    /// Whether it was revoked.
    pub revoked: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct Issued {
    certs: Vec<IssuedCert>,
}

/// The revoked serials, reread when `issued.json` changes.
#[derive(Default)]
struct RevokedCache {
    modified: Option<SystemTime>,
    /// When the file's time was last looked at: at most once a second, however many live
    /// sessions are checked.
    looked: Option<std::time::Instant>,
    serials: BTreeMap<String, String>,
}

/// cloudcore's PKI, opened from its folder.
pub struct Pki {
    dir: PathBuf,
    ca: Ca,
    ca_der: Vec<u8>,
    tokens: Tokens,
    node_cert_life: Duration,
    issued_lock: Mutex<()>,
    revoked: Mutex<RevokedCache>,
}

fn read_text(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Pki(format!("{}: {e}", path.display()))),
    }
}

fn pem_der(pem: &str) -> Result<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| Error::Pki(format!("CA certificate: {e}")))
}

impl Pki {
    /// Opens the folder `config.dir`, making the CA, server certificate and token secret
    /// on first use.
    pub fn open(config: &PkiConfig) -> Result<Self> {
        let dir = config.dir.clone();
        files::private_dir(&dir)?;
        let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let ca = match (read_text(&ca_crt)?, read_text(&ca_key)?) {
            (Some(cert), Some(key)) => Ca::load(&cert, &key)?,
            (None, None) => {
                let ca = Ca::new("edgemesh cloudcore CA")?;
                files::write_private(&ca_key, ca.key_pem().as_bytes())?;
                files::write_mode(&ca_crt, ca.pem().as_bytes(), 0o644)?;
                log::info!("PKI: made a new CA in {}", dir.display());
                ca
            }
            _ => {
                return Err(Error::Pki(format!(
                    "{}: ca.crt and ca.key go together (one is missing)",
                    dir.display()
                )));
            }
        };
        let ca_der = pem_der(ca.pem())?;
        let (server_crt, server_key) = (dir.join("server.crt"), dir.join("server.key"));
        // Reissued when the configured names change, so edges dialling a new name work.
        let names_file = dir.join("server.names");
        let names = config.server_names.join("\n");
        let same_names = read_text(&names_file)?.is_some_and(|n| n == names);
        if !server_crt.exists() || !server_key.exists() || !same_names {
            let issued = ca.server(&config.server_names)?;
            files::write_private(&server_key, issued.key_pem.as_bytes())?;
            files::write_mode(&server_crt, issued.cert_pem.as_bytes(), 0o644)?;
            files::write_mode(&names_file, names.as_bytes(), 0o644)?;
            log::info!(
                "PKI: made cloudhub's certificate for {}",
                config.server_names.join(", ")
            );
        }
        let tokens = Tokens::open(&dir, &ca_der)?;
        Ok(Pki {
            dir,
            ca,
            ca_der,
            tokens,
            node_cert_life: Duration::from_secs(config.node_cert_seconds),
            issued_lock: Mutex::new(()),
            revoked: Mutex::new(RevokedCache::default()),
        })
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The join tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// cloudhub's TLS files from this folder.
    pub fn hub_tls(&self) -> cloudhub::TlsFiles {
        cloudhub::TlsFiles {
            ca_file: self.dir.join("ca.crt"),
            cert_file: self.dir.join("server.crt"),
            key_file: self.dir.join("server.key"),
        }
    }

    fn issued_path(&self) -> PathBuf {
        self.dir.join("issued.json")
    }

    fn load_issued(&self) -> Result<Issued> {
        match read_text(&self.issued_path())? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Pki(format!("{}: {e}", self.issued_path().display()))),
            None => Ok(Issued::default()),
        }
    }

    fn save_issued(&self, issued: &Issued) -> Result<()> {
        let text = serde_json::to_vec_pretty(issued).map_err(|e| Error::Pki(e.to_string()))?;
        files::write_private(&self.issued_path(), &text)
    }

    /// Signs `csr_der` as node `node`'s certificate and records it.
    pub fn sign(&self, csr_der: &[u8], node: &str) -> Result<Signed> {
        let signed = self
            .ca
            .sign_node_request(csr_der, node, self.node_cert_life)?;
        let _guard = self.issued_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut issued = self.load_issued()?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Expired ones need no record: the handshake refuses them anyway.
        issued.certs.retain(|c| c.not_after > now);
        issued.certs.push(IssuedCert {
            serial: signed.serial.clone(),
            node: node.to_owned(),
            not_after: signed.not_after,
            revoked: false,
        });
        self.save_issued(&issued)?;
        Ok(signed)
    }

    /// Node certificates signed and not yet expired.
    pub fn issued(&self) -> Result<Vec<IssuedCert>> {
        Ok(self.load_issued()?.certs)
    }

    /// Revokes every certificate of `node`; how many were revoked.
    pub fn revoke_node(&self, node: &str) -> Result<usize> {
        let _guard = self.issued_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut issued = self.load_issued()?;
        let mut count = 0;
        for cert in issued
            .certs
            .iter_mut()
            .filter(|c| c.node == node && !c.revoked)
        {
            cert.revoked = true;
            count += 1;
        }
        self.save_issued(&issued)?;
        Ok(count)
    }

    /// Why the certificate `der` is refused, when it was revoked (the record is reread
    /// when its file changed, so `cloudcore cert revoke` takes effect at once).
    pub fn revocation(&self, der: &[u8]) -> Option<String> {
        let serial = serial_of(der)?;
        let mut cache = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        let stale = cache
            .looked
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        let modified = match stale {
            true => {
                cache.looked = Some(std::time::Instant::now());
                std::fs::metadata(self.issued_path())
                    .and_then(|m| m.modified())
                    .ok()
            }
            false => cache.modified,
        };
        if modified != cache.modified {
            match self.load_issued() {
                Ok(issued) => {
                    cache.serials = issued
                        .certs
                        .into_iter()
                        .filter(|c| c.revoked)
                        .map(|c| (c.serial, c.node))
                        .collect();
                    cache.modified = modified;
                }
                Err(e) => log::warn!("PKI: {e} (revocations as last read)"),
            }
        }
        cache
            .serials
            .get(&serial)
            .map(|node| format!("certificate {serial} of node {node} was revoked"))
    }
}

/// A certificate's serial number in hex, as [`IssuedCert::serial`] spells it.
pub fn serial_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(
        cert.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, names: &[&str]) -> PkiConfig {
        PkiConfig {
            dir: dir.to_owned(),
            server_names: names.iter().map(|n| n.to_string()).collect(),
            ..PkiConfig::default()
        }
    }

    #[test]
    fn the_ca_is_kept_and_the_server_certificate_follows_the_names() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let first = Pki::open(&config(&dir, &["localhost"])).unwrap();
        let server = std::fs::read(dir.join("server.crt")).unwrap();
        let again = Pki::open(&config(&dir, &["localhost"])).unwrap();
        assert_eq!(first.ca_der(), again.ca_der(), "the CA is made once");
        assert_eq!(std::fs::read(dir.join("server.crt")).unwrap(), server);
        Pki::open(&config(&dir, &["localhost", "cloud.example"])).unwrap();
        assert_ne!(
            std::fs::read(dir.join("server.crt")).unwrap(),
            server,
            "new names, a new certificate"
        );
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("server.key"), 0o600);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // One of the pair alone is refused, naming the folder.
        std::fs::remove_file(dir.join("ca.key")).unwrap();
        let err = Pki::open(&config(&dir, &["localhost"]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ca.crt and ca.key go together"), "{err}");
    }
}
