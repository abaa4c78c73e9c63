//! TLS on the cloud link: client certificates verified against the CA and bound to the
//! node's name; wrong CAs refused both ways.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use common::*;
use edgemesh::certs::{self, Written};
use futures_util::StreamExt;
use proto::operation;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn hub_tls(w: &Written) -> cloudhub::TlsFiles {
    cloudhub::TlsFiles {
        ca_file: w.ca.clone(),
        cert_file: w.server.0.clone(),
        key_file: w.server.1.clone(),
    }
}

fn node_tls(ca: &Path, w: &Written, index: usize) -> edgehub::TlsFiles {
    edgehub::TlsFiles {
        ca_file: ca.to_owned(),
        cert_file: w.nodes[index].0.clone(),
        key_file: w.nodes[index].1.clone(),
    }
}

/// Dials with TLS and the identity headers. Ok holds the close code and reason the cloud
/// ends the link with (or `None` while it stays open); Err is a failed handshake.
async fn dial(
    addr: SocketAddr,
    files: &edgehub::TlsFiles,
    node_id: &str,
) -> Result<Option<(CloseCode, String)>, String> {
    let config = edgemesh::tls::client_config(files).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let mut req = format!("wss://localhost:{}/p/{node_id}/events", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("node_id", HeaderValue::from_str(node_id).unwrap());
    req.headers_mut()
        .insert("project_id", HeaderValue::from_static("p"));
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .map_err(|e| format!("WebSocket: {e}"))?;
    // The cloud decides right after the upgrade: a refusal is a close frame at once.
    match tokio::time::timeout(std::time::Duration::from_millis(500), ws.next()).await {
        Err(_) => Ok(None),
        Ok(Some(Ok(WsMessage::Close(Some(f))))) => Ok(Some((f.code, f.reason.to_string()))),
        Ok(other) => Err(format!("unexpected: {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_admits_the_right_node_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let ours = certs::write_all(
        &dir.path().join("ours"),
        &names,
        &["edge-1".to_owned(), "edge-2".to_owned()],
    )
    .unwrap();
    let theirs =
        certs::write_all(&dir.path().join("theirs"), &names, &["edge-1".to_owned()]).unwrap();

    let mut config = cloud_config("127.0.0.1:0");
    config.modules.cloud_hub.tls = Some(hub_tls(&ours));
    config.modules.cloud_hub.insecure = false;
    let mut cloud = Cloud::start(config, HashMap::new()).await;

    // The right certificate through the real edgecore: changes arrive over wss.
    let mut edge_cfg = edge_config("edge-1", cloud.addr, dir.path());
    edge_cfg.modules.edge_hub.server_name = "localhost".into();
    edge_cfg.modules.edge_hub.tls = Some(node_tls(&ours.ca, &ours, 0));
    edge_cfg.modules.edge_hub.insecure = false;
    let edge = Edge::start(edge_cfg).await;
    cloud.await_link("edge-1", true).await;
    cloud
        .send(change(
            "edge-1",
            operation::INSERT,
            "default",
            "s",
            "1",
            "10.96.0.1",
        ))
        .await;
    cloud.await_all_acked().await;
    assert_eq!(sqlite_rows(&edge.db).len(), 1);

    // edge-2's valid certificate, claiming to be edge-1: refused with the reason.
    let (code, reason) = dial(cloud.addr, &node_tls(&ours.ca, &ours, 1), "edge-1")
        .await
        .expect("handshakes pass: the certificate is valid")
        .expect("then the cloud refuses");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("not issued for node edge-1"), "{reason}");

    // A certificate from another CA: the TLS handshake fails.
    let refused = dial(cloud.addr, &node_tls(&ours.ca, &theirs, 0), "edge-1").await;
    assert!(refused.is_err(), "{refused:?}");

    // An edge that trusts another CA refuses the cloud's certificate.
    let refused = dial(cloud.addr, &node_tls(&theirs.ca, &ours, 0), "edge-1").await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("TLS")),
        "{refused:?}"
    );

    // A certificate as KubeEdge's cloudcore issues them (CN system:node:<name>, no SAN),
    // from the same CA: admitted for its own name, refused for another.
    let ca = certs::Ca::load(
        &std::fs::read_to_string(&ours.ca).unwrap(),
        &std::fs::read_to_string(&ours.ca_key).unwrap(),
    )
    .unwrap();
    let issued = ca.kubeedge_node("edge-2").unwrap();
    let kubeedge = edgehub::TlsFiles {
        ca_file: ours.ca.clone(),
        cert_file: dir.path().join("kubeedge.crt"),
        key_file: dir.path().join("kubeedge.key"),
    };
    std::fs::write(&kubeedge.cert_file, issued.cert_pem).unwrap();
    std::fs::write(&kubeedge.key_file, issued.key_pem).unwrap();
    let (_, reason) = dial(cloud.addr, &kubeedge, "edge-1")
        .await
        .unwrap()
        .unwrap();
    assert!(
        reason.contains("not issued for node edge-1 (CN system:node:edge-2"),
        "{reason}"
    );
    assert_eq!(dial(cloud.addr, &kubeedge, "edge-2").await, Ok(None));

    // An expired certificate from the right CA: the handshake fails.
    let expired = ca.expired_node("edge-1").unwrap();
    let files = edgehub::TlsFiles {
        ca_file: ours.ca.clone(),
        cert_file: dir.path().join("expired.crt"),
        key_file: dir.path().join("expired.key"),
    };
    std::fs::write(&files.cert_file, expired.cert_pem).unwrap();
    std::fs::write(&files.key_file, expired.key_pem).unwrap();
    let refused = dial(cloud.addr, &files, "edge-1").await;
    assert!(refused.is_err(), "{refused:?}");

    // Every refusal is counted by reason: two certificates for another node, one from
    // another CA, one expired; the edge that refused the cloud left a failed handshake.
    let refusals = cloud.hub.refusals().clone();
    eventually("refusals counted", || {
        let r = refusals.clone();
        async move { r.get("certificate") == 4 && r.get("handshake") == 1 }
    })
    .await;

    // edge-1's own link was never disturbed by the impostors: a change still arrives.
    cloud
        .send(change(
            "edge-1",
            operation::INSERT,
            "default",
            "t",
            "2",
            "10.96.0.2",
        ))
        .await;
    cloud.await_all_acked().await;
    assert_eq!(sqlite_rows(&edge.db).len(), 2);
    edge.stop().await;
}
