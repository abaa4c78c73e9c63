//! Scale of the cloud link: N simulated edge nodes (real WebSocket clients that keep alive
//! and ACK) held by one cloudcore, the cloudcore's RSS, and the time from one Service change
//! to each node's ACK.
//!
//! `cargo bench --bench link_scale -- [--nodes 10000] [--rounds 5] [--hold 35] [--tls] [--services S]`
//!
//! `--hold` keeps the nodes connected that many seconds more (beyond cloudhub's keepalive
//! timeout) and counts them again; `--tls` runs the link over TLS with one certificate per
//! node.
//!
//! The cloud side runs in a child process (this same binary with `--role cloud`) assembled
//! exactly as `cloudcore` assembles it. Its RSS is read from /proc, so the load generator's
//! own memory is not counted. A "change" is, by default, one Service update per node handed
//! to cloudhub by a stand-in for edgecontroller (on a `change` line on the child's stdin).
//!
//! With `--services S`, the real edgecontroller runs instead, on a manifest folder the
//! bench writes (S Services, each with Endpoints, in 10 files). Every node reports empty
//! holdings on connect, so it is sent all 2×S objects (the initial sync is timed), and a
//! change is an edit of one Service in one file: the time runs from the file write to each
//! node's ACK, so it includes noticing the change (the folder is watched; its poll,
//! `pollIntervalMs`, 500 by default, is the fallback).
//!
//! The cloud logs at `warn` to this process's stderr; `CLOUD_LOG=info` (any `RUST_LOG`
//! filter) shows more, such as each node's resync.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use edgemesh::cloudcore::CloudCore;
use futures_util::{SinkExt, StreamExt};
use proto::{Message, Route, group, operation};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Set once the measurements are done, so nodes dropped by the cloud's exit stay quiet.
static FINISHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn main() -> Result<()> {
    edgemesh::cli::raise_fd_limit();
    let nodes: usize = arg("--nodes").map_or(Ok(10_000), |v| v.parse())?;
    if arg("--role").as_deref() == Some("cloud") {
        let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
            .try_init();
        return tokio::runtime::Runtime::new()?.block_on(cloud(nodes));
    }
    let rounds: usize = arg("--rounds").map_or(Ok(5), |v| v.parse())?;
    let workers = arg("--client-threads").map_or(Ok(1), |v| v.parse())?;
    let hold: u64 = arg("--hold").map_or(Ok(35), |v| v.parse())?;
    let tls = std::env::args().any(|a| a == "--tls");
    let services: usize = arg("--services").map_or(Ok(0), |v| v.parse())?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(drive(nodes, rounds, hold, tls, services))
}

/// The cloud process: cloudcore's assembly and a line protocol on stdin/stdout.
async fn cloud(nodes: usize) -> Result<()> {
    let mut config = edgemesh::cloudcore::CloudCoreConfig::default();
    config.health.enable = false;
    config.modules.cloud_hub.address = "127.0.0.1:0".into();
    config.modules.cloud_hub.node_limit = nodes.max(1);
    // The certificates are the bench's own (`--tls`), or the link is plain: no PKI folder.
    config.pki.dir = Default::default();
    // cloudhub's record of what nodes hold in memory, as the bench keeps no state.
    config.modules.cloud_hub.object_sync_db = Default::default();
    config.modules.cloud_hub.insecure = arg("--tls").is_none();
    if let Some(dir) = arg("--tls") {
        let dir = std::path::Path::new(&dir);
        config.modules.cloud_hub.tls = Some(cloudhub::TlsFiles {
            ca_file: dir.join("ca.crt"),
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
        });
    }
    config.modules.edge_controller.enable = false;
    config.modules.edge_controller.versions_db = Default::default();
    if let Some(dir) = arg("--manifests") {
        config.modules.edge_controller.enable = true;
        config.modules.edge_controller.manifests.dir = dir.into();
    }
    let cloudcore = CloudCore::build(&config).await?;
    let ctx = cloudcore.core.context();
    let mut mark = (Instant::now(), 0u64);
    let hub = cloudcore.hub();
    println!("listening {}", cloudcore.hub_addr());
    let running = tokio::spawn(cloudcore.run_until(std::future::pending::<()>()));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("stats") => {
                let s = hub.stats();
                println!("stats {} {}", s.connected, rss_kb(std::process::id()));
            }
            Some("mark") => {
                mark = (Instant::now(), hub.stats().delivered);
                println!("marked");
            }
            Some("wait") => {
                let n: u64 = words.next().context("wait N")?.parse()?;
                loop {
                    let s = hub.stats();
                    if s.delivered >= mark.1 + n && s.pending == 0 && s.inflight == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                println!(
                    "acked 0 {:.1} {}",
                    mark.0.elapsed().as_secs_f64() * 1e3,
                    rss_kb(std::process::id())
                );
            }
            Some("change") => {
                let rv: u64 = words.next().context("change RV")?.parse()?;
                let started = Instant::now();
                let delivered_before = hub.stats().delivered;
                for i in 0..nodes {
                    let svc = json!({
                        "apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "hello", "namespace": "default", "resourceVersion": rv.to_string()},
                        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]}
                    });
                    let msg = Message::new(
                        Route::new(
                            "edgecontroller",
                            group::RESOURCE,
                            operation::UPDATE,
                            format!("node/{}/default/service/hello", node_name(i)),
                        ),
                        svc,
                    )
                    .with_resource_version(rv.to_string());
                    ctx.send("cloudhub", msg).await?;
                }
                let queued = started.elapsed();
                loop {
                    let s = hub.stats();
                    let taken = s.delivered >= delivered_before + nodes as u64;
                    if taken && s.pending == 0 && s.inflight == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                println!(
                    "acked {:.1} {:.1} {}",
                    queued.as_secs_f64() * 1e3,
                    started.elapsed().as_secs_f64() * 1e3,
                    rss_kb(std::process::id())
                );
            }
            _ => break,
        }
    }
    running.abort();
    Ok(())
}

/// One simulated node: connects, keeps alive every 15 s, ACKs every change and reports
/// when it did.
async fn node(
    addr: std::net::SocketAddr,
    name: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    acks: mpsc::UnboundedSender<Ack>,
    connected: mpsc::UnboundedSender<()>,
) -> Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let mut req =
        format!("{scheme}://localhost:{}/p/{name}/events", addr.port()).into_client_request()?;
    req.headers_mut()
        .insert("node_id", HeaderValue::from_str(&name)?);
    req.headers_mut()
        .insert("project_id", HeaderValue::from_static("p"));
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    match tls {
        None => {
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await?;
            node_session(ws, name, acks, connected).await
        }
        Some(tls) => {
            let server = rustls_pki_types::ServerName::try_from("localhost")?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server, tcp)
                .await?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
            node_session(ws, name, acks, connected).await
        }
    }
}

/// What a node ACKed and when: resource, resourceVersion, time.
type Ack = (String, String, Instant);

async fn node_session<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    name: String,
    acks: mpsc::UnboundedSender<Ack>,
    connected: mpsc::UnboundedSender<()>,
) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // As metamanager does when the link comes up: "I hold nothing".
    let holdings = Message::new(
        Route::new("metaManager", group::RESOURCE, operation::RESYNC, ""),
        json!({}),
    );
    ws.send(WsMessage::Text(holdings.to_json()?.into())).await?;
    let _ = connected.send(());
    let keepalive = Message::new(
        Route::new("websocket", group::RESOURCE, operation::KEEPALIVE, "node"),
        "ping",
    );
    let mut ticks = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = ticks.tick() => ws.send(WsMessage::Text(keepalive.to_json()?.into())).await?,
            frame = ws.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    let msg = Message::from_json(text.as_bytes())?;
                    let ack = Message::reply(&msg, "OK");
                    ws.send(WsMessage::Text(ack.to_json()?.into())).await?;
                    let _ = acks.send((
                        msg.resource().to_owned(),
                        msg.header.resource_version.to_string(),
                        Instant::now(),
                    ));
                }
                Some(Ok(WsMessage::Close(f))) => bail!("{name} closed: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("{name}: {e}"),
                None => bail!("{name}: closed"),
            },
        }
    }
}

/// Asks the cloud process for (connected nodes, RSS in KiB).
async fn cloud_stats(
    to_cloud: &mut impl Write,
    lines: &mut mpsc::UnboundedReceiver<String>,
) -> Result<(u64, u64)> {
    writeln!(to_cloud, "stats")?;
    let line = lines.recv().await.context("stats")?;
    let parts: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Ok((parts[0], parts[1]))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Files the manifest folder is split into.
const FILES: usize = 10;

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// One manifest file: its share of the Services, each with Endpoints on two nodes;
/// `changed` gets a different clusterIP in round `round`.
fn manifest_file(file: usize, services: usize, changed: Option<(usize, usize)>) -> String {
    let mut text = String::new();
    for i in (0..services).filter(|i| i % FILES == file) {
        let name = service_name(i);
        let ip = match changed {
            Some((svc, round)) if svc == i => format!("10.97.{}.{}", round / 250, round % 250 + 1),
            _ => format!("10.96.{}.{}", i / 250, i % 250 + 1),
        };
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: default}}\n\
             subsets: [{{addresses: [{{ip: 10.244.0.{a}, nodeName: {n0}}}, {{ip: 10.244.1.{a}, nodeName: {n1}}}], \
             ports: [{{name: http, port: 8080}}]}}]\n---\n",
            a = i % 250 + 1,
            n0 = node_name(0),
            n1 = node_name(1),
        ));
    }
    text
}

fn write_manifest(dir: &std::path::Path, file: usize, text: &str) -> Result<()> {
    let path = dir.join(format!("services-{file}.yaml"));
    let tmp = dir.join(format!(".services-{file}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

async fn drive(nodes: usize, rounds: usize, hold: u64, tls: bool, services: usize) -> Result<()> {
    let certs = tempfile::tempdir()?;
    let manifests = tempfile::tempdir()?;
    let mut client_tls = Vec::new();
    let mut cloud_args = vec![
        "--role".to_owned(),
        "cloud".into(),
        "--nodes".into(),
        nodes.to_string(),
    ];
    if services > 0 {
        for file in 0..FILES {
            write_manifest(manifests.path(), file, &manifest_file(file, services, None))?;
        }
        cloud_args.extend(["--manifests".into(), manifests.path().display().to_string()]);
    }
    if tls {
        let names: Vec<String> = (0..nodes).map(node_name).collect();
        let written = edgemesh::certs::write_all(certs.path(), &["localhost".into()], &names)?;
        for (crt, key) in &written.nodes {
            client_tls.push(Some(edgemesh::tls::client_config(&edgehub::TlsFiles {
                ca_file: written.ca.clone(),
                cert_file: crt.clone(),
                key_file: key.clone(),
            })?));
        }
        cloud_args.extend(["--tls".into(), certs.path().display().to_string()]);
    } else {
        client_tls.resize(nodes, None);
    }
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(&cloud_args)
        // CLOUD_LOG sets the cloud's log filter (its log goes to this stderr).
        .env(
            "RUST_LOG",
            std::env::var("CLOUD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut to_cloud = child.stdin.take().context("stdin")?;
    let from_cloud = child.stdout.take().context("stdout")?;
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(from_cloud)
            .lines()
            .map_while(Result::ok)
        {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = line_rx.recv().await.context("cloud output")?;
    let addr: std::net::SocketAddr = first
        .strip_prefix("listening ")
        .context("listening line")?
        .parse()?;
    let idle_rss = rss_kb(pid);

    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel();
    let opening = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    for (i, tls) in client_tls.into_iter().enumerate() {
        let permit = opening.clone().acquire_owned().await?;
        let (ack_tx, conn_tx) = (ack_tx.clone(), conn_tx.clone());
        tokio::spawn(async move {
            let name = node_name(i);
            let (one_tx, mut one_rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(node(addr, name.clone(), tls, ack_tx, one_tx));
            let _ = one_rx.recv().await;
            drop(permit);
            let _ = conn_tx.send(());
            if let Ok(Err(e)) = task.await
                && !FINISHED.load(std::sync::atomic::Ordering::SeqCst)
            {
                eprintln!("{e}");
            }
        });
    }
    for _ in 0..nodes {
        conn_rx.recv().await.context("a node failed to connect")?;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let mut initial_sync = None;
    if services > 0 {
        // Every node is sent every Service and Endpoints.
        let expected = nodes * services * 2;
        for _ in 0..expected {
            tokio::time::timeout(Duration::from_secs(600), ack_rx.recv())
                .await
                .context("initial sync stalled")?
                .context("nodes gone")?;
        }
        initial_sync = Some(started.elapsed().as_secs_f64());
    }
    let (held, held_rss) = cloud_stats(&mut to_cloud, &mut line_rx).await?;
    println!(
        "machine: {} cores; link: {}",
        std::thread::available_parallelism()?.get(),
        if tls {
            "wss (TLS 1.3, client certificates)"
        } else {
            "ws"
        }
    );
    println!(
        "nodes held: {held} of {nodes} (connected in {connect_secs:.1} s); cloudcore RSS idle {} MiB, holding {} MiB ({:.1} KiB per node)",
        idle_rss / 1024,
        held_rss / 1024,
        (held_rss.saturating_sub(idle_rss)) as f64 / nodes as f64
    );
    if let Some(secs) = initial_sync {
        println!(
            "initial sync: {services} Services + {services} Endpoints to each of {nodes} nodes ({} messages) in {secs:.1} s",
            nodes * services * 2
        );
    }
    println!(
        "| round | change → node ACK p50 | p99 | last node | cloud saw every ACK | cloudcore RSS |"
    );
    println!("|---|---|---|---|---|---|");
    for round in 1..=rounds {
        let rv = round.to_string();
        let changed = (round * 7919) % services.max(1);
        let watched = format!("default/service/{}", service_name(changed));
        let t0;
        if services > 0 {
            // Rounds would otherwise fall in step with the folder poll (the fallback to
            // the watch); a random pause samples the whole poll interval.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..500))).await;
            writeln!(to_cloud, "mark")?;
            line_rx.recv().await.context("marked")?;
            t0 = Instant::now();
            let file = changed % FILES;
            write_manifest(
                manifests.path(),
                file,
                &manifest_file(file, services, Some((changed, round))),
            )?;
            writeln!(to_cloud, "wait {nodes}")?;
        } else {
            t0 = Instant::now();
            writeln!(to_cloud, "change {rv}")?;
        }
        let mut lat = Vec::with_capacity(nodes);
        while lat.len() < nodes {
            let (resource, got_rv, at) =
                tokio::time::timeout(Duration::from_secs(120), ack_rx.recv())
                    .await
                    .context("ACKs stalled")?
                    .context("nodes gone")?;
            let this_round = if services > 0 {
                resource == watched
            } else {
                got_rv == rv
            };
            if this_round {
                lat.push((at - t0).as_secs_f64() * 1e3);
            }
        }
        let done = line_rx.recv().await.context("acked line")?;
        let f: Vec<f64> = done
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(f64::NAN))
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| {round} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} MiB |",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            f[1],
            f[2] as u64 / 1024
        );
    }
    if hold > 0 {
        // Longer than cloudhub's 30 s keepalive timeout: nodes that keep alive stay held.
        tokio::time::sleep(Duration::from_secs(hold)).await;
        let (held, rss) = cloud_stats(&mut to_cloud, &mut line_rx).await?;
        println!(
            "after {hold} s more: {held} nodes held, cloudcore RSS {} MiB",
            rss / 1024
        );
    }
    FINISHED.store(true, std::sync::atomic::Ordering::SeqCst);
    writeln!(to_cloud, "quit")?;
    let _ = child.wait();
    Ok(())
}
