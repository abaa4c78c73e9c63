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
        let mut params = CertificateParams::new(names.to_vec()).map_err(rc)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if usage == ExtendedKeyUsagePurpose::ClientAuth {
            params
                .distinguished_name
                .push(DnType::OrganizationName, "system:nodes");
        }
        params.extended_key_usages = vec![usage];
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
