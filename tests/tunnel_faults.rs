//! Streams under faults: edge-a's cloud link cut (a relay that drops every connection at
//! once) and edge-b killed, each with streams open. Every client sees its stream end (EOF
//! or an error, never a hang), new streams work once the link is back, and the processes
//! that live on return to their file descriptors and close to their memory of before.

mod common;

use common::{fds, rss_kib};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cutter::Cutter;
use common::mesh::{tcp_echo, tunnel};
use common::three::{Proc, cloud_yaml, edge_yaml, endpoints, service, write_manifests};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLOUDCORE: &str = env!("CARGO_BIN_EXE_cloudcore");
const EDGECORE: &str = env!("CARGO_BIN_EXE_edgecore");

/// `n` streams to echo:7 through `proxy`, each proven open by one byte echoed.
async fn open_streams(proxy: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut s, head) = tunnel(proxy, "echo:7").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s.write_all(b"?").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        streams.push(s);
    }
    streams
}

/// Every stream ends for its client: EOF or an error, within 10 s each.
async fn all_end(streams: Vec<TcpStream>) {
    for mut s in streams {
        let mut buf = [0u8; 16];
        let ended = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a stream hung after its link or node went");
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    }
}

/// Waits until echo:7 answers through `proxy` (the link is back).
async fn until_echo(proxy: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (mut s, head) = tunnel(proxy, "echo:7").await;
        if head.starts_with("HTTP/1.1 200") && s.write_all(b"!").await.is_ok() {
            let mut one = [0u8; 1];
            if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut one)).await
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "echo never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_links_and_killed_nodes_end_every_stream_and_leak_nothing() {
    let echo = tcp_echo().await;
    let mut svc = service("echo", "10.96.30.1", 7, json!({}));
    svc["spec"]["ports"][0]["appProtocol"] = json!("tcp");
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    write_manifests(
        &manifests,
        &[svc, endpoints("echo", &[(echo, Some("edge-b"))])],
    );
    let cloud_cfg = dir.path().join("cloud.yaml");
    std::fs::write(&cloud_cfg, cloud_yaml("127.0.0.1:0", &manifests, "")).unwrap();
    let cloud = Proc::start(CLOUDCORE, &cloud_cfg, dir.path().join("cloud.log"));
    let hub = cloud.logged_addr("cloudhub listening on ").await;
    let cutter = Cutter::start(hub).await;
    let start_edge = |node: &str, server: SocketAddr| {
        let cfg = dir.path().join(format!("{node}.yaml"));
        std::fs::write(&cfg, edge_yaml(node, &server.to_string(), dir.path(), "")).unwrap();
        Proc::start(EDGECORE, &cfg, dir.path().join(format!("{node}.log")))
    };
    let a = start_edge("edge-a", cutter.addr);
    let b = start_edge("edge-b", hub);
    let proxy = a.logged_addr("SOCKS5) on ").await;
    until_echo(proxy).await;

    let (cloud_pid, a_pid) = (cloud.process.0.id(), a.process.0.id());
    // Warm: buffers and pools as they are after some use.
    all_end_cleanly(open_streams(proxy, 20).await).await;
    let base = [
        (fds(cloud_pid), rss_kib(cloud_pid)),
        (fds(a_pid), rss_kib(a_pid)),
    ];

    // Edge-a's link cut with 50 streams open: every one ends; the link comes back.
    let open = open_streams(proxy, 50).await;
    cutter.cut();
    all_end(open).await;
    until_echo(proxy).await;

    // Edge-b killed with 50 streams open: every one ends.
    let open = open_streams(proxy, 50).await;
    drop(b);
    all_end(open).await;

    // Back to the baseline: file descriptors (the killed node's link is gone from the
    // cloud), and memory within a few MiB.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = [
            (fds(cloud_pid), rss_kib(cloud_pid)),
            (fds(a_pid), rss_kib(a_pid)),
        ];
        let settled = now.iter().zip(&base).all(|((f, _), (bf, _))| f <= bf);
        if settled {
            eprintln!("fds and RSS KiB (cloudcore, edge-a): before {base:?}, after {now:?}");
            for ((_, rss), (_, brss)) in now.iter().zip(&base) {
                assert!(
                    *rss <= brss + 16 * 1024,
                    "RSS {brss} KiB before, {rss} KiB after"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "file descriptors not back to the baseline: before {base:?}, now {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Closes streams from the client side and waits for each to be closed back.
async fn all_end_cleanly(streams: Vec<TcpStream>) {
    for mut s in streams {
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("the stream closed back")
            .unwrap();
    }
}
