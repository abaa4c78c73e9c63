//! The part of KubeEdge's cloud dynamiccontroller a KubeEdge edge needs from this cloudcore:
//! answers to its metaServer's Applications (list, get, watch) and to its reconnect report
//! of watch Applications, so no request of a KubeEdge edge waits out its 10 s timeout.
//!
//! Served: Services and Endpoints (every edge gets all of them) and the Pods bound to the
//! asking node, from the state every node is sent anyway — a watch is approved because
//! the objects already flow to every edge node. Everything else is refused with the API
//! error an API server would give, which a KubeEdge edge answers its client from its own
//! store on (edge/pkg/metamanager/metaserver/kubernetes/storage/storage.go:176-208).
//! Wire shapes: `proto::application`.

use proto::api_status::{ApiStatus, Reason, StatusError};
use proto::application::{
    APPLICATION_RESOURCE, AppKey, Application, DYNAMIC_CONTROLLER, Status, Verb, WATCH_APP_SYNC,
};
use proto::{Message, Route, group};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

use crate::object::{Kind, Object};
use crate::selector::{Fields, Labels};
use crate::state::State;

/// The answer to one Application message, and the reason to count when something was
/// refused.
pub struct Answer {
    /// The reply for the node.
    pub reply: Message,
    /// What was refused, if anything.
    pub refused: Option<Refusal>,
}

/// A refusal, for the log and the count.
pub struct Refusal {
    /// The `query_refusals_total` reason.
    pub reason: &'static str,
    /// Why, for people.
    pub why: String,
}

/// What the asking node is to this cloudcore.
pub struct Asker<'a> {
    /// Its name, as its link authenticated it.
    pub node: &'a str,
    /// Whether it is an edge node served here.
    pub served: bool,
}

/// Answers an Application message (`rest` is its resource without the node prefix).
pub fn answer(state: &State, asker: &Asker, rest: &str, msg: &Message) -> Answer {
    if rest == WATCH_APP_SYNC {
        return watch_sync(state, asker, msg);
    }
    let (app, verdict) = match msg.content.decode::<Application>() {
        Ok(app) => {
            let verdict = judge(state, asker, &app);
            (app, verdict)
        }
        Err(e) => (
            unreadable(asker.node),
            refuse(
                "bad_query",
                Reason::BadRequest,
                format!("unreadable Application: {e}"),
            ),
        ),
    };
    let (app, refused) = settle(app, verdict);
    let route = Route::new(
        DYNAMIC_CONTROLLER,
        group::RESOURCE,
        proto::application::APPLICATION_RESPONSE,
        format!("node/{}/{APPLICATION_RESOURCE}", asker.node),
    );
    Answer {
        reply: reply(msg, route, json!(app)),
        refused,
    }
}

/// The reconnect report: approves the watches it can serve, answers with those it cannot
/// (application.go:259-301 answers the same way: the map of failed ones).
fn watch_sync(state: &State, asker: &Asker, msg: &Message) -> Answer {
    let route = Route::new(
        DYNAMIC_CONTROLLER,
        group::RESOURCE,
        proto::application::APPLICATION_RESPONSE,
        format!("node/{}/{WATCH_APP_SYNC}", asker.node),
    );
    let apps = match msg.content.decode::<BTreeMap<String, Application>>() {
        Ok(apps) => apps,
        Err(e) => {
            // Nothing to name as failed: the edge cannot read this answer either, logs it
            // and sends its report again later (agent.go:192-212).
            let why = format!("unreadable watch Applications: {e}");
            return Answer {
                reply: reply(msg, route, json!(why)),
                refused: Some(Refusal {
                    reason: "bad_query",
                    why,
                }),
            };
        }
    };
    let mut failed = Map::new();
    let mut refused = None;
    for (id, app) in apps {
        let verdict = if app.verb == Verb::Watch {
            judge(state, asker, &app)
        } else {
            let why = format!("{:?} in a watch report", app.verb);
            refuse("bad_query", Reason::BadRequest, why)
        };
        if let (app, Some(refusal)) = settle(app, verdict) {
            refused = Some(refusal);
            failed.insert(id, json!(app));
        }
    }
    Answer {
        reply: reply(msg, route, Value::Object(failed)),
        refused,
    }
}

type Verdict = Result<Option<Value>, Box<(&'static str, ApiStatus)>>;

/// A refusal counted under `reason`, with the API status `kind` and `why`.
fn refuse<T>(
    reason: &'static str,
    kind: Reason,
    why: impl Into<String>,
) -> Result<T, Box<(&'static str, ApiStatus)>> {
    Err(Box::new((reason, ApiStatus::failure(kind, why))))
}

/// Fills in the answer: approved with its body, or rejected with its error.
fn settle(mut app: Application, verdict: Verdict) -> (Application, Option<Refusal>) {
    app.reason.clear();
    match verdict {
        Ok(body) => {
            app.status = Status::Approved;
            app.error = StatusError::default();
            app.resp_body = body
                .map(|b| serde_json::to_vec(&b).unwrap_or_default())
                .unwrap_or_default();
            (app, None)
        }
        Err(refusal) => {
            let (reason, status) = *refusal;
            app.status = Status::Rejected;
            app.reason = status.message.clone();
            let why = status.message.clone();
            app.error = StatusError::new(status);
            app.resp_body.clear();
            (app, Some(Refusal { reason, why }))
        }
    }
}

fn reply(msg: &Message, route: Route, content: Value) -> Message {
    let mut reply = Message::reply(msg, content);
    reply.route = route;
    reply
}

fn unreadable(node: &str) -> Application {
    Application::new(Verb::Other, &AppKey::core("unknown"), node, &json!({}))
}

/// What this cloudcore says to `app`: the body to send back, or a refusal.
fn judge(state: &State, asker: &Asker, app: &Application) -> Verdict {
    let node = asker.node;
    if app.nodename != node {
        let why = format!("node {node} may not apply for node {:?}", app.nodename);
        return refuse("forbidden", Reason::Forbidden, why);
    }
    if !asker.served {
        let why = format!("node {node} is not an edge node here");
        return refuse("not_edge_node", Reason::Forbidden, why);
    }
    let Some(key) = app.parsed_key() else {
        let why = format!("unreadable Application key {:?}", app.key);
        return refuse("bad_query", Reason::BadRequest, why);
    };
    let kind = match (
        key.group.as_str(),
        key.version.as_str(),
        key.resource.as_str(),
    ) {
        ("", "v1", "services") => Kind::Service,
        ("", "v1", "endpoints") => Kind::Endpoints,
        ("", "v1", "pods") => Kind::Pod,
        _ => {
            let why = format!(
                "this cloudcore serves edges services, endpoints and their own pods; \
                 {} is not served",
                app.key
            );
            return refuse("not_served", Reason::NotFound, why);
        }
    };
    let visible = |o: &Object| kind != Kind::Pod || o.pod_node() == Some(node);
    let in_scope = |o: &Object| key.namespace.as_deref().is_none_or(|ns| o.namespace == ns);
    match app.verb {
        Verb::Watch => Ok(None),
        Verb::Get => {
            let Some(name) = key.name.as_deref() else {
                let why = format!("a get needs a name: {}", app.key);
                return refuse("bad_query", Reason::BadRequest, why);
            };
            let ns = key.namespace.clone().unwrap_or_default();
            match state.get(&(kind, ns, name.to_owned())) {
                Some(o) if visible(o) => Ok(Some((*o.value).clone())),
                Some(_) => {
                    let why = format!("node {node} may read only the Pods bound to it");
                    refuse("forbidden", Reason::Forbidden, why)
                }
                None => {
                    let why = format!("{} {name:?} not found", key.resource);
                    refuse("not_found", Reason::NotFound, why)
                }
            }
        }
        Verb::List => {
            let options = app.options();
            let text = |k: &str| options.get(k).and_then(Value::as_str).unwrap_or("");
            let selectors = Labels::parse(text("labelSelector"))
                .and_then(|l| Fields::parse(text("fieldSelector")).map(|f| (l, f)));
            let (labels, fields) =
                selectors.or_else(|why| refuse("bad_query", Reason::BadRequest, why))?;
            let items: Vec<Value> = state
                .of_kind(kind)
                .filter(|o| in_scope(o) && visible(o))
                .filter(|o| labels.matches(&o.value) && fields.matches(&o.value))
                .map(|o| (*o.value).clone())
                .collect();
            let list_kind = match kind {
                Kind::Service => "ServiceList",
                Kind::Endpoints => "EndpointsList",
                _ => "PodList",
            };
            Ok(Some(json!({
                "apiVersion": "v1",
                "kind": list_kind,
                "metadata": {"resourceVersion": newest_version(state)},
                "items": items,
            })))
        }
        other => {
            let why = format!("edges may read through this cloudcore, not {other:?}");
            refuse("not_served", Reason::MethodNotAllowed, why)
        }
    }
}

/// The list's version: the newest numeric version held, as an API server gives the
/// store's revision; empty when no version is a number.
fn newest_version(state: &State) -> String {
    [Kind::Service, Kind::Endpoints, Kind::Pod]
        .iter()
        .flat_map(|k| state.of_kind(*k))
        .filter_map(|o| o.rv.parse::<u64>().ok())
        .max()
        .map(|v| v.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::application::APPLICATION_RESPONSE;
    use std::sync::Arc;

    fn object(kind: Kind, ns: &str, name: &str, value: Value, rv: &str) -> Object {
        Object {
            kind,
            namespace: ns.into(),
            name: name.into(),
            rv: rv.into(),
            value: Arc::new(value),
        }
    }

    fn state() -> State {
        let mut s = State::default();
        for (name, labels, rv) in [
            ("web", json!({"app": "web"}), "7"),
            ("db", json!({"app": "db"}), "9"),
        ] {
            let v = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default", "labels": labels}});
            s.apply(object(Kind::Service, "default", name, v, rv));
        }
        for (name, node) in [("p1", "edge-1"), ("p2", "edge-2")] {
            let v = json!({"kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node}});
            s.apply(object(Kind::Pod, "default", name, v, "3"));
        }
        s
    }

    fn ask(app: &Application) -> (Application, Option<&'static str>, Message) {
        let msg = Message::new(
            Route::new("metaserver", DYNAMIC_CONTROLLER, "null", "node/edge-1/null"),
            json!(app),
        );
        let asker = Asker {
            node: "edge-1",
            served: true,
        };
        let a = answer(&state(), &asker, "null", &msg);
        (
            a.reply.content.decode().unwrap(),
            a.refused.map(|r| r.reason),
            a.reply,
        )
    }

    fn list(resource: &str, options: Value) -> Application {
        Application::new(Verb::List, &AppKey::core(resource), "edge-1", &options)
    }

    #[test]
    fn a_list_is_answered_with_the_selected_objects_in_the_answer_shape() {
        let (app, refused, reply) = ask(&list("services", json!({"labelSelector": "app=web"})));
        assert_eq!(refused, None);
        assert_eq!(app.status, Status::Approved);
        let body: Value = serde_json::from_slice(&app.resp_body).unwrap();
        assert_eq!(body["kind"], "ServiceList");
        assert_eq!(body["items"].as_array().unwrap().len(), 1);
        assert_eq!(body["items"][0]["metadata"]["name"], "web");
        assert_eq!(body["metadata"]["resourceVersion"], "9");
        // application.go:243-250: where and how the answer travels.
        assert_eq!(reply.route.source, DYNAMIC_CONTROLLER);
        assert_eq!(reply.route.group, group::RESOURCE);
        assert_eq!(reply.operation(), APPLICATION_RESPONSE);
        assert_eq!(reply.resource(), "node/edge-1/ignore/Application/ignore");
    }

    #[test]
    fn a_node_sees_only_its_own_pods_and_applies_only_for_itself() {
        let (app, _, _) = ask(&list("pods", json!({})));
        let body: Value = serde_json::from_slice(&app.resp_body).unwrap();
        let names: Vec<_> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("p1")]);

        let other = Application::new(Verb::List, &AppKey::core("services"), "edge-2", &json!({}));
        let (app, refused, _) = ask(&other);
        assert_eq!((app.status, refused), (Status::Rejected, Some("forbidden")));
        assert_eq!(app.error.err_status.code, 403);
    }

    #[test]
    fn what_is_not_served_is_rejected_with_an_api_status() {
        let (app, refused, _) = ask(&list("configmaps", json!({})));
        assert_eq!(
            (app.status, refused),
            (Status::Rejected, Some("not_served"))
        );
        assert_eq!(app.error.err_status.reason, "NotFound");
        let (app, _, _) = ask(&list("services", json!({"fieldSelector": "status.x=1"})));
        assert_eq!(app.error.err_status.code, 400);
        let mut create = list("services", json!({}));
        create.verb = Verb::Create;
        let (app, _, _) = ask(&create);
        assert_eq!(app.error.err_status.code, 405);
    }

    #[test]
    fn a_watch_report_names_only_the_watches_that_failed() {
        let good = Application::new(Verb::Watch, &AppKey::core("services"), "edge-1", &json!({}));
        let bad = Application::new(Verb::Watch, &AppKey::core("secrets"), "edge-1", &json!({}));
        let report: BTreeMap<String, Application> =
            [(good.id.clone(), good), (bad.id.clone(), bad.clone())].into();
        let msg = Message::new(
            Route::new(
                "metaserver",
                DYNAMIC_CONTROLLER,
                "null",
                "node/edge-1/watchapp/sync",
            ),
            json!(report),
        );
        let asker = Asker {
            node: "edge-1",
            served: true,
        };
        let a = answer(&state(), &asker, WATCH_APP_SYNC, &msg);
        let failed: BTreeMap<String, Application> = a.reply.content.decode().unwrap();
        assert_eq!(failed.keys().collect::<Vec<_>>(), vec![&bad.id]);
        assert_eq!(failed[&bad.id].status, Status::Rejected);
        assert_eq!(a.reply.resource(), "node/edge-1/watchapp/sync");
        assert_eq!(a.reply.parent_id(), Some(&msg.header.id));
    }
}
