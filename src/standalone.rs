//! `edgemesh proxy`: the proxy as its own process against a metamanager socket — the
//! reason metamanager serves metadata over a socket at all — or, with `source:
//! kubernetes`, against a Kubernetes-style API (a KubeEdge edge's metaServer, a
//! kube-apiserver), in place of kubeedge/edgemesh's agent.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use beehive::{Core, CoreConfig};
use edgemesh_proxy::config::Source;
use edgemesh_proxy::kube_feed::FeedStatus;
use edgemesh_proxy::{Addresses, EdgeMesh, EdgeMeshConfig};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config_file::{self, check, section};
use crate::edgecore::{MeshHealth, grace_problem, mesh_alive, mesh_check, metamanager_check};
use crate::error::{Error, Result};
use crate::health::{self, Check, HealthConfig, MetricsText, Probe};

/// The complete, commented default config (`edgemesh proxy --defaultconfig`).
pub const DEFAULT_YAML: &str = include_str!("../config/edgemesh.yaml");

/// The standalone proxy's config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// The module bus.
    pub beehive: CoreConfig,
    /// `/healthz`, `/readyz` and `/metrics`.
    pub health: HealthConfig,
    /// This node's name, as Endpoints record it (with `source: kubernetes`,
    /// `edgeMesh.kubernetes.nodeName` overrides it).
    pub node_name: String,
    /// The proxy.
    pub edge_mesh: EdgeMeshConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let edge_mesh = EdgeMeshConfig {
            socket_path: "/var/lib/edgemesh/metamanager.sock".into(),
            // No edgehub beside it: no cloud link to tunnel through.
            tunnel: edgemesh_proxy::config::TunnelConfig {
                enable: false,
                ..Default::default()
            },
            ..Default::default()
        };
        ProxyConfig {
            beehive: CoreConfig::default(),
            health: HealthConfig::on("127.0.0.1:10351"),
            node_name: "edge-node".into(),
            edge_mesh,
        }
    }
}

impl AsRef<beehive::CoreConfig> for ProxyConfig {
    fn as_ref(&self) -> &beehive::CoreConfig {
        &self.beehive
    }
}

impl ProxyConfig {
    /// Every problem, one per field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = check("health", self.health.validate())
            .into_iter()
            .collect();
        problems.extend(section("beehive", self.beehive.problems()));
        problems.extend(section("edgeMesh", self.edge_mesh.problems()));
        problems.extend(grace_problem(&self.beehive, &self.edge_mesh, "edgeMesh"));
        if self.node_name.is_empty() {
            problems.push("nodeName: must not be empty".into());
        }
        if self.edge_mesh.source == Source::Socket
            && self.edge_mesh.socket_path.as_os_str().is_empty()
        {
            problems.push("edgeMesh: invalid config field socketPath: must be set".into());
        }
        problems
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        config_file::load(path, Self::problems)
    }
}

/// A standalone proxy, its sockets bound and its health endpoint serving, not yet running.
pub struct Standalone {
    core: Core,
    addresses: Addresses,
    health: Option<SocketAddr>,
    /// Stops the health endpoint when the proxy stops, or is dropped unrun.
    stop_health: DropGuard,
}

impl Standalone {
    /// Binds every socket of `config` (a busy port is reported here) and starts serving
    /// `/healthz`, `/readyz` and `/metrics`.
    pub async fn build(config: &ProxyConfig) -> Result<Self> {
        let mut core = Core::new(config.beehive.clone())?;
        let mesh = &config.edge_mesh;
        let module = EdgeMesh::bind(mesh.clone(), &config.node_name)
            .map_err(|e| Error::Io(e.to_string()))?;
        let addresses = module.addresses();
        let listener = health::listen(&config.health).await?;
        let health = listener.as_ref().and_then(|l| l.local_addr().ok());
        let stop_health = CancellationToken::new();
        if let Some(listener) = listener {
            let health = MeshHealth {
                generation: module.generation(),
                liveness: module.liveness(),
                drain: module.drain(),
            };
            let socket = mesh.socket_path.clone();
            let feed = module.feed_status();
            let probe: Probe = Arc::new(move || {
                let health = health.clone();
                let socket = socket.clone();
                let feed = feed.clone();
                Box::pin(async move {
                    let source = match feed {
                        Some(feed) => kubernetes_check(&feed),
                        None => metamanager_check(&socket).await,
                    };
                    vec![source, mesh_check(&health), mesh_alive(&health)]
                })
            });
            let metrics = module.metrics();
            let metrics: MetricsText = Arc::new(move || metrics.encode());
            tokio::spawn(health::serve(
                listener,
                probe,
                Some(metrics),
                stop_health.clone(),
            ));
        }
        core.register(Box::new(module))?;
        Ok(Standalone {
            core,
            addresses,
            health,
            stop_health: stop_health.drop_guard(),
        })
    }

    /// Where the proxy listens.
    pub fn mesh_addresses(&self) -> Addresses {
        self.addresses
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served, if on.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health
    }

    /// Runs until `stop` resolves, then drains and stops.
    pub async fn run_until(self, stop: impl Future<Output = ()>) {
        let report = self.core.run_until(stop).await;
        drop(self.stop_health);
        log::info!("stopped: {report:?}");
    }
}

/// Whether the Kubernetes source has listed Services and EndpointSlices (the readiness
/// line `source: kubernetes` shows instead of metamanager's).
fn kubernetes_check(feed: &FeedStatus) -> Check {
    Check {
        name: "kubernetes",
        ok: feed.synced(),
        required: true,
        live: false,
        detail: feed.describe(),
    }
}

/// Runs the proxy until `stop` resolves.
pub async fn run(config: &ProxyConfig, stop: impl Future<Output = ()>) -> Result<()> {
    Standalone::build(config).await?.run_until(stop).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_yaml_is_the_default_config() {
        let parsed: ProxyConfig =
            config_file::parse(DEFAULT_YAML, "default", ProxyConfig::problems).unwrap();
        assert_eq!(parsed, ProxyConfig::default());
    }

    #[test]
    fn a_kubernetes_source_needs_no_socket_and_a_url_for_server() {
        let text = "edgeMesh:\n  socketPath: \"\"\n  source: kubernetes\n  \
                    kubernetes: {server: \"http://127.0.0.1:10550\", remoteEndpoints: refuse}\n";
        let parsed: ProxyConfig = config_file::parse(text, "test", ProxyConfig::problems).unwrap();
        assert_eq!(parsed.edge_mesh.source, Source::Kubernetes);
        let bad = text.replace("http://127.0.0.1:10550", "127.0.0.1:10550");
        let err = config_file::parse::<ProxyConfig>(&bad, "test", ProxyConfig::problems)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubernetes.server"), "{err}");
        let socket = text.replace("source: kubernetes", "source: socket");
        let err = config_file::parse::<ProxyConfig>(&socket, "test", ProxyConfig::problems)
            .unwrap_err()
            .to_string();
        assert!(err.contains("socketPath"), "{err}");
    }
}
