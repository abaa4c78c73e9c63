//! Tunnel streams on the cloud link: their frames, ids and flow control.
//!
//! Edgemesh tunnels TCP (later UDP) streams between edge nodes and the cloud over the one
//! WebSocket link each edge keeps with cloudhub, many streams to a link.
//!
//! - [`frame`]: the compact "ES" frame (Open, Data, Fin, Reset, Window) and its codec,
//!   [`StreamCodec`]; the byte layout is documented there.
//! - [`id`]: [`StreamId`] and the [`StreamIdAllocator`] (edge odd ids, cloud even ids).
//! - [`lane`]: [`Carriage`], what a hub and the mesh module pass each other in-process.
//! - [`outbox`]: [`Outbox`], a link's outgoing frames, one stream per turn.
//! - [`window`]: [`SendWindow`] and [`RecvWindow`], the flow-control state machines that
//!   keep any hop from buffering more than a window per stream.

pub mod frame;
pub mod id;
pub mod lane;
pub mod outbox;
pub mod window;

pub use frame::{
    HEADER_LEN, Open, ProtocolHint, ResetCode, StreamCodec, StreamFrame, is_stream_frame,
};
pub use id::{Side, StreamId, StreamIdAllocator};
pub use lane::{Carriage, LinkSender, MESH_LANE};
pub use outbox::{Outbox, peek};
pub use window::{DEFAULT_WINDOW, MAX_WINDOW, RecvWindow, SendWindow};
