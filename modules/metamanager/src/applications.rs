//! The watch Applications this edge files with the cloud when its link comes up, the way a
//! KubeEdge edge's metaServer does (kubeedge/kubeedge edge/pkg/metamanager/metaserver/
//! agent/agent.go:166-213): a KubeEdge cloud since v1.8 sends Services and Endpoints only
//! to edges that watch them. Our cloudcore sends them to every edge node anyway and
//! approves the watches. Shapes: `proto::application`.

use std::collections::BTreeMap;

use proto::api_status::error_in;
use proto::application::{
    AppKey, Application, DYNAMIC_CONTROLLER, METASERVER_SOURCE, NULL, Verb, WATCH_APP_SYNC,
};
use proto::{Message, Route};
use serde_json::{Value, json};

/// What edgemesh reads: every Service and every Endpoints, in every namespace.
pub const WATCHED: [&str; 2] = ["services", "endpoints"];

/// The report of this node's watches, as a KubeEdge edge sends it on every reconnect.
pub fn watch_report(node: &str) -> Message {
    let apps: BTreeMap<String, Application> = WATCHED
        .iter()
        .map(|resource| {
            let app = Application::new(
                Verb::Watch,
                &AppKey::core(resource),
                node,
                &json!({"watch": true}),
            );
            (app.id.clone(), app)
        })
        .collect();
    Message::new(
        Route::new(METASERVER_SOURCE, DYNAMIC_CONTROLLER, NULL, WATCH_APP_SYNC),
        json!(apps),
    )
}

/// The watches the cloud refused, each as (key, why), from its answer to the report.
pub fn refused(reply: &Message) -> Result<Vec<(String, String)>, String> {
    let failed: BTreeMap<String, Value> = reply
        .content
        .decode()
        .map_err(|e| format!("unreadable answer to the watch report: {e}"))?;
    Ok(failed
        .into_values()
        .map(|app| {
            let key = app["Key"].as_str().unwrap_or("?").to_owned();
            let why = error_in(&app).unwrap_or_else(|| "refused".into());
            (key, why)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_this_node_and_is_routed_as_kubeedge_routes_it() {
        let msg = watch_report("edge-1");
        // agent.go:195-196: source metaserver, group dynamiccontroller, watchapp/sync, null.
        assert_eq!(msg.route.source, "metaserver");
        assert_eq!(msg.route.group, "dynamiccontroller");
        assert_eq!(msg.resource(), "watchapp/sync");
        assert_eq!(msg.operation(), "null");
        let apps: BTreeMap<String, Application> = msg.content.decode().unwrap();
        let keys: Vec<_> = apps.values().map(|a| a.key.as_str()).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"/core/v1/services/null/null"));
        for (id, app) in &apps {
            assert_eq!(id, &app.identifier());
            assert_eq!(app.nodename, "edge-1");
        }
    }

    #[test]
    fn refusals_are_read_from_the_failed_map() {
        let ok = Message::new(
            Route::new("c", "resource", "applicationResponse", "x"),
            json!({}),
        );
        assert!(refused(&ok).unwrap().is_empty());
        let failed = json!({"abc": {"Key": "/core/v1/endpoints/null/null", "Status": "Rejected",
            "Error": {"ErrStatus": {"message": "forbidden", "code": 403, "reason": "Forbidden"}}}});
        let bad = Message::new(
            Route::new("c", "resource", "applicationResponse", "x"),
            failed,
        );
        let r = refused(&bad).unwrap();
        assert_eq!(r[0].0, "/core/v1/endpoints/null/null");
        assert!(r[0].1.contains("forbidden"));
    }
}
