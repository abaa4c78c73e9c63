//! The crate's error type.

/// Everything edgehub can fail at.
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
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
