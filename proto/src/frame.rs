//! The binary frame: how a [`Message`] travels on the cloud link when its payload is stream
//! data, so tunnel bytes never pass through JSON or base64.
//!
//! A frame is one WebSocket binary message (or, on a byte stream, one length-delimited unit).
//! All integers are big-endian.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "EM" (0x45 0x4D)
//! 2       1     version, 1
//! 3       1     flags: bit 0 = header.sync, bit 1 = payload is JSON text (else raw bytes);
//!               other bits must be zero
//! 4       4     body length: bytes after this field (so a frame is 8 + body length bytes)
//! 8       8     header.timestamp, Unix milliseconds, signed
//! 16      ...   seven strings, each a u16 length then that many UTF-8 bytes, in this order:
//!               msg_id, parent_msg_id, resourceversion, source, group, operation, resource
//!               (an empty string means the field is absent)
//! ...     ...   payload: every remaining byte of the body
//! ```
//!
//! A frame larger than the codec's maximum (8 + body length) is refused on both encode and
//! decode, before any allocation for it. Decoding never panics: truncated, oversized and
//! random input is a typed [`Error`]. On decode the payload is a zero-copy slice of the
//! frame's buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use compact_str::CompactString;
use tokio_util::codec::{Decoder, Encoder};

use crate::content::Content;
use crate::error::{Error, Result};
use crate::message::{Header, Message};
use crate::msg_id::MsgId;
use crate::route::Route;

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"EM";
/// The layout version this code writes and reads.
pub const VERSION: u8 = 1;
/// Size of magic, version, flags and body length.
pub const PREFIX_LEN: usize = 8;
/// Default limit on a whole frame.
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

const FLAG_SYNC: u8 = 0b01;
const FLAG_JSON: u8 = 0b10;
const KNOWN_FLAGS: u8 = FLAG_SYNC | FLAG_JSON;
/// Timestamp plus seven empty strings: the smallest possible body.
const MIN_BODY_LEN: usize = 8 + 7 * 2;

/// Encoder and decoder of binary frames with a maximum frame size.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_frame_len: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame_len` bytes (at least the smallest frame).
    pub fn new(max_frame_len: usize) -> Self {
        FrameCodec {
            max_frame_len: max_frame_len.max(PREFIX_LEN + MIN_BODY_LEN),
        }
    }

    /// The limit in force.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Appends `msg` as one frame to `dst`. On error `dst` is left as it was.
    pub fn encode(&self, msg: &Message, dst: &mut BytesMut) -> Result<()> {
        let start = dst.len();
        let result = self.encode_inner(msg, dst, start);
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    fn encode_inner(&self, msg: &Message, dst: &mut BytesMut, start: usize) -> Result<()> {
        let mut flags = 0;
        if msg.header.sync {
            flags |= FLAG_SYNC;
        }
        if msg.content.json().is_some() {
            flags |= FLAG_JSON;
        }
        dst.reserve(PREFIX_LEN + 64 + msg.route.resource.len());
        dst.put_slice(&MAGIC);
        dst.put_u8(VERSION);
        dst.put_u8(flags);
        dst.put_u32(0); // body length, patched below
        dst.put_i64(msg.header.timestamp);
        let mut id = [0u8; 36];
        put_str(dst, msg.header.id.as_str(&mut id))?;
        let mut parent = [0u8; 36];
        let parent = msg
            .header
            .parent_id
            .as_ref()
            .map_or("", |p| p.as_str(&mut parent));
        put_str(dst, parent)?;
        put_str(dst, &msg.header.resource_version)?;
        put_str(dst, &msg.route.source)?;
        put_str(dst, &msg.route.group)?;
        put_str(dst, &msg.route.operation)?;
        put_str(dst, &msg.route.resource)?;
        match &msg.content {
            Content::Bytes(b) => {
                self.check_len(dst.len() - start + b.len())?;
                dst.put_slice(b);
            }
            Content::Json(v) => serde_json::to_writer(dst.writer(), v)?,
            Content::Shared(v) => serde_json::to_writer(dst.writer(), &**v)?,
        }
        let frame_len = dst.len() - start;
        self.check_len(frame_len)?;
        let body_len = (frame_len - PREFIX_LEN) as u32;
        dst[start + 4..start + 8].copy_from_slice(&body_len.to_be_bytes());
        Ok(())
    }

    /// `msg` as one frame.
    pub fn encode_to_bytes(&self, msg: &Message) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        self.encode(msg, &mut buf)?;
        Ok(buf.freeze())
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

    /// The length of the frame at the start of `buf`, once its prefix is there: `Ok(None)`
    /// while fewer than [`PREFIX_LEN`] bytes are available. Errors on a bad prefix or an
    /// oversized frame, so a stream reader can stop before buffering it.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>> {
        let Some(prefix) = buf.get(..PREFIX_LEN) else {
            if !MAGIC.starts_with(&buf[..buf.len().min(2)]) {
                return Err(Error::FrameInvalid("bad magic"));
            }
            return Ok(None);
        };
        if prefix[..2] != MAGIC {
            return Err(Error::FrameInvalid("bad magic"));
        }
        if prefix[2] != VERSION {
            return Err(Error::FrameInvalid("unsupported version"));
        }
        if prefix[3] & !KNOWN_FLAGS != 0 {
            return Err(Error::FrameInvalid("unknown flags"));
        }
        let body_len = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
        if body_len < MIN_BODY_LEN {
            return Err(Error::FrameInvalid("body shorter than the fixed fields"));
        }
        let size = PREFIX_LEN + body_len;
        self.check_len(size)?;
        Ok(Some(size))
    }

    /// Decodes exactly one whole frame (a WebSocket binary message). Trailing bytes, a
    /// truncated frame, or anything malformed is an error.
    pub fn decode_frame(&self, mut frame: Bytes) -> Result<Message> {
        let size = self.frame_len(&frame)?.ok_or(Error::FrameTruncated {
            needed: PREFIX_LEN,
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
        let flags = frame[3];
        frame.advance(PREFIX_LEN);
        let timestamp = frame.get_i64();
        let id = take_str(&mut frame)?;
        let parent = take_str(&mut frame)?;
        let rv = take_str(&mut frame)?;
        let source = take_str(&mut frame)?;
        let group = take_str(&mut frame)?;
        let operation = take_str(&mut frame)?;
        let resource = take_str(&mut frame)?;
        let content = if flags & FLAG_JSON != 0 {
            Content::Json(serde_json::from_slice(&frame)?)
        } else {
            Content::Bytes(frame)
        };
        Ok(Message {
            header: Header {
                id: MsgId::parse(id.as_str()),
                parent_id: (!parent.is_empty()).then(|| MsgId::parse(parent.as_str())),
                timestamp,
                resource_version: rv,
                sync: flags & FLAG_SYNC != 0,
            },
            route: Route {
                source,
                group,
                operation,
                resource,
            },
            content,
        })
    }
}

fn put_str(dst: &mut BytesMut, s: &str) -> Result<()> {
    let len = u16::try_from(s.len()).map_err(|_| Error::FrameInvalid("field longer than 65535"))?;
    dst.put_u16(len);
    dst.put_slice(s.as_bytes());
    Ok(())
}

fn take_str(buf: &mut Bytes) -> Result<CompactString> {
    if buf.len() < 2 {
        return Err(Error::FrameInvalid("field length runs past the body"));
    }
    let len = buf.get_u16() as usize;
    if buf.len() < len {
        return Err(Error::FrameInvalid("field runs past the body"));
    }
    let s = std::str::from_utf8(&buf[..len])
        .map_err(|_| Error::FrameInvalid("field is not UTF-8"))?
        .into();
    buf.advance(len);
    Ok(s)
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>> {
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

impl Encoder<&Message> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<()> {
        FrameCodec::encode(self, msg, dst)
    }
}
