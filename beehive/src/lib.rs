//! The module bus, after KubeEdge's beehive.
//!
//! Modules are peers with a name and a group. They never call each other: they exchange
//! [`proto::Message`]s through a [`Context`]:
//!
//! - `send` / `try_send` / `send_blocking` to a module, `send_to_group` to every member;
//! - `receive` (async), `receive_many` (batches), `receive_blocking` (plain threads);
//! - `send_sync` / `send_to_group_sync` wait for replies, which the receiver gives with
//!   `send_resp`. The reply slot is registered before the request is queued, and a reply
//!   nobody waits for is dropped without blocking its sender.
//!
//! [`Context::lane`] / [`Context::take_lane`] give named unbounded channels for data the
//! bus must not hold up (stream frames, bounded by their own credit).
//!
//! Inboxes are bounded: a full inbox makes `send` wait and `try_send` hand the message back,
//! never a silent drop. [`Core`] starts the enabled modules and, on SIGINT/SIGTERM or a
//! [`ShutdownHandle`], resolves [`Context::done`], closes the inboxes (queued messages can
//! still be drained), waits a grace period and reports modules that did not stop.

pub mod config;
pub mod context;
pub mod core;
pub mod error;
pub mod lane;
pub mod memory;
pub mod module;
mod pending;
pub mod throttle;

pub use crate::config::CoreConfig;
pub use crate::context::Context;
pub use crate::core::{Core, ShutdownHandle, ShutdownReport, termination_signal};
pub use crate::error::{Error, Result, TrySendError};
pub use crate::module::{Module, ModuleError};
pub use crate::throttle::Throttle;
pub use async_trait::async_trait;
