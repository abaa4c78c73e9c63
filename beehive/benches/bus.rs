//! Bus benchmark: one-way throughput between two modules and sync round-trip latency, each
//! beside a bare tokio channel doing the same work in the same run, so the ratio shows what
//! the bus itself costs on this machine.
//!
//! Run: `cargo bench -p beehive --bench bus` (optionally `-- --messages N --round-trips N`).

use std::time::{Duration, Instant};

use beehive::Context;
use hdrhistogram::Histogram;
use proto::{Content, Message, Route};
use tokio::sync::{mpsc, oneshot};

const BATCH: usize = 256;

fn small_message() -> Message {
    Message::new(
        Route::new("edgehub", "meta", "update", "default/service/hello"),
        Content::default(),
    )
}

/// Messages per second through a bare bounded tokio channel: the floor under the bus.
async fn raw_one_way(n: usize) -> f64 {
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    let consumer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(BATCH);
        let mut got = 0;
        while got < n {
            buf.clear();
            got += rx.recv_many(&mut buf, BATCH).await;
        }
    });
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..n {
            tx.send(small_message()).await.unwrap();
        }
    });
    producer.await.unwrap();
    consumer.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

/// Messages per second from one module to another through the bus.
async fn bus_one_way(n: usize) -> f64 {
    let ctx = Context::new(1024);
    ctx.add_module("source", "a").unwrap();
    ctx.add_module("sink", "b").unwrap();
    let rx_ctx = ctx.clone();
    let consumer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(BATCH);
        let mut got = 0;
        while got < n {
            buf.clear();
            got += rx_ctx.receive_many("sink", &mut buf, BATCH).await.unwrap();
        }
    });
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..n {
            ctx.send("sink", small_message()).await.unwrap();
        }
    });
    producer.await.unwrap();
    consumer.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

/// Round-trip latencies (ns) of a request and a oneshot reply over bare tokio channels.
async fn raw_round_trip(n: usize) -> Histogram<u64> {
    let (tx, mut rx) = mpsc::channel::<(Message, oneshot::Sender<Message>)>(1024);
    tokio::spawn(async move {
        while let Some((req, reply)) = rx.recv().await {
            let _ = reply.send(Message::reply(&req, Content::default()));
        }
    });
    let mut hist = Histogram::new(3).unwrap();
    for _ in 0..n {
        let start = Instant::now();
        let (rtx, rrx) = oneshot::channel();
        tx.send((small_message(), rtx)).await.unwrap();
        rrx.await.unwrap();
        hist.record(start.elapsed().as_nanos() as u64).unwrap();
    }
    hist
}

/// Round-trip latencies (ns) of `send_sync` to a module that answers with `send_resp`.
async fn bus_round_trip(n: usize) -> Histogram<u64> {
    let ctx = Context::new(1024);
    ctx.add_module("caller", "a").unwrap();
    ctx.add_module("echo", "b").unwrap();
    let echo = ctx.clone();
    tokio::spawn(async move {
        while let Ok(req) = echo.receive("echo").await {
            echo.send_resp(Message::reply(&req, Content::default()));
        }
    });
    let mut hist = Histogram::new(3).unwrap();
    for _ in 0..n {
        let start = Instant::now();
        ctx.send_sync("echo", small_message(), Duration::from_secs(5))
            .await
            .unwrap();
        hist.record(start.elapsed().as_nanos() as u64).unwrap();
    }
    hist
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let messages = arg("--messages", 5_000_000);
    let round_trips = arg("--round-trips", 200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up allocator and threads.
        bus_one_way(200_000).await;
        raw_one_way(200_000).await;
        let (mut raw, mut bus) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            raw.push(raw_one_way(messages).await);
            bus.push(bus_one_way(messages).await);
        }
        let (raw, bus) = (median(raw), median(bus));
        println!("one-way throughput, {messages} messages, median of 3 interleaved runs");
        println!("  bare tokio mpsc      {:>6.2} M msg/s", raw / 1e6);
        println!(
            "  beehive send/receive {:>6.2} M msg/s  ({:.2}x of bare)",
            bus / 1e6,
            bus / raw
        );

        // Callers are spawned tasks, as modules are: a caller on the block_on thread would
        // measure a thread hand-off per message instead of the bus.
        let raw_rt = |n| async move { tokio::spawn(raw_round_trip(n)).await.unwrap() };
        let bus_rt = |n| async move { tokio::spawn(bus_round_trip(n)).await.unwrap() };
        raw_rt(10_000).await;
        bus_rt(10_000).await;
        let raw = raw_rt(round_trips).await;
        let bus = bus_rt(round_trips).await;
        println!("sync round trip, {round_trips} calls, one caller");
        for (name, h) in [("bare mpsc+oneshot  ", &raw), ("beehive send_sync  ", &bus)] {
            println!(
                "  {name} p50 {:>5.2} us  p99 {:>6.2} us  p99.9 {:>6.2} us",
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.value_at_quantile(0.999) as f64 / 1e3,
            );
        }
        println!(
            "  p50 ratio beehive/bare {:.2}x",
            bus.value_at_quantile(0.5) as f64 / raw.value_at_quantile(0.5) as f64
        );
    });
}
