//! Helpers shared by the integration tests: assembled cloudcores and edgecores on loopback
//! ports, a stand-in edgecontroller, raw WebSocket nodes, and waiting with a deadline.

#![allow(dead_code)]

pub mod backend;
pub mod cutter;
pub mod kube_double;
pub mod mesh;
pub mod netns;
pub mod raw_backend;
pub mod three;
pub mod topology;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use beehive::{Context, Module, ModuleError, ShutdownReport, async_trait};
use cloudhub::Hub;
use edgemesh::cloudcore::{CloudCore, CloudCoreConfig};
use edgemesh::edgecore::{EdgeCore, EdgeCoreConfig};
use edgemesh::health::HealthConfig;
use proto::{Message, Route, group, operation};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A child process killed when the test ends, however it ends.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The longest any test waits for a condition.
pub const WAIT: Duration = Duration::from_secs(15);

/// Awaits `cond` until it holds, failing the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_ok(what, || {
        let holds = cond();
        async move {
            if holds.await {
                Ok(())
            } else {
                Err(String::new())
            }
        }
    })
    .await;
}

/// [`eventually`] for a condition that says why it does not hold yet: the last reason is
/// in the failure.
pub async fn eventually_ok<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let why = match cond().await {
            Ok(()) => return,
            Err(why) => why,
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}{}{why}",
            if why.is_empty() { "" } else { ": " }
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stands in for edgecontroller (issue 5): records what cloudhub sends up and answers
/// queries from a table of cloud resources.
pub struct StubController {
    seen: mpsc::UnboundedSender<Message>,
    objects: HashMap<String, (Value, String)>,
}

#[async_trait]
impl Module for StubController {
    fn name(&self) -> &str {
        "edgecontroller"
    }
    fn group(&self) -> &str {
        "edgecontroller"
    }
    async fn start(self: Box<Self>, ctx: Context) -> Result<(), ModuleError> {
        while let Ok(msg) = ctx.receive("edgecontroller").await {
            if msg.operation() == operation::QUERY {
                let mut reply = match self.objects.get(msg.resource()) {
                    Some((object, rv)) => {
                        Message::reply(&msg, object.clone()).with_resource_version(rv.as_str())
                    }
                    None => Message::error_reply(&msg, format!("{} not found", msg.resource())),
                };
                reply.route.source = "edgecontroller".into();
                ctx.send("cloudhub", reply).await?;
            }
            let _ = self.seen.send(msg);
        }
        Ok(())
    }
}

/// A module that forwards everything it receives to a channel.
pub struct Recorder {
    /// Module name.
    pub name: &'static str,
    /// Module group.
    pub group: &'static str,
    /// Where received messages go.
    pub tx: mpsc::UnboundedSender<Message>,
}

#[async_trait]
impl Module for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn group(&self) -> &str {
        self.group
    }
    async fn start(self: Box<Self>, ctx: Context) -> Result<(), ModuleError> {
        while let Ok(msg) = ctx.receive(self.name).await {
            let _ = self.tx.send(msg);
        }
        Ok(())
    }
}

/// A cloudcore assembled as the binary does, plus the stand-in edgecontroller.
pub struct Cloud {
    /// The cloud bus.
    pub ctx: Context,
    /// cloudhub's state.
    pub hub: Arc<Hub>,
    /// Where cloudhub listens.
    pub addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served, when the config enables it.
    pub health: Option<SocketAddr>,
    /// What reached edgecontroller.
    pub upstream: mpsc::UnboundedReceiver<Message>,
    /// Messages sent to cloudhub through [`Cloud::send`].
    sent: std::sync::atomic::AtomicU64,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ShutdownReport>>,
}

/// A cloudcore config on a loopback port with no health endpoint.
pub fn cloud_config(address: &str) -> CloudCoreConfig {
    let mut config = CloudCoreConfig {
        health: HealthConfig {
            enable: false,
            ..HealthConfig::default()
        },
        ..CloudCoreConfig::default()
    };
    config.modules.cloud_hub.address = address.into();
    // Plain ws:// unless a test sets TLS up (then it clears `insecure`); no PKI folder.
    config.modules.cloud_hub.insecure = true;
    config.pki.dir = Default::default();
    // cloudhub's record of what nodes hold stays in memory.
    config.modules.cloud_hub.object_sync_db = Default::default();
    // The stand-in takes edgecontroller's place; its version ledger stays in memory.
    config.modules.edge_controller.enable = false;
    config.modules.edge_controller.versions_db = Default::default();
    config
}

impl Cloud {
    /// Builds and starts a cloudcore with `config`. Unless the config enables the real
    /// edgecontroller, the stand-in takes its place and answers queries for the cloud
    /// resources in `objects`.
    pub async fn start(
        config: CloudCoreConfig,
        objects: HashMap<String, (Value, String)>,
    ) -> Cloud {
        let mut cloudcore = CloudCore::build(&config).await.expect("cloudcore builds");
        let (seen, upstream) = mpsc::unbounded_channel();
        if !config.modules.edge_controller.enable {
            cloudcore
                .core
                .register(Box::new(StubController { seen, objects }))
                .unwrap();
        }
        let ctx = cloudcore.core.context();
        let hub = cloudcore.hub();
        let addr = cloudcore.hub_addr();
        let health = cloudcore.health_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cloudcore.run_until(async {
            let _ = stopped.await;
        }));
        Cloud {
            ctx,
            hub,
            addr,
            health,
            upstream,
            sent: Default::default(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sends an object change (or any message) to cloudhub as edgecontroller would.
    pub async fn send(&self, msg: Message) {
        self.ctx.send("cloudhub", msg).await.unwrap();
        self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits for edgecontroller to hear that `node` connected (`true`) or went away.
    pub async fn await_link(&mut self, node: &str, up: bool) {
        let want = if up {
            proto::connection::NODE_CONNECTED
        } else {
            proto::connection::NODE_DISCONNECTED
        };
        let resource = format!("node/{node}");
        tokio::time::timeout(WAIT, async {
            loop {
                let msg = self.upstream.recv().await.expect("cloud bus open");
                if msg.operation() == operation::CONNECT
                    && msg.resource() == resource
                    && msg.content.as_str() == Some(want)
                {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("node {node} never reported {want}"));
    }

    /// Waits until cloudhub has taken every message sent so far and every queued object
    /// has been ACKed.
    pub async fn await_all_acked(&self) {
        let hub = self.hub.clone();
        let sent = self.sent.load(std::sync::atomic::Ordering::SeqCst);
        eventually("every object ACKed", || {
            let stats = hub.stats();
            async move { stats.delivered >= sent && stats.pending == 0 && stats.inflight == 0 }
        })
        .await;
    }

    /// Stops the cloudcore cleanly.
    pub async fn stop(mut self) -> ShutdownReport {
        let _ = self.stop.take().expect("running").send(());
        self.task.take().expect("running").await.unwrap()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A Service object as Kubernetes lists it.
pub fn service(ns: &str, name: &str, rv: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
        "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}
    })
}

/// An object change for `node`, as edgecontroller sends it to cloudhub.
pub fn change(node: &str, op: &str, ns: &str, name: &str, rv: &str, ip: &str) -> Message {
    Message::new(
        Route::new(
            "edgecontroller",
            group::RESOURCE,
            op,
            format!("node/{node}/{ns}/service/{name}"),
        ),
        service(ns, name, rv, ip),
    )
    .with_resource_version(rv)
}

/// An edgecore assembled as the binary does.
pub struct Edge {
    /// The edge bus.
    pub ctx: Context,
    /// metamanager's socket.
    pub socket: PathBuf,
    /// The SQLite file.
    pub db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ShutdownReport>>,
}

/// An edgecore config for `node` dialling `server`, with files in `dir` and fast
/// heartbeats and redials.
pub fn edge_config(node: &str, server: SocketAddr, dir: &Path) -> EdgeCoreConfig {
    let mut config = EdgeCoreConfig {
        health: HealthConfig {
            enable: false,
            ..HealthConfig::default()
        },
        ..EdgeCoreConfig::default()
    };
    let hub = &mut config.modules.edge_hub;
    hub.server = server.to_string();
    hub.node_id = node.into();
    // Plain ws:// unless a test sets TLS up (then it clears `insecure`).
    hub.insecure = true;
    hub.heartbeat_ms = 1_000;
    hub.reconnect_initial_ms = 50;
    hub.reconnect_max_ms = 500;
    let meta = &mut config.modules.meta_manager;
    meta.db_path = dir.join(format!("{node}.db"));
    meta.socket_path = dir.join(format!("{node}.sock"));
    // The link tests need no proxy; the mesh tests turn it on with their own listener.
    config.modules.edge_mesh.enable = false;
    config
}

impl Edge {
    /// Builds and starts an edgecore with `config`.
    pub async fn start(config: EdgeCoreConfig) -> Edge {
        Self::start_with(config, Vec::new()).await
    }

    /// Builds and starts an edgecore with `config` and `extra` modules on its bus.
    pub async fn start_with(config: EdgeCoreConfig, extra: Vec<Box<dyn Module>>) -> Edge {
        let mut edgecore = EdgeCore::build(&config).await.expect("edgecore builds");
        for module in extra {
            edgecore.core.register(module).unwrap();
        }
        let ctx = edgecore.core.context();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(edgecore.run_until(async {
            let _ = stopped.await;
        }));
        let meta = &config.modules.meta_manager;
        Edge {
            ctx,
            socket: meta.socket_path.clone(),
            db: meta.db_path.clone(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the edgecore cleanly.
    pub async fn stop(mut self) -> ShutdownReport {
        let _ = self.stop.take().expect("running").send(());
        self.task.take().expect("running").await.unwrap()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Reads `(key, value)` rows from an SQLite file through a separate connection (python3's
/// sqlite3), as an operator would.
pub fn sqlite_rows(db: &Path) -> Vec<(String, Value)> {
    let script = "import sqlite3,sys,json\n\
        c=sqlite3.connect(sys.argv[1])\n\
        print(json.dumps(c.execute('select key, value from meta order by key').fetchall()))";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
        .collect()
}

/// The edge's rows by key, read from its SQLite file by another client, once `cond` holds
/// (failing the test after [`WAIT`]).
pub async fn rows_when(
    db: &Path,
    what: &str,
    cond: impl Fn(&HashMap<String, Value>) -> bool,
) -> HashMap<String, Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rows: HashMap<String, Value> = if db.exists() {
            sqlite_rows(db).into_iter().collect()
        } else {
            HashMap::new()
        };
        if cond(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; rows: {:?}",
            rows.keys()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw WebSocket client with the given identity headers (absent when `None`).
pub async fn raw_node(
    addr: SocketAddr,
    node_id: Option<&str>,
    project_id: Option<&str>,
) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    raw_node_over(tcp, node_id, project_id).await
}

/// [`raw_node`] over a connection the caller made (to set socket options first).
pub async fn raw_node_over(
    tcp: TcpStream,
    node_id: Option<&str>,
    project_id: Option<&str>,
) -> WebSocketStream<TcpStream> {
    let addr = tcp.peer_addr().unwrap();
    let mut req = format!("ws://{addr}/project/{}/events", node_id.unwrap_or("x"))
        .into_client_request()
        .unwrap();
    if let Some(id) = node_id {
        req.headers_mut()
            .insert("node_id", HeaderValue::from_str(id).unwrap());
    }
    if let Some(id) = project_id {
        req.headers_mut()
            .insert("project_id", HeaderValue::from_str(id).unwrap());
    }
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    ws
}

/// A process's resident memory in KiB, from `/proc` (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A process's open file descriptors, from `/proc`.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A cloudcore config whose edgecontroller reads the manifest folder `manifests`, polled
/// every 100 ms.
pub fn controller_cloud(manifests: &Path) -> CloudCoreConfig {
    let mut config = cloud_config("127.0.0.1:0");
    let ctl = &mut config.modules.edge_controller;
    ctl.enable = true;
    ctl.manifests.dir = manifests.to_owned();
    ctl.manifests.poll_interval_ms = 100;
    config
}

/// The next text message a raw node is sent, ACKed as our metamanager and a KubeEdge edge
/// ACK it: a `response` whose parent is the message.
pub async fn ack_next(node: &mut WebSocketStream<TcpStream>) -> Message {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    loop {
        let frame = tokio::time::timeout(WAIT, node.next())
            .await
            .expect("a message in time")
            .expect("the link stays up")
            .unwrap();
        if let WsMessage::Text(t) = frame {
            let msg = Message::from_json(t.as_bytes()).unwrap();
            let ack = Message::reply(&msg, "OK").to_json().unwrap();
            node.send(WsMessage::Text(ack.into())).await.unwrap();
            return msg;
        }
    }
}
