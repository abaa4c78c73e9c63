//! A KubeEdge-shaped edge against our cloudcore: it names its connection as KubeEdge's
//! viaduct client does, sends no resync report, ACKs what it is sent, and asks through its
//! metaServer's Applications. Every request gets its answer at once, in the shapes a
//! KubeEdge edge decodes; nothing waits out KubeEdge's 10 s timeout.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use proto::api_status::error_in;
use proto::application::{AppKey, Application, Status, Verb};
use proto::{Message, Route, group, operation};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Ws = WebSocketStream<TcpStream>;

/// Connects as a KubeEdge v1.15 edgecore's viaduct client: `ConnectionUse: msg`
/// (pkg/viaduct/pkg/client/ws.go:44), `node_id` and `project_id`.
async fn kubeedge_edge(addr: SocketAddr, node: &str) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/e632aba927ea4ac2b575ec1603d56f10/{node}/events")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("ConnectionUse", HeaderValue::from_static("msg"));
    h.insert("node_id", HeaderValue::from_str(node).unwrap());
    h.insert(
        "project_id",
        HeaderValue::from_static("e632aba927ea4ac2b575ec1603d56f10"),
    );
    tokio_tungstenite::client_async(req, tcp).await.unwrap().0
}

/// Reads messages, ACKing every object change as a KubeEdge edge's metamanager does, until
/// one `pick` takes; fails after 10 s.
async fn until(ws: &mut Ws, what: &str, pick: impl Fn(&Message) -> bool) -> Message {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{what} within 10 s"))
            .unwrap()
            .unwrap();
        let WsMessage::Text(text) = frame else {
            panic!("a binary frame to a KubeEdge edge, which never asked for them");
        };
        let msg = Message::from_json(text.as_bytes()).unwrap();
        if msg.parent_id().is_none()
            && matches!(
                msg.operation(),
                operation::INSERT | operation::UPDATE | operation::DELETE
            )
        {
            let ack = Message::reply(&msg, "OK").to_json().unwrap();
            ws.send(WsMessage::Text(ack.into())).await.unwrap();
        }
        if pick(&msg) {
            return msg;
        }
    }
}

async fn send(ws: &mut Ws, msg: &Message) {
    ws.send(WsMessage::Text(msg.to_json().unwrap().into()))
        .await
        .unwrap();
}

/// Sends an Application as a KubeEdge metaServer does (agent.go:127-129) and returns the
/// cloud's answer, checking where it travels (application.go:243-250).
async fn apply(ws: &mut Ws, app: &Application) -> Application {
    let msg = Message::new(
        Route::new("metaserver", "dynamiccontroller", "null", "null"),
        json!(app),
    );
    send(ws, &msg).await;
    let reply = until(ws, "the Application's answer", |m| {
        m.parent_id() == Some(&msg.header.id)
    })
    .await;
    assert_eq!(
        reply.route.group,
        group::RESOURCE,
        "edgehub routes by group"
    );
    assert_eq!(reply.operation(), "applicationResponse");
    assert_eq!(reply.resource(), "ignore/Application/ignore");
    reply.content.decode().unwrap()
}

fn body(app: &Application) -> Value {
    serde_json::from_slice(&app.resp_body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeedge_edge_is_answered_at_once_in_the_shapes_it_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let service = |name: &str, ip: &str, tier: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, \
             labels: {{tier: {tier}}}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
        )
    };
    std::fs::write(
        manifests.join("svc.yaml"),
        format!(
            "{}---\n{}",
            service("web", "10.96.0.10", "front"),
            service("db", "10.96.0.11", "back")
        ),
    )
    .unwrap();
    let mut config = controller_cloud(&manifests);
    config.modules.edge_controller.resync_wait_ms = 300;
    let cloud = Cloud::start(config, HashMap::new()).await;
    let mut ws = kubeedge_edge(cloud.addr, "edge-1").await;

    // No resync report: after the wait, the node is sent what it should hold.
    let first = until(&mut ws, "the Services", |m| {
        m.operation() == operation::INSERT && m.resource() == "default/service/web"
    })
    .await;
    assert_eq!(first.route.group, group::RESOURCE);

    // The reconnect report of watch Applications (agent.go:192-198): the answer is the map
    // of failed ones only (application.go:278-301) — Services approved, Secrets not.
    let services = Application::new(Verb::Watch, &AppKey::core("services"), "edge-1", &json!({}));
    let secrets = Application::new(Verb::Watch, &AppKey::core("secrets"), "edge-1", &json!({}));
    let report: BTreeMap<String, Application> = [
        (services.id.clone(), services.clone()),
        (secrets.id.clone(), secrets.clone()),
    ]
    .into();
    let msg = Message::new(
        Route::new("metaserver", "dynamiccontroller", "null", "watchapp/sync"),
        json!(report),
    );
    send(&mut ws, &msg).await;
    let reply = until(&mut ws, "the watch report's answer", |m| {
        m.parent_id() == Some(&msg.header.id)
    })
    .await;
    assert_eq!(reply.resource(), "watchapp/sync");
    let failed: BTreeMap<String, Application> = reply.content.decode().unwrap();
    assert_eq!(failed.keys().collect::<Vec<_>>(), vec![&secrets.id]);
    assert_eq!(failed[&secrets.id].status, Status::Rejected);
    assert_eq!(failed[&secrets.id].error.err_status.code, 404);

    // A list with kube-proxy's label selector and one of its own: approved, the list in
    // RespBody as an API server would give it (storage.go:185-198 decodes it so).
    let mut list = Application::new(
        Verb::List,
        &AppKey::core("services"),
        "edge-1",
        &json!({"labelSelector": "!service.kubernetes.io/headless,tier=front"}),
    );
    let answer = apply(&mut ws, &list).await;
    assert_eq!(answer.status, Status::Approved, "{answer:?}");
    let got = body(&answer);
    assert_eq!(got["kind"], "ServiceList");
    let names: Vec<_> = got["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("web")]);

    // A get of something absent: rejected with NotFound, which the edge answers its
    // client with after looking in its own store (storage.go:99-135).
    let missing = Application::new(
        Verb::Get,
        &AppKey {
            namespace: Some("default".into()),
            name: Some("nope".into()),
            ..AppKey::core("services")
        },
        "edge-1",
        &json!({}),
    );
    let answer = apply(&mut ws, &missing).await;
    assert_eq!(answer.status, Status::Rejected);
    assert_eq!(answer.error.err_status.reason, "NotFound");

    // Applying for another node is forbidden (application.go:66-71 checks the same).
    list.nodename = "edge-2".into();
    list.id = list.identifier();
    let answer = apply(&mut ws, &list).await;
    assert_eq!(answer.error.err_status.code, 403, "{answer:?}");

    // An event needs no answer (edge/pkg/metamanager/client/event.go sends without
    // waiting); a lease update gets KubeEdge's ObjectResp refusal at once.
    let event = Message::new(
        Route::new(
            "edged",
            group::RESOURCE,
            operation::INSERT,
            "default/event/e1",
        ),
        json!({"reason": "Started"}),
    );
    send(&mut ws, &event).await;
    let lease = Message::new(
        Route::new(
            "edged",
            group::RESOURCE,
            operation::UPDATE,
            "kube-node-lease/lease/edge-1",
        ),
        json!({"metadata": {"name": "edge-1"}}),
    );
    send(&mut ws, &lease).await;
    let reply = until(&mut ws, "the lease's answer", |m| m.parent_id().is_some()).await;
    assert_eq!(
        reply.parent_id(),
        Some(&lease.header.id),
        "the event was answered: {reply:?}"
    );
    assert_eq!(reply.operation(), operation::RESPONSE);
    let content: Value = reply.content.decode().unwrap();
    assert_eq!(content["Object"], Value::Null);
    assert!(error_in(&content).unwrap().contains("lease"), "{content}");
    cloud.stop().await;
}
