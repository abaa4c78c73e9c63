//! Reads whole messages from a byte stream: frames parsed in place, payloads sliced out
//! of the read buffer, fragments joined.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::frame::{self, MAX_HEADER_LEN};
use super::{CloseFrame, Role, WsMessage, mask, opcode};
use crate::{Error, Result};

/// Spare room below which a read first reserves a new chunk.
const MIN_SPARE: usize = 4096;

/// Payloads at least this long are read into a buffer of their own.
const OWN_BUFFER_MIN: usize = 64 * 1024;

/// A large frame being read into a buffer of its own: once frozen its payload is the only
/// owner of its memory, so a relay that rewrites a few bytes of it in place (cloudhub's
/// router, giving a stream frame the id of the other link) does so without copying it all,
/// and it pins no read buffer behind it.
#[derive(Debug)]
struct Own {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: usize,
    payload: BytesMut,
}

/// A message whose first fragments have arrived.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: BytesMut,
}

/// Turns what a peer sends into [`WsMessage`]s.
///
/// Cancel-safe: a frame is taken out of the buffer only when it is whole, so a read that
/// is dropped (a timeout, a `select!`) loses nothing.
#[derive(Debug)]
pub struct FrameReader {
    role: Role,
    buf: BytesMut,
    /// Spare room asked for before each read.
    chunk: usize,
    /// Largest message (and frame) taken.
    max_message: usize,
    partial: Option<Partial>,
    own: Option<Own>,
    /// Bytes the frame at the head of `buf` needs in all (header and payload), once known.
    want: usize,
}

impl FrameReader {
    /// A reader for `role`'s end that reads `chunk` bytes at a time, refuses messages over
    /// `max_message` bytes and starts with the bytes `leftover` from the handshake.
    pub fn new(role: Role, chunk: usize, max_message: usize, leftover: BytesMut) -> Self {
        Self {
            role,
            buf: leftover,
            chunk: chunk.max(MAX_HEADER_LEN),
            max_message,
            partial: None,
            own: None,
            want: 0,
        }
    }

    /// The next message or control frame; `None` when the peer closed the stream between
    /// frames.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<Option<WsMessage>> {
        loop {
            if let Some(own) = &mut self.own {
                let room = own.len - own.payload.len();
                if room > 0 {
                    if io.read_buf(&mut (&mut own.payload).limit(room)).await? == 0 {
                        return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    continue;
                }
                let mut own = self.own.take().expect("matched above");
                if let Some(key) = own.mask {
                    mask::apply(&mut own.payload, key);
                }
                match self.take(own.fin, own.opcode, own.payload)? {
                    Some(msg) => return Ok(Some(msg)),
                    None => continue,
                }
            }
            if let Some(msg) = self.parse()? {
                return Ok(Some(msg));
            }
            if self.own.is_some() {
                continue;
            }
            // Room for the whole frame when its size is known, so its payload is one slice;
            // otherwise a chunk, but only once the spare room runs low: the buffer is shared
            // with payloads still on their way, so each reserve may allocate afresh (and a
            // fresh large block costs page faults), which a read per small frame would do.
            let missing = self.want.saturating_sub(self.buf.len());
            let spare = self.buf.capacity() - self.buf.len();
            if spare < missing.max(MIN_SPARE) {
                self.buf.reserve(missing.max(self.chunk));
            }
            if io.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() && self.partial.is_none() && self.own.is_none() {
                    return Ok(None);
                }
                return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Takes whole frames from the buffer until one completes a message.
    fn parse(&mut self) -> Result<Option<WsMessage>> {
        loop {
            let Some((header_len, header)) = frame::parse(&self.buf)? else {
                self.want = 0;
                return Ok(None);
            };
            let joined = self.partial.as_ref().map_or(0, |p| p.data.len() as u64);
            if header.len.saturating_add(joined) > self.max_message as u64 {
                return Err(Error::FrameTooLarge {
                    size: usize::try_from(header.len.saturating_add(joined)).unwrap_or(usize::MAX),
                    max: self.max_message,
                });
            }
            match (self.role, header.mask) {
                (Role::Server, None) => {
                    return Err(Error::WsProtocol("a client sent an unmasked frame"));
                }
                (Role::Client, Some(_)) => {
                    return Err(Error::WsProtocol("a server sent a masked frame"));
                }
                _ => {}
            }
            let len = header.len as usize;
            self.want = header_len + len;
            if self.buf.len() < self.want {
                if len >= OWN_BUFFER_MIN {
                    // What is buffered is all of this frame: it moves to the frame's own
                    // buffer and the rest is read there.
                    self.buf.advance(header_len);
                    let mut payload = BytesMut::with_capacity(len);
                    payload.extend_from_slice(&self.buf);
                    self.buf.clear();
                    self.want = 0;
                    self.own = Some(Own {
                        fin: header.fin,
                        opcode: header.opcode,
                        mask: header.mask,
                        len,
                        payload,
                    });
                }
                return Ok(None);
            }
            self.buf.advance(header_len);
            let mut payload = self.buf.split_to(len);
            self.want = 0;
            if let Some(key) = header.mask {
                mask::apply(&mut payload, key);
            }
            if let Some(msg) = self.take(header.fin, header.opcode, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Makes a message of one frame's payload, or keeps it as a fragment.
    fn take(&mut self, fin: bool, op: u8, payload: BytesMut) -> Result<Option<WsMessage>> {
        let whole = match op {
            opcode::TEXT | opcode::BINARY => {
                if self.partial.is_some() {
                    return Err(Error::WsProtocol(
                        "a new message began before the fragmented one ended",
                    ));
                }
                if !fin {
                    self.partial = Some(Partial {
                        text: op == opcode::TEXT,
                        data: payload,
                    });
                    return Ok(None);
                }
                (op == opcode::TEXT, payload.freeze())
            }
            opcode::CONTINUATION => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(Error::WsProtocol("a continuation frame with no message"));
                };
                partial.data.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let partial = self.partial.take().expect("checked above");
                (partial.text, partial.data.freeze())
            }
            opcode::PING => return Ok(Some(WsMessage::Ping(payload.freeze()))),
            opcode::PONG => return Ok(Some(WsMessage::Pong(payload.freeze()))),
            _ => return close_frame(&payload).map(|f| Some(WsMessage::Close(f))),
        };
        match whole {
            (true, text) => {
                if std::str::from_utf8(&text).is_err() {
                    return Err(Error::WsInvalidText);
                }
                Ok(Some(WsMessage::Text(text)))
            }
            (false, data) => Ok(Some(WsMessage::Binary(data))),
        }
    }
}

/// The status a close frame carries (RFC 6455 §5.5.1).
fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame>> {
    match payload {
        [] => Ok(None),
        [_] => Err(Error::WsProtocol("a close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let reason = std::str::from_utf8(reason).map_err(|_| Error::WsInvalidText)?;
            Ok(Some(CloseFrame {
                code: u16::from_be_bytes([*hi, *lo]),
                reason: reason.to_owned(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A frame as a peer of `from` would send it.
    fn frame(fin: bool, op: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | op];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut body = payload.to_vec();
        if masked {
            let key = [9, 8, 7, 6];
            out.extend_from_slice(&key);
            mask::apply(&mut body, key);
        }
        out.extend_from_slice(&body);
        out
    }

    async fn read_all(role: Role, wire: &[u8], chunk: usize) -> Vec<Result<WsMessage>> {
        // A reader that hands over at most three bytes per read, so every frame arrives
        // in pieces.
        let (mut tx, mut rx) = tokio::io::duplex(3);
        let wire = wire.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&wire).await.unwrap();
        });
        let mut reader = FrameReader::new(role, chunk, 1 << 20, BytesMut::new());
        let mut out = Vec::new();
        loop {
            match reader.next(&mut rx).await {
                Ok(Some(msg)) => out.push(Ok(msg)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    break;
                }
            }
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn fragments_and_interleaved_control_frames() {
        let mut wire = frame(false, opcode::TEXT, b"Hel", false);
        wire.extend(frame(true, opcode::PING, b"p", false));
        wire.extend(frame(false, opcode::CONTINUATION, b"lo, ", false));
        wire.extend(frame(true, opcode::CONTINUATION, "wörld".as_bytes(), false));
        wire.extend(frame(true, opcode::BINARY, &[7; 70_000], false));
        wire.extend(frame(true, opcode::CLOSE, b"\x03\xe8bye", false));
        let got: Vec<WsMessage> = read_all(Role::Client, &wire, 16)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            got,
            vec![
                WsMessage::Ping(Bytes::from_static(b"p")),
                WsMessage::Text(Bytes::from("Hello, wörld")),
                WsMessage::Binary(Bytes::from(vec![7; 70_000])),
                WsMessage::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "bye".into()
                })),
            ]
        );
    }

    #[tokio::test]
    async fn a_server_unmasks_what_a_client_sent() {
        let wire = frame(true, opcode::BINARY, b"masked payload", true);
        let got = read_all(Role::Server, &wire, 4096).await;
        assert_eq!(
            got[0].as_ref().unwrap(),
            &WsMessage::Binary(Bytes::from_static(b"masked payload"))
        );
    }

    #[tokio::test]
    async fn protocol_breaches_end_reading() {
        let cases: Vec<(Role, Vec<u8>)> = vec![
            (Role::Server, frame(true, opcode::BINARY, b"x", false)),
            (Role::Client, frame(true, opcode::BINARY, b"x", true)),
            (Role::Client, frame(true, opcode::CONTINUATION, b"x", false)),
            (Role::Client, {
                let mut w = frame(false, opcode::TEXT, b"a", false);
                w.extend(frame(true, opcode::BINARY, b"b", false));
                w
            }),
            (
                Role::Client,
                frame(true, opcode::TEXT, &[0xff, 0xfe], false),
            ),
            (Role::Client, frame(true, opcode::CLOSE, &[3], false)),
        ];
        for (role, wire) in cases {
            let got = read_all(role, &wire, 64).await;
            assert!(
                matches!(
                    got.last(),
                    Some(Err(Error::WsProtocol(_) | Error::WsInvalidText))
                ),
                "{wire:02x?} as {role:?}: {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_messages_are_refused_before_they_are_read() {
        let mut reader = FrameReader::new(Role::Client, 64, 1000, BytesMut::new());
        // Only the header of a 1 MiB frame: the refusal does not wait for the payload.
        let wire = &frame(true, opcode::BINARY, &[0; 1 << 20], false)[..10];
        let mut io = wire;
        let err = reader.next(&mut io).await.unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLarge { max: 1000, .. }),
            "{err}"
        );
        // Fragments count together.
        let mut reader = FrameReader::new(Role::Client, 64, 1000, BytesMut::new());
        let mut wire = frame(false, opcode::BINARY, &[0; 600], false);
        wire.extend(frame(true, opcode::CONTINUATION, &[0; 600], false));
        let err = reader.next(&mut wire.as_slice()).await.unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLarge { size: 1200, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_an_error_and_between_frames_is_not() {
        let wire = frame(true, opcode::BINARY, b"whole", false);
        let got = read_all(Role::Client, &wire, 64).await;
        assert_eq!(got.len(), 1);
        let got = read_all(Role::Client, &wire[..4], 64).await;
        assert!(matches!(got[..], [Err(Error::Io(_))]), "{got:?}");
    }

    #[tokio::test]
    async fn small_frames_read_apart_share_one_buffer_while_their_payloads_live() {
        let (mut tx, mut rx) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(Role::Client, 64 * 1024, 1 << 20, BytesMut::new());
        let mut held = Vec::new();
        for i in 0..20u8 {
            use tokio::io::AsyncWriteExt;
            // One frame per read: each is written only after the one before was read.
            tx.write_all(&frame(true, opcode::BINARY, &[i; 5], false))
                .await
                .unwrap();
            match reader.next(&mut rx).await.unwrap() {
                Some(WsMessage::Binary(payload)) => held.push(payload),
                other => panic!("{other:?}"),
            }
        }
        // Each payload sits right behind the one before (and its 2-byte header): no
        // allocation per read.
        for pair in held.windows(2) {
            assert_eq!(pair[1].as_ptr() as usize, pair[0].as_ptr() as usize + 5 + 2);
        }
    }

    #[tokio::test]
    async fn a_large_payload_owns_its_memory_so_a_relay_can_rewrite_it_in_place() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        for (role, masked) in [(Role::Client, false), (Role::Server, true)] {
            let mut wire = frame(true, opcode::BINARY, b"small", masked);
            wire.extend(frame(true, opcode::BINARY, &data, masked));
            wire.extend(frame(true, opcode::TEXT, b"after", masked));
            let got: Vec<WsMessage> = read_all(role, &wire, 4096)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(got.len(), 3);
            assert_eq!(got[2], WsMessage::Text(Bytes::from_static(b"after")));
            let WsMessage::Binary(big) = got[1].clone() else {
                panic!("{:?}", got[1]);
            };
            assert_eq!(&big[..], &data[..], "as {role:?}");
            drop(got);
            let at = big.as_ptr();
            assert_eq!(
                BytesMut::from(big).as_ptr(),
                at,
                "copied to be made mutable"
            );
        }
    }

    #[tokio::test]
    async fn bytes_left_by_the_handshake_are_read_first() {
        let wire = frame(true, opcode::TEXT, b"early", false);
        let mut reader = FrameReader::new(Role::Client, 64, 1000, BytesMut::from(&wire[..]));
        let msg = reader.next(&mut tokio::io::empty()).await.unwrap();
        assert_eq!(msg, Some(WsMessage::Text(Bytes::from_static(b"early"))));
    }
}
