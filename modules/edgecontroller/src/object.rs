//! The objects edgecontroller distributes, as JSON with their identity pulled out.

use std::sync::Arc;

use proto::ResourceType;
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

/// The Kubernetes kinds edgecontroller handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1/Service`: goes to every edge node.
    Service,
    /// `v1/Endpoints`: goes to every edge node, with each address's node name.
    Endpoints,
    /// `v1/Pod`: goes to the node it is scheduled on.
    Pod,
    /// `v1/Node`: tells which nodes are edge nodes; never sent.
    Node,
}

impl Kind {
    /// Every kind, Nodes first (which nodes are edge nodes decides who gets the rest).
    pub const ALL: [Kind; 4] = [Kind::Node, Kind::Service, Kind::Endpoints, Kind::Pod];

    /// The kind for a manifest's `kind:` field.
    pub fn from_k8s(kind: &str) -> Option<Kind> {
        Some(match kind {
            "Service" => Kind::Service,
            "Endpoints" => Kind::Endpoints,
            "Pod" => Kind::Pod,
            "Node" => Kind::Node,
            _ => return None,
        })
    }

    /// The edge resource type, for kinds that travel to the edge.
    pub fn edge_type(self) -> Option<ResourceType> {
        match self {
            Kind::Service => Some(ResourceType::Service),
            Kind::Endpoints => Some(ResourceType::Endpoints),
            Kind::Pod => Some(ResourceType::Pod),
            Kind::Node => None,
        }
    }

    /// The kind for an edge resource type.
    pub fn from_edge(t: ResourceType) -> Kind {
        match t.element() {
            ResourceType::Service => Kind::Service,
            ResourceType::Endpoints => Kind::Endpoints,
            _ => Kind::Pod,
        }
    }

    fn namespaced(self) -> bool {
        self != Kind::Node
    }
}

/// Identity of an object: kind, namespace (empty for nodes), name.
pub type ObjKey = (Kind, String, String);

/// One object with its identity and version.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its version as the edge stores it (`metadata.resourceVersion` inside `value`).
    pub rv: String,
    /// The whole object.
    pub value: Arc<Value>,
}

/// A version that changes exactly when the content does (resourceVersion excluded): `h`
/// and 16 hex digits of xxh3. Used where no API server gives versions (manifest files,
/// derived Endpoints), so an unchanged object keeps its version across restarts and the
/// resync sends nothing for it. Not a number, so the edge never takes it for an older one.
pub fn content_version(value: &Value) -> String {
    let mut copy = value.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&copy).unwrap_or_default();
    format!("h{:016x}", xxh3_64(&bytes))
}

/// Kubernetes names: lowercase letters, digits, `-` and `.`, 1 to 253 bytes, starting and
/// ending with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    let end_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !name.is_empty()
        && name.len() <= 253
        && end_ok(name.chars().next())
        && end_ok(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

impl Object {
    /// Checks a Kubernetes object and fills in what the edge needs: the namespace
    /// (`default` when absent) and, when `versioned_by_content`, a content version in
    /// `metadata.resourceVersion`. `Ok(None)` for kinds edgecontroller does not handle.
    pub fn from_value(
        mut value: Value,
        versioned_by_content: bool,
    ) -> Result<Option<Object>, String> {
        let Some(kind_str) = value.get("kind").and_then(Value::as_str).map(str::to_owned) else {
            return Err("no kind".into());
        };
        let Some(kind) = Kind::from_k8s(&kind_str) else {
            return Ok(None);
        };
        let meta = value
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("{kind_str} without metadata"))?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{kind_str} without metadata.name"))?
            .to_owned();
        if !valid_name(&name) {
            return Err(format!(
                "{kind_str} name {name:?} is not a valid Kubernetes name"
            ));
        }
        let namespace = if kind.namespaced() {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned();
            if !valid_name(&ns) {
                return Err(format!("{kind_str} {name}: namespace {ns:?} is not valid"));
            }
            meta.insert("namespace".into(), Value::String(ns.clone()));
            ns
        } else {
            String::new()
        };
        let rv = if versioned_by_content {
            let rv = content_version(&value);
            value["metadata"]["resourceVersion"] = Value::String(rv.clone());
            rv
        } else {
            value["metadata"]
                .get("resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Some(Object {
            kind,
            namespace,
            name,
            rv,
            value: Arc::new(value),
        }))
    }

    /// Its identity.
    pub fn key(&self) -> ObjKey {
        (self.kind, self.namespace.clone(), self.name.clone())
    }

    /// `<ns>/<type>/<name>` for kinds that travel to the edge.
    pub fn edge_path(&self) -> Option<String> {
        let t = self.kind.edge_type()?;
        Some(format!("{}/{}/{}", self.namespace, t, self.name))
    }

    /// The node a Pod is scheduled on.
    pub fn pod_node(&self) -> Option<&str> {
        (self.kind == Kind::Pod)
            .then(|| self.value["spec"]["nodeName"].as_str())
            .flatten()
            .filter(|n| !n.is_empty())
    }

    /// The object's labels.
    pub fn labels(&self) -> Option<&serde_json::Map<String, Value>> {
        self.value["metadata"]["labels"].as_object()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_versions_follow_content_only() {
        let a = json!({"kind": "Service", "metadata": {"name": "a"}, "spec": {"x": 1}});
        let mut b = a.clone();
        b["metadata"]["resourceVersion"] = json!("77");
        assert_eq!(content_version(&a), content_version(&b));
        b["spec"]["x"] = json!(2);
        assert_ne!(content_version(&a), content_version(&b));
        assert!(content_version(&a).parse::<u64>().is_err(), "never numeric");
    }

    #[test]
    fn objects_get_namespace_and_version() {
        let o = Object::from_value(
            json!({"kind": "Service", "metadata": {"name": "web"}}),
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(o.namespace, "default");
        assert_eq!(o.value["metadata"]["resourceVersion"], json!(o.rv));
        assert_eq!(o.edge_path().unwrap(), "default/service/web");
        assert!(
            Object::from_value(
                json!({"kind": "Deployment", "metadata": {"name": "d"}}),
                true
            )
            .unwrap()
            .is_none()
        );
        assert!(
            Object::from_value(
                json!({"kind": "Service", "metadata": {"name": "Bad_Name"}}),
                true
            )
            .is_err()
        );
        assert!(Object::from_value(json!({"kind": "Pod"}), true).is_err());
    }
}
