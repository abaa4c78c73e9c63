//! The stream frame: how tunnel streams travel on the cloud link, many to a link.
//!
//! A frame is one WebSocket binary message (or, on a byte stream, one length-delimited unit).
//! Its first two bytes, "ES", tell it from the message frame ("EM", [`crate::frame`]), so a
//! receiver dispatches on them ([`is_stream_frame`]). All integers are big-endian.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "ES" (0x45 0x53)
//! 2       1     version, 1
//! 3       1     kind: 1 Open, 2 Data, 3 Fin, 4 Reset, 5 Window
//! 4       4     stream id, never 0 (odd: opened by the edge, even: by the cloud)
//! 8       4     body length: bytes after this field (so a frame is 12 + body length bytes)
//! 12      ...   body, by kind:
//!
//! Open    1     protocol hint: 0 opaque TCP, 1 HTTP/1, 2 HTTP/2, 3 UDP datagrams
//!         4     initial window: bytes the acceptor may send before a Window frame, ≤ 2^31-1
//!         2     service port
//!         1     endpoint address family: 4 or 6
//!         4|16  endpoint address (IPv4 or IPv6)
//!         2     endpoint port
//!         1+n   destination node (empty: the cloud)
//!         1+n   source node (empty from an edge; cloudhub stamps it)
//!         1+n   service namespace (not empty)
//!         1+n   service name (not empty)
//!               each name a u8 length then that many bytes: a DNS subdomain as Kubernetes
//!               allows it (lowercase letters, digits, '-', '.', starting and ending with a
//!               letter or digit), at most 253 bytes
//! Data    n     payload: every byte of the body (may be empty)
//! Fin     0     (no body) the sender sends no more data on this stream
//! Reset   1     reason code: 1 forbidden, 2 unknown service, 3 no endpoint, 4 refused
//!               (connect failed), 5 timeout, 6 node offline, 7 too many streams,
//!               8 limited (QPS), 9 protocol error, 10 going away, 11 cancelled
//!         1+n   reason text: a u8 length then that many UTF-8 bytes
//! Window  4     increment in bytes, 1 ..= 2^31-1
//! ```
//!
//! A body must be exactly as long as its fields: trailing bytes are an error, as is any value
//! outside the sets above. A frame larger than the codec's maximum (12 + body length) is
//! refused on both encode and decode, from the fixed header alone and before any allocation.
//! Decoding never panics: truncated, oversized and random input is a typed [`Error`]. On
//! decode a Data payload is a zero-copy slice of the frame's buffer.
//!
//! # Semantics
//!
//! - `Open` asks the receiver to connect the chosen endpoint of the named Service (the receiver
//!   checks the endpoint belongs to the Service: no open relay). The opener's send credit
//!   starts at 0: the acceptor grants its receive window in a `Window` frame once the endpoint
//!   is connected, so that `Window` is also the acceptance, and a `Reset` the refusal.
//! - **Source node**: an edge sends it empty; cloudhub overwrites it with the node the link
//!   authenticated before forwarding the `Open`. A receiver must trust only the hub's stamp —
//!   a source node arriving on an edge's own link is that edge's claim and means nothing.
//! - `Fin` half-closes: the other direction goes on until its own `Fin`. A stream ends when
//!   both `Fin`s have been sent, or on a `Reset` in either direction.
//! - `Window` returns credit for one direction of one stream (see [`super::window`]).
//!
//! Data frames are the hot path: [`StreamCodec::data_header`] gives the 12 header bytes for a
//! payload, and [`StreamCodec::seal_data`] writes them in front of a payload read into a
//! buffer that kept room for them, so a sender never copies the payload.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use compact_str::CompactString;
use tokio_util::codec::{Decoder, Encoder};

use super::id::StreamId;
use super::window::MAX_WINDOW;
use crate::error::{Error, Result};

/// The first two bytes of every stream frame.
pub const MAGIC: [u8; 2] = *b"ES";
/// The layout version this code writes and reads.
pub const VERSION: u8 = 1;
/// Size of the fixed header: magic, version, kind, stream id, body length.
pub const HEADER_LEN: usize = 12;
/// The largest Data payload a default codec accepts: 256 KiB (bulk transfers cost per
/// frame: through three hops 64 KiB frames ran at about half the throughput).
pub const DEFAULT_MAX_DATA_LEN: usize = 256 * 1024;
/// Default limit on a whole frame.
pub const DEFAULT_MAX_FRAME_LEN: usize = HEADER_LEN + DEFAULT_MAX_DATA_LEN;
/// The longest node, namespace or service name (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// The longest Reset text; longer texts are cut (at a character boundary) on encode.
pub const MAX_REASON_LEN: usize = 255;

const KIND_OPEN: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_FIN: u8 = 3;
const KIND_RESET: u8 = 4;
const KIND_WINDOW: u8 = 5;

/// The largest Open body: fixed fields with an IPv6 endpoint, four longest names.
const MAX_OPEN_BODY: usize = 1 + 4 + 2 + 1 + 16 + 2 + 4 * (1 + MAX_NAME_LEN);
/// The largest control frame (Open is the largest); the codec never goes below it.
const MIN_MAX_FRAME_LEN: usize = HEADER_LEN + MAX_OPEN_BODY;

/// True when `buf` starts like a stream frame (rather than a message frame).
pub fn is_stream_frame(buf: &[u8]) -> bool {
    buf.starts_with(&MAGIC)
}

/// What the opener expects to carry, so the acceptor can pick its handling (the bytes are
/// relayed as they come in every case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ProtocolHint {
    /// Any TCP protocol, relayed opaquely.
    Tcp = 0,
    /// HTTP/1.x.
    Http1 = 1,
    /// HTTP/2 (gRPC included).
    Http2 = 2,
    /// UDP datagrams: the Service port is a UDP port, and each Data frame is one datagram,
    /// never split or merged; one that finds no credit is dropped, not queued.
    Datagram = 3,
}

impl ProtocolHint {
    fn from_u8(value: u8) -> Result<Self> {
        Ok(match value {
            0 => ProtocolHint::Tcp,
            1 => ProtocolHint::Http1,
            2 => ProtocolHint::Http2,
            3 => ProtocolHint::Datagram,
            value => {
                return Err(Error::UnknownStreamValue {
                    field: "protocol hint",
                    value,
                });
            }
        })
    }
}

/// Why a stream was reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResetCode {
    /// The opener may not reach this Service (policy, or an endpoint not of the Service).
    Forbidden = 1,
    /// The acceptor knows no such Service.
    UnknownService = 2,
    /// The Service has no usable endpoint.
    NoEndpoint = 3,
    /// Connecting the endpoint failed (refused, unreachable).
    Refused = 4,
    /// Connecting or the stream itself timed out.
    Timeout = 5,
    /// The destination node is not connected.
    NodeOffline = 6,
    /// The link already carries as many streams as allowed.
    TooManyStreams = 7,
    /// The Service's QPS limit refused the stream.
    Limited = 8,
    /// The peer broke the protocol (for instance overran its window).
    ProtocolError = 9,
    /// The sender is shutting down.
    GoingAway = 10,
    /// The stream's user gave up (the client closed).
    Cancelled = 11,
}

impl ResetCode {
    fn from_u8(value: u8) -> Result<Self> {
        Ok(match value {
            1 => ResetCode::Forbidden,
            2 => ResetCode::UnknownService,
            3 => ResetCode::NoEndpoint,
            4 => ResetCode::Refused,
            5 => ResetCode::Timeout,
            6 => ResetCode::NodeOffline,
            7 => ResetCode::TooManyStreams,
            8 => ResetCode::Limited,
            9 => ResetCode::ProtocolError,
            10 => ResetCode::GoingAway,
            11 => ResetCode::Cancelled,
            value => {
                return Err(Error::UnknownStreamValue {
                    field: "reset code",
                    value,
                });
            }
        })
    }

    /// A short name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetCode::Forbidden => "forbidden",
            ResetCode::UnknownService => "unknown_service",
            ResetCode::NoEndpoint => "no_endpoint",
            ResetCode::Refused => "refused",
            ResetCode::Timeout => "timeout",
            ResetCode::NodeOffline => "node_offline",
            ResetCode::TooManyStreams => "too_many_streams",
            ResetCode::Limited => "limited",
            ResetCode::ProtocolError => "protocol_error",
            ResetCode::GoingAway => "going_away",
            ResetCode::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for ResetCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of an Open frame: which Service endpoint to connect, on whose behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// The node that should accept the stream; empty for the cloud.
    pub dest_node: CompactString,
    /// The opening node as cloudhub authenticated it; empty as sent by an edge. Trust it only
    /// on a frame that came through the hub.
    pub source_node: CompactString,
    /// The Service's namespace.
    pub namespace: CompactString,
    /// The Service's name.
    pub name: CompactString,
    /// The Service port the client connected to.
    pub port: u16,
    /// The endpoint the opener chose. IPv6 flow info and scope id are not carried.
    pub endpoint: SocketAddr,
    /// What the stream is expected to carry.
    pub protocol: ProtocolHint,
    /// Bytes the acceptor may send before the opener grants more, ≤ 2^31-1.
    pub initial_window: u32,
}

/// One stream frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamFrame {
    /// Opens stream `id`.
    Open {
        /// The new stream.
        id: StreamId,
        /// What to connect.
        open: Box<Open>,
    },
    /// Stream bytes.
    Data {
        /// The stream.
        id: StreamId,
        /// The bytes; on decode a slice of the frame.
        payload: Bytes,
    },
    /// The sender sends no more data on this stream.
    Fin {
        /// The stream.
        id: StreamId,
    },
    /// The stream is abandoned in both directions.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: ResetCode,
        /// Details for logs, at most 255 bytes on the wire.
        reason: CompactString,
    },
    /// More credit for data on this stream.
    Window {
        /// The stream.
        id: StreamId,
        /// Bytes added, 1 ..= 2^31-1.
        increment: u32,
    },
}

impl StreamFrame {
    /// The stream the frame belongs to.
    pub fn id(&self) -> StreamId {
        match self {
            StreamFrame::Open { id, .. }
            | StreamFrame::Data { id, .. }
            | StreamFrame::Fin { id }
            | StreamFrame::Reset { id, .. }
            | StreamFrame::Window { id, .. } => *id,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            StreamFrame::Open { .. } => KIND_OPEN,
            StreamFrame::Data { .. } => KIND_DATA,
            StreamFrame::Fin { .. } => KIND_FIN,
            StreamFrame::Reset { .. } => KIND_RESET,
            StreamFrame::Window { .. } => KIND_WINDOW,
        }
    }
}

/// Encoder and decoder of stream frames with a maximum frame size.
#[derive(Clone, Copy, Debug)]
pub struct StreamCodec {
    max_frame_len: usize,
}

impl Default for StreamCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl StreamCodec {
    /// A codec refusing frames longer than `max_frame_len` bytes (never less than the largest
    /// Open frame, so control frames always fit).
    pub fn new(max_frame_len: usize) -> Self {
        StreamCodec {
            max_frame_len: max_frame_len.max(MIN_MAX_FRAME_LEN),
        }
    }

    /// The limit in force.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The largest Data payload that fits the limit.
    pub fn max_data_len(&self) -> usize {
        self.max_frame_len - HEADER_LEN
    }

    fn check_len(&self, size: usize) -> Result<()> {
        if size > self.max_frame_len {
            return Err(Error::FrameTooLarge {
                size,
                max: self.max_frame_len,
            });
        }
        Ok(())
    }

    /// The header of a Data frame carrying `len` payload bytes: send it, then the payload.
    pub fn data_header(&self, id: StreamId, len: usize) -> Result<[u8; HEADER_LEN]> {
        self.check_len(HEADER_LEN.saturating_add(len))?;
        // A limit above 4 GiB would let through a length the u32 field cannot hold.
        let len = u32::try_from(len).map_err(|_| Error::FrameTooLarge {
            size: len,
            max: self.max_frame_len,
        })?;
        Ok(header(KIND_DATA, id, len))
    }

    /// Turns `buf` into a whole Data frame in place: its first [`HEADER_LEN`] bytes are room
    /// kept for the header (their content is overwritten), the rest is the payload. A reader
    /// that reads into such a buffer sends its bytes without copying them.
    pub fn seal_data(&self, id: StreamId, buf: &mut [u8]) -> Result<()> {
        let Some(payload_len) = buf.len().checked_sub(HEADER_LEN) else {
            return Err(Error::FrameInvalid("no room for the header"));
        };
        let header = self.data_header(id, payload_len)?;
        buf[..HEADER_LEN].copy_from_slice(&header);
        Ok(())
    }

    /// Appends `frame` to `dst`. A value the decoder would refuse is refused here too, except
    /// that a Reset text is cut to [`MAX_REASON_LEN`] bytes. On error `dst` is left as it was.
    pub fn encode(&self, frame: &StreamFrame, dst: &mut BytesMut) -> Result<()> {
        let start = dst.len();
        let result = self.encode_inner(frame, dst, start);
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    fn encode_inner(&self, frame: &StreamFrame, dst: &mut BytesMut, start: usize) -> Result<()> {
        if let StreamFrame::Data { id, payload } = frame {
            let header = self.data_header(*id, payload.len())?;
            dst.reserve(HEADER_LEN + payload.len());
            dst.put_slice(&header);
            dst.put_slice(payload);
            return Ok(());
        }
        dst.reserve(HEADER_LEN + 64);
        dst.put_slice(&header(frame.kind(), frame.id(), 0)); // body length patched below
        match frame {
            StreamFrame::Open { open, .. } => put_open(dst, open)?,
            StreamFrame::Data { .. } | StreamFrame::Fin { .. } => {}
            StreamFrame::Reset { code, reason, .. } => {
                let text = cut_at_char_boundary(reason, MAX_REASON_LEN);
                dst.put_u8(*code as u8);
                // `text` is at most 255 bytes.
                dst.put_u8(text.len() as u8);
                dst.put_slice(text.as_bytes());
            }
            StreamFrame::Window { increment, .. } => {
                check_increment(*increment)?;
                dst.put_u32(*increment);
            }
        }
        let frame_len = dst.len() - start;
        self.check_len(frame_len)?;
        // Control bodies are bounded far below u32::MAX by the checks above.
        let body_len = (frame_len - HEADER_LEN) as u32;
        dst[start + 8..start + 12].copy_from_slice(&body_len.to_be_bytes());
        Ok(())
    }

    /// `frame` as one buffer.
    pub fn encode_to_bytes(&self, frame: &StreamFrame) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        self.encode(frame, &mut buf)?;
        Ok(buf.freeze())
    }

    /// The length of the frame at the start of `buf`, once its header is there: `Ok(None)`
    /// while fewer than [`HEADER_LEN`] bytes are available. Errors on a bad header or an
    /// oversized frame, so a stream reader can stop before buffering it.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>> {
        let Some(head) = buf.get(..HEADER_LEN) else {
            if !MAGIC.starts_with(&buf[..buf.len().min(2)]) {
                return Err(Error::FrameInvalid("bad magic"));
            }
            return Ok(None);
        };
        if head[..2] != MAGIC {
            return Err(Error::FrameInvalid("bad magic"));
        }
        if head[2] != VERSION {
            return Err(Error::FrameInvalid("unsupported version"));
        }
        if !(KIND_OPEN..=KIND_WINDOW).contains(&head[3]) {
            return Err(Error::UnknownStreamKind(head[3]));
        }
        if head[4..8] == [0; 4] {
            return Err(Error::FrameInvalid("stream id 0"));
        }
        let body_len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
        let size = HEADER_LEN.saturating_add(body_len);
        self.check_len(size)?;
        Ok(Some(size))
    }

    /// Decodes exactly one whole frame (a WebSocket binary message). Trailing bytes, a
    /// truncated frame, or anything malformed is an error.
    pub fn decode_frame(&self, mut frame: Bytes) -> Result<StreamFrame> {
        let size = self.frame_len(&frame)?.ok_or(Error::FrameTruncated {
            needed: HEADER_LEN,
            have: frame.len(),
        })?;
        if frame.len() < size {
            return Err(Error::FrameTruncated {
                needed: size,
                have: frame.len(),
            });
        }
        if frame.len() > size {
            return Err(Error::FrameInvalid("trailing bytes after the frame"));
        }
        let kind = frame[3];
        frame.advance(4);
        let id = StreamId::new(frame.get_u32()).ok_or(Error::FrameInvalid("stream id 0"))?;
        frame.advance(4);
        let mut body = Body(frame);
        let decoded = match kind {
            KIND_OPEN => StreamFrame::Open {
                id,
                open: Box::new(take_open(&mut body)?),
            },
            KIND_DATA => {
                let payload = std::mem::take(&mut body.0);
                return Ok(StreamFrame::Data { id, payload });
            }
            KIND_FIN => StreamFrame::Fin { id },
            KIND_RESET => {
                let code = ResetCode::from_u8(body.u8()?)?;
                let len = body.u8()? as usize;
                let reason = std::str::from_utf8(&body.take(len)?)
                    .map_err(|_| Error::FrameInvalid("reset text is not UTF-8"))?
                    .into();
                StreamFrame::Reset { id, code, reason }
            }
            KIND_WINDOW => {
                let increment = body.u32()?;
                check_increment(increment)?;
                StreamFrame::Window { id, increment }
            }
            kind => return Err(Error::UnknownStreamKind(kind)),
        };
        if !body.0.is_empty() {
            return Err(Error::FrameInvalid("trailing bytes in the body"));
        }
        Ok(decoded)
    }
}

fn header(kind: u8, id: StreamId, body_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(&MAGIC);
    h[2] = VERSION;
    h[3] = kind;
    h[4..8].copy_from_slice(&id.get().to_be_bytes());
    h[8..12].copy_from_slice(&body_len.to_be_bytes());
    h
}

fn check_increment(increment: u32) -> Result<()> {
    if increment == 0 {
        return Err(Error::FrameInvalid("window increment 0"));
    }
    if increment > MAX_WINDOW {
        return Err(Error::FrameInvalid("window increment above 2^31-1"));
    }
    Ok(())
}

fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_open(dst: &mut BytesMut, open: &Open) -> Result<()> {
    if open.initial_window > MAX_WINDOW {
        return Err(Error::FrameInvalid("initial window above 2^31-1"));
    }
    dst.put_u8(open.protocol as u8);
    dst.put_u32(open.initial_window);
    dst.put_u16(open.port);
    match open.endpoint.ip() {
        IpAddr::V4(ip) => {
            dst.put_u8(4);
            dst.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            dst.put_u8(6);
            dst.put_slice(&ip.octets());
        }
    }
    dst.put_u16(open.endpoint.port());
    put_name(dst, "destination node", &open.dest_node, true)?;
    put_name(dst, "source node", &open.source_node, true)?;
    put_name(dst, "namespace", &open.namespace, false)?;
    put_name(dst, "service name", &open.name, false)?;
    Ok(())
}

fn put_name(dst: &mut BytesMut, field: &'static str, name: &str, may_be_empty: bool) -> Result<()> {
    check_name(field, name.as_bytes(), may_be_empty)?;
    // `check_name` bounds it to 253 bytes.
    dst.put_u8(name.len() as u8);
    dst.put_slice(name.as_bytes());
    Ok(())
}

/// Checks a name is a DNS subdomain as Kubernetes allows it, or empty where that is allowed.
/// A name is used to build resource paths and look up Services, so nothing else gets through
/// (no '/', no leading '.', no upper case, no control or non-ASCII bytes).
fn check_name(field: &'static str, name: &[u8], may_be_empty: bool) -> Result<()> {
    let fail = |reason| {
        Err(Error::InvalidStreamName {
            field,
            value: String::from_utf8_lossy(&name[..name.len().min(MAX_NAME_LEN)]).into_owned(),
            reason,
        })
    };
    let Some((&first, &last)) = name.first().zip(name.last()) else {
        return if may_be_empty { Ok(()) } else { fail("empty") };
    };
    if name.len() > MAX_NAME_LEN {
        return fail("longer than 253 bytes");
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(first) || !alnum(last) {
        return fail("must start and end with a lowercase letter or digit");
    }
    if !name.iter().all(|&c| alnum(c) || c == b'-' || c == b'.') {
        return fail("only lowercase letters, digits, '-' and '.' are allowed");
    }
    Ok(())
}

/// The unread part of a frame body; every read checks the length first.
struct Body(Bytes);

impl Body {
    fn take(&mut self, n: usize) -> Result<Bytes> {
        if self.0.len() < n {
            return Err(Error::FrameInvalid("field runs past the body"));
        }
        Ok(self.0.split_to(n))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn name(&mut self, field: &'static str, may_be_empty: bool) -> Result<CompactString> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        check_name(field, &bytes, may_be_empty)?;
        // Checked to be ASCII above.
        std::str::from_utf8(&bytes)
            .map(CompactString::from)
            .map_err(|_| Error::FrameInvalid("name is not UTF-8"))
    }
}

fn take_open(body: &mut Body) -> Result<Open> {
    let protocol = ProtocolHint::from_u8(body.u8()?)?;
    let initial_window = body.u32()?;
    if initial_window > MAX_WINDOW {
        return Err(Error::FrameInvalid("initial window above 2^31-1"));
    }
    let port = body.u16()?;
    let ip = match body.u8()? {
        4 => {
            let b = body.take(4)?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body.take(16)?);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        value => {
            return Err(Error::UnknownStreamValue {
                field: "address family",
                value,
            });
        }
    };
    let endpoint = SocketAddr::new(ip, body.u16()?);
    Ok(Open {
        dest_node: body.name("destination node", true)?,
        source_node: body.name("source node", true)?,
        namespace: body.name("namespace", false)?,
        name: body.name("service name", false)?,
        port,
        endpoint,
        protocol,
        initial_window,
    })
}

impl Decoder for StreamCodec {
    type Item = StreamFrame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<StreamFrame>> {
        let Some(size) = self.frame_len(src)? else {
            return Ok(None);
        };
        if src.len() < size {
            src.reserve(size - src.len());
            return Ok(None);
        }
        let frame = src.split_to(size).freeze();
        self.decode_frame(frame).map(Some)
    }
}

impl Encoder<&StreamFrame> for StreamCodec {
    type Error = Error;

    fn encode(&mut self, frame: &StreamFrame, dst: &mut BytesMut) -> Result<()> {
        StreamCodec::encode(self, frame, dst)
    }
}
