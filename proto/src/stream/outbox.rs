//! A link's outgoing stream frames, scheduled fairly: one frame per stream per turn, so a
//! bulk stream never makes a small one wait behind its whole window.
//!
//! Frames of one stream keep their order (Open, Data, Fin must not pass each other), except
//! two kinds that may go first: `Window` (credit for the other direction, which unblocks a
//! sender) and `Reset` (which also discards what the stream still had queued, since nobody
//! will read it).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::frame::{HEADER_LEN, MAGIC};

const KIND_RESET: u8 = 4;
const KIND_WINDOW: u8 = 5;

/// The stream id and kind of an encoded frame, read from its fixed header; `None` when
/// `frame` is too short or not a stream frame.
pub fn peek(frame: &[u8]) -> Option<(u32, u8)> {
    if frame.len() < HEADER_LEN || frame[..2] != MAGIC {
        return None;
    }
    let id = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    Some((id, frame[3]))
}

/// The outgoing frames of one link.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Frames that go before any data: Window and Reset.
    urgent: VecDeque<Bytes>,
    /// Each stream's frames, in order.
    queues: HashMap<u32, VecDeque<Bytes>>,
    /// Streams with queued frames, in turn order.
    ring: VecDeque<u32>,
    bytes: usize,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one encoded frame (a frame without a readable header goes out as urgent,
    /// unscheduled, so nothing is lost).
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        match peek(&frame) {
            Some((id, KIND_RESET)) => {
                if let Some(dropped) = self.queues.remove(&id) {
                    self.bytes -= dropped.iter().map(Bytes::len).sum::<usize>();
                    self.ring.retain(|s| *s != id);
                }
                self.urgent.push_back(frame);
            }
            Some((_, KIND_WINDOW)) | None => self.urgent.push_back(frame),
            Some((id, _)) => {
                let queue = self.queues.entry(id).or_default();
                if queue.is_empty() {
                    self.ring.push_back(id);
                }
                queue.push_back(frame);
            }
        }
    }

    /// The next frame to write: urgent ones first, then one of the next stream in turn.
    pub fn pop(&mut self) -> Option<Bytes> {
        let frame = match self.urgent.pop_front() {
            Some(frame) => frame,
            None => {
                let id = self.ring.pop_front()?;
                let queue = self
                    .queues
                    .get_mut(&id)
                    .expect("a ringed stream has a queue");
                let frame = queue.pop_front().expect("a ringed queue is not empty");
                if queue.is_empty() {
                    self.queues.remove(&id);
                } else {
                    self.ring.push_back(id);
                }
                frame
            }
        };
        self.bytes -= frame.len();
        Some(frame)
    }

    /// Drops every queued frame of stream `id` (its link leg is gone).
    pub fn discard(&mut self, id: u32) {
        if let Some(dropped) = self.queues.remove(&id) {
            self.bytes -= dropped.iter().map(Bytes::len).sum::<usize>();
            self.ring.retain(|s| *s != id);
        }
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.ring.is_empty()
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{ResetCode, StreamCodec, StreamFrame, StreamId};

    fn enc(frame: StreamFrame) -> Bytes {
        StreamCodec::default().encode_to_bytes(&frame).unwrap()
    }
    fn data(id: u32, n: usize) -> Bytes {
        enc(StreamFrame::Data {
            id: StreamId::new(id).unwrap(),
            payload: Bytes::from(vec![b'x'; n]),
        })
    }

    #[test]
    fn streams_take_turns_and_keep_their_own_order() {
        let mut out = Outbox::new();
        for n in 1..=3 {
            out.push(data(1, n));
        }
        out.push(data(3, 10));
        out.push(enc(StreamFrame::Fin {
            id: StreamId::new(3).unwrap(),
        }));
        let order: Vec<(u32, usize)> = std::iter::from_fn(|| out.pop())
            .map(|f| (peek(&f).unwrap().0, f.len() - HEADER_LEN))
            .collect();
        assert_eq!(order, vec![(1, 1), (3, 10), (1, 2), (3, 0), (1, 3)]);
        assert_eq!(out.bytes(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn window_goes_first_and_reset_discards_the_stream() {
        let mut out = Outbox::new();
        out.push(data(1, 100));
        out.push(data(5, 100));
        out.push(enc(StreamFrame::Window {
            id: StreamId::new(7).unwrap(),
            increment: 9,
        }));
        out.push(enc(StreamFrame::Reset {
            id: StreamId::new(1).unwrap(),
            code: ResetCode::Cancelled,
            reason: "gone".into(),
        }));
        let kinds: Vec<(u32, u8)> = std::iter::from_fn(|| out.pop())
            .map(|f| peek(&f).unwrap())
            .collect();
        assert_eq!(kinds, vec![(7, KIND_WINDOW), (1, KIND_RESET), (5, 2)]);
        assert_eq!(out.bytes(), 0);
    }
}
