//! The tunnel with three real processes on loopback: a cloudcore and edgecores edge-a and
//! edge-b, Services from a manifest folder, real HTTP and TCP backends. Edge-a reaches a
//! Service on edge-b and one in the cloud through its explicit proxy; a cloud client
//! reaches a Service on edge-a through cloudcore's proxy; a Service with endpoints on both
//! edges answers every request; a killed edge-b turns into prompt 503s.

mod common;

use common::rss_kib;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::backend;
use common::mesh::{run, tcp_echo, tunnel};
use common::three::{Proc, cloud_yaml, edge_yaml, endpoints, service, write_manifests};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const CLOUDCORE: &str = env!("CARGO_BIN_EXE_cloudcore");
const EDGECORE: &str = env!("CARGO_BIN_EXE_edgecore");

async fn curl(proxy: SocketAddr, url: &str) -> (String, String) {
    let proxy = format!("http://{proxy}");
    let out = run(
        "curl",
        &[
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            "-x",
            &proxy,
            url,
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_owned(), code.to_owned())
}

/// Waits until `url` through `proxy` answers 200 with `expect` in the body.
async fn until_answers(proxy: SocketAddr, url: &str, expect: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (body, code) = curl(proxy, url).await;
        if code == "200" && body.contains(expect) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} via {proxy}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    cloud: Proc,
    a: Proc,
    b: Proc,
    cloud_proxy: SocketAddr,
    a_proxy: SocketAddr,
}

async fn cluster(objects: &[Value]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    write_manifests(&manifests, objects);
    let cloud_cfg = dir.path().join("cloud.yaml");
    std::fs::write(&cloud_cfg, cloud_yaml("127.0.0.1:0", &manifests, "")).unwrap();
    let cloud = Proc::start(CLOUDCORE, &cloud_cfg, dir.path().join("cloud.log"));
    let hub = cloud.logged_addr("cloudhub listening on ").await;
    let cloud_proxy = cloud.logged_addr("SOCKS5) on ").await;
    let mut edges = Vec::new();
    for node in ["edge-a", "edge-b"] {
        let cfg = dir.path().join(format!("{node}.yaml"));
        std::fs::write(&cfg, edge_yaml(node, &hub.to_string(), dir.path(), "")).unwrap();
        edges.push(Proc::start(
            EDGECORE,
            &cfg,
            dir.path().join(format!("{node}.log")),
        ));
    }
    let b = edges.pop().unwrap();
    let a = edges.pop().unwrap();
    let a_proxy = a.logged_addr("SOCKS5) on ").await;
    Cluster {
        _dir: dir,
        cloud,
        a,
        b,
        cloud_proxy,
        a_proxy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_reach_each_other_and_the_cloud_only_through_the_link() {
    let web_a = backend::spawn("127.0.0.1", "web-on-a").await;
    let web_b = backend::spawn("127.0.0.1", "web-on-b").await;
    let web_cloud = backend::spawn("127.0.0.1", "web-in-cloud").await;
    let echo_b = tcp_echo().await;
    let mut echo_svc = service("echo", "10.96.7.5", 7, json!({}));
    echo_svc["spec"]["ports"][0]["appProtocol"] = json!("tcp");
    let objects = vec![
        service("onb", "10.96.7.1", 80, json!({})),
        endpoints("onb", &[(web_b, Some("edge-b"))]),
        service("incloud", "10.96.7.2", 80, json!({})),
        endpoints("incloud", &[(web_cloud, Some("master-1"))]),
        service("mixed", "10.96.7.3", 80, json!({})),
        endpoints("mixed", &[(web_a, Some("edge-a")), (web_b, Some("edge-b"))]),
        service("nonode", "10.96.7.8", 80, json!({})),
        endpoints("nonode", &[(web_cloud, None)]),
        service("ona", "10.96.7.4", 80, json!({})),
        endpoints("ona", &[(web_a, Some("edge-a"))]),
        echo_svc,
        endpoints("echo", &[(echo_b, Some("edge-b"))]),
        service(
            "local-only",
            "10.96.7.6",
            80,
            json!({"internalTrafficPolicy": "Local"}),
        ),
        endpoints("local-only", &[(web_b, Some("edge-b"))]),
        service(
            "prefer-close",
            "10.96.7.7",
            80,
            json!({"trafficDistribution": "PreferClose"}),
        ),
        endpoints(
            "prefer-close",
            &[(web_a, Some("edge-a")), (web_b, Some("edge-b"))],
        ),
    ];
    let c = cluster(&objects).await;

    // Edge-a to a pod on edge-b and to one in the cloud, by name.
    until_answers(c.a_proxy, "http://onb/x", "web-on-b").await;
    until_answers(c.a_proxy, "http://incloud/y", "web-in-cloud").await;
    // An endpoint with no node is the cloud's to dial.
    until_answers(c.a_proxy, "http://nonode/", "web-in-cloud").await;
    // A cloud workload to a pod on edge-a, through cloudcore's proxy.
    until_answers(c.cloud_proxy, "http://ona/z", "web-on-a").await;

    // One local and one remote endpoint: every request answered, both used.
    let (mut on_a, mut on_b) = (0, 0);
    for _ in 0..20 {
        let (body, code) = curl(c.a_proxy, "http://mixed/").await;
        assert_eq!(code, "200", "{body}");
        on_a += body.contains("web-on-a") as u32;
        on_b += body.contains("web-on-b") as u32;
    }
    assert_eq!(on_a + on_b, 20);
    assert!(on_a > 0 && on_b > 0, "both endpoints used: {on_a} {on_b}");

    // Metrics say where each chosen endpoint ran.
    let health = c.a.logged_addr("/metrics on http://").await;
    let (_, metrics) = common::mesh::get(health, "/metrics").await.unwrap();
    for (svc, via) in [("mixed", "local"), ("mixed", "edge"), ("nonode", "cloud")] {
        let series = format!(r#"edgemesh_upstreams_total{{service="default/{svc}",via="{via}"}}"#);
        assert!(
            common::mesh::sample(&metrics, &series).is_some_and(|v| v > 0.0),
            "{series} in {metrics}"
        );
    }

    // Topology: Local never leaves the node; PreferClose stays while a local one serves.
    let (body, code) = curl(c.a_proxy, "http://local-only/").await;
    assert_eq!(code, "503", "{body}");
    assert!(body.contains("internalTrafficPolicy is Local"), "{body}");
    for _ in 0..6 {
        let (body, code) = curl(c.a_proxy, "http://prefer-close/").await;
        assert_eq!(
            (code.as_str(), body.contains("web-on-a")),
            ("200", true),
            "{body}"
        );
    }

    // h2c (prior knowledge, inside CONNECT) and a WebSocket-style upgrade, to edge-b.
    let proxy = format!("http://{}", c.a_proxy);
    let out = run(
        "curl",
        &[
            "-s",
            "--max-time",
            "5",
            "--http2-prior-knowledge",
            "-p",
            "-x",
            &proxy,
            "http://onb/h2",
        ],
    )
    .await;
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("web-on-b") && body.contains("HTTP/2"),
        "{body}"
    );
    let (mut ws, head) = tunnel(c.a_proxy, "onb:80").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: onb\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(ws.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    ws.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    ws.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
    drop(ws);

    // Opaque TCP through CONNECT, both ways, bytes intact.
    let (mut stream, head) = tunnel(c.a_proxy, "echo:7").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = stream.split();
    let (_, echoed) = tokio::join!(
        async {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        }
    );
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "bytes changed on the way");

    // A stream open to edge-b when it dies ends for its client (no hang).
    let (mut live, head) = tunnel(c.a_proxy, "echo:7").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    live.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    live.read_exact(&mut one).await.unwrap();

    // Edge-b killed: its streams are reset, and its Service answers 503 (not a hang:
    // curl gives up after 5 s and would report 000).
    drop(c.b);
    let ended = tokio::time::timeout(Duration::from_secs(10), live.read(&mut one))
        .await
        .expect("the stream to the dead node ended, not hung");
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (body, code) = curl(c.a_proxy, "http://onb/").await;
        if code == "503" {
            assert!(body.contains("edge-b"), "the reason names the node: {body}");
            break;
        }
        assert!(Instant::now() < deadline, "still {code} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The Service with a local endpoint left goes on answering.
    for _ in 0..6 {
        let (body, code) = curl(c.a_proxy, "http://mixed/").await;
        assert_eq!(code, "200", "{body}");
    }
    let _ = (&c.cloud, &c.a);
}

/// A server that sends `len` bytes to every connection, then closes it.
async fn source(len: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![b'z'; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_stalls_only_its_own_stream_and_memory_stays_bounded() {
    const EACH: usize = 2 * 1024 * 1024;
    let src = source(EACH).await;
    let mut svc = service("bulk", "10.96.8.1", 9000, json!({}));
    svc["spec"]["ports"][0]["appProtocol"] = json!("tcp");
    let objects = vec![svc, endpoints("bulk", &[(src, Some("edge-b"))])];
    let c = cluster(&objects).await;
    // Ready when one transfer goes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (mut s, head) = tunnel(c.a_proxy, "bulk:9000").await;
        if head.starts_with("HTTP/1.1 200") {
            let mut got = Vec::new();
            if s.read_to_end(&mut got).await.is_ok() && got.len() == EACH {
                break;
            }
        }
        assert!(Instant::now() < deadline, "bulk never answered: {head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pids = [
        c.cloud.process.0.id(),
        c.a.process.0.id(),
        c.b.process.0.id(),
    ];
    let before: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    // One stream whose reader never reads, held open while 99 others run to the end.
    let (stalled, head) = tunnel(c.a_proxy, "bulk:9000").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut readers = Vec::new();
    for _ in 0..99 {
        let proxy = c.a_proxy;
        readers.push(tokio::spawn(async move {
            let (mut s, head) = tunnel(proxy, "bulk:9000").await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got.len()
        }));
    }
    for r in readers {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(60), r)
                .await
                .expect("a reader was held up")
                .unwrap(),
            EACH
        );
    }
    let after: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    eprintln!("RSS KiB before {before:?} after {after:?} (cloudcore, edge-a, edge-b)");
    // 100 streams × 2 MiB went through; a hop that buffered whole streams would hold
    // 200 MiB. Credit bounds each stream to its window (512 KiB) per hop.
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a.saturating_sub(*b) < 64 * 1024,
            "RSS grew from {b} KiB to {a} KiB"
        );
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_open_is_refused_and_counted() {
    use futures_util::{SinkExt, StreamExt};
    use proto::stream::{Open, ProtocolHint, ResetCode, StreamCodec, StreamFrame, StreamId};
    use tokio_tungstenite::tungstenite::Message as Ws;

    let web_b = backend::spawn("127.0.0.1", "web-on-b").await;
    let secret = backend::spawn("127.0.0.1", "not-a-service").await;
    let objects = vec![
        service("onb", "10.96.9.1", 80, json!({})),
        endpoints("onb", &[(web_b, Some("edge-b"))]),
    ];
    let c = cluster(&objects).await;
    until_answers(c.a_proxy, "http://onb/", "web-on-b").await;
    let hub = c.cloud.logged_addr("cloudhub listening on ").await;
    let mut ws = common::raw_node(hub, Some("intruder"), Some("p")).await;
    let codec = StreamCodec::default();
    let open = |id: u32, endpoint: SocketAddr, source: &str| {
        codec
            .encode_to_bytes(&StreamFrame::Open {
                id: StreamId::new(id).unwrap(),
                open: Box::new(Open {
                    dest_node: "edge-b".into(),
                    source_node: source.into(),
                    namespace: "default".into(),
                    name: "onb".into(),
                    port: 80,
                    endpoint,
                    protocol: ProtocolHint::Tcp,
                    initial_window: 65536,
                }),
            })
            .unwrap()
    };
    // An address that is no endpoint of the Service, claiming to be edge-a.
    ws.send(Ws::Binary(open(1, secret, "edge-a")))
        .await
        .unwrap();
    let reset = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer to the open")
        {
            Some(Ok(Ws::Binary(b))) if proto::stream::is_stream_frame(&b) => {
                break codec.decode_frame(b).unwrap();
            }
            Some(Ok(_)) => continue,
            other => panic!("link ended: {other:?}"),
        }
    };
    match reset {
        StreamFrame::Reset { code, reason, .. } => {
            assert_eq!(code, ResetCode::Forbidden, "{reason}");
            assert!(reason.contains("not an endpoint"), "{reason}");
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    // Edge-b logged and counted it under the hub's stamp, not the claimed source.
    let log = c.b.text();
    assert!(
        log.contains("from node intruder") && log.contains("refused"),
        "{log}"
    );
    let health = c.b.logged_addr("/metrics on http://").await;
    let (_, metrics) = common::mesh::get(health, "/metrics").await.unwrap();
    let series = r#"edgemesh_tunnel_streams_in_total{source="intruder",outcome="forbidden"}"#;
    assert_eq!(
        common::mesh::sample(&metrics, series),
        Some(1.0),
        "{series} in {metrics}"
    );
    let _ = &c.a;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_services_qps_limit_holds_through_the_tunnel() {
    use common::mesh::{assert_rate, paced_clients};
    let web_b = backend::spawn("127.0.0.1", "web-on-b").await;
    let mut svc = service("limited", "10.96.9.5", 80, json!({}));
    svc["metadata"]["annotations"] = json!({"edgemesh.io/qps": "20"});
    let objects = vec![svc, endpoints("limited", &[(web_b, Some("edge-b"))])];
    let c = cluster(&objects).await;
    until_answers(c.a_proxy, "http://limited/", "web-on-b").await;

    // Two keep-alive clients on edge-a, each at 100 requests per second (10× the limit
    // together) for 3 seconds: edge-b's limiter counts every request.
    let proxy = c.a_proxy;
    let (per_client, elapsed) = paced_clients(
        proxy,
        "http://limited/",
        "limit of 20",
        Duration::from_secs(3),
    )
    .await;
    let accepted: usize = per_client.iter().map(|(ok, _)| ok).sum();
    let limited: usize = per_client.iter().map(|(_, l)| l).sum();
    assert!(
        limited > accepted * 5,
        "{accepted} accepted, {limited} limited"
    );
    assert_rate(accepted, 2, 20.0, elapsed);
    let _ = (&c.cloud, &c.b);
}

/// A SOCKS5 UDP association through `proxy`: its control connection (the association
/// lasts while it is open), a client socket, and the relay to send to.
async fn associate(proxy: SocketAddr) -> (TcpStream, UdpSocket, SocketAddr) {
    let mut control = TcpStream::connect(proxy).await.unwrap();
    control.write_all(&[5, 1, 0]).await.unwrap();
    let mut chosen = [0u8; 2];
    control.read_exact(&mut chosen).await.unwrap();
    assert_eq!(chosen, [5, 0], "no authentication");
    // UDP ASSOCIATE, from an address the client does not know yet.
    control
        .write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut reply = [0u8; 10];
    control.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[..4], [5, 0, 0, 1], "granted, with an IPv4 relay");
    let relay = SocketAddr::from((
        [reply[4], reply[5], reply[6], reply[7]],
        u16::from_be_bytes([reply[8], reply[9]]),
    ));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (control, client, relay)
}

/// A datagram for Service `name`'s port `port`, in the SOCKS5 UDP header (FRAG `frag`).
fn to_service(name: &str, port: u16, frag: u8, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, frag, 3, name.len() as u8];
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&port.to_be_bytes());
    d.extend_from_slice(payload);
    d
}

/// Sends `payload` to Service `name` through the association until a reply comes (the
/// first ones may go before the proxy has the Service), and returns it.
async fn exchange(client: &UdpSocket, relay: SocketAddr, name: &str, payload: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 65_536];
    loop {
        client
            .send_to(&to_service(name, 7, 0, payload), relay)
            .await
            .unwrap();
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await
        {
            assert_eq!(from, relay, "replies come from the relay");
            return buf[..n].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no reply through {relay}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_udp_reaches_udp_services_on_other_edges_and_from_the_cloud() {
    use common::mesh::udp_echoes;
    let (on_b, seen_b) = udp_echoes("127.0.0.1", 1).await;
    let (on_a, seen_a) = udp_echoes("127.0.0.1", 1).await;
    let udp = |name: &str, ip: &str| {
        let mut svc = service(name, ip, 7, json!({}));
        svc["spec"]["ports"][0]["protocol"] = json!("UDP");
        svc
    };
    let objects = vec![
        udp("uecho", "10.96.7.20"),
        endpoints("uecho", &[(on_b[0], Some("edge-b"))]),
        udp("uecho-a", "10.96.7.21"),
        endpoints("uecho-a", &[(on_a[0], Some("edge-a"))]),
    ];
    let c = cluster(&objects).await;

    // edge-a → a UDP Service whose only endpoint is on edge-b: every size comes back whole
    // with a header naming the ClusterIP:port, and the endpoint got exactly what was sent.
    let (_control, client, relay) = associate(c.a_proxy).await;
    let header = [0, 0, 0, 1, 10, 96, 7, 20, 0, 7];
    let mut sent = Vec::new();
    for size in [1usize, 1400, 8000] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let reply = exchange(&client, relay, "uecho", &payload).await;
        assert_eq!(reply[..10], header, "the reply names the Service's address");
        assert_eq!(&reply[10..12], b"0:");
        assert_eq!(&reply[12..], &payload[..], "{size} bytes back whole");
        sent.push(payload);
    }
    // A fragment and a datagram for no Service are dropped; the association goes on.
    client
        .send_to(&to_service("uecho", 7, 1, b"fragment"), relay)
        .await
        .unwrap();
    client
        .send_to(&to_service("nosuch", 7, 0, b"lost"), relay)
        .await
        .unwrap();
    let reply = exchange(&client, relay, "uecho", b"after").await;
    assert_eq!(&reply[10..], b"0:after");
    let reached: Vec<Vec<u8>> = seen_b.lock().unwrap().iter().map(|s| s.2.clone()).collect();
    for payload in &sent {
        assert!(
            reached.contains(payload),
            "the endpoint got each datagram whole"
        );
    }
    assert!(
        reached.iter().all(|r| sent.contains(r) || r == b"after"),
        "nothing else reached it (no fragment, no header)"
    );

    // It went through the tunnel: edge-a chose an endpoint on edge-b, and edge-b accepted
    // the stream from edge-a and counts the flow's datagrams.
    let (_, metrics) = common::mesh::get(c.a.logged_addr("/metrics on http://").await, "/metrics")
        .await
        .unwrap();
    let series = r#"edgemesh_upstreams_total{service="default/uecho",via="edge"}"#;
    assert!(
        common::mesh::sample(&metrics, series).is_some_and(|v| v > 0.0),
        "{series} in {metrics}"
    );
    let (_, metrics) = common::mesh::get(c.b.logged_addr("/metrics on http://").await, "/metrics")
        .await
        .unwrap();
    let series = r#"edgemesh_datagrams_total{service="default/uecho",direction="sent"}"#;
    assert!(
        common::mesh::sample(&metrics, series).is_some_and(|v| v >= 4.0),
        "{series} in {metrics}"
    );

    // The cloud → a UDP Service on edge-a, through cloudcore's proxy.
    let (_control, client, relay) = associate(c.cloud_proxy).await;
    let reply = exchange(&client, relay, "uecho-a", b"from the cloud").await;
    assert_eq!(reply[..10], [0, 0, 0, 1, 10, 96, 7, 21, 0, 7]);
    assert_eq!(&reply[10..], b"0:from the cloud");
    assert!(
        seen_a
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.2 == b"from the cloud")
    );
    let _ = &c.b;
}
