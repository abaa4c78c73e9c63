//! Convergence under faults: Services and Endpoints are added, updated and deleted at the
//! source — the manifest folder, and the Kubernetes test double — while cloudcore is killed
//! with SIGKILL and restarted every few seconds and the edges' links are cut at random (a
//! relay in front of cloudhub). At the end every edge's SQLite holds exactly the source:
//! nothing missing, nothing stale, nothing deleted brought back. Then a node that was
//! offline while 1,000 changes were made converges within 10 s of its return.
//!
//! `CONVERGENCE_CHANGES=10000 cargo test --test convergence -- --nocapture` runs
//! the long variant; CI runs the short one.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cutter::Cutter;
use common::kube_double::{Gap, KubeDouble, Res};
use common::sqlite_rows;
use common::three::{Proc, cloud_yaml, edge_yaml};
use serde_json::{Value, json};

const CLOUDCORE: &str = env!("CARGO_BIN_EXE_cloudcore");
const EDGECORE: &str = env!("CARGO_BIN_EXE_edgecore");
const EDGES: [&str; 2] = ["edge-a", "edge-b"];

/// The source's truth: Service name → its generation (an annotation on the Service, and
/// the address of its one endpoint, which survives the EndpointSlice → Endpoints merge).
type Model = BTreeMap<u32, u64>;

fn cluster_ip(n: u32) -> String {
    format!("10.97.{}.{}", n / 250, n % 250 + 1)
}

/// The endpoint address that carries `generation`.
fn endpoint_ip(generation: u64) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | (generation as u32 & 0x00ff_ffff))
}

fn manifest(n: u32, generation: u64) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{n}\n  namespace: default\n  \
         annotations: {{gen: \"{generation}\"}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80}}]\n\
         ---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  name: s{n}\n  namespace: default\n\
         subsets:\n- addresses: [{{ip: {ep}}}]\n  ports: [{{name: http, port: 8080}}]\n",
        ip = cluster_ip(n),
        ep = endpoint_ip(generation),
    )
}

fn service(n: u32, generation: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{n}"), "namespace": "default",
            "annotations": {"gen": generation.to_string()}},
        "spec": {"clusterIP": cluster_ip(n), "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn slice(n: u32, generation: u64) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{n}-x"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": format!("s{n}")}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [endpoint_ip(generation).to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

/// Where the changes are made.
enum Source {
    /// The manifest folder: a file per Service.
    Folder(PathBuf),
    /// The Kubernetes test double: a Service and an EndpointSlice per Service.
    Kube(KubeDouble),
}

impl Source {
    /// Sets Service `n` to `generation`, or deletes it.
    fn apply(&self, n: u32, generation: Option<u64>) {
        match self {
            Source::Folder(dir) => {
                let path = dir.join(format!("s{n}.yaml"));
                match generation {
                    Some(g) => {
                        // Atomically (a rename), as tools that write manifests do.
                        let tmp = dir.join(format!(".s{n}.tmp"));
                        std::fs::write(&tmp, manifest(n, g)).unwrap();
                        std::fs::rename(&tmp, &path).unwrap();
                    }
                    None => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            Source::Kube(double) => match generation {
                Some(g) => {
                    double.apply(Res::Services, service(n, g));
                    double.apply(Res::EndpointSlices, slice(n, g));
                }
                None => {
                    double.delete(Res::Services, "default", &format!("s{n}"));
                    double.delete(Res::EndpointSlices, "default", &format!("s{n}-x"));
                }
            },
        }
    }
}

/// One random change to the model: (Service, its new generation or `None` for a delete).
fn pick(model: &mut Model, next_gen: &mut u64, universe: u32) -> (u32, Option<u64>) {
    let n = fastrand::u32(0..universe);
    *next_gen += 1;
    if model.contains_key(&n) && fastrand::u8(0..3) == 0 {
        model.remove(&n);
        (n, None)
    } else {
        model.insert(n, *next_gen);
        (n, Some(*next_gen))
    }
}

/// One random change to the model and the source.
fn change(source: &Source, model: &mut Model, next_gen: &mut u64, universe: u32) {
    let (n, generation) = pick(model, next_gen, universe);
    source.apply(n, generation);
}

/// A few changes no watch sees, then history compacted: every watch of cloudcore's
/// Kubernetes source gets 410 Gone and must list again to learn them.
fn expire(double: &KubeDouble, model: &mut Model, next_gen: &mut u64, universe: u32) {
    double.expire(|gap: &mut Gap<'_>| {
        for _ in 0..20 {
            let (n, generation) = pick(model, next_gen, universe);
            match generation {
                Some(g) => {
                    gap.apply(Res::Services, service(n, g));
                    gap.apply(Res::EndpointSlices, slice(n, g));
                }
                None => {
                    gap.delete(Res::Services, "default", &format!("s{n}"));
                    gap.delete(Res::EndpointSlices, "default", &format!("s{n}-x"));
                }
            }
        }
    });
}

/// What an edge's store holds: Service and Endpoints generations by name.
fn held(db: &Path) -> (BTreeMap<u32, u64>, BTreeMap<u32, u64>) {
    let (mut services, mut endpoints) = (BTreeMap::new(), BTreeMap::new());
    if !db.exists() {
        return (services, endpoints);
    }
    for (key, value) in sqlite_rows(db) {
        if let Some(name) = key.strip_prefix("default/service/s") {
            let generation = value["metadata"]["annotations"]["gen"]
                .as_str()
                .and_then(|g| g.parse().ok())
                .unwrap_or(0);
            services.insert(name.parse().unwrap(), generation);
        } else if let Some(name) = key.strip_prefix("default/endpoints/s") {
            let generation = value["subsets"][0]["addresses"][0]["ip"]
                .as_str()
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .map_or(0, |ip| u64::from(u32::from(ip) & 0x00ff_ffff));
            endpoints.insert(name.parse().unwrap(), generation);
        }
    }
    (services, endpoints)
}

/// Waits until `db` holds exactly `model` (both kinds); returns how long it took.
async fn converged(db: &Path, model: &Model, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (services, endpoints) = held(db);
        if &services == model && &endpoints == model {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let gaps = |held: &BTreeMap<u32, u64>| {
                let missing = model.keys().filter(|k| !held.contains_key(k)).count();
                let extra = held.keys().filter(|k| !model.contains_key(k)).count();
                let stale = model
                    .iter()
                    .filter(|(k, g)| held.get(k).is_some_and(|h| h != *g))
                    .count();
                format!("{missing} missing, {extra} deleted but held, {stale} stale")
            };
            panic!(
                "{} not converged after {within:?}: Services {}, Endpoints {} (of {} at the source)",
                db.display(),
                gaps(&services),
                gaps(&endpoints),
                model.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Cloud {
    proc: Option<Proc>,
    config: PathBuf,
    dir: PathBuf,
    starts: u32,
}

impl Cloud {
    /// (Re)starts cloudcore and returns cloudhub's new address.
    async fn start(&mut self) -> std::net::SocketAddr {
        self.proc = None; // SIGKILL, when one runs
        self.starts += 1;
        let log = self.dir.join(format!("cloud-{}.log", self.starts));
        let proc = Proc::start(CLOUDCORE, &self.config, log);
        let addr = proc.logged_addr("cloudhub listening on ").await;
        self.proc = Some(proc);
        addr
    }
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"node-role.kubernetes.io/edge": ""}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_converge_on_the_folder_through_kills_and_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let config = cloud_yaml("127.0.0.1:0", &manifests, ", enable: false");
    converge(dir.path(), config, Source::Folder(manifests)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_converge_on_kubernetes_through_kills_cuts_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let double = KubeDouble::start(EDGES.iter().map(|n| (Res::Nodes, node(n))).collect()).await;
    let kubeconfig = dir.path().join("kubeconfig");
    double.write_kubeconfig(&kubeconfig);
    let config = format!(
        "health: {{address: \"127.0.0.1:0\"}}\n\
         modules:\n  cloudHub: {{address: \"127.0.0.1:0\", insecure: true, objectSyncDb: \"{}\"}}\n  \
         edgeController: {{source: kubernetes, kubernetes: {{kubeconfig: \"{}\"}}, versionsDb: \"{}\"}}\n  \
         edgeMesh: {{enable: false}}\n",
        dir.path().join("object-sync.db").display(),
        kubeconfig.display(),
        dir.path().join("versions.db").display()
    );
    converge(dir.path(), config, Source::Kube(double)).await;
}

/// Applies the changes at `source` through the faults, with cloudcore run from `config`,
/// and checks both edges' stores against the source.
async fn converge(dir: &Path, config: String, source: Source) {
    let changes: u32 = std::env::var("CONVERGENCE_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500);
    let universe = (changes / 4).max(100);
    let config_path = dir.join("cloud.yaml");
    std::fs::write(&config_path, config).unwrap();
    let mut cloud = Cloud {
        proc: None,
        config: config_path,
        dir: dir.to_owned(),
        starts: 0,
    };
    let hub = cloud.start().await;
    let mut edges = Vec::new();
    for node in EDGES {
        let cutter = Cutter::start(hub).await;
        let cfg = dir.join(format!("{node}.yaml"));
        std::fs::write(
            &cfg,
            edge_yaml(node, &cutter.addr.to_string(), dir, ", enable: false"),
        )
        .unwrap();
        let proc = Proc::start(EDGECORE, &cfg, dir.join(format!("{node}.log")));
        edges.push((node, cutter, proc, dir.join(format!("{node}.db"))));
    }

    let mut model = Model::new();
    let mut generation = 0u64;
    let (mut kills, mut cuts, mut compactions) = (0, 0, 0);
    let mut next_kill = Instant::now() + Duration::from_millis(700);
    for i in 0..changes {
        change(&source, &mut model, &mut generation, universe);
        if i % 50 == 49 {
            // Paced so the run lasts a while and faults land mid-sync.
            tokio::time::sleep(Duration::from_millis(60)).await;
            if fastrand::u8(0..4) == 0 {
                let (_, cutter, _, _) = &edges[fastrand::usize(0..edges.len())];
                cutter.cut();
                cuts += 1;
            }
            if let Source::Kube(double) = &source
                && fastrand::u8(0..8) == 0
            {
                expire(double, &mut model, &mut generation, universe);
                compactions += 1;
            }
        }
        if Instant::now() >= next_kill {
            let hub = cloud.start().await;
            for (_, cutter, _, _) in &edges {
                cutter.retarget(hub);
                cutter.cut();
            }
            kills += 1;
            next_kill = Instant::now() + Duration::from_millis(500 + fastrand::u64(0..1_000));
        }
    }
    eprintln!(
        "{changes} changes ({} Services left), cloudcore killed {kills} times, {cuts} link cuts, \
         {compactions} watch histories compacted",
        model.len()
    );
    for (node, _, _, db) in &edges {
        let took = converged(db, &model, Duration::from_secs(60)).await;
        eprintln!("{node} converged {took:?} after the last change");
    }

    // A node offline while 1,000 changes are made converges within 10 s of its return.
    let (node, cutter, proc, db) = edges.pop().unwrap();
    drop(proc);
    for _ in 0..1_000 {
        change(&source, &mut model, &mut generation, universe);
    }
    // edge-a follows meanwhile; edge-b is away.
    converged(&edges[0].3, &model, Duration::from_secs(60)).await;
    let cfg = dir.join(format!("{node}.yaml"));
    let back = Proc::start(EDGECORE, &cfg, dir.join(format!("{node}-back.log")));
    let took = converged(&db, &model, Duration::from_secs(10)).await;
    eprintln!("{node} back after 1,000 changes: converged in {took:?}");
    drop((back, cutter));
}
