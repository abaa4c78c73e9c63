//! The metadata feed of `source: kubernetes`: list and watch of Services and EndpointSlices
//! on a Kubernetes-style API with kube-rs — a KubeEdge edge's metaServer
//! (`http://127.0.0.1:10550`, where kubeedge/edgemesh's agent reads them) or a
//! kube-apiserver — feeding the same [`Catalog`] metamanager's socket feeds.
//!
//! **EndpointSlices, not Endpoints**: what kube-proxy reads, and the v1 Endpoints API is
//! deprecated. A Service's slices (label `kubernetes.io/service-name`) are merged into the
//! one [`Endpoints`] per Service the catalog reads, one subset per slice. edgecontroller
//! merges slices the same way into Endpoints JSON (modules/edgecontroller/src/kubernetes.rs,
//! `merge`); a module never imports another, and here the merge goes straight to the
//! parsed form, so the few lines are repeated rather than shared.
//!
//! **Relists**: kube-runtime's watcher lists, watches from the list's resourceVersion, and
//! lists again after `410 Gone` or a broken watch; its `Init … InitDone` becomes one bulk
//! rebuild (see [`Side`]), so nothing deleted while the watch was down survives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use proto::metaclient::WatchEvent;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, Defaults, Kept};
use crate::config::KubernetesConfig;
use crate::follow::Side;
use crate::objects::{Address, Endpoints, Service, Subset};
use crate::rebuild::{self, Rebuild};

/// Label on an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long to wait before building a client again after it could not be built (a
/// kubeconfig not yet written, say).
const CLIENT_RETRY: Duration = Duration::from_secs(5);

/// Whether the feed has listed both kinds, and the last error, for `/readyz`.
#[derive(Debug)]
pub struct FeedStatus {
    /// The API, as configured (for the readiness line).
    api: String,
    state: Mutex<FeedState>,
}

#[derive(Debug, Default)]
struct FeedState {
    services: bool,
    slices: bool,
    error: Option<String>,
}

impl FeedStatus {
    /// The status of a feed from the API `config` names, before it has listed anything.
    pub fn new(config: &KubernetesConfig) -> Self {
        let api = match (config.kubeconfig.as_os_str().is_empty(), &config.server) {
            (true, server) if server.is_empty() => "the in-cluster API".to_owned(),
            (true, server) => server.clone(),
            (false, server) if server.is_empty() => config.kubeconfig.display().to_string(),
            (false, server) => format!("{server} ({})", config.kubeconfig.display()),
        };
        FeedStatus {
            api,
            state: Mutex::default(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut FeedState)) {
        change(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Forgets the last error: the API answered since.
    fn clear_error(&self) {
        self.update(|s| s.error = None);
    }

    /// True once Services and EndpointSlices have both been listed.
    pub fn synced(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.services && state.slices
    }

    /// One line on where it reads and how far it got.
    pub fn describe(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = match (state.services, state.slices) {
            (true, true) => format!("synced: services and endpointslices from {}", self.api),
            (false, false) => format!("listing services and endpointslices from {}", self.api),
            (true, false) => format!("listing endpointslices from {}", self.api),
            (false, true) => format!("listing services from {}", self.api),
        };
        if let Some(e) = &state.error {
            line.push_str("; last error: ");
            line.push_str(e);
        }
        line
    }
}

/// A kube client for `config`: its kubeconfig (with `server` replacing the kubeconfig's),
/// or `server` alone with no credentials (KubeEdge's metaServer asks for none), or the
/// in-cluster config when both are empty.
pub async fn client(config: &KubernetesConfig) -> Result<Client, String> {
    let server = || -> Result<_, String> {
        config
            .server
            .parse()
            .map_err(|e| format!("kubernetes.server {}: {e}", config.server))
    };
    let kube_config = if !config.kubeconfig.as_os_str().is_empty() {
        let path = &config.kubeconfig;
        let file = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut kube_config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !config.server.is_empty() {
            kube_config.cluster_url = server()?;
        }
        kube_config
    } else if !config.server.is_empty() {
        kube::Config::new(server()?)
    } else {
        kube::Config::infer().await.map_err(|e| e.to_string())?
    };
    Client::try_from(kube_config).map_err(|e| e.to_string())
}

/// What the catalog reads of one EndpointSlice: its Service's key and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    /// `<ns>/endpoints/<service>`, as the catalog looks Endpoints up.
    endpoints: String,
    /// Its ready addresses and ports, as one subset.
    subset: Subset,
}

impl Slice {
    /// `None` for a slice that names no Service (the catalog could not use it).
    fn parse(slice: &Value) -> Option<Slice> {
        let meta = &slice["metadata"];
        let service = meta["labels"][SERVICE_NAME_LABEL].as_str()?;
        let namespace = meta["namespace"].as_str().unwrap_or("default");
        let mut addresses = Vec::new();
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            // A missing ready condition means ready (the API's convention); not-ready
            // endpoints are left out, as Endpoints' notReadyAddresses are.
            if endpoint["conditions"]["ready"].as_bool() == Some(false) {
                continue;
            }
            let node = endpoint["nodeName"].as_str().map(str::to_owned);
            // FQDN slices' addresses are names, not IPs: left out.
            addresses.extend(
                endpoint["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|ip| ip.as_str()?.parse().ok())
                    .map(|ip| Address {
                        ip,
                        node: node.clone(),
                    }),
            );
        }
        let ports = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let number = p["port"].as_u64().and_then(|n| u16::try_from(n).ok());
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    number.unwrap_or(0),
                )
            })
            .collect();
        Some(Slice {
            endpoints: format!("{namespace}/endpoints/{service}"),
            subset: Subset { addresses, ports },
        })
    }
}

/// Every Service's slices merged: one Endpoints per Service, a subset per slice.
fn merged(slices: &BTreeMap<String, Slice>) -> BTreeMap<String, Endpoints> {
    let mut endpoints: BTreeMap<String, Endpoints> = BTreeMap::new();
    for slice in slices.values() {
        endpoints
            .entry(slice.endpoints.clone())
            .or_default()
            .subsets
            .push(slice.subset.clone());
    }
    endpoints
}

/// A watcher event as the follower's [`Side`] takes it, keyed by `<ns>/<kind>/<name>`.
fn event<K: Serialize + kube::Resource>(kind: &str, event: Event<K>) -> Option<WatchEvent> {
    let keyed = |obj: &K| -> Option<(String, Value)> {
        let meta = obj.meta();
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let key = format!("{namespace}/{kind}/{}", meta.name.as_deref()?);
        Some((key, serde_json::to_value(obj).ok()?))
    };
    Some(match event {
        Event::Init => WatchEvent::Init,
        Event::InitApply(obj) => {
            let (key, value) = keyed(&obj)?;
            WatchEvent::InitApply(key, value)
        }
        Event::InitDone => WatchEvent::InitDone,
        Event::Apply(obj) => {
            let (key, value) = keyed(&obj)?;
            WatchEvent::Apply(key, value)
        }
        Event::Delete(obj) => {
            let (key, value) = keyed(&obj)?;
            WatchEvent::Delete(key, value)
        }
    })
}

/// Keeps `catalog` current from the API `config` names until `stop`; `generation` counts
/// the catalogs swapped in (the first one marks the initial sync), `status` tells
/// readiness how far it got.
pub async fn follow(
    config: KubernetesConfig,
    catalog: Arc<ArcSwap<Catalog>>,
    defaults: Defaults,
    kept: Arc<Kept>,
    generation: watch::Sender<u64>,
    status: Arc<FeedStatus>,
    stop: CancellationToken,
) {
    let client = loop {
        match client(&config).await {
            Ok(client) => break client,
            Err(e) => {
                log::error!("kubernetes source: {e} (trying again in {CLIENT_RETRY:?})");
                status.update(|s| s.error = Some(e));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CLIENT_RETRY) => {}
        }
    };
    log::info!(
        "kubernetes source: watching services and endpointslices on {}",
        status.api
    );
    let mut services = Side::new(Service::parse);
    let mut slices = Side::new(Slice::parse);
    let mut svc_stream = std::pin::pin!(
        watcher::watcher(
            Api::<KubeService>::all(client.clone()),
            watcher::Config::default()
        )
        .default_backoff()
    );
    let mut slice_stream = std::pin::pin!(
        watcher::watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default()
        )
        .default_backoff()
    );
    let mut rebuild = Rebuild::default();
    loop {
        let changed = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            // Before taking more: a burst that never pauses still gets its catalog.
            _ = std::future::ready(()), if rebuild.overdue() => None,
            Some(next) = svc_stream.next() => Some(match next {
                Ok(next) => {
                    status.clear_error();
                    event("service", next).is_some_and(|e| services.apply(e))
                }
                Err(e) => {
                    log::warn!("kubernetes source: service watch: {e} (retrying)");
                    status.update(|s| s.error = Some(format!("services: {e}")));
                    false
                }
            }),
            Some(next) = slice_stream.next() => Some(match next {
                Ok(next) => {
                    status.clear_error();
                    event("endpointslice", next).is_some_and(|e| slices.apply(e))
                }
                Err(e) => {
                    log::warn!("kubernetes source: endpointslice watch: {e} (retrying)");
                    status.update(|s| s.error = Some(format!("endpointslices: {e}")));
                    false
                }
            }),
            _ = rebuild::ready(rebuild.due()) => None,
        };
        let Some(changed) = changed else {
            let next = Catalog::build(
                &services.objects,
                &merged(&slices.objects),
                &defaults,
                &kept,
            );
            rebuild::publish(&catalog, &generation, next);
            rebuild.built();
            continue;
        };
        if !changed {
            continue;
        }
        status.update(|s| {
            s.services = services.synced;
            s.slices = slices.synced;
        });
        if services.synced && slices.synced {
            rebuild.mark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(name: &str, eps: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "shop",
                "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    }

    #[test]
    fn slices_of_a_service_merge_into_its_endpoints_ready_ones_only() {
        let mut slices = BTreeMap::new();
        let a = slice(
            "web-a",
            json!([{"addresses": ["10.244.1.5"], "nodeName": "edge-1",
                     "conditions": {"ready": true}},
                   {"addresses": ["10.244.1.6"], "conditions": {"ready": false}}]),
        );
        let b = slice("web-b", json!([{"addresses": ["10.244.2.5"]}]));
        slices.insert("shop/endpointslice/web-a".into(), Slice::parse(&a).unwrap());
        slices.insert("shop/endpointslice/web-b".into(), Slice::parse(&b).unwrap());
        let unlabelled = json!({"metadata": {"name": "x", "namespace": "shop"}});
        assert_eq!(Slice::parse(&unlabelled), None);

        let endpoints = merged(&slices);
        let web = &endpoints["shop/endpoints/web"];
        assert_eq!(web.subsets.len(), 2, "a subset per slice");
        let ips: Vec<String> = web
            .subsets
            .iter()
            .flat_map(|s| s.addresses.iter().map(|a| a.ip.to_string()))
            .collect();
        assert_eq!(
            ips,
            ["10.244.1.5", "10.244.2.5"],
            "no condition means ready"
        );
        assert_eq!(web.subsets[0].addresses[0].node.as_deref(), Some("edge-1"));
        assert_eq!(web.subsets[1].addresses[0].node, None);
        assert_eq!(web.subsets[0].port("http"), Some(8080));
    }

    #[test]
    fn status_says_what_is_listed_and_the_last_error() {
        let status = FeedStatus::new(&KubernetesConfig {
            server: "http://127.0.0.1:10550".into(),
            ..Default::default()
        });
        assert!(!status.synced());
        assert_eq!(
            status.describe(),
            "listing services and endpointslices from http://127.0.0.1:10550"
        );
        status.update(|s| {
            s.services = true;
            s.slices = true;
            s.error = Some("services: connection refused".into());
        });
        assert!(status.synced());
        assert!(status.describe().starts_with("synced: "));
        assert!(
            status
                .describe()
                .ends_with("last error: services: connection refused")
        );
    }
}
