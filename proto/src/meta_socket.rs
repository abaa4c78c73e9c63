//! The metamanager socket protocol: how edgemesh (or any local process) reads metadata from
//! metamanager over a Unix stream socket.
//!
//! ## Framing
//!
//! Each frame is a 4-byte big-endian length `N` followed by `N` bytes of one [`Message`] in
//! KubeEdge JSON. Frames longer than the server's limit (4 MiB by default) are a protocol
//! error: the server logs it and closes that connection. A frame whose bytes are not a
//! Message gets an `error` reply (with no parent id) and the connection stays.
//!
//! ## Requests (client → server), by `route.operation`
//!
//! | operation | resource | answer (parent = request id) |
//! |---|---|---|
//! | `query` | `<ns>/<type>/<name>` | `response` with the object, or `error` ("... not found") |
//! | `query` | `<ns>/<type>` (`*` for every namespace) | `response` with a JSON array of objects |
//! | `watch` | `<ns>/<type>` (`*` for every namespace) | see below |
//! | `ping` | anything | `response` with `"pong"` |
//!
//! ## Watch stream
//!
//! The server answers a watch with one `insert` per object that matches now, then one
//! message with operation [`WATCH_SYNCED`] (the end of the initial list), then every later
//! committed change as `insert`, `update` or `delete`, in commit order. Every message of the
//! stream has parent = the watch's id and resource = the object's key. A watcher that leaves
//! too many changes unread is sent an `error` and disconnected: it reconnects and gets a
//! fresh list, so it never silently misses a change.
//!
//! ## Who may connect
//!
//! The server checks each client's credentials (`SO_PEERCRED`) on accept: root, the server's
//! own user and members of its configured group are served. Anyone else is sent one `error`
//! frame (no parent id) and the connection is closed before anything it sent is read.

use tokio_util::codec::LengthDelimitedCodec;

/// `route.operation` of a watch request.
pub const WATCH: &str = "watch";
/// `route.operation` of a liveness check.
pub const PING: &str = "ping";
/// `route.operation` marking the end of a watch's initial list.
pub const WATCH_SYNCED: &str = "synced";
/// Namespace meaning "every namespace" in a list or watch resource.
pub const ALL_NAMESPACES: &str = "*";
/// Default limit on one frame.
pub const DEFAULT_MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// The frame codec both ends use: a 4-byte big-endian length, then the JSON bytes.
pub fn codec(max_frame_len: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_len)
        .new_codec()
}
