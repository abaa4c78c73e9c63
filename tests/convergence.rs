//! Convergence under faults: Services and Endpoints are added, updated and deleted in the
//! manifest folder while cloudcore is killed with SIGKILL and restarted every few seconds
//! and the edges' links are cut at random (a relay in front of cloudhub). At the end every
//! edge's SQLite holds exactly the folder: nothing missing, nothing stale, nothing deleted
//! brought back. Then a node that was offline while 1,000 changes were made converges
//! within 10 s of its return.
//!
//! `CONVERGENCE_CHANGES=10000 cargo test --test convergence -- --nocapture` runs
//! the long variant; CI runs the short one.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cutter::Cutter;
use common::sqlite_rows;
use common::three::{Proc, cloud_yaml, edge_yaml};

const CLOUDCORE: &str = env!("CARGO_BIN_EXE_cloudcore");
const EDGECORE: &str = env!("CARGO_BIN_EXE_edgecore");

/// The folder's truth: Service name → its generation (an annotation on both objects).
type Model = BTreeMap<u32, u64>;

fn manifest(n: u32, generation: u64) -> String {
    let ip = format!("10.97.{}.{}", n / 250, n % 250 + 1);
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{n}\n  namespace: default\n  \
         annotations: {{gen: \"{generation}\"}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80}}]\n\
         ---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  name: s{n}\n  namespace: default\n  \
         annotations: {{gen: \"{generation}\"}}\nsubsets:\n- addresses: [{{ip: 10.1.0.{}}}]\n  \
         ports: [{{name: http, port: 8080}}]\n",
        n % 250 + 1
    )
}

/// Writes (atomically: a rename) or removes Service `n`'s file.
fn apply(dir: &Path, n: u32, generation: Option<u64>) {
    let path = dir.join(format!("s{n}.yaml"));
    match generation {
        Some(g) => {
            let tmp = dir.join(format!(".s{n}.tmp"));
            std::fs::write(&tmp, manifest(n, g)).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        None => {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// One random change to the model and the folder.
fn change(dir: &Path, model: &mut Model, next_gen: &mut u64, universe: u32) {
    let n = fastrand::u32(0..universe);
    *next_gen += 1;
    if model.contains_key(&n) && fastrand::u8(0..3) == 0 {
        model.remove(&n);
        apply(dir, n, None);
    } else {
        model.insert(n, *next_gen);
        apply(dir, n, Some(*next_gen));
    }
}

/// What an edge's store holds: Service and Endpoints generations by name.
fn held(db: &Path) -> (BTreeMap<u32, u64>, BTreeMap<u32, u64>) {
    let (mut services, mut endpoints) = (BTreeMap::new(), BTreeMap::new());
    if !db.exists() {
        return (services, endpoints);
    }
    for (key, value) in sqlite_rows(db) {
        let generation = value["metadata"]["annotations"]["gen"]
            .as_str()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        if let Some(name) = key.strip_prefix("default/service/s") {
            services.insert(name.parse().unwrap(), generation);
        } else if let Some(name) = key.strip_prefix("default/endpoints/s") {
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
            let missing = model.keys().filter(|k| !services.contains_key(k)).count();
            let extra = services.keys().filter(|k| !model.contains_key(k)).count();
            let stale = model
                .iter()
                .filter(|(k, g)| services.get(k).is_some_and(|h| h != *g))
                .count();
            panic!(
                "{} not converged after {within:?}: {missing} missing, {extra} deleted but held, \
                 {stale} stale (of {} in the folder)",
                db.display(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_converge_on_the_folder_through_kills_and_cuts() {
    let changes: u32 = std::env::var("CONVERGENCE_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500);
    let universe = (changes / 4).max(100);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let config = dir.path().join("cloud.yaml");
    std::fs::write(
        &config,
        cloud_yaml("127.0.0.1:0", &manifests, ", enable: false"),
    )
    .unwrap();
    let mut cloud = Cloud {
        proc: None,
        config,
        dir: dir.path().to_owned(),
        starts: 0,
    };
    let hub = cloud.start().await;
    let mut edges = Vec::new();
    for node in ["edge-a", "edge-b"] {
        let cutter = Cutter::start(hub).await;
        let cfg = dir.path().join(format!("{node}.yaml"));
        std::fs::write(
            &cfg,
            edge_yaml(
                node,
                &cutter.addr.to_string(),
                dir.path(),
                ", enable: false",
            ),
        )
        .unwrap();
        let proc = Proc::start(EDGECORE, &cfg, dir.path().join(format!("{node}.log")));
        edges.push((node, cutter, proc, dir.path().join(format!("{node}.db"))));
    }

    let mut model = Model::new();
    let mut generation = 0u64;
    let (mut kills, mut cuts) = (0, 0);
    let mut next_kill = Instant::now() + Duration::from_millis(700);
    for i in 0..changes {
        change(&manifests, &mut model, &mut generation, universe);
        if i % 50 == 49 {
            // Paced so the run lasts a while and faults land mid-sync.
            tokio::time::sleep(Duration::from_millis(60)).await;
            if fastrand::u8(0..4) == 0 {
                let (_, cutter, _, _) = &edges[fastrand::usize(0..edges.len())];
                cutter.cut();
                cuts += 1;
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
        "{changes} changes ({} Services left), cloudcore killed {kills} times, {cuts} link cuts",
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
        change(&manifests, &mut model, &mut generation, universe);
    }
    // edge-a follows meanwhile; edge-b is away.
    converged(&edges[0].3, &model, Duration::from_secs(60)).await;
    let cfg = dir.path().join(format!("{node}.yaml"));
    let back = Proc::start(EDGECORE, &cfg, dir.path().join(format!("{node}-back.log")));
    let took = converged(&db, &model, Duration::from_secs(10)).await;
    eprintln!("{node} back after 1,000 changes: converged in {took:?}");
    drop((back, cutter));
}
