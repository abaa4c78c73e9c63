//! Edge crash safety with the disk full: edgecore's SQLite file lives on a small tmpfs that a
//! filler file has nearly filled, and the cloud sends 2,000 objects. The edge keeps running,
//! ACKs nothing it has not committed, says why once in its log and on `/readyz`; when the
//! filler goes, every object arrives without a restart (cloudhub keeps resending what is
//! unACKed) and `/readyz` is ready again. Needs root for the mount; skipped otherwise.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::is_root;
use common::sqlite_rows;
use common::three::{Proc, cloud_yaml, edge_yaml};

const CLOUDCORE: &str = env!("CARGO_BIN_EXE_cloudcore");
const EDGECORE: &str = env!("CARGO_BIN_EXE_edgecore");
const SERVICES: u32 = 1_000;
/// Room left beside the filler: enough to create the store and commit its first objects,
/// far from enough for all of them.
const HEADROOM: u64 = 192 * 1024;
/// The longest a phase may take (a debug build on a shared machine syncs slowly).
const PHASE: Duration = Duration::from_secs(90);

/// A tmpfs mounted on a folder, unmounted however the test ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it, or says why it could not (a container without the right to mount).
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there cannot keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` with a file there until writes fail for want of
/// space, then gives back `headroom` bytes of it.
fn fill(path: &Path, headroom: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(headroom)).unwrap();
    file.sync_all().unwrap();
}

fn manifest(n: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{n}\n  namespace: default\n\
         spec:\n  clusterIP: 10.98.{}.{}\n  ports: [{{name: http, port: 80}}]\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: s{n}\n  namespace: default\n\
         subsets:\n- addresses: [{{ip: 10.2.0.1}}]\n  ports: [{{name: http, port: 8080}}]\n",
        n / 250,
        n % 250 + 1
    )
}

/// Every Service and its Endpoints, ten files.
fn write_manifests(dir: &Path) {
    for file in 0..10 {
        let text: Vec<String> = (0..SERVICES)
            .filter(|n| n % 10 == file)
            .map(manifest)
            .collect();
        std::fs::write(dir.join(format!("f{file}.yaml")), text.join("---\n")).unwrap();
    }
}

fn expected_keys() -> BTreeSet<String> {
    (0..SERVICES)
        .flat_map(|n| {
            [
                format!("default/service/s{n}"),
                format!("default/endpoints/s{n}"),
            ]
        })
        .collect()
}

fn stored(db: &Path) -> BTreeSet<String> {
    sqlite_rows(db).into_iter().map(|(k, _)| k).collect()
}

/// Every key cloudhub saw ACKed is a row in the store.
fn every_ack_is_stored(cloud: &Proc, db: &Path) -> (usize, usize) {
    let acked: Vec<String> = cloud.acked("edge-a").into_iter().map(|(k, _)| k).collect();
    let held = stored(db);
    let lost: Vec<&String> = acked.iter().filter(|k| !held.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} object(s) ACKed but not in the store, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    (acked.len(), held.len())
}

/// `/readyz`: status code and body.
fn readyz(addr: SocketAddr) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (code, body)
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PHASE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// edgecore's error lines about its store.
fn store_errors(edge: &Proc) -> Vec<String> {
    edge.text()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("cannot commit"))
        .map(str::to_owned)
        .collect()
}

/// Transactions the store worker could not commit.
fn refused(edge: &Proc) -> usize {
    edge.text().matches("not committed, none ACKed").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_acks_nothing_uncommitted_and_recovers_without_a_restart() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    // 16 MiB: past its 1,000 pages SQLite checkpoints the WAL, so with room the store needs
    // about 4 MiB of WAL beside a 1 MiB database.
    let _tmpfs = match Tmpfs::mount(&store_dir, "16m") {
        Ok(mount) => mount,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs: {why}");
            return;
        }
    };
    let filler = store_dir.join("filler");
    fill(&filler, HEADROOM);
    let db = store_dir.join("edge-a.db");

    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    write_manifests(&manifests);
    let plain = cloud_yaml("127.0.0.1:0", &manifests, ", enable: false");
    // Short ACK timeouts so resends come every 800 ms once they stop doubling.
    let cloud_cfg = plain.replace(
        "cloudHub: {address: \"127.0.0.1:0\", insecure: true",
        "cloudHub: {address: \"127.0.0.1:0\", insecure: true, ackTimeoutMs: 200, maxResends: 2",
    );
    assert_ne!(cloud_cfg, plain, "cloud_yaml changed shape");
    let cfg = dir.path().join("cloud.yaml");
    std::fs::write(&cfg, cloud_cfg).unwrap();
    let log = dir.path().join("cloud.log");
    let cloud = {
        // cloudhub names each ACK, and resends past the doublings, at debug.
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(CLOUDCORE)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info,cloudhub::hub=debug,cloudhub::queue=debug")
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

    // The store on the tmpfs, the socket and the log beside it.
    let plain = edge_yaml("edge-a", &hub.to_string(), dir.path(), "");
    let edge_cfg_text = plain.replace(
        &format!("{}/edge-a.db", dir.path().display()),
        &db.display().to_string(),
    );
    assert_ne!(edge_cfg_text, plain, "edge_yaml changed shape");
    let edge_cfg = dir.path().join("edge-a.yaml");
    std::fs::write(&edge_cfg, edge_cfg_text).unwrap();
    let edge_log = dir.path().join("edge.log");
    let edge = {
        // The store worker names each transaction it could not commit at debug.
        let file = std::fs::File::create(&edge_log).unwrap();
        let child = Command::new(EDGECORE)
            .arg("--config")
            .arg(&edge_cfg)
            .env("RUST_LOG", "info,metamanager::store=debug")
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc {
            process: common::Process(child),
            log: edge_log,
        }
    };
    let mut edge = edge;
    let health = edge.logged_addr("/metrics on http://").await;
    let started = Instant::now();

    // Full: one clear error, and /readyz names the store and the reason.
    until("the store's error in the log", || {
        !store_errors(&edge).is_empty()
    })
    .await;
    let first = store_errors(&edge).remove(0);
    assert!(
        first.contains(&db.display().to_string()) && first.contains("disk full"),
        "{first}"
    );
    let mut body = String::new();
    until("/readyz not ready for the store", || {
        let (code, text) = readyz(health);
        body = text;
        code == 503 && body.contains("[-] metadata store:")
    })
    .await;
    let line = body
        .lines()
        .find(|l| l.starts_with("[-] metadata store:"))
        .unwrap();
    assert!(
        line.contains(&db.display().to_string()) && line.contains("disk full"),
        "{body}"
    );
    // Stay full until cloudhub resends at its ceiling and the store has refused many
    // transactions (200), so the log is seen over many refusals.
    until("resends past their doublings", || {
        cloud.text().contains("resends: resending every")
    })
    .await;
    until("200 transactions refused", || refused(&edge) >= 200).await;
    let (acked_full, held_full) = every_ack_is_stored(&cloud, &db);
    let all = expected_keys();
    assert!(
        held_full < all.len(),
        "the store took everything ({held_full} rows): the disk was not full"
    );
    assert!(
        edge.process.0.try_wait().unwrap().is_none(),
        "edgecore exited"
    );
    let errors = store_errors(&edge).len();
    // At most one line a minute (plus the first), never one per object refused.
    let allowed = 1 + started.elapsed().as_secs() / 60;
    assert!(
        errors as u64 <= allowed,
        "{errors} store errors logged in {:?}:\n{}",
        started.elapsed(),
        store_errors(&edge).join("\n")
    );
    eprintln!(
        "full: {held_full} rows stored, {acked_full} ACKs, all stored; {} transactions refused, \
         {errors} error line(s) in {:.1}s; /readyz: {line}",
        refused(&edge),
        started.elapsed().as_secs_f64()
    );

    // Room again: everything arrives without a restart, and /readyz is ready.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    until("every object in the store", || stored(&db) == all).await;
    let synced = freed.elapsed();
    until("/readyz ready", || readyz(health).0 == 200).await;
    assert!(
        edge.process.0.try_wait().unwrap().is_none(),
        "edgecore exited"
    );
    assert!(
        edge.text().contains("metadata store commits again"),
        "no recovery line in the log"
    );
    let rows = sqlite_rows(&db);
    for (key, value) in &rows {
        if let Some(name) = key.strip_prefix("default/service/s") {
            let n: u32 = name.parse().unwrap();
            let ip = format!("10.98.{}.{}", n / 250, n % 250 + 1);
            assert_eq!(value["spec"]["clusterIP"], ip.as_str(), "{key}");
        }
    }
    let (acked_end, held_end) = every_ack_is_stored(&cloud, &db);
    eprintln!(
        "room again: all {held_end} objects stored {:.1}s after the filler went, {acked_end} ACKs in all, each stored",
        synced.as_secs_f64()
    );
}
