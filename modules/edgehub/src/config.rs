//! Settings of edgehub.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Certificate files for TLS on the cloud link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsFiles {
    /// PEM file of the CA that signed cloudhub's certificate.
    pub ca_file: PathBuf,
    /// PEM file of this node's certificate chain (issued for its node id).
    pub cert_file: PathBuf,
    /// PEM file of this node's private key.
    pub key_file: PathBuf,
}

impl TlsFiles {
    /// Where `edgecore join` writes them by default: the CA, and the node's certificate
    /// and key in one file.
    pub fn joined() -> Self {
        TlsFiles {
            ca_file: "/var/lib/edgemesh/pki/ca.crt".into(),
            cert_file: "/var/lib/edgemesh/pki/node.pem".into(),
            key_file: "/var/lib/edgemesh/pki/node.pem".into(),
        }
    }
}

/// Settings of edgehub (`modules.edgeHub:` in edgecore's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgeHubConfig {
    /// Whether edgecore runs edgehub (without it the node works offline only).
    pub enable: bool,
    /// cloudhub's address, `host:port`.
    pub server: String,
    /// Name cloudhub's certificate must carry; empty means the host part of `server`.
    pub server_name: String,
    /// This node's name, as the cloud knows it (a Kubernetes node name).
    pub node_id: String,
    /// Project id sent with the node id (KubeEdge's default value).
    pub project_id: String,
    /// TLS with this node's client certificate, from these files (by default where
    /// `edgecore join` writes them).
    pub tls: Option<TlsFiles>,
    /// Plain `ws://`, no certificate: the link can be read and the node impersonated.
    /// Only for tests and trusted networks; `tls` is then ignored and a warning logged.
    pub insecure: bool,
    /// Milliseconds between keepalives. The link is redialled when nothing is heard from
    /// the cloud for two of them.
    pub heartbeat_ms: u64,
    /// Milliseconds before the first redial; doubles per failure, with jitter.
    pub reconnect_initial_ms: u64,
    /// Longest wait between redials, in milliseconds.
    pub reconnect_max_ms: u64,
    /// Milliseconds a dial (TCP, TLS and WebSocket handshakes) may take.
    pub handshake_timeout_ms: u64,
    /// Milliseconds a write may block before the link is dropped and redialled.
    pub write_timeout_ms: u64,
    /// Largest WebSocket message accepted from the cloud, in bytes.
    pub max_frame_len: usize,
    /// Messages waiting to go up while a write is in progress, at most (then senders wait).
    pub outbound_buffer: usize,
}

impl Default for EdgeHubConfig {
    fn default() -> Self {
        EdgeHubConfig {
            enable: true,
            server: "127.0.0.1:10000".into(),
            server_name: String::new(),
            node_id: "edge-node".into(),
            project_id: "e632aba927ea4ac2b575ec1603d56f10".into(),
            tls: Some(TlsFiles::joined()),
            insecure: false,
            heartbeat_ms: 15_000,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            handshake_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_frame_len: 4 * 1024 * 1024,
            outbound_buffer: 1024,
        }
    }
}

impl EdgeHubConfig {
    /// The TLS files edgehub dials with: none when it is insecure.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref().filter(|_| !self.insecure)
    }

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
        if self.host().is_none() {
            bad("server", "must be host:port, such as 127.0.0.1:10000");
        }
        let name_ok =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if self.node_id.is_empty() || self.node_id.len() > 253 || !self.node_id.chars().all(name_ok)
        {
            bad(
                "nodeId",
                "must be a Kubernetes node name: lowercase letters, digits, '-' and '.'",
            );
        }
        if self.project_id.is_empty() {
            bad("projectId", "must not be empty");
        }
        if self.enable && !self.insecure && self.tls.is_none() {
            bad(
                "tls",
                "the link needs TLS: run `edgecore join`, set tls, or set insecure: true",
            );
        }
        if let Some(tls) = &self.tls {
            for (field, path) in [
                ("tls.caFile", &tls.ca_file),
                ("tls.certFile", &tls.cert_file),
                ("tls.keyFile", &tls.key_file),
            ] {
                if path.as_os_str().is_empty() {
                    bad(field, "must not be empty when tls is set");
                }
            }
        }
        if !(100..=600_000).contains(&self.heartbeat_ms) {
            bad("heartbeatMs", "must be between 100 and 600000");
        }
        if !(1..=60_000).contains(&self.reconnect_initial_ms) {
            bad("reconnectInitialMs", "must be between 1 and 60000");
        }
        if self.reconnect_max_ms < self.reconnect_initial_ms || self.reconnect_max_ms > 3_600_000 {
            bad(
                "reconnectMaxMs",
                "must be at least reconnectInitialMs and at most 3600000",
            );
        }
        if !(100..=600_000).contains(&self.handshake_timeout_ms) {
            bad("handshakeTimeoutMs", "must be between 100 and 600000");
        }
        if !(100..=600_000).contains(&self.write_timeout_ms) {
            bad("writeTimeoutMs", "must be between 100 and 600000");
        }
        if !(1024..=(64 << 20)).contains(&self.max_frame_len) {
            bad("maxFrameLen", "must be between 1 KiB and 64 MiB");
        }
        if !(1..=1 << 20).contains(&self.outbound_buffer) {
            bad("outboundBuffer", "must be between 1 and 1048576");
        }
        problems
    }

    /// The host part of `server`, when it is `host:port`.
    pub fn host(&self) -> Option<&str> {
        let (host, port) = self.server.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty() && port.parse::<u16>().is_ok()).then_some(host)
    }

    /// The name to verify cloudhub's certificate against.
    pub fn tls_server_name(&self) -> &str {
        if self.server_name.is_empty() {
            self.host().unwrap_or_default()
        } else {
            &self.server_name
        }
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// The wait before redial number `attempt` (0 for the first): capped exponential, with
    /// the upper half jittered so a fleet does not redial in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.reconnect_max_ms;
        let base = self
            .reconnect_initial_ms
            .saturating_mul(1u64 << attempt.min(32))
            .min(cap);
        let half = base / 2;
        Duration::from_millis(half + fastrand::u64(0..=base - half))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_under_a_second_grows_and_is_capped() {
        let cfg = EdgeHubConfig::default();
        for _ in 0..100 {
            assert!(cfg.backoff(0) <= Duration::from_secs(1));
            assert!(cfg.backoff(3) >= Duration::from_secs(2));
            assert!(cfg.backoff(40) <= Duration::from_millis(cfg.reconnect_max_ms));
        }
    }

    #[test]
    fn default_is_valid_and_bad_fields_are_named() {
        EdgeHubConfig::default().validate().unwrap();
        let cfg = EdgeHubConfig {
            server: "nohost".into(),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("server"));
        let cfg = EdgeHubConfig {
            node_id: "Edge_1".into(),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("nodeId"));
        assert_eq!(
            EdgeHubConfig {
                server: "[::1]:10000".into(),
                ..Default::default()
            }
            .tls_server_name(),
            "::1"
        );
    }
}
