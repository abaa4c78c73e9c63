//! cloudcore: the cloud process (cloudhub and edgecontroller).

use crate::pki::server::Bootstrap;
use crate::pki::{self, Pki, PkiConfig};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use beehive::{Core, CoreConfig, ShutdownReport};
use cloudhub::{CloudHub, CloudHubConfig, Hub};
use edgecontroller::{EdgeController, EdgeControllerConfig};
use edgemesh_proxy::metrics::Metrics;
use edgemesh_proxy::tunnel::Tunnel;
use edgemesh_proxy::{EdgeMesh, EdgeMeshConfig};
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
    /// The CA, join tokens and node certificates.
    pub pki: PkiConfig,
    /// The modules.
    pub modules: CloudModules,
}

/// cloudcore's modules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CloudModules {
    /// The WebSocket server edge nodes dial.
    pub cloud_hub: CloudHubConfig,
    /// The source of Services, Endpoints and Pods, and what each node gets of them.
    pub edge_controller: EdgeControllerConfig,
    /// The cloud's mesh: dials cloud endpoints for edges, and serves cloud workloads an
    /// explicit proxy to edge Services.
    pub edge_mesh: EdgeMeshConfig,
}

impl Default for CloudModules {
    fn default() -> Self {
        CloudModules {
            cloud_hub: CloudHubConfig::default(),
            edge_controller: EdgeControllerConfig::default(),
            edge_mesh: cloud_mesh_defaults(),
        }
    }
}

/// The mesh's settings in the cloud: no interception, no DNS, the proxy off.
pub fn cloud_mesh_defaults() -> EdgeMeshConfig {
    EdgeMeshConfig {
        listen: "127.0.0.1:0".into(),
        iptables: false,
        workers: 1,
        proxy_listen: String::new(),
        tunnel: edgemesh_proxy::config::TunnelConfig {
            max_streams: 100_000,
            ..Default::default()
        },
        ..Default::default()
    }
}

impl Default for CloudCoreConfig {
    fn default() -> Self {
        CloudCoreConfig {
            beehive: CoreConfig::default(),
            health: HealthConfig::on("127.0.0.1:10550"),
            pki: PkiConfig::default(),
            modules: CloudModules::default(),
        }
    }
}

impl AsRef<beehive::CoreConfig> for CloudCoreConfig {
    fn as_ref(&self) -> &beehive::CoreConfig {
        &self.beehive
    }
}

impl CloudCoreConfig {
    /// Every problem, one per section.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = check("health", self.health.validate())
            .into_iter()
            .collect();
        problems.extend(section("beehive", self.beehive.problems()));
        problems.extend(section("pki", self.pki.problems()));
        let hub = &self.modules.cloud_hub;
        if hub.enable && !hub.insecure && hub.tls.is_none() && !self.pki.enabled() {
            problems.push(
                "modules.cloudHub: the link needs TLS: set pki.dir (cloudcore's own CA), \
                 cloudHub.tls, or cloudHub.insecure: true"
                    .into(),
            );
        }
        problems.extend(section(
            "modules.cloudHub",
            self.modules.cloud_hub.problems(),
        ));
        problems.extend(section(
            "modules.edgeMesh",
            self.modules.edge_mesh.problems(),
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
    mesh: Option<CloudMesh>,
    /// The metrics of the modules other than the mesh (whose own registry it keeps).
    registry: Arc<Registry>,
    /// The PKI's port, when the PKI is on.
    pki: Option<PkiPort>,
}

/// The PKI's HTTPS port, bound.
struct PkiPort {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    boot: Arc<Bootstrap>,
}

/// What cloudcore keeps of its mesh.
struct CloudMesh {
    metrics: Arc<Metrics>,
    proxy: Option<SocketAddr>,
    tunnel: Option<Arc<Tunnel>>,
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
        if hub_cfg.insecure {
            log::warn!(
                "cloudHub.insecure: the cloud link is plain ws:// and any client can claim any \
                 node; the PKI is off. Use TLS outside tests"
            );
        }
        let pki = match config.pki.enabled() && !hub_cfg.insecure {
            true => Some(Arc::new(Pki::open(&config.pki)?)),
            false => None,
        };
        // TLS files given by hand win; else the PKI's.
        let hub_tls = match hub_cfg.insecure {
            true => None,
            false => hub_cfg
                .tls
                .clone()
                .or_else(|| pki.as_ref().map(|p| p.hub_tls())),
        };
        let tls = hub_tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?;
        let listener = bind("cloudhub", &hub_cfg.address).await?;
        let hub_addr = listener
            .local_addr()
            .map_err(|e| Error::Io(e.to_string()))?;
        let module = CloudHub::new(hub_cfg.clone(), listener, tls)
            .map_err(|e| Error::Io(format!("cloudhub: {e}")))?;
        let hub = module.hub();
        let mut registry = Registry::default();
        hub.refusals()
            .register(registry.sub_registry_with_prefix("cloudhub"));
        let pki = match pki {
            Some(pki) => {
                let check = pki.clone();
                hub.set_revocation_check(Arc::new(move |der| check.revocation(der)));
                let refusals = cloudhub::Refusals::default();
                refusals.register_as(
                    registry.sub_registry_with_prefix("pki"),
                    "refusals",
                    "Certificate requests refused, by reason",
                );
                let listener = bind("pki", &config.pki.address).await?;
                log::info!(
                    "PKI serving /ca.crt and /edge.crt on https://{}",
                    listener
                        .local_addr()
                        .map_err(|e| Error::Io(e.to_string()))?
                );
                Some(PkiPort {
                    tls: pki::server::tls(&pki)?,
                    boot: Bootstrap::new(pki, refusals),
                    listener,
                })
            }
            None => None,
        };
        core.register(Box::new(module))?;
        let controller = &config.modules.edge_controller;
        if controller.enable {
            let module = EdgeController::new(controller.clone())
                .await
                .map_err(|e| Error::Io(format!("edgecontroller: {e}")))?;
            module
                .refusals()
                .register(registry.sub_registry_with_prefix("edgecontroller"));
            core.register(Box::new(module))?;
        }
        let mesh_cfg = &config.modules.edge_mesh;
        let mesh = if mesh_cfg.enable {
            let module = EdgeMesh::bind(mesh_cfg.clone(), "")
                .map_err(|e| Error::Io(e.to_string()))?
                .fed_by_bus();
            let mesh = CloudMesh {
                metrics: module.metrics(),
                proxy: module.addresses().proxy,
                tunnel: module.tunnel(),
            };
            core.register(Box::new(module))?;
            Some(mesh)
        } else {
            None
        };
        let health = match config.health.enable {
            true => Some(bind("health", &config.health.address).await?),
            false => None,
        };
        Ok(CloudCore {
            core,
            hub,
            hub_addr,
            health,
            mesh,
            registry: Arc::new(registry),
            pki,
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

    /// Where the cloud's explicit proxy listens, if it is on.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.mesh.as_ref().and_then(|m| m.proxy)
    }

    /// cloudhub's shared state, for stats.
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// Where the PKI's HTTPS port listens, when the PKI is on.
    pub fn pki_addr(&self) -> Option<SocketAddr> {
        self.pki.as_ref().and_then(|p| p.listener.local_addr().ok())
    }

    /// Runs until `stop` resolves, then shuts every module down.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> ShutdownReport {
        let stop_health = CancellationToken::new();
        if let Some(port) = self.pki {
            tokio::spawn(pki::server::serve(
                port.listener,
                port.tls,
                port.boot,
                stop_health.clone(),
            ));
        }
        if let Some(listener) = self.health {
            let hub = self.hub.clone();
            let tunnel = self.mesh.as_ref().and_then(|m| m.tunnel.clone());
            let probe: Probe = Arc::new(move || {
                let stats = hub.stats();
                let cloud_streams = tunnel.as_ref().map_or(0, |t| t.open_streams());
                Box::pin(async move {
                    vec![Check {
                        name: "cloudhub",
                        ok: true,
                        required: true,
                        live: false,
                        detail: format!(
                            "listening; {} nodes connected, {} objects queued, {} awaiting ACK; \
                             {} streams relayed ({} opened, {} reset, {} bytes), {} ending in the cloud",
                            stats.connected,
                            stats.pending,
                            stats.inflight,
                            stats.streams.open,
                            stats.streams.opened,
                            stats.streams.reset,
                            stats.streams.bytes,
                            cloud_streams
                        ),
                    }]
                })
            });
            let mesh = self.mesh.as_ref().map(|m| m.metrics.clone());
            let metrics = Some(health::metrics_text(mesh, self.registry.clone()));
            tokio::spawn(health::serve(listener, probe, metrics, stop_health.clone()));
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

    /// The config inside deploy/cloudcore.yaml's ConfigMap is one cloudcore takes, and it
    /// is secure: TLS from the PKI on the claim, not `insecure`.
    #[test]
    fn the_deployed_config_is_valid_and_secure() {
        let manifest = include_str!("../deploy/cloudcore.yaml");
        let first = manifest.split("\n---\n").next().unwrap();
        let map: serde_yaml_ng::Value = serde_yaml_ng::from_str(first).unwrap();
        let text = map["data"]["cloudcore.yaml"].as_str().unwrap();
        let config = CloudCoreConfig::parse(text).unwrap();
        assert!(config.pki.enabled() && !config.modules.cloud_hub.insecure);
        assert!(manifest.contains(&format!("mountPath: {}", config.pki.dir.display())));
    }

    #[test]
    fn secure_unless_said_otherwise() {
        let err = CloudCoreConfig::parse("pki: {dir: \"\"}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the link needs TLS"), "{err}");
        assert!(
            CloudCoreConfig::parse("pki: {dir: \"\"}\nmodules: {cloudHub: {insecure: true}}\n")
                .is_ok()
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
