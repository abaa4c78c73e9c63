//! Settings of edgecontroller.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where objects come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SourceKind {
    /// A folder of Kubernetes YAML (no cluster needed).
    #[default]
    Manifests,
    /// A Kubernetes API server, watched with kube-rs.
    Kubernetes,
}

/// Settings of the Kubernetes source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesConfig {
    /// kubeconfig file; empty means the in-cluster service account (or `$KUBECONFIG`,
    /// then `~/.kube/config`).
    pub kubeconfig: PathBuf,
}

/// Settings of the manifest-folder source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ManifestsConfig {
    /// Folder of `.yaml`, `.yml` and `.json` manifests, read recursively.
    pub dir: PathBuf,
    /// Milliseconds between checks for changed files.
    pub poll_interval_ms: u64,
}

impl Default for ManifestsConfig {
    fn default() -> Self {
        ManifestsConfig {
            dir: PathBuf::from("/etc/edgemesh/manifests"),
            poll_interval_ms: 500,
        }
    }
}

/// Settings of edgecontroller (`modules.edgeController:` in cloudcore's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgeControllerConfig {
    /// Whether cloudcore runs edgecontroller.
    pub enable: bool,
    /// Where objects come from: `manifests` or `kubernetes`.
    pub source: SourceKind,
    /// The manifest folder.
    pub manifests: ManifestsConfig,
    /// The Kubernetes API.
    pub kubernetes: KubernetesConfig,
    /// Label that marks a Node as an edge node. When the source has no Node with it, every
    /// node that connects is served.
    pub edge_node_label: String,
    /// Milliseconds to wait after a node connects for its report of what it holds; without
    /// one, the node is sent everything it should hold.
    pub resync_wait_ms: u64,
    /// SQLite file of the numeric resourceVersions edge nodes are sent, kept so an
    /// unchanged object keeps its number across restarts; empty keeps it in memory (new
    /// numbers then still exceed old ones, from the clock).
    pub versions_db: PathBuf,
}

impl Default for EdgeControllerConfig {
    fn default() -> Self {
        EdgeControllerConfig {
            enable: true,
            source: SourceKind::Manifests,
            manifests: ManifestsConfig::default(),
            kubernetes: KubernetesConfig::default(),
            edge_node_label: "node-role.kubernetes.io/edge".into(),
            resync_wait_ms: 3_000,
            versions_db: "/var/lib/edgemesh/cloudcore/versions.db".into(),
        }
    }
}

impl EdgeControllerConfig {
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
        if self.source == SourceKind::Manifests && self.manifests.dir.as_os_str().is_empty() {
            bad("manifests.dir", "must not be empty");
        }
        if !(50..=60_000).contains(&self.manifests.poll_interval_ms) {
            bad("manifests.pollIntervalMs", "must be between 50 and 60000");
        }
        if self.edge_node_label.is_empty() {
            bad("edgeNodeLabel", "must not be empty");
        }
        if !(1..=600_000).contains(&self.resync_wait_ms) {
            bad("resyncWaitMs", "must be between 1 and 600000");
        }
        problems
    }
}
