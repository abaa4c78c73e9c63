//! Errors of process assembly.

/// Everything that can stop a process from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is unreadable or wrong; one line per problem.
    #[error("bad config:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    /// TLS files or settings are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The PKI (CA, tokens, certificates, join) failed; the text says what and why.
    #[error("{0}")]
    Pki(String),
    /// A file or socket operation failed.
    #[error("{0}")]
    Io(String),
    /// The bus refused to assemble the modules.
    #[error(transparent)]
    Bus(#[from] beehive::Error),
    /// metamanager could not open its store.
    #[error(transparent)]
    Meta(#[from] metamanager::Error),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl Error {
    /// The process exit code for this error: 64 (EX_USAGE) for bad config, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 64,
            _ => 1,
        }
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
