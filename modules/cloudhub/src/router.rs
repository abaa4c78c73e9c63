//! The stream router: relays tunnel streams between links (each edge's session, and the
//! cloud's own mesh), so an edge reaches another edge or the cloud through the one link it
//! already keeps.
//!
//! Every link is a *port*. Its far end (the edge, or the cloud mesh) opens streams with odd
//! ids; the router opens the other leg of a stream on the destination port with an even id
//! of its own, so ids stay unique per link whoever opened what. Per stream the router:
//!
//! - **stamps the source**: an `Open` goes on with the node its link authenticated as
//!   `source_node` (empty for the cloud), whatever the edge wrote there;
//! - **routes by destination**: a node that has a link here (or had one: it is an edge
//!   node) gets the stream on its link, reset `node_offline` while it is away; an empty or
//!   unknown node means the cloud, whose mesh dials endpoints outside the edge;
//! - **polices credit**: each leg may send only what the other end granted (the `Open`'s
//!   initial window, then `Window` frames, which are passed through). A leg that sends more
//!   breaks the protocol and the stream is reset both ways. So a port's outbox never holds
//!   more than the windows its own end granted, and a reader that stops reading stalls its
//!   own stream only;
//! - **caps streams per link** (`maxStreamsPerNode`), with a `too_many_streams` reset;
//! - **resets every stream of a link that goes**, at once, towards the other end.
//!
//! Nothing here awaits: a session's read loop hands a frame over and goes on reading.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use compact_str::{CompactString, format_compact};
use proto::stream::{
    Carriage, Outbox, ResetCode, Side, StreamCodec, StreamFrame, StreamId, StreamIdAllocator,
};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

/// A link: the node it belongs to (empty: the cloud's mesh) and which of the node's
/// connections (a replaced connection's streams die with it).
pub type PortKey = (CompactString, u64);

/// Where a port's frames go.
#[derive(Debug, Clone)]
pub enum PortTx {
    /// An edge's session: its outbox, and the notify that wakes its writer.
    Session(Arc<Mutex<Outbox>>, Arc<Notify>),
    /// The cloud's mesh module, on its lane.
    Cloud(UnboundedSender<Carriage>),
}

impl PortTx {
    fn push(&self, frame: Bytes) {
        match self {
            PortTx::Session(outbox, wake) => {
                outbox.lock().expect("outbox poisoned").push(frame);
                wake.notify_one();
            }
            PortTx::Cloud(lane) => {
                let _ = lane.send(Carriage::Frame(frame));
            }
        }
    }

    fn discard(&self, id: u32) {
        if let PortTx::Session(outbox, _) = self {
            outbox.lock().expect("outbox poisoned").discard(id);
        }
    }
}

/// One side of a relayed stream, as seen from its port.
#[derive(Debug)]
struct Leg {
    peer: PortKey,
    peer_id: u32,
    /// Bytes this port's end may still send (granted by the peer's end).
    credit: u32,
    /// This port's end sent its Fin.
    fin: bool,
}

#[derive(Debug)]
struct Port {
    tx: PortTx,
    legs: HashMap<u32, Leg>,
    /// Ids of the legs the router opened on this link (even).
    ids: StreamIdAllocator,
}

/// Counts of the router since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Streams relayed now.
    pub open: usize,
    /// Streams opened since start.
    pub opened: u64,
    /// Streams refused or reset by the router itself (routing, limits, protocol, link loss).
    pub reset: u64,
    /// Data bytes relayed.
    pub bytes: u64,
    /// Frames dropped because their stream was already gone.
    pub stale: u64,
}

/// Every port and stream of the hub.
#[derive(Debug)]
pub struct Router {
    ports: HashMap<PortKey, Port>,
    /// The live connection of each node.
    live: HashMap<CompactString, u64>,
    /// Nodes that ever connected: edge nodes, whose streams never go to the cloud.
    known: HashSet<CompactString>,
    max_streams: usize,
    codec: StreamCodec,
    stats: StreamStats,
}

impl Router {
    /// A router allowing `max_streams` streams per link, frames up to `max_frame_len`.
    pub fn new(max_streams: usize, max_frame_len: usize) -> Self {
        Router {
            ports: HashMap::new(),
            live: HashMap::new(),
            known: HashSet::new(),
            max_streams: max_streams.max(1),
            codec: StreamCodec::new(max_frame_len),
            stats: StreamStats::default(),
        }
    }

    /// Counts since start.
    pub fn stats(&self) -> StreamStats {
        StreamStats {
            open: self.ports.values().map(|p| p.legs.len()).sum::<usize>() / 2,
            ..self.stats
        }
    }

    /// Adds a link. A node's link also marks it an edge node for good.
    pub fn attach(&mut self, key: PortKey, tx: PortTx) {
        if !key.0.is_empty() {
            self.known.insert(key.0.clone());
            self.live.insert(key.0.clone(), key.1);
        }
        self.ports.insert(
            key,
            Port {
                tx,
                legs: HashMap::new(),
                ids: StreamIdAllocator::new(Side::Cloud, self.max_streams),
            },
        );
    }

    /// Removes a link and resets every stream it carried towards the other end.
    pub fn detach(&mut self, key: &PortKey, why: &str) {
        if self.live.get(&key.0) == Some(&key.1) {
            self.live.remove(&key.0);
        }
        let Some(port) = self.ports.remove(key) else {
            return;
        };
        let who = if key.0.is_empty() {
            "the cloud".into()
        } else {
            format_compact!("node {}", key.0)
        };
        let reason = format_compact!("the link to {who} was lost: {why}");
        for leg in port.legs.into_values() {
            self.stats.reset += 1;
            self.reset_peer_side(&leg.peer, leg.peer_id, ResetCode::NodeOffline, &reason);
        }
    }

    /// Takes one frame that arrived from port `from`.
    pub fn inbound(&mut self, from: &PortKey, frame: Bytes) {
        let Some((id, kind)) = proto::stream::peek(&frame) else {
            return;
        };
        if !self.ports.contains_key(from) {
            return;
        }
        match kind {
            1 => self.open(from, frame),
            2 => self.data(from, id, frame),
            3 => self.fin(from, id, frame),
            4 => self.reset(from, id, frame),
            5 => self.window(from, id, frame),
            _ => {
                // The codec refuses unknown kinds; a frame it would refuse is dropped.
                self.stats.stale += 1;
            }
        }
    }

    fn open(&mut self, from: &PortKey, frame: Bytes) {
        let (id, mut open) = match self.codec.decode_frame(frame) {
            Ok(StreamFrame::Open { id, open }) => (id, open),
            Ok(_) => return,
            Err(e) => {
                log::warn!("{}: malformed stream open dropped: {e}", who(from));
                return;
            }
        };
        let what = format_compact!("{}/{} ({})", open.namespace, open.name, open.endpoint);
        let refuse = |router: &mut Router, code: ResetCode, reason: &str| {
            router.stats.reset += 1;
            log::info!(
                "stream {} from {} to {what} refused: {reason}",
                id.get(),
                who(from),
            );
            router.send_reset(from, id.get(), code, reason);
        };
        let port = self.ports.get(from).expect("checked by inbound");
        if id.opener() != Side::Edge || port.legs.contains_key(&id.get()) {
            return refuse(
                self,
                ResetCode::ProtocolError,
                "a link's end opens new odd stream ids",
            );
        }
        if port.legs.len() >= self.max_streams {
            let reason = format!("the link carries its limit of {} streams", self.max_streams);
            return refuse(self, ResetCode::TooManyStreams, &reason);
        }
        let dest: PortKey = if !open.dest_node.is_empty() && self.known.contains(&open.dest_node) {
            match self.live.get(&open.dest_node) {
                Some(generation) => (open.dest_node.clone(), *generation),
                None => {
                    let reason = format!("node {} is not connected", open.dest_node);
                    return refuse(self, ResetCode::NodeOffline, &reason);
                }
            }
        } else {
            (CompactString::default(), 0)
        };
        let Some(dest_port) = self.ports.get_mut(&dest) else {
            return refuse(
                self,
                ResetCode::Refused,
                "cloudcore runs no mesh to dial endpoints outside the edge",
            );
        };
        let Some(peer_id) = dest_port.ids.allocate() else {
            return refuse(
                self,
                ResetCode::TooManyStreams,
                "the destination's link carries its limit of streams",
            );
        };
        open.source_node = from.0.clone();
        let initial = open.initial_window;
        let forwarded = StreamFrame::Open { id: peer_id, open };
        let encoded = match self.codec.encode_to_bytes(&forwarded) {
            Ok(encoded) => encoded,
            Err(e) => {
                self.ports.get_mut(&dest).map(|p| p.ids.release(peer_id));
                return refuse(self, ResetCode::ProtocolError, &e.to_string());
            }
        };
        let dest_port = self.ports.get_mut(&dest).expect("looked up above");
        dest_port.legs.insert(
            peer_id.get(),
            Leg {
                peer: from.clone(),
                peer_id: id.get(),
                credit: initial,
                fin: false,
            },
        );
        dest_port.tx.push(encoded);
        self.ports.get_mut(from).expect("checked").legs.insert(
            id.get(),
            Leg {
                peer: dest,
                peer_id: peer_id.get(),
                credit: 0,
                fin: false,
            },
        );
        self.stats.opened += 1;
    }

    fn data(&mut self, from: &PortKey, id: u32, frame: Bytes) {
        let len = frame.len() - proto::stream::HEADER_LEN;
        let Some(leg) = self.ports.get_mut(from).and_then(|p| p.legs.get_mut(&id)) else {
            self.stats.stale += 1;
            return;
        };
        if len > leg.credit as usize || leg.fin {
            let why = if leg.fin {
                "data after fin"
            } else {
                "data beyond the granted window"
            };
            return self.violation(from, id, why);
        }
        leg.credit -= len as u32;
        let (peer, peer_id) = (leg.peer.clone(), leg.peer_id);
        self.stats.bytes += len as u64;
        self.forward(&peer, peer_id, frame);
    }

    fn fin(&mut self, from: &PortKey, id: u32, frame: Bytes) {
        let Some(leg) = self.ports.get_mut(from).and_then(|p| p.legs.get_mut(&id)) else {
            self.stats.stale += 1;
            return;
        };
        leg.fin = true;
        let (peer, peer_id) = (leg.peer.clone(), leg.peer_id);
        self.forward(&peer, peer_id, frame);
        let peer_fin = self
            .ports
            .get(&peer)
            .and_then(|p| p.legs.get(&peer_id))
            .is_none_or(|l| l.fin);
        if peer_fin {
            self.remove(from, id);
        }
    }

    fn reset(&mut self, from: &PortKey, id: u32, frame: Bytes) {
        let Some(leg) = self.ports.get(from).and_then(|p| p.legs.get(&id)) else {
            self.stats.stale += 1;
            return;
        };
        let (peer, peer_id) = (leg.peer.clone(), leg.peer_id);
        self.forward(&peer, peer_id, frame);
        // What was still queued towards the end that gave up is for nobody now.
        if let Some(port) = self.ports.get(from) {
            port.tx.discard(id);
        }
        self.remove(from, id);
    }

    fn window(&mut self, from: &PortKey, id: u32, frame: Bytes) {
        let Ok(StreamFrame::Window { increment, .. }) = self.codec.decode_frame(frame.clone())
        else {
            return self.violation(from, id, "malformed window update");
        };
        let Some(leg) = self.ports.get(from).and_then(|p| p.legs.get(&id)) else {
            self.stats.stale += 1;
            return;
        };
        let (peer, peer_id) = (leg.peer.clone(), leg.peer_id);
        let Some(peer_leg) = self
            .ports
            .get_mut(&peer)
            .and_then(|p| p.legs.get_mut(&peer_id))
        else {
            return;
        };
        match peer_leg.credit.checked_add(increment) {
            Some(credit) if credit <= proto::stream::MAX_WINDOW => peer_leg.credit = credit,
            _ => return self.violation(from, id, "window grown past 2^31-1"),
        }
        self.forward(&peer, peer_id, frame);
    }

    /// A protocol violation by `from` on stream `id`: reset both ways.
    fn violation(&mut self, from: &PortKey, id: u32, why: &str) {
        log::warn!("{} broke stream {id}: {why}", who(from));
        self.stats.reset += 1;
        if let Some(leg) = self.ports.get(from).and_then(|p| p.legs.get(&id)) {
            let (peer, peer_id) = (leg.peer.clone(), leg.peer_id);
            self.reset_peer_side(&peer, peer_id, ResetCode::ProtocolError, why);
        }
        self.send_reset(from, id, ResetCode::ProtocolError, why);
        self.remove(from, id);
    }

    /// Resets stream `peer_id` of port `peer` and forgets its leg (whose peer is gone).
    fn reset_peer_side(&mut self, peer: &PortKey, peer_id: u32, code: ResetCode, why: &str) {
        if let Some(port) = self.ports.get_mut(peer) {
            port.legs.remove(&peer_id);
            if let Some(id) = StreamId::new(peer_id) {
                port.ids.release(id);
            }
            port.tx.discard(peer_id);
        }
        self.send_reset(peer, peer_id, code, why);
    }

    fn send_reset(&self, to: &PortKey, id: u32, code: ResetCode, why: &str) {
        let (Some(port), Some(id)) = (self.ports.get(to), StreamId::new(id)) else {
            return;
        };
        let frame = StreamFrame::Reset {
            id,
            code,
            reason: why.into(),
        };
        if let Ok(encoded) = self.codec.encode_to_bytes(&frame) {
            port.tx.push(encoded);
        }
    }

    /// Passes `frame` to the peer with the peer's id for the stream.
    fn forward(&self, peer: &PortKey, peer_id: u32, frame: Bytes) {
        let Some(port) = self.ports.get(peer) else {
            return;
        };
        let mut frame = BytesMut::from(frame);
        frame[4..8].copy_from_slice(&peer_id.to_be_bytes());
        port.tx.push(frame.freeze());
    }

    /// Forgets both legs of the stream `id` of `from`.
    fn remove(&mut self, from: &PortKey, id: u32) {
        let Some(leg) = self.ports.get_mut(from).and_then(|p| p.legs.remove(&id)) else {
            return;
        };
        if let Some(sid) = StreamId::new(id) {
            self.ports.get_mut(from).map(|p| p.ids.release(sid));
        }
        if let Some(port) = self.ports.get_mut(&leg.peer) {
            port.legs.remove(&leg.peer_id);
            if let Some(sid) = StreamId::new(leg.peer_id) {
                port.ids.release(sid);
            }
        }
    }
}

fn who(key: &PortKey) -> CompactString {
    if key.0.is_empty() {
        "the cloud mesh".into()
    } else {
        format_compact!("node {}", key.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::stream::{Open, ProtocolHint};

    fn session() -> (PortTx, Arc<Mutex<Outbox>>) {
        let outbox = Arc::new(Mutex::new(Outbox::new()));
        (
            PortTx::Session(outbox.clone(), Arc::new(Notify::new())),
            outbox,
        )
    }

    fn drain(outbox: &Arc<Mutex<Outbox>>) -> Vec<StreamFrame> {
        let codec = StreamCodec::default();
        let mut out = outbox.lock().unwrap();
        std::iter::from_fn(|| out.pop())
            .map(|f| codec.decode_frame(f).unwrap())
            .collect()
    }

    fn enc(frame: StreamFrame) -> Bytes {
        StreamCodec::default().encode_to_bytes(&frame).unwrap()
    }

    fn open(id: u32, dest: &str, source: &str) -> Bytes {
        enc(StreamFrame::Open {
            id: StreamId::new(id).unwrap(),
            open: Box::new(Open {
                dest_node: dest.into(),
                source_node: source.into(),
                namespace: "default".into(),
                name: "web".into(),
                port: 80,
                endpoint: "10.0.0.2:8080".parse().unwrap(),
                protocol: ProtocolHint::Tcp,
                initial_window: 100,
            }),
        })
    }

    fn sid(id: u32) -> StreamId {
        StreamId::new(id).unwrap()
    }

    fn data(id: u32, n: usize) -> Bytes {
        enc(StreamFrame::Data {
            id: sid(id),
            payload: Bytes::from(vec![7u8; n]),
        })
    }

    fn two_nodes() -> (
        Router,
        PortKey,
        PortKey,
        Arc<Mutex<Outbox>>,
        Arc<Mutex<Outbox>>,
    ) {
        let mut router = Router::new(4, 1 << 16);
        let (a, b): (PortKey, PortKey) = (("a".into(), 1), ("b".into(), 2));
        let (tx_a, out_a) = session();
        let (tx_b, out_b) = session();
        router.attach(a.clone(), tx_a);
        router.attach(b.clone(), tx_b);
        (router, a, b, out_a, out_b)
    }

    #[test]
    fn an_open_is_stamped_with_its_source_and_relayed_with_credit() {
        let (mut router, a, b, out_a, out_b) = two_nodes();
        router.inbound(&a, open(1, "b", "forged"));
        let got = drain(&out_b);
        let StreamFrame::Open { id, open } = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(open.source_node, "a", "the hub's stamp, not the edge's");
        assert_eq!(id.opener(), Side::Cloud);
        let b_id = id.get();
        // B may send 100 bytes (A's initial window) and A nothing until B grants.
        router.inbound(&b, data(b_id, 100));
        assert!(
            matches!(&drain(&out_a)[..], [StreamFrame::Data { id, payload }] if id.get() == 1 && payload.len() == 100)
        );
        router.inbound(&a, data(1, 1));
        let refused = drain(&out_a);
        assert!(
            matches!(
                &refused[..],
                [StreamFrame::Reset {
                    code: ResetCode::ProtocolError,
                    ..
                }]
            ),
            "{refused:?}"
        );
        assert!(matches!(&drain(&out_b)[..], [StreamFrame::Reset { .. }]));
        assert_eq!(router.stats().open, 0);
    }

    #[test]
    fn windows_pass_through_and_grant_credit() {
        let (mut router, a, b, out_a, out_b) = two_nodes();
        router.inbound(&a, open(1, "b", ""));
        let b_id = drain(&out_b)[0].id().get();
        router.inbound(
            &b,
            enc(StreamFrame::Window {
                id: sid(b_id),
                increment: 50,
            }),
        );
        assert!(matches!(
            &drain(&out_a)[..],
            [StreamFrame::Window { increment: 50, .. }]
        ));
        router.inbound(&a, data(1, 50));
        assert_eq!(drain(&out_b).len(), 1);
        router.inbound(&a, enc(StreamFrame::Fin { id: sid(1) }));
        router.inbound(&b, enc(StreamFrame::Fin { id: sid(b_id) }));
        assert_eq!(router.stats().open, 0, "both fins end the stream");
        assert_eq!(router.stats().bytes, 50);
    }

    #[test]
    fn offline_nodes_limits_and_lost_links_reset_at_once() {
        let (mut router, a, b, out_a, out_b) = two_nodes();
        router.detach(&b, "gone");
        router.inbound(&a, open(1, "b", ""));
        assert!(matches!(
            &drain(&out_a)[..],
            [StreamFrame::Reset {
                code: ResetCode::NodeOffline,
                ..
            }]
        ));
        // Unknown node and no cloud mesh: refused, not hung.
        router.inbound(&a, open(3, "cloud-node", ""));
        assert!(matches!(
            &drain(&out_a)[..],
            [StreamFrame::Reset {
                code: ResetCode::Refused,
                ..
            }]
        ));
        let (tx_b, _) = session();
        let b2: PortKey = ("b".into(), 3);
        router.attach(b2.clone(), tx_b);
        for id in [5, 7, 9, 11] {
            router.inbound(&a, open(id, "b", ""));
        }
        router.inbound(&a, open(13, "b", ""));
        let frames = drain(&out_a);
        assert!(
            matches!(
                &frames[..],
                [StreamFrame::Reset {
                    code: ResetCode::TooManyStreams,
                    ..
                }]
            ),
            "{frames:?}"
        );
        router.detach(&b2, "link cut");
        let resets = drain(&out_a);
        assert_eq!(resets.len(), 4);
        assert!(resets.iter().all(|f| matches!(
            f,
            StreamFrame::Reset {
                code: ResetCode::NodeOffline,
                ..
            }
        )));
        assert_eq!(router.stats().open, 0);
        let _ = (b, out_b);
    }

    #[test]
    fn the_cloud_port_takes_streams_for_nodes_that_are_not_edges() {
        let (mut router, a, _, out_a, _) = two_nodes();
        let (lane, mut cloud) = tokio::sync::mpsc::unbounded_channel();
        router.attach((CompactString::default(), 0), PortTx::Cloud(lane));
        router.inbound(&a, open(1, "master-1", ""));
        router.inbound(&a, open(3, "", ""));
        for _ in 0..2 {
            let Ok(Carriage::Frame(f)) = cloud.try_recv() else {
                panic!("an open for the cloud")
            };
            let StreamFrame::Open { open, .. } = StreamCodec::default().decode_frame(f).unwrap()
            else {
                panic!()
            };
            assert_eq!(open.source_node, "a");
        }
        assert!(drain(&out_a).is_empty());
    }
}
