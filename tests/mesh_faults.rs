//! Fault attribution and connection reuse in the HTTP/1 forwarder, on loopback (no root:
//! a CONNECT tunnel through the explicit proxy takes the same path as an intercepted
//! connection). A client's fault is answered 4xx and never counts against the endpoint;
//! a kept upstream connection the endpoint closed is replaced, not answered 502; kept
//! connections are shared by clients.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::eventually;
use common::mesh::{self, MeshEdge, endpoints, sample, service};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the test backend saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
    posts: AtomicUsize,
}

/// A raw HTTP/1.1 endpoint answering `200 <n>` to each complete request (Content-Length
/// bodies only: the proxy re-frames what it forwards); with `close_after`, it closes each
/// connection right after its response although it announced keep-alive, as a server
/// whose idle timeout is short does.
async fn backend(close_after: bool) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = shared.clone();
            seen.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                'conn: loop {
                    let end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + length {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + length);
                    let n = seen.requests.fetch_add(1, Ordering::SeqCst) + 1;
                    if head.starts_with("post") {
                        seen.posts.fetch_add(1, Ordering::SeqCst);
                    }
                    let body = n.to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() || close_after {
                        break;
                    }
                }
                drop(s);
                seen.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

/// Reads one response with a Content-Length body: (status, body).
async fn response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed in a response body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (
        status,
        String::from_utf8_lossy(&buf[end..end + length]).into_owned(),
    )
}

async fn start(
    dir: &std::path::Path,
    addr: SocketAddr,
    tune: impl FnOnce(&mut edgemesh::edgecore::EdgeCoreConfig),
) -> MeshEdge {
    let objects = vec![
        (
            "default/service/web".to_owned(),
            service("web", "10.96.0.40", 80, json!({})),
        ),
        (
            "default/endpoints/web".to_owned(),
            endpoints("web", &[addr]),
        ),
    ];
    let mut config = mesh::config(dir, None);
    // One worker, so that every client shares one pool.
    config.modules.edge_mesh.workers = 1;
    config.modules.edge_mesh.dns.listen = String::new();
    tune(&mut config);
    MeshEdge::start(config, &objects).await
}

async fn client(edge: &MeshEdge) -> TcpStream {
    let (stream, head) = mesh::tunnel(edge.proxy(), "web:80").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    stream
}

fn count(metrics: &str, reason: &str) -> f64 {
    sample(
        metrics,
        &format!(r#"edgemesh_errors_total{{service="default/web",reason="{reason}"}}"#),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_are_answered_4xx_and_never_eject_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = backend(false).await;
    let edge = start(dir.path(), addr, |c| {
        c.modules.edge_mesh.head_timeout_ms = 300;
    })
    .await;

    // More malformed bodies and aborted uploads than the breaker's 5 failures.
    for i in 0..8 {
        let mut s = client(&edge).await;
        s.write_all(b"POST /up HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response(&mut s).await.0, 400, "malformed chunk size #{i}");

        let mut s = client(&edge).await;
        s.write_all(b"POST /up HTTP/1.1\r\nhost: web\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        drop(s);
    }
    for (vector, request, status) in [
        (
            "CL with a sign",
            "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: +5\r\n\r\nhello",
            400,
        ),
        (
            "hex chunk size",
            "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (
            "CL and TE",
            "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "gzip, chunked",
            "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nhost: web\r\nx-a: 1\r\n folded\r\n\r\n",
            400,
        ),
    ] {
        let mut s = client(&edge).await;
        s.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(response(&mut s).await.0, status, "{vector}");
    }
    // A head over 16 KiB, and one left unfinished.
    let mut s = client(&edge).await;
    let big = format!(
        "GET / HTTP/1.1\r\nhost: web\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    s.write_all(big.as_bytes()).await.unwrap();
    assert_eq!(response(&mut s).await.0, 431, "head over the limit");
    let mut s = client(&edge).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: we").await.unwrap();
    assert_eq!(response(&mut s).await.0, 408, "stalled head");

    // Nothing of it reached the endpoint as a request, and it still serves.
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
    let mut s = client(&edge).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        response(&mut s).await.0,
        200,
        "the endpoint was not ejected"
    );

    let metrics = edge.metrics().await;
    assert_eq!(count(&metrics, "upstream"), 0.0, "{metrics}");
    assert_eq!(count(&metrics, "connect_failed"), 0.0);
    assert_eq!(count(&metrics, "breaker_open"), 0.0);
    assert!(count(&metrics, "bad_request") >= 13.0, "{metrics}");
    assert_eq!(count(&metrics, "client_timeout"), 1.0);
    let aborted = || {
        let edge = &edge;
        async move { count(&edge.metrics().await, "client_aborted") >= 8.0 }
    };
    eventually("aborted uploads counted as the client's", aborted).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_endpoint_closed_is_replaced_not_answered_502() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = backend(true).await;
    let edge = start(dir.path(), addr, |_| {}).await;
    let mut s = client(&edge).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 200);
    eventually("the endpoint closed its idle side", || {
        let seen = seen.clone();
        async move { seen.closed.load(Ordering::SeqCst) == 1 }
    })
    .await;
    for method in ["POST", "GET", "POST"] {
        s.write_all(
            format!("{method} / HTTP/1.1\r\nhost: web\r\ncontent-length: 5\r\n\r\nhello")
                .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(response(&mut s).await.0, 200, "{method} after the close");
        let closed = seen.accepted.load(Ordering::SeqCst);
        eventually("the endpoint closed again", || {
            let seen = seen.clone();
            async move { seen.closed.load(Ordering::SeqCst) == closed }
        })
        .await;
    }
    assert_eq!(
        seen.posts.load(Ordering::SeqCst),
        2,
        "each POST reached it once"
    );
    let metrics = edge.metrics().await;
    assert_eq!(count(&metrics, "upstream"), 0.0, "{metrics}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_kept_upstream_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = backend(false).await;
    let edge = start(dir.path(), addr, |_| {}).await;
    // Fifty clients one after another, each with two requests.
    for _ in 0..50 {
        let mut s = client(&edge).await;
        for _ in 0..2 {
            s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(response(&mut s).await.0, 200);
        }
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 100);
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "one kept upstream connection served every client"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_served_by_hyper_share_the_same_kept_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = backend(false).await;
    let edge = start(dir.path(), addr, |_| {}).await;
    // HTTP/1.0 goes the hyper way; it uses the same pool as the fast path.
    for i in 0..20 {
        let mut s = client(&edge).await;
        for j in 0..2 {
            s.write_all(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(response(&mut s).await.0, 200, "request {i}.{j}");
        }
        let mut s = client(&edge).await;
        s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response(&mut s).await.0, 200, "fast-path request {i}");
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 60);
    // hyper gives a connection back once its response has ended, which may be a moment
    // after the client has it: another client can get in first and open one more.
    let accepted = seen.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 3,
        "{accepted} upstream connections for 60 requests from 40 clients"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_by_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = backend(false).await;
    let edge = start(dir.path(), addr, |_| {}).await;
    let mut s = client(&edge).await;
    // The client waits for 100 Continue before it sends the body.
    s.write_all(
        b"POST / HTTP/1.1\r\nhost: web\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(response(&mut s).await.0, 100);
    s.write_all(b"hello").await.unwrap();
    assert_eq!(response(&mut s).await.0, 200);
    // A body that came with the head needs no 100.
    s.write_all(
        b"POST / HTTP/1.1\r\nhost: web\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    assert_eq!(response(&mut s).await.0, 200);
    // Any other expectation is refused.
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nexpect: teapot\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 417);
    assert_eq!(seen.posts.load(Ordering::SeqCst), 2);
    edge.stop().await;
}

/// An h2c endpoint answering its name to every request, counting the connections it
/// accepted.
async fn h2_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(name)),
                    ))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                        .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_are_balanced_one_by_one_over_kept_connections() {
    use http_body_util::{BodyExt, Empty};

    let dir = tempfile::tempdir().unwrap();
    let (a, accepted_a) = h2_backend("a").await;
    let (b, accepted_b) = h2_backend("b").await;
    let objects = vec![
        (
            "default/service/web".to_owned(),
            service("web", "10.96.0.40", 80, json!({})),
        ),
        (
            "default/endpoints/web".to_owned(),
            endpoints("web", &[a, b]),
        ),
    ];
    let mut config = mesh::config(dir.path(), None);
    // One worker, so that every client shares its connections.
    config.modules.edge_mesh.workers = 1;
    config.modules.edge_mesh.dns.listen = String::new();
    let edge = MeshEdge::start(config, &objects).await;

    let mut served = std::collections::HashMap::<String, usize>::new();
    // Three clients, each one h2c connection (prior knowledge) through a CONNECT tunnel.
    for client in 0..3 {
        let stream = self::client(&edge).await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
        tokio::spawn(conn);
        for i in 0..10 {
            let req = hyper::Request::get("http://web/")
                .body(Empty::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200, "client {client}, request {i}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            *served
                .entry(String::from_utf8_lossy(&body).into_owned())
                .or_default() += 1;
        }
    }
    // Round robin per request, not per client connection.
    assert_eq!(served.get("a"), Some(&15), "{served:?}");
    assert_eq!(served.get("b"), Some(&15), "{served:?}");
    // One kept connection per endpoint carried all of them.
    assert_eq!(accepted_a.load(Ordering::SeqCst), 1);
    assert_eq!(accepted_b.load(Ordering::SeqCst), 1);
    edge.stop().await;
}
