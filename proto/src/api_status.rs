//! Kubernetes' `metav1.Status` as KubeEdge carries it in errors on the link.
//!
//! KubeEdge never sends a bare error string where a client waits for an object: its cloud
//! answers with `apierrors.StatusError`, whose only field is `ErrStatus` (no JSON tag, so
//! the Go field name is the key). Two envelopes carry it:
//!
//! - an `Application`'s `Error` (kubeedge/kubeedge cloud/pkg/dynamiccontroller/application/
//!   application.go:229-231);
//! - `ObjectResp {Object, Err}` in the `response` to a node, lease or pod request
//!   (common/types/types.go:95-98, filled at cloud/pkg/edgecontroller/controller/
//!   upstream.go:992-994), which the edge reads back into `{Object, Err StatusError}` and
//!   treats as success only when `Err` is empty (edge/pkg/metamanager/client/lease.go:56-60,
//!   107-117).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `metav1.Status`: the body of a Kubernetes API error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiStatus {
    /// Always `Status`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Always `v1`.
    #[serde(
        default,
        rename = "apiVersion",
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    /// `Failure` for an error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// What went wrong, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What went wrong, for programs (`NotFound`, `Forbidden`, `MethodNotAllowed`…).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The HTTP status code that goes with `reason`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub code: u16,
}

fn is_zero(code: &u16) -> bool {
    *code == 0
}

/// The reasons this project gives, each with its HTTP code as Kubernetes pairs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// 400: the request cannot be read.
    BadRequest,
    /// 403: the node may not have it.
    Forbidden,
    /// 404: no such object.
    NotFound,
    /// 405: this cloud does not do that (for example, manage Node objects).
    MethodNotAllowed,
}

impl Reason {
    fn parts(self) -> (&'static str, u16) {
        match self {
            Reason::BadRequest => ("BadRequest", 400),
            Reason::Forbidden => ("Forbidden", 403),
            Reason::NotFound => ("NotFound", 404),
            Reason::MethodNotAllowed => ("MethodNotAllowed", 405),
        }
    }
}

impl ApiStatus {
    /// A failure with `reason` and a message for people.
    pub fn failure(reason: Reason, message: impl Into<String>) -> Self {
        let (reason, code) = reason.parts();
        ApiStatus {
            kind: "Status".into(),
            api_version: "v1".into(),
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            code,
        }
    }

    /// True for the zero value (Go's `StatusError{}`): no error.
    pub fn is_empty(&self) -> bool {
        *self == ApiStatus::default()
    }
}

/// `apierrors.StatusError`: `{"ErrStatus": {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusError {
    /// The status.
    #[serde(rename = "ErrStatus", default)]
    pub err_status: ApiStatus,
}

impl StatusError {
    /// Wraps a status.
    pub fn new(status: ApiStatus) -> Self {
        StatusError { err_status: status }
    }

    /// True for the zero value: no error.
    pub fn is_empty(&self) -> bool {
        self.err_status.is_empty()
    }
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.err_status;
        write!(f, "{} ({} {})", s.message, s.code, s.reason)
    }
}

/// The content of a refusal in KubeEdge's `ObjectResp` envelope: no object, the error.
pub fn object_resp_error(status: ApiStatus) -> Value {
    json!({"Object": null, "Err": StatusError::new(status)})
}

/// The error inside a reply's content, in whichever of KubeEdge's shapes it comes:
/// `ObjectResp` (`Err`), an `Application` (`Error`, or `Reason` when the cloud had no API
/// status), or a bare `StatusError`. `None` when the content carries no error.
pub fn error_in(content: &Value) -> Option<String> {
    let status = |v: &Value| {
        serde_json::from_value::<StatusError>(v.clone())
            .ok()
            .filter(|e| !e.is_empty())
    };
    for key in ["Err", "Error"] {
        if let Some(e) = content.get(key).and_then(status) {
            return Some(e.to_string());
        }
    }
    if content.get("ErrStatus").is_some()
        && let Some(e) = status(content)
    {
        return Some(e.to_string());
    }
    let rejected = content.get("Status").and_then(Value::as_str) == Some("Rejected");
    match content.get("Reason").and_then(Value::as_str) {
        Some(reason) if !reason.is_empty() => Some(reason.to_owned()),
        _ if rejected => Some("rejected by the cloud".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_has_the_shape_kubernetes_clients_decode() {
        let v = object_resp_error(ApiStatus::failure(Reason::MethodNotAllowed, "no"));
        assert_eq!(
            v,
            json!({"Object": null, "Err": {"ErrStatus": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "no", "reason": "MethodNotAllowed", "code": 405}}})
        );
        assert_eq!(error_in(&v).unwrap(), "no (405 MethodNotAllowed)");
    }

    #[test]
    fn no_error_is_the_zero_status() {
        // What a KubeEdge cloud sends on success: `Err` marshalled from a nil error or an
        // empty StatusError.
        assert_eq!(error_in(&json!({"Object": {"a": 1}, "Err": null})), None);
        assert_eq!(
            error_in(&json!({"Object": {}, "Err": {"ErrStatus": {}}})),
            None
        );
        assert_eq!(error_in(&json!({"Status": "Approved", "Reason": ""})), None);
        assert_eq!(
            error_in(&json!({"Status": "Rejected", "Reason": "quota"})).unwrap(),
            "quota"
        );
        assert!(error_in(&json!({"ErrStatus": {"message": "m", "code": 404}})).is_some());
    }
}
