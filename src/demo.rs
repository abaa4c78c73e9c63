//! `edgemesh demo`: a cloudcore and two edgecores on loopback, without root, serving demo
//! Services from a manifest folder written to a temporary directory; a few requests by
//! Service name through edge-1's explicit proxy (and one from the cloud's), a table of
//! where each went (this node, the other edge through the cloud, the cloud), then the
//! commands to try until Ctrl-C.

use crate::pki::Pki;
use crate::pki::join::{NodeFiles, join};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgecontroller::SourceKind;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::cloudcore::{CloudCore, CloudCoreConfig};
use crate::edgecore::{EdgeCore, EdgeCoreConfig};
use crate::error::{Error, Result};
use crate::health::HealthConfig;

/// The demo edge node whose proxy the requests use.
const NODE: &str = "edge-1";
/// The other edge node: reached only through the cloud.
const OTHER: &str = "edge-2";
/// Where the explicit proxy listens when the port is free (else any port).
const PROXY: &str = "127.0.0.1:40008";
/// How long the demo waits for the edge to receive the Services.
const SYNC_WAIT: Duration = Duration::from_secs(30);

/// An HTTP server that answers with its name and address: "which endpoint answered".
async fn http_echo(name: &'static str) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        let body =
                            format!("{name} ({addr}) {} {}\n", req.method(), req.uri().path());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A TCP server that sends back what it receives, after its name.
async fn tcp_echo(name: &'static str) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let line = format!("{name} ({addr}): {}", String::from_utf8_lossy(&buf[..n]));
                    if stream.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Endpoints `name` with one subset per address, each on its node (`None`: a cloud
/// address with no node).
fn endpoints_yaml(name: &str, port_name: &str, addrs: &[(SocketAddr, Option<&str>)]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: default}}\nsubsets:\n"
    );
    for (a, node) in addrs {
        let node = node.map_or(String::new(), |n| format!(", nodeName: {n}"));
        yaml.push_str(&format!(
            "- addresses: [{{ip: \"{}\"{node}}}]\n  ports: [{{name: {port_name}, port: {}}}]\n",
            a.ip(),
            a.port()
        ));
    }
    yaml
}

/// The demo's backends.
struct Backends {
    /// `web` on edge-1, on edge-2 and in the cloud.
    web: [SocketAddr; 3],
    /// `echo` on edge-2.
    echo: SocketAddr,
    /// `limited` on edge-1.
    limited: SocketAddr,
    /// `sensor` on edge-1, for cloud workloads.
    sensor: SocketAddr,
}

/// The demo manifests: `web` on three endpoints, one per place (round robin), `echo`
/// (opaque TCP, on the other edge), `limited` (1 request per second), `sensor` (on
/// edge-1, called from the cloud), `empty` (no endpoint).
fn manifests(b: &Backends) -> String {
    [
        "# The demo's Services. Edit this file while the demo runs: edgecontroller\n\
         # notices within half a second and the edges follow.\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  \
         annotations: {edgemesh.io/lb-strategy: RoundRobin}\n\
         spec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80}]\n"
            .to_owned(),
        endpoints_yaml(
            "web",
            "http",
            &[
                (b.web[0], Some(NODE)),
                (b.web[1], Some(OTHER)),
                (b.web[2], None),
            ],
        ),
        "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: default}\n\
         spec:\n  clusterIP: 10.96.0.11\n  ports: [{name: tcp, port: 7, appProtocol: tcp}]\n"
            .to_owned(),
        endpoints_yaml("echo", "tcp", &[(b.echo, Some(OTHER))]),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: limited\n  namespace: default\n  \
         annotations: {edgemesh.io/qps: \"1\"}\n\
         spec:\n  clusterIP: 10.96.0.12\n  ports: [{name: http, port: 80}]\n"
            .to_owned(),
        endpoints_yaml("limited", "http", &[(b.limited, Some(NODE))]),
        "apiVersion: v1\nkind: Service\nmetadata: {name: sensor, namespace: default}\n\
         spec:\n  clusterIP: 10.96.0.14\n  ports: [{name: http, port: 80}]\n"
            .to_owned(),
        endpoints_yaml("sensor", "http", &[(b.sensor, Some(NODE))]),
        "apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\n\
         spec:\n  clusterIP: 10.96.0.13\n  ports: [{name: http, port: 80}]\n"
            .to_owned(),
    ]
    .join("---\n")
}

/// One row of the table.
struct Row {
    request: String,
    via: &'static str,
    /// Where the answer came from, relative to the asking node.
    path: &'static str,
    answered_by: String,
    status: String,
    latency: Duration,
}

/// Reads an HTTP/1.0 answer to the end: status and body.
async fn read_answer(stream: &mut TcpStream) -> Result<(String, String)> {
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let status = text.split(' ').nth(1).unwrap_or("?").to_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn via_http_proxy(proxy: SocketAddr, url: &str) -> Result<(String, String)> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream
        .write_all(format!("GET {url} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    read_answer(&mut stream).await
}

async fn via_socks5(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    path: &str,
) -> Result<(String, String)> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.write_all(&[5, 1, 0]).await?;
    let mut reply = [0u8; 2];
    stream.read_exact(&mut reply).await?;
    let mut request = vec![5, 1, 0, 3, host.len() as u8];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await?;
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Ok((format!("SOCKS5 error {}", reply[1]), String::new()));
    }
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    read_answer(&mut stream).await
}

async fn via_connect(
    proxy: SocketAddr,
    authority: &str,
    payload: &str,
) -> Result<(String, String)> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .unwrap_or("?")
        .to_owned();
    if status != "200" {
        return Ok((status, String::new()));
    }
    stream.write_all(payload.as_bytes()).await?;
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await?;
    Ok((
        "connected".into(),
        String::from_utf8_lossy(&buf[..n]).trim().to_owned(),
    ))
}

async fn timed(
    request: &str,
    via: &'static str,
    call: impl Future<Output = Result<(String, String)>>,
) -> Row {
    let started = Instant::now();
    let (status, body) = call
        .await
        .unwrap_or_else(|e| ("failed".into(), e.to_string()));
    let answered_by = body.lines().next().unwrap_or_default().to_owned();
    let path = if via == "cloud proxy" {
        if answered_by.contains(" on edge-") {
            "the cloud to an edge"
        } else {
            "-"
        }
    } else if answered_by.contains(&format!("on {NODE}")) {
        "this node"
    } else if answered_by.contains(&format!("on {OTHER}")) {
        "edge-2 via the cloud"
    } else if answered_by.contains("in the cloud") {
        "the cloud"
    } else {
        "-"
    };
    Row {
        request: request.into(),
        via,
        path,
        answered_by,
        status,
        latency: started.elapsed(),
    }
}

fn print_table(rows: &[Row]) {
    let w_req = rows
        .iter()
        .map(|r| r.request.len())
        .max()
        .unwrap_or(0)
        .max(7);
    println!(
        "{:<w_req$}  {:<13}  {:<9}  {:>9}  {:<20}  answered by",
        "request", "via", "status", "latency", "path"
    );
    for r in rows {
        println!(
            "{:<w_req$}  {:<13}  {:<9}  {:>7.2}ms  {:<20}  {}",
            r.request,
            r.via,
            r.status,
            r.latency.as_secs_f64() * 1e3,
            r.path,
            r.answered_by
        );
    }
}

/// A fresh folder under the system's temporary directory.
fn temp_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("edgemesh-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("manifests"))?;
    Ok(dir)
}

fn configs(dir: &Path, proxy: &str) -> (CloudCoreConfig, EdgeCoreConfig, EdgeCoreConfig) {
    let mut cloud = CloudCoreConfig {
        health: HealthConfig::on("127.0.0.1:0"),
        ..CloudCoreConfig::default()
    };
    cloud.modules.cloud_hub.address = "127.0.0.1:0".into();
    cloud.modules.edge_mesh.proxy_listen = "127.0.0.1:0".into();
    // Secure like a real fleet: the demo's own CA, and each edge joins with a token.
    cloud.pki.dir = dir.join("cloud-pki");
    cloud.pki.address = "127.0.0.1:0".into();
    cloud.modules.cloud_hub.object_sync_db = dir.join("object-sync.db");
    let controller = &mut cloud.modules.edge_controller;
    controller.source = SourceKind::Manifests;
    controller.versions_db = dir.join("versions.db");
    controller.manifests.dir = dir.join("manifests");
    let edge = |node: &str, proxy: &str| {
        let mut edge = EdgeCoreConfig {
            health: HealthConfig::on("127.0.0.1:0"),
            ..EdgeCoreConfig::default()
        };
        edge.modules.edge_hub.node_id = node.into();
        edge.modules.edge_hub.reconnect_initial_ms = 100;
        let files = NodeFiles::in_dir(&dir.join(node).join("pki"));
        edge.modules.edge_hub.tls = Some(edgehub::TlsFiles {
            ca_file: files.ca,
            cert_file: files.cert,
            key_file: files.key,
        });
        let meta = &mut edge.modules.meta_manager;
        meta.db_path = dir.join(format!("{node}.db"));
        meta.socket_path = dir.join(format!("{node}.sock"));
        let mesh = &mut edge.modules.edge_mesh;
        mesh.iptables = false;
        mesh.listen = "127.0.0.1:0".into();
        mesh.proxy_listen = proxy.into();
        mesh.dns.listen = "127.0.0.1:0".into();
        mesh.workers = 1;
        edge
    };
    (cloud, edge(NODE, proxy), edge(OTHER, "127.0.0.1:0"))
}

/// Runs the demo until `stop` resolves.
pub async fn run(stop: impl Future<Output = ()>) -> Result<()> {
    let dir = temp_dir()?;
    let result = run_in(&dir, stop).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, stop: impl Future<Output = ()>) -> Result<()> {
    // Every backend runs on this machine; the manifests say which node each belongs to,
    // and the edges reach what is not theirs only through the cloud link.
    let backends = Backends {
        web: [
            http_echo("web-1 on edge-1").await?,
            http_echo("web-2 on edge-2").await?,
            http_echo("web-3 in the cloud").await?,
        ],
        echo: tcp_echo("echo-1 on edge-2").await?,
        limited: http_echo("limited-1 on edge-1").await?,
        sensor: http_echo("sensor-1 on edge-1").await?,
    };
    let manifest = dir.join("manifests").join("demo.yaml");
    std::fs::write(&manifest, manifests(&backends))?;

    // The fixed proxy port makes the printed commands stable; any port will do if it is
    // taken.
    let proxy_addr = match std::net::TcpListener::bind(PROXY) {
        Ok(_) => PROXY,
        Err(_) => "127.0.0.1:0",
    };
    let (mut cloud_config, mut edge_config, mut other_config) = configs(dir, proxy_addr);
    cloud_config
        .modules
        .edge_controller
        .manifests
        .poll_interval_ms = 500;
    let cloud = CloudCore::build(&cloud_config).await?;
    let hub_addr = cloud.hub_addr();
    let cloud_proxy = cloud
        .proxy_addr()
        .expect("the cloud's proxy is on in the demo");
    edge_config.modules.edge_hub.server = hub_addr.to_string();
    other_config.modules.edge_hub.server = hub_addr.to_string();
    let pki_addr = cloud.pki_addr().expect("the PKI is on in the demo");

    let (stop_cloud, cloud_stopped) = oneshot::channel::<()>();
    let cloud_task = tokio::spawn(cloud.run_until(async {
        let _ = cloud_stopped.await;
    }));
    // Each edge joins as a real one would: a token, the CA checked against it, a key of
    // its own and a certificate signed by the cloud's CA.
    let pki = Pki::open(&cloud_config.pki)?;
    let (token, _) = pki.tokens().create(std::time::Duration::from_secs(600))?;
    for config in [&mut edge_config, &mut other_config] {
        let hub = &config.modules.edge_hub;
        let files = NodeFiles::of(hub.tls.as_ref().expect("set above"));
        join(&pki_addr.to_string(), &token, &hub.node_id, &files).await?;
        config.pki.address = pki_addr.to_string();
    }
    let edge = EdgeCore::build(&edge_config).await?;
    let other = EdgeCore::build(&other_config).await?;
    let addresses = edge.mesh_addresses().expect("edgemesh is on in the demo");
    let proxy = addresses
        .proxy
        .expect("the explicit proxy is on in the demo");
    let edge_health = edge.health_addr().expect("health is on in the demo");
    let (stop_edge, edge_stopped) = oneshot::channel::<()>();
    let edge_task = tokio::spawn(edge.run_until(async {
        let _ = edge_stopped.await;
    }));
    let (stop_other, other_stopped) = oneshot::channel::<()>();
    let other_task = tokio::spawn(other.run_until(async {
        let _ = other_stopped.await;
    }));

    println!(
        "cloudcore: cloudhub on wss://{hub_addr}, manifests in {}",
        manifest.display()
    );
    println!(
        "each edge joined with a token (PKI on https://{pki_addr}): TLS with a certificate from \
         the demo's own CA"
    );
    println!(
        "edgecore {NODE}: explicit proxy on {proxy}, DNS on {}",
        addresses.dns.map_or("-".into(), |a| a.to_string())
    );
    println!("edgecore {OTHER}: reached from {NODE} only through the cloud link");
    println!("cloudcore's explicit proxy (cloud workloads to edge Services): {cloud_proxy}");
    println!("waiting for the Services to reach the edges...");
    let deadline = Instant::now() + SYNC_WAIT;
    loop {
        // Ready when edge-2 answers through the tunnel and the cloud knows the sensor.
        let ready = via_http_proxy(proxy, "http://empty/")
            .await
            .is_ok_and(|(_, body)| body.contains("no ready endpoint"))
            && via_connect(proxy, "echo:7", "ready?\n")
                .await
                .is_ok_and(|(status, body)| status == "connected" && body.contains("echo-1"))
            && via_http_proxy(cloud_proxy, "http://sensor/")
                .await
                .is_ok_and(|(status, _)| status == "200");
        if ready {
            break;
        }
        if Instant::now() > deadline {
            let _ = stop_edge.send(());
            let _ = stop_other.send(());
            let _ = stop_cloud.send(());
            return Err(Error::Io(format!(
                "the Services did not reach the edges within {SYNC_WAIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut rows = Vec::new();
    for _ in 0..6 {
        rows.push(
            timed(
                "GET http://web/",
                "http proxy",
                via_http_proxy(proxy, "http://web/"),
            )
            .await,
        );
    }
    rows.push(
        timed(
            "GET http://web.default.svc.cluster.local/",
            "socks5",
            via_socks5(proxy, "web.default.svc.cluster.local", 80, "/"),
        )
        .await,
    );
    rows.push(
        timed(
            "tcp echo:7 \"hello\"",
            "http connect",
            via_connect(proxy, "echo:7", "hello\n"),
        )
        .await,
    );
    for _ in 0..3 {
        rows.push(
            timed(
                "GET http://limited/",
                "http proxy",
                via_http_proxy(proxy, "http://limited/"),
            )
            .await,
        );
    }
    rows.push(
        timed(
            "GET http://sensor/",
            "cloud proxy",
            via_http_proxy(cloud_proxy, "http://sensor/"),
        )
        .await,
    );
    rows.push(
        timed(
            "GET http://empty/",
            "http proxy",
            via_http_proxy(proxy, "http://empty/"),
        )
        .await,
    );
    rows.push(
        timed(
            "GET http://nosuch/",
            "http proxy",
            via_http_proxy(proxy, "http://nosuch/"),
        )
        .await,
    );
    println!();
    print_table(&rows);
    println!();
    println!("Try it yourself (Ctrl-C stops everything):");
    println!("  curl -x http://{proxy} http://web/");
    println!("  curl --socks5-hostname {proxy} http://web.default.svc.cluster.local/");
    println!("  curl -p -x http://{proxy} http://web.default/");
    println!("  curl -x http://{proxy} http://limited/      # 1 request/s: 429 with Retry-After");
    if let Some(dns) = addresses.dns {
        println!(
            "  dig @{} -p {} web.default.svc.cluster.local +short",
            dns.ip(),
            dns.port()
        );
    }
    println!("  curl -x http://{cloud_proxy} http://sensor/      # from the cloud to edge-1");
    println!("  curl http://{edge_health}/metrics");
    println!("  curl http://{edge_health}/readyz");
    println!(
        "  $EDITOR {}    # the edge follows within a second",
        manifest.display()
    );
    println!("ready");

    stop.await;
    println!("stopping...");
    let _ = stop_edge.send(());
    let _ = stop_other.send(());
    let _ = tokio::join!(edge_task, other_task);
    let _ = stop_cloud.send(());
    let _ = cloud_task.await;
    println!("stopped");
    Ok(())
}
