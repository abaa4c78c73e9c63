//! metamanager against real SQLite files in temp folders, on a real bus.

use std::time::Duration;

use beehive::{Context, Core, CoreConfig};
use metamanager::object::Change;
use metamanager::{Event, Filter, MetaManager, MetaManagerConfig, Outcome, Store};
use proto::{Content, Message, ResourceType, Route, connection, group, operation};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn svc(name: &str, rv: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
           "spec": {"clusterIP": ip}})
}

fn upsert(name: &str, rv: &str, ip: &str) -> Change {
    Change {
        key: format!("default/service/{name}"),
        kind: ResourceType::Service.as_str().into(),
        value: Some(svc(name, rv, ip).to_string()),
        resource_version: Some(rv.into()),
    }
}

fn ip_of(value: &str) -> String {
    let v: Value = serde_json::from_str(value).unwrap();
    v["spec"]["clusterIP"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn rows_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/edge.db");
    let store = Store::open(&db).unwrap();
    store
        .apply(vec![upsert("a", "1", "10.96.0.1")])
        .await
        .unwrap();
    store.close();

    let store = Store::open(&db).unwrap();
    let row = store.get("default/service/a").unwrap().unwrap();
    assert_eq!(row.kind, "service");
    assert_eq!(ip_of(&row.value), "10.96.0.1");
    let mode: String = rusqlite_journal_mode(&db);
    assert_eq!(mode, "wal");
}

fn rusqlite_journal_mode(db: &std::path::Path) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('pragma journal_mode').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Reads a row through a separate SQLite connection (python3's sqlite3), which sees only
/// committed data.
fn committed_value(db: &std::path::Path, key: &str) -> Option<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; r=sqlite3.connect(sys.argv[1]).execute('select value from meta where key=?',(sys.argv[2],)).fetchone(); print(r[0] if r else '')",
        ])
        .arg(db)
        .arg(key)
        .output()
        .expect("python3 runs");
    let s = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    (!s.is_empty()).then_some(s)
}

#[tokio::test]
async fn an_older_version_never_replaces_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db")).unwrap();
    let out = store
        .apply(vec![upsert("a", "10", "10.0.0.10")])
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Inserted]);
    let out = store
        .apply(vec![upsert("a", "9", "10.0.0.9")])
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Ignored]);
    let out = store
        .apply(vec![upsert("a", "11", "10.0.0.11")])
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Updated]);
    let row = store.get("default/service/a").unwrap().unwrap();
    assert_eq!(ip_of(&row.value), "10.0.0.11");
    let gone = Change {
        value: None,
        ..upsert("absent", "1", "")
    };
    assert_eq!(
        store.apply(vec![gone]).await.unwrap(),
        vec![Outcome::Ignored]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_the_same_ordered_stream_and_a_stalled_one_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db")).unwrap();
    store
        .apply(vec![upsert("pre", "1", "10.0.0.1")])
        .await
        .unwrap();

    let mut readers = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = mpsc::channel(1024);
        let initial = store.watch(Filter::default(), tx).await.unwrap();
        assert_eq!(initial.len(), 1, "the initial list holds what was there");
        readers.push(rx);
    }
    let (stalled_tx, mut stalled) = mpsc::channel(4);
    store.watch(Filter::default(), stalled_tx).await.unwrap();

    // Writers race; whatever order the store commits in, every watcher sees that order.
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                let name = format!("s{w}-{i}");
                store
                    .apply(vec![upsert(&name, "1", "10.0.0.2")])
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut streams = Vec::new();
    for rx in &mut readers {
        let mut keys = Vec::new();
        while keys.len() < 200 {
            let ev = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(ev, Event::Inserted(_)));
            keys.push(ev.row().key.clone());
        }
        streams.push(keys);
    }
    assert!(streams.iter().all(|s| s == &streams[0]));

    // The stalled watcher got its 4 buffered events, then was dropped.
    let mut got = 0;
    while let Some(_ev) = stalled.recv().await {
        got += 1;
    }
    assert_eq!(got, 4);
}

#[tokio::test]
async fn a_watch_in_namespace_sees_only_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db")).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let filter = Filter {
        kind: Some(ResourceType::Endpoints),
        namespace: Some("prod".into()),
    };
    store.watch(filter.clone(), tx).await.unwrap();
    let ep = |ns: &str| Change {
        key: format!("{ns}/endpoints/e"),
        kind: ResourceType::Endpoints.as_str().into(),
        value: Some(json!({"metadata": {"name": "e"}}).to_string()),
        resource_version: None,
    };
    store
        .apply(vec![ep("dev"), upsert("x", "1", "1.1.1.1"), ep("prod")])
        .await
        .unwrap();
    let ev = rx.recv().await.unwrap();
    assert_eq!(ev.row().key, "prod/endpoints/e");
    assert!(rx.try_recv().is_err());
    assert_eq!(store.list(filter).await.unwrap().len(), 1);
}

/// A bus with metamanager and a stand-in for edgehub (module `websocket`, group `hub`).
struct Bed {
    ctx: Context,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stop: beehive::ShutdownHandle,
}

fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");
    let config = MetaManagerConfig {
        db_path: db.clone(),
        socket_path: dir.path().join("mm.sock"),
        remote_query_timeout_ms: 300,
        ..MetaManagerConfig::default()
    };
    let store = Store::open(&db).unwrap();
    let mut core = Core::new(CoreConfig::default()).unwrap();
    core.register(Box::new(MetaManager::new(config, store)))
        .unwrap();
    let ctx = core.context();
    ctx.add_module("websocket", "hub").unwrap();
    let stop = core.shutdown_handle();
    tokio::spawn(core.run_until(std::future::pending()));
    Bed {
        ctx,
        db,
        _dir: dir,
        stop,
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop.shutdown();
    }
}

fn from_cloud(op: &str, resource: &str, content: Value) -> Message {
    Message::new(
        Route::new("edgecontroller", group::RESOURCE, op, resource),
        Content::Json(content),
    )
}

async fn hub_next(bed: &Bed) -> Message {
    tokio::time::timeout(WAIT, bed.ctx.receive("websocket"))
        .await
        .expect("hub got nothing")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_change_is_acked_only_after_it_is_committed() {
    let bed = bed();
    for i in 0..20 {
        let msg = from_cloud(
            operation::INSERT,
            &format!("default/service/s{i}"),
            svc(&format!("s{i}"), "1", "10.96.0.7"),
        );
        let id = msg.id().clone();
        bed.ctx.send("metaManager", msg).await.unwrap();
        let ack = hub_next(&bed).await;
        assert_eq!(ack.parent_id(), Some(&id));
        assert_eq!(ack.operation(), operation::RESPONSE);
        assert_eq!(ack.content.as_str(), Some("OK"));
        // When the ACK is out, another connection already sees the row.
        let committed = committed_value(&bed.db, &format!("default/service/s{i}"));
        assert_eq!(
            ip_of(&committed.expect("ACKed but not committed")),
            "10.96.0.7"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_split_deletes_of_absent_rows_succeed_and_bad_input_gets_an_error_reply() {
    let bed = bed();
    let list = from_cloud(
        operation::INSERT,
        "default/servicelist",
        json!([svc("a", "1", "10.0.0.1"), svc("b", "1", "10.0.0.2")]),
    );
    bed.ctx.send("metaManager", list).await.unwrap();
    assert_eq!(hub_next(&bed).await.content.as_str(), Some("OK"));
    assert!(committed_value(&bed.db, "default/service/a").is_some());
    assert!(committed_value(&bed.db, "default/service/b").is_some());

    let del = from_cloud(operation::DELETE, "default/service/never", Value::Null);
    bed.ctx.send("metaManager", del).await.unwrap();
    assert_eq!(hub_next(&bed).await.operation(), operation::RESPONSE);

    for bad in [
        from_cloud(
            operation::INSERT,
            "default/service/Bad Name",
            svc("x", "1", "1"),
        ),
        from_cloud(operation::INSERT, "default/secret/x/y", json!({})),
        from_cloud(operation::INSERT, "default/Secret/x", json!({})),
        from_cloud(
            operation::INSERT,
            "default/secret/x",
            json!("not an object"),
        ),
        from_cloud(
            operation::UPDATE,
            "default/service/x",
            json!("not an object"),
        ),
        from_cloud("explode", "default/service/x", json!({})),
    ] {
        let id = bad.id().clone();
        bed.ctx.send("metaManager", bad).await.unwrap();
        let reply = hub_next(&bed).await;
        assert_eq!(reply.parent_id(), Some(&id));
        assert_eq!(reply.operation(), operation::ERROR, "{reply:?}");
    }
    // The store is untouched by the bad ones and still serves.
    assert!(committed_value(&bed.db, "default/service/x").is_none());

    // A type this project does not use is stored and ACKed, as KubeEdge's metamanager does
    // (KubeEdge's cloud counts only a response as an ACK and resends until it gets one).
    let secret = from_cloud(
        operation::INSERT,
        "default/secret/x",
        json!({"metadata": {"name": "x"}, "data": {}}),
    );
    bed.ctx.send("metaManager", secret).await.unwrap();
    assert_eq!(hub_next(&bed).await.operation(), operation::RESPONSE);
    assert!(committed_value(&bed.db, "default/secret/x").is_some());
}

fn local_query(resource: &str) -> Message {
    Message::new(
        Route::new("edgemesh", "meta", operation::QUERY, resource),
        Content::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_queries_get_one_and_list() {
    let bed = bed();
    bed.ctx
        .send(
            "metaManager",
            from_cloud(
                operation::INSERT,
                "default/service/a",
                svc("a", "3", "10.1.1.1"),
            ),
        )
        .await
        .unwrap();
    hub_next(&bed).await;
    let one = bed
        .ctx
        .send_sync("metaManager", local_query("default/service/a"), WAIT)
        .await
        .unwrap();
    assert_eq!(one.operation(), operation::RESPONSE);
    assert_eq!(
        one.content.decode::<Value>().unwrap()["spec"]["clusterIP"],
        "10.1.1.1"
    );
    let all = bed
        .ctx
        .send_sync("metaManager", local_query("default/service"), WAIT)
        .await
        .unwrap();
    assert_eq!(all.content.decode::<Vec<Value>>().unwrap().len(), 1);
    let none = bed
        .ctx
        .send_sync("metaManager", local_query("other/service"), WAIT)
        .await
        .unwrap();
    assert_eq!(none.content.decode::<Vec<Value>>().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_object_is_asked_of_the_cloud_when_online_and_refused_when_offline() {
    let bed = bed();
    // Offline: an error at once, no remote query.
    let reply = bed
        .ctx
        .send_sync("metaManager", local_query("default/service/remote"), WAIT)
        .await
        .unwrap();
    assert_eq!(reply.operation(), operation::ERROR);

    let up = Message::new(
        Route::new(
            "websocket",
            "meta",
            operation::CONNECT,
            connection::RESOURCE,
        ),
        Content::text(connection::CONNECTED),
    );
    bed.ctx.send_to_group("meta", up).await.unwrap();
    // The link coming up makes metamanager report what it holds (nothing yet).
    let report = hub_next(&bed).await;
    assert_eq!(report.operation(), operation::RESYNC);
    assert_eq!(
        report.content.decode::<Value>().unwrap(),
        serde_json::json!({})
    );

    // Online: the hub is asked; its answer is returned and stored.
    let ctx = bed.ctx.clone();
    let asker = tokio::spawn(async move {
        ctx.send_sync("metaManager", local_query("default/service/remote"), WAIT)
            .await
    });
    let ask = hub_next(&bed).await;
    assert_eq!(ask.operation(), operation::QUERY);
    assert_eq!(ask.resource(), "default/service/remote");
    bed.ctx.send_resp(Message::reply(
        &ask,
        Content::Json(svc("remote", "4", "10.9.9.9")),
    ));
    let reply = asker.await.unwrap().unwrap();
    assert_eq!(reply.operation(), operation::RESPONSE);
    assert_eq!(
        ip_of(&committed_value(&bed.db, "default/service/remote").unwrap()),
        "10.9.9.9"
    );

    // The cloud says it does not exist: an error reply, nothing stored.
    let ctx = bed.ctx.clone();
    let asker = tokio::spawn(async move {
        ctx.send_sync("metaManager", local_query("default/service/nope"), WAIT)
            .await
    });
    let ask = hub_next(&bed).await;
    bed.ctx
        .send_resp(Message::error_reply(&ask, "default/service/nope not found"));
    assert_eq!(asker.await.unwrap().unwrap().operation(), operation::ERROR);

    // The cloud stays silent: an error after the remote timeout, well inside the caller's.
    let reply = bed
        .ctx
        .send_sync("metaManager", local_query("default/service/silent"), WAIT)
        .await
        .unwrap();
    assert_eq!(reply.operation(), operation::ERROR);
    let msg = reply.content.as_str().unwrap().to_owned();
    assert!(msg.contains("remote query failed"), "{msg}");
}
