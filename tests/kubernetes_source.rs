//! edgecontroller's Kubernetes source through kube-rs, against a test double of the API
//! server (`common::kube_double`: a local HTTP server speaking list/watch; no real API
//! server can be installed here), end to end into an edgecore's SQLite.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::kube_double::{KubeDouble, Res};
use common::*;
use edgecontroller::SourceKind;
use edgemesh::cloudcore::CloudCoreConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn slice(name: &str, service: &str, endpoints: &[(&str, &str)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})
}

fn node(name: &str, edge: bool) -> Value {
    let labels = if edge {
        json!({"node-role.kubernetes.io/edge": ""})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
}

fn kube_cloud(kubeconfig: &Path) -> CloudCoreConfig {
    let mut config = cloud_config("127.0.0.1:0");
    let ctl = &mut config.modules.edge_controller;
    ctl.enable = true;
    ctl.source = SourceKind::Kubernetes;
    ctl.kubernetes.kubeconfig = kubeconfig.to_owned();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_reach_the_edge_and_a_forced_relist_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let double = KubeDouble::start(vec![
        (Res::Services, service("web", "10.96.0.10")),
        (Res::Services, service("old", "10.96.0.20")),
        (
            Res::EndpointSlices,
            slice("web-a", "web", &[("10.244.1.5", "edge-1")]),
        ),
        (
            Res::EndpointSlices,
            slice("web-b", "web", &[("10.244.2.5", "edge-2")]),
        ),
        (Res::Pods, pod("web-1", "edge-1")),
        (Res::Pods, pod("web-2", "edge-2")),
        (Res::Nodes, node("edge-1", true)),
        (Res::Nodes, node("cloud-1", false)),
    ])
    .await;
    let kubeconfig = dir.path().join("kubeconfig");
    double.write_kubeconfig(&kubeconfig);
    let cloud = Cloud::start(kube_cloud(&kubeconfig), HashMap::new()).await;
    let edge = Edge::start(edge_config("edge-1", cloud.addr, dir.path())).await;

    // Lists: both Services, web's slices merged into one Endpoints, only edge-1's Pod.
    let rows = rows_when(&edge.db, "the first sync", |r| r.len() == 4).await;
    assert!(rows.contains_key("default/service/old"));
    assert!(rows.contains_key("default/pod/web-1"));
    let subsets = rows["default/endpoints/web"]["subsets"].as_array().unwrap();
    let nodes: Vec<&str> = subsets
        .iter()
        .map(|s| s["addresses"][0]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["edge-1", "edge-2"]);
    // The edge is sent the ledger's numbers, not the API server's: numeric, and growing.
    let version = |rows: &HashMap<String, serde_json::Value>, key: &str| -> u64 {
        rows[key]["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key}: no numeric resourceVersion"))
    };
    let web_before = version(&rows, "default/service/web");
    let endpoints_before = version(&rows, "default/endpoints/web");

    // Watch events.
    double.apply(Res::Services, service("web", "10.96.0.11"));
    double.delete(Res::EndpointSlices, "default", "web-b");
    let rows = rows_when(&edge.db, "the watched changes", |r| {
        r["default/service/web"]["spec"]["clusterIP"] == "10.96.0.11"
            && r["default/endpoints/web"]["subsets"]
                .as_array()
                .map(Vec::len)
                == Some(1)
    })
    .await;
    assert_eq!(rows.len(), 4);
    assert!(version(&rows, "default/service/web") > web_before);
    assert!(version(&rows, "default/endpoints/web") > endpoints_before);

    // Every watch ends; while they are down, old goes and new comes; then history is
    // compacted, so the watchers get 410 Gone and list again.
    let hub = cloud.hub.clone();
    eventually("settled", || {
        let s = hub.stats();
        async move { s.pending == 0 && s.inflight == 0 }
    })
    .await;
    let before = cloud.hub.stats().delivered;
    double.expire(|gap| {
        gap.delete(Res::Services, "default", "old");
        gap.apply(Res::Services, service("new", "10.96.0.30"));
    });
    let rows = rows_when(&edge.db, "the relist", |r| {
        r.contains_key("default/service/new") && !r.contains_key("default/service/old")
    })
    .await;
    assert_eq!(rows.len(), 4);
    eventually("every watch back", || {
        let n = double.watchers();
        async move { n == 4 }
    })
    .await;
    let hub = cloud.hub.clone();
    eventually("settled", || {
        let s = hub.stats();
        async move { s.pending == 0 && s.inflight == 0 }
    })
    .await;
    assert!(double.gone_served() >= 4, "every watcher was told 410 Gone");
    // Four relists; exactly two changes reached the edge: nothing repeated.
    assert_eq!(cloud.hub.stats().delivered - before, 2);

    // A node the cluster does not label as an edge node gets nothing and is refused.
    let mut stranger = raw_node(cloud.addr, Some("cloud-1"), Some("p")).await;
    let query = proto::Message::new(
        proto::Route::new("metaManager", "resource", "query", "default/service/web"),
        Value::Null,
    )
    .with_sync(true);
    stranger
        .send(WsMessage::Text(query.to_json().unwrap().into()))
        .await
        .unwrap();
    let reply = loop {
        let frame = tokio::time::timeout(WAIT, stranger.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let WsMessage::Text(t) = frame {
            break proto::Message::from_json(t.as_bytes()).unwrap();
        }
    };
    assert_eq!(reply.operation(), "error");
    assert!(
        reply.content.as_str().unwrap().contains("not an edge node"),
        "{reply:?}"
    );
    edge.stop().await;
}
