//! The check KubeEdge never made: a client certificate must be issued for the node it
//! claims to be.

use rustls_pki_types::{CertificateDer, ServerName};

/// Ok when `cert` (already verified against the CA during the handshake) names `node_id`
/// among its DNS subject alternative names; otherwise the reason to give the node.
pub fn check_node_name(cert: &CertificateDer<'_>, node_id: &str) -> Result<(), String> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let name = ServerName::try_from(node_id)
        .map_err(|_| format!("node_id {node_id:?} is not a valid certificate name"))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("the client certificate is not issued for node {node_id}"))
}
