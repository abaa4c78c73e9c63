//! Wire types of the edge mesh.
//!
//! - [`Message`]: KubeEdge's `model.Message`, byte-compatible in JSON.
//! - [`ResourcePath`] / [`CloudPath`]: the edge and cloud forms of `route.resource`.
//! - [`FrameCodec`]: the compact binary frame that carries stream payloads on the cloud link
//!   (layout in [`frame`]).
//! - [`StreamCodec`] / [`StreamFrame`]: the "ES" frames of tunnel streams multiplexed on the
//!   cloud link, with their ids and flow-control windows (layout in [`stream::frame`]).
//!
//! - [`application`] / [`api_status`]: KubeEdge's metaServer Applications and the API
//!   error shapes its cloud answers with.
//! - [`meta_socket`] / [`metaclient`]: the metamanager socket protocol and its client, shared
//!   by metamanager (server) and edgemesh (client).
//!
//! - [`ws`]: RFC 6455 framing of the cloud link after its handshake.
//!
//! This crate depends on nothing else of the project, so every module and binary can share it.

pub mod api_status;
pub mod application;
pub mod content;
pub mod error;
pub mod frame;
pub mod message;
pub mod meta_socket;
pub mod metaclient;
pub mod msg_id;
pub mod resource;
pub mod route;
pub mod stream;
pub mod ws;

pub use content::Content;
pub use error::{Error, Result};
pub use frame::FrameCodec;
pub use message::{Header, Message, now_millis};
pub use msg_id::MsgId;
pub use resource::{CloudPath, ResourcePath, ResourceType};
pub use route::{Route, connection, group, handshake, operation, store_state};
pub use stream::{StreamCodec, StreamFrame, StreamId};
