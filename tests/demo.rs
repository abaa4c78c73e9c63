//! The README's run command: `edgemesh demo` as a user runs it. Its table shows every
//! request answered as the policies say, the printed `curl -x` works, and Ctrl-C (SIGINT)
//! stops everything cleanly and removes its temporary folder.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_where_requests_went_serves_curl_and_stops_on_ctrl_c() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_edgemesh"))
        .arg("demo")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = demo.id().unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line == "ready";
            out.push(line);
            if done {
                return;
            }
        }
        panic!("the demo ended early:\n{}", out.join("\n"));
    })
    .await
    .unwrap_or_else(|_| panic!("no table within 60 s"));
    let text = out.join("\n");
    let rows = |request: &str| -> Vec<&String> {
        out.iter()
            .filter(|l| l.starts_with(&format!("{request} ")))
            .collect()
    };
    // Columns are separated by at least two spaces: request, via, status, latency, answered by.
    let status = |row: &str| -> String {
        let fields: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        fields[2].to_owned()
    };

    let web = rows("GET http://web/");
    assert_eq!(web.len(), 6, "{text}");
    assert!(web.iter().all(|r| status(r) == "200"), "{text}");
    // Round robin over this node, the other edge (through the cloud) and the cloud.
    for path in ["this node", "edge-2 via the cloud", "the cloud"] {
        assert!(web.iter().any(|r| r.contains(path)), "{path}: {text}");
    }
    let sensor = rows("GET http://sensor/");
    assert!(
        status(sensor[0]) == "200" && sensor[0].contains("sensor-1 on edge-1"),
        "{text}"
    );
    let socks = rows("GET http://web.default.svc.cluster.local/");
    assert!(
        status(socks[0]) == "200" && socks[0].contains("web-"),
        "{text}"
    );
    let echo = rows("tcp echo:7");
    assert!(
        echo[0].contains("connected")
            && echo[0].contains("echo-1 on edge-2")
            && echo[0].contains("hello"),
        "{text}"
    );
    let limited: Vec<String> = rows("GET http://limited/")
        .iter()
        .map(|r| status(r))
        .collect();
    assert_eq!(limited, ["200", "429", "429"], "{text}");
    assert_eq!(status(rows("GET http://empty/")[0]), "503", "{text}");
    assert_eq!(status(rows("GET http://nosuch/")[0]), "503", "{text}");

    // The printed command works.
    let curl = out
        .iter()
        .find_map(|l| l.trim().strip_prefix("curl -x "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a curl -x line")
        .to_owned();
    let got = common::mesh::run(
        "curl",
        &["-s", "--max-time", "5", "-x", &curl, "http://web/x"],
    )
    .await;
    let body = String::from_utf8_lossy(&got.stdout);
    assert!(
        body.starts_with("web-") && body.contains("GET /x"),
        "{body}"
    );
    let folder = out
        .iter()
        .find_map(|l| l.split("manifests in ").nth(1))
        .map(|m| std::path::PathBuf::from(m.trim()))
        .expect("the manifest path")
        .ancestors()
        .nth(2)
        .unwrap()
        .to_owned();
    assert!(folder.exists());

    // Ctrl-C.
    let kill = common::mesh::run("kill", &["-INT", &pid.to_string()]).await;
    assert!(kill.status.success());
    let status = tokio::time::timeout(Duration::from_secs(20), demo.wait())
        .await
        .expect("the demo stops within 20 s")
        .unwrap();
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    assert!(status.success(), "{status:?}");
    assert_eq!(rest, ["stopping...", "stopped"]);
    assert!(!folder.exists(), "{} left behind", folder.display());
}
