//! The crate's error type.

use std::time::Duration;

use proto::{Message, MsgId};

/// Everything the bus can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No module of that name was ever registered.
    #[error("unknown module {0:?}")]
    UnknownModule(String),
    /// No open module belongs to that group.
    #[error("unknown or empty group {0:?}")]
    UnknownGroup(String),
    /// A module of that name is already registered.
    #[error("module {0:?} is already registered")]
    DuplicateModule(String),
    /// The module's inbox is closed (cleaned up or shutting down).
    #[error("inbox of module {0:?} is closed")]
    Closed(String),
    /// The module's inbox is full (only from the non-waiting `try_` calls).
    #[error("inbox of module {0:?} is full")]
    Full(String),
    /// No reply arrived in time.
    #[error("no reply from {target:?} within {after:?}")]
    Timeout {
        /// Module the request went to.
        target: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// Not every member of a group replied in time.
    #[error("{got} of {expected} members of group {group:?} replied within {after:?}")]
    GroupTimeout {
        /// The group asked.
        group: String,
        /// Replies that arrived.
        got: usize,
        /// Members asked.
        expected: usize,
        /// The timeout that ran out.
        after: Duration,
    },
    /// A sync request reused the id of one still waiting for its reply.
    #[error("a request with id {0} is already waiting for a reply")]
    DuplicateId(MsgId),
    /// A lane is already in use with another item type.
    #[error("lane {0:?} carries another type")]
    LaneType(String),
    /// A lane's receiving end was already taken.
    #[error("lane {0:?} already has its reader")]
    LaneTaken(String),
    /// A configuration value is out of range.
    #[error("invalid config field {field}: {reason}")]
    InvalidConfig {
        /// The field's name as written in YAML.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A message `try_send` could not queue, handed back with the reason so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct TrySendError {
    /// Why it was not queued: [`Error::Full`], [`Error::Closed`] or [`Error::UnknownModule`].
    pub error: Error,
    /// The message, unchanged.
    pub message: Box<Message>,
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
