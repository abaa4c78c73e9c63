//! Streams over the cloud link: how this node reaches endpoints on other nodes and in the
//! cloud, and how they reach endpoints here. No byte goes node to node directly; the hub
//! (edgehub here, cloudhub in the cloud) carries the frames on the link it already keeps.
//!
//! - [`Tunnel`] is the multiplexer: it takes the lane from the hub (link up, frames, link
//!   down), keeps the table of live streams, opens streams ([`Tunnel::open`]) and hands
//!   frames to them. It never waits on a stream's reader: Data within credit is queued on
//!   the stream, and a stream that overruns its window is reset.
//! - [`stream`]: [`TunnelStream`], a stream as a byte stream.
//! - [`pipe`]: relays a socket and a stream with no buffer in between.
//! - [`datagram`]: a stream carrying UDP datagrams, one Data frame each, and the relay
//!   between such a stream and a UDP socket.
//! - [`accept`]: the acceptor: a stream opened towards this node is checked against the
//!   catalog (no open relay), limited by the Service's QPS, dialled and piped.

pub mod accept;
pub mod datagram;
pub mod pipe;
pub mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::stream::{
    Carriage, LinkSender, Open, ProtocolHint, ResetCode, Side, StreamCodec, StreamFrame, StreamId,
    StreamIdAllocator,
};
use tokio::sync::mpsc::UnboundedReceiver;

pub use accept::Acceptor;
pub use datagram::DatagramStream;
pub use stream::TunnelStream;

use stream::Shared;

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// No cloud link now.
    LinkDown,
    /// This end has as many streams open as allowed.
    TooManyStreams,
    /// The far side (or the hub) refused it.
    Reset(ResetCode, String),
    /// No answer within the connect timeout.
    Timeout,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::LinkDown => f.write_str("the cloud link is down"),
            OpenError::TooManyStreams => f.write_str("too many tunnel streams open"),
            OpenError::Reset(code, reason) => write!(f, "refused ({code}): {reason}"),
            OpenError::Timeout => f.write_str("no answer in time"),
        }
    }
}

/// What an open asks for.
#[derive(Debug, Clone)]
pub struct OpenRequest<'a> {
    /// The node that runs the endpoint; empty for one outside the edge.
    pub node: &'a str,
    /// `<namespace>/<name>` of the Service.
    pub service: &'a str,
    /// The Service port.
    pub port: u16,
    /// The chosen endpoint.
    pub endpoint: SocketAddr,
    /// What the stream will carry.
    pub protocol: ProtocolHint,
}

#[derive(Debug)]
struct Inner {
    link: Option<LinkSender>,
    streams: HashMap<u32, Arc<Shared>>,
    ids: StreamIdAllocator,
}

/// The multiplexer of this node's tunnel streams.
#[derive(Debug)]
pub struct Tunnel {
    inner: Mutex<Inner>,
    window: u32,
    max_streams: usize,
    /// The runtime that reads the hub's lane (and, on an edge, runs the link).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

impl Tunnel {
    /// A tunnel with no link yet; each stream gets a receive window of `window` bytes, and
    /// at most `max_streams` streams are open at once.
    pub fn new(window: u32, max_streams: usize) -> Arc<Self> {
        Arc::new(Tunnel {
            inner: Mutex::new(Inner {
                link: None,
                streams: HashMap::new(),
                ids: StreamIdAllocator::new(Side::Edge, max_streams),
            }),
            window,
            max_streams,
            runtime: std::sync::OnceLock::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("tunnel poisoned")
    }

    /// Whether a link is up now.
    pub fn is_up(&self) -> bool {
        self.lock().link.is_some()
    }

    /// The runtime that reads the hub's lane, once it runs.
    pub(crate) fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.get()
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.lock().streams.len()
    }

    /// Opens a stream to `req.endpoint` and waits (up to `timeout`) for the far side to
    /// connect it.
    pub async fn open(
        self: &Arc<Self>,
        req: &OpenRequest<'_>,
        timeout: Duration,
    ) -> Result<TunnelStream, OpenError> {
        let (namespace, name) = req.service.split_once('/').unwrap_or(("", req.service));
        let (id, shared, link) = {
            let mut inner = self.lock();
            let link = inner.link.clone().ok_or(OpenError::LinkDown)?;
            let id = inner.ids.allocate().ok_or(OpenError::TooManyStreams)?;
            let shared = Shared::new(self.window, 0);
            inner.streams.insert(id.get(), shared.clone());
            (id, shared, link)
        };
        let stream = TunnelStream {
            id,
            shared: shared.clone(),
            link: link.clone(),
            tunnel: self.clone(),
            peer: format!(
                "{} via {}",
                req.endpoint,
                if req.node.is_empty() {
                    "the cloud"
                } else {
                    req.node
                }
            ),
        };
        let open = StreamFrame::Open {
            id,
            open: Box::new(Open {
                dest_node: req.node.into(),
                source_node: Default::default(),
                namespace: namespace.into(),
                name: name.into(),
                port: req.port,
                endpoint: req.endpoint,
                protocol: req.protocol,
                initial_window: self.window,
            }),
        };
        let frame = StreamCodec::default()
            .encode_to_bytes(&open)
            .map_err(|e| OpenError::Reset(ResetCode::ProtocolError, e.to_string()))?;
        link.send(frame).map_err(|_| OpenError::LinkDown)?;
        let settled = async {
            loop {
                let notified = shared.settled.notified();
                {
                    let state = shared.lock();
                    if let Some((code, reason)) = &state.reset {
                        return Err(OpenError::Reset(*code, reason.clone()));
                    }
                    if state.accepted {
                        return Ok(());
                    }
                }
                notified.await;
            }
        };
        match tokio::time::timeout(timeout, settled).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            // Dropping the stream resets it, so a late acceptance is not left open.
            Err(_) => Err(OpenError::Timeout),
        }
    }

    /// Forgets stream `id` (its user is done with it).
    pub(crate) fn forget(&self, id: StreamId) {
        let mut inner = self.lock();
        inner.streams.remove(&id.get());
        inner.ids.release(id);
    }

    /// Registers a stream the far side opened; its first grant is sent by the acceptor.
    fn accepted_stream(
        self: &Arc<Self>,
        id: StreamId,
        send_credit: u32,
        peer: String,
    ) -> Option<TunnelStream> {
        let mut inner = self.lock();
        let link = inner.link.clone()?;
        if inner.streams.len() >= self.max_streams || inner.streams.contains_key(&id.get()) {
            return None;
        }
        let shared = Shared::new(self.window, send_credit);
        shared.lock().accepted = true;
        inner.streams.insert(id.get(), shared.clone());
        Some(TunnelStream {
            id,
            shared,
            link,
            tunnel: self.clone(),
            peer,
        })
    }

    /// Sends a frame on the current link, if any.
    fn send(&self, frame: &StreamFrame) {
        let link = self.lock().link.clone();
        if let (Some(link), Ok(bytes)) = (link, StreamCodec::default().encode_to_bytes(frame)) {
            let _ = link.send(bytes);
        }
    }

    /// Reads the hub's lane until it closes: link state, and frames for the streams.
    pub async fn run(self: Arc<Self>, mut lane: UnboundedReceiver<Carriage>, acceptor: Acceptor) {
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        let acceptor = Arc::new(acceptor);
        let codec = StreamCodec::default();
        while let Some(carriage) = lane.recv().await {
            match carriage {
                Carriage::Up(link) => {
                    log::info!("tunnel: the cloud link carries streams");
                    self.down("a new link replaced it");
                    self.lock().link = Some(link);
                }
                Carriage::Down(why) => {
                    log::info!("tunnel: the cloud link is down: {why}");
                    self.down(&format!("the cloud link is down: {why}"));
                }
                Carriage::Frame(frame) => match codec.decode_frame(frame) {
                    Ok(frame) => self.dispatch(frame, &acceptor),
                    Err(e) => log::warn!("tunnel: malformed stream frame dropped: {e}"),
                },
            }
        }
        self.down("the hub stopped");
    }

    /// Resets every stream and forgets the link.
    fn down(&self, why: &str) {
        let streams: Vec<Arc<Shared>> = {
            let mut inner = self.lock();
            inner.link = None;
            inner.ids = StreamIdAllocator::new(Side::Edge, self.max_streams);
            inner.streams.drain().map(|(_, s)| s).collect()
        };
        for stream in streams {
            stream.reset(ResetCode::NodeOffline, why);
        }
    }

    fn dispatch(self: &Arc<Self>, frame: StreamFrame, acceptor: &Arc<Acceptor>) {
        let id = frame.id();
        if let StreamFrame::Open { id, open } = frame {
            acceptor.clone().accept(self.clone(), id, *open);
            return;
        }
        let Some(stream) = self.lock().streams.get(&id.get()).cloned() else {
            // A stream this end already closed: its late frames mean nothing.
            return;
        };
        let broken = match frame {
            StreamFrame::Data { payload, .. } => stream.data(payload).err(),
            StreamFrame::Fin { .. } => {
                stream.fin();
                None
            }
            StreamFrame::Window { increment, .. } => stream.window(increment).err(),
            StreamFrame::Reset { code, reason, .. } => {
                stream.reset(code, &reason);
                self.lock().streams.remove(&id.get());
                None
            }
            StreamFrame::Open { .. } => None,
        };
        if let Some(e) = broken {
            log::warn!("tunnel: stream {} broke the protocol: {e}", id.get());
            let reason = e.to_string();
            stream.reset(ResetCode::ProtocolError, &reason);
            self.send(&StreamFrame::Reset {
                id,
                code: ResetCode::ProtocolError,
                reason: reason.into(),
            });
        }
    }

    /// Refuses a stream the far side opened.
    fn refuse(&self, id: StreamId, code: ResetCode, reason: &str) {
        self.send(&StreamFrame::Reset {
            id,
            code,
            reason: reason.into(),
        });
    }

    /// Grants the far side its window: the acceptance.
    fn grant(&self, stream: &TunnelStream) {
        let _ = stream.link.send(
            StreamCodec::default()
                .encode_to_bytes(&StreamFrame::Window {
                    id: stream.id,
                    increment: self.window,
                })
                .expect("a window frame encodes"),
        );
    }
}
