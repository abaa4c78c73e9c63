//! One node's outbound queue: coalescing by object, a window of unACKed sends, and resend
//! with backoff up to a ceiling, for as long as the connection lasts.
//!
//! Objects are keyed by their edge resource path (`<ns>/<type>/<name>`). A newer message for
//! a key replaces the queued one in place, so the queue holds at most one message per object
//! however often it changes. Once sent, a message waits in flight for its ACK; a newer
//! version of the same object may be sent meanwhile (the link is ordered, so the edge applies
//! them in order), and the older one is then forgotten rather than resent.
//!
//! Resends never stop while the node is connected: a node that cannot commit (its disk is
//! full) withholds its ACKs and must get everything once it can again, without a reconnect
//! to trigger it. The wait doubles a few times and then stays there, so a node that never
//! ACKs costs one window of resends per ceiling interval.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use compact_str::CompactString;
use proto::MsgId;
use proto::ws::WsMessage;
use tokio::time::Instant;

/// Replies and other one-off messages kept for a connected node, at most.
const DIRECT_LIMIT: usize = 4096;

/// A message ready for the wire: its id and its JSON text.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// `header.msg_id`, which the ACK names as its parent.
    pub id: MsgId,
    /// The serialized message (UTF-8 JSON).
    pub text: Bytes,
    /// The object's resourceVersion in it, recorded when the node ACKs it.
    pub rv: CompactString,
    /// True for a delete.
    pub delete: bool,
}

#[derive(Debug)]
struct Queued {
    seq: u64,
    out: Outgoing,
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    out: Outgoing,
    resends: u32,
    due: Instant,
}

/// The queue of one node. Not thread-safe by itself: the hub keeps it behind a mutex.
#[derive(Debug, Default)]
pub struct NodeQueue {
    /// Keys in send order with the sequence number they were queued under; an entry whose
    /// number no longer matches `pending` is stale and skipped.
    order: VecDeque<(CompactString, u64)>,
    pending: HashMap<CompactString, Queued>,
    inflight: HashMap<CompactString, InFlight>,
    by_id: HashMap<MsgId, CompactString>,
    direct: VecDeque<WsMessage>,
    next_seq: u64,
    next_due: Option<Instant>,
}

/// Sizes of a queue, for stats and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueLen {
    /// Objects waiting to be sent.
    pub pending: usize,
    /// Objects sent and not yet ACKed.
    pub inflight: usize,
}

impl NodeQueue {
    /// Queues the latest message for object `key`, replacing a queued older one in place.
    pub fn push(&mut self, key: CompactString, out: Outgoing) {
        if let Some(queued) = self.pending.get_mut(&key) {
            queued.out = out;
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((key.clone(), seq));
        self.pending.insert(key, Queued { seq, out });
    }

    /// Queues a one-off frame (a reply, tunnel data) to go out before objects; not resent.
    pub fn push_direct(&mut self, frame: WsMessage) {
        if self.direct.len() >= DIRECT_LIMIT {
            log::warn!("dropping the oldest of {DIRECT_LIMIT} unsent replies to a slow node");
            self.direct.pop_front();
        }
        self.direct.push_back(frame);
    }

    /// Marks the object whose message had id `parent` as delivered, and gives back its key
    /// and that message. `None` when no message in flight has that id (an ACK of a
    /// superseded version, or a duplicate).
    pub fn ack(&mut self, parent: &MsgId) -> Option<(CompactString, Outgoing)> {
        let key = self.by_id.remove(parent)?;
        let entry = self.inflight.remove(&key);
        if self.inflight.is_empty() && self.pending.is_empty() {
            self.shrink();
        }
        // by_id and inflight change together, so the entry is there.
        Some((key, entry?.out))
    }

    /// Gives back what a burst (a node's full resync) grew the collections to, so an idle
    /// node costs little however much it was once sent.
    fn shrink(&mut self) {
        const KEEP: usize = 16;
        if self.pending.capacity() > KEEP {
            self.pending.shrink_to(KEEP);
        }
        if self.order.capacity() > KEEP {
            self.order.shrink_to(KEEP);
        }
        if self.inflight.capacity() > KEEP {
            self.inflight.shrink_to(KEEP);
        }
        if self.by_id.capacity() > KEEP {
            self.by_id.shrink_to(KEEP);
        }
        if self.direct.capacity() > KEEP {
            self.direct.shrink_to(KEEP);
        }
    }

    /// What to write now: replies, resends that are due, then new objects while the window
    /// has room. `ack_timeout` is the wait before the first resend; it doubles per resend
    /// for the first `doublings` resends and then stays at `ack_timeout * 2^doublings`.
    pub fn take(
        &mut self,
        now: Instant,
        window: usize,
        ack_timeout: Duration,
        doublings: u32,
    ) -> Vec<WsMessage> {
        let mut out: Vec<WsMessage> = self.direct.drain(..).collect();
        if self.next_due.is_some_and(|due| due <= now) {
            self.next_due = None;
            for entry in self.inflight.values_mut() {
                if entry.due <= now {
                    if entry.resends == doublings {
                        log::debug!(
                            "{} unACKed after {doublings} resends: resending every {:?}",
                            entry.out.id,
                            ack_timeout * 2u32.saturating_pow(doublings)
                        );
                    }
                    entry.resends = entry.resends.saturating_add(1);
                    let step = entry.resends.min(doublings);
                    entry.due = now + ack_timeout * 2u32.saturating_pow(step);
                    out.push(WsMessage::Text(entry.out.text.clone()));
                }
                self.next_due = Some(self.next_due.map_or(entry.due, |d| d.min(entry.due)));
            }
        }
        while self.inflight.len() < window {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.pending.get(&key).is_none_or(|q| q.seq != seq) {
                continue;
            }
            let queued = self.pending.remove(&key).expect("checked above");
            let due = now + ack_timeout;
            self.next_due = Some(self.next_due.map_or(due, |d| d.min(due)));
            out.push(WsMessage::Text(queued.out.text.clone()));
            self.by_id.insert(queued.out.id.clone(), key.clone());
            let entry = InFlight {
                seq: queued.seq,
                out: queued.out,
                resends: 0,
                due,
            };
            if let Some(old) = self.inflight.insert(key, entry) {
                self.by_id.remove(&old.out.id);
            }
        }
        out
    }

    /// When the next resend falls due, if any message waits for its ACK.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_due
    }

    /// Prepares for a new connection: everything unACKed goes back to the front of the
    /// queue (unless a newer version waits there), in its original order, with fresh
    /// resend budgets; replies meant for the old connection are dropped.
    pub fn reconnect(&mut self) {
        let mut unacked: Vec<(CompactString, InFlight)> = self.inflight.drain().collect();
        unacked.sort_by_key(|(_, e)| std::cmp::Reverse(e.seq));
        for (key, entry) in unacked {
            if self.pending.contains_key(&key) {
                continue;
            }
            self.order.push_front((key.clone(), entry.seq));
            self.pending.insert(
                key,
                Queued {
                    seq: entry.seq,
                    out: entry.out,
                },
            );
        }
        self.by_id.clear();
        self.direct.clear();
        self.next_due = None;
    }

    /// Current sizes.
    pub fn len(&self) -> QueueLen {
        QueueLen {
            pending: self.pending.len(),
            inflight: self.inflight.len(),
        }
    }

    /// True when nothing waits to be sent or ACKed.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.inflight.is_empty() && self.direct.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(id: &str) -> Outgoing {
        Outgoing {
            id: MsgId::from(id),
            text: Bytes::from(id.to_owned()),
            rv: id.into(),
            delete: false,
        }
    }

    fn texts(v: Vec<WsMessage>) -> Vec<String> {
        v.into_iter()
            .map(|t| match t {
                WsMessage::Text(t) => String::from_utf8(t.to_vec()).unwrap(),
                other => panic!("not text: {other:?}"),
            })
            .collect()
    }

    const ACK: Duration = Duration::from_secs(1);

    #[test]
    fn newer_version_replaces_queued_one_in_place() {
        let mut q = NodeQueue::default();
        q.push("ns/service/a".into(), out("a1"));
        q.push("ns/service/b".into(), out("b1"));
        q.push("ns/service/a".into(), out("a2"));
        assert_eq!(q.len().pending, 2);
        let now = Instant::now();
        assert_eq!(texts(q.take(now, 10, ACK, 3)), ["a2", "b1"]);
        assert!(q.ack(&MsgId::from("a2")).is_some());
        assert!(
            q.ack(&MsgId::from("a1")).is_none(),
            "never sent, so never ACKed"
        );
        assert_eq!(
            q.len(),
            QueueLen {
                pending: 0,
                inflight: 1
            }
        );
    }

    #[test]
    fn window_limits_unacked_sends() {
        let mut q = NodeQueue::default();
        for i in 0..5 {
            q.push(format!("ns/service/s{i}").into(), out(&format!("m{i}")));
        }
        let now = Instant::now();
        assert_eq!(q.take(now, 2, ACK, 3).len(), 2);
        assert!(q.take(now, 2, ACK, 3).is_empty());
        assert!(q.ack(&MsgId::from("m0")).is_some());
        assert_eq!(texts(q.take(now, 2, ACK, 3)), ["m2"]);
    }

    #[test]
    fn resends_back_off_to_a_ceiling_and_never_stop() {
        let mut q = NodeQueue::default();
        q.push("ns/service/a".into(), out("a1"));
        let t0 = Instant::now();
        assert_eq!(q.take(t0, 10, ACK, 2).len(), 1);
        assert!(q.take(t0 + ACK / 2, 10, ACK, 2).is_empty());
        assert_eq!(texts(q.take(t0 + ACK, 10, ACK, 2)), ["a1"]);
        // The second resend waits twice as long (2 s after the first).
        assert!(q.take(t0 + ACK * 2, 10, ACK, 2).is_empty());
        assert_eq!(q.take(t0 + ACK * 3, 10, ACK, 2).len(), 1);
        // Past two doublings the wait stays at 4 s, however long the node withholds its
        // ACK (a full disk on the edge): resends go on, so no reconnect is needed.
        let mut t = t0 + ACK * 3;
        for _ in 0..10 {
            assert!(q.take(t + ACK * 3, 10, ACK, 2).is_empty());
            t += ACK * 4;
            assert_eq!(texts(q.take(t, 10, ACK, 2)), ["a1"]);
        }
        assert_eq!(q.len().inflight, 1);
        assert!(q.ack(&MsgId::from("a1")).is_some());
        assert!(q.is_empty());
        assert!(q.take(t + ACK * 100, 10, ACK, 2).is_empty());
    }

    #[test]
    fn unacked_sends_still_go_back_to_the_front_on_reconnect() {
        let mut q = NodeQueue::default();
        q.push("ns/service/a".into(), out("a1"));
        let t0 = Instant::now();
        q.take(t0, 10, ACK, 2);
        q.reconnect();
        assert_eq!(texts(q.take(t0, 10, ACK, 2)), ["a1"]);
        assert!(q.ack(&MsgId::from("a1")).is_some());
        assert!(q.is_empty());
    }

    #[test]
    fn sending_a_newer_version_supersedes_the_one_in_flight() {
        let mut q = NodeQueue::default();
        q.push("ns/service/a".into(), out("a1"));
        let now = Instant::now();
        q.take(now, 10, ACK, 3);
        q.push("ns/service/a".into(), out("a2"));
        assert_eq!(texts(q.take(now, 10, ACK, 3)), ["a2"]);
        assert!(q.ack(&MsgId::from("a1")).is_none());
        q.reconnect();
        assert_eq!(
            texts(q.take(now, 10, ACK, 3)),
            ["a2"],
            "only the newest is resent"
        );
        // The ACK gives back the message it settles, for the record of holdings.
        let (key, acked) = q.ack(&MsgId::from("a2")).expect("in flight");
        assert_eq!((key.as_str(), acked.rv.as_str()), ("ns/service/a", "a2"));
    }

    #[test]
    fn reconnect_keeps_order_and_prefers_newer_queued_versions() {
        let mut q = NodeQueue::default();
        for name in ["a", "b", "c"] {
            q.push(
                format!("ns/service/{name}").into(),
                out(&format!("{name}1")),
            );
        }
        let now = Instant::now();
        q.take(now, 2, ACK, 3);
        q.push("ns/service/b".into(), out("b2"));
        q.push_direct(WsMessage::Text(Bytes::from_static(b"reply")));
        q.reconnect();
        assert_eq!(texts(q.take(now, 10, ACK, 3)), ["a1", "c1", "b2"]);
    }
}
