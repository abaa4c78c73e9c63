//! The proxy with real iptables, inside a network namespace the test creates: an edgecore
//! process (metamanager + edgemesh) intercepts a client's connections to ClusterIPs and
//! relays them to real backends — curl to python3's http.server, redis-cli to
//! redis-server (opaque TCP). Needs root, as CI has.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::netns::{Netns, is_root};
use common::{WAIT, eventually};
use metamanager::Store;
use metamanager::object::changes;
use proto::ResourcePath;
use serde_json::{Value, json};

/// A child process killed when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn store(db: &Path, objects: &[(&str, Value)]) {
    let store = Store::open(db).unwrap();
    for (path, object) in objects {
        let path = ResourcePath::parse_edge(path).unwrap();
        store
            .apply(changes(&path, object, "1", false).unwrap())
            .await
            .unwrap();
    }
    store.close();
}

fn service(name: &str, ip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "main", "port": port, "protocol": "TCP"}]}})
}

fn endpoints(name: &str, ip: &str, port: u16, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [{"addresses": [{"ip": ip, "nodeName": node}],
                     "ports": [{"name": "main", "port": port, "protocol": "TCP"}]}]})
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `addr` (host side) accepts TCP connections.
async fn reachable(addr: &str) {
    let addr = addr.to_owned();
    eventually(&format!("{addr} accepting"), || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_redis_reach_backends_through_iptables_interception() {
    assert!(
        is_root(),
        "this test needs root for namespaces and iptables (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();

    // Backends inside the namespace, on its veth address.
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from the backend\n").unwrap();
    let _http = Process(ns.spawn(
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            &ns.ip,
            "--directory",
            www.to_str().unwrap(),
        ],
        &dir.path().join("http.log"),
    ));
    let _redis = Process(ns.spawn(
        &[
            "redis-server",
            "--port",
            "6390",
            "--bind",
            &ns.ip,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        &dir.path().join("redis.log"),
    ));
    reachable(&format!("{}:8080", ns.ip)).await;
    reachable(&format!("{}:6390", ns.ip)).await;

    // What the cloud would have sent, already in the edge's SQLite.
    let db = dir.path().join("edge.db");
    store(
        &db,
        &[
            ("default/service/web", service("web", "10.96.7.10", 80)),
            (
                "default/endpoints/web",
                endpoints("web", &ns.ip, 8080, "edge-t"),
            ),
            (
                "default/service/cache",
                service("cache", "10.96.7.11", 6379),
            ),
            (
                "default/endpoints/cache",
                endpoints("cache", &ns.ip, 6390, "edge-t"),
            ),
        ],
    )
    .await;

    let config = dir.path().join("edgecore.yaml");
    std::fs::write(
        &config,
        format!(
            "health: {{address: \"127.0.0.1:10350\"}}\n\
             modules:\n  \
               edgeHub: {{enable: false, nodeId: edge-t}}\n  \
               metaManager: {{dbPath: \"{}\", socketPath: \"{}\"}}\n  \
               edgeMesh: {{listen: \"0.0.0.0:40001\", iptablesSyncMs: 200}}\n",
            db.display(),
            dir.path().join("mm.sock").display()
        ),
    )
    .unwrap();
    let mut edgecore = Process(ns.spawn(
        &[
            env!("CARGO_BIN_EXE_edgecore"),
            "--config",
            config.to_str().unwrap(),
        ],
        &dir.path().join("edgecore.log"),
    ));

    let rules = || {
        let out = ns.output(&["iptables", "-t", "nat", "-S", "EDGE-MESH"]);
        stdout(&out).lines().filter(|l| l.starts_with("-A")).count()
    };
    eventually("rules for both service ports", || {
        let n = rules();
        async move { n == 2 }
    })
    .await;

    let curl = || ns.output(&["curl", "-s", "--max-time", "5", "http://10.96.7.10/"]);
    let out = curl();
    assert_eq!(stdout(&out), "hello from the backend\n", "{out:?}");

    let set = ns.output(&[
        "redis-cli",
        "-h",
        "10.96.7.11",
        "-p",
        "6379",
        "SET",
        "greeting",
        "hi",
    ]);
    assert_eq!(stdout(&set).trim(), "OK", "{set:?}");
    // A megabyte through the relay (from stdin: too long for an argument).
    let big = dir.path().join("big");
    std::fs::write(&big, "x".repeat(1 << 20)).unwrap();
    let set = ns
        .command("redis-cli")
        .args(["-h", "10.96.7.11", "-p", "6379", "-x", "SET", "big"])
        .stdin(std::fs::File::open(&big).unwrap())
        .output()
        .unwrap();
    assert_eq!(stdout(&set).trim(), "OK");
    let get = ns.output(&[
        "redis-cli",
        "-h",
        "10.96.7.11",
        "-p",
        "6379",
        "STRLEN",
        "big",
    ]);
    // redis-cli -x keeps the file's bytes as they are.
    assert_eq!(stdout(&get).trim(), (1 << 20).to_string());

    // Something flushes our chain: the rules come back, and so does the service.
    let flushed = ns.output(&["iptables", "-t", "nat", "-F", "EDGE-MESH"]);
    assert!(flushed.status.success());
    eventually("the rules repaired", || {
        let n = rules();
        async move { n == 2 }
    })
    .await;
    assert_eq!(stdout(&curl()), "hello from the backend\n");

    // A clean exit takes the rules away.
    let pid = edgecore.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = edgecore.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "edgecore did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("edgecore.log")).unwrap_or_default();
    assert!(status.success(), "edgecore exit {status}: {log}");
    let gone = ns.output(&["iptables", "-t", "nat", "-S", "EDGE-MESH"]);
    assert!(
        !gone.status.success(),
        "chain still there: {}",
        stdout(&gone)
    );
    let output_chain = stdout(&ns.output(&["iptables", "-t", "nat", "-S", "OUTPUT"]));
    assert!(!output_chain.contains("EDGE-MESH"), "{output_chain}");
}
