//! Endpoints for Services that have a selector but no Endpoints of their own, derived from
//! the Pods they select, as the Kubernetes endpoints controller would write them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::object::{Kind, Object};

/// Endpoints for every Service with a selector whose name is not in `explicit` (the
/// Endpoints the source already has), from `pods`: address from `status.podIP`, node from
/// `spec.nodeName`, ready from the Ready condition. Pods without an IP are left out.
pub fn derive_endpoints(services: &[Object], explicit: &[Object], pods: &[Object]) -> Vec<Object> {
    let have: BTreeSet<(&str, &str)> = explicit
        .iter()
        .map(|e| (e.namespace.as_str(), e.name.as_str()))
        .collect();
    services
        .iter()
        .filter(|s| !have.contains(&(s.namespace.as_str(), s.name.as_str())))
        .filter_map(|svc| {
            let selector = svc.value["spec"]["selector"].as_object()?;
            if selector.is_empty() {
                return None;
            }
            let selected = pods.iter().filter(|p| {
                p.namespace == svc.namespace
                    && selector
                        .iter()
                        .all(|(k, v)| p.labels().and_then(|l| l.get(k)) == Some(v))
            });
            Some(endpoints_for(svc, selected))
        })
        .collect()
}

/// A subset being built: its ports, ready addresses, not-ready addresses.
type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);

fn endpoints_for<'a>(svc: &Object, pods: impl Iterator<Item = &'a Object>) -> Object {
    let ports = svc.value["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Pods that resolve named target ports alike share a subset, as in Kubernetes.
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod.value["status"]["podIP"].as_str() else {
            continue;
        };
        let resolved: Vec<Value> = ports.iter().filter_map(|p| resolve_port(p, pod)).collect();
        let mut address = json!({
            "ip": ip,
            "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name},
        });
        if let Some(node) = pod.pod_node() {
            address["nodeName"] = json!(node);
        }
        let entry = subsets
            .entry(serde_json::to_string(&resolved).unwrap_or_default())
            .or_insert_with(|| (resolved, Vec::new(), Vec::new()));
        if is_ready(pod) {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
    }
    let subsets: Vec<Value> = subsets
        .into_values()
        .map(|(ports, ready, not_ready)| {
            let mut subset = json!({ "ports": ports });
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subset
        })
        .collect();
    let value = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "annotations": {"edgemesh.io/derived-from": "pods"},
        },
        "subsets": subsets,
    });
    Object::from_value(value, true)
        .ok()
        .flatten()
        .expect("a derived Endpoints is well formed")
}

/// The endpoint port for a Service port on `pod`: a numeric targetPort, a named one looked
/// up among the pod's container ports, or the port itself. `None` when a name is not found.
fn resolve_port(port: &Value, pod: &Object) -> Option<Value> {
    let number = match &port["targetPort"] {
        Value::Number(n) => n.as_u64()?,
        Value::String(name) => pod.value["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
            .as_u64()?,
        _ => port["port"].as_u64()?,
    };
    let mut out = json!({
        "port": number,
        "protocol": port["protocol"].as_str().unwrap_or("TCP"),
    });
    if let Some(name) = port["name"].as_str() {
        out["name"] = json!(name);
    }
    Some(out)
}

fn is_ready(pod: &Object) -> bool {
    pod.value["status"]["conditions"]
        .as_array()
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// True for kinds the derivation reads.
pub fn feeds_derivation(kind: Kind) -> bool {
    matches!(kind, Kind::Service | Kind::Endpoints | Kind::Pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Object {
        Object::from_value(v, true).unwrap().unwrap()
    }

    fn pod(name: &str, ip: &str, node: &str, ready: bool) -> Object {
        obj(json!({
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
    }

    #[test]
    fn endpoints_come_from_selected_pods_with_node_names() {
        let svc = obj(json!({
            "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "h", "port": 80, "targetPort": "http"}]}
        }));
        let other = obj(
            json!({"kind": "Pod", "metadata": {"name": "x", "labels": {"app": "db"}},
            "status": {"podIP": "10.0.0.9"}}),
        );
        let pods = vec![
            pod("a", "10.0.0.1", "edge-1", true),
            pod("b", "10.0.0.2", "edge-2", false),
            other,
        ];
        let eps = derive_endpoints(std::slice::from_ref(&svc), &[], &pods);
        assert_eq!(eps.len(), 1);
        let subset = &eps[0].value["subsets"][0];
        assert_eq!(subset["ports"][0]["port"], 8080);
        assert_eq!(subset["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(subset["addresses"][0]["nodeName"], "edge-1");
        assert_eq!(subset["notReadyAddresses"][0]["ip"], "10.0.0.2");
        // An explicit Endpoints wins; no selector means nothing derived.
        assert!(derive_endpoints(std::slice::from_ref(&svc), &eps, &pods).is_empty());
        let bare = obj(json!({"kind": "Service", "metadata": {"name": "ext"}, "spec": {}}));
        assert!(derive_endpoints(&[bare], &[], &pods).is_empty());
    }
}
