//! edgemesh's policies through the real proxy path (reached by the explicit proxy, on
//! loopback): a Service's QPS limit shared by every connection, with 429 + Retry-After for
//! HTTP and a closed connection for TCP; circuit breaking that ejects a dead endpoint,
//! answers 503 at once when all are ejected, and restores an endpoint whose probe
//! succeeds. The breaker's timing is tested on paused time in its unit tests.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backend;
use common::mesh::{
    self, MeshEdge, assert_rate, endpoints, get_via, proxy_client, sample, service, tcp_echo,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qps_limit_is_shared_by_connections_http_gets_429_and_tcp_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let web = backend::spawn("127.0.0.1", "web").await;
    let echo = tcp_echo().await;
    let objects = vec![
        (
            "default/service/web".to_owned(),
            service("web", "10.96.0.10", 80, json!({"edgemesh.io/qps": "20"})),
        ),
        ("default/endpoints/web".to_owned(), endpoints("web", &[web])),
        (
            "default/service/echo".to_owned(),
            service("echo", "10.96.0.11", 7, json!({"edgemesh.io/qps": "20"})),
        ),
        (
            "default/endpoints/echo".to_owned(),
            endpoints("echo", &[echo]),
        ),
    ];
    let edge = MeshEdge::start(mesh::config(dir.path(), None), &objects).await;
    let proxy = edge.proxy();

    // HTTP: two keep-alive connections, each at 100 requests per second (10× the limit
    // together) for 3 seconds.
    let run = Duration::from_secs(3);
    let (per_connection, elapsed) =
        mesh::paced_clients(proxy, "http://web/", "over its limit of 20", run).await;
    let accepted: usize = per_connection.iter().map(|(ok, _)| ok).sum();
    let limited: usize = per_connection.iter().map(|(_, l)| l).sum();
    assert!(
        per_connection.iter().all(|(ok, _)| *ok > 0),
        "{per_connection:?}"
    );
    assert!(limited > accepted * 5, "{per_connection:?}");
    // One limit for both connections (burst: a tenth of a second's worth).
    assert_rate(accepted, 2, 20.0, elapsed);

    // TCP: connections through CONNECT at 200 per second for 3 seconds; over the limit
    // they are closed before a byte is relayed.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut tasks = Vec::new();
    while started.elapsed() < run {
        tick.tick().await;
        tasks.push(tokio::spawn(async move {
            let (mut stream, _) = mesh::tunnel(proxy, "echo:7").await;
            stream.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            matches!(stream.read(&mut byte).await, Ok(1))
        }));
    }
    let elapsed = started.elapsed();
    let mut accepted = 0;
    let total = tasks.len();
    for task in tasks {
        accepted += usize::from(task.await.unwrap());
    }
    assert!(total > 400, "{total} connections offered");
    assert_rate(accepted, 2, 20.0, elapsed);

    let metrics = edge.metrics().await;
    let limited_count = |svc: &str| {
        sample(
            &metrics,
            &format!(r#"edgemesh_errors_total{{service="{svc}",reason="qps_limited"}}"#),
        )
    };
    assert_eq!(limited_count("default/web"), Some(limited as f64));
    assert_eq!(
        limited_count("default/echo"),
        Some((total - accepted) as f64)
    );
    edge.stop().await;
}

/// An address nothing listens on (connections to it are refused).
async fn dead_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_ejects_a_dead_endpoint_fails_fast_and_restores_after_a_probe() {
    let dir = tempfile::tempdir().unwrap();
    let live = backend::spawn("127.0.0.1", "live").await;
    let dead = dead_addr().await;
    let down = dead_addr().await;
    let objects = vec![
        (
            "default/service/flaky".to_owned(),
            service(
                "flaky",
                "10.96.0.20",
                80,
                json!({"edgemesh.io/circuit-breaker": "failures=2,ejection=60s"}),
            ),
        ),
        (
            "default/endpoints/flaky".to_owned(),
            endpoints("flaky", &[live, dead]),
        ),
        (
            "default/service/down".to_owned(),
            service(
                "down",
                "10.96.0.21",
                80,
                json!({"edgemesh.io/circuit-breaker": "failures=1,ejection=200ms"}),
            ),
        ),
        (
            "default/endpoints/down".to_owned(),
            endpoints("down", &[down]),
        ),
    ];
    let edge = MeshEdge::start(mesh::config(dir.path(), None), &objects).await;
    let mut client = proxy_client(edge.proxy()).await;

    // Round robin over a live and a dead endpoint: a request the dead one refuses is sent
    // to the live one instead (nothing of it had left), so every client gets 200; the dead
    // one fails twice, then is ejected and no longer tried.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get_via(&mut client, "http://flaky/").await.0);
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");

    // Every endpoint ejected: 503 at once, without dialling.
    let (status, _, _) = get_via(&mut client, "http://down/").await;
    assert_eq!(status, 502, "the first failure");
    let (status, _, body) = get_via(&mut client, "http://down/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ejected by the circuit breaker"), "{body}");

    // The endpoint comes back: after the ejection one probe reaches it, and it is
    // restored.
    backend::spawn_at(down, "down").await;
    let proxy = edge.proxy();
    common::eventually("the probe restores the endpoint", || async move {
        get_via(&mut proxy_client(proxy).await, "http://down/")
            .await
            .0
            == 200
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get_via(&mut client, "http://down/").await.0, 200);
    }

    let metrics = edge.metrics().await;
    let count = |svc: &str, reason: &str| {
        sample(
            &metrics,
            &format!(r#"edgemesh_errors_total{{service="{svc}",reason="{reason}"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("default/flaky", "retried"), 2.0, "{metrics}");
    assert_eq!(count("default/flaky", "connect_failed"), 0.0, "{metrics}");
    assert!(count("default/down", "breaker_open") >= 1.0, "{metrics}");
    edge.stop().await;
}
