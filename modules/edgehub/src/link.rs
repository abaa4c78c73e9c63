//! One life of the cloud link: dial, then carry messages both ways until it breaks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use beehive::Context;
use bytes::Bytes;
use proto::application::APPLICATION_RESPONSE;
use proto::stream::{Carriage, MESH_LANE, Outbox, ResetCode, StreamCodec, StreamFrame, StreamId};
use proto::ws::{
    Closing, HeadFirst, Reading, Role, Socket, SocketConfig, Writing, WsMessage, close_code,
};
use proto::{FrameCodec, Message, Route, connection, group, handshake, operation};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::config::EdgeHubConfig;
use crate::module::MODULE;

/// Bus group that gets metadata from the cloud.
pub const META_GROUP: &str = "meta";
/// Bus group that gets mesh tunnel traffic.
pub const MESH_GROUP: &str = "mesh";

/// How a dial or a link ended.
#[derive(Debug)]
pub enum Ended {
    /// The link never came up.
    DialFailed(String),
    /// The link was up and broke (or the cloud closed it).
    Lost(String),
    /// The process is shutting down.
    Shutdown,
    /// The TLS settings changed (a renewed certificate): redial with them.
    Renewed,
}

/// The sender into the live link, if any: where the module puts what goes up.
pub type Uplink = Arc<Mutex<Option<mpsc::Sender<Message>>>>;

/// Dials the cloud and, once connected, runs the link: `uplink` holds its sender while it
/// lives, and every group hears that the link is up.
pub async fn dial_and_run(
    ctx: &Context,
    config: &EdgeHubConfig,
    tls: Option<&mut watch::Receiver<Arc<ClientConfig>>>,
    up: &Uplink,
) -> Ended {
    let deadline = Duration::from_millis(config.handshake_timeout_ms);
    let tcp = match timeout(deadline, TcpStream::connect(&config.server)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Ended::DialFailed(format!("connect to {}: {e}", config.server)),
        Err(_) => return Ended::DialFailed(format!("connect to {}: timed out", config.server)),
    };
    let _ = tcp.set_nodelay(true);
    match tls {
        None => match timeout(deadline, upgrade(tcp, config, "ws")).await {
            Ok(Ok((ws, binary))) => run(ctx, config, ws, binary, up, None).await,
            Ok(Err(e)) => Ended::DialFailed(e),
            Err(_) => Ended::DialFailed("handshake timed out".into()),
        },
        Some(source) => {
            let tls = source.borrow_and_update().clone();
            let name = match ServerName::try_from(config.tls_server_name().to_owned()) {
                Ok(name) => name,
                Err(e) => return Ended::DialFailed(format!("TLS server name: {e}")),
            };
            let handshakes = async {
                let stream = TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                upgrade(stream, config, "wss").await
            };
            match timeout(deadline, handshakes).await {
                Ok(Ok((ws, binary))) => run(ctx, config, ws, binary, up, Some(source)).await,
                Ok(Err(e)) => Ended::DialFailed(e),
                Err(_) => Ended::DialFailed("handshake timed out".into()),
            }
        }
    }
}

/// Bytes read per read call while messages are small; a larger frame gets room for all of
/// it once its header is read (from 64 KiB, a buffer of its own: what a read brought of it
/// beyond its header is copied there, so a larger chunk would copy more).
const READ_CHUNK: usize = 32 * 1024;

/// The WebSocket upgrade (tungstenite's handshake, then the connection framed by
/// [`proto::ws`]): the link, and whether the cloud takes binary frames.
async fn upgrade<S>(
    stream: S,
    config: &EdgeHubConfig,
    scheme: &str,
) -> Result<(Socket<S>, bool), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // KubeEdge's path shape; cloudhub takes the identity from the headers.
    let url = format!(
        "{scheme}://{}/{}/{}/events",
        config.server, config.project_id, config.node_id
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad request URL: {e}"))?;
    let header = |v: &str| HeaderValue::from_str(v).map_err(|e| format!("bad header: {e}"));
    request
        .headers_mut()
        .insert("node_id", header(&config.node_id)?);
    request
        .headers_mut()
        .insert("project_id", header(&config.project_id)?);
    request.headers_mut().insert(
        handshake::CONNECTION_USE,
        header(handshake::CONNECTION_USE_MSG)?,
    );
    // The cloud may send frames right behind its answer: HeadFirst keeps them.
    let (ws, response) = tokio_tungstenite::client_async(request, HeadFirst::new(stream))
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let (stream, leftover) = ws.into_inner().into_parts();
    let socket_config = SocketConfig {
        read_chunk: READ_CHUNK,
        max_message: config.max_frame_len,
    };
    let ws = Socket::new(stream, leftover, Role::Client, socket_config);
    let binary = response
        .headers()
        .get(handshake::FRAMES)
        .is_some_and(|v| v.as_bytes() == handshake::FRAMES_BINARY.as_bytes());
    if !binary {
        log::info!(
            "the cloud at {} does not take binary frames (a KubeEdge cloudcore?): JSON only, \
             no tunnel streams on this link",
            config.server
        );
    }
    Ok((ws, binary))
}

/// The keepalive KubeEdge's cloudhub expects.
pub fn keepalive() -> Message {
    Message::new(
        Route::new(
            MODULE,
            group::RESOURCE,
            operation::KEEPALIVE,
            connection::KEEPALIVE_RESOURCE,
        ),
        connection::KEEPALIVE_CONTENT,
    )
}

/// Runs one link with the mesh told of it: up with a sender for its stream frames, down
/// (after every frame the link brought) with the reason, so no stream outlives its link.
async fn run<S>(
    ctx: &Context,
    config: &EdgeHubConfig,
    ws: Socket<S>,
    binary: bool,
    up: &Uplink,
    renewed: Option<&mut watch::Receiver<Arc<ClientConfig>>>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Only a process that runs a mesh module gets stream frames; without one, opens from
    // the cloud are refused at once. A cloud that takes no binary frames gets none.
    let mesh = if !binary || ctx.members(MESH_GROUP).is_empty() {
        None
    } else {
        ctx.lane::<Carriage>(MESH_LANE).ok()
    };
    let (streams_tx, streams_rx) = mpsc::unbounded_channel();
    let mesh = mesh.filter(|lane| lane.send(Carriage::Up(streams_tx)).is_ok());
    let link = Link {
        ws,
        binary,
        up,
        renewed,
    };
    let ended = serve(ctx, config, link, mesh.as_ref(), streams_rx).await;
    if let Some(lane) = mesh {
        let why = match &ended {
            Ended::Shutdown => "edgecore is shutting down".to_owned(),
            Ended::Renewed => "the link is redialled with a renewed certificate".to_owned(),
            Ended::Lost(why) | Ended::DialFailed(why) => why.clone(),
        };
        let _ = lane.send(Carriage::Down(why));
    }
    ended
}

/// One upgraded link and what goes with it.
struct Link<'a, S> {
    ws: Socket<S>,
    /// Whether the cloud takes binary frames.
    binary: bool,
    up: &'a Uplink,
    /// The TLS settings' source, whose change ends the link.
    renewed: Option<&'a mut watch::Receiver<Arc<ClientConfig>>>,
}

/// Reads and writes the link as two loops of one task, polled together: a write that
/// waits for the socket (a full send buffer) does not stop what the cloud sends down —
/// stream credit among it — from being read and handed on meanwhile.
async fn serve<S>(
    ctx: &Context,
    config: &EdgeHubConfig,
    link: Link<'_, S>,
    mesh: Option<&mpsc::UnboundedSender<Carriage>>,
    streams_rx: mpsc::UnboundedReceiver<Bytes>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Link {
        mut ws,
        binary,
        up,
        renewed,
    } = link;
    let (tx, rx) = mpsc::channel(config.outbound_buffer);
    *up.lock().expect("uplink poisoned") = Some(tx);
    log::info!(
        "cloud link up: {} as node {}",
        config.server,
        config.node_id
    );
    crate::module::publish(ctx, true).await;
    // Resets of opens this node cannot take, from the reader to the writer.
    let (refusals_tx, refusals_rx) = mpsc::unbounded_channel();
    let outgoing = Outgoing {
        rx,
        streams_rx,
        streams_open: mesh.is_some(),
        refusals_rx,
        binary,
    };
    let (close, ended) = {
        let Socket { reading, writing } = &mut ws;
        tokio::select! {
            biased;
            _ = ctx.done() => {
                (Closing::send(close_code::AWAY, "edgecore is shutting down"), Ended::Shutdown)
            }
            () = tls_changed(renewed) => {
                (Closing::send(close_code::NORMAL, "certificate renewed"), Ended::Renewed)
            }
            ended = read_loop(ctx, config, reading, mesh, &refusals_tx) => ended,
            ended = write_loop(config, writing, outgoing) => (Closing::Drop, ended),
        }
    };
    ws.end(close).await;
    ended
}

/// What the writer takes its frames from.
struct Outgoing {
    /// Messages of the bus for the cloud.
    rx: mpsc::Receiver<Message>,
    /// Stream frames of the mesh.
    streams_rx: mpsc::UnboundedReceiver<Bytes>,
    /// Whether the mesh still sends stream frames.
    streams_open: bool,
    /// Resets the reader answers opens with.
    refusals_rx: mpsc::UnboundedReceiver<Bytes>,
    /// Whether the cloud takes binary frames.
    binary: bool,
}

/// Writes messages, stream frames (a budget per turn) and keepalives until a write fails.
async fn write_loop<S>(config: &EdgeHubConfig, sink: &mut Writing<S>, mut from: Outgoing) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let codec = FrameCodec::new(config.max_frame_len);
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    let mut ticks = interval(config.heartbeat());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut outbox = Outbox::new();
    loop {
        let outgoing = tokio::select! {
            msg = from.rx.recv() => match msg {
                Some(msg) => vec![encode(&codec, &msg, from.binary)],
                None => return Ended::Lost("upstream channel closed".into()),
            },
            frame = from.streams_rx.recv(), if from.streams_open => match frame {
                Some(frame) => {
                    outbox.push(frame);
                    while let Ok(frame) = from.streams_rx.try_recv() {
                        outbox.push(frame);
                    }
                    stream_turn(&mut outbox)
                }
                None => {
                    from.streams_open = false;
                    continue;
                }
            },
            Some(frame) = from.refusals_rx.recv() => {
                outbox.push(frame);
                continue;
            }
            _ = std::future::ready(()), if !outbox.is_empty() => stream_turn(&mut outbox),
            // The ping makes cloudhub answer, so a dead cloud is noticed too.
            _ = ticks.tick() => vec![encode(&codec, &keepalive(), from.binary), Ok(WsMessage::Ping(Bytes::new()))],
            // The pong leaves with the flush.
            () = sink.owes_pong() => Vec::new(),
        };
        for item in outgoing {
            match item {
                Ok(frame) => sink.push(frame),
                Err(e) => log::error!("cannot encode a message for the cloud: {e}"),
            }
        }
        match timeout(write_timeout, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Ended::Lost(format!("write failed: {e}")),
            Err(_) => return Ended::Lost(format!("a write blocked for {write_timeout:?}")),
        }
        if !outbox.is_empty() {
            // More is waiting; the reader (same task) gets its turn first.
            tokio::task::yield_now().await;
        }
    }
}

/// Reads what the cloud sends down until it closes, errs, or falls silent for two
/// heartbeats.
async fn read_loop<S>(
    ctx: &Context,
    config: &EdgeHubConfig,
    stream: &mut Reading<S>,
    mesh: Option<&mpsc::UnboundedSender<Carriage>>,
    refusals: &mpsc::UnboundedSender<Bytes>,
) -> (Closing, Ended)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let codec = FrameCodec::new(config.max_frame_len);
    let silence = config.heartbeat() * 2;
    loop {
        let Ok(frame) = timeout(silence, stream.next()).await else {
            let why = format!("nothing heard from the cloud for {silence:?}");
            return (Closing::Drop, Ended::Lost(why));
        };
        match frame {
            Ok(None) => {
                let why = "the cloud closed the connection".into();
                return (Closing::Drop, Ended::Lost(why));
            }
            Err(e) => {
                let why = format!("read failed: {e}");
                return (Closing::after_read_error(&e), Ended::Lost(why));
            }
            Ok(Some(WsMessage::Close(frame))) => {
                let why = match &frame {
                    Some(f) => format!("the cloud closed the link: {} {}", f.code, f.reason),
                    None => "the cloud closed the link".into(),
                };
                return (Closing::Answer(frame), Ended::Lost(why));
            }
            Ok(Some(WsMessage::Text(text))) => match Message::from_json(&text) {
                Ok(msg) => route_down(ctx, msg).await,
                Err(e) => log::warn!("dropping a malformed message from the cloud: {e}"),
            },
            Ok(Some(WsMessage::Binary(bytes))) if proto::stream::is_stream_frame(&bytes) => {
                match mesh {
                    Some(lane) => {
                        let _ = lane.send(Carriage::Frame(bytes));
                    }
                    None => {
                        if let Some(reset) = refusal(&bytes) {
                            let _ = refusals.send(reset);
                        }
                    }
                }
            }
            Ok(Some(WsMessage::Binary(bytes))) => match codec.decode_frame(bytes) {
                Ok(msg) => route_down(ctx, msg).await,
                Err(e) => log::warn!("dropping a malformed binary frame from the cloud: {e}"),
            },
            Ok(Some(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
        }
    }
}

/// Bytes of stream frames written per turn, so metadata and keepalives get theirs.
const STREAM_BUDGET: usize = 512 * 1024;

/// Takes the next turn's stream frames from `outbox`, one stream after another.
fn stream_turn(outbox: &mut Outbox) -> Vec<Result<WsMessage, proto::Error>> {
    let mut frames = Vec::new();
    let mut budget = STREAM_BUDGET;
    while budget > 0
        && let Some(frame) = outbox.pop()
    {
        budget = budget.saturating_sub(frame.len());
        frames.push(Ok(WsMessage::Binary(frame)));
    }
    frames
}

/// Without a mesh on this node an open from the cloud is answered with a reset at once
/// (anything else of a stream that cannot exist is dropped).
fn refusal(frame: &Bytes) -> Option<Bytes> {
    let Some((id, 1)) = proto::stream::peek(frame) else {
        return None;
    };
    let reset = StreamFrame::Reset {
        id: StreamId::new(id)?,
        code: ResetCode::Refused,
        reason: "this node runs no mesh".into(),
    };
    StreamCodec::default().encode_to_bytes(&reset).ok()
}

/// Stream payloads go as binary frames, everything else as JSON text.
fn encode(codec: &FrameCodec, msg: &Message, binary: bool) -> Result<WsMessage, proto::Error> {
    if binary && msg.is_stream_payload() {
        Ok(WsMessage::Binary(codec.encode_to_bytes(msg)?))
    } else {
        Ok(WsMessage::Text(Bytes::from(msg.to_json()?)))
    }
}

/// Hands a reply to the request waiting for it, or routes the message to its bus group.
async fn route_down(ctx: &Context, msg: Message) {
    let is_reply = matches!(
        msg.operation(),
        operation::RESPONSE | operation::ERROR | APPLICATION_RESPONSE
    ) && msg.parent_id().is_some();
    if is_reply && ctx.send_resp(msg.clone()) {
        return;
    }
    if msg.operation() == APPLICATION_RESPONSE {
        log::debug!("an Application answer came after its request gave up waiting");
        return;
    }
    let target = match msg.route.group.as_str() {
        group::RESOURCE => META_GROUP,
        group::MESH => MESH_GROUP,
        other => {
            log::warn!(
                "dropping a {} for {} from the cloud: unknown group {other:?}",
                msg.operation(),
                msg.resource()
            );
            return;
        }
    };
    if let Err(e) = ctx.send_to_group(target, msg).await {
        log::debug!("no taker for a cloud message: {e}");
    }
}

/// Resolves when the TLS settings change; never when there are none, or when their source
/// is gone (then they can no longer change).
async fn tls_changed(source: Option<&mut watch::Receiver<Arc<ClientConfig>>>) {
    if let Some(rx) = source
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}
