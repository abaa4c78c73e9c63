//! edgemesh's front doors besides iptables, each with the real client: the explicit proxy
//! with `curl -x`, `curl -p -x` (CONNECT) and `curl --socks5-hostname`, a raw TCP protocol
//! through CONNECT, the Service DNS server with `dig`, and `/metrics` moving as requests
//! are made. No root needed: everything is on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::backend;
use common::mesh::{self, MeshEdge, endpoints, run, sample, service, tcp_echo};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn curl(args: &[&str]) -> (String, String) {
    let mut all = vec!["-s", "--max-time", "5", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = run("curl", &all).await;
    let text = text(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_owned(), code.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_proxy_reaches_services_by_name_and_metrics_count_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = backend::spawn("127.0.0.1", "web-a").await;
    let b = backend::spawn("127.0.0.1", "web-b").await;
    let echo = tcp_echo().await;
    let objects = vec![
        (
            "default/service/web".to_owned(),
            service("web", "10.96.0.10", 80, json!({})),
        ),
        (
            "default/endpoints/web".to_owned(),
            endpoints("web", &[a, b]),
        ),
        (
            "default/service/echo".to_owned(),
            service("echo", "10.96.0.11", 7, json!({})),
        ),
        (
            "default/endpoints/echo".to_owned(),
            endpoints("echo", &[echo]),
        ),
    ];
    let edge = MeshEdge::start(mesh::config(dir.path(), None), &objects).await;
    let proxy = format!("http://{}", edge.proxy());
    let socks = format!("socks5h://{}", edge.proxy());

    // Every name form, through each way of asking.
    let mut answered = Vec::new();
    for (how, url) in [
        (vec!["-x", proxy.as_str()], "http://web/"),
        (vec!["-x", proxy.as_str()], "http://web.default:80/one"),
        (vec!["-x", proxy.as_str()], "http://web.default.svc/two"),
        (
            vec!["-p", "-x", proxy.as_str()],
            "http://web.default.svc.cluster.local/three",
        ),
        (
            vec!["-x", socks.as_str()],
            "http://web.default.svc.cluster.local/four",
        ),
        (vec!["-x", socks.as_str()], "http://web/five"),
    ] {
        let mut args = how.clone();
        args.push(url);
        let (body, code) = curl(&args).await;
        assert_eq!(code, "200", "{how:?} {url}: {body}");
        let path = url.splitn(4, '/').nth(3).unwrap_or_default();
        assert!(
            body.starts_with("web-") && body.trim_end().ends_with(&format!("/{path}")),
            "{how:?} {url}: {body:?}"
        );
        answered.push(body.split(' ').next().unwrap().to_owned());
    }
    assert!(
        answered.iter().any(|n| n == "web-a") && answered.iter().any(|n| n == "web-b"),
        "balanced over both endpoints: {answered:?}"
    );

    // Unknown names and the outside world: refused with the reason, not proxied.
    for url in ["http://nope/", "http://example.com/"] {
        let (body, code) = curl(&["-x", &proxy, url]).await;
        assert_eq!(code, "503", "{url}: {body}");
        assert!(body.contains("no service"), "{body}");
    }
    let out = run(
        "curl",
        &["-s", "--max-time", "5", "-x", &socks, "http://nope/"],
    )
    .await;
    assert!(!out.status.success(), "SOCKS5 to an unknown name fails");
    let (body, code) = curl(&["-p", "-x", &proxy, "http://nope/"]).await;
    assert!(
        code != "200",
        "CONNECT to an unknown name is refused: {body}"
    );

    // A raw TCP protocol through CONNECT.
    let (mut stream, head) = mesh::tunnel(edge.proxy(), "echo:7").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    stream.write_all(b"ping over tcp\n").await.unwrap();
    let mut back = [0u8; 14];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping over tcp\n");
    drop(stream);

    // /metrics is Prometheus text and counted all of it.
    let metrics = edge.metrics().await;
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("series value");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        // The mesh's families, and the other modules' of edgecore (metamanager's).
        assert!(
            (series.starts_with("edgemesh_") || series.starts_with("metamanager_"))
                && (!series.contains('{') || series.ends_with('}')),
            "{line}"
        );
    }
    let web_requests = r#"edgemesh_requests_total{service="default/web",path="http"}"#;
    assert_eq!(sample(&metrics, web_requests), Some(6.0), "{metrics}");
    let unknown = r#"edgemesh_errors_total{service="(unknown)",reason="unknown_service"}"#;
    assert!(sample(&metrics, unknown) >= Some(4.0), "{metrics}");
    let echo_sent = r#"edgemesh_bytes_total{service="default/echo",direction="sent"}"#;
    common::eventually("echo bytes counted once the relay ends", || {
        let edge = &edge;
        async move { sample(&edge.metrics().await, echo_sent) == Some(14.0) }
    })
    .await;
    let count = r#"edgemesh_request_duration_seconds_count{service="default/web"}"#;
    assert_eq!(sample(&metrics, count), Some(6.0));
    // edgecore's health shows edgemesh.
    let (status, live) = mesh::get(edge.health, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{live}");
    assert!(live.contains("[+] edgemesh workers: "), "{live}");
    let (status, ready) = mesh::get(edge.health, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("[+] edgemesh:") && l.ends_with("services loaded")),
        "{ready}"
    );
    // And it moves.
    curl(&["-x", &proxy, "http://web/"]).await;
    assert_eq!(sample(&edge.metrics().await, web_requests), Some(7.0));
    edge.stop().await;
}

/// A DNS server standing in for the upstream: `*.test` A 192.0.2.7 (`big.test`: 40
/// addresses, too many for a 512-byte UDP answer), counting queries by transport.
struct Upstream {
    addr: SocketAddr,
    udp: Arc<AtomicUsize>,
    tcp: Arc<AtomicUsize>,
}

fn upstream_answer(packet: &[u8]) -> Vec<u8> {
    let request = Message::from_vec(packet).unwrap();
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    let query = request.queries[0].clone();
    if query.name.to_ascii() == "big.test." {
        for i in 1..=40 {
            response.add_answer(Record::from_rdata(
                query.name.clone(),
                60,
                RData::A(A::new(198, 51, 100, i)),
            ));
        }
    } else if query.name.to_ascii().ends_with(".test.") && query.query_type == RecordType::A {
        response.add_answer(Record::from_rdata(
            query.name.clone(),
            60,
            RData::A(A::new(192, 0, 2, 7)),
        ));
    } else {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response.add_query(query);
    response.metadata.message_type = MessageType::Response;
    response.to_vec().unwrap()
}

async fn upstream() -> Upstream {
    // UDP and TCP on one port: the port UDP got may be taken for TCP, then another is tried.
    let (udp, tcp, addr) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            break (udp, tcp, addr);
        }
    };
    let (udp_count, tcp_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let count = udp_count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = udp.send_to(&upstream_answer(&buf[..n]), from).await;
        }
    });
    let count = tcp_count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let len = s.read_u16().await.unwrap();
            let mut packet = vec![0u8; usize::from(len)];
            s.read_exact(&mut packet).await.unwrap();
            let answer = upstream_answer(&packet);
            s.write_u16(answer.len() as u16).await.unwrap();
            s.write_all(&answer).await.unwrap();
        }
    });
    Upstream {
        addr,
        udp: udp_count,
        tcp: tcp_count,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_services_and_forwards_other_names_to_dig() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let objects = vec![(
        "default/service/web".to_owned(),
        service("web", "10.96.0.10", 80, json!({})),
    )];
    let edge = MeshEdge::start(mesh::config(dir.path(), Some(upstream.addr)), &objects).await;
    let server = edge.addresses.dns.expect("dns on");
    let at = format!("@{}", server.ip());
    let port = server.port().to_string();
    let dig = |args: Vec<&str>| {
        let mut all = vec![at.as_str(), "-p", port.as_str(), "+time=2", "+tries=1"];
        all.extend(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            text(&run("dig", &args).await)
        }
    };

    for name in ["web.default.svc.cluster.local", "web.default", "web"] {
        assert_eq!(
            dig(vec![name, "A", "+short"]).await,
            "10.96.0.10\n",
            "{name}"
        );
    }
    let aaaa = dig(vec!["web.default.svc.cluster.local", "AAAA"]).await;
    assert!(
        aaaa.contains("status: NOERROR") && aaaa.contains("ANSWER: 0"),
        "{aaaa}"
    );
    let missing = dig(vec!["nope.default.svc.cluster.local", "A"]).await;
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
    assert!(
        dig(vec!["anything.cluster.local", "A"])
            .await
            .contains("status: NXDOMAIN")
    );
    assert_eq!(
        upstream.udp.load(Ordering::SeqCst),
        0,
        "cluster names stay here"
    );

    // Other names go upstream, once: the second answer comes from the cache.
    assert_eq!(dig(vec!["outside.test", "+short"]).await, "192.0.2.7\n");
    assert_eq!(dig(vec!["OUTSIDE.test", "+short"]).await, "192.0.2.7\n");
    assert_eq!(upstream.udp.load(Ordering::SeqCst), 1);

    // TCP: the same answers, and forwarding over TCP.
    assert_eq!(
        dig(vec!["+tcp", "web.default.svc.cluster.local", "+short"]).await,
        "10.96.0.10\n"
    );
    assert_eq!(
        dig(vec!["+tcp", "other.test", "+short"]).await,
        "192.0.2.7\n"
    );
    assert_eq!(upstream.tcp.load(Ordering::SeqCst), 1);
    // An answer too big for a plain (no EDNS) UDP reply is truncated, and dig falls back
    // to TCP on its own and gets all of it.
    let big = run(
        "dig",
        &[
            &at, "-p", &port, "+time=2", "+tries=1", "+noedns", "big.test",
        ],
    )
    .await;
    let all = format!("{}{}", text(&big), String::from_utf8_lossy(&big.stderr));
    assert!(all.contains("Truncated, retrying in TCP mode"), "{all}");
    assert_eq!(all.matches("\t198.51.100.").count(), 40, "{all}");

    // A malformed packet is dropped and counted; the server goes on.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(b"\x01\x02garbage", server).await.unwrap();
    common::eventually("malformed packet counted", || {
        let edge = &edge;
        async move { sample(&edge.metrics().await, "edgemesh_dns_malformed_total") == Some(1.0) }
    })
    .await;
    assert_eq!(dig(vec!["web", "+short"]).await, "10.96.0.10\n");
    let metrics = edge.metrics().await;
    // OUTSIDE.test, and big.test's retry over TCP.
    assert_eq!(
        sample(&metrics, r#"edgemesh_dns_queries_total{answer="cached"}"#),
        Some(2.0),
        "{metrics}"
    );
    edge.stop().await;
}

/// A raw HTTP/1.1 endpoint: `/chunked` answers in chunks with a trailer, anything else
/// echoes the request body with a Content-Length; keep-alive throughout.
async fn raw_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + length {
                        let mut chunk = [0u8; 1024];
                        let n = s.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body: Vec<u8> = buf[end..end + length].to_vec();
                    buf.drain(..end + length);
                    let answer = if head.starts_with("get /chunked") {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec()
                    } else {
                        let mut a =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                                .into_bytes();
                        a.extend_from_slice(&body);
                        a
                    };
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_keep_their_framing_and_idle_connections_are_closed() {
    use http_body_util::{BodyExt, Full};
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_backend().await;
    let objects = vec![
        (
            "default/service/raw".to_owned(),
            service("raw", "10.96.0.30", 80, json!({})),
        ),
        ("default/endpoints/raw".to_owned(), endpoints("raw", &[raw])),
    ];
    let mut config = mesh::config(dir.path(), None);
    config.modules.edge_mesh.idle_timeout_ms = 1_000;
    let edge = MeshEdge::start(config, &objects).await;

    // Through CONNECT the connection takes the interception path (the HTTP/1 forwarder).
    let (stream, head) = mesh::tunnel(edge.proxy(), "raw:80").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let big = "x".repeat(200_000);
    for (method, path, body, expected) in [
        ("POST", "/echo", "hello", "hello"),
        ("GET", "/chunked", "", "Wikipedia"),
        ("POST", "/echo", big.as_str(), big.as_str()),
        ("GET", "/chunked", "", "Wikipedia"),
    ] {
        sender.ready().await.unwrap();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "raw")
            .body(Full::new(bytes::Bytes::from(body.to_owned())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{method} {path}");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), expected.len(), "{method} {path}");
        assert!(got == expected.as_bytes(), "{method} {path}");
    }
    // Quiet for longer than idleTimeoutMs: the proxy closes the connection.
    tokio::time::timeout(std::time::Duration::from_secs(10), conn)
        .await
        .expect("the idle connection is closed")
        .unwrap()
        .unwrap();
    edge.stop().await;
}
