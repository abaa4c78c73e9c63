//! The metamanager socket with real Unix sockets and real SQLite, through the client library.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use metamanager::object::Change;
use metamanager::server::{self, Server};
use metamanager::{MetaManagerConfig, Store};
use proto::metaclient::{MetaClient, Watch, WatchEvent};
use proto::{Message, ResourceType};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Bed {
    store: Store,
    sock: PathBuf,
    config: MetaManagerConfig,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start(store: &Store, sock: &Path, config: &MetaManagerConfig) -> CancellationToken {
    let listener = server::bind(sock).unwrap();
    let stop = CancellationToken::new();
    let srv = Server::new(store.clone(), None, config).unwrap();
    tokio::spawn(srv.serve(listener, stop.clone()));
    stop
}

fn bed_with(tune: impl FnOnce(&mut MetaManagerConfig)) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/mm.sock");
    let mut config = MetaManagerConfig {
        db_path: dir.path().join("edge.db"),
        socket_path: sock.clone(),
        ..MetaManagerConfig::default()
    };
    tune(&mut config);
    let store = Store::open(&config.db_path).unwrap();
    let stop = start(&store, &sock, &config);
    Bed {
        store,
        sock,
        config,
        stop,
        _dir: dir,
    }
}

fn bed() -> Bed {
    bed_with(|_| {})
}

fn svc(ns: &str, name: &str, ip: &str) -> Change {
    Change {
        key: format!("{ns}/service/{name}"),
        kind: ResourceType::Service.as_str().into(),
        value: Some(
            json!({"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip}})
                .to_string(),
        ),
        resource_version: None,
    }
}

async fn client(bed: &Bed) -> MetaClient {
    MetaClient::connect(&bed.sock, WAIT).await.unwrap()
}

#[tokio::test]
async fn the_socket_is_private_and_a_stale_file_is_replaced() {
    let bed = bed();
    let meta = std::fs::symlink_metadata(&bed.sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A second server on a live socket is refused.
    assert!(server::bind(&bed.sock).is_err());
    // Once the first is gone, its leftover file is replaced.
    bed.stop.cancel();
    tokio::time::timeout(WAIT, async {
        while std::os::unix::net::UnixStream::connect(&bed.sock).is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let _again = server::bind(&bed.sock).unwrap();
    // A file that is not a socket is never deleted.
    let other = bed.sock.with_file_name("not-a-socket");
    std::fs::write(&other, "data").unwrap();
    assert!(server::bind(&other).is_err());
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_list_and_ping() {
    let bed = bed();
    bed.store
        .apply(vec![
            svc("default", "a", "10.0.0.1"),
            svc("default", "b", "10.0.0.2"),
            svc("prod", "c", "10.0.0.3"),
        ])
        .await
        .unwrap();
    let mut c = client(&bed).await;
    c.ping().await.unwrap();
    let a = c
        .get("default", ResourceType::Service, "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a["spec"]["clusterIP"], "10.0.0.1");
    assert_eq!(
        c.get("default", ResourceType::Service, "zz").await.unwrap(),
        None
    );
    assert_eq!(
        c.list(Some("default"), ResourceType::Service)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(c.list(None, ResourceType::Service).await.unwrap().len(), 3);
    assert_eq!(
        c.list(None, ResourceType::Endpoints).await.unwrap().len(),
        0
    );
}

async fn write_frame(s: &mut UnixStream, payload: &[u8]) {
    s.write_all(&(payload.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(payload).await.unwrap();
}

async fn read_frame(s: &mut UnixStream) -> Option<Message> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.ok()?;
    Some(Message::from_json(&buf).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_and_oversized_frames_close_only_that_connection() {
    let bed = bed_with(|c| c.max_frame_len = 4096);
    bed.store
        .apply(vec![svc("default", "a", "10.0.0.1")])
        .await
        .unwrap();
    let mut raw = UnixStream::connect(&bed.sock).await.unwrap();
    for bad in [
        &b"not json"[..],
        b"[1,2]",
        br#"{"route":{"operation":"query","resource":"Bad/Path"}}"#,
        br#"{"route":{"operation":"explode"}}"#,
    ] {
        write_frame(&mut raw, bad).await;
        let reply = tokio::time::timeout(WAIT, read_frame(&mut raw))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.operation(), "error", "{bad:?}");
    }
    // The same connection still answers.
    let ping = br#"{"header":{"msg_id":"p1","timestamp":1},"route":{"operation":"ping"}}"#;
    write_frame(&mut raw, ping).await;
    let pong = read_frame(&mut raw).await.unwrap();
    assert_eq!(pong.parent_id().unwrap().to_string(), "p1");

    // A length over the limit is not a frame: that connection is closed...
    let mut rogue = UnixStream::connect(&bed.sock).await.unwrap();
    rogue.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, rogue.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the rogue connection is closed");
    // ...and nobody else notices; the store is untouched.
    let mut c = client(&bed).await;
    assert_eq!(c.list(None, ResourceType::Service).await.unwrap().len(), 1);
    write_frame(&mut raw, ping).await;
    assert!(read_frame(&mut raw).await.is_some());
}

async fn next(w: &mut Watch) -> WatchEvent {
    tokio::time::timeout(WAIT, w.next())
        .await
        .expect("watch event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_watchers_get_the_list_then_the_same_changes_in_commit_order() {
    let bed = bed();
    bed.store
        .apply(vec![svc("default", "pre", "10.0.0.1")])
        .await
        .unwrap();
    let mut watches = Vec::new();
    for _ in 0..10 {
        let mut w = Watch::new(&bed.sock, Some("default"), ResourceType::Service);
        assert_eq!(next(&mut w).await, WatchEvent::Init);
        assert!(
            matches!(next(&mut w).await, WatchEvent::InitApply(k, _) if k == "default/service/pre")
        );
        assert_eq!(next(&mut w).await, WatchEvent::InitDone);
        watches.push(w);
    }
    for i in 0..30 {
        bed.store
            .apply(vec![svc("default", &format!("s{i}"), "10.0.0.2")])
            .await
            .unwrap();
        bed.store
            .apply(vec![svc("other", "x", "10.0.0.3")])
            .await
            .unwrap();
    }
    bed.store
        .apply(vec![Change {
            value: None,
            ..svc("default", "pre", "")
        }])
        .await
        .unwrap();
    for w in &mut watches {
        for i in 0..30 {
            match next(w).await {
                WatchEvent::Apply(k, v) => {
                    assert_eq!(k, format!("default/service/s{i}"));
                    assert_eq!(v["spec"]["clusterIP"], "10.0.0.2");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(matches!(next(w).await, WatchEvent::Delete(k, _) if k == "default/service/pre"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_while_another_goes_on() {
    let bed = bed_with(|c| {
        c.watch_buffer = 8;
        c.watch_stall_timeout_ms = 200;
    });
    // The stalled client asks for a watch and never reads again.
    let mut stalled = UnixStream::connect(&bed.sock).await.unwrap();
    let watch = br#"{"header":{"msg_id":"w1","timestamp":1},"route":{"operation":"watch","resource":"*/service"}}"#;
    write_frame(&mut stalled, watch).await;
    let mut live = Watch::new(&bed.sock, None, ResourceType::Service);
    assert_eq!(next(&mut live).await, WatchEvent::Init);
    assert_eq!(next(&mut live).await, WatchEvent::InitDone);

    // Enough data to fill the socket buffers, the connection queue and the watch buffer.
    let big = "x".repeat(8 * 1024);
    let n = 400;
    let writer = {
        let store = bed.store.clone();
        tokio::spawn(async move {
            for i in 0..n {
                let mut c = svc("default", &format!("s{i}"), "10.0.0.9");
                let mut v: Value = serde_json::from_str(c.value.as_deref().unwrap()).unwrap();
                v["pad"] = Value::String(big.clone());
                c.value = Some(v.to_string());
                store.apply(vec![c]).await.unwrap();
            }
        })
    };
    for i in 0..n {
        assert!(
            matches!(next(&mut live).await, WatchEvent::Apply(k, _) if k == format!("default/service/s{i}"))
        );
    }
    writer.await.unwrap();

    // The stalled connection was closed: draining it ends in EOF well short of everything.
    let mut frames = 0;
    let drained = tokio::time::timeout(WAIT, async {
        while read_frame(&mut stalled).await.is_some() {
            frames += 1;
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the stalled watcher was never disconnected"
    );
    assert!(frames < n, "got {frames} frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_reconnects_and_starts_over_with_the_current_list() {
    let mut bed = bed();
    bed.store
        .apply(vec![svc("default", "a", "10.0.0.1")])
        .await
        .unwrap();
    let mut w = Watch::new(&bed.sock, Some("default"), ResourceType::Service);
    assert_eq!(next(&mut w).await, WatchEvent::Init);
    assert!(matches!(next(&mut w).await, WatchEvent::InitApply(..)));
    assert_eq!(next(&mut w).await, WatchEvent::InitDone);

    // The server goes away; meanwhile the store changes.
    bed.stop.cancel();
    bed.store
        .apply(vec![
            Change {
                value: None,
                ..svc("default", "a", "")
            },
            svc("default", "b", "10.0.0.2"),
        ])
        .await
        .unwrap();
    let pending = tokio::spawn(async move {
        let mut events = Vec::new();
        loop {
            let e = w.next().await;
            let done = e == WatchEvent::InitDone;
            events.push(e);
            if done {
                return events;
            }
        }
    });
    // Restarted server on the same path (the old socket file is stale by now).
    let restarted = tokio::time::timeout(WAIT, async {
        loop {
            match server::bind(&bed.sock) {
                Ok(l) => return l,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let srv = Server::new(bed.store.clone(), None, &bed.config).unwrap();
    tokio::spawn(srv.serve(restarted, stop.clone()));
    bed.stop = stop;
    let events = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    let keys: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::InitApply(k, _) => Some(k.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(events.first(), Some(&WatchEvent::Init));
    assert_eq!(
        keys,
        vec!["default/service/b"],
        "the fresh list replaces the old snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_store_is_served_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");
    let store = Store::open(&db).unwrap();
    store
        .apply(vec![svc("default", "kept", "10.0.0.7")])
        .await
        .unwrap();
    store.close();
    let config = MetaManagerConfig {
        db_path: db.clone(),
        socket_path: dir.path().join("mm.sock"),
        ..MetaManagerConfig::default()
    };
    let store = Store::open(&db).unwrap();
    let _stop = start(&store, &config.socket_path, &config);
    let mut c = MetaClient::connect(&config.socket_path, WAIT)
        .await
        .unwrap();
    let kept = c
        .get("default", ResourceType::Service, "kept")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept["spec"]["clusterIP"], "10.0.0.7");
}
