//! `edgemesh proxy` with `source: kubernetes`: Services and EndpointSlices listed and
//! watched on a Kubernetes-style API (the test double of tests/common/kube_double.rs, as a
//! KubeEdge metaServer or a kube-apiserver would serve them) feed the proxy's catalog —
//! through the explicit proxy in-process, and through iptables interception inside a
//! network namespace with the real binary.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::kube_double::{KubeDouble, Res};
use common::mesh::{get, get_via, proxy_client};
use common::netns::{Netns, is_root};
use common::{Process, backend, eventually};
use edgemesh::health::HealthConfig;
use edgemesh::standalone::{ProxyConfig, Standalone};
use edgemesh_proxy::config::{RemoteEndpoints, Source};
use serde_json::{Value, json};
use tokio::sync::oneshot;

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

/// A slice of Service `service` with one endpoint per (address, node); every address
/// serves the same port (the test's backends share an IP, so one port per slice).
fn slice(name: &str, service: &str, endpoint: SocketAddr, node: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [endpoint.ip().to_string()], "nodeName": node,
            "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": endpoint.port(), "protocol": "TCP"}]})
}

/// A standalone proxy on loopback port 0 reading the double through `kubeconfig`.
fn config(kubeconfig: &Path, remote: RemoteEndpoints) -> ProxyConfig {
    let mut config = ProxyConfig {
        health: HealthConfig::on("127.0.0.1:0"),
        node_name: "edge-t".into(),
        ..ProxyConfig::default()
    };
    let mesh = &mut config.edge_mesh;
    mesh.iptables = false;
    mesh.listen = "127.0.0.1:0".into();
    mesh.proxy_listen = "127.0.0.1:0".into();
    mesh.source = Source::Kubernetes;
    mesh.kubernetes.kubeconfig = kubeconfig.to_owned();
    mesh.kubernetes.remote_endpoints = remote;
    config
}

/// A running standalone proxy; stopped when dropped.
struct Running {
    proxy: SocketAddr,
    health: SocketAddr,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(config: ProxyConfig) -> Running {
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    let standalone = Standalone::build(&config).await.expect("the proxy builds");
    let proxy = standalone
        .mesh_addresses()
        .proxy
        .expect("explicit proxy on");
    let health = standalone.health_addr().expect("health on");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(standalone.run_until(async {
        let _ = stopped.await;
    }));
    eventually("the proxy ready", || async move {
        get(health, "/readyz").await.is_ok_and(|(s, _)| s == 200)
    })
    .await;
    Running {
        proxy,
        health,
        _stop: stop,
        task,
    }
}

/// GET `url` through the explicit proxy at `proxy`, on a new connection.
async fn fetch(proxy: SocketAddr, url: &str) -> (u16, String) {
    let (status, _, body) = get_via(&mut proxy_client(proxy).await, url).await;
    (status, body)
}

/// Who answered four requests in a row (the backends answer with their name first).
async fn answered_by(proxy: SocketAddr) -> Vec<String> {
    let mut by = Vec::new();
    for _ in 0..4 {
        let (_, body) = fetch(proxy, "http://web/").await;
        by.push(body.split(' ').next().unwrap_or_default().to_owned());
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_services_and_endpointslices_from_a_kubernetes_api() {
    let dir = tempfile::tempdir().unwrap();
    let b1 = backend::spawn("127.0.0.1", "b1").await;
    let b2 = backend::spawn("127.0.0.1", "b2").await;
    let double = KubeDouble::start(vec![
        (Res::Services, service("web", "10.96.50.10")),
        (Res::EndpointSlices, slice("web-a", "web", b1, "edge-t")),
    ])
    .await;
    let kubeconfig = dir.path().join("kubeconfig");
    double.write_kubeconfig(&kubeconfig);
    let mesh = start(config(&kubeconfig, RemoteEndpoints::Direct)).await;
    let (_, ready) = get(mesh.health, "/readyz").await.unwrap();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("[+] kubernetes: synced: services and endpointslices")),
        "{ready}"
    );

    // By Service name, to the slice's endpoint.
    assert_eq!(
        fetch(mesh.proxy, "http://web/").await,
        (200, "b1 HTTP/1.1 /\n".into())
    );

    // A new slice adds an endpoint; deleting the first leaves only the new one.
    double.apply(Res::EndpointSlices, slice("web-b", "web", b2, "edge-t"));
    eventually("b2 answering too", || async {
        answered_by(mesh.proxy).await.contains(&"b2".to_owned())
    })
    .await;
    double.delete(Res::EndpointSlices, "default", "web-a");
    eventually("only b2 answering", || async {
        answered_by(mesh.proxy).await.iter().all(|b| b == "b2")
    })
    .await;

    // The last slice gone: no endpoint, said so.
    double.delete(Res::EndpointSlices, "default", "web-b");
    eventually("503 without endpoints", || async {
        let (status, body) = fetch(mesh.proxy, "http://web/").await;
        status == 503 && body.contains("no ready endpoint")
    })
    .await;

    // A relist after the watch expired (410 Gone) brings what changed meanwhile: an
    // endpoint on another node, dialled directly (remoteEndpoints: direct).
    double.expire(|gap| gap.apply(Res::EndpointSlices, slice("web-far", "web", b1, "edge-far")));
    eventually("the relisted remote endpoint answering", || async {
        fetch(mesh.proxy, "http://web/").await == (200, "b1 HTTP/1.1 /\n".into())
    })
    .await;
    assert!(double.gone_served() > 0, "the watch was expired");

    // The same API with remoteEndpoints: refuse: 503 naming the other node.
    let refusing = start(config(&kubeconfig, RemoteEndpoints::Refuse)).await;
    let (status, body) = fetch(refusing.proxy, "http://web/").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("edge-far") && body.contains("default/web"),
        "{body}"
    );
}

/// Prints a process's log when the test fails, for the reason.
struct LogOnFailure(std::path::PathBuf);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.0.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_api_and_says_why() {
    // A port nothing listens on: the API is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut config = config(Path::new(""), RemoteEndpoints::Direct);
    config.edge_mesh.kubernetes.server = server.clone();
    let standalone = Standalone::build(&config).await.expect("the proxy builds");
    let health = standalone.health_addr().expect("health on");
    let (_stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(standalone.run_until(async {
        let _ = stopped.await;
    }));
    let expected = format!("[-] kubernetes: listing services and endpointslices from {server}");
    eventually("not ready, naming the API and the error", || {
        let expected = expected.clone();
        async move {
            get(health, "/readyz").await.is_ok_and(|(status, body)| {
                status == 503
                    && body
                        .lines()
                        .any(|l| l.starts_with(&expected) && l.contains("last error"))
            })
        }
    })
    .await;
    task.abort();
}

/// Rules in our chain inside `ns`.
fn rule_count(ns: &Netns) -> usize {
    let out = ns.output(&["iptables", "-t", "nat", "-S", "EDGE-MESH"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A"))
        .count()
}

/// curl inside `ns`: the body.
fn curl(ns: &Netns, url: &str) -> String {
    let out = ns.output(&["curl", "-s", "--max-time", "5", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_connections_to_a_cluster_ip_follow_the_kubernetes_api() {
    assert!(
        is_root(),
        "this test needs root for namespaces and iptables (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    // The API and the backends on the host end of the namespace's link, as a metaServer
    // and pods on a routed pod network would be.
    let b1 = backend::spawn(&ns.host_ip, "b1").await;
    let b2 = backend::spawn(&ns.host_ip, "b2").await;
    let double = KubeDouble::start_on(
        &ns.host_ip,
        vec![
            (Res::Services, service("web", "10.96.51.10")),
            (Res::EndpointSlices, slice("web-a", "web", b1, "edge-t")),
        ],
    )
    .await;
    let config = dir.path().join("edgemesh.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: edge-t\n\
             edgeMesh:\n  \
               listen: \"0.0.0.0:40003\"\n  \
               iptablesSyncMs: 200\n  \
               source: kubernetes\n  \
               kubernetes: {{server: \"http://{}\"}}\n",
            double.addr
        ),
    )
    .unwrap();
    let _log = LogOnFailure(dir.path().join("edgemesh.log"));
    let mut proxy = Process(ns.spawn(
        &[
            env!("CARGO_BIN_EXE_edgemesh"),
            "proxy",
            "--config",
            config.to_str().unwrap(),
        ],
        &dir.path().join("edgemesh.log"),
    ));
    eventually("the rule for the Service port", || {
        let n = rule_count(&ns);
        async move { n == 1 }
    })
    .await;
    assert_eq!(curl(&ns, "http://10.96.51.10/"), "b1 HTTP/1.1 /\n");
    let ready = curl(&ns, "http://127.0.0.1:10351/readyz");
    assert!(
        ready.lines().any(
            |l| l.starts_with("[+] kubernetes: synced") && l.contains(&double.addr.to_string())
        ),
        "{ready}"
    );

    // The slice moves to another endpoint: the ClusterIP follows.
    double.apply(Res::EndpointSlices, slice("web-a", "web", b2, "edge-t"));
    eventually("b2 behind the ClusterIP", || {
        let body = curl(&ns, "http://10.96.51.10/moved");
        async move { body == "b2 HTTP/1.1 /moved\n" }
    })
    .await;

    // The Service deleted: its rule goes.
    double.delete(Res::Services, "default", "web");
    eventually("no rule left", || {
        let n = rule_count(&ns);
        async move { n == 0 }
    })
    .await;
    let _ = proxy.0.kill();
    let _ = proxy.0.wait();
    let log = std::fs::read_to_string(dir.path().join("edgemesh.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}
