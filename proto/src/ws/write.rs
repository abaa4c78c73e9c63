//! Gathers frames and writes them with as few system calls as fit.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::frame::{self, MAX_HEADER_LEN};
use super::{CloseFrame, Role, WsMessage, mask, opcode};

/// Payloads shorter than this are copied beside their header; longer ones (as a server)
/// are written from where they are.
const COPY_BELOW: usize = 2048;

/// Slices handed to one gathered write (Linux takes up to 1024).
const MAX_SLICES: usize = 64;

/// Longest close reason: a control frame holds 125 bytes, two of them the code.
const MAX_REASON: usize = 123;

/// Frames waiting to be written, in order.
///
/// Headers and small payloads go into an arena; a server's large payloads are queued as
/// the [`Bytes`] they came in, never copied; a client's are masked in place when it holds
/// them alone, else masked while they are copied into the arena (the mask must not touch a
/// buffer others may share).
#[derive(Debug)]
pub struct FrameWriter {
    role: Role,
    arena: BytesMut,
    queue: VecDeque<Bytes>,
    queued: usize,
}

impl FrameWriter {
    /// A writer for `role`'s end.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            arena: BytesMut::new(),
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// Queues `msg` as one frame. A close frame's reason is cut to 123 bytes.
    pub fn push(&mut self, msg: WsMessage) {
        let (op, payload) = match msg {
            WsMessage::Text(b) => (opcode::TEXT, b),
            WsMessage::Binary(b) => (opcode::BINARY, b),
            WsMessage::Ping(b) => (opcode::PING, b),
            WsMessage::Pong(b) => (opcode::PONG, b),
            WsMessage::Close(frame) => (opcode::CLOSE, close_payload(frame)),
        };
        let mask = (self.role == Role::Client).then(rand::random::<[u8; 4]>);
        self.arena.reserve(MAX_HEADER_LEN);
        frame::encode(&mut self.arena, op, mask, payload.len());
        match mask {
            // A payload this writer alone holds (a relayed stream frame, read into a buffer
            // of its own) is masked where it is.
            Some(key) if payload.len() >= COPY_BELOW && payload.is_unique() => {
                let mut owned = payload.try_into_mut().expect("checked unique");
                mask::apply(&mut owned, key);
                self.cut();
                self.queued += owned.len();
                self.queue.push_back(owned.freeze());
            }
            Some(key) => {
                let start = self.arena.len();
                self.arena.extend_from_slice(&payload);
                mask::apply(&mut self.arena[start..], key);
            }
            None if payload.len() < COPY_BELOW => self.arena.put_slice(&payload),
            None => {
                self.cut();
                self.queued += payload.len();
                self.queue.push_back(payload);
            }
        }
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.queued + self.arena.len()
    }

    /// Moves the arena's bytes to the queue (behind what is there).
    fn cut(&mut self) {
        if !self.arena.is_empty() {
            let piece = self.arena.split().freeze();
            self.queued += piece.len();
            self.queue.push_back(piece);
        }
    }

    /// Writes everything queued, then flushes `io`.
    ///
    /// Cancel-safe in that what was written is gone from the queue and the rest stays.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> std::io::Result<()> {
        self.cut();
        while !self.queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .queue
                .iter()
                .take(MAX_SLICES)
                .map(|b| IoSlice::new(b))
                .collect();
            let mut written = io.write_vectored(&slices).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.queued -= written;
            while written > 0 {
                let front = self.queue.front_mut().expect("written bytes were queued");
                if front.len() <= written {
                    written -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        io.flush().await
    }
}

fn close_payload(frame: Option<CloseFrame>) -> Bytes {
    let Some(frame) = frame else {
        return Bytes::new();
    };
    let mut end = frame.reason.len().min(MAX_REASON);
    while !frame.reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = BytesMut::with_capacity(2 + end);
    out.put_u16(frame.code);
    out.put_slice(&frame.reason.as_bytes()[..end]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::super::FrameReader;
    use super::*;

    /// Writes `msgs` as `role` into a pipe that takes at most `pipe` bytes at a time, and
    /// reads them back as the other end.
    async fn through(role: Role, msgs: Vec<WsMessage>, pipe: usize) -> Vec<WsMessage> {
        let (mut a, mut b) = tokio::io::duplex(pipe);
        let n = msgs.len();
        let write = tokio::spawn(async move {
            let mut writer = FrameWriter::new(role);
            for msg in msgs {
                writer.push(msg);
            }
            writer.flush(&mut a).await.unwrap();
            assert_eq!(writer.pending(), 0);
        });
        let peer = match role {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        };
        let mut reader = FrameReader::new(peer, 4096, 1 << 24, BytesMut::new());
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(reader.next(&mut b).await.unwrap().unwrap());
        }
        write.await.unwrap();
        out
    }

    fn sample() -> Vec<WsMessage> {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        vec![
            WsMessage::Text(Bytes::from_static(b"{\"small\":1}")),
            WsMessage::Binary(Bytes::from(big)),
            WsMessage::Ping(Bytes::new()),
            WsMessage::Binary(Bytes::from(vec![1; 5000])),
            WsMessage::Pong(Bytes::from_static(b"pong")),
            WsMessage::Binary(Bytes::from(vec![2; 126])),
            WsMessage::Close(Some(CloseFrame {
                code: 1008,
                reason: "é".repeat(100),
            })),
        ]
    }

    #[tokio::test]
    async fn what_a_server_writes_a_client_reads() {
        let mut want = sample();
        let got = through(Role::Server, sample(), 1000).await;
        // The close reason is cut to 123 bytes, on a character boundary.
        want[6] = WsMessage::Close(Some(CloseFrame {
            code: 1008,
            reason: "é".repeat(61),
        }));
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn what_a_client_writes_is_masked_and_a_server_reads_it() {
        let got = through(Role::Client, sample()[..6].to_vec(), 70_000).await;
        assert_eq!(got, sample()[..6].to_vec());
        // And the payload on the wire is not the plain one.
        let mut writer = FrameWriter::new(Role::Client);
        writer.push(WsMessage::Binary(Bytes::from(vec![0; 64])));
        let mut wire = Vec::new();
        writer.flush(&mut wire).await.unwrap();
        assert_eq!(wire[1], 0x80 | 64);
        assert_ne!(&wire[6..], &[0; 64][..], "a zero key every time?");
    }

    #[tokio::test]
    async fn a_client_masks_a_payload_it_alone_holds_in_place_and_copies_a_shared_one() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
        let alone = Bytes::from(data.clone());
        let at = alone.as_ptr();
        let shared = Bytes::from(data.clone());
        let mut writer = FrameWriter::new(Role::Client);
        writer.push(WsMessage::Binary(alone));
        writer.push(WsMessage::Binary(shared.clone()));
        // header, the payload where it was, then the second header and its masked copy.
        assert_eq!(writer.queue.len(), 2);
        assert_eq!(writer.queue[1].as_ptr(), at);
        assert_eq!(&shared[..], &data[..], "a shared payload is left as it was");
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        writer.flush(&mut a).await.unwrap();
        let mut reader = FrameReader::new(Role::Server, 4096, 1 << 20, BytesMut::new());
        for _ in 0..2 {
            let got = reader.next(&mut b).await.unwrap();
            assert_eq!(got, Some(WsMessage::Binary(Bytes::from(data.clone()))));
        }
    }

    #[tokio::test]
    async fn a_server_shares_large_payloads_rather_than_copying_them() {
        let payload = Bytes::from(vec![3; 100_000]);
        let mut writer = FrameWriter::new(Role::Server);
        writer.push(WsMessage::Binary(payload.clone()));
        writer.push(WsMessage::Binary(payload.clone()));
        // header, payload, header, payload.
        assert_eq!(writer.queue.len(), 4);
        assert_eq!(writer.queue[1].as_ptr(), payload.as_ptr());
        // Eight-byte lengths: 10-byte headers.
        assert_eq!(writer.pending(), 2 * 100_000 + 2 * 10);
    }
}
