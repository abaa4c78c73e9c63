//! The opaque relay holds a buffer only while bytes flow: connections that each moved a
//! burst and then went quiet cost about one buffer between them, not one each. Its own test
//! binary, because it reads the whole process's resident memory.

use std::time::Duration;

use edgemesh_module::relay::relay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Pairs relayed, all kept open.
const PAIRS: usize = 200;
/// Bytes each client sends, so that its relay reads fill whole buffers.
const BURST: usize = 256 * 1024;
/// Bytes each server answers.
const ANSWER: usize = 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

// One thread, so every buffer comes from and returns to the same allocator arena, as on
// one of edgemesh's workers.
#[tokio::test(flavor = "current_thread")]
async fn quiet_relayed_connections_hold_no_buffers() {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let burst = vec![7u8; BURST];
    let mut got = vec![0u8; BURST];
    let mut kept = Vec::new();
    let mut before = 0;
    // Pair 0 only warms up: the runtime, the arena and the first buffer are in the baseline.
    for i in 0..=PAIRS {
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (relay_in, _) = front.accept().await.unwrap();
        let relay_out = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = back.accept().await.unwrap();
        tokio::spawn(relay(relay_in, relay_out, Duration::from_secs(600)));
        client.write_all(&burst).await.unwrap();
        server.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7), "pair {i}: bytes changed");
        server.write_all(&burst[..ANSWER]).await.unwrap();
        client.read_exact(&mut got[..ANSWER]).await.unwrap();
        kept.push((client, server));
        if i == 0 {
            before = rss_kib();
        }
    }
    let grown = rss_kib().saturating_sub(before);
    // A 64 KiB buffer per pair would be 12,800 KiB at least.
    assert!(
        grown < 4096,
        "{PAIRS} quiet relayed pairs grew the resident memory by {grown} KiB"
    );
    // Every pair still relays.
    for (i, (client, server)) in kept.iter_mut().enumerate() {
        client.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        server.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping", "pair {i}");
    }
}
