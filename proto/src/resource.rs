//! Resource paths: `<ns>/<type>[/<name>]` on the edge, `node/<nodeID>/<ns>/<type>[/<name>]` on
//! the cloud side (cloudhub strips the prefix going down and adds it coming up).

use std::fmt;
use std::str::FromStr;

use compact_str::CompactString;

use crate::error::{Error, Result};

/// Kinds of object the mesh moves around.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// A Kubernetes Service.
    Service,
    /// A Kubernetes Endpoints object.
    Endpoints,
    /// A Kubernetes Pod.
    Pod,
    /// A list of Services.
    ServiceList,
    /// A list of Endpoints.
    EndpointsList,
    /// A list of Pods.
    PodList,
}

impl ResourceType {
    /// The path segment, as KubeEdge spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Service => "service",
            ResourceType::Endpoints => "endpoints",
            ResourceType::Pod => "pod",
            ResourceType::ServiceList => "servicelist",
            ResourceType::EndpointsList => "endpointslist",
            ResourceType::PodList => "podlist",
        }
    }

    /// Parses a path segment.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "service" => ResourceType::Service,
            "endpoints" => ResourceType::Endpoints,
            "pod" => ResourceType::Pod,
            "servicelist" => ResourceType::ServiceList,
            "endpointslist" => ResourceType::EndpointsList,
            "podlist" => ResourceType::PodList,
            _ => return None,
        })
    }

    /// True for the list forms.
    pub fn is_list(self) -> bool {
        matches!(
            self,
            ResourceType::ServiceList | ResourceType::EndpointsList | ResourceType::PodList
        )
    }

    /// The list form of a single type, and the single type of a list form.
    pub fn element(self) -> Self {
        match self {
            ResourceType::ServiceList => ResourceType::Service,
            ResourceType::EndpointsList => ResourceType::Endpoints,
            ResourceType::PodList => ResourceType::Pod,
            single => single,
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An edge resource path: `<namespace>/<type>[/<name>]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourcePath {
    /// Kubernetes namespace.
    pub namespace: CompactString,
    /// Object kind.
    pub kind: ResourceType,
    /// Object name; absent when the path names every object of the kind in the namespace.
    pub name: Option<CompactString>,
}

impl ResourcePath {
    /// A path to one object.
    pub fn new(namespace: &str, kind: ResourceType, name: &str) -> Self {
        ResourcePath {
            namespace: namespace.into(),
            kind,
            name: Some(name.into()),
        }
    }

    /// Parses the edge form `<ns>/<type>[/<name>]`.
    pub fn parse_edge(path: &str) -> Result<Self> {
        let mut parts = path.split('/');
        let parsed = parse_tail(path, &mut parts)?;
        if parts.next().is_some() {
            return Err(malformed(path, "too many segments"));
        }
        Ok(parsed)
    }

    /// The cloud form of this path for `node`.
    pub fn to_cloud(&self, node: &str) -> String {
        format!("node/{node}/{self}")
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.kind)?;
        if let Some(name) = &self.name {
            write!(f, "/{name}")?;
        }
        Ok(())
    }
}

impl FromStr for ResourcePath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse_edge(s)
    }
}

/// A cloud resource path: `node/<nodeID>/<namespace>/<type>[/<name>]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CloudPath {
    /// The edge node the object is for or from.
    pub node: CompactString,
    /// The edge form of the rest.
    pub path: ResourcePath,
}

impl CloudPath {
    /// Parses the cloud form.
    pub fn parse(path: &str) -> Result<Self> {
        let mut parts = path.split('/');
        if parts.next() != Some("node") {
            return Err(malformed(path, "cloud path must start with node/"));
        }
        let node = parts
            .next()
            .ok_or_else(|| malformed(path, "missing node id"))?;
        check_name(path, node, "node id")?;
        let rest = parse_tail(path, &mut parts)?;
        if parts.next().is_some() {
            return Err(malformed(path, "too many segments"));
        }
        Ok(CloudPath {
            node: node.into(),
            path: rest,
        })
    }
}

impl fmt::Display for CloudPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node/{}/{}", self.node, self.path)
    }
}

impl FromStr for CloudPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

fn parse_tail<'a>(path: &str, parts: &mut impl Iterator<Item = &'a str>) -> Result<ResourcePath> {
    let namespace = parts
        .next()
        .ok_or_else(|| malformed(path, "missing namespace"))?;
    check_name(path, namespace, "namespace")?;
    let kind_str = parts
        .next()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| malformed(path, "missing resource type"))?;
    let kind = ResourceType::parse(kind_str).ok_or_else(|| Error::UnknownResourceType {
        path: path.to_owned(),
        kind: kind_str.to_owned(),
    })?;
    let name = match parts.next() {
        None => None,
        Some(name) => {
            check_name(path, name, "name")?;
            Some(CompactString::from(name))
        }
    };
    Ok(ResourcePath {
        namespace: namespace.into(),
        kind,
        name,
    })
}

/// Kubernetes names are DNS subdomains: at most 253 of `[a-z0-9.-]`. Holding paths to that
/// keeps garbage (spaces, control characters, `..`) out of SQLite keys and log lines.
fn check_name(path: &str, segment: &str, what: &'static str) -> Result<()> {
    if segment.is_empty() {
        return Err(malformed(
            path,
            match what {
                "namespace" => "empty namespace",
                "node id" => "empty node id",
                _ => "empty name",
            },
        ));
    }
    if segment.len() > 253 {
        return Err(malformed(path, "segment longer than 253 bytes"));
    }
    let ok = segment
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    if !ok || segment.starts_with('.') {
        return Err(malformed(path, "segment is not a Kubernetes name"));
    }
    Ok(())
}

fn malformed(path: &str, reason: &'static str) -> Error {
    Error::MalformedPath {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_paths_round_trip() {
        for s in [
            "default/service/hello",
            "kube-system/endpoints/dns",
            "ns1/servicelist",
        ] {
            assert_eq!(ResourcePath::parse_edge(s).unwrap().to_string(), s);
        }
        let p = ResourcePath::parse_edge("default/pod/web-0").unwrap();
        assert_eq!(p, ResourcePath::new("default", ResourceType::Pod, "web-0"));
        assert_eq!(p.to_cloud("edge-1"), "node/edge-1/default/pod/web-0");
    }

    #[test]
    fn cloud_paths_round_trip() {
        let c = CloudPath::parse("node/edge-1/default/service/hello").unwrap();
        assert_eq!(c.node, "edge-1");
        assert_eq!(c.path.to_string(), "default/service/hello");
        assert_eq!(c.to_string(), "node/edge-1/default/service/hello");
        assert!(CloudPath::parse("node/edge-1/default/podlist").is_ok());
    }

    #[test]
    fn malformed_paths_are_typed_errors() {
        for s in [
            "",
            "default",
            "default/",
            "/service/x",
            "default/service/",
            "default/service/a/b",
            "Default/service/x",
            "default/service/has space",
            "default/service/..",
        ] {
            assert!(
                matches!(
                    ResourcePath::parse_edge(s),
                    Err(Error::MalformedPath { .. })
                ),
                "{s:?} should be malformed"
            );
        }
        assert!(matches!(
            ResourcePath::parse_edge("default/secret/x"),
            Err(Error::UnknownResourceType { .. })
        ));
        for s in [
            "default/service/x",
            "node//default/service/x",
            "nodes/e/default/pod",
        ] {
            assert!(CloudPath::parse(s).is_err(), "{s:?} should be malformed");
        }
        let long = format!("default/service/{}", "a".repeat(254));
        assert!(ResourcePath::parse_edge(&long).is_err());
    }
}
