//! Overload: 10,000 idle client connections held open to an edgecore's proxy (as a fleet of
//! keep-alive clients that went quiet would). Its memory per idle connection is measured
//! and bounded, and a request from a new client is still answered while they are held.

mod common;

use common::rss_kib;

use std::time::{Duration, Instant};

use common::backend;
use common::mesh::{endpoints, get_via, proxy_client, service, store};
use common::three::Proc;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use serde_json::json;
use tokio::net::TcpStream;

const IDLE: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_clients_cost_little_and_block_nobody() {
    // This test's own end of every connection needs a descriptor too.
    // (Root may raise the hard limit too; anyone may raise the soft one to it.)
    let want = 65_536;
    let limit = getrlimit(Resource::Nofile);
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(limit.maximum.map_or(want, |m| m.max(want))),
        },
    );
    if raised.is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    let hard = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if hard < IDLE as u64 + 1_000 {
        eprintln!("skipped: the descriptor limit ({hard}) is below what the test needs");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let web = backend::spawn("127.0.0.1", "web").await;
    let db = dir.path().join("edge.db");
    store(
        &db,
        &[
            (
                "default/service/web",
                service("web", "10.96.40.1", 80, json!({})),
            ),
            ("default/endpoints/web", endpoints("web", &[web])),
        ],
    )
    .await;
    let cfg = dir.path().join("edge.yaml");
    std::fs::write(
        &cfg,
        format!(
            "health: {{address: \"127.0.0.1:0\"}}\n\
             modules:\n  edgeHub: {{enable: false, nodeId: edge-1}}\n  \
             metaManager: {{dbPath: \"{}\", socketPath: \"{}\"}}\n  \
             edgeMesh: {{iptables: false, listen: \"127.0.0.1:0\", proxyListen: \"127.0.0.1:0\"}}\n",
            db.display(),
            dir.path().join("edge.sock").display()
        ),
    )
    .unwrap();
    let edge = Proc::start(
        env!("CARGO_BIN_EXE_edgecore"),
        &cfg,
        dir.path().join("edge.log"),
    );
    let proxy = edge.logged_addr("SOCKS5) on ").await;
    let pid = edge.process.0.id();
    let ready = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = get_via(&mut proxy_client(proxy).await, "http://web/").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < ready,
            "never answered: {status} {body}\n{}",
            edge.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let before = rss_kib(pid);
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(proxy).await.unwrap());
    }
    // Every connection accepted (and so holding whatever it holds) before measuring.
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::fds(pid) < IDLE {
        assert!(
            Instant::now() < deadline,
            "the proxy did not accept them all"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, body) = get_via(&mut proxy_client(proxy).await, "http://web/").await;
    assert_eq!(
        status, 200,
        "a new client is served beside 10,000 idle ones: {body}"
    );
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before) as f64 * 1024.0) / IDLE as f64;
    eprintln!(
        "{IDLE} idle clients: RSS {before} KiB -> {after} KiB, {per:.0} bytes per connection"
    );
    // 29.5 KiB before the forwarders' state was boxed out of a waiting client's task;
    // 12.5 KiB measured after.
    assert!(
        per < 24.0 * 1024.0,
        "{per:.0} bytes per idle connection (before {before} KiB, after {after} KiB)"
    );
    drop(idle);
}
