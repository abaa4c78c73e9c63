//! Settings of edgemesh.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::lb::Strategy;

/// Settings of edgemesh (`modules.edgeMesh:` in edgecore's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgeMeshConfig {
    /// Whether edgecore runs edgemesh.
    pub enable: bool,
    /// metamanager's socket, where Services and Endpoints are read; empty in edgecore means
    /// its own metaManager's socket.
    pub socket_path: PathBuf,
    /// Where intercepted connections arrive. It must take traffic redirected from other
    /// interfaces too (PREROUTING), so by default it listens on every address; connections
    /// that were not redirected to a Service are closed.
    pub listen: String,
    /// Install iptables rules that send every Service's ClusterIP:port to `listen`.
    pub iptables: bool,
    /// Milliseconds between checks that the rules are still in place.
    pub iptables_sync_ms: u64,
    /// Balancing when a Service has no `edgemesh.io/lb-strategy` annotation.
    pub lb_strategy: Strategy,
    /// Milliseconds a connection to an endpoint may take.
    pub connect_timeout_ms: u64,
    /// Milliseconds a proxied connection may carry nothing either way before it is closed.
    pub idle_timeout_ms: u64,
    /// Milliseconds to wait for a client's first bytes to tell its protocol; a client
    /// silent that long is taken to wait for the server (MySQL, SMTP...) and relayed as is.
    pub sniff_timeout_ms: u64,
}

impl Default for EdgeMeshConfig {
    fn default() -> Self {
        EdgeMeshConfig {
            enable: true,
            socket_path: PathBuf::new(),
            listen: "0.0.0.0:40001".into(),
            iptables: true,
            iptables_sync_ms: 5_000,
            lb_strategy: Strategy::RoundRobin,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 600_000,
            sniff_timeout_ms: 200,
        }
    }
}

impl EdgeMeshConfig {
    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<(), Error> {
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
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            bad("listen", "must be IP:port, such as 0.0.0.0:40001");
        }
        if !(100..=3_600_000).contains(&self.iptables_sync_ms) {
            bad("iptablesSyncMs", "must be between 100 and 3600000");
        }
        if !(1..=600_000).contains(&self.connect_timeout_ms) {
            bad("connectTimeoutMs", "must be between 1 and 600000");
        }
        if !(1_000..=86_400_000).contains(&self.idle_timeout_ms) {
            bad("idleTimeoutMs", "must be between 1000 and 86400000");
        }
        if !(1..=60_000).contains(&self.sniff_timeout_ms) {
            bad("sniffTimeoutMs", "must be between 1 and 60000");
        }
        problems
    }
}
