//! cloudcore dies and comes back: a real edgecore process redials, receives what changed
//! meanwhile, and ends with the same state however often things were resent.

mod common;

use common::Process;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use proto::ResourceType;
use proto::metaclient::MetaClient;
use proto::operation;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_edgecore(dir: &Path, server: SocketAddr, health: SocketAddr) -> Process {
    let config = format!(
        "health: {{address: \"{health}\"}}\n\
         modules:\n  \
           edgeHub: {{server: \"{server}\", insecure: true, nodeId: edge-p, heartbeatMs: 1000, reconnectInitialMs: 50, reconnectMaxMs: 500}}\n  \
           metaManager: {{dbPath: \"{db}\", socketPath: \"{sock}\"}}\n  \
           edgeMesh: {{enable: false}}\n",
        db = dir.join("edge.db").display(),
        sock = dir.join("mm.sock").display(),
    );
    let path = dir.join("edgecore.yaml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join("edgecore.log")).unwrap();
    Process(
        Command::new(env!("CARGO_BIN_EXE_edgecore"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("edgecore starts"),
    )
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

async fn cluster_ip(client: &mut MetaClient, name: &str) -> Option<String> {
    client
        .get("default", ResourceType::Service, name)
        .await
        .unwrap()
        .map(|v| v["spec"]["clusterIP"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_catches_up_after_cloudcore_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let health = free_port();

    // The first cloudcore runs on a runtime of its own, so it can die all at once: every
    // task dropped, sockets closed without a goodbye, as a killed process would.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = cloud_config(&addr.to_string());
    let mut first = doomed
        .spawn(Cloud::start(config.clone(), HashMap::new()))
        .await
        .unwrap();

    let mut edge = start_edgecore(dir.path(), addr, health);
    first.await_link("edge-p", true).await;
    first
        .send(change(
            "edge-p",
            operation::INSERT,
            "default",
            "a",
            "5",
            "10.96.0.5",
        ))
        .await;
    first
        .send(change(
            "edge-p",
            operation::INSERT,
            "default",
            "c",
            "1",
            "10.96.0.99",
        ))
        .await;
    first.await_all_acked().await;
    let ready = http_get(health, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("[+] cloud link: up"), "{ready}");

    doomed.shutdown_background();
    drop(first);

    // The new cloudcore holds what changed while it was down (a restarted edgecontroller
    // would resend everything): a stale copy of a, a new b, and the deletion of c.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut second = loop {
        // The dead runtime's workers release the port shortly after the shutdown call.
        if std::net::TcpListener::bind(addr).is_ok() {
            break Cloud::start(config.clone(), HashMap::new()).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {addr} never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    second
        .send(change(
            "edge-p",
            operation::UPDATE,
            "default",
            "a",
            "3",
            "10.96.0.3",
        ))
        .await;
    second
        .send(change(
            "edge-p",
            operation::INSERT,
            "default",
            "b",
            "1",
            "10.96.0.7",
        ))
        .await;
    second
        .send(change(
            "edge-p",
            operation::DELETE,
            "default",
            "c",
            "2",
            "10.96.0.99",
        ))
        .await;
    second.await_link("edge-p", true).await;
    second.await_all_acked().await;

    let mut client = MetaClient::connect(dir.path().join("mm.sock"), WAIT)
        .await
        .unwrap();
    assert_eq!(
        cluster_ip(&mut client, "a").await.as_deref(),
        Some("10.96.0.5"),
        "an older version resent never overwrites a newer one"
    );
    assert_eq!(
        cluster_ip(&mut client, "b").await.as_deref(),
        Some("10.96.0.7")
    );
    drop(client);

    // A clean stop of edgecore, then the file itself, read by another SQLite client.
    let pid = edge.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = edge.0.wait().unwrap();
    assert!(status.success(), "edgecore exit: {status}");
    let rows = sqlite_rows(&dir.path().join("edge.db"));
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["default/service/a", "default/service/b"]);
}
