//! Services and Endpoints as the catalog reads them: parsed once when an object arrives
//! from metamanager, keeping only the fields the catalog and name lookups use. A Kubernetes
//! object held as a JSON tree costs a map node and a string per field (uid, labels,
//! managedFields, targetRefs...); these keep a few addresses and strings.

use std::net::IpAddr;

use serde_json::Value;

use crate::breaker::BREAKER_ANNOTATION;
use crate::catalog::{HASH_KEY_ANNOTATION, LB_ANNOTATION};
use crate::qps::QPS_ANNOTATION;

/// A Service with a ClusterIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its ClusterIP.
    pub ip: IpAddr,
    /// Its edgemesh annotations, boxed since most Services have none.
    pub annotations: Option<Box<Annotations>>,
    /// Its TCP and UDP ports (SCTP is not proxied).
    pub ports: Vec<ServicePort>,
    /// Which endpoints a node may send to, from Kubernetes' own fields.
    pub topology: Topology,
}

/// Which endpoints a node sends a Service's traffic to, from `spec.internalTrafficPolicy`
/// and `spec.trafficDistribution`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Topology {
    /// Every ready endpoint, here or elsewhere (the default).
    #[default]
    All,
    /// `internalTrafficPolicy: Local`: only this node's endpoints; none here means none.
    Local,
    /// `trafficDistribution: PreferClose`: this node's endpoints while any is usable,
    /// the others otherwise.
    PreferClose,
}

impl Topology {
    fn of(spec: &Value) -> Topology {
        if spec["internalTrafficPolicy"].as_str() == Some("Local") {
            Topology::Local
        } else if spec["trafficDistribution"].as_str() == Some("PreferClose") {
            Topology::PreferClose
        } else {
            Topology::All
        }
    }
}

/// The annotations edgemesh reads, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    /// `edgemesh.io/lb-strategy`.
    pub lb_strategy: Option<String>,
    /// `edgemesh.io/hash-key`.
    pub hash_key: Option<String>,
    /// `edgemesh.io/qps`.
    pub qps: Option<String>,
    /// `edgemesh.io/circuit-breaker`.
    pub breaker: Option<String>,
    /// `edgemesh.io/udp-idle-timeout`.
    pub udp_idle_timeout: Option<String>,
}

/// What a Service without edgemesh annotations has.
static NO_ANNOTATIONS: Annotations = Annotations {
    lb_strategy: None,
    hash_key: None,
    qps: None,
    breaker: None,
    udp_idle_timeout: None,
};

/// One TCP or UDP port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (may be empty).
    pub name: String,
    /// The Service port.
    pub port: u16,
    /// `appProtocol` names something other than HTTP: relay as bytes without looking.
    pub opaque: bool,
    /// A UDP port (`protocol: UDP`); TCP otherwise.
    pub udp: bool,
}

impl Service {
    /// Its edgemesh annotations (all `None` when it has none).
    pub fn annotations(&self) -> &Annotations {
        self.annotations.as_deref().unwrap_or(&NO_ANNOTATIONS)
    }

    /// The fields the catalog uses; `None` for what it would skip anyway (no name, or no
    /// ClusterIP: headless or not yet assigned).
    pub fn parse(svc: &Value) -> Option<Service> {
        let meta = &svc["metadata"];
        let namespace = meta["namespace"].as_str()?.to_owned();
        let name = meta["name"].as_str()?.to_owned();
        let ip = svc["spec"]["clusterIP"].as_str()?.parse().ok()?;
        let annotation = |key: &str| meta["annotations"][key].as_str().map(str::to_owned);
        let ports = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|port| {
                let number = port["port"].as_u64().and_then(|p| u16::try_from(p).ok())?;
                let udp = match port["protocol"].as_str().unwrap_or("TCP") {
                    "TCP" => false,
                    "UDP" => true,
                    _ => return None,
                };
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
                Some(ServicePort {
                    name: port["name"].as_str().unwrap_or_default().to_owned(),
                    port: number,
                    opaque,
                    udp,
                })
            })
            .collect();
        let annotations = Annotations {
            lb_strategy: annotation(LB_ANNOTATION),
            hash_key: annotation(HASH_KEY_ANNOTATION),
            qps: annotation(QPS_ANNOTATION),
            breaker: annotation(BREAKER_ANNOTATION),
            udp_idle_timeout: annotation(crate::udp::IDLE_ANNOTATION),
        };
        Some(Service {
            topology: Topology::of(&svc["spec"]),
            annotations: (annotations != NO_ANNOTATIONS).then(|| Box::new(annotations)),
            namespace,
            name,
            ip,
            ports,
        })
    }
}

/// The ready addresses of a Service, by subset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Its subsets.
    pub subsets: Vec<Subset>,
}

/// Addresses that serve the same ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subset {
    /// Ready addresses (not-ready ones are left out).
    pub addresses: Vec<Address>,
    /// Ports by name (may be empty).
    pub ports: Vec<(String, u16)>,
}

/// One ready address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Its IP.
    pub ip: IpAddr,
    /// The node it runs on, when the Endpoints say.
    pub node: Option<String>,
}

impl Endpoints {
    /// The fields the catalog uses. A port without a valid number is kept out of the
    /// name lookup but still counted, so that a lone port is found by the same rule as
    /// before (a subset with exactly one port serves every Service port).
    pub fn parse(endpoints: &Value) -> Endpoints {
        let subsets = endpoints["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|subset| Subset {
                addresses: subset["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|address| {
                        Some(Address {
                            ip: address["ip"].as_str()?.parse().ok()?,
                            node: address["nodeName"].as_str().map(str::to_owned),
                        })
                    })
                    .collect(),
                ports: subset["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let number = p["port"].as_u64().and_then(|p| u16::try_from(p).ok());
                        (
                            p["name"].as_str().unwrap_or_default().to_owned(),
                            number.unwrap_or(0),
                        )
                    })
                    .collect(),
            })
            .collect();
        Endpoints { subsets }
    }
}

impl Subset {
    /// The endpoint port serving the Service port named `port_name`: the port of that
    /// name, or the only port there is.
    pub fn port(&self, port_name: &str) -> Option<u16> {
        let (_, number) = self
            .ports
            .iter()
            .find(|(name, _)| name == port_name)
            .or_else(|| (self.ports.len() == 1).then(|| &self.ports[0]))?;
        (*number != 0).then_some(*number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_what_the_catalog_reads_is_kept() {
        let svc = Service::parse(&json!({"metadata": {"name": "web", "namespace": "shop",
                "uid": "x", "labels": {"app": "web"},
                "annotations": {"edgemesh.io/qps": "10", "other": "y"}},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "raw", "port": 81, "appProtocol": "mysql"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "bad", "port": 70000}]}}))
        .unwrap();
        assert_eq!((svc.namespace.as_str(), svc.name.as_str()), ("shop", "web"));
        assert_eq!(svc.annotations().qps.as_deref(), Some("10"));
        assert_eq!(svc.annotations().lb_strategy, None);
        let ports: Vec<_> = svc
            .ports
            .iter()
            .map(|p| (p.port, p.opaque, p.udp))
            .collect();
        assert_eq!(
            ports,
            [(80, false, false), (81, true, false), (53, false, true)]
        );
        let headless = json!({"metadata": {"name": "h", "namespace": "shop"},
            "spec": {"clusterIP": "None"}});
        assert_eq!(Service::parse(&headless), None);

        let eps = Endpoints::parse(&json!({"subsets": [
            {"addresses": [{"ip": "10.244.0.5", "nodeName": "n1", "targetRef": {"kind": "Pod"}},
                           {"ip": "not an ip"}],
             "notReadyAddresses": [{"ip": "10.244.0.6"}],
             "ports": [{"name": "http", "port": 8080}, {"name": "raw", "port": 9090}]},
            {"addresses": [{"ip": "10.244.0.7"}], "ports": [{"port": 7000}]}]}));
        assert_eq!(eps.subsets[0].addresses.len(), 1);
        assert_eq!(eps.subsets[0].addresses[0].node.as_deref(), Some("n1"));
        assert_eq!(eps.subsets[0].port("raw"), Some(9090));
        assert_eq!(eps.subsets[0].port("other"), None);
        assert_eq!(eps.subsets[1].port("anything"), Some(7000), "the only port");
    }
}
