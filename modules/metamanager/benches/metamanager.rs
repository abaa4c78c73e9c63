//! metamanager benchmark: socket get latency, list of 1,000 services, upsert throughput,
//! and the time for one change to reach 10 socket watchers — each beside a baseline doing
//! the same SQLite work directly in the same run, so ratios show what the layers cost.
//!
//! Run: `cargo bench -p metamanager --bench metamanager`

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use metamanager::object::Change;
use metamanager::server::{self, Server};
use metamanager::{MetaManagerConfig, Store};
use proto::ResourceType;
use proto::metaclient::{MetaClient, Watch, WatchEvent};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn service(i: usize, rv: usize) -> Change {
    let name = format!("svc-{i:05}");
    Change {
        key: format!("default/service/{name}"),
        kind: ResourceType::Service.as_str().into(),
        value: Some(json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string(),
                          "annotations": {"edgemesh.io/lb-strategy": "RoundRobin"}},
            "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                     "selector": {"app": name}}
        }).to_string()),
        resource_version: Some(rv.to_string()),
    }
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

fn direct_get_latency(db: &Path, n: usize) -> Histogram<u64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT value FROM meta WHERE key = ?1")
        .unwrap();
    let mut h = Histogram::new(3).unwrap();
    for i in 0..n {
        let key = format!("default/service/svc-{:05}", i % 1000);
        let t = Instant::now();
        let v: String = stmt.query_row([&key], |r| r.get(0)).unwrap();
        let _: serde_json::Value = serde_json::from_str(&v).unwrap();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    h
}

/// The socket round trip with no store access: the floor under a get.
async fn socket_ping_latency(sock: &Path, n: usize) -> Histogram<u64> {
    let mut c = MetaClient::connect(sock, Duration::from_secs(5))
        .await
        .unwrap();
    let mut h = Histogram::new(3).unwrap();
    for _ in 0..n {
        let t = Instant::now();
        c.ping().await.unwrap();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    h
}

async fn socket_get_latency(sock: &Path, n: usize) -> Histogram<u64> {
    let mut c = MetaClient::connect(sock, Duration::from_secs(5))
        .await
        .unwrap();
    let mut h = Histogram::new(3).unwrap();
    for i in 0..n {
        let name = format!("svc-{:05}", i % 1000);
        let t = Instant::now();
        c.get("default", ResourceType::Service, &name)
            .await
            .unwrap()
            .unwrap();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    h
}

fn direct_upsert(db: &Path, rows: usize) -> f64 {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    let t = Instant::now();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO meta(key, type, value) VALUES (?1, ?2, ?3)")
                .unwrap();
            for &i in chunk {
                let c = service(i, 1);
                stmt.execute([&c.key, "service", &c.value.unwrap()])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    rows as f64 / t.elapsed().as_secs_f64()
}

/// `rows` upserts issued `per_call` changes per `apply`, with at most `window` calls in
/// flight (as the bus handler issues them: the worker groups whatever is queued into one
/// transaction while the caller prepares the next).
async fn store_upsert(
    store: &Store,
    rows: usize,
    rv: usize,
    per_call: usize,
    window: usize,
) -> f64 {
    let t = Instant::now();
    let mut in_flight = std::collections::VecDeque::<
        tokio::task::JoinHandle<metamanager::Result<Vec<metamanager::Outcome>>>,
    >::new();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(per_call) {
        if in_flight.len() == window {
            let oldest = in_flight.pop_front().unwrap();
            oldest.await.unwrap().unwrap();
        }
        let changes = chunk.iter().map(|&i| service(i, rv)).collect();
        in_flight.push_back(tokio::spawn(store.apply(changes)));
    }
    for p in in_flight {
        p.await.unwrap().unwrap();
    }
    rows as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let direct_db = dir.path().join("direct.db");
    let config = MetaManagerConfig {
        db_path: db.clone(),
        socket_path: dir.path().join("mm.sock"),
        ..MetaManagerConfig::default()
    };
    let store = Store::open(&db).unwrap();
    Store::open(&direct_db).unwrap().close();
    let stop = CancellationToken::new();
    let listener = server::bind(&config.socket_path).unwrap();
    tokio::spawn(
        Server::new(store.clone(), None, &config)
            .unwrap()
            .serve(listener, stop.clone()),
    );

    println!("upsert throughput, 100,000 service rows, synchronous=FULL");
    let direct = direct_upsert(&direct_db, 100_000);
    let serial = store_upsert(&store, 100_000, 1, 1000, 1).await;
    let batched = store_upsert(&store, 100_000, 2, 1000, 4).await;
    let pipelined = store_upsert(&store, 100_000, 3, 1, 1024).await;
    println!(
        "  rusqlite directly, 1,000 per transaction          {:>7.0} rows/s",
        direct
    );
    println!(
        "  Store::apply, 1,000 per call, one at a time       {:>7.0} rows/s  ({:.2}x of direct)",
        serial,
        serial / direct
    );
    println!(
        "  Store::apply, 1,000 per call, 4 calls in flight   {:>7.0} rows/s  ({:.2}x of direct)",
        batched,
        batched / direct
    );
    println!(
        "  Store::apply, 1 per call, 1,024 calls in flight   {:>7.0} rows/s  ({:.2}x of direct)",
        pipelined,
        pipelined / direct
    );

    // Keep 1,000 services for the read benchmarks.
    store
        .apply(
            (1000..100_000)
                .map(|i| Change {
                    value: None,
                    ..service(i, 4)
                })
                .collect(),
        )
        .await
        .unwrap();

    let n = 20_000;
    socket_get_latency(&config.socket_path, 2_000).await;
    let direct = tokio::task::spawn_blocking({
        let db = db.clone();
        move || direct_get_latency(&db, n)
    })
    .await
    .unwrap();
    let socket = socket_get_latency(&config.socket_path, n).await;
    let ping = socket_ping_latency(&config.socket_path, n).await;
    println!("get one service, {n} sequential calls");
    println!(
        "  rusqlite directly (+ JSON parse)  p50 {:>6.1} us  p99 {:>6.1} us",
        us(&direct, 0.5),
        us(&direct, 0.99)
    );
    println!(
        "  over the socket                    p50 {:>6.1} us  p99 {:>6.1} us  ({:.1}x of direct at p50)",
        us(&socket, 0.5),
        us(&socket, 0.99),
        us(&socket, 0.5) / us(&direct, 0.5)
    );
    println!(
        "  ping over the socket (no store)    p50 {:>6.1} us  p99 {:>6.1} us  (the IPC floor)",
        us(&ping, 0.5),
        us(&ping, 0.99)
    );

    let mut c = MetaClient::connect(&config.socket_path, Duration::from_secs(5))
        .await
        .unwrap();
    let mut lists = Histogram::<u64>::new(3).unwrap();
    for _ in 0..50 {
        let t = Instant::now();
        let all = c
            .list(Some("default"), ResourceType::Service)
            .await
            .unwrap();
        assert_eq!(all.len(), 1000);
        lists.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    println!(
        "list 1,000 services over the socket, 50 calls: p50 {:.2} ms  p99 {:.2} ms",
        us(&lists, 0.5) / 1e3,
        us(&lists, 0.99) / 1e3
    );

    let mut watches = Vec::new();
    for _ in 0..10 {
        let mut w = Watch::new(&config.socket_path, Some("default"), ResourceType::Service);
        while w.next().await != WatchEvent::InitDone {}
        watches.push(w);
    }
    let mut fanout = Histogram::<u64>::new(3).unwrap();
    for round in 0..300 {
        let t = Instant::now();
        let applied = store.apply(vec![service(round % 1000, 10 + round)]);
        let mut waits = Vec::new();
        for mut w in watches.drain(..) {
            waits.push(tokio::spawn(async move {
                loop {
                    if let WatchEvent::Apply(..) = w.next().await {
                        return w;
                    }
                }
            }));
        }
        applied.await.unwrap();
        for wait in waits {
            watches.push(wait.await.unwrap());
        }
        fanout.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    println!(
        "one change committed and seen by all 10 watchers, 300 rounds: p50 {:.0} us  p99 {:.0} us",
        us(&fanout, 0.5),
        us(&fanout, 0.99)
    );
    stop.cancel();
}
