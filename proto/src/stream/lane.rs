//! What travels between a hub (edgehub, cloudhub) and the mesh module on the same process:
//! stream frames and the life of the link that carries them.
//!
//! Stream bytes never go through the message bus (its inboxes are bounded queues of JSON
//! messages, and a hub's read loop must never wait on a slow consumer): a hub hands encoded
//! frames to the mesh on an unbounded in-process lane, and the mesh hands its frames back on
//! the sender it got with [`Carriage::Up`]. Nothing on a lane is unbounded in practice, since
//! every Data frame is within the credit its receiver granted (see [`super::window`]), Window
//! frames return only consumed bytes, and Opens are capped per link.

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

/// Name of the lane the mesh module reads (bound with `Context::take_lane`).
pub const MESH_LANE: &str = "mesh";

/// Where the mesh puts frames for the link that is up; dropped with that link, so a frame
/// meant for a lost link can never go out on its successor.
pub type LinkSender = UnboundedSender<Bytes>;

/// One event on the lane from a hub to the mesh, in link order.
#[derive(Debug)]
pub enum Carriage {
    /// A link is up: frames for it go into the sender. Until the next `Down`, every frame
    /// that arrives belongs to it.
    Up(LinkSender),
    /// One encoded stream frame from the link.
    Frame(Bytes),
    /// The link is gone (with the reason): every stream it carried is dead.
    Down(String),
}
