//! The crate's error type.

/// Everything that can go wrong while parsing or encoding wire types.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A resource path that is neither the edge nor the cloud form.
    #[error("malformed resource path {path:?}: {reason}")]
    MalformedPath {
        /// The path as received.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A resource path naming a type this mesh does not know.
    #[error("unknown resource type {kind:?} in path {path:?}")]
    UnknownResourceType {
        /// The path as received.
        path: String,
        /// The type segment.
        kind: String,
    },
    /// A binary frame shorter than its header says.
    #[error("truncated frame: need {needed} bytes, have {have}")]
    FrameTruncated {
        /// Bytes the frame claims to need.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// A binary frame larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Size the frame claims (or would have).
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// A binary frame whose fixed header is wrong (magic, version, flags, layout).
    #[error("invalid frame: {0}")]
    FrameInvalid(&'static str),
    /// A stream frame whose kind byte this version does not know.
    #[error("unknown stream frame kind {0}")]
    UnknownStreamKind(u8),
    /// A one-byte enumerated field of a stream frame (reset code, protocol hint, address
    /// family) holding a value this version does not know.
    #[error("unknown {field} value {value}")]
    UnknownStreamValue {
        /// Which field.
        field: &'static str,
        /// The value received.
        value: u8,
    },
    /// A node, namespace or service name in a stream frame that is not a DNS name.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidStreamName {
        /// Which field.
        field: &'static str,
        /// The value, lossily decoded (at most 253 bytes, so it is bounded).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A flow-control grant that would take the credit past the largest window.
    #[error("window overflow: credit {credit} plus increment {increment} exceeds 2^31-1")]
    WindowOverflow {
        /// Credit before the grant.
        credit: u32,
        /// The increment granted.
        increment: u32,
    },
    /// A peer that sent more stream data than the window it was granted.
    #[error("window overrun: {len} bytes received with {credit} bytes of credit")]
    WindowOverrun {
        /// Bytes received.
        len: usize,
        /// The peer's credit when they arrived.
        credit: u32,
    },
    /// Content that was expected as bytes but is not a byte string.
    #[error("content is not raw bytes: {0}")]
    NotBytes(&'static str),
    /// Message JSON that is not a JSON object.
    #[error("a message must be a JSON object")]
    NotAnObject,
    /// JSON that does not parse as a Message (or as the requested content type).
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A WebSocket frame that breaks RFC 6455.
    #[error("WebSocket protocol error: {0}")]
    WsProtocol(&'static str),
    /// A WebSocket text message (or close reason) that is not UTF-8.
    #[error("WebSocket text that is not UTF-8")]
    WsInvalidText,
    /// An I/O error from a stream the codec reads (needed by `tokio_util`'s framed streams).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
