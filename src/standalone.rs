//! `edgemesh proxy`: the proxy as its own process against a metamanager socket — the
//! reason metamanager serves metadata over a socket at all.

use std::future::Future;
use std::path::Path;

use beehive::{Core, CoreConfig};
use edgemesh_proxy::{EdgeMesh, EdgeMeshConfig};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config_file::{self, check, section};
use crate::edgecore::{MeshHealth, grace_problem, mesh_alive, mesh_check, metamanager_check};
use crate::error::{Error, Result};
use crate::health::{self, HealthConfig, MetricsText, Probe};

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
    /// This node's name, as Endpoints record it.
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
        if self.edge_mesh.socket_path.as_os_str().is_empty() {
            problems.push("edgeMesh: invalid config field socketPath: must be set".into());
        }
        problems
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        config_file::load(path, Self::problems)
    }
}

/// Runs the proxy until `stop` resolves.
pub async fn run(config: &ProxyConfig, stop: impl Future<Output = ()>) -> Result<()> {
    let mut core = Core::new(config.beehive.clone())?;
    let mesh = &config.edge_mesh;
    let module =
        EdgeMesh::bind(mesh.clone(), &config.node_name).map_err(|e| Error::Io(e.to_string()))?;
    let health = health::listen(&config.health).await?;
    let stop_health = CancellationToken::new();
    if let Some(listener) = health {
        let health = MeshHealth {
            generation: module.generation(),
            liveness: module.liveness(),
            drain: module.drain(),
        };
        let socket = mesh.socket_path.clone();
        let probe: Probe = Arc::new(move || {
            let health = health.clone();
            let socket = socket.clone();
            Box::pin(async move {
                vec![
                    metamanager_check(&socket).await,
                    mesh_check(&health),
                    mesh_alive(&health),
                ]
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
    let report = core.run_until(stop).await;
    stop_health.cancel();
    log::info!("stopped: {report:?}");
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
}
