//! An edgecore whose edgemesh is reached through its front doors (explicit proxy, DNS,
//! `/metrics`) on loopback: no root, no iptables. Services and Endpoints are put in its
//! SQLite before it starts, as the cloud would have left them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use edgemesh::edgecore::{EdgeCore, EdgeCoreConfig};
use edgemesh::health::HealthConfig;
use edgemesh_proxy::Addresses;
use metamanager::Store;
use metamanager::object::changes;
use proto::ResourcePath;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::eventually;

/// The node the test edge is.
pub const NODE: &str = "edge-1";

/// A running edgecore with edgemesh on loopback.
pub struct MeshEdge {
    /// Where edgemesh listens.
    pub addresses: Addresses,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub health: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// A Service with one TCP port `port` named `main`, and `annotations`.
pub fn service(name: &str, ip: &str, port: u16, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"clusterIP": ip, "ports": [{"name": "main", "port": port, "protocol": "TCP"}]}})
}

/// Endpoints of Service `name` at `addrs`, all on this node.
pub fn endpoints(name: &str, addrs: &[SocketAddr]) -> Value {
    endpoints_on(name, addrs, NODE)
}

/// Endpoints of Service `name` at `addrs` (one subset each, port `main`), all on `node`.
pub fn endpoints_on(name: &str, addrs: &[SocketAddr], node: &str) -> Value {
    let subsets: Vec<Value> = addrs
        .iter()
        .map(|a| {
            json!({"addresses": [{"ip": a.ip().to_string(), "nodeName": node}],
                   "ports": [{"name": "main", "port": a.port(), "protocol": "TCP"}]})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "default"}, "subsets": subsets})
}

/// Stores `objects` (edge path, object) where metamanager will find them.
pub async fn store<P: AsRef<str>>(db: &Path, objects: &[(P, Value)]) {
    let store = Store::open(db).unwrap();
    for (path, object) in objects {
        let path = ResourcePath::parse_edge(path.as_ref()).unwrap();
        store
            .apply(changes(&path, object, "1", false).unwrap())
            .await
            .unwrap();
    }
    store.close();
}

/// The config of a test edge in `dir`: no cloud link, edgemesh without iptables, every
/// listener on 127.0.0.1 port 0; DNS forwarding to `dns_upstream` if given.
pub fn config(dir: &Path, dns_upstream: Option<SocketAddr>) -> EdgeCoreConfig {
    let mut config = EdgeCoreConfig {
        health: HealthConfig::on("127.0.0.1:0"),
        ..EdgeCoreConfig::default()
    };
    config.modules.edge_hub.enable = false;
    config.modules.edge_hub.node_id = NODE.into();
    let meta = &mut config.modules.meta_manager;
    meta.db_path = dir.join("edge.db");
    meta.socket_path = dir.join("edge.sock");
    let mesh = &mut config.modules.edge_mesh;
    mesh.iptables = false;
    mesh.listen = "127.0.0.1:0".into();
    mesh.proxy_listen = "127.0.0.1:0".into();
    mesh.dns.listen = "127.0.0.1:0".into();
    mesh.dns.upstreams = dns_upstream.iter().map(|a| a.to_string()).collect();
    mesh.dns.upstream_timeout_ms = 1_000;
    config
}

impl MeshEdge {
    /// Stores `objects`, starts the edgecore and waits until edgemesh has loaded them.
    pub async fn start(config: EdgeCoreConfig, objects: &[(String, Value)]) -> MeshEdge {
        store(&config.modules.meta_manager.db_path, objects).await;
        let edgecore = EdgeCore::build(&config).await.expect("edgecore builds");
        let addresses = edgecore.mesh_addresses().expect("edgemesh on");
        let health = edgecore.health_addr().expect("health on");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            edgecore
                .run_until(async {
                    let _ = stopped.await;
                })
                .await;
        });
        eventually("edgemesh ready", || async move {
            get(health, "/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
        })
        .await;
        MeshEdge {
            addresses,
            health,
            stop: Some(stop),
            task,
        }
    }

    /// The explicit proxy's address.
    pub fn proxy(&self) -> SocketAddr {
        self.addresses.proxy.expect("explicit proxy on")
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        let (status, body) = get(self.health, "/metrics").await.expect("metrics answer");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Stops the edgecore cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        (&mut self.task).await.unwrap();
    }
}

impl Drop for MeshEdge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.0 GET: status and body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer in 5 s"))?
}

/// The value of the sample `name{labels}` in Prometheus text, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A TCP echo server on loopback until the test ends.
pub async fn tcp_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Runs `program` with `args` and returns its stdout (panics if it cannot start).
pub async fn run(program: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program}: {e} (tests/run.sh installs it)"))
}

/// Opens a CONNECT tunnel to `authority` through the explicit proxy at `proxy`: the
/// stream, and the proxy's answer head.
pub async fn tunnel(proxy: SocketAddr, authority: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// A keep-alive HTTP/1.1 connection to the explicit proxy.
pub async fn proxy_client(
    proxy: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// GETs `url` (absolute) on `client`: status, Retry-After, body.
pub async fn get_via(
    client: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    url: &str,
) -> (u16, Option<u64>, String) {
    client.ready().await.unwrap();
    let req = hyper::Request::get(url)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, retry, String::from_utf8_lossy(&body).into_owned())
}

/// Accepted over elapsed seconds, less the burst, against the limit: within ±10%.
pub fn assert_rate(accepted: usize, burst: usize, limit: f64, elapsed: Duration) {
    let expected = limit * elapsed.as_secs_f64() + burst as f64;
    let ratio = accepted as f64 / expected;
    eprintln!("{accepted} accepted in {elapsed:?}: {ratio:.3} of {expected:.1}");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{accepted} accepted in {elapsed:?}; expected {expected:.1} at {limit}/s (ratio {ratio:.3})"
    );
}

/// Two keep-alive clients of the explicit proxy at `proxy`, each GETting `url` 100 times a
/// second for `run`: per client, its 200s and its 429s, and the time it all took. A 429 must
/// carry `Retry-After` ≥ 1 and name `refusal` in its body; any other answer fails the test.
pub async fn paced_clients(
    proxy: SocketAddr,
    url: &'static str,
    refusal: &'static str,
    run: std::time::Duration,
) -> (Vec<(usize, usize)>, std::time::Duration) {
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(async move {
            let mut client = proxy_client(proxy).await;
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
            let (mut ok, mut limited) = (0, 0);
            while started.elapsed() < run {
                tick.tick().await;
                match get_via(&mut client, url).await {
                    (200, _, _) => ok += 1,
                    (429, Some(retry), body) => {
                        assert!(retry >= 1, "Retry-After {retry}");
                        assert!(body.contains(refusal), "{body}");
                        limited += 1;
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            (ok, limited)
        }));
    }
    let mut per_client = Vec::new();
    for task in tasks {
        per_client.push(task.await.unwrap());
    }
    (per_client, started.elapsed())
}

/// Starts an edgecore process (metamanager and edgemesh with iptables, no cloud link,
/// health on the namespace's 127.0.0.1:10350) inside `ns` on the store `db`, logging to
/// `dir/edgecore.log`. `top` is YAML lines put first (say `beehive:`); `mesh` is more
/// `edgeMesh:` settings, each starting with a comma.
pub fn edgecore_in(
    ns: &super::netns::Netns,
    dir: &Path,
    db: &Path,
    top: &str,
    mesh: &str,
) -> super::Process {
    let config = dir.join("edgecore.yaml");
    std::fs::write(
        &config,
        format!(
            "{top}health: {{address: \"127.0.0.1:10350\"}}\n\
             modules:\n  \
               edgeHub: {{enable: false, nodeId: edge-t}}\n  \
               metaManager: {{dbPath: \"{}\", socketPath: \"{}\"}}\n  \
               edgeMesh: {{listen: \"0.0.0.0:40001\", iptablesSyncMs: 200{mesh}}}\n",
            db.display(),
            dir.join("mm.sock").display()
        ),
    )
    .unwrap();
    super::Process(ns.spawn(
        &[
            env!("CARGO_BIN_EXE_edgecore"),
            "--config",
            config.to_str().unwrap(),
        ],
        &dir.join("edgecore.log"),
    ))
}

/// What reached an echo server: (server id, client address, payload).
pub type Seen = Arc<Mutex<Vec<(usize, SocketAddr, Vec<u8>)>>>;

/// UDP echo servers on `ip`, each answering `<id>:<payload>` and logging what came.
pub async fn udp_echoes(ip: &str, n: usize) -> (Vec<SocketAddr>, Seen) {
    let seen: Seen = Arc::default();
    let mut addrs = Vec::new();
    for id in 0..n {
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        addrs.push(socket.local_addr().unwrap());
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                seen.lock().unwrap().push((id, from, buf[..len].to_vec()));
                let mut reply = format!("{id}:").into_bytes();
                reply.extend_from_slice(&buf[..len]);
                let _ = socket.send_to(&reply, from).await;
            }
        });
    }
    (addrs, seen)
}
