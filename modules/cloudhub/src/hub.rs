//! The hub: every node's queue and session slot, delivery from the bus, and what nodes send
//! up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use beehive::Context;
use compact_str::{CompactString, format_compact};
use proto::{FrameCodec, Message, Route, connection, operation};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::CloudHubConfig;
use crate::object_sync::{Change, ObjectSync};
use crate::queue::{NodeQueue, Outgoing};
use crate::refusal::Refusals;
use crate::router::{PortKey, PortTx, Router, StreamStats};
use bytes::Bytes;
use proto::stream::{Carriage, Outbox};
use proto::ws::WsMessage;

/// Module that gets what nodes send up, and node link events.
pub const UPSTREAM_MODULE: &str = "edgecontroller";

/// One edge node: its queue (kept while it is away) and its current session, if any.
#[derive(Debug)]
pub struct Node {
    pub(crate) id: CompactString,
    pub(crate) queue: Mutex<NodeQueue>,
    /// Woken when the queue or the session's outbox gets something to send.
    pub(crate) wake: Arc<Notify>,
    session: Mutex<Option<SessionSlot>>,
}

#[derive(Debug)]
struct SessionSlot {
    generation: u64,
    cancel: CancellationToken,
}

/// A session's claim on its node; give it back with [`Hub::detach`].
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) node: Arc<Node>,
    pub(crate) generation: u64,
    pub(crate) cancel: CancellationToken,
    /// Stream frames for this connection, scheduled one stream per turn.
    pub(crate) outbox: Arc<Mutex<Outbox>>,
    /// Why the session was cut by cloudhub itself (its certificate revoked or expired),
    /// set before `cancel`.
    pub(crate) cut: Arc<OnceLock<String>>,
}

impl Attached {
    /// The session's port in the stream router.
    pub(crate) fn port(&self) -> PortKey {
        (self.node.id.clone(), self.generation)
    }
}

/// Counts across the hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Nodes the hub has a queue for (connected or not).
    pub nodes: usize,
    /// Nodes with a live session.
    pub connected: usize,
    /// Objects waiting to be sent, over all nodes.
    pub pending: usize,
    /// Objects sent and not yet ACKed, over all nodes.
    pub inflight: usize,
    /// Messages taken from the bus for nodes since start.
    pub delivered: u64,
    /// ACKs received from nodes since start.
    pub acked: u64,
    /// Tunnel streams relayed.
    pub streams: StreamStats,
}

/// Says why a client certificate (DER) is revoked, or `None`.
pub type RevocationCheck = Arc<dyn Fn(&[u8]) -> Option<String> + Send + Sync>;

/// Shared state of cloudhub.
pub struct Hub {
    ctx: OnceLock<Context>,
    config: CloudHubConfig,
    nodes: Mutex<HashMap<CompactString, Arc<Node>>>,
    connected: AtomicUsize,
    delivered: AtomicU64,
    acked: AtomicU64,
    generations: AtomicU64,
    codec: FrameCodec,
    router: Mutex<Router>,
    refusals: Refusals,
    revocation: OnceLock<RevocationCheck>,
    /// What each node may hold, across restarts.
    object_sync: ObjectSync,
    /// Parent of every session's cancel token: cancelled at shutdown.
    pub(crate) shutdown: CancellationToken,
}

impl Hub {
    /// A hub with no nodes yet, recording what nodes hold in `object_sync`.
    pub fn new(config: CloudHubConfig, object_sync: ObjectSync) -> Arc<Self> {
        Arc::new(Hub {
            ctx: OnceLock::new(),
            codec: FrameCodec::new(config.max_frame_len),
            router: Mutex::new(Router::new(
                config.max_streams_per_node,
                proto::stream::frame::DEFAULT_MAX_FRAME_LEN,
            )),
            config,
            nodes: Mutex::new(HashMap::new()),
            connected: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            refusals: Refusals::default(),
            revocation: OnceLock::new(),
            object_sync,
            shutdown: CancellationToken::new(),
        })
    }

    pub(crate) fn set_context(&self, ctx: Context) {
        let _ = self.ctx.set(ctx);
    }

    /// Sets the check that refuses revoked client certificates (the process's PKI keeps
    /// the list); the first one set stays.
    pub fn set_revocation_check(&self, check: RevocationCheck) {
        let _ = self.revocation.set(check);
    }

    /// Why the client certificate `der` is refused as revoked, if it is.
    pub(crate) fn revoked(&self, der: &[u8]) -> Option<String> {
        self.revocation.get().and_then(|check| check(der))
    }

    /// Connections turned away, by reason (register them for `/metrics`).
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// The record of what each node may hold.
    pub fn object_sync(&self) -> &ObjectSync {
        &self.object_sync
    }

    pub(crate) fn config(&self) -> &CloudHubConfig {
        &self.config
    }

    fn node(&self, id: &str) -> Arc<Node> {
        let mut nodes = self.nodes.lock().expect("node map poisoned");
        if let Some(node) = nodes.get(id) {
            return node.clone();
        }
        let node = Arc::new(Node {
            id: id.into(),
            queue: Mutex::new(NodeQueue::default()),
            wake: Arc::new(Notify::new()),
            session: Mutex::new(None),
        });
        nodes.insert(id.into(), node.clone());
        node
    }

    /// Counts across every node.
    pub fn stats(&self) -> HubStats {
        let nodes: Vec<Arc<Node>> = self
            .nodes
            .lock()
            .expect("node map poisoned")
            .values()
            .cloned()
            .collect();
        let mut stats = HubStats {
            nodes: nodes.len(),
            connected: self.connected.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            streams: self.router.lock().expect("router poisoned").stats(),
            ..Default::default()
        };
        for node in nodes {
            let len = node.queue.lock().expect("queue poisoned").len();
            stats.pending += len.pending;
            stats.inflight += len.inflight;
        }
        stats
    }

    /// Takes a message from the bus (resource `node/<id>/...`) into that node's queue.
    /// Object changes are queued for reliable delivery; anything else (replies) goes out
    /// once, and only to a connected node.
    pub fn deliver(&self, msg: Message) {
        self.deliver_all(std::iter::once(msg));
    }

    /// [`Hub::deliver`] for a batch: what the batch does to nodes' holdings is recorded in
    /// one transaction, committed before any of its messages is queued (so none leaves
    /// before its row is written).
    pub fn deliver_all(&self, msgs: impl IntoIterator<Item = Message>) {
        let mut count = 0u64;
        let prepared: Vec<Prepared> = msgs
            .into_iter()
            .filter_map(|mut msg| {
                count += 1;
                self.prepare(&mut msg)
            })
            .collect();
        self.object_sync
            .queued(prepared.iter().filter_map(|p| match &p.what {
                What::Object(_, change) => Some((p.node.id.as_str(), p.rest.as_str(), change)),
                What::Direct(..) => None,
            }));
        for p in prepared {
            self.push(p);
        }
        self.delivered.fetch_add(count, Ordering::Relaxed);
    }

    fn prepare(&self, msg: &mut Message) -> Option<Prepared> {
        let Some((node_id, rest)) = split_node(msg.resource()) else {
            log::warn!(
                "dropping {} for {:?}: the resource must start with node/<nodeID>/",
                msg.operation(),
                msg.resource()
            );
            return None;
        };
        let node = self.node(node_id);
        let rest: CompactString = rest.into();
        msg.route.resource = rest.clone();
        let frame = match encode(&self.codec, msg) {
            Ok(frame) => frame,
            Err(e) => {
                log::error!("cannot encode {} for node {}: {e}", rest, node.id);
                return None;
            }
        };
        let reliable = matches!(
            msg.operation(),
            operation::INSERT | operation::UPDATE | operation::DELETE
        ) && !rest.is_empty();
        let what = match frame {
            WsMessage::Text(text) if reliable => {
                let change = Change {
                    id: msg.header.id.clone(),
                    rv: msg.header.resource_version.clone(),
                    delete: msg.operation() == operation::DELETE,
                };
                What::Object(text, change)
            }
            frame => What::Direct(frame, msg.route.operation.clone()),
        };
        Some(Prepared { node, rest, what })
    }

    fn push(&self, p: Prepared) {
        let Prepared { node, rest, what } = p;
        {
            let mut queue = node.queue.lock().expect("queue poisoned");
            match what {
                What::Object(text, change) => {
                    let out = Outgoing {
                        id: change.id,
                        text,
                        rv: change.rv,
                        delete: change.delete,
                    };
                    queue.push(rest, out);
                }
                What::Direct(frame, _) if self.is_connected(&node) => queue.push_direct(frame),
                What::Direct(_, op) => {
                    log::debug!("node {} is away: dropping a {op} for {rest}", node.id);
                    return;
                }
            }
        }
        node.wake.notify_one();
    }

    fn is_connected(&self, node: &Node) -> bool {
        node.session.lock().expect("session poisoned").is_some()
    }

    /// Makes a new connection the node's session, ending an older one. Refused (with the
    /// reason) when the node limit is reached.
    pub(crate) fn attach(&self, node_id: &str) -> Result<Attached, String> {
        let node = self.node(node_id);
        let cancel = self.shutdown.child_token();
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let mut slot = node.session.lock().expect("session poisoned");
        match slot.take() {
            Some(old) => {
                log::info!("node {node_id}: a new connection replaces the old one");
                old.cancel.cancel();
            }
            None => {
                let limit = self.config.node_limit;
                let admitted =
                    self.connected
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            (n < limit).then_some(n + 1)
                        });
                if admitted.is_err() {
                    return Err(format!("node limit of {limit} connected nodes reached"));
                }
            }
        }
        *slot = Some(SessionSlot {
            generation,
            cancel: cancel.clone(),
        });
        drop(slot);
        node.queue.lock().expect("queue poisoned").reconnect();
        let outbox = Arc::new(Mutex::new(Outbox::new()));
        self.router.lock().expect("router poisoned").attach(
            (node.id.clone(), generation),
            PortTx::Session(outbox.clone(), node.wake.clone()),
        );
        Ok(Attached {
            node,
            generation,
            cancel,
            outbox,
            cut: Arc::default(),
        })
    }

    /// Ends a session's claim. True when it was still the node's session (not replaced),
    /// so the node is now away.
    pub(crate) fn detach(&self, attached: &Attached, why: &str) -> bool {
        self.router
            .lock()
            .expect("router poisoned")
            .detach(&attached.port(), why);
        let mut slot = attached.node.session.lock().expect("session poisoned");
        if slot
            .as_ref()
            .is_some_and(|s| s.generation == attached.generation)
        {
            *slot = None;
            self.connected.fetch_sub(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    /// Relays one stream frame that arrived on port `from` (never waits).
    pub(crate) fn stream_inbound(&self, from: &PortKey, frame: Bytes) {
        self.router
            .lock()
            .expect("router poisoned")
            .inbound(from, frame);
    }

    /// Makes the cloud's mesh module (its lane) the port for streams that leave the edge.
    pub(crate) fn attach_cloud(&self, lane: tokio::sync::mpsc::UnboundedSender<Carriage>) {
        self.router
            .lock()
            .expect("router poisoned")
            .attach(cloud_port(), PortTx::Cloud(lane));
    }

    /// Removes the cloud's port, resetting its streams.
    pub(crate) fn detach_cloud(&self, why: &str) {
        self.router
            .lock()
            .expect("router poisoned")
            .detach(&cloud_port(), why);
    }

    /// Tells edgecontroller that a node's link came up or went down.
    pub(crate) async fn publish_link(&self, node_id: &str, up: bool) {
        let content = if up {
            connection::NODE_CONNECTED
        } else {
            connection::NODE_DISCONNECTED
        };
        let route = Route::new(
            crate::MODULE,
            proto::group::RESOURCE,
            operation::CONNECT,
            format_compact!("node/{node_id}"),
        );
        self.upstream(Message::new(route, content)).await;
        if up && let Some(held) = self.object_sync.held(node_id) {
            // What the node was sent and may hold, for edgecontroller to resync from when
            // the node itself reports nothing (a KubeEdge edgecore never does).
            let route = Route::new(
                crate::MODULE,
                proto::group::RESOURCE,
                operation::SYNCED,
                format_compact!("node/{node_id}"),
            );
            match proto::Content::from_serialize(&held) {
                Ok(content) => {
                    self.upstream(Message::new(route, content)).await;
                }
                Err(e) => log::warn!("cannot hand node {node_id}'s record on: {e}"),
            }
        }
    }

    /// Handles one message a node sent up: keepalives refresh (the caller already did),
    /// ACKs settle the node's queue, anything else goes to edgecontroller with the node
    /// prefix. A request nobody can take is answered with an error at once.
    pub(crate) async fn inbound(&self, node: &Node, mut msg: Message) {
        match msg.operation() {
            operation::KEEPALIVE => return,
            operation::RESPONSE | operation::ERROR => {
                if let Some(parent) = msg.parent_id()
                    && let Some((key, out)) = node.queue.lock().expect("queue poisoned").ack(parent)
                {
                    self.acked.fetch_add(1, Ordering::Relaxed);
                    log::debug!("node {} ACKed {key} at {}", node.id, out.rv);
                    // A refusal settles the queue but is no ACK of holdings: the node may
                    // still hold an older version (or the object it refused to delete),
                    // so the record keeps what it had.
                    if msg.operation() == operation::RESPONSE {
                        let change = Change {
                            id: out.id,
                            rv: out.rv,
                            delete: out.delete,
                        };
                        self.object_sync.acked(&node.id, &key, change);
                    }
                    if msg.operation() == operation::ERROR {
                        log::warn!(
                            "node {} refused {}: {}",
                            node.id,
                            msg.resource(),
                            msg.content.as_str().unwrap_or("(no reason)")
                        );
                    }
                    node.wake.notify_one();
                    return;
                }
            }
            _ => {}
        }
        let refusal = (msg.header.sync || msg.operation() == operation::QUERY).then(|| {
            Message::error_reply(
                &msg,
                "the cloud cannot answer: edgecontroller is not running",
            )
        });
        msg.route.resource = if msg.resource().is_empty() {
            format_compact!("node/{}", node.id)
        } else {
            format_compact!("node/{}/{}", node.id, msg.resource())
        };
        if self.upstream(msg).await {
            return;
        }
        if let Some(reply) = refusal
            && let Ok(text) = reply.to_json()
        {
            node.queue
                .lock()
                .expect("queue poisoned")
                .push_direct(WsMessage::Text(Bytes::from(text)));
            node.wake.notify_one();
        }
    }

    async fn upstream(&self, msg: Message) -> bool {
        let Some(ctx) = self.ctx.get() else {
            return false;
        };
        match ctx.send(UPSTREAM_MODULE, msg).await {
            Ok(()) => true,
            Err(e) => {
                log::debug!("nothing takes node messages: {e}");
                false
            }
        }
    }
}

/// A message from the bus, checked and encoded, ready for its node's queue.
struct Prepared {
    node: Arc<Node>,
    rest: CompactString,
    what: What,
}

enum What {
    /// An object change: its text and what it does to the node's holdings.
    Object(Bytes, Change),
    /// A one-off frame (a reply), and its operation for the log.
    Direct(WsMessage, CompactString),
}

/// Stream payloads (group `mesh`, byte content) go as binary frames, everything else as
/// JSON text, as on the edge side.
fn encode(codec: &FrameCodec, msg: &Message) -> Result<WsMessage, proto::Error> {
    if msg.is_stream_payload() {
        Ok(WsMessage::Binary(codec.encode_to_bytes(msg)?))
    } else {
        Ok(WsMessage::Text(msg.to_json()?.into()))
    }
}

/// The port of the cloud's own mesh.
pub(crate) fn cloud_port() -> PortKey {
    (CompactString::default(), 0)
}

/// Splits `node/<id>[/<rest>]` into the node id and the rest.
fn split_node(resource: &str) -> Option<(&str, &str)> {
    let tail = resource.strip_prefix("node/")?;
    let (id, rest) = tail.split_once('/').unwrap_or((tail, ""));
    valid_node_id(id).then_some((id, rest))
}

/// A node name as Kubernetes allows it (a DNS subdomain): lowercase letters, digits, `-`
/// and `.`, starting and ending with a letter or digit, at most 253 bytes.
pub fn valid_node_id(id: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !id.is_empty()
        && id.len() <= 253
        && edge_ok(id.chars().next())
        && edge_ok(id.chars().last())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_prefix_is_split_and_checked() {
        assert_eq!(
            split_node("node/edge-1/default/service/a"),
            Some(("edge-1", "default/service/a"))
        );
        assert_eq!(split_node("node/edge-1"), Some(("edge-1", "")));
        assert_eq!(split_node("default/service/a"), None);
        assert_eq!(split_node("node//default/service/a"), None);
        assert_eq!(split_node("node/Edge_1/x"), None);
        assert!(!valid_node_id("-a"));
        assert!(valid_node_id("edge-1.example"));
    }

    #[tokio::test]
    async fn node_limit_counts_nodes_not_connections() {
        let hub = Hub::new(
            CloudHubConfig {
                node_limit: 1,
                ..Default::default()
            },
            ObjectSync::open(std::path::Path::new("")).unwrap(),
        );
        let first = hub.attach("a").unwrap();
        let again = hub.attach("a").expect("a replacement is not a new node");
        assert!(first.cancel.is_cancelled());
        assert!(hub.attach("b").unwrap_err().contains("node limit"));
        assert!(
            !hub.detach(&first, "replaced"),
            "replaced sessions do not free a place"
        );
        assert!(hub.detach(&again, "gone"));
        hub.attach("b").unwrap();
    }
}
