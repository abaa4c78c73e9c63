//! `edgecore join`: joins through cloudcore's PKI and writes a config that connects over
//! TLS with the new certificate, and with `--install` a systemd unit that runs it.

use std::path::{Path, PathBuf};

use crate::edgecore::EdgeCoreConfig;
use crate::error::{Error, Result};
use crate::pki::files;
use crate::pki::join::{NodeFiles, join};

/// What `edgecore join` was asked.
#[derive(Clone, Debug)]
pub struct Enrollment {
    /// cloudhub's address, `host:port`.
    pub cloud: String,
    /// cloudcore's PKI port, `host:port`.
    pub pki: String,
    /// The join token.
    pub token: String,
    /// This node's name.
    pub node: String,
    /// Folder for the store, the socket and the certificates (`pki/` in it).
    pub dir: PathBuf,
    /// The config file to write.
    pub config: PathBuf,
    /// Where to write a systemd unit, when asked to.
    pub unit: Option<PathBuf>,
    /// The edgecore binary the unit runs.
    pub binary: PathBuf,
}

/// The unit file for `binary --config config`.
pub fn systemd_unit(binary: &Path, config: &Path) -> String {
    format!(
        "[Unit]\n\
         Description=edgemesh edgecore: the edge side of the edge service mesh\n\
         Wants=network-online.target\n\
         After=network-online.target\n\n\
         [Service]\n\
         ExecStart={} --config {}\n\
         Restart=always\n\
         RestartSec=2\n\
         LimitNOFILE=65536\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        binary.display(),
        config.display()
    )
}

/// Joins and writes the files; returns what was done, for the operator.
pub async fn enroll(e: &Enrollment) -> Result<String> {
    files::private_dir(&e.dir)?;
    let pki_dir = e.dir.join("pki");
    let node_files = NodeFiles::in_dir(&pki_dir);
    join(&e.pki, &e.token, &e.node, &node_files).await?;
    let mut config = EdgeCoreConfig::default();
    config.pki.address = e.pki.clone();
    let hub = &mut config.modules.edge_hub;
    hub.server = e.cloud.clone();
    hub.node_id = e.node.clone();
    hub.tls = Some(edgehub::TlsFiles {
        ca_file: node_files.ca.clone(),
        cert_file: node_files.cert.clone(),
        key_file: node_files.key.clone(),
    });
    let meta = &mut config.modules.meta_manager;
    meta.db_path = e.dir.join("edgecore.db");
    meta.socket_path = e.dir.join("metamanager.sock");
    let yaml = serde_yaml_ng::to_string(&config).map_err(|e| Error::Pki(e.to_string()))?;
    let text = format!(
        "# Written by `edgecore join` for node {}: TLS to cloudhub {} with a certificate\n\
         # from cloudcore's CA, renewed through {} before it expires.\n{yaml}",
        e.node, e.cloud, e.pki
    );
    if let Some(parent) = e.config.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|err| Error::Pki(format!("{}: {err}", parent.display())))?;
    }
    files::write_mode(&e.config, text.as_bytes(), 0o644)?;
    let mut done = format!(
        "node {} joined: certificate in {}, config in {}\nstart it with: edgecore --config {}\n",
        e.node,
        node_files.cert.display(),
        e.config.display(),
        e.config.display()
    );
    if let Some(unit) = &e.unit {
        files::write_mode(unit, systemd_unit(&e.binary, &e.config).as_bytes(), 0o644)?;
        done.push_str(&format!(
            "systemd unit written to {}: systemctl daemon-reload && systemctl enable --now edgecore\n",
            unit.display()
        ));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// deploy/ keeps the unit `--install` writes, beside cloudcore's manifests.
    #[test]
    fn the_unit_in_deploy_is_the_one_install_writes() {
        let unit = systemd_unit(
            Path::new("/usr/local/bin/edgecore"),
            Path::new("/etc/edgemesh/edgecore.yaml"),
        );
        assert_eq!(unit, include_str!("../../deploy/edgecore.service"));
    }
}
