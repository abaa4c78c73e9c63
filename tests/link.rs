//! The cloud link end to end: cloudcore and edgecore assembled as the binaries assemble
//! them, on loopback ports, with real WebSockets and the edge's real SQLite.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use proto::metaclient::MetaClient;
use proto::{Message, ResourceType, Route, connection, group, operation};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The next message the cloud sends a raw node (skipping control frames).
async fn next_message(ws: &mut WebSocketStream<TcpStream>) -> Message {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("link open")
            .expect("readable");
        match frame {
            WsMessage::Text(text) => return Message::from_json(text.as_bytes()).unwrap(),
            WsMessage::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Reads until the cloud closes the link; returns the close code and reason.
async fn close_reason<S>(ws: &mut WebSocketStream<S>) -> (CloseCode, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(WsMessage::Close(Some(f)))) => return (f.code, f.reason.to_string()),
            Some(Ok(WsMessage::Close(None))) | None => panic!("closed without a reason"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("link failed without a close frame: {e}"),
        }
    }
}

async fn send(ws: &mut WebSocketStream<TcpStream>, msg: &Message) {
    ws.send(WsMessage::Text(msg.to_json().unwrap().into()))
        .await
        .unwrap();
}

/// A change for `node` reaches its raw client, which ACKs it.
async fn assert_served(cloud: &Cloud, ws: &mut WebSocketStream<TcpStream>, node: &str) {
    let msg = a_service_reaches(cloud, ws, node, "served").await;
    send(ws, &Message::reply(&msg, "OK")).await;
}

/// Service `default/<name>` is created for `node`; returns the message its raw client gets
/// (the node prefix stripped from its resource).
async fn a_service_reaches(
    cloud: &Cloud,
    ws: &mut WebSocketStream<TcpStream>,
    node: &str,
    name: &str,
) -> Message {
    cloud
        .send(change(
            node,
            operation::INSERT,
            "default",
            name,
            "1",
            "10.96.0.1",
        ))
        .await;
    let msg = next_message(ws).await;
    assert_eq!(
        msg.resource(),
        format!("default/service/{name}"),
        "node prefix stripped"
    );
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_the_edge_sqlite_and_is_acked_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(cloud_config("127.0.0.1:0"), HashMap::new()).await;
    let edge = Edge::start(edge_config("edge-1", cloud.addr, dir.path())).await;
    cloud.await_link("edge-1", true).await;

    cloud
        .send(change(
            "edge-1",
            operation::INSERT,
            "default",
            "hello",
            "7",
            "10.96.0.10",
        ))
        .await;
    cloud.await_all_acked().await;
    // The ACK came after the commit: a separate SQLite connection sees the row now.
    let rows = sqlite_rows(&edge.db);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "default/service/hello");
    assert_eq!(rows[0].1["spec"]["clusterIP"], "10.96.0.10");

    // Updates and deletes travel the same way.
    cloud
        .send(change(
            "edge-1",
            operation::UPDATE,
            "default",
            "hello",
            "8",
            "10.96.0.11",
        ))
        .await;
    cloud
        .send(change(
            "edge-1",
            operation::INSERT,
            "default",
            "bye",
            "9",
            "10.96.0.12",
        ))
        .await;
    cloud.await_all_acked().await;
    cloud
        .send(change(
            "edge-1",
            operation::DELETE,
            "default",
            "bye",
            "10",
            "10.96.0.12",
        ))
        .await;
    cloud.await_all_acked().await;
    let rows = sqlite_rows(&edge.db);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1["spec"]["clusterIP"], "10.96.0.11");

    let report = edge.stop().await;
    assert!(
        report.failed.is_empty() && report.abandoned.is_empty(),
        "{report:?}"
    );
    cloud.await_link("edge-1", false).await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_a_node_is_away_arrive_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(cloud_config("127.0.0.1:0"), HashMap::new()).await;
    // Queued before the node ever connects; later versions replace earlier ones.
    for rv in 1..=50 {
        let ip = format!("10.96.1.{rv}");
        cloud
            .send(change(
                "edge-1",
                operation::UPDATE,
                "default",
                "a",
                &rv.to_string(),
                &ip,
            ))
            .await;
    }
    cloud
        .send(change(
            "edge-1",
            operation::INSERT,
            "default",
            "b",
            "3",
            "10.96.2.1",
        ))
        .await;
    let hub = cloud.hub.clone();
    eventually("one queued message per object", || {
        let pending = hub.stats().pending;
        async move { pending == 2 }
    })
    .await;

    let edge = Edge::start(edge_config("edge-1", cloud.addr, dir.path())).await;
    cloud.await_link("edge-1", true).await;
    cloud.await_all_acked().await;
    let rows = sqlite_rows(&edge.db);
    let ips: Vec<&str> = rows
        .iter()
        .map(|(_, v)| v["spec"]["clusterIP"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["10.96.1.50", "10.96.2.1"]);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_objects_are_resent_and_settled_by_the_ack() {
    let mut config = cloud_config("127.0.0.1:0");
    config.modules.cloud_hub.ack_timeout_ms = 50;
    let mut cloud = Cloud::start(config, HashMap::new()).await;
    let mut node = raw_node(cloud.addr, Some("edge-r"), Some("p")).await;
    cloud.await_link("edge-r", true).await;
    let first = a_service_reaches(&cloud, &mut node, "edge-r", "a").await;
    let again = next_message(&mut node).await;
    assert_eq!(again.header.id, first.header.id, "same message resent");
    let mut ack = Message::reply(&first, "OK");
    ack.route.source = "metaManager".into();
    send(&mut node, &ack).await;
    cloud.await_all_acked().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_from_the_edge_is_answered_by_the_cloud_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let known = HashMap::from([(
        "node/edge-q/default/service/remote".to_owned(),
        (
            service("default", "remote", "4", "10.96.4.4"),
            "4".to_owned(),
        ),
    )]);
    let mut cloud = Cloud::start(cloud_config("127.0.0.1:0"), known).await;
    let mut config = edge_config("edge-q", cloud.addr, dir.path());
    // Long enough that an unanswered query would outlast the test's deadline.
    config.modules.meta_manager.remote_query_timeout_ms = 60_000;
    let edge = Edge::start(config).await;
    cloud.await_link("edge-q", true).await;
    // metamanager hears of the link through the bus; wait until it asks the cloud.
    let mut client = MetaClient::connect(&edge.socket, WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let found = loop {
        if let Ok(Some(v)) = client.get("default", ResourceType::Service, "remote").await {
            break Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let found = found.expect("the socket get reached the cloud through the bus and the link");
    assert_eq!(found["spec"]["clusterIP"], "10.96.4.4");
    assert!(
        sqlite_rows(&edge.db)
            .iter()
            .any(|(k, _)| k == "default/service/remote"),
        "the answer is stored"
    );
    // An object the cloud does not have: an answer at once, not a wait for the timeout.
    let missing = tokio::time::timeout(WAIT, client.get("default", ResourceType::Service, "nope"))
        .await
        .expect("the cloud's refusal arrives before the edge's timeout");
    assert!(matches!(missing, Ok(None) | Err(_)), "{missing:?}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_requests_fail_at_once_while_the_link_is_down() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let edge = Edge::start(edge_config("edge-off", port, dir.path())).await;
    let ask = Message::new(
        Route::new(
            "test",
            group::RESOURCE,
            operation::QUERY,
            "default/service/x",
        ),
        json!(null),
    );
    let reply = edge
        .ctx
        .send_sync("websocket", ask, Duration::from_secs(30))
        .await
        .expect("a reply, not a timeout");
    assert_eq!(reply.operation(), operation::ERROR);
    assert_eq!(reply.content.as_str(), Some(connection::LINK_DOWN));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_drop_only_that_node() {
    let mut config = cloud_config("127.0.0.1:0");
    config.modules.cloud_hub.max_frame_len = 64 * 1024;
    let mut cloud = Cloud::start(config, HashMap::new()).await;
    let mut good = raw_node(cloud.addr, Some("good"), Some("p")).await;
    cloud.await_link("good", true).await;

    let mut garbage = raw_node(cloud.addr, Some("garbage"), Some("p")).await;
    garbage
        .send(WsMessage::Text("{not json".into()))
        .await
        .unwrap();
    let (code, reason) = close_reason(&mut garbage).await;
    assert_eq!(code, CloseCode::Invalid);
    assert!(reason.contains("malformed"), "{reason}");

    let mut binary = raw_node(cloud.addr, Some("binary"), Some("p")).await;
    binary
        .send(WsMessage::Binary(vec![0u8; 100].into()))
        .await
        .unwrap();
    let (code, _) = close_reason(&mut binary).await;
    assert_eq!(code, CloseCode::Invalid);

    let mut big = raw_node(cloud.addr, Some("big"), Some("p")).await;
    let _ = big
        .send(WsMessage::Text("x".repeat(200 * 1024).into()))
        .await;
    let (code, reason) = close_reason(&mut big).await;
    assert_eq!(code, CloseCode::Size, "{reason}");

    // The well-behaved node still gets its changes.
    assert_served(&cloud, &mut good, "good").await;
    cloud.await_all_acked().await;
}

/// KubeEdge's edgecore (gorilla/websocket) sends a message longer than its 4 KiB write
/// buffer as fragments; a ping may come between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_ack_with_a_ping_between_is_taken_whole() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let mut cloud = Cloud::start(cloud_config("127.0.0.1:0"), HashMap::new()).await;
    let mut node = raw_node(cloud.addr, Some("gorilla"), Some("p")).await;
    cloud.await_link("gorilla", true).await;
    let msg = a_service_reaches(&cloud, &mut node, "gorilla", "a").await;
    let ack = Message::reply(&msg, "OK").to_json().unwrap();
    let (head, rest) = ack.split_at(10);
    let (middle, tail) = rest.split_at(rest.len() / 2);
    let text = OpCode::Data(Data::Text);
    let more = OpCode::Data(Data::Continue);
    for frame in [
        Frame::message(head.to_owned(), text, false),
        Frame::ping(&b"between"[..]),
        Frame::message(middle.to_owned(), more, false),
        Frame::message(tail.to_owned(), more, true),
    ] {
        node.send(WsMessage::Frame(frame)).await.unwrap();
    }
    cloud.await_all_acked().await;
    // The ping was answered with its payload.
    loop {
        let frame = tokio::time::timeout(WAIT, node.next())
            .await
            .expect("a pong in time")
            .expect("link open")
            .expect("readable");
        if let WsMessage::Pong(payload) = frame {
            assert_eq!(&payload[..], b"between");
            break;
        }
    }

    // A frame with a reserved opcode breaks the protocol: that node is closed with 1002.
    let mut bad = raw_node(cloud.addr, Some("reserved"), Some("p")).await;
    let frame = Frame::message(&b"x"[..], OpCode::Data(Data::Reserved(3)), true);
    bad.send(WsMessage::Frame(frame)).await.unwrap();
    let (code, reason) = close_reason(&mut bad).await;
    assert_eq!(code, CloseCode::Protocol, "{reason}");
    assert_served(&cloud, &mut node, "gorilla").await;
    cloud.await_all_acked().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_node_limit_and_replacement() {
    let mut config = cloud_config("127.0.0.1:0");
    config.modules.cloud_hub.node_limit = 1;
    let mut cloud = Cloud::start(config, HashMap::new()).await;

    let mut anonymous = raw_node(cloud.addr, None, Some("p")).await;
    let (code, reason) = close_reason(&mut anonymous).await;
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Policy, "missing header node_id")
    );
    let mut no_project = raw_node(cloud.addr, Some("a"), None).await;
    let (_, reason) = close_reason(&mut no_project).await;
    assert_eq!(reason, "missing header project_id");
    let mut bad_name = raw_node(cloud.addr, Some("Not_A_Node"), Some("p")).await;
    let (_, reason) = close_reason(&mut bad_name).await;
    assert!(reason.contains("invalid node_id"), "{reason}");

    let mut first = raw_node(cloud.addr, Some("a"), Some("p")).await;
    cloud.await_link("a", true).await;
    let mut over = raw_node(cloud.addr, Some("b"), Some("p")).await;
    let (code, reason) = close_reason(&mut over).await;
    assert_eq!(code, CloseCode::Again);
    assert!(reason.contains("node limit of 1"), "{reason}");

    let mut second = raw_node(cloud.addr, Some("a"), Some("p")).await;
    let (code, reason) = close_reason(&mut first).await;
    assert_eq!(code, CloseCode::Away);
    assert!(reason.contains("replaced"), "{reason}");
    a_service_reaches(&cloud, &mut second, "a", "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_dropped() {
    let mut config = cloud_config("127.0.0.1:0");
    config.modules.cloud_hub.keepalive_timeout_ms = 1_000;
    let mut cloud = Cloud::start(config, HashMap::new()).await;
    let mut node = raw_node(cloud.addr, Some("quiet"), Some("p")).await;
    cloud.await_link("quiet", true).await;
    let (code, reason) = close_reason(&mut node).await;
    assert_eq!(code, CloseCode::Away);
    assert!(reason.contains("silent"), "{reason}");
    cloud.await_link("quiet", false).await;
}

/// A cloudcore too busy to run a node's session for longer than the keepalive timeout
/// finds the node's frames waiting when it resumes: it reads them, and keeps the node.
/// (With the silence deadline and the waiting frame both ready, an unordered pick dropped
/// the node about half the time; six stalls here would miss that once in 64 runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_cloud_reads_what_waits_before_calling_a_node_silent() {
    let mut config = cloud_config("127.0.0.1:0");
    config.modules.cloud_hub.keepalive_timeout_ms = 1_000;
    let mut cloud = Cloud::start(config, HashMap::new()).await;
    let addr = cloud.addr;
    let (connected_tx, connected_rx) = std::sync::mpsc::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The node runs on a thread of its own, so it keeps sending while the cloud's
    // runtime is stalled.
    let node = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut ws = raw_node(addr, Some("busy"), Some("p")).await;
                connected_tx.send(()).unwrap();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    ws.send(WsMessage::Ping(Default::default())).await.unwrap();
                    let deadline = tokio::time::sleep(Duration::from_millis(300));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            () = &mut deadline => break,
                            frame = ws.next() => match frame {
                                Some(Ok(WsMessage::Close(f))) => return Err(format!("dropped: {f:?}")),
                                Some(Ok(_)) => {}
                                other => return Err(format!("link failed: {other:?}")),
                            },
                        }
                    }
                }
                Ok(())
            })
        })
    };
    connected_rx.recv_timeout(WAIT).expect("the node connected");
    cloud.await_link("busy", true).await;
    for _ in 0..6 {
        // Both workers of the cloud's runtime stalled past the keepalive timeout, while
        // the node's pings arrive.
        let both = std::sync::Arc::new(std::sync::Barrier::new(2));
        let stalls: Vec<_> = (0..2)
            .map(|_| {
                let both = both.clone();
                tokio::spawn(async move {
                    both.wait();
                    std::thread::sleep(Duration::from_millis(1_300));
                })
            })
            .collect();
        for stall in stalls {
            stall.await.unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let ended = tokio::task::spawn_blocking(move || node.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        ended,
        Ok(()),
        "the node stayed connected through every stall"
    );
}

/// The next `data` message on a bus recorder's channel.
async fn next_data(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Message>,
    where_: &str,
) -> Message {
    tokio::time::timeout(WAIT, async {
        loop {
            let msg = rx.recv().await.unwrap();
            if msg.operation() == "data" {
                return msg;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the payload never reached {where_}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_payloads_cross_as_binary_frames_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(cloud_config("127.0.0.1:0"), HashMap::new()).await;
    let (tx, mut at_edge) = tokio::sync::mpsc::unbounded_channel();
    let mesh = Recorder {
        name: "edgemesh",
        group: "mesh",
        tx,
    };
    let edge = Edge::start_with(
        edge_config("edge-m", cloud.addr, dir.path()),
        vec![Box::new(mesh)],
    )
    .await;
    cloud.await_link("edge-m", true).await;
    let payload = bytes::Bytes::from((0..=255u8).cycle().take(100_000).collect::<Vec<u8>>());

    let down = Message::new(
        Route::new(
            "edgecontroller",
            group::MESH,
            "data",
            "node/edge-m/stream/7",
        ),
        payload.clone(),
    );
    cloud.send(down).await;
    let got = next_data(&mut at_edge, "the edge's mesh group").await;
    assert_eq!(got.resource(), "stream/7");
    // Bytes, not base64 text: it crossed as a binary frame.
    assert!(matches!(&got.content, proto::Content::Bytes(b) if *b == payload));

    let up = Message::new(
        Route::new("edgemesh", group::MESH, "data", "stream/8"),
        payload.clone(),
    );
    edge.ctx.send("websocket", up).await.unwrap();
    let got = next_data(&mut cloud.upstream, "the cloud").await;
    assert_eq!(got.resource(), "node/edge-m/stream/8");
    assert!(matches!(&got.content, proto::Content::Bytes(b) if *b == payload));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_reads_nothing_delays_no_other_node() {
    let mut config = cloud_config("127.0.0.1:0");
    config.modules.cloud_hub.write_timeout_ms = 500;
    let mut cloud = Cloud::start(config, HashMap::new()).await;
    let _slow = raw_node(cloud.addr, Some("slow"), Some("p")).await;
    let mut good = raw_node(cloud.addr, Some("good"), Some("p")).await;
    cloud.await_link("slow", true).await;
    cloud.await_link("good", true).await;

    // Far more than the socket buffers hold, to a node that never reads.
    let padding = "x".repeat(64 * 1024);
    for i in 0..200 {
        let mut msg = change(
            "slow",
            operation::INSERT,
            "default",
            &format!("s{i}"),
            "1",
            "10.96.0.1",
        );
        if let proto::Content::Json(v) = &mut msg.content {
            v["metadata"]["annotations"] = json!({ "pad": padding });
        }
        cloud.send(msg).await;
    }
    assert_served(&cloud, &mut good, "good").await;

    // The stuck node is dropped; its objects stay queued for its next connection.
    cloud.await_link("slow", false).await;
    let stats = cloud.hub.stats();
    assert_eq!(stats.pending + stats.inflight, 200, "{stats:?}");
}

/// A node whose socket is full (it reads nothing) still has what it sends read and routed:
/// the session's reads do not wait for its blocked write. Before, the write held the
/// session until the write timeout dropped the node, and an open it sent meanwhile never
/// reached the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_full_socket_is_still_read() {
    use proto::stream::{MAX_WINDOW, Open, ProtocolHint, StreamCodec, StreamFrame, StreamId};

    let mut config = cloud_config("127.0.0.1:0");
    // Far longer than the test waits: only a session that reads while blocked passes.
    config.modules.cloud_hub.write_timeout_ms = 120_000;
    let mut cloud = Cloud::start(config, HashMap::new()).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(cloud.addr).await.unwrap();
    let mut full = raw_node_over(tcp, Some("full"), Some("p")).await;
    let mut src = raw_node(cloud.addr, Some("src"), Some("p")).await;
    cloud.await_link("full", true).await;
    cloud.await_link("src", true).await;

    let codec = StreamCodec::default();
    let open = |id: u32| {
        let frame = StreamFrame::Open {
            id: StreamId::new(id).unwrap(),
            open: Box::new(Open {
                dest_node: "src".into(),
                source_node: String::new().into(),
                namespace: "default".into(),
                name: "sink".into(),
                port: 80,
                endpoint: "127.0.0.1:80".parse().unwrap(),
                protocol: ProtocolHint::Tcp,
                initial_window: MAX_WINDOW,
            }),
        };
        WsMessage::Binary(codec.encode_to_bytes(&frame).unwrap())
    };
    // The next open `src` is sent, by the id the router gave it there.
    async fn next_open(src: &mut WebSocketStream<TcpStream>, codec: &StreamCodec) -> StreamId {
        loop {
            match tokio::time::timeout(WAIT, src.next())
                .await
                .expect("an open routed in time")
            {
                Some(Ok(WsMessage::Binary(b))) if proto::stream::is_stream_frame(&b) => {
                    match codec.decode_frame(b).unwrap() {
                        StreamFrame::Open { id, .. } => return id,
                        other => panic!("expected an open, got {other:?}"),
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("src's link ended: {other:?}"),
            }
        }
    }

    // `full` opens a stream to `src` with a large window, and `src` fills it with far more
    // than the kernel's buffers hold (a send buffer grows to 4 MiB here).
    full.send(open(1)).await.unwrap();
    let id = next_open(&mut src, &codec).await;
    let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    for _ in 0..24 * 16 {
        let data = StreamFrame::Data {
            id,
            payload: chunk.clone(),
        };
        src.send(WsMessage::Binary(codec.encode_to_bytes(&data).unwrap()))
            .await
            .unwrap();
    }
    // What `full` sends now is read although its session's write is stuck.
    full.send(open(3)).await.unwrap();
    next_open(&mut src, &codec).await;
    assert_eq!(
        cloud.hub.stats().connected,
        2,
        "both nodes are still connected"
    );
    drop(full);
    cloud.await_link("full", false).await;
}

/// Whether the established loopback socket from `port` to `peer_port` has queued as much
/// as its send buffer allows (`ss`'s `w` ≥ `tb`), so a write to it waits; `Err` with what
/// `ss` said when not.
fn send_buffer_full(port: u16, peer_port: u16) -> Result<(), String> {
    // Both ports: an outgoing connection's local port may be another's too (the kernel
    // shares it among different destinations), and tests run side by side.
    let out = std::process::Command::new("ss")
        .args([
            "-tnmH",
            "state",
            "established",
            &format!("( sport = :{port} and dport = :{peer_port} )"),
        ])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |skmem: &str, name: &str| {
        skmem.split(',').find_map(|f| {
            let digits = f.strip_prefix(name)?;
            digits
                .chars()
                .all(|c| c.is_ascii_digit())
                .then(|| digits.parse::<u64>().ok())?
        })
    };
    let full = text
        .split("skmem:(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .is_some_and(|skmem| {
            matches!((field(skmem, "w"), field(skmem, "tb")), (Some(w), Some(tb)) if w >= tb)
        });
    if full {
        Ok(())
    } else {
        Err(text.trim().to_owned())
    }
}

/// The edge's side of the same: with its writes stuck behind a cloud that reads nothing,
/// the edge still reads and delivers what the cloud sends down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_whose_writes_are_stuck_still_reads() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    // A stand-in cloud that upgrades the link and never reads from it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8).unwrap();
    let mut config = edge_config("edge-w", listener.local_addr().unwrap(), dir.path());
    let hub = &mut config.modules.edge_hub;
    // Far longer than the test waits: only a link that reads while blocked passes.
    hub.write_timeout_ms = 120_000;
    hub.heartbeat_ms = 60_000;
    hub.outbound_buffer = 4;
    // Small queues, so the sender below blocks soon after the link's writes do.
    config.beehive.inbox_capacity = 4;
    let (tx, mut at_edge) = tokio::sync::mpsc::unbounded_channel();
    let mesh = Recorder {
        name: "edgemesh",
        group: "mesh",
        tx,
    };
    let edge = Edge::start_with(config, vec![Box::new(mesh)]).await;
    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("the edge dials")
        .unwrap();
    let mut cloud = tokio_tungstenite::accept_async(tcp).await.unwrap();
    // What goes up before the link is up is dropped: wait for the edge to say it is.
    tokio::time::timeout(WAIT, async {
        while at_edge.recv().await.unwrap().operation() != operation::CONNECT {}
    })
    .await
    .expect("the link comes up");

    // Far more than the kernel's buffers hold goes up; the sender blocks once the link's
    // queue is full.
    const UP: usize = 200;
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (ctx, sent) = (edge.ctx.clone(), sent.clone());
        let payload = bytes::Bytes::from(vec![1u8; 64 * 1024]);
        tokio::spawn(async move {
            for i in 0..UP {
                let up = Message::new(
                    Route::new("edgemesh", group::MESH, "data", format!("stream/{i}")),
                    payload.clone(),
                );
                ctx.send("websocket", up).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // The edge's socket is full: the kernel takes no more of its writes.
    let edge_port = cloud.get_ref().peer_addr().unwrap().port();
    let cloud_port = cloud.get_ref().local_addr().unwrap().port();
    eventually_ok("the edge's socket to fill", || {
        let full = send_buffer_full(edge_port, cloud_port).map_err(|ss| {
            let sent = sent.load(Ordering::SeqCst);
            format!("{sent} of {UP} messages sent; ss: {ss}")
        });
        async move { full }
    })
    .await;
    let down = Message::new(
        Route::new("edgecontroller", group::MESH, "data", "stream/7"),
        bytes::Bytes::from_static(b"down"),
    );
    cloud
        .send(WsMessage::Text(down.to_json().unwrap().into()))
        .await
        .unwrap();
    let got = next_data(&mut at_edge, "the edge's mesh group").await;
    assert_eq!(got.resource(), "stream/7");
    assert!(
        sent.load(Ordering::SeqCst) < UP,
        "the edge's writes were stuck meanwhile"
    );
    sender.abort();
    drop(cloud);
    edge.stop().await;
}

/// The cloud's faults, told back by the edge as RFC 6455 §7.4.1 names them, each on a link
/// of its own (the edge dials again after each): text that is not UTF-8 1007, a message
/// over `maxFrameLen` 1009 (before its payload is read), a reserved opcode 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_tells_a_cloud_that_breaks_the_protocol_why() {
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = edge_config("edge-p", listener.local_addr().unwrap(), dir.path());
    config.modules.edge_hub.max_frame_len = 4096;
    let edge = Edge::start(config).await;
    // Server frames are not masked: FIN + opcode, then the length.
    let not_utf8: &[u8] = &[0x81, 1, 0xff];
    let oversized: &[u8] = &[0x82, 126, 0x20, 0x00]; // 8,192 bytes announced, none sent
    let reserved: &[u8] = &[0x83, 0];
    for (frame, want) in [
        (not_utf8, CloseCode::Invalid),
        (oversized, CloseCode::Size),
        (reserved, CloseCode::Protocol),
    ] {
        let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the edge dials")
            .unwrap();
        let mut cloud = tokio_tungstenite::accept_async(tcp).await.unwrap();
        cloud.get_mut().write_all(frame).await.unwrap();
        let (code, reason) = close_reason(&mut cloud).await;
        assert_eq!(code, want, "{reason}");
    }
    edge.stop().await;
}
