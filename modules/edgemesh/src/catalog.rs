//! The snapshot of Services and Endpoints the request path reads: built whole from what
//! metamanager's watch reports, swapped in at once, read without locks.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::Value;

use crate::breaker::{BREAKER_ANNOTATION, BreakerPolicy, Breakers};
use crate::lb::{Backend, Balancer, Load, Strategy};
use crate::metrics::{Metrics, ServiceStats};
use crate::qps::{self, Limiter, Limiters, QPS_ANNOTATION};

/// Annotation choosing the balancing strategy.
pub const LB_ANNOTATION: &str = "edgemesh.io/lb-strategy";
/// Annotation naming the header ConsistentHash keys on.
pub const HASH_KEY_ANNOTATION: &str = "edgemesh.io/hash-key";

/// One port of a Service, with where it leads.
#[derive(Debug)]
pub struct Target {
    /// `<ns>/<name>`.
    pub service: String,
    /// The port's name (may be empty).
    pub port_name: String,
    /// The Service port.
    pub port: u16,
    /// Ready endpoints.
    pub backends: Vec<Backend>,
    /// How to choose among them.
    pub balancer: Balancer,
    /// Header ConsistentHash keys on, if the Service names one.
    pub hash_key: Option<String>,
    /// Relay as bytes without looking: the port's `appProtocol` names something other than
    /// HTTP (say `tcp`, `mysql`), so detection would only add a wait.
    pub opaque: bool,
    /// This node's limit for the Service (`edgemesh.io/qps`), shared by every port.
    pub limiter: Option<Arc<Limiter>>,
    /// When endpoints are ejected (`edgemesh.io/circuit-breaker`).
    pub breaker: BreakerPolicy,
    /// The Service's metrics.
    pub stats: Arc<ServiceStats>,
}

/// Policies for Services without annotations (from config).
#[derive(Clone, Copy, Debug, Default)]
pub struct Defaults {
    /// Balancing.
    pub strategy: Strategy,
    /// Requests per second; `None` for unlimited.
    pub qps: Option<std::num::NonZeroU32>,
    /// Circuit breaking.
    pub breaker: BreakerPolicy,
}

/// What outlives a catalog: in-flight counts, breakers, limiters and metrics, so that a
/// metadata change forgets neither load nor health nor used-up quota.
#[derive(Debug, Default)]
pub struct Kept {
    /// In-flight counts by endpoint.
    pub load: Load,
    /// Breakers by endpoint.
    pub breakers: Breakers,
    /// Limiters by Service.
    pub limiters: Limiters,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// A Service by name: its ClusterIP and ports.
#[derive(Debug)]
struct Named {
    ip: IpAddr,
    ports: Vec<(u16, String)>,
}

/// Every Service port by ClusterIP:port, and every Service by namespace and name.
#[derive(Debug, Default)]
pub struct Catalog {
    by_vip: HashMap<SocketAddr, Arc<Target>>,
    by_name: HashMap<(String, String), Named>,
}

impl Catalog {
    /// The Service port a connection to `addr` was meant for.
    pub fn lookup(&self, addr: SocketAddr) -> Option<&Arc<Target>> {
        self.by_vip.get(&addr)
    }

    /// The ClusterIP of Service `name` in `namespace`.
    pub fn cluster_ip(&self, namespace: &str, name: &str) -> Option<IpAddr> {
        self.by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|n| n.ip)
    }

    /// ClusterIP:port of Service `name` in `namespace` for `port`, given as a number or as
    /// the port's name.
    pub fn vip(&self, namespace: &str, name: &str, port: &str) -> Option<SocketAddr> {
        let named = self.by_name.get(&(namespace.to_owned(), name.to_owned()))?;
        let number = match port.parse::<u16>() {
            Ok(n) => named.ports.iter().find(|(p, _)| *p == n)?.0,
            Err(_) => named.ports.iter().find(|(_, pn)| pn == port)?.0,
        };
        Some(SocketAddr::new(named.ip, number))
    }

    /// Every ClusterIP:port, sorted (for iptables).
    pub fn vips(&self) -> Vec<SocketAddr> {
        let mut vips: Vec<SocketAddr> = self.by_vip.keys().copied().collect();
        vips.sort();
        vips
    }

    /// Builds a catalog from Services and Endpoints keyed by edge path
    /// (`<ns>/service/<name>`, `<ns>/endpoints/<name>`).
    pub fn build(
        services: &BTreeMap<String, Value>,
        endpoints: &BTreeMap<String, Value>,
        defaults: &Defaults,
        kept: &Kept,
    ) -> Catalog {
        let default = defaults.strategy;
        let mut by_vip = HashMap::new();
        let mut by_name = HashMap::new();
        for svc in services.values() {
            let meta = &svc["metadata"];
            let (Some(ns), Some(name)) = (meta["namespace"].as_str(), meta["name"].as_str()) else {
                continue;
            };
            let Some(ip) = svc["spec"]["clusterIP"]
                .as_str()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            else {
                continue; // headless or not yet assigned
            };
            let annotations = &meta["annotations"];
            let strategy = match annotations[LB_ANNOTATION].as_str() {
                None => default,
                Some(s) => s.parse().unwrap_or_else(|e| {
                    log::warn!("service {ns}/{name}: {e}; using {default:?}");
                    default
                }),
            };
            let hash_key = annotations[HASH_KEY_ANNOTATION].as_str().map(str::to_owned);
            let service = format!("{ns}/{name}");
            let limit = match annotations[QPS_ANNOTATION].as_str() {
                None => defaults.qps,
                Some(v) => qps::parse(v).unwrap_or_else(|e| {
                    log::warn!("service {service}: {QPS_ANNOTATION}: {e}; using the default");
                    defaults.qps
                }),
            };
            let limiter = kept.limiters.of(&service, limit);
            let breaker = match annotations[BREAKER_ANNOTATION].as_str() {
                None => defaults.breaker,
                Some(v) => defaults.breaker.with_annotation(v).unwrap_or_else(|e| {
                    log::warn!("service {service}: {BREAKER_ANNOTATION}: {e}; using the default");
                    defaults.breaker
                }),
            };
            let stats = kept.metrics.service(&service);
            let mut ports = Vec::new();
            let eps = endpoints.get(&format!("{ns}/endpoints/{name}"));
            for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
                let protocol = port["protocol"].as_str().unwrap_or("TCP");
                let Some(number) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                if protocol != "TCP" {
                    continue;
                }
                let port_name = port["name"].as_str().unwrap_or_default().to_owned();
                let opaque = port["appProtocol"].as_str().is_some_and(|p| {
                    !matches!(
                        p.to_ascii_lowercase().as_str(),
                        "http"
                            | "http2"
                            | "h2c"
                            | "grpc"
                            | "kubernetes.io/h2c"
                            | "kubernetes.io/ws"
                    )
                });
                let backends = eps
                    .map(|e| backends(e, &port_name, kept))
                    .unwrap_or_default();
                ports.push((number, port_name.clone()));
                let target = Target {
                    service: service.clone(),
                    port_name,
                    port: number,
                    backends,
                    balancer: Balancer::new(strategy),
                    hash_key: hash_key.clone(),
                    opaque,
                    limiter: limiter.clone(),
                    breaker,
                    stats: stats.clone(),
                };
                by_vip.insert(SocketAddr::new(ip, number), Arc::new(target));
            }
            by_name.insert((ns.to_owned(), name.to_owned()), Named { ip, ports });
        }
        let services: std::collections::HashSet<&str> =
            by_vip.values().map(|t| t.service.as_str()).collect();
        kept.limiters.retain(|s| services.contains(s));
        let endpoints: std::collections::HashSet<SocketAddr> = by_vip
            .values()
            .flat_map(|t| t.backends.iter().map(|b| b.addr))
            .collect();
        kept.breakers.retain(|a| endpoints.contains(a));
        Catalog { by_vip, by_name }
    }
}

/// Ready addresses of an Endpoints object for the Service port named `port_name`.
fn backends(endpoints: &Value, port_name: &str, kept: &Kept) -> Vec<Backend> {
    let mut out = Vec::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        let ports = subset["ports"].as_array().cloned().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .or_else(|| (ports.len() == 1).then(|| &ports[0]))
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for address in subset["addresses"].as_array().into_iter().flatten() {
            let Some(ip) = address["ip"]
                .as_str()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            out.push(Backend {
                addr,
                node: address["nodeName"].as_str().map(str::to_owned),
                inflight: kept.load.counter(addr),
                breaker: kept.breakers.of(addr),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_ports_map_to_ready_endpoints_by_port_name() {
        let services = BTreeMap::from([
            (
                "default/service/web".to_owned(),
                json!({"metadata": {"name": "web", "namespace": "default",
                    "annotations": {"edgemesh.io/lb-strategy": "Random"}},
                   "spec": {"clusterIP": "10.96.0.10", "ports": [
                       {"name": "http", "port": 80}, {"name": "admin", "port": 9000, "appProtocol": "tcp"},
                       {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            ),
            (
                "default/service/headless".to_owned(),
                json!({"metadata": {"name": "headless", "namespace": "default"},
                   "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            ),
        ]);
        let endpoints = BTreeMap::from([(
            "default/endpoints/web".to_owned(),
            json!({"subsets": [{
                "addresses": [{"ip": "10.244.1.5", "nodeName": "edge-1"}],
                "notReadyAddresses": [{"ip": "10.244.1.6"}],
                "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}]}]}),
        )]);
        let catalog = Catalog::build(
            &services,
            &endpoints,
            &Defaults::default(),
            &Kept::default(),
        );
        assert_eq!(
            catalog.vips().len(),
            2,
            "TCP ports of services with a ClusterIP"
        );
        let http = catalog.lookup("10.96.0.10:80".parse().unwrap()).unwrap();
        assert_eq!(http.service, "default/web");
        assert_eq!(http.balancer.strategy(), Strategy::Random);
        assert_eq!(http.backends.len(), 1, "not-ready addresses are left out");
        assert_eq!(http.backends[0].addr, "10.244.1.5:8080".parse().unwrap());
        assert_eq!(http.backends[0].node.as_deref(), Some("edge-1"));
        let admin = catalog.lookup("10.96.0.10:9000".parse().unwrap()).unwrap();
        assert_eq!(admin.backends[0].addr.port(), 9090);
        assert!(admin.opaque && !http.opaque);
        assert_eq!(
            catalog.vip("default", "web", "admin"),
            Some("10.96.0.10:9000".parse().unwrap())
        );
        assert_eq!(
            catalog.vip("default", "web", "80"),
            Some("10.96.0.10:80".parse().unwrap())
        );
        assert_eq!(catalog.vip("default", "web", "81"), None);
        assert_eq!(catalog.vip("other", "web", "80"), None);
        assert!(http.limiter.is_none() && http.breaker.enabled());
    }
}
