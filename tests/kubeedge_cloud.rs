//! Our edgecore against a KubeEdge-shaped cloud: a WebSocket server that behaves as
//! KubeEdge's viaduct does — it reads `ConnectionUse` before it serves a connection, sends
//! JSON text frames only and knows nothing of our binary frames. The edge must name the
//! connection's use, store what it is sent and ACK it, and never send a binary frame to
//! a peer that did not say it takes them.

// The upgrade callback's error type is tungstenite's, not ours to shrink.
#![allow(clippy::result_large_err)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use proto::{Message, operation};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_names_its_connection_and_speaks_json_to_a_kubeedge_cloud() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(edge_config("edge-1", addr, dir.path())).await;

    let (tcp, _) = listener.accept().await.unwrap();
    let (headers_tx, headers_rx) = oneshot::channel();
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
        let _ = headers_tx.send(req.headers().clone());
        // No `edgemesh-frames` header in the answer: KubeEdge's server sends none.
        Ok(resp)
    })
    .await
    .unwrap();
    let headers = headers_rx.await.unwrap();
    // kubeedge/kubeedge pkg/viaduct/pkg/client/ws.go:44 adds it, and
    // pkg/viaduct/pkg/server/ws.go:85 reads it (`api.UseType(req.Header.Get("ConnectionUse"))`)
    // to decide how to serve the connection; "msg" is UseTypeMessage (pkg/viaduct/pkg/api/type.go:14).
    assert_eq!(headers["ConnectionUse"], "msg");
    assert_eq!(headers["node_id"], "edge-1");
    assert!(headers.contains_key("project_id"));

    // A change as KubeEdge's cloud sends it: JSON text; the edge stores it and ACKs it.
    let insert = change(
        "edge-1",
        operation::INSERT,
        "default",
        "web",
        "7",
        "10.96.0.7",
    );
    let insert = Message {
        route: proto::Route {
            // What arrives on the wire has the node prefix stripped, as cloudhub strips it.
            resource: "default/service/web".into(),
            ..insert.route
        },
        ..insert
    };
    ws.send(WsMessage::Text(insert.to_json().unwrap().into()))
        .await
        .unwrap();
    let mut acked = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !acked {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("an ACK within 10 s")
            .unwrap()
            .unwrap();
        match frame {
            WsMessage::Text(text) => {
                let msg = Message::from_json(text.as_bytes()).unwrap();
                acked = msg.parent_id() == Some(&insert.header.id);
            }
            WsMessage::Binary(_) => panic!("a binary frame to a peer that takes none"),
            _ => {}
        }
    }
    assert!(
        sqlite_rows(&edge.db)
            .iter()
            .any(|(k, _)| k == "default/service/web")
    );

    // Types this project does not use are stored and ACKed too, as KubeEdge's metamanager
    // does: an `error` reply is no ACK to KubeEdge's cloud, which would resend forever.
    let configmap = Message::new(
        proto::Route::new(
            "edgecontroller",
            proto::group::RESOURCE,
            operation::INSERT,
            "default/configmap/settings",
        ),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default", "resourceVersion": "9"},
            "data": {"k": "v"}}),
    )
    .with_resource_version("9");
    ws.send(WsMessage::Text(configmap.to_json().unwrap().into()))
        .await
        .unwrap();
    let reply = loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a reply within 10 s")
            .unwrap()
            .unwrap();
        if let WsMessage::Text(text) = frame {
            let msg = Message::from_json(text.as_bytes()).unwrap();
            if msg.parent_id() == Some(&configmap.header.id) {
                break msg;
            }
        }
    };
    assert_ne!(reply.operation(), operation::ERROR, "{reply:?}");
    let rows = sqlite_rows(&edge.db);
    let stored = rows
        .iter()
        .find(|(k, _)| k == "default/configmap/settings")
        .expect("stored");
    assert_eq!(stored.1["data"]["k"], "v");
    edge.stop().await;
}
