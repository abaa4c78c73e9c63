//! KubeEdge's metaServer "Application": how an edge asks the cloud's dynamiccontroller to
//! list, get or watch Kubernetes objects for it (KubeEdge ≥ 1.8 sends Services and
//! Endpoints to an edge only once it has a watch Application for them).
//!
//! Wire facts, from kubeedge/kubeedge:
//! - the request: route source `metaserver`, group `dynamiccontroller`, resource and
//!   operation `null`, content the Application, sent synchronously with a 10 s timeout
//!   (edge/pkg/metamanager/metaserver/agent/agent.go:127-129);
//! - on every reconnect, the edge's watch Applications as a map id → Application, resource
//!   `watchapp/sync` (agent.go:192-198); the answer is the map of those that failed
//!   (cloud/pkg/dynamiccontroller/application/application.go:278-301);
//! - the answer to one Application: parent the request, source `dynamiccontroller`, group
//!   `resource`, resource `node/<node>/ignore/Application/ignore`, operation
//!   `applicationResponse`, content the Application with `Status` `Approved` or
//!   `Rejected`, `RespBody` the list or object, `Error` a StatusError
//!   (application.go:226-250);
//! - an approved watch makes the cloud send every matching object as an `insert`, then
//!   each change, as `<namespace>/<kind in lower case>/<name>` from `dynamiccontroller`
//!   (application/eventhandler.go:161-167, application/listener.go:64-92);
//! - the struct has no JSON tags, so keys are Go's field names, and `[]byte` fields travel
//!   as base64 strings (pkg/metaserver/application.go:38-66);
//! - `Key` is `/<group>/<version>/<resource>/<namespace>/<name>`, group `core` for the core
//!   API, `null` for no namespace or no name (pkg/metaserver/key.go:57-98,
//!   edge/pkg/metamanager/dao/models/constants.go:39-41).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api_status::StatusError;

/// Route source of an edge's Application.
pub const METASERVER_SOURCE: &str = "metaserver";
/// Group (and module name) of KubeEdge's cloud dynamiccontroller.
pub const DYNAMIC_CONTROLLER: &str = "dynamiccontroller";
/// Operation of the answer to an Application.
pub const APPLICATION_RESPONSE: &str = "applicationResponse";
/// Resource of the answer to a single Application (after the node prefix).
pub const APPLICATION_RESOURCE: &str = "ignore/Application/ignore";
/// Resource of the reconnect report of watch Applications.
pub const WATCH_APP_SYNC: &str = "watchapp/sync";
/// Resource and operation of a single Application request.
pub const NULL: &str = "null";

/// What the edge asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// One object.
    Get,
    /// A list.
    List,
    /// Every change from now on.
    Watch,
    /// Create an object.
    Create,
    /// Delete an object.
    Delete,
    /// Replace an object.
    Update,
    /// Replace an object's status.
    #[serde(rename = "updatestatus")]
    UpdateStatus,
    /// Patch an object.
    Patch,
    /// Anything else a newer KubeEdge may send.
    #[serde(other)]
    Other,
}

/// Where an Application stands (pkg/metaserver/constants.go:26-39).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Made, not sent yet.
    PreApplying,
    /// Being sent.
    InApplying,
    /// Being handled by the cloud.
    InProcessing,
    /// Done; the answer is in `RespBody`.
    Approved,
    /// Refused; why is in `Error` or `Reason`.
    Rejected,
    /// No answer came.
    Failed,
    /// Finished with.
    Completed,
    /// A status a newer KubeEdge may send.
    #[serde(other)]
    Unknown,
}

/// A request of an edge's metaServer, and the cloud's answer to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Application {
    /// SHA-256 of the request's fields, in hex ([`Application::identifier`]).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// `/<group>/<version>/<resource>/<namespace>/<name>`.
    #[serde(rename = "Key", default)]
    pub key: String,
    /// What is asked.
    #[serde(rename = "Verb")]
    pub verb: Verb,
    /// The node asking.
    #[serde(rename = "Nodename", default)]
    pub nodename: String,
    /// `metav1.ListOptions` (or Get/Create… options) as JSON.
    #[serde(rename = "Option", default, with = "go_bytes")]
    pub option: Vec<u8>,
    /// The object of a create or update, as JSON.
    #[serde(rename = "ReqBody", default, with = "go_bytes")]
    pub req_body: Vec<u8>,
    /// `status`, `scale`…, or empty.
    #[serde(rename = "Subresource", default)]
    pub subresource: String,
    /// The answer: a list or an object, as JSON.
    #[serde(rename = "RespBody", default, with = "go_bytes")]
    pub resp_body: Vec<u8>,
    /// Where it stands.
    #[serde(rename = "Status")]
    pub status: Status,
    /// Why, when refused without an API status.
    #[serde(rename = "Reason", default)]
    pub reason: String,
    /// The API error of a refusal.
    #[serde(rename = "Error", default)]
    pub error: StatusError,
    /// When the edge last closed it; Go's zero time when never.
    #[serde(rename = "Timestamp", default = "zero_time")]
    pub timestamp: String,
}

fn zero_time() -> String {
    "0001-01-01T00:00:00Z".into()
}

impl Application {
    /// A new watch (or list, get…) of `key` for `node`, with `options` as its options.
    pub fn new(verb: Verb, key: &AppKey, node: &str, options: &Value) -> Self {
        let mut app = Application {
            id: String::new(),
            key: key.to_string(),
            verb,
            nodename: node.into(),
            option: serde_json::to_vec(options).unwrap_or_default(),
            req_body: Vec::new(),
            subresource: String::new(),
            resp_body: Vec::new(),
            status: Status::PreApplying,
            reason: String::new(),
            error: StatusError::default(),
            timestamp: zero_time(),
        };
        app.id = app.identifier();
        app
    }

    /// The id KubeEdge gives it: SHA-256 over node name, key, verb, options, body and
    /// subresource, in that order (pkg/metaserver/application.go:100-112), so the same
    /// request always has the same id.
    pub fn identifier(&self) -> String {
        let verb = serde_json::to_value(self.verb).ok();
        let mut h = Sha256::new();
        h.update(self.nodename.as_bytes());
        h.update(self.key.as_bytes());
        h.update(
            verb.as_ref()
                .and_then(Value::as_str)
                .unwrap_or("")
                .as_bytes(),
        );
        h.update(&self.option);
        h.update(&self.req_body);
        h.update(self.subresource.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key, parsed.
    pub fn parsed_key(&self) -> Option<AppKey> {
        AppKey::parse(&self.key)
    }

    /// The options as JSON (`{}` when there are none or they do not parse).
    pub fn options(&self) -> Value {
        serde_json::from_slice(&self.option).unwrap_or_else(|_| Value::Object(Default::default()))
    }
}

/// `Application.Key` parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppKey {
    /// API group; empty for the core API.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource, plural and lower case (`services`).
    pub resource: String,
    /// Namespace; `None` for all namespaces or a cluster-scoped resource.
    pub namespace: Option<String>,
    /// Name; `None` for a list or watch.
    pub name: Option<String>,
}

impl AppKey {
    /// Every object of `resource` in the core v1 API, in every namespace.
    pub fn core(resource: &str) -> Self {
        AppKey {
            group: String::new(),
            version: "v1".into(),
            resource: resource.into(),
            namespace: None,
            name: None,
        }
    }

    /// Reads `/<group>/<version>/<resource>[/<namespace>[/<name>]]`; `None` when it is not
    /// of that form.
    pub fn parse(key: &str) -> Option<Self> {
        let mut parts = key.trim_end_matches('/').strip_prefix('/')?.split('/');
        let group = parts.next().filter(|s| !s.is_empty())?;
        let version = parts.next().filter(|s| !s.is_empty())?;
        let resource = parts.next().filter(|s| !s.is_empty())?;
        let some = |s: Option<&str>| s.filter(|s| !s.is_empty() && *s != NULL).map(String::from);
        let namespace = some(parts.next());
        let name = some(parts.next());
        if parts.next().is_some() {
            return None;
        }
        Some(AppKey {
            group: if group == "core" { "" } else { group }.into(),
            version: version.into(),
            resource: resource.into(),
            namespace,
            name,
        })
    }
}

impl std::fmt::Display for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(
            f,
            "/{group}/{}/{}/{}/{}",
            self.version,
            self.resource,
            self.namespace.as_deref().unwrap_or(NULL),
            self.name.as_deref().unwrap_or(NULL)
        )
    }
}

/// Go's `[]byte` in JSON: base64 with padding, `null` when nil.
mod go_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if bytes.is_empty() {
            s.serialize_none()
        } else {
            s.serialize_str(&STANDARD.encode(bytes))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        match text {
            None => Ok(Vec::new()),
            Some(t) => STANDARD.decode(t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_read_and_write_as_kubeedge_makes_them() {
        // pkg/metaserver/key.go:57-98: group `core`, `null` for no namespace or name.
        let k = AppKey::parse("/core/v1/services/null/null").unwrap();
        assert_eq!(k, AppKey::core("services"));
        assert_eq!(k.to_string(), "/core/v1/services/null/null");
        let k = AppKey::parse("/discovery.k8s.io/v1/endpointslices/default/web-abc").unwrap();
        assert_eq!(k.group, "discovery.k8s.io");
        assert_eq!(k.namespace.as_deref(), Some("default"));
        assert_eq!(k.name.as_deref(), Some("web-abc"));
        assert_eq!(
            AppKey::parse("/core/v1/endpoints").unwrap(),
            AppKey::core("endpoints")
        );
        for bad in ["", "core/v1/services", "/core", "/core/v1/a/b/c/d"] {
            assert!(AppKey::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn an_application_travels_with_go_field_names_and_base64_bytes() {
        // A watch Application as a KubeEdge v1.15 edge sends it (fields per
        // pkg/metaserver/application.go:38-66; Option is json.Marshal(ListOptions)).
        let wire = json!({
            "ID": "x", "Key": "/core/v1/services/null/null", "Verb": "watch",
            "Nodename": "edge-1", "Option": "eyJ3YXRjaCI6dHJ1ZX0=", "ReqBody": null,
            "Subresource": "", "RespBody": null, "Status": "InApplying", "Reason": "",
            "Error": {"ErrStatus": {"metadata": {}}}, "Timestamp": "0001-01-01T00:00:00Z"
        });
        let app: Application = serde_json::from_value(wire).unwrap();
        assert_eq!(app.verb, Verb::Watch);
        assert_eq!(app.options(), json!({"watch": true}));
        assert!(app.error.is_empty());
        let back = serde_json::to_value(&app).unwrap();
        assert_eq!(back["Option"], "eyJ3YXRjaCI6dHJ1ZX0=");
        assert_eq!(back["RespBody"], Value::Null);
    }

    #[test]
    fn the_id_is_a_digest_of_the_request_only() {
        let mut a = Application::new(Verb::Watch, &AppKey::core("services"), "n", &json!({}));
        assert_eq!(a.id.len(), 64);
        let id = a.id.clone();
        a.status = Status::Approved;
        a.resp_body = b"{}".to_vec();
        assert_eq!(a.identifier(), id, "the answer is not part of the id");
        let b = Application::new(Verb::Watch, &AppKey::core("endpoints"), "n", &json!({}));
        assert_ne!(b.id, id);
    }
}
