//! Turning a message's resource and content into rows: one row per Kubernetes object.

use proto::{ResourcePath, ResourceType};
use serde_json::Value;

use crate::error::{Error, Result};

/// One object to write or delete, keyed by its edge resource path.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// `<ns>/<type>/<name>`.
    pub key: String,
    /// The resource type as the path spells it: `service`, `endpoints`, `pod`, or any
    /// other type the cloud sends (stored and ACKed as KubeEdge's metamanager does).
    pub kind: String,
    /// The object's JSON text; `None` deletes the row. Serialized by the caller, so the
    /// store's single writer thread only writes.
    pub value: Option<String>,
    /// The object's Kubernetes resourceVersion, when known.
    pub resource_version: Option<String>,
}

/// The rows a change message stands for. A single-object path takes its name from the path
/// (or from the object when the path has none); a list path splits its content (a JSON array,
/// or a Kubernetes List with `items`) into one change per object.
pub fn changes(
    path: &ResourcePath,
    content: &Value,
    rv: &str,
    delete: bool,
) -> Result<Vec<Change>> {
    if path.kind.is_list() {
        let items = match content {
            Value::Array(items) => items,
            Value::Object(o) => match o.get("items") {
                Some(Value::Array(items)) => items,
                _ => return Err(Error::BadRequest("list content has no items array".into())),
            },
            _ => return Err(Error::BadRequest("list content must be an array".into())),
        };
        let kind = path.kind.element();
        return items
            .iter()
            .map(|item| one(&path.namespace, kind, None, item, "", delete))
            .collect();
    }
    Ok(vec![one(
        &path.namespace,
        path.kind,
        path.name.as_deref(),
        content,
        rv,
        delete,
    )?])
}

fn one(
    namespace: &str,
    kind: ResourceType,
    name: Option<&str>,
    object: &Value,
    rv: &str,
    delete: bool,
) -> Result<Change> {
    let meta = object.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    let name = name
        .or_else(|| field("name"))
        .ok_or_else(|| Error::BadRequest("object has no metadata.name".into()))?;
    let namespace = field("namespace")
        .filter(|n| !n.is_empty())
        .unwrap_or(namespace);
    // Validates name and namespace as Kubernetes names, so no junk becomes a key.
    let key = ResourcePath::new(namespace, kind, name).to_string();
    ResourcePath::parse_edge(&key)?;
    if !delete && !object.is_object() {
        return Err(Error::BadRequest(format!(
            "{key}: content must be a JSON object"
        )));
    }
    let resource_version = Some(rv)
        .filter(|v| !v.is_empty())
        .or_else(|| field("resourceVersion"))
        .map(str::to_owned);
    Ok(Change {
        key,
        kind: kind.as_str().to_owned(),
        value: (!delete).then(|| object.to_string()),
        resource_version,
    })
}

/// The row of a change to a resource type this project does not use (configmap, secret,
/// node, …): KubeEdge's cloud sends them and waits for an ACK, resending until it gets
/// one, so they are stored as they come, under `<ns>/<type>/<name>`. `None` when `path`
/// is not that shape.
pub fn other_change(path: &str, content: &Value, rv: &str, delete: bool) -> Option<Result<Change>> {
    let mut parts = path.split('/');
    let (Some(ns), Some(kind), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if !plain(kind) {
        return None;
    }
    // Namespace and name checked as any path's are (a known type stands in).
    if let Err(e) = ResourcePath::parse_edge(&format!("{ns}/{}/{name}", ResourceType::Service)) {
        return Some(Err(e.into()));
    }
    if !delete && !content.is_object() {
        return Some(Err(Error::BadRequest(format!(
            "{path}: content must be a JSON object"
        ))));
    }
    let resource_version = Some(rv)
        .filter(|v| !v.is_empty())
        .or_else(|| content["metadata"]["resourceVersion"].as_str())
        .map(str::to_owned);
    Some(Ok(Change {
        key: path.to_owned(),
        kind: kind.to_owned(),
        value: (!delete).then(|| content.to_string()),
        resource_version,
    }))
}

/// True when `incoming` is older than `stored`. Kubernetes calls versions opaque, but every
/// API server hands out etcd revisions, which are integers that only grow; anything that does
/// not parse as one is never treated as older.
pub fn is_older(incoming: &str, stored: &str) -> bool {
    match (incoming.parse::<u64>(), stored.parse::<u64>()) {
        (Ok(i), Ok(s)) => i < s,
        _ => false,
    }
}

/// The resourceVersion inside a stored object's JSON text.
pub fn stored_version(value: &str) -> Option<String> {
    let v: Value = serde_json::from_str(value).ok()?;
    v.get("metadata")?
        .get("resourceVersion")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_splits_into_rows_named_by_their_objects() {
        let path = ResourcePath::parse_edge("default/servicelist").unwrap();
        let content = json!([
            {"metadata": {"name": "a", "resourceVersion": "5"}},
            {"metadata": {"name": "b", "namespace": "other"}}
        ]);
        let c = changes(&path, &content, "", false).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].key, "default/service/a");
        assert_eq!(c[0].resource_version.as_deref(), Some("5"));
        assert_eq!(c[1].key, "other/service/b");
        let wrapped = json!({"items": [{"metadata": {"name": "x"}}]});
        assert_eq!(
            changes(&path, &wrapped, "", false).unwrap()[0].key,
            "default/service/x"
        );
    }

    #[test]
    fn bad_objects_are_refused() {
        let path = ResourcePath::parse_edge("default/servicelist").unwrap();
        assert!(changes(&path, &json!("x"), "", false).is_err());
        assert!(changes(&path, &json!([{"metadata": {}}]), "", false).is_err());
        assert!(
            changes(
                &path,
                &json!([{"metadata": {"name": "Bad Name"}}]),
                "",
                false
            )
            .is_err()
        );
        let one = ResourcePath::parse_edge("default/service/a").unwrap();
        assert!(changes(&one, &json!([1]), "", false).is_err());
        assert!(
            changes(&one, &Value::Null, "", true).is_ok(),
            "a delete needs no body"
        );
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(is_older("9", "10"));
        assert!(!is_older("10", "9"));
        assert!(!is_older("abc", "10"));
        assert_eq!(
            stored_version(r#"{"metadata":{"resourceVersion":"7"}}"#).as_deref(),
            Some("7")
        );
    }
}
