//! Edge crash safety: edgecore killed with SIGKILL in the middle of a large sync (6,000
//! objects), and again in the middle of a wave of updates its proxy is watching. After each
//! kill the store opens, passes SQLite's integrity check, holds every object cloudhub saw
//! ACKed (an ACK is sent only after the commit), and after restart the resync completes it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::sqlite_rows;
use common::three::{Proc, cloud_yaml, edge_yaml};

const CLOUDCORE: &str = env!("CARGO_BIN_EXE_cloudcore");
const EDGECORE: &str = env!("CARGO_BIN_EXE_edgecore");
const SERVICES: u32 = 3_000;

fn manifest(n: u32, generation: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{n}\n  namespace: default\n  \
         annotations: {{gen: \"{generation}\"}}\nspec:\n  clusterIP: 10.98.{}.{}\n  \
         ports: [{{name: http, port: 80}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  \
         name: s{n}\n  namespace: default\nsubsets:\n- addresses: [{{ip: 10.2.0.1}}]\n  \
         ports: [{{name: http, port: 8080}}]\n",
        n / 250,
        n % 250 + 1
    )
}

/// Writes every Service at `generation`, ten files.
fn write_all(dir: &Path, generation: u32) {
    for file in 0..10 {
        let text: Vec<String> = (0..SERVICES)
            .filter(|n| n % 10 == file)
            .map(|n| manifest(n, generation))
            .collect();
        let tmp = dir.join(format!(".f{file}.tmp"));
        std::fs::write(&tmp, text.join("---\n")).unwrap();
        std::fs::rename(&tmp, dir.join(format!("f{file}.yaml"))).unwrap();
    }
}

/// Rows of the edge's store, and SQLite's own verdict on the file.
fn store(db: &Path) -> (BTreeSet<String>, String) {
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys;print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .unwrap();
    let verdict = String::from_utf8_lossy(&check.stdout).trim().to_owned();
    let keys = sqlite_rows(db).into_iter().map(|(k, _)| k).collect();
    (keys, verdict)
}

async fn until(what: &str, cond: impl FnMut() -> bool) {
    until_else(what, cond, String::new).await
}

/// [`until`], with `report` saying what stands when the wait fails.
async fn until_else(what: &str, mut cond: impl FnMut() -> bool, report: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lines of `proc`'s log about the link, the resync and trouble: what a failed wait
/// needs to be understood.
fn story(name: &str, proc: &Proc) -> String {
    let lines: Vec<String> = proc
        .text()
        .lines()
        .filter(|l| !l.contains("ACKed") && !l.contains("insecure"))
        .filter(|l| {
            ["connect", "resync", "reported", "link", "WARN", "ERROR"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(str::to_owned)
        .collect();
    let tail = &lines[lines.len().saturating_sub(25)..];
    format!("--- {name} ({} lines)\n{}\n", lines.len(), tail.join("\n"))
}

/// The resourceVersion of a stored object, from its JSON.
fn version(value: &serde_json::Value) -> Option<u64> {
    value["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

/// Kills the edge, then checks its store against what cloudhub saw ACKed: every object
/// ACKed is there at the version ACKed or a newer one. (Comparing versions, not counts,
/// keeps the check true while ACKs of an earlier wave are still arriving.)
fn kill_and_check(edge: Proc, cloud: &Proc, db: &Path) -> usize {
    drop(edge); // SIGKILL
    let acked = cloud.acked("edge-a");
    let (_, verdict) = store(db);
    assert_eq!(verdict, "ok", "integrity check");
    let rows: std::collections::BTreeMap<String, serde_json::Value> =
        sqlite_rows(db).into_iter().collect();
    let behind: Vec<String> = acked
        .iter()
        .filter(|(key, rv)| {
            rows.get(key)
                .and_then(version)
                .is_none_or(|held| held < *rv)
        })
        .map(|(key, rv)| {
            let held = rows.get(key).and_then(version);
            format!("{key} ACKed at {rv}, held at {held:?}")
        })
        .collect();
    assert!(
        behind.is_empty(),
        "{} ACKed object(s) missing or older after the kill, e.g. {:?}",
        behind.len(),
        &behind[..behind.len().min(5)]
    );
    eprintln!(
        "killed with {} rows, {} ACKed: every ACKed one present",
        rows.len(),
        acked.len()
    );
    rows.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edge_keeps_every_acked_object_and_resync_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    write_all(&manifests, 1);
    let cfg = dir.path().join("cloud.yaml");
    std::fs::write(
        &cfg,
        cloud_yaml("127.0.0.1:0", &manifests, ", enable: false"),
    )
    .unwrap();
    let log = dir.path().join("cloud.log");
    let cloud = {
        // cloudhub names each ACK at debug.
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(CLOUDCORE)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info,cloudhub::hub=debug")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc {
            process: common::Process(child),
            log,
        }
    };
    let hub = cloud.logged_addr("cloudhub listening on ").await;
    let edge_cfg = dir.path().join("edge-a.yaml");
    std::fs::write(
        &edge_cfg,
        edge_yaml("edge-a", &hub.to_string(), dir.path(), ""),
    )
    .unwrap();
    let db = dir.path().join("edge-a.db");
    let start = |n: u32| {
        Proc::start(
            EDGECORE,
            &edge_cfg,
            dir.path().join(format!("edge-{n}.log")),
        )
    };
    let all = 2 * SERVICES as usize;

    // Killed mid-sync: once some objects are ACKed, long before all are.
    let edge = start(1);
    until("part of the sync ACKed", || {
        cloud.acked("edge-a").len() >= 500
    })
    .await;
    let held = kill_and_check(edge, &cloud, &db);
    assert!(
        held < all,
        "the kill came after the whole sync ({held} rows)"
    );

    // Restarted: resync completes it.
    let edge = start(2);
    until("the whole sync", || store(&db).0.len() == all).await;

    // Killed while a wave of updates fans out to the proxy's watch.
    let first = sqlite_rows(&db)
        .iter()
        .filter_map(|(_, v)| version(v))
        .max()
        .expect("versions stored");
    write_all(&manifests, 2);
    until("part of the updates ACKed", || {
        let acked = cloud.acked("edge-a");
        acked.iter().filter(|(_, rv)| *rv > first).count() >= 300
    })
    .await;
    kill_and_check(edge, &cloud, &db);
    let edge = start(3);
    let behind = || -> (usize, Vec<String>) {
        let rows = sqlite_rows(&db);
        let old = rows
            .iter()
            .filter(|(k, v)| k.contains("/service/") && v["metadata"]["annotations"]["gen"] != "2")
            .map(|(k, _)| k.clone())
            .collect();
        (rows.len(), old)
    };
    until_else(
        "every object at its new version",
        || {
            let (rows, old) = behind();
            rows == all && old.is_empty()
        },
        || {
            let (rows, old) = behind();
            format!(
                "{rows} rows of {all}; {} Service(s) not at generation 2, e.g. {:?}\n{}{}",
                old.len(),
                &old[..old.len().min(3)],
                story("cloudcore", &cloud),
                story("edgecore", &edge)
            )
        },
    )
    .await;
}
