//! edgecontroller end to end: a manifest folder on disk, cloudcore and edgecore assembled as
//! the binaries assemble them, and the edge's SQLite.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use proto::{Message, Route, group, operation};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn service_yaml(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {ip}\n  selector: {{app: {name}}}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n"
    )
}

fn pod_yaml(name: &str, app: &str, node: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}}}\nstatus:\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    )
}

/// Writes a file so the poller sees a change even within one timestamp tick.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Sends a query as a node's metamanager would and returns the cloud's reply to it.
async fn ask(node: &mut WebSocketStream<TcpStream>, resource: &str) -> Message {
    let query = Message::new(
        Route::new("metaManager", group::RESOURCE, operation::QUERY, resource),
        Value::Null,
    )
    .with_sync(true);
    request(node, query).await
}

/// Sends `request` as a node and returns the cloud's reply to it.
async fn request(node: &mut WebSocketStream<TcpStream>, query: Message) -> Message {
    node.send(WsMessage::Text(query.to_json().unwrap().into()))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(WAIT, node.next())
            .await
            .expect("an answer in time")
            .unwrap()
            .unwrap();
        if let WsMessage::Text(t) = frame {
            let msg = Message::from_json(t.as_bytes()).unwrap();
            if msg.parent_id() == Some(&query.header.id) {
                return msg;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_reach_the_edge_and_follow_changes() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests.join("web.yaml"),
        &format!(
            "{}---\n{}---\n{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: ignored}}\n",
            service_yaml("web", "10.96.0.10"),
            pod_yaml("web-1", "web", "edge-1", "10.244.1.5"),
            pod_yaml("web-2", "web", "edge-2", "10.244.2.5"),
        ),
    );
    let cloud = Cloud::start(controller_cloud(&manifests), HashMap::new()).await;
    let edge = Edge::start(edge_config("edge-1", cloud.addr, dir.path())).await;

    let rows = rows_when(&edge.db, "the first sync", |r| r.len() == 3).await;
    assert_eq!(
        rows["default/service/web"]["spec"]["clusterIP"],
        "10.96.0.10"
    );
    assert!(rows.contains_key("default/pod/web-1"), "its own pod");
    assert!(
        !rows.contains_key("default/pod/web-2"),
        "not another node's pod"
    );
    let eps = &rows["default/endpoints/web"];
    let addrs = eps["subsets"][0]["addresses"].as_array().unwrap();
    let nodes: Vec<&str> = addrs
        .iter()
        .map(|a| a["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        ["edge-1", "edge-2"],
        "endpoints keep each address's node"
    );
    assert_eq!(eps["subsets"][0]["ports"][0]["port"], 8080);

    // A change in the folder: time it to the edge's SQLite.
    let changed = Instant::now();
    write(
        &manifests.join("web.yaml"),
        &format!(
            "{}---\n{}",
            service_yaml("web", "10.96.0.11"),
            pod_yaml("web-1", "web", "edge-1", "10.244.1.5"),
        ),
    );
    let rows = rows_when(&edge.db, "the change", |r| {
        r.get("default/service/web")
            .is_some_and(|s| s["spec"]["clusterIP"] == "10.96.0.11")
            && r["default/endpoints/web"]["subsets"][0]["addresses"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
    })
    .await;
    println!("folder change to edge SQLite: {:?}", changed.elapsed());
    assert_eq!(rows.len(), 3);

    // The file goes: everything it defined goes from the edge.
    std::fs::remove_file(manifests.join("web.yaml")).unwrap();
    rows_when(&edge.db, "the deletions", |r| r.is_empty()).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_document_is_skipped_and_the_rest_stays_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests.join("a.yaml"), &service_yaml("a", "10.96.0.1"));
    write(&manifests.join("b.yaml"), &service_yaml("b", "10.96.0.2"));
    let cloud = Cloud::start(controller_cloud(&manifests), HashMap::new()).await;
    let edge = Edge::start(edge_config("edge-1", cloud.addr, dir.path())).await;
    rows_when(&edge.db, "both services", |r| r.len() == 4).await;

    // a.yaml broken; b.yaml changed, with a second document that is not an object.
    write(
        &manifests.join("a.yaml"),
        "kind: Service\nmetadata: {name: a\n  spec: [\n",
    );
    write(
        &manifests.join("b.yaml"),
        &format!("{}---\n- just\n- a list\n", service_yaml("b", "10.96.0.22")),
    );
    let rows = rows_when(&edge.db, "b's change", |r| {
        r.get("default/service/b")
            .is_some_and(|s| s["spec"]["clusterIP"] == "10.96.0.22")
    })
    .await;
    assert_eq!(
        rows["default/service/a"]["spec"]["clusterIP"], "10.96.0.1",
        "a's last good version stays"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_while_services_change_converges_on_return_with_only_the_differences() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    for (name, ip) in [("a", "10.96.0.1"), ("b", "10.96.0.2"), ("c", "10.96.0.3")] {
        write(
            &manifests.join(format!("{name}.yaml")),
            &service_yaml(name, ip),
        );
    }
    let mut cloud_config = controller_cloud(&manifests);
    // Long, so no full push to the observer can come from a missed report mid-test.
    cloud_config.modules.edge_controller.resync_wait_ms = 600_000;
    let cloud = Cloud::start(cloud_config, HashMap::new()).await;
    let config = edge_config("edge-1", cloud.addr, dir.path());
    let edge = Edge::start(config.clone()).await;
    rows_when(&edge.db, "three services", |r| r.len() == 6).await;
    // A second node that stays connected shows when the controller has taken a change.
    let mut observer = raw_node(cloud.addr, Some("observer"), Some("p")).await;
    // It reports holding nothing, as a fresh metamanager would, and takes its resync.
    let report = Message::new(
        Route::new("metaManager", group::RESOURCE, operation::RESYNC, ""),
        serde_json::json!({}),
    );
    observer
        .send(WsMessage::Text(report.to_json().unwrap().into()))
        .await
        .unwrap();
    for _ in 0..6 {
        ack_next(&mut observer).await;
    }
    edge.stop().await;
    let hub = cloud.hub.clone();
    eventually("the node is away", || {
        let connected = hub.stats().connected;
        async move { connected == 1 }
    })
    .await;

    // While it is away: a changes, b goes, d comes; c stays as it was.
    write(&manifests.join("a.yaml"), &service_yaml("a", "10.96.0.11"));
    std::fs::remove_file(manifests.join("b.yaml")).unwrap();
    write(&manifests.join("d.yaml"), &service_yaml("d", "10.96.0.4"));
    // The observer hears d's Endpoints last (files are read in name order, Services
    // before Endpoints), ACKing as it goes.
    let mut deleted = None;
    loop {
        let msg = ack_next(&mut observer).await;
        if msg.operation() == operation::DELETE && msg.resource() == "default/service/b" {
            deleted = Some(msg.content.decode::<Value>().unwrap());
        }
        if msg.resource() == "default/endpoints/d" {
            break;
        }
    }
    // A delete carries the object's last state, as KubeEdge's cloud sends it
    // (cloud/pkg/dynamiccontroller/application/listener.go:89-92), so a KubeEdge edge's
    // metaServer can decode what went.
    let deleted = deleted.expect("b's delete reached the observer");
    assert_eq!(deleted["kind"], "Service");
    assert_eq!(deleted["apiVersion"], "v1");
    assert_eq!(deleted["spec"]["clusterIP"], "10.96.0.2", "{deleted}");
    let before = cloud.hub.stats().delivered;

    let edge = Edge::start(config).await;
    let rows = rows_when(&edge.db, "convergence", |r| {
        r.len() == 6
            && r.get("default/service/a")
                .is_some_and(|s| s["spec"]["clusterIP"] == "10.96.0.11")
            && r.contains_key("default/service/d")
    })
    .await;
    assert!(!rows.contains_key("default/service/b"));
    assert!(!rows.contains_key("default/endpoints/b"));
    assert_eq!(rows["default/service/c"]["spec"]["clusterIP"], "10.96.0.3");
    // Five object messages: a updated (its derived Endpoints, with no pods, did not
    // change), b and its Endpoints deleted, d and its Endpoints inserted; c was current and
    // did not travel. And one answer: to the edge's report of its watch Applications.
    let hub = cloud.hub.clone();
    eventually("the resync delivered", || {
        let stats = hub.stats();
        async move { stats.pending == 0 && stats.inflight == 0 && stats.delivered - before >= 6 }
    })
    .await;
    assert_eq!(cloud.hub.stats().delivered - before, 6);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_answered_or_refused_never_left_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests.join("all.yaml"),
        &format!(
            "{}---\n{}",
            service_yaml("web", "10.96.0.10"),
            pod_yaml("web-2", "web", "edge-2", "10.244.2.5"),
        ),
    );
    let mut config = controller_cloud(&manifests);
    config.health = edgemesh::health::HealthConfig::on("127.0.0.1:0");
    let cloud = Cloud::start(config, HashMap::new()).await;
    let mut node = raw_node(cloud.addr, Some("edge-1"), Some("p")).await;
    // The folder is read within its poll interval; ask until the service is there.
    let deadline = Instant::now() + WAIT;
    let reply = loop {
        let reply = ask(&mut node, "default/service/web").await;
        if reply.operation() == operation::RESPONSE || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reply.operation(), operation::RESPONSE);
    assert_eq!(
        reply.content.decode::<Value>().unwrap()["spec"]["clusterIP"],
        "10.96.0.10"
    );
    assert!(!reply.header.resource_version.is_empty());

    let list = ask(&mut node, "default/servicelist").await;
    assert_eq!(list.content.decode::<Vec<Value>>().unwrap().len(), 1);

    let missing = ask(&mut node, "default/service/nope").await;
    assert_eq!(missing.operation(), operation::ERROR);
    assert!(missing.content.as_str().unwrap().contains("not found"));

    // Another node's Pod, and a Pod that exists nowhere: the same refusal, so a node
    // learns nothing of what runs elsewhere (as Kubernetes' node authorizer answers).
    for pod in ["default/pod/web-2", "default/pod/nowhere"] {
        let refused = ask(&mut node, pod).await;
        assert_eq!(refused.operation(), operation::ERROR);
        let why = refused.content.as_str().unwrap();
        assert!(
            why.starts_with("forbidden: node edge-1 may read only the Pods bound to it"),
            "{why}"
        );
    }
    let pods = ask(&mut node, "default/podlist").await;
    assert_eq!(
        pods.content.decode::<Vec<Value>>().unwrap(),
        Vec::<Value>::new(),
        "a list holds only the node's own Pods"
    );
    let bad = ask(&mut node, "default/secret/token").await;
    assert_eq!(bad.operation(), operation::ERROR);

    // A request this cloudcore does not serve (a KubeEdge edge's node status update) is
    // refused at once with the request as parent, never left to time out, in KubeEdge's
    // ObjectResp envelope (cloud/pkg/edgecontroller/controller/upstream.go:992-994).
    let status = Message::new(
        Route::new(
            "edged",
            group::RESOURCE,
            operation::UPDATE,
            "default/nodestatus/edge-1",
        ),
        serde_json::json!({"status": {}}),
    )
    .with_sync(true);
    let reply = request(&mut node, status).await;
    assert_eq!(reply.operation(), operation::RESPONSE);
    assert_eq!(reply.route.group, group::RESOURCE);
    let body: Value = reply.content.decode().unwrap();
    assert_eq!(body["Object"], Value::Null, "{body}");
    assert_eq!(body["Err"]["ErrStatus"]["code"], 405, "{body}");
    assert!(
        proto::api_status::error_in(&body)
            .unwrap()
            .contains("does not serve nodestatus"),
        "{body}"
    );

    // Each refusal counted on cloudcore's /metrics.
    let (status, text) = mesh::get(cloud.health.unwrap(), "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let count = |reason: &str| {
        mesh::sample(
            &text,
            &format!("edgecontroller_query_refusals_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(count("forbidden"), Some(2.0), "{text}");
    assert_eq!(count("bad_query"), Some(1.0), "{text}");
    assert_eq!(count("not_served"), Some(1.0), "{text}");
}
