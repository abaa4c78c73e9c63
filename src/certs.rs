//! Certificates for tests and a first try: a CA, a server certificate for cloudhub and one
//! client certificate per node, named after the node (cloudhub checks that name).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// A CA that can issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// PEM text of an issued certificate and its key.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

fn rc(e: rcgen::Error) -> Error {
    Error::Tls(format!("certificate generation: {e}"))
}

impl Ca {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(rc)?;
        let cert = params.self_signed(&key).map_err(rc)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (PEM), to issue more.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(rc)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(rc)?;
        Ok(Ca {
            pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// Its private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate in PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    fn issue(&self, cn: &str, names: &[String], usage: ExtendedKeyUsagePurpose) -> Result<Issued> {
        self.issue_with(cn, names, usage, |_| {})
    }

    fn issue_with(
        &self,
        cn: &str,
        names: &[String],
        usage: ExtendedKeyUsagePurpose,
        tune: impl FnOnce(&mut CertificateParams),
    ) -> Result<Issued> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(rc)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if usage == ExtendedKeyUsagePurpose::ClientAuth {
            params
                .distinguished_name
                .push(DnType::OrganizationName, "system:nodes");
        }
        params.extended_key_usages = vec![usage];
        tune(&mut params);
        let key = KeyPair::generate().map_err(rc)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rc)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for cloudhub, valid for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[String]) -> Result<Issued> {
        let cn = names.first().map_or("cloudhub", String::as_str);
        self.issue(cn, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for the node `node_id`, in the Kubernetes form (CN
    /// `system:node:<name>`, O `system:nodes`) with the name as a SAN too.
    pub fn node(&self, node_id: &str) -> Result<Issued> {
        self.issue(
            &format!("system:node:{node_id}"),
            &[node_id.to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// Signs the public key of the request `csr_der` (DER) as node `node_id`'s client
    /// certificate, valid from a minute ago (clock skew) for `validity`. Only the key is
    /// taken from the request: the name is the caller's, the node's authenticated
    /// identity, never what the request asks for (KubeEdge signs the request's subject
    /// as it comes, so any token holder can name itself any node).
    pub fn sign_node_request(
        &self,
        csr_der: &[u8],
        node_id: &str,
        validity: std::time::Duration,
    ) -> Result<Signed> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
        let mut csr = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| Error::Pki(format!("unreadable certificate request: {e}")))?;
        let mut params = CertificateParams::new(vec![node_id.to_owned()]).map_err(rc)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("system:node:{node_id}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        let lifetime = time::Duration::try_from(validity)
            .map_err(|e| Error::Pki(format!("certificate lifetime: {e}")))?;
        params.not_after = now + lifetime;
        let mut serial_bytes = crate::pki::files::random(16)?;
        // A positive INTEGER whose first byte is not zero: DER keeps these bytes as they
        // are, so the serial read back from the certificate is the one recorded.
        serial_bytes[0] = (serial_bytes[0] & 0x7f) | 0x40;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial_bytes));
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(rc)?;
        Ok(Signed {
            der: cert.der().to_vec(),
            serial: serial_bytes.iter().map(|b| format!("{b:02x}")).collect(),
            not_after: u64::try_from((now + lifetime).unix_timestamp()).unwrap_or(0),
        })
    }

    /// A client certificate for `node_id` that expired an hour ago (for tests of what
    /// refuses it).
    pub fn expired_node(&self, node_id: &str) -> Result<Issued> {
        self.issue_with(
            &format!("system:node:{node_id}"),
            &[node_id.to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
            |params| {
                let now = time::OffsetDateTime::now_utc();
                params.not_before = now - time::Duration::hours(2);
                params.not_after = now - time::Duration::hours(1);
            },
        )
    }

    /// A client certificate for `node_id` as KubeEdge's cloudcore issues them: the
    /// Kubernetes CN and O, no SAN (for interop tests).
    pub fn kubeedge_node(&self, node_id: &str) -> Result<Issued> {
        self.issue(
            &format!("system:node:{node_id}"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// A certificate signed from a request.
#[derive(Clone, Debug)]
pub struct Signed {
    /// The certificate (DER).
    pub der: Vec<u8>,
    /// Its serial number in hex (what revocation names).
    pub serial: String,
    /// Seconds since the epoch it expires.
    pub not_after: u64,
}

/// Files written by [`write_all`].
#[derive(Debug)]
pub struct Written {
    /// `ca.crt`.
    pub ca: PathBuf,
    /// `ca.key` (mode 0600), to issue more with [`Ca::load`].
    pub ca_key: PathBuf,
    /// `server.crt` and `server.key`.
    pub server: (PathBuf, PathBuf),
    /// `<node>.crt` and `<node>.key` per node.
    pub nodes: Vec<(PathBuf, PathBuf)>,
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    fs::write(path, text).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Writes a new CA, a server certificate for `server_names` and one certificate per node
/// into `dir` (created when missing). Keys are written with mode 0600.
pub fn write_all(dir: &Path, server_names: &[String], nodes: &[String]) -> Result<Written> {
    fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
    let ca = Ca::new("edgemesh CA")?;
    let pair = |stem: &str, issued: &Issued| -> Result<(PathBuf, PathBuf)> {
        let crt = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write(&crt, &issued.cert_pem, false)?;
        write(&key, &issued.key_pem, true)?;
        Ok((crt, key))
    };
    let ca_path = dir.join("ca.crt");
    write(&ca_path, ca.pem(), false)?;
    let ca_key = dir.join("ca.key");
    write(&ca_key, &ca.key_pem(), true)?;
    let server = pair("server", &ca.server(server_names)?)?;
    let nodes = nodes
        .iter()
        .map(|n| pair(n, &ca.node(n)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Written {
        ca: ca_path,
        ca_key,
        server,
        nodes,
    })
}
