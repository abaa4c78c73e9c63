//! RFC 6455 framing for the cloud link, used once tungstenite has made the handshake.
//!
//! The link relays stream payloads that already sit in [`Bytes`]: read from a socket into
//! a buffer, routed, written to another socket. A general WebSocket library zeroes its read
//! buffer before each read, copies every outgoing frame into a write buffer and (as a
//! client) masks that copy once more, so each relayed byte was touched four to six times in
//! user space. Here a read fills spare capacity without zeroing it and payloads are sliced
//! out of it (one of 64 KiB or more gets a buffer of its own, so a relay may change it in
//! place); a server writes headers and payloads with one gathered write, unmasked payloads
//! never copied; a client masks in place a payload it alone holds, and copies only a
//! shared one, masking as it goes.
//!
//! [`HeadFirst`] lets tungstenite's handshake read only the HTTP head, so frames the peer
//! sent right behind it are kept for [`Socket`] rather than lost in the handshake's buffer.

mod frame;
mod head;
mod mask;
mod read;
mod socket;
mod write;

use bytes::Bytes;

pub use head::HeadFirst;
pub use read::FrameReader;
pub use socket::{CLOSE_TIMEOUT, Closing, Reading, Socket, SocketConfig, Writing};
pub use write::FrameWriter;

/// Which end of the connection this is: a client masks what it sends and a server
/// requires masked frames (RFC 6455 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The end that dialled (edgehub).
    Client,
    /// The end that accepted (cloudhub).
    Server,
}

/// A whole message or control frame, as read or to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message; always valid UTF-8 when read.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping (at most 125 bytes).
    Ping(Bytes),
    /// A pong (at most 125 bytes).
    Pong(Bytes),
    /// A close frame, with its status and reason when it carries one.
    Close(Option<CloseFrame>),
}

/// The status of a close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code (RFC 6455 §7.4).
    pub code: u16,
    /// Why, in at most 123 bytes of UTF-8.
    pub reason: String,
}

/// Close status codes the link uses (RFC 6455 §7.4.1).
pub mod close_code {
    /// The purpose of the connection is fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The end is going away (shutting down, replaced, silent peer).
    pub const AWAY: u16 = 1001;
    /// A frame broke the protocol.
    pub const PROTOCOL: u16 = 1002;
    /// A message whose content is inconsistent with its type (malformed JSON or frame).
    pub const INVALID: u16 = 1007;
    /// A message that violates policy (identity, certificate).
    pub const POLICY: u16 = 1008;
    /// A message too big to process.
    pub const SIZE: u16 = 1009;
    /// Try again later (the server is at capacity).
    pub const AGAIN: u16 = 1013;
}

/// Opcodes (RFC 6455 §5.2).
pub(crate) mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Largest payload of a control frame.
pub(crate) const MAX_CONTROL_LEN: usize = 125;
