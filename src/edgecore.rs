//! edgecore: the edge process (edgehub, metamanager and edgemesh).

use crate::pki::renew::Renewal;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use beehive::{Core, CoreConfig, ShutdownReport};
use edgehub::{EdgeHub, EdgeHubConfig};
use edgemesh_proxy::drain::Drain;
use edgemesh_proxy::metrics::Metrics;
use edgemesh_proxy::{Addresses, EdgeMesh, EdgeMeshConfig, Liveness};
use metamanager::{MetaManager, MetaManagerConfig, Store};
use proto::metaclient::MetaClient;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config_file::{self, check, section};
use crate::error::{Error, Result};
use crate::health::{self, Check, HealthConfig, Heard, LinkWatch, Probe};

/// The complete, commented default config (`edgecore --defaultconfig`).
pub const DEFAULT_YAML: &str = include_str!("../config/edgecore.yaml");

/// edgecore's config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgeCoreConfig {
    /// The module bus.
    pub beehive: CoreConfig,
    /// `/healthz` and `/readyz`.
    pub health: HealthConfig,
    /// Certificate renewal through cloudcore's PKI (written by `edgecore join`).
    pub pki: EdgePkiConfig,
    /// The modules.
    pub modules: EdgeModules,
}

/// Certificate renewal (`pki:` in edgecore's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgePkiConfig {
    /// cloudcore's PKI port, `host:port`; empty: the certificate is never renewed here.
    pub address: String,
    /// Percent of the certificate's life after which it is renewed.
    pub renew_at_percent: u8,
}

impl Default for EdgePkiConfig {
    fn default() -> Self {
        EdgePkiConfig {
            address: String::new(),
            renew_at_percent: 80,
        }
    }
}

impl EdgePkiConfig {
    /// Every problem with the settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=99).contains(&self.renew_at_percent) {
            problems.push("renewAtPercent: must be 1 to 99".into());
        }
        if !self.address.is_empty() && !self.address.contains(':') {
            problems.push(format!("address: {:?} is not host:port", self.address));
        }
        problems
    }
}

/// edgecore's modules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgeModules {
    /// The cloud link.
    pub edge_hub: EdgeHubConfig,
    /// The metadata store and its socket.
    pub meta_manager: MetaManagerConfig,
    /// The proxy.
    pub edge_mesh: EdgeMeshConfig,
}

impl Default for EdgeCoreConfig {
    fn default() -> Self {
        EdgeCoreConfig {
            beehive: CoreConfig::default(),
            health: HealthConfig::on("127.0.0.1:10350"),
            pki: EdgePkiConfig::default(),
            modules: EdgeModules::default(),
        }
    }
}

impl AsRef<beehive::CoreConfig> for EdgeCoreConfig {
    fn as_ref(&self) -> &beehive::CoreConfig {
        &self.beehive
    }
}

impl EdgeCoreConfig {
    /// Every problem, one per section.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = check("health", self.health.validate())
            .into_iter()
            .collect();
        problems.extend(section("beehive", self.beehive.problems()));
        problems.extend(section("pki", self.pki.problems()));
        if !self.pki.address.is_empty() && self.modules.edge_hub.tls_files().is_none() {
            problems.push("pki: address needs modules.edgeHub.tls (the files to renew)".into());
        }
        problems.extend(section("modules.edgeHub", self.modules.edge_hub.problems()));
        problems.extend(section(
            "modules.metaManager",
            self.modules.meta_manager.problems(),
        ));
        problems.extend(section(
            "modules.edgeMesh",
            self.modules.edge_mesh.problems(),
        ));
        let mesh = &self.modules.edge_mesh;
        problems.extend(grace_problem(&self.beehive, mesh, "modules.edgeMesh"));
        if mesh.enable
            && mesh.socket_path.as_os_str().is_empty()
            && !self.modules.meta_manager.enable
        {
            problems.push(
                "modules.edgeMesh: invalid config field socketPath: must be set when metaManager is disabled"
                    .into(),
            );
        }
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

/// An assembled edgecore, ready to run.
pub struct EdgeCore {
    /// The bus, for adding modules before running.
    pub core: Core,
    heard: Heard,
    socket: Option<PathBuf>,
    mesh: Option<Mesh>,
    health: Option<TcpListener>,
    /// The metrics of the modules other than the mesh (whose own registry it keeps).
    registry: Arc<prometheus_client::registry::Registry>,
    /// The certificate's renewal, when the config names cloudcore's PKI.
    renewal: Option<Renewal>,
}

/// What edgecore keeps of its edgemesh: readiness, metrics, addresses.
struct Mesh {
    health: MeshHealth,
    metrics: Arc<Metrics>,
    addresses: Addresses,
}

impl EdgeCore {
    /// Opens the store, loads TLS files and registers the modules.
    pub async fn build(config: &EdgeCoreConfig) -> Result<Self> {
        let mut core = Core::new(config.beehive.clone())?;
        let mut registry = prometheus_client::registry::Registry::default();
        let meta = &config.modules.meta_manager;
        let socket = if meta.enable {
            let store = Store::open(&meta.db_path)?;
            let module =
                MetaManager::new(meta.clone(), store).for_node(&config.modules.edge_hub.node_id);
            module
                .refused_peers()
                .register(registry.sub_registry_with_prefix("metamanager"));
            core.register(Box::new(module))?;
            Some(meta.socket_path.clone())
        } else {
            None
        };
        let hub = &config.modules.edge_hub;
        if hub.enable && hub.insecure {
            log::warn!(
                "edgeHub.insecure: the cloud link is plain ws://, readable by anyone on the path \
                 and open to impersonation; use TLS (`edgecore join`) outside tests"
            );
        }
        let tls = match hub.tls_files().filter(|_| hub.enable) {
            Some(files) => Some(crate::tls::client_config(files).map_err(|e| {
                Error::Tls(format!(
                    "{e} (a node gets its certificate with `edgecore join --cloud HOST:PORT \
                     --token TOKEN --node NAME`)"
                ))
            })?),
            None => None,
        };
        let (publish, source) = match tls {
            Some(tls) => {
                let (tx, rx) = tokio::sync::watch::channel(tls);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        core.register(Box::new(EdgeHub::renewable(hub.clone(), source)))?;
        let renewal = match (publish, hub.tls_files()) {
            (Some(publish), Some(files)) if hub.enable && !config.pki.address.is_empty() => {
                Some(Renewal {
                    address: config.pki.address.clone(),
                    node: hub.node_id.clone(),
                    tls: files.clone(),
                    percent: config.pki.renew_at_percent,
                    publish,
                })
            }
            _ => None,
        };
        let mesh_cfg = &config.modules.edge_mesh;
        let mesh = if mesh_cfg.enable {
            let mut mesh_cfg = mesh_cfg.clone();
            if mesh_cfg.socket_path.as_os_str().is_empty() {
                mesh_cfg.socket_path = meta.socket_path.clone();
            }
            // Without edgehub there is no cloud link to carry streams: endpoints elsewhere
            // answer 503, and those without a node are dialled from here.
            if !hub.enable {
                mesh_cfg.tunnel.enable = false;
            }
            let module =
                EdgeMesh::bind(mesh_cfg, &hub.node_id).map_err(|e| Error::Io(e.to_string()))?;
            let mesh = Mesh {
                health: MeshHealth {
                    generation: module.generation(),
                    liveness: module.liveness(),
                    drain: module.drain(),
                },
                metrics: module.metrics(),
                addresses: module.addresses(),
            };
            core.register(Box::new(module))?;
            Some(mesh)
        } else {
            None
        };
        let (watch, heard) = LinkWatch::new();
        core.register(Box::new(watch))?;
        let health = health::listen(&config.health).await?;
        Ok(EdgeCore {
            core,
            heard,
            socket,
            mesh,
            health,
            registry: Arc::new(registry),
            renewal,
        })
    }

    /// Where `/healthz` is served, if it is.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where edgemesh listens, if it runs.
    pub fn mesh_addresses(&self) -> Option<Addresses> {
        self.mesh.as_ref().map(|m| m.addresses)
    }

    /// Runs until `stop` resolves, then shuts every module down.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> ShutdownReport {
        let stop_health = CancellationToken::new();
        if let Some(renewal) = self.renewal {
            tokio::spawn(crate::pki::renew::run(renewal, stop_health.clone()));
        }
        if let Some(listener) = self.health {
            let heard = self.heard.clone();
            let socket = self.socket.clone();
            let mesh = self.mesh.as_ref().map(|m| m.health.clone());
            let bus = self.core.context();
            let probe: Probe = Arc::new(move || {
                let up = heard.link_up.load(Ordering::SeqCst);
                // Only a running metamanager reports its store.
                let store = socket.is_some().then(|| heard.store_check());
                let socket = socket.clone();
                let mesh = mesh.clone();
                let stopping = bus.is_shutting_down();
                Box::pin(async move {
                    let mut checks = edge_checks(up, socket, mesh).await;
                    checks.extend(store);
                    checks.extend(stopping.then(shutting_down));
                    checks
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

/// The edge is ready when metamanager answers on its socket and edgemesh (when on) has
/// loaded the Services; the cloud link is shown but not required (the edge keeps serving
/// from SQLite while offline).
async fn edge_checks(
    link_up: bool,
    socket: Option<PathBuf>,
    mesh: Option<MeshHealth>,
) -> Vec<Check> {
    let mut checks = vec![Check {
        name: "cloud link",
        ok: link_up,
        required: false,
        live: false,
        detail: if link_up { "up" } else { "down" }.into(),
    }];
    if let Some(path) = socket {
        checks.push(metamanager_check(&path).await);
    }
    if let Some(mesh) = mesh {
        checks.push(mesh_check(&mesh));
        checks.push(mesh_alive(&mesh));
    }
    checks
}

/// Whether metamanager answers a ping on its socket.
pub(crate) async fn metamanager_check(path: &Path) -> Check {
    let ping = async {
        let mut client = MetaClient::connect(path, Duration::from_secs(1)).await?;
        client.ping().await
    };
    let (ok, detail) = match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(())) => (true, format!("answering on {}", path.display())),
        Ok(Err(e)) => (false, format!("{}: {e}", path.display())),
        Err(_) => (false, format!("{}: no answer within 2s", path.display())),
    };
    Check {
        name: "metamanager",
        ok,
        required: true,
        live: false,
        detail,
    }
}

/// Fails readiness from the moment shutdown begins (SIGTERM), before any module has
/// stopped, so load balancers stop sending new work while the drain runs.
pub(crate) fn shutting_down() -> Check {
    Check {
        name: "shutdown",
        ok: false,
        required: true,
        live: false,
        detail: "shutting down: draining".into(),
    }
}

/// Beehive's grace period must outlast edgemesh's drain, or the core abandons the module
/// mid-drain (connections cut, iptables rules left behind).
pub(crate) fn grace_problem(
    beehive: &CoreConfig,
    mesh: &EdgeMeshConfig,
    mesh_section: &str,
) -> Option<String> {
    (mesh.enable && beehive.grace_period_ms <= mesh.drain_timeout_ms).then(|| {
        format!(
            "beehive: invalid config field gracePeriodMs: must be longer than \
             {mesh_section}.drainTimeoutMs ({} ms), got {} (leave a few seconds more)",
            mesh.drain_timeout_ms, beehive.grace_period_ms
        )
    })
}

/// Whether edgemesh's worker threads are serving and it has loaded the Services
/// (`generation` catalogs swapped in, 1 or more); not once its drain has begun.
pub(crate) fn mesh_check(health: &MeshHealth) -> Check {
    let generation = *health.generation.borrow();
    if health.drain.draining() {
        return Check {
            name: "edgemesh",
            ok: false,
            required: true,
            live: false,
            detail: format!(
                "draining: no new connections; {} still open",
                health.drain.live()
            ),
        };
    }
    let (ok, detail) = match (health.liveness.workers(), generation) {
        (None, _) => (false, "not started".to_owned()),
        (Some(0), _) => (false, "no worker thread serving".to_owned()),
        (Some(n), 0) => (
            false,
            format!("{n} worker thread(s) serving; waiting for the first list of services"),
        ),
        (Some(n), _) => (
            true,
            format!("{n} worker thread(s) serving; services loaded"),
        ),
    };
    Check {
        name: "edgemesh",
        ok,
        required: true,
        live: false,
        detail,
    }
}

/// Whether edgemesh's worker threads run: a process whose proxy threads died is not
/// alive, whatever else answers. Before the module starts, none run yet, and that is fine.
pub(crate) fn mesh_alive(health: &MeshHealth) -> Check {
    let workers = health.liveness.workers();
    Check {
        name: "edgemesh workers",
        ok: workers != Some(0),
        required: false,
        live: true,
        detail: match workers {
            None => "starting".into(),
            Some(n) => format!("{n} serving"),
        },
    }
}

/// What health checks read of an edgemesh.
#[derive(Clone)]
pub(crate) struct MeshHealth {
    /// Catalogs swapped in.
    pub generation: tokio::sync::watch::Receiver<u64>,
    /// Whether its worker threads run.
    pub liveness: Arc<Liveness>,
    /// Its shutdown drain.
    pub drain: Drain,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_yaml_is_the_default_config() {
        assert_eq!(
            EdgeCoreConfig::parse(DEFAULT_YAML).unwrap(),
            EdgeCoreConfig::default()
        );
    }

    #[test]
    fn secure_unless_said_otherwise() {
        let err = EdgeCoreConfig::parse("modules: {edgeHub: {tls: null}}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("run `edgecore join`"), "{err}");
        let plain = EdgeCoreConfig::parse("modules: {edgeHub: {insecure: true}}\n").unwrap();
        assert_eq!(plain.modules.edge_hub.tls_files(), None, "tls ignored");
        assert!(
            EdgeCoreConfig::default()
                .modules
                .edge_hub
                .tls_files()
                .is_some()
        );
    }

    #[test]
    fn every_bad_section_is_reported() {
        let err = EdgeCoreConfig::parse(
            "modules:\n  edgeHub: {nodeId: \"Bad Name\"}\n  metaManager: {watchBuffer: 0}\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("modules.edgeHub") && text.contains("nodeId"),
            "{text}"
        );
        assert!(
            text.contains("modules.metaManager") && text.contains("watchBuffer"),
            "{text}"
        );
    }

    #[test]
    fn the_grace_period_must_outlast_the_drain() {
        // The defaults fit: 15 s of grace for a 10 s drain.
        EdgeCoreConfig::parse("{}").unwrap();
        let err = EdgeCoreConfig::parse("modules:\n  edgeMesh: {drainTimeoutMs: 15000}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gracePeriodMs") && err.contains("drainTimeoutMs"),
            "{err}"
        );
        EdgeCoreConfig::parse(
            "beehive: {gracePeriodMs: 20000}\nmodules:\n  edgeMesh: {drainTimeoutMs: 15000}\n",
        )
        .unwrap();
        // Without edgemesh there is no drain to outlast.
        EdgeCoreConfig::parse(
            "beehive: {gracePeriodMs: 1000}\nmodules:\n  edgeMesh: {enable: false}\n",
        )
        .unwrap();
        let err = EdgeCoreConfig::parse("modules:\n  edgeMesh: {drainTimeoutMs: 700000}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("modules.edgeMesh") && err.contains("drainTimeoutMs"),
            "{err}"
        );
    }
}
