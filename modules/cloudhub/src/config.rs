//! Settings of cloudhub.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Certificate files for TLS on the cloud link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsFiles {
    /// PEM file of the CA that signs node (and server) certificates.
    pub ca_file: PathBuf,
    /// PEM file of this side's certificate chain.
    pub cert_file: PathBuf,
    /// PEM file of this side's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl TlsFiles {
    /// Names the first empty path.
    pub fn validate(&self) -> Result<()> {
        for (field, path) in [
            ("tls.caFile", &self.ca_file),
            ("tls.certFile", &self.cert_file),
            ("tls.keyFile", &self.key_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must not be empty when tls is set".into(),
                });
            }
        }
        Ok(())
    }
}

/// Settings of cloudhub (`modules.cloudHub:` in cloudcore's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CloudHubConfig {
    /// Whether cloudcore runs cloudhub.
    pub enable: bool,
    /// Address the WebSocket server listens on.
    pub address: String,
    /// TLS with required client certificates, from these files; absent means the
    /// certificates of cloudcore's PKI (`pki.dir`).
    pub tls: Option<TlsFiles>,
    /// Plain `ws://` with no client certificates: anyone who reaches the port can claim to
    /// be any node. Only for tests and trusted networks; a warning is logged at start.
    pub insecure: bool,
    /// Milliseconds a node may stay silent before it is dropped.
    pub keepalive_timeout_ms: u64,
    /// Most nodes connected at once; connections beyond it are refused with a reason.
    pub node_limit: usize,
    /// Milliseconds to wait for an object's ACK before the first resend; doubles per resend.
    pub ack_timeout_ms: u64,
    /// Resends whose wait doubles; after them an unACKed object is resent every
    /// `ackTimeoutMs * 2^maxResends` for as long as the node stays connected (a node whose
    /// disk is full ACKs once it has room again).
    pub max_resends: u32,
    /// Objects sent to one node and not yet ACKed, at most (the rest wait in its queue).
    pub window: usize,
    /// Largest WebSocket message accepted from a node, in bytes; a larger one drops the node.
    pub max_frame_len: usize,
    /// Milliseconds a new connection has for its TLS and WebSocket handshakes.
    pub handshake_timeout_ms: u64,
    /// Milliseconds a write to a node may block before the node is dropped.
    pub write_timeout_ms: u64,
    /// Tunnel streams one node's link may carry at once; opens beyond it are reset
    /// `too_many_streams`.
    pub max_streams_per_node: usize,
    /// SQLite file recording what each node was sent and ACKed, kept across restarts (as
    /// KubeEdge's ObjectSync), so a node that reports no holdings on connect (a KubeEdge
    /// edgecore) still gets exact deletes. Its folder is created 0700. Empty: kept in
    /// memory only (tests).
    pub object_sync_db: PathBuf,
}

impl Default for CloudHubConfig {
    fn default() -> Self {
        CloudHubConfig {
            enable: true,
            address: "0.0.0.0:10000".into(),
            tls: None,
            insecure: false,
            keepalive_timeout_ms: 30_000,
            node_limit: 10_000,
            ack_timeout_ms: 5_000,
            max_resends: 3,
            window: 256,
            max_frame_len: 4 * 1024 * 1024,
            handshake_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_streams_per_node: 4096,
            object_sync_db: "/var/lib/edgemesh/cloudcore/object-sync.db".into(),
        }
    }
}

impl CloudHubConfig {
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
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            bad("address", "must be IP:port, such as 0.0.0.0:10000");
        }
        if let Some(tls) = &self.tls
            && let Err(Error::InvalidConfig { field, reason }) = tls.validate()
        {
            bad(field, &reason);
        }
        if !(1_000..=3_600_000).contains(&self.keepalive_timeout_ms) {
            bad("keepaliveTimeoutMs", "must be between 1000 and 3600000");
        }
        if !(1..=1_000_000).contains(&self.node_limit) {
            bad("nodeLimit", "must be between 1 and 1000000");
        }
        if !(10..=600_000).contains(&self.ack_timeout_ms) {
            bad("ackTimeoutMs", "must be between 10 and 600000");
        }
        // Past 10 the ceiling (over an hour at the default timeout) would be a stop in
        // all but name.
        if self.max_resends > 10 {
            bad("maxResends", "must be at most 10");
        }
        if !(1..=65_536).contains(&self.window) {
            bad("window", "must be between 1 and 65536");
        }
        if !(1024..=(64 << 20)).contains(&self.max_frame_len) {
            bad("maxFrameLen", "must be between 1 KiB and 64 MiB");
        }
        if !(100..=600_000).contains(&self.handshake_timeout_ms) {
            bad("handshakeTimeoutMs", "must be between 100 and 600000");
        }
        if !(100..=600_000).contains(&self.write_timeout_ms) {
            bad("writeTimeoutMs", "must be between 100 and 600000");
        }
        if !(1..=1_000_000).contains(&self.max_streams_per_node) {
            bad("maxStreamsPerNode", "must be between 1 and 1000000");
        }
        problems
    }

    pub(crate) fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }

    pub(crate) fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_fields_are_named() {
        CloudHubConfig::default().validate().unwrap();
        let cfg = CloudHubConfig {
            window: 0,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("window"));
        let cfg = CloudHubConfig {
            tls: Some(TlsFiles::default()),
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("tls.caFile")
        );
    }
}
