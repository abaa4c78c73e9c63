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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
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

/// Accepts the edge's connection as KubeEdge's viaduct server does (no answer headers).
async fn accept_kubeedge(listener: &TcpListener) -> WebSocketStream<TcpStream> {
    let (tcp, _) = listener.accept().await.unwrap();
    tokio_tungstenite::accept_hdr_async(tcp, |_: &Request, resp: Response| Ok(resp))
        .await
        .unwrap()
}

/// The next text message from the edge that `pick` accepts (others are skipped).
async fn next_from_edge(
    ws: &mut WebSocketStream<TcpStream>,
    what: &str,
    pick: impl Fn(&Message) -> bool,
) -> Message {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{what} within 15 s"))
            .unwrap()
            .unwrap();
        if let WsMessage::Text(text) = frame {
            let msg = Message::from_json(text.as_bytes()).unwrap();
            if pick(&msg) {
                return msg;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_files_watch_applications_and_reads_kubeedge_error_shapes() {
    use base64::Engine;
    use proto::application::Application;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(edge_config("edge-1", addr, dir.path())).await;
    let mut ws = accept_kubeedge(&listener).await;

    // On every link up the edge reports its watch Applications, as a KubeEdge edge's
    // metaServer does (edge/pkg/metamanager/metaserver/agent/agent.go:192-198: source
    // `metaserver`, group `dynamiccontroller`, resource `watchapp/sync`, operation `null`,
    // content a map id → Application).
    let report = next_from_edge(&mut ws, "the watch report", |m| {
        m.route.group == "dynamiccontroller"
    })
    .await;
    assert_eq!(report.route.source, "metaserver");
    assert_eq!(report.resource(), "watchapp/sync");
    assert_eq!(report.operation(), "null");
    let raw: BTreeMap<String, Value> = report.content.decode().unwrap();
    let mut keys = Vec::new();
    for (id, app) in &raw {
        // Go field names, `[]byte` as base64 (pkg/metaserver/application.go:38-66); the
        // cloud's listener json-decodes Option into ListOptions (application.go:384-391).
        assert_eq!(&app["ID"], id);
        assert_eq!(app["Verb"], "watch");
        assert_eq!(app["Nodename"], "edge-1");
        let option = base64::engine::general_purpose::STANDARD
            .decode(app["Option"].as_str().unwrap())
            .unwrap();
        let _: Value = serde_json::from_slice(&option).expect("Option is JSON");
        let app: Application = serde_json::from_value(app.clone()).unwrap();
        assert_eq!(&app.identifier(), id, "the id KubeEdge would compute");
        keys.push(app.key);
    }
    keys.sort();
    assert_eq!(
        keys,
        [
            "/core/v1/endpoints/null/null",
            "/core/v1/services/null/null"
        ]
    );

    // The cloud's answer: the map of failed watches (application.go:278-301), here the
    // Endpoints watch refused with an API status. The edge takes it as the answer (it
    // neither stores it nor answers it).
    let endpoints_id = raw
        .iter()
        .find(|(_, a)| a["Key"] == "/core/v1/endpoints/null/null")
        .map(|(id, _)| id.clone())
        .unwrap();
    let mut refused = raw[&endpoints_id].clone();
    refused["Status"] = json!("Rejected");
    refused["Error"] = json!({"ErrStatus": {"kind": "Status", "apiVersion": "v1",
        "status": "Failure", "message": "endpoints is forbidden", "reason": "Forbidden",
        "code": 403}});
    let mut answer = Message::reply(&report, json!({ endpoints_id: refused }));
    answer.route = proto::Route::new(
        "dynamiccontroller",
        "resource",
        "applicationResponse",
        "watchapp/sync",
    );
    ws.send(WsMessage::Text(answer.to_json().unwrap().into()))
        .await
        .unwrap();

    // What an approved watch then brings (application/listener.go:89-92): objects from
    // `dynamiccontroller` in group `resource`, stored and ACKed like any other.
    let insert = Message::new(
        proto::Route::new(
            "dynamiccontroller",
            proto::group::RESOURCE,
            operation::INSERT,
            "default/service/web",
        ),
        proto::Content::from(common::service("default", "web", "12", "10.96.0.12")),
    )
    .with_resource_version("12");
    ws.send(WsMessage::Text(insert.to_json().unwrap().into()))
        .await
        .unwrap();
    let ack = next_from_edge(&mut ws, "the ACK", |m| {
        m.parent_id() == Some(&insert.header.id) || m.parent_id() == Some(&answer.header.id)
    })
    .await;
    assert_eq!(ack.parent_id(), Some(&insert.header.id), "{ack:?}");
    assert_eq!(ack.operation(), operation::RESPONSE);

    // A remote query answered in KubeEdge's ObjectResp envelope with an error
    // (cloud/pkg/edgecontroller/controller/upstream.go:992-994): the local client gets
    // "absent", and nothing is stored under that name.
    let socket = edge.socket.clone();
    let asking = tokio::spawn(async move {
        let mut client = proto::metaclient::MetaClient::connect(&socket, Duration::from_secs(5))
            .await
            .unwrap();
        client
            .get("default", proto::ResourceType::Service, "missing")
            .await
    });
    let query = next_from_edge(&mut ws, "the remote query", |m| {
        m.operation() == operation::QUERY
    })
    .await;
    assert_eq!(query.resource(), "default/service/missing");
    let mut refusal = Message::reply(
        &query,
        json!({"Object": null, "Err": {"ErrStatus": {"status": "Failure",
            "message": "services \"missing\" not found", "reason": "NotFound", "code": 404}}}),
    );
    refusal.route.source = "edgecontroller".into();
    ws.send(WsMessage::Text(refusal.to_json().unwrap().into()))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), asking)
        .await
        .expect("the local query answered within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(got, None);
    assert!(
        !sqlite_rows(&edge.db)
            .iter()
            .any(|(k, _)| k == "default/service/missing"),
        "an error envelope is never stored as an object"
    );
    edge.stop().await;
}
