//! The crate's error type.

use std::path::PathBuf;

/// Everything cloudhub can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid config field {field}: {reason}")]
    InvalidConfig {
        /// The field, as spelled in the YAML.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate, key or CA file could not be read or parsed.
    #[error("{path}: {reason}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the TLS settings.
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    /// The record of what nodes hold (`objectSyncDb`) could not be opened.
    #[error("object sync record {path}: {reason}")]
    ObjectSync {
        /// The file (or its folder).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A socket failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The bus refused an operation.
    #[error(transparent)]
    Bus(#[from] beehive::Error),
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
