//! The crate's error type.

/// Everything metamanager can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused an operation.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store cannot commit now (disk full, an I/O error): nothing of the write was
    /// stored, and the same write may succeed later. The text names the file and the cause.
    #[error("{0}")]
    Unwritable(String),
    /// The store's worker thread is gone (shut down or crashed).
    #[error("the store worker has stopped")]
    StoreStopped,
    /// A message whose resource or content cannot be stored.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A resource path that does not parse.
    #[error(transparent)]
    Path(#[from] proto::Error),
    /// A configuration value is out of range.
    #[error("invalid config field {field}: {reason}")]
    InvalidConfig {
        /// The field's name as written in YAML.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O error (creating folders, the socket).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
