//! The check KubeEdge never made: a client certificate must be issued for the node it
//! claims to be.

use rustls_pki_types::{CertificateDer, ServerName};

/// The subject common name a Kubernetes node certificate carries (kubelet's and KubeEdge
/// edgecore's): `system:node:<name>`.
pub const NODE_CN_PREFIX: &str = "system:node:";

/// Ok when `cert` (already verified against the CA during the handshake) is issued for
/// `node_id`: the node's name among its DNS subject alternative names (what `edgemesh
/// certs` and cloudcore's own CA issue), or its subject CN `system:node:<node_id>` (what
/// KubeEdge's cloudcore issues, with no SAN). Otherwise the reason to give the node.
pub fn check_node_name(cert: &CertificateDer<'_>, node_id: &str) -> Result<(), String> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    if let Ok(name) = ServerName::try_from(node_id)
        && ee.verify_is_valid_for_subject_name(&name).is_ok()
    {
        return Ok(());
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let names: Vec<&str> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .collect();
    if names
        .iter()
        .any(|cn| cn.strip_prefix(NODE_CN_PREFIX) == Some(node_id))
    {
        return Ok(());
    }
    let shown = if names.is_empty() {
        "no CN".to_owned()
    } else {
        format!("CN {}", names.join(", "))
    };
    Err(format!(
        "the client certificate is not issued for node {node_id} ({shown}, and no SAN {node_id})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_node_is_named_by_san_or_by_kubernetes_cn() {
        // edgemesh's own issue: the name as a SAN.
        assert!(check_node_name(&cert("edge-1", &["edge-1"]), "edge-1").is_ok());
        // KubeEdge's cloudcore: CN system:node:<name>, no SAN.
        let kubeedge = cert("system:node:edge-1", &[]);
        assert!(check_node_name(&kubeedge, "edge-1").is_ok());
        let refused = check_node_name(&kubeedge, "edge-2").unwrap_err();
        assert!(
            refused.contains("not issued for node edge-2 (CN system:node:edge-1"),
            "{refused}"
        );
        // A bare CN equal to the name is not the Kubernetes form: refused.
        assert!(check_node_name(&cert("edge-1", &[]), "edge-1").is_err());
        assert!(check_node_name(&cert("system:node:edge-10", &[]), "edge-1").is_err());
        assert!(check_node_name(&cert("x", &["edge-2"]), "edge-1").is_err());
    }
}
