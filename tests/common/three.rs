//! A cloudcore and two edgecores as real processes on loopback, configured by YAML files in
//! a temporary directory, with a manifest folder as the source: the tunnel's playground.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Process;

/// A process and the file its log goes to.
pub struct Proc {
    pub process: Process,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `bin --config config` with its log in `log`.
    pub fn start(bin: &str, config: &Path, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc {
            process: Process(child),
            log,
        }
    }

    /// The log so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What cloudhub logged as ACKed by `node` (at debug), in order: each key with the
    /// resourceVersion ACKed, once per version.
    #[allow(dead_code)] // not every test binary that shares this module reads ACKs
    pub fn acked(&self, node: &str) -> Vec<(String, u64)> {
        let marker = format!("node {node} ACKed ");
        self.text()
            .lines()
            .filter_map(|l| {
                let (key, rv) = l.split_once(&marker)?.1.trim().rsplit_once(" at ")?;
                Some((key.to_owned(), rv.parse().ok()?))
            })
            .collect()
    }

    /// The address logged right after `marker` (the first one), once it is logged.
    pub async fn logged_addr(&self, marker: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text();
            if let Some(at) = text.find(marker) {
                let rest = &text[at + marker.len()..];
                let word: String = rest
                    .trim_start_matches("wss://")
                    .trim_start_matches("ws://")
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                if let Ok(addr) = word.parse() {
                    return addr;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{marker:?} never logged:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An Endpoints object with one subset per address, each on its node (`None`: no
/// nodeName), ports named `http`.
pub fn endpoints(name: &str, addrs: &[(SocketAddr, Option<&str>)]) -> Value {
    let subsets: Vec<Value> = addrs
        .iter()
        .map(|(addr, node)| {
            let mut address = json!({"ip": addr.ip().to_string()});
            if let Some(node) = node {
                address["nodeName"] = json!(node);
            }
            json!({"addresses": [address], "ports": [{"name": "http", "port": addr.port()}]})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Endpoints",
           "metadata": {"name": name, "namespace": "default"}, "subsets": subsets})
}

/// A Service with one port named `http`; `spec` is merged into its spec.
pub fn service(name: &str, ip: &str, port: u16, spec: Value) -> Value {
    let mut svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port}]}});
    if let Value::Object(extra) = spec {
        for (k, v) in extra {
            svc["spec"][k] = v;
        }
    }
    svc
}

/// Writes `objects` into the manifest folder, one file each.
pub fn write_manifests(dir: &Path, objects: &[Value]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, obj) in objects.iter().enumerate() {
        let name = obj["metadata"]["name"].as_str().unwrap();
        let kind = obj["kind"].as_str().unwrap();
        std::fs::write(
            dir.join(format!("{i:03}-{kind}-{name}.json")),
            serde_json::to_vec_pretty(obj).unwrap(),
        )
        .unwrap();
    }
}

/// cloudcore's config: cloudhub on `hub` (say 127.0.0.1:0), manifests from `manifests`,
/// its record of what nodes hold next to that folder, the cloud's explicit proxy on.
pub fn cloud_yaml(hub: &str, manifests: &Path, extra_mesh: &str) -> String {
    let record = manifests
        .parent()
        .unwrap_or(manifests)
        .join("object-sync.db");
    format!(
        "health: {{address: \"127.0.0.1:0\"}}\n\
         modules:\n  cloudHub: {{address: \"{hub}\", insecure: true, objectSyncDb: \"{}\"}}\n  \
         edgeController: {{source: manifests, manifests: {{dir: \"{}\", pollIntervalMs: 100}}, \
         versionsDb: \"{}\"}}\n  \
         edgeMesh: {{proxyListen: \"127.0.0.1:0\"{extra_mesh}}}\n",
        record.display(),
        manifests.display(),
        record.with_file_name("versions.db").display()
    )
}

/// edgecore's config for node `node`, dialling `server`, with its files in `dir`;
/// `mesh` adds edgeMesh fields (say `, iptables: true, listen: ...`).
pub fn edge_yaml(node: &str, server: &str, dir: &Path, mesh: &str) -> String {
    format!(
        "health: {{address: \"127.0.0.1:0\"}}\n\
         modules:\n  edgeHub: {{server: \"{server}\", insecure: true, nodeId: {node}, reconnectInitialMs: 100, reconnectMaxMs: 1000}}\n  \
         metaManager: {{dbPath: \"{d}/{node}.db\", socketPath: \"{d}/{node}.sock\"}}\n  \
         edgeMesh: {{iptables: false, listen: \"127.0.0.1:0\", proxyListen: \"127.0.0.1:0\", workers: 1{mesh}}}\n",
        d = dir.display()
    )
}

/// [`endpoints`] from (ip, port, node) triples, for addresses that are not local sockets.
pub fn endpoints_at(name: &str, addrs: &[(&str, u16, Option<&str>)]) -> Value {
    let parsed: Vec<(SocketAddr, Option<&str>)> = addrs
        .iter()
        .map(|(ip, port, node)| (format!("{ip}:{port}").parse().unwrap(), *node))
        .collect();
    let mut eps = endpoints(name, &parsed);
    // Port names follow the Service's ("main" in the namespace tests).
    for subset in eps["subsets"].as_array_mut().unwrap() {
        subset["ports"][0]["name"] = json!("main");
    }
    eps
}
