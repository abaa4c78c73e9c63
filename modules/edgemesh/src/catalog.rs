//! The snapshot of Services and Endpoints the request path reads: built whole from what
//! metamanager's watch reports, swapped in at once, read without locks.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::breaker::{BREAKER_ANNOTATION, BreakerPolicy, Breakers};
use crate::lb::{Backend, Balancer, Load, Strategy};
use crate::metrics::{LazyStats, Metrics};
use crate::objects::{Endpoints, Service};
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
    /// Which endpoints this node may use (`internalTrafficPolicy`, `trafficDistribution`).
    pub topology: crate::objects::Topology,
    /// This node's limit for the Service (`edgemesh.io/qps`), shared by every port.
    pub limiter: Option<Arc<Limiter>>,
    /// When endpoints are ejected (`edgemesh.io/circuit-breaker`).
    pub breaker: BreakerPolicy,
    /// The Service's metrics.
    pub stats: Arc<LazyStats>,
    /// A UDP port's flows end after this long without a datagram either way
    /// (`edgemesh.io/udp-idle-timeout`); `None`: the config's default.
    pub udp_idle: Option<std::time::Duration>,
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
    /// UDP ports, apart: the same ClusterIP:port may be a TCP port and a UDP port of one
    /// Service (DNS), each with its own endpoints.
    udp_by_vip: HashMap<SocketAddr, Arc<Target>>,
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

    /// The Service port `port` of Service `name` in `namespace`.
    pub fn target(&self, namespace: &str, name: &str, port: u16) -> Option<&Arc<Target>> {
        let named = self.by_name.get(&(namespace.to_owned(), name.to_owned()))?;
        named.ports.iter().find(|(p, _)| *p == port)?;
        self.by_vip.get(&SocketAddr::new(named.ip, port))
    }

    /// Every ClusterIP:port, sorted (for iptables).
    pub fn vips(&self) -> Vec<SocketAddr> {
        let mut vips: Vec<SocketAddr> = self.by_vip.keys().copied().collect();
        vips.sort();
        vips
    }

    /// The UDP Service port datagrams to `addr` were meant for.
    pub fn lookup_udp(&self, addr: SocketAddr) -> Option<&Arc<Target>> {
        self.udp_by_vip.get(&addr)
    }

    /// The UDP Service port `port` of Service `name` in `namespace`.
    pub fn target_udp(&self, namespace: &str, name: &str, port: u16) -> Option<&Arc<Target>> {
        let named = self.by_name.get(&(namespace.to_owned(), name.to_owned()))?;
        self.udp_by_vip.get(&SocketAddr::new(named.ip, port))
    }

    /// Every UDP ClusterIP:port, sorted.
    pub fn udp_vips(&self) -> Vec<SocketAddr> {
        let mut vips: Vec<SocketAddr> = self.udp_by_vip.keys().copied().collect();
        vips.sort();
        vips
    }

    /// Builds a catalog from Services and Endpoints keyed by edge path
    /// (`<ns>/service/<name>`, `<ns>/endpoints/<name>`).
    pub fn build(
        services: &BTreeMap<String, Service>,
        endpoints: &BTreeMap<String, Endpoints>,
        defaults: &Defaults,
        kept: &Kept,
    ) -> Catalog {
        let default = defaults.strategy;
        let mut by_vip = HashMap::with_capacity(services.len());
        let mut by_name = HashMap::with_capacity(services.len());
        let mut udp_by_vip = HashMap::new();
        for svc in services.values() {
            let (ns, name, ip) = (&svc.namespace, &svc.name, svc.ip);
            let annotations = svc.annotations();
            let strategy = match &annotations.lb_strategy {
                None => default,
                Some(s) => s.parse().unwrap_or_else(|e| {
                    log::warn!("service {ns}/{name}: {e}; using {default:?}");
                    default
                }),
            };
            let service = format!("{ns}/{name}");
            let limit = match &annotations.qps {
                None => defaults.qps,
                Some(v) => qps::parse(v).unwrap_or_else(|e| {
                    log::warn!("service {service}: {QPS_ANNOTATION}: {e}; using the default");
                    defaults.qps
                }),
            };
            let limiter = kept.limiters.of(&service, limit);
            let breaker = match &annotations.breaker {
                None => defaults.breaker,
                Some(v) => defaults.breaker.with_annotation(v).unwrap_or_else(|e| {
                    log::warn!("service {service}: {BREAKER_ANNOTATION}: {e}; using the default");
                    defaults.breaker
                }),
            };
            let stats = Arc::new(LazyStats::new(kept.metrics.clone(), &service));
            let udp_idle = annotations.udp_idle_timeout.as_deref().and_then(|v| {
                crate::udp::parse_idle(v)
                    .inspect_err(|e| {
                        log::warn!(
                            "service {service}: {}: {e}; using the default",
                            crate::udp::IDLE_ANNOTATION
                        )
                    })
                    .ok()
            });
            let mut ports = Vec::with_capacity(svc.ports.len());
            let eps = endpoints.get(&format!("{ns}/endpoints/{name}"));
            for port in &svc.ports {
                let backends = eps
                    .map(|e| backends(e, &port.name, kept))
                    .unwrap_or_default();
                if !port.udp {
                    ports.push((port.port, port.name.clone()));
                }
                let target = Target {
                    service: service.clone(),
                    port_name: port.name.clone(),
                    port: port.port,
                    backends,
                    balancer: Balancer::new(strategy),
                    hash_key: annotations.hash_key.clone(),
                    opaque: port.opaque,
                    topology: svc.topology,
                    limiter: limiter.clone(),
                    breaker,
                    stats: stats.clone(),
                    udp_idle,
                };
                let vips = if port.udp {
                    &mut udp_by_vip
                } else {
                    &mut by_vip
                };
                vips.insert(SocketAddr::new(ip, port.port), Arc::new(target));
            }
            by_name.insert((ns.clone(), name.clone()), Named { ip, ports });
        }
        let services: std::collections::HashSet<&str> = by_vip
            .values()
            .chain(udp_by_vip.values())
            .map(|t| t.service.as_str())
            .collect();
        kept.limiters.retain(|s| services.contains(s));
        kept.metrics.retain(|s| services.contains(s));
        let endpoints: std::collections::HashSet<SocketAddr> = by_vip
            .values()
            .chain(udp_by_vip.values())
            .flat_map(|t| t.backends.iter().map(|b| b.addr))
            .collect();
        kept.breakers.retain(|a| endpoints.contains(a));
        Catalog {
            by_vip,
            by_name,
            udp_by_vip,
        }
    }
}

/// Ready addresses of an Endpoints object for the Service port named `port_name`.
fn backends(endpoints: &Endpoints, port_name: &str, kept: &Kept) -> Vec<Backend> {
    let serving = || {
        endpoints
            .subsets
            .iter()
            .filter_map(|subset| Some((subset, subset.port(port_name)?)))
    };
    // Exactly sized: a catalog holds one of these per Service port.
    let mut out = Vec::with_capacity(serving().map(|(s, _)| s.addresses.len()).sum());
    for (subset, port) in serving() {
        for address in &subset.addresses {
            let addr = SocketAddr::new(address.ip, port);
            out.push(Backend {
                addr,
                node: address.node.clone(),
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
    use serde_json::{Value, json};

    /// Services as the follower keeps them, from JSON objects.
    fn services<const N: usize>(objects: [(String, Value); N]) -> BTreeMap<String, Service> {
        objects
            .into_iter()
            .filter_map(|(k, v)| Some((k, Service::parse(&v)?)))
            .collect()
    }

    /// Endpoints as the follower keeps them, from JSON objects.
    fn endpoints<const N: usize>(objects: [(String, Value); N]) -> BTreeMap<String, Endpoints> {
        objects
            .into_iter()
            .map(|(k, v)| (k, Endpoints::parse(&v)))
            .collect()
    }

    #[test]
    fn service_ports_map_to_ready_endpoints_by_port_name() {
        let services = services([
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
        let endpoints = endpoints([(
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

    #[test]
    fn series_come_with_traffic_and_go_with_the_service() {
        let web = |name: &str, ip: &str| {
            (
                format!("default/service/{name}"),
                json!({"metadata": {"name": name, "namespace": "default"},
                   "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}}),
            )
        };
        let kept = Kept::default();
        let both = services([web("web", "10.96.0.10"), web("quiet", "10.96.0.11")]);
        let catalog = Catalog::build(&both, &BTreeMap::new(), &Defaults::default(), &kept);
        let named = |text: &str, svc: &str| {
            let label = format!("service=\"default/{svc}\"");
            text.lines()
                .filter(|l| !l.starts_with('#') && l.contains(&label))
                .count()
        };
        let text = kept.metrics.encode();
        assert_eq!(named(&text, "web") + named(&text, "quiet"), 0, "{text}");

        // One request: its series appear, and the quiet Service still has none.
        let target = catalog.lookup("10.96.0.10:80".parse().unwrap()).unwrap();
        target.stats.http_requests.inc();
        target.stats.latency.observe(0.001);
        let text = kept.metrics.encode();
        assert!(
            text.lines()
                .any(|l| l == r#"edgemesh_requests_total{service="default/web",path="http"} 1"#),
            "{text}"
        );
        assert!(
            named(&text, "web") > 1 && named(&text, "quiet") == 0,
            "{text}"
        );

        // A rebuild with the Service still there keeps its counts.
        let catalog = Catalog::build(&both, &BTreeMap::new(), &Defaults::default(), &kept);
        let target = catalog.lookup("10.96.0.10:80".parse().unwrap()).unwrap();
        target.stats.http_requests.inc();
        assert_eq!(target.stats.http_requests.get(), 2);

        // Gone from the catalog: gone from /metrics.
        let quiet_only = services([web("quiet", "10.96.0.11")]);
        let _ = Catalog::build(&quiet_only, &BTreeMap::new(), &Defaults::default(), &kept);
        let text = kept.metrics.encode();
        assert_eq!(named(&text, "web"), 0, "{text}");
        // The old snapshot's handles still count, out of sight.
        target.stats.http_requests.inc();
        assert_eq!(named(&kept.metrics.encode(), "web"), 0);
    }
}
