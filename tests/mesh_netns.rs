//! The proxy with real iptables, inside a network namespace the test creates: an edgecore
//! process (metamanager + edgemesh) intercepts a client's connections to ClusterIPs and
//! relays them to real backends — curl to python3's http.server, redis-cli to
//! redis-server (opaque TCP). Needs root, as CI has.

mod common;

use common::Process;

use std::path::Path;
use std::time::Duration;

use std::net::SocketAddr;

use common::backend;
use common::netns::{Netns, is_root};
use common::{WAIT, eventually};
use serde_json::{Value, json};

async fn store(db: &Path, objects: &[(&str, Value)]) {
    common::mesh::store(db, objects).await;
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

/// Starts an edgecore (metamanager + edgemesh, no cloud link) inside `ns` on `db`.
fn start_edgecore(ns: &Netns, dir: &Path, db: &Path) -> Process {
    start_edgecore_with(ns, dir, db, true)
}

fn start_edgecore_with(ns: &Netns, dir: &Path, db: &Path, mesh: bool) -> Process {
    let mesh = if mesh { "" } else { ", enable: false" };
    common::mesh::edgecore_in(ns, dir, db, "", mesh)
}

/// Rules in our chain inside `ns`.
fn rule_count(ns: &Netns) -> usize {
    let out = ns.output(&["iptables", "-t", "nat", "-S", "EDGE-MESH"]);
    stdout(&out).lines().filter(|l| l.starts_with("-A")).count()
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

    let mut edgecore = start_edgecore(&ns, dir.path(), &db);
    let rules = || rule_count(&ns);
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
    // ... and so does a jump to it that something deleted.
    let jump = ["-t", "nat", "-C", "OUTPUT", "-j", "EDGE-MESH"];
    let deleted = ns.output(&["iptables", "-t", "nat", "-D", "OUTPUT", "-j", "EDGE-MESH"]);
    assert!(deleted.status.success());
    eventually("the OUTPUT jump repaired", || {
        let back = ns
            .command("iptables")
            .args(jump)
            .output()
            .is_ok_and(|o| o.status.success());
        async move { back }
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

fn annotated(name: &str, ip: &str, annotations: Value) -> Value {
    let mut svc = service(name, ip, 80);
    svc["metadata"]["annotations"] = annotations;
    svc
}

/// Endpoints with one address per backend (each on its own port), on `node`.
fn spread(name: &str, backends: &[SocketAddr], node: &str) -> Value {
    common::mesh::endpoints_on(name, backends, node)
}

/// Backend names in the order the bodies came back.
fn answered_by(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('b'))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_is_balanced_per_request_with_every_strategy() {
    assert!(
        is_root(),
        "this test needs root for namespaces and iptables (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    // Backends on the host end of the veth: reachable from the namespace by its route.
    let backends = vec![
        backend::spawn(&ns.host_ip, "b1").await,
        backend::spawn(&ns.host_ip, "b2").await,
        backend::spawn(&ns.host_ip, "b3").await,
    ];
    let db = dir.path().join("edge.db");
    let strategy = |s: &str| json!({"edgemesh.io/lb-strategy": s});
    store(
        &db,
        &[
            ("default/service/web", service("web", "10.96.8.10", 80)),
            ("default/endpoints/web", spread("web", &backends, "edge-t")),
            ("default/service/rand", annotated("rand", "10.96.8.11", strategy("Random"))),
            ("default/endpoints/rand", spread("rand", &backends, "edge-t")),
            ("default/service/least", annotated("least", "10.96.8.12", strategy("LeastRequest"))),
            ("default/endpoints/least", spread("least", &backends, "edge-t")),
            (
                "default/service/sticky",
                annotated(
                    "sticky",
                    "10.96.8.13",
                    json!({"edgemesh.io/lb-strategy": "ConsistentHash", "edgemesh.io/hash-key": "x-user"}),
                ),
            ),
            ("default/endpoints/sticky", spread("sticky", &backends, "edge-t")),
            ("default/service/empty", service("empty", "10.96.8.14", 80)),
            ("default/service/far", service("far", "10.96.8.15", 80)),
            ("default/endpoints/far", spread("far", &backends[..1], "edge-far")),
        ],
    )
    .await;
    let _edgecore = start_edgecore(&ns, dir.path(), &db);
    eventually("rules for six service ports", || {
        let n = rule_count(&ns);
        async move { n == 6 }
    })
    .await;
    let curl = |args: &[&str]| {
        let mut full = vec!["curl", "-s", "--max-time", "10"];
        full.extend_from_slice(args);
        stdout(&ns.output(&full))
    };
    // The chain's rules can be in place a moment before the jump to it: wait for an answer.
    let probe = ns.name.clone();
    eventually("the first Service answering", || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &probe,
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://10.96.8.10/probe",
            ])
            .output();
        let ok = out.is_ok_and(|o| !o.stdout.is_empty());
        async move { ok }
    })
    .await;

    // Six requests on one keep-alive connection: round robin over three endpoints.
    let urls: Vec<String> = (0..6).map(|i| format!("http://10.96.8.10/r{i}")).collect();
    let mut args = vec!["-w", " %{num_connects}\n"];
    args.extend(urls.iter().map(String::as_str));
    let out = curl(&args);
    let connects: usize = out
        .lines()
        .filter(|l| l.starts_with(' '))
        .map(|l| l.trim().parse::<usize>().unwrap())
        .sum();
    assert_eq!(connects, 1, "one connection for all six: {out}");
    let mut by = answered_by(&out);
    assert_eq!(by.len(), 6, "{out}");
    by.sort();
    assert_eq!(by, ["b1", "b1", "b2", "b2", "b3", "b3"], "{out}");

    // Random and LeastRequest reach every endpoint over one connection.
    for vip in ["10.96.8.11", "10.96.8.12"] {
        let urls: Vec<String> = (0..30).map(|i| format!("http://{vip}/{i}")).collect();
        let args: Vec<&str> = urls.iter().map(String::as_str).collect();
        let by = answered_by(&curl(&args));
        assert_eq!(by.len(), 30);
        for b in ["b1", "b2", "b3"] {
            assert!(by.iter().any(|x| x == b), "{vip}: {b} never chosen: {by:?}");
        }
    }

    // ConsistentHash on a header: one user, one endpoint; many users, several.
    let alice: Vec<String> = (0..8)
        .flat_map(|_| answered_by(&curl(&["-H", "x-user: alice", "http://10.96.8.13/"])))
        .collect();
    assert_eq!(alice.len(), 8);
    assert!(alice.iter().all(|b| *b == alice[0]), "{alice:?}");
    let users: std::collections::HashSet<String> = (0..16)
        .flat_map(|i| {
            answered_by(&curl(&[
                "-H",
                &format!("x-user: user-{i}"),
                "http://10.96.8.13/",
            ]))
        })
        .collect();
    assert!(users.len() >= 2, "{users:?}");

    // HTTP/2 with prior knowledge (as gRPC speaks it) goes upstream as HTTP/2.
    let h2 = curl(&["--http2-prior-knowledge", "http://10.96.8.10/h2"]);
    assert!(h2.contains("HTTP/2.0 /h2"), "{h2}");

    // No endpoint, and an endpoint on another node: 503 with the reason.
    let out = curl(&["-w", "\n%{http_code}", "http://10.96.8.14/"]);
    assert!(
        out.ends_with("503") && out.contains("no ready endpoint"),
        "{out}"
    );
    let out = curl(&["-w", "\n%{http_code}", "http://10.96.8.15/"]);
    assert!(out.ends_with("503") && out.contains("edge-far"), "{out}");

    // A client that sends half a request and stalls holds up nobody.
    let _stalled = Process(ns.spawn(
        &["python3", "-c", "import socket,time\ns=socket.create_connection(('10.96.8.10',80))\ns.send(b'GET / HTTP/1.1\\r\\nHo')\ntime.sleep(60)"],
        &dir.path().join("stalled.log"),
    ));
    let by = answered_by(&curl(&["http://10.96.8.10/after-stall"]));
    assert_eq!(by.len(), 1);

    // An upgrade (WebSocket handshake) passes through, then bytes flow both ways.
    let script = "import socket\n\
        s=socket.create_connection(('10.96.8.10',80))\n\
        s.sendall(b'GET /ws HTTP/1.1\\r\\nHost: web\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n\\r\\n')\n\
        head=b''\n\
        while b'\\r\\n\\r\\n' not in head: head+=s.recv(1)\n\
        s.sendall(b'ping-through')\n\
        got=b''\n\
        while len(got)<12: got+=s.recv(12-len(got))\n\
        print(head.split(b'\\r\\n')[0].decode(), got.decode())";
    let out = stdout(&ns.output(&["python3", "-c", script]));
    assert!(out.contains("101") && out.contains("ping-through"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_runs_as_its_own_process_and_relays_declared_tcp_ports_as_bytes() {
    assert!(
        is_root(),
        "this test needs root for namespaces and iptables (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    let backend = backend::spawn(&ns.host_ip, "b1").await;
    let mut svc = service("raw", "10.96.9.10", 80);
    svc["spec"]["ports"][0]["appProtocol"] = json!("tcp");
    let db = dir.path().join("edge.db");
    store(
        &db,
        &[
            ("default/service/raw", svc),
            ("default/endpoints/raw", spread("raw", &[backend], "edge-t")),
        ],
    )
    .await;
    // edgecore without its proxy; the proxy beside it, on metamanager's socket.
    let _edgecore = start_edgecore_with(&ns, dir.path(), &db, false);
    let config = dir.path().join("edgemesh.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: edge-t\nedgeMesh: {{socketPath: \"{}\", listen: \"0.0.0.0:40002\"}}\n",
            dir.path().join("mm.sock").display()
        ),
    )
    .unwrap();
    let mut proxy = Process(ns.spawn(
        &[
            env!("CARGO_BIN_EXE_edgemesh"),
            "proxy",
            "--config",
            config.to_str().unwrap(),
        ],
        &dir.path().join("edgemesh.log"),
    ));
    eventually("the rule", || {
        let n = rule_count(&ns);
        async move { n == 1 }
    })
    .await;
    // appProtocol tcp: no detection, the bytes go through as they are (HTTP included).
    let out = stdout(&ns.output(&["curl", "-s", "--max-time", "5", "http://10.96.9.10/raw"]));
    assert_eq!(out, "b1 HTTP/1.1 /raw\n");
    // Its own /metrics counted the intercepted connection.
    let metrics = stdout(&ns.output(&[
        "curl",
        "-s",
        "--max-time",
        "5",
        "http://127.0.0.1:10351/metrics",
    ]));
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"edgemesh_requests_total{service="default/raw",path="tcp"} 1"#),
        "{metrics}"
    );
    let ready = stdout(&ns.output(&[
        "curl",
        "-s",
        "--max-time",
        "5",
        "http://127.0.0.1:10351/readyz",
    ]));
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("[+] edgemesh:") && l.ends_with("services loaded")),
        "{ready}"
    );
    let _ = proxy.0.kill();
    let _ = proxy.0.wait();
}
