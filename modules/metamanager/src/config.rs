//! Settings of metamanager.

use std::path::{Path, PathBuf};

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
    /// Unix socket edgemesh reads metadata from (created with mode 0600, or 0660 and owned by
    /// `socketGroup` when one is set).
    pub socket_path: PathBuf,
    /// Group (a name from /etc/group, or a numeric gid) whose members may use the socket besides
    /// root and edgecore's own user; empty for none. Every other client is refused.
    pub socket_group: String,
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
            socket_group: String::new(),
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
        if let Err(Error::InvalidConfig { field, reason }) = self.socket_gid() {
            bad(field, &reason);
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

    /// The gid of `socketGroup` (None when empty): a number is taken as it is, a name is
    /// looked up in /etc/group.
    pub fn socket_gid(&self) -> Result<Option<u32>> {
        resolve_group(&self.socket_group, Path::new(GROUP_FILE))
    }
}

/// Where group names are looked up (NSS sources such as LDAP are not consulted: a group
/// from one of those is given by its number).
const GROUP_FILE: &str = "/etc/group";

/// The gid `spec` names (None when empty): a number as it is, a name from `group_file`
/// (lines `name:password:gid:members`).
pub fn resolve_group(spec: &str, group_file: &Path) -> Result<Option<u32>> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(None);
    }
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(Some(gid));
    }
    let bad = |reason: String| Error::InvalidConfig {
        field: "socketGroup",
        reason,
    };
    let groups = std::fs::read_to_string(group_file).map_err(|e| {
        bad(format!(
            "cannot look up group {spec:?} in {}: {e}",
            group_file.display()
        ))
    })?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == spec).then_some(gid)
        })
        .next()
        .map(Some)
        .ok_or_else(|| {
            bad(format!(
                "no group named {spec:?} in {}",
                group_file.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_group_is_a_number_or_a_name_from_the_group_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("group");
        std::fs::write(&file, "root:x:0:\nedgemesh:x:1234:alice,bob\nbroken\n").unwrap();
        assert_eq!(resolve_group("", &file).unwrap(), None);
        assert_eq!(resolve_group("4321", &file).unwrap(), Some(4321));
        assert_eq!(resolve_group("edgemesh", &file).unwrap(), Some(1234));
        let err = resolve_group("nobody-here", &file).unwrap_err().to_string();
        assert!(
            err.contains("socketGroup") && err.contains("nobody-here"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_socket_group_is_a_config_problem() {
        let config = MetaManagerConfig {
            socket_group: "no-such-group-here".into(),
            ..MetaManagerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("socketGroup") && err.contains("no-such-group-here"),
            "{err}"
        );
        assert!(MetaManagerConfig::default().validate().is_ok());
    }
}
