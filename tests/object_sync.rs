//! ObjectSync: cloudcore remembers what each node ACKed, so a KubeEdge-shaped edge (one that
//! never sends a holdings report) still gets exact deletes when it reconnects, whether
//! cloudcore was SIGKILLed and restarted meanwhile or kept running.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use common::three::{Proc, cloud_yaml};
use common::*;
use futures_util::SinkExt;
use proto::{Message, Route, group, operation};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const CLOUDCORE: &str = env!("CARGO_BIN_EXE_cloudcore");
const NODE: &str = "edge-k";

type Ws = WebSocketStream<TcpStream>;

/// A Service with no selector, so no Endpoints are derived: one object per file.
fn service_yaml(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n"
    )
}

/// Writes a file whole, so the poller never reads half of it.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A manifest folder with Services a, b and c.
fn three_services(dir: &Path) -> std::path::PathBuf {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    for (name, ip) in [("a", "10.96.0.1"), ("b", "10.96.0.2"), ("c", "10.96.0.3")] {
        write(
            &manifests.join(format!("{name}.yaml")),
            &service_yaml(name, ip),
        );
    }
    manifests
}

/// A node that reports holding nothing, as our edgehub does on connect.
async fn reporting_node(addr: SocketAddr, name: &str) -> Ws {
    let mut node = raw_node(addr, Some(name), Some("p")).await;
    let report = Message::new(
        Route::new("metaManager", group::RESOURCE, operation::RESYNC, ""),
        serde_json::json!({}),
    );
    node.send(WsMessage::Text(report.to_json().unwrap().into()))
        .await
        .unwrap();
    node
}

/// Takes (and ACKs) `n` objects; returns `operation resource` of each.
async fn take(node: &mut Ws, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let msg = ack_next(node).await;
        seen.push(format!("{} {}", msg.operation(), msg.resource()));
    }
    seen.sort();
    seen
}

/// The KubeEdge-shaped node reconnects (no report): the first thing it is sent must be the
/// delete of `gone`, and nothing else of the resync; a Service added afterwards (`d`) comes
/// next, so no delete of the others hides behind it.
async fn reconnect_and_expect_one_delete(addr: SocketAddr, manifests: &Path, gone: &str) -> Ws {
    let mut node = raw_node(addr, Some(NODE), Some("p")).await;
    let first = ack_next(&mut node).await;
    assert_eq!(
        (first.operation(), first.resource()),
        (
            operation::DELETE,
            format!("default/service/{gone}").as_str()
        ),
        "the one object deleted while the node was away, and nothing before it: \
         the others were ACKed at their current versions"
    );
    write(&manifests.join("d.yaml"), &service_yaml("d", "10.96.0.4"));
    let next = ack_next(&mut node).await;
    assert_eq!(
        (next.operation(), next.resource()),
        (operation::INSERT, "default/service/d"),
        "nothing more of the resync (no delete of the others)"
    );
    node
}

/// The process's record for `node`, read from its SQLite file by another client.
fn record(db: &Path, node: &str) -> BTreeMap<String, String> {
    let script = "import sqlite3,sys,json\n\
        c=sqlite3.connect(sys.argv[1])\n\
        print(json.dumps(c.execute('select path, rv from held where node=?', (sys.argv[2],)).fetchall()))";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .arg(node)
        .output()
        .expect("python3 runs");
    if !out.status.success() {
        return BTreeMap::new();
    }
    let rows: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.into_iter().collect()
}

fn all_acked(record: &BTreeMap<String, String>, names: &[&str]) -> bool {
    record.len() == names.len()
        && names.iter().all(|n| {
            record
                .get(&format!("default/service/{n}"))
                .is_some_and(|rv| !rv.is_empty())
        })
}

fn start_cloud(config: &Path, log: std::path::PathBuf) -> Proc {
    Proc::start(CLOUDCORE, config, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_sends_no_report_gets_exact_deletes_after_a_cloudcore_kill() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = three_services(dir.path());
    let db = dir.path().join("object-sync.db");
    let yaml = cloud_yaml("127.0.0.1:0", &manifests, ", enable: false");
    // A short wait for the report the node never sends.
    let fast = yaml.replace(
        "pollIntervalMs: 100},",
        "pollIntervalMs: 100}, resyncWaitMs: 300,",
    );
    assert_ne!(fast, yaml, "cloud_yaml changed shape");
    assert!(fast.contains(&db.display().to_string()), "{fast}");
    let config = dir.path().join("cloud.yaml");
    std::fs::write(&config, fast).unwrap();

    let cloud = start_cloud(&config, dir.path().join("cloud-1.log"));
    let addr = cloud.logged_addr("cloudhub listening on ").await;
    let mut node = raw_node(addr, Some(NODE), Some("p")).await;
    assert_eq!(
        take(&mut node, 3).await,
        [
            "insert default/service/a",
            "insert default/service/b",
            "insert default/service/c"
        ],
        "with no report and no record, everything"
    );
    eventually("the three ACKs recorded", || {
        let done = all_acked(&record(&db, NODE), &["a", "b", "c"]);
        async move { done }
    })
    .await;
    node.close(None).await.unwrap();
    drop(node);

    // b goes while the node is away, and cloudcore is killed (SIGKILL) and restarted.
    std::fs::remove_file(manifests.join("b.yaml")).unwrap();
    drop(cloud);
    let cloud = start_cloud(&config, dir.path().join("cloud-2.log"));
    let addr = cloud.logged_addr("cloudhub listening on ").await;
    // An edge of ours reports and is brought in line: the source has been read.
    let mut observer = reporting_node(addr, "observer").await;
    assert_eq!(
        take(&mut observer, 2).await,
        ["insert default/service/a", "insert default/service/c"]
    );

    let mut node = reconnect_and_expect_one_delete(addr, &manifests, "b").await;
    assert!(
        cloud
            .text()
            .contains("node edge-k sent no report: resyncing from what it ACKed (3 objects)"),
        "{}",
        cloud.text()
    );
    eventually("b's delete ACKed and recorded", || {
        let done = all_acked(&record(&db, NODE), &["a", "c", "d"]);
        async move { done }
    })
    .await;
    node.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_sends_no_report_gets_exact_deletes_from_a_running_cloudcore() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = three_services(dir.path());
    let mut config = controller_cloud(&manifests);
    config.modules.edge_controller.resync_wait_ms = 300;
    let cloud = Cloud::start(config, HashMap::new()).await;

    let mut node = raw_node(cloud.addr, Some(NODE), Some("p")).await;
    assert_eq!(
        take(&mut node, 3).await,
        [
            "insert default/service/a",
            "insert default/service/b",
            "insert default/service/c"
        ]
    );
    let hub = cloud.hub.clone();
    eventually("the three ACKs recorded", || {
        let done = all_acked(
            &hub.object_sync().held(NODE).unwrap_or_default(),
            &["a", "b", "c"],
        );
        async move { done }
    })
    .await;
    // A node that stays connected shows when the controller has taken the removal.
    let mut observer = reporting_node(cloud.addr, "observer").await;
    take(&mut observer, 3).await;
    node.close(None).await.unwrap();
    drop(node);
    eventually("the node is away", || {
        let connected = hub.stats().connected;
        async move { connected == 1 }
    })
    .await;

    std::fs::remove_file(manifests.join("b.yaml")).unwrap();
    assert_eq!(take(&mut observer, 1).await, ["delete default/service/b"]);

    let _node = reconnect_and_expect_one_delete(cloud.addr, &manifests, "b").await;
    eventually("b's delete ACKed and recorded", || {
        let done = all_acked(
            &hub.object_sync().held(NODE).unwrap_or_default(),
            &["a", "c", "d"],
        );
        async move { done }
    })
    .await;
    cloud.stop().await;
}
