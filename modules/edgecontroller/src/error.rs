//! The crate's error type.

use std::path::PathBuf;

/// Everything edgecontroller can fail at.
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
    /// A manifest document is not a usable object.
    #[error("{file}:{line}:{column}: {reason}")]
    BadDocument {
        /// The file.
        file: PathBuf,
        /// 1-based line where the document (or the error in it) is.
        line: usize,
        /// 1-based column, 0 when unknown.
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// The Kubernetes client could not be set up.
    #[error("Kubernetes client: {0}")]
    Kube(String),
    /// A folder or file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// The resourceVersion ledger (`versionsDb`) could not be opened.
    #[error("resourceVersion ledger {path}: {reason}")]
    Versions {
        /// The file.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
