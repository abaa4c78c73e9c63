//! Settings of metamanager.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Settings of metamanager (`modules.metaManager:` in edgecore's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetaManagerConfig {
    /// Whether edgecore runs metamanager.
    pub enable: bool,
    /// SQLite database file; its folder is created when missing.
    pub db_path: PathBuf,
    /// Unix socket edgemesh reads metadata from (created with mode 0600).
    pub socket_path: PathBuf,
    /// Milliseconds a query for a missing object may wait for the cloud's answer.
    pub remote_query_timeout_ms: u64,
    /// Changes a socket watcher may leave unread before it is disconnected.
    pub watch_buffer: usize,
    /// Milliseconds a socket watcher may accept no data while changes wait for it before
    /// it is disconnected.
    pub watch_stall_timeout_ms: u64,
    /// Largest frame accepted on the socket, in bytes.
    pub max_frame_len: usize,
}

impl Default for MetaManagerConfig {
    fn default() -> Self {
        MetaManagerConfig {
            enable: true,
            db_path: PathBuf::from("/var/lib/edgemesh/edgecore.db"),
            socket_path: PathBuf::from("/var/lib/edgemesh/metamanager.sock"),
            remote_query_timeout_ms: 5_000,
            watch_buffer: 1024,
            watch_stall_timeout_ms: 10_000,
            max_frame_len: 4 * 1024 * 1024,
        }
    }
}

impl MetaManagerConfig {
    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every field out of range, each named.
    pub fn problems(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        let mut bad = |field, reason: &str| {
            problems.push(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.db_path.as_os_str().is_empty() {
            bad("dbPath", "must not be empty");
        }
        if self.socket_path.as_os_str().is_empty() {
            bad("socketPath", "must not be empty");
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.socket_path.as_os_str().len() > 107 {
            bad(
                "socketPath",
                "longer than the 107 bytes a Unix socket path may have",
            );
        }
        if self.remote_query_timeout_ms == 0 || self.remote_query_timeout_ms > 60_000 {
            bad("remoteQueryTimeoutMs", "must be between 1 and 60000");
        }
        if self.watch_buffer == 0 || self.watch_buffer > 1 << 20 {
            bad("watchBuffer", "must be between 1 and 1048576");
        }
        if self.watch_stall_timeout_ms == 0 || self.watch_stall_timeout_ms > 600_000 {
            bad("watchStallTimeoutMs", "must be between 1 and 600000");
        }
        if self.max_frame_len < 1024 || self.max_frame_len > 64 << 20 {
            bad("maxFrameLen", "must be between 1 KiB and 64 MiB");
        }
        problems
    }
}
