//! Requests a KubeEdge edge sends up that this cloudcore does not serve: node
//! registration, node status, leases, pod status, configmaps, secrets… Each is answered at
//! once, the way KubeEdge's own edgecontroller answers a failed one — a `response` in
//! group `resource` whose content is `ObjectResp {Object: null, Err: StatusError}`
//! (kubeedge/kubeedge cloud/pkg/edgecontroller/controller/upstream.go:992-994) — so the
//! edge neither waits out its timeout nor stores the answer as an object (its metamanager
//! hands an `ObjectResp` with an error back to the requester, edge/pkg/metamanager/
//! process.go:393-400). Events are sent without waiting for an answer
//! (edge/pkg/metamanager/client/event.go uses `Send`), so they are taken and dropped.

use proto::api_status::{ApiStatus, Reason, object_resp_error};
use proto::{Message, Route, group, operation};

/// The refusal to answer `msg` with (`rest`: its resource without the node prefix,
/// `<namespace>/<type>/<name>`); `None` when it is taken without an answer.
pub fn refusal(source: &str, rest: &str, msg: &Message) -> Option<Message> {
    let kind = rest.split('/').nth(1).unwrap_or(rest);
    if kind == "event" {
        return None;
    }
    let why = format!(
        "this cloudcore does not serve {kind} requests ({} {rest}): it keeps no Nodes, \
         Leases or Pod status in Kubernetes",
        msg.operation()
    );
    let mut reply = Message::reply(
        msg,
        object_resp_error(ApiStatus::failure(Reason::MethodNotAllowed, why)),
    );
    reply.route = Route::new(source, group::RESOURCE, operation::RESPONSE, msg.resource());
    Some(reply)
}
