//! The Kubernetes source: kube-runtime watchers on Services, EndpointSlices, Pods and edge
//! Nodes.
//!
//! **EndpointSlices, not Endpoints.** The v1 Endpoints API is deprecated since Kubernetes
//! 1.33, caps an object at 1,000 addresses, and is not written for every kind of Service in
//! newer clusters; EndpointSlices are what kube-proxy reads. The edge's data model is one
//! Endpoints object per Service (KubeEdge's), so this source merges a Service's slices (label
//! `kubernetes.io/service-name`) into one Endpoints-shaped object — one subset per slice,
//! each address with its `nodeName` — versioned by content, since no single slice's
//! resourceVersion describes the merge.
//!
//! **Relists.** The watcher lists, then watches from the list's resourceVersion, and lists
//! again when the watch expires (410 Gone) or breaks. A list arrives here as `Init …
//! InitApply … InitDone` and becomes one [`SourceEvent::Replace`]: the controller compares
//! it with what it holds and passes on only real changes, so a relist neither repeats
//! objects downstream nor loses a deletion that happened while the watch was down.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use beehive::async_trait;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::object::{Kind, Object};
use crate::source::{Source, SourceEvent};

/// Label on an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A kube client for `kubeconfig`, or, when it is empty, the in-cluster config (falling back
/// to `$KUBECONFIG` and `~/.kube/config`).
pub async fn client(kubeconfig: &Path) -> Result<Client> {
    let config = if kubeconfig.as_os_str().is_empty() {
        kube::Config::infer()
            .await
            .map_err(|e| Error::Kube(e.to_string()))?
    } else {
        let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| Error::Io {
            path: kubeconfig.to_owned(),
            reason: e.to_string(),
        })?;
        kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .map_err(|e| Error::Kube(format!("{}: {e}", kubeconfig.display())))?
    };
    Client::try_from(config).map_err(|e| Error::Kube(e.to_string()))
}

/// Watches a cluster through `client`.
pub struct KubernetesSource {
    client: Client,
    edge_node_label: String,
}

impl KubernetesSource {
    /// A source on `client`; only Nodes carrying `edge_node_label` are watched.
    pub fn new(client: Client, edge_node_label: &str) -> Self {
        KubernetesSource {
            client,
            edge_node_label: edge_node_label.to_owned(),
        }
    }
}

#[async_trait]
impl Source for KubernetesSource {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn run(self: Box<Self>, events: mpsc::Sender<SourceEvent>, stop: CancellationToken) {
        let client = self.client;
        let all = watcher::Config::default();
        let edge = watcher::Config::default().labels(&self.edge_node_label);
        let services = watch_kind::<Service>(
            Api::all(client.clone()),
            all.clone(),
            Kind::Service,
            events.clone(),
        );
        let pods = watch_kind::<Pod>(
            Api::all(client.clone()),
            all.clone(),
            Kind::Pod,
            events.clone(),
        );
        let nodes = watch_kind::<Node>(Api::all(client.clone()), edge, Kind::Node, events.clone());
        let slices = watch_slices(Api::all(client), all, events);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = async { tokio::join!(services, pods, nodes, slices) } => {}
        }
    }
}

/// The watcher's stream with kube-runtime's default backoff between failed attempts.
fn stream<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

/// An API object as the edge stores it: JSON without managedFields.
fn to_object<K: Serialize>(kind: Kind, obj: &K) -> Option<Object> {
    let mut value = serde_json::to_value(obj).ok()?;
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    match Object::from_value(value, false) {
        Ok(Some(o)) if o.kind == kind => Some(o),
        Ok(_) => None,
        Err(e) => {
            log::warn!("skipping a {kind:?} from the API: {e}");
            None
        }
    }
}

async fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    events: mpsc::Sender<SourceEvent>,
) where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + 'static,
{
    let mut stream = std::pin::pin!(stream(api, config));
    let mut listing: Vec<Object> = Vec::new();
    while let Some(event) = stream.next().await {
        let out = match event {
            Err(e) => {
                log::warn!("{kind:?} watch: {e} (retrying)");
                continue;
            }
            Ok(Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                listing.extend(to_object(kind, &obj));
                continue;
            }
            Ok(Event::InitDone) => SourceEvent::Replace(kind, std::mem::take(&mut listing)),
            Ok(Event::Apply(obj)) => match to_object(kind, &obj) {
                Some(o) => SourceEvent::Apply(o),
                None => continue,
            },
            Ok(Event::Delete(obj)) => match to_object(kind, &obj) {
                Some(o) => SourceEvent::Delete(o.key()),
                None => continue,
            },
        };
        if events.send(out).await.is_err() {
            return;
        }
    }
}

/// A Service's slices, by slice name.
type Slices = BTreeMap<String, Value>;

async fn watch_slices(
    api: Api<EndpointSlice>,
    config: watcher::Config,
    events: mpsc::Sender<SourceEvent>,
) {
    let mut stream = std::pin::pin!(stream(api, config));
    // (namespace, service) → its slices.
    let mut by_service: HashMap<(String, String), Slices> = HashMap::new();
    let mut listing: HashMap<(String, String), Slices> = HashMap::new();
    while let Some(event) = stream.next().await {
        let out = match event {
            Err(e) => {
                log::warn!("EndpointSlice watch: {e} (retrying)");
                continue;
            }
            Ok(Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(Event::InitApply(slice)) => {
                if let Some((key, name, value)) = slice_parts(&slice) {
                    listing.entry(key).or_default().insert(name, value);
                }
                continue;
            }
            Ok(Event::InitDone) => {
                by_service = std::mem::take(&mut listing);
                let merged = by_service
                    .iter()
                    .map(|((ns, svc), slices)| merge(ns, svc, slices))
                    .collect();
                SourceEvent::Replace(Kind::Endpoints, merged)
            }
            Ok(Event::Apply(slice)) => {
                let Some((key, name, value)) = slice_parts(&slice) else {
                    continue;
                };
                let slices = by_service.entry(key.clone()).or_default();
                slices.insert(name, value);
                SourceEvent::Apply(merge(&key.0, &key.1, slices))
            }
            Ok(Event::Delete(slice)) => {
                let Some((key, name, _)) = slice_parts(&slice) else {
                    continue;
                };
                let Some(slices) = by_service.get_mut(&key) else {
                    continue;
                };
                slices.remove(&name);
                if slices.is_empty() {
                    by_service.remove(&key);
                    SourceEvent::Delete((Kind::Endpoints, key.0, key.1))
                } else {
                    SourceEvent::Apply(merge(&key.0, &key.1, slices))
                }
            }
        };
        if events.send(out).await.is_err() {
            return;
        }
    }
}

/// (namespace, service), slice name and JSON of a slice that names its Service.
fn slice_parts(slice: &EndpointSlice) -> Option<((String, String), String, Value)> {
    let meta = &slice.metadata;
    let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone()?;
    Some(((ns, service), name, serde_json::to_value(slice).ok()?))
}

/// One Endpoints-shaped object from a Service's slices: a subset per slice, ready and
/// not-ready addresses apart, each with its node name and target.
pub fn merge(namespace: &str, service: &str, slices: &Slices) -> Object {
    let subsets: Vec<Value> = slices
        .values()
        .filter_map(|slice| {
            let mut ready = Vec::new();
            let mut not_ready = Vec::new();
            for ep in slice["endpoints"].as_array().into_iter().flatten() {
                // A missing ready condition means ready (the API's convention).
                let is_ready = ep["conditions"]["ready"].as_bool().unwrap_or(true);
                for ip in ep["addresses"].as_array().into_iter().flatten() {
                    let mut address = json!({ "ip": ip });
                    if let Some(node) = ep["nodeName"].as_str() {
                        address["nodeName"] = json!(node);
                    }
                    if ep["targetRef"].is_object() {
                        address["targetRef"] = ep["targetRef"].clone();
                    }
                    if is_ready {
                        ready.push(address);
                    } else {
                        not_ready.push(address);
                    }
                }
            }
            if ready.is_empty() && not_ready.is_empty() {
                return None;
            }
            let ports: Vec<Value> = slice["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let mut port = json!({
                        "port": p["port"],
                        "protocol": p["protocol"].as_str().unwrap_or("TCP"),
                    });
                    if let Some(name) = p["name"].as_str() {
                        port["name"] = json!(name);
                    }
                    port
                })
                .collect();
            let mut subset = json!({ "ports": ports });
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            Some(subset)
        })
        .collect();
    let value = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": service,
            "namespace": namespace,
            "annotations": {"edgemesh.io/derived-from": "endpointslices"},
        },
        "subsets": subsets,
    });
    Object::from_value(value, true)
        .ok()
        .flatten()
        .expect("a merged Endpoints is well formed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_merge_into_one_endpoints_with_node_names() {
        let slice = |name: &str, ip: &str, node: &str, ready: Option<bool>| {
            json!({
                "metadata": {"name": name},
                "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
            })
        };
        let mut slices = Slices::new();
        slices.insert(
            "web-a".into(),
            slice("web-a", "10.0.0.1", "edge-1", Some(true)),
        );
        slices.insert("web-b".into(), slice("web-b", "10.0.0.2", "edge-2", None));
        slices.insert(
            "web-c".into(),
            slice("web-c", "10.0.0.3", "edge-2", Some(false)),
        );
        let eps = merge("default", "web", &slices);
        assert_eq!(eps.name, "web");
        let subsets = eps.value["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 3);
        assert_eq!(subsets[0]["addresses"][0]["nodeName"], "edge-1");
        assert_eq!(
            subsets[1]["addresses"][0]["ip"], "10.0.0.2",
            "no condition means ready"
        );
        assert_eq!(subsets[2]["notReadyAddresses"][0]["ip"], "10.0.0.3");
        assert_eq!(subsets[0]["ports"][0]["port"], 8080);
        // Same slices, same version: a relist changes nothing downstream.
        assert_eq!(merge("default", "web", &slices).rv, eps.rv);
    }
}
