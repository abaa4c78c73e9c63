//! cloudcore: the cloud process (cloudhub and edgecontroller).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use beehive::{Core, CoreConfig, ShutdownReport};
use cloudhub::{CloudHub, CloudHubConfig, Hub};
use edgecontroller::{EdgeController, EdgeControllerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config_file::{self, check, section};
use crate::error::{Error, Result};
use crate::health::{self, Check, HealthConfig, Probe};

/// The complete, commented default config (`cloudcore --defaultconfig`).
pub const DEFAULT_YAML: &str = include_str!("../config/cloudcore.yaml");

/// cloudcore's config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CloudCoreConfig {
    /// The module bus.
    pub beehive: CoreConfig,
    /// `/healthz` and `/readyz`.
    pub health: HealthConfig,
    /// The modules.
    pub modules: CloudModules,
}

/// cloudcore's modules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CloudModules {
    /// The WebSocket server edge nodes dial.
    pub cloud_hub: CloudHubConfig,
    /// The source of Services, Endpoints and Pods, and what each node gets of them.
    pub edge_controller: EdgeControllerConfig,
}

impl Default for CloudCoreConfig {
    fn default() -> Self {
        CloudCoreConfig {
            beehive: CoreConfig::default(),
            health: HealthConfig::on("127.0.0.1:10550"),
            modules: CloudModules::default(),
        }
    }
}

impl CloudCoreConfig {
    /// Every problem, one per section.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = check("health", self.health.validate())
            .into_iter()
            .collect();
        problems.extend(section("beehive", self.beehive.problems()));
        problems.extend(section(
            "modules.cloudHub",
            self.modules.cloud_hub.problems(),
        ));
        problems
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        config_file::load(path, Self::problems)
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Self> {
        config_file::parse(text, "config", Self::problems)
    }
}

/// An assembled cloudcore, bound and ready to run.
pub struct CloudCore {
    /// The bus, for adding modules before running.
    pub core: Core,
    hub: Arc<Hub>,
    hub_addr: SocketAddr,
    health: Option<TcpListener>,
}

async fn bind(what: &str, address: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| Error::Io(format!("{what}: cannot listen on {address}: {e}")))
}

impl CloudCore {
    /// Binds the listeners, loads TLS files and registers the modules.
    pub async fn build(config: &CloudCoreConfig) -> Result<Self> {
        let mut core = Core::new(config.beehive.clone())?;
        let hub_cfg = &config.modules.cloud_hub;
        let tls = hub_cfg
            .tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?;
        let listener = bind("cloudhub", &hub_cfg.address).await?;
        let hub_addr = listener
            .local_addr()
            .map_err(|e| Error::Io(e.to_string()))?;
        let module = CloudHub::new(hub_cfg.clone(), listener, tls);
        let hub = module.hub();
        core.register(Box::new(module))?;
        let controller = &config.modules.edge_controller;
        if controller.enable {
            let module = EdgeController::new(controller.clone())
                .await
                .map_err(|e| Error::Io(format!("edgecontroller: {e}")))?;
            core.register(Box::new(module))?;
        }
        let health = match config.health.enable {
            true => Some(bind("health", &config.health.address).await?),
            false => None,
        };
        Ok(CloudCore {
            core,
            hub,
            hub_addr,
            health,
        })
    }

    /// Where cloudhub listens.
    pub fn hub_addr(&self) -> SocketAddr {
        self.hub_addr
    }

    /// Where `/healthz` is served, if it is.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// cloudhub's shared state, for stats.
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// Runs until `stop` resolves, then shuts every module down.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> ShutdownReport {
        let stop_health = CancellationToken::new();
        if let Some(listener) = self.health {
            let hub = self.hub.clone();
            let probe: Probe = Arc::new(move || {
                let stats = hub.stats();
                Box::pin(async move {
                    vec![Check {
                        name: "cloudhub",
                        ok: true,
                        required: true,
                        live: false,
                        detail: format!(
                            "listening; {} nodes connected, {} objects queued, {} awaiting ACK",
                            stats.connected, stats.pending, stats.inflight
                        ),
                    }]
                })
            });
            tokio::spawn(health::serve(listener, probe, None, stop_health.clone()));
        }
        let report = self.core.run_until(stop).await;
        stop_health.cancel();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_yaml_is_the_default_config() {
        assert_eq!(
            CloudCoreConfig::parse(DEFAULT_YAML).unwrap(),
            CloudCoreConfig::default()
        );
    }

    #[test]
    fn problems_are_reported_per_field() {
        let err = CloudCoreConfig::parse(
            "beehive: {inboxCapacity: 0}\nmodules: {cloudHub: {window: 0, nodeLimit: 0}}\n",
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 64);
        let text = err.to_string();
        assert!(
            text.contains("beehive") && text.contains("inboxCapacity"),
            "{text}"
        );
        assert!(
            text.contains("modules.cloudHub") && text.contains("window"),
            "{text}"
        );
        let err = CloudCoreConfig::parse("modules: {cloudHub: {adress: x}}\n").unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }
}
