//! Graceful drain of edgecore's edgemesh on SIGTERM, with real iptables inside a network
//! namespace the test creates: `/readyz` turns not ready, the EDGE-MESH rules go, the
//! listeners close, an idle keep-alive connection is closed at once, a request in flight
//! finishes (200, the whole body, `connection: close`) and the process exits 0; with a
//! short `drainTimeoutMs`, what is still open at the deadline (a slow response, an opaque
//! relay) is cut and the process still exits 0. Needs root, as CI has.

mod common;

use common::Process;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use bytes::Bytes;
use common::netns::{Netns, is_root};
use common::{WAIT, eventually};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Bytes of the slow response's body: more than one socket buffer, so it is copied in
/// several reads.
const BODY: usize = 256 * 1024;

impl Process {
    /// Its exit status, once it has exited (awaited with the usual deadline).
    async fn exited(&mut self, what: &str) -> ExitStatus {
        let mut status = None;
        eventually(what, || {
            status = status.or_else(|| self.0.try_wait().unwrap());
            let done = status.is_some();
            async move { done }
        })
        .await;
        status.unwrap()
    }
}

/// An HTTP backend on `ip`: `/slow` answers [`BODY`] bytes only once `release` turns true
/// (each arrival is reported on `arrived` first); anything else answers at once.
async fn slow_backend(
    ip: &str,
    release: watch::Receiver<bool>,
    arrived: mpsc::UnboundedSender<String>,
) -> SocketAddr {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let release = release.clone();
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut release = release.clone();
                    let arrived = arrived.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let _ = arrived.send(path.clone());
                        if path == "/slow" {
                            // A closed sender (test over) answers at once.
                            let _ = release.wait_for(|go| *go).await;
                            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                vec![b'x'; BODY],
                            ))));
                        }
                        Ok(Response::new(Full::new(Bytes::from_static(b"fast\n"))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A TCP echo server on `ip`.
async fn echo_backend(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn service(name: &str, ip: &str, port: u16, app_protocol: Option<&str>) -> Value {
    let mut svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "main", "port": port, "protocol": "TCP"}]}});
    if let Some(p) = app_protocol {
        svc["spec"]["ports"][0]["appProtocol"] = json!(p);
    }
    svc
}

/// Starts an edgecore (metamanager + edgemesh, no cloud link) inside `ns` on `db`, with
/// `drain_ms` of drain and a grace period longer than it.
fn start_edgecore(ns: &Netns, dir: &Path, db: &Path, drain_ms: u64) -> Process {
    let top = format!("beehive: {{gracePeriodMs: {}}}\n", drain_ms + 30_000);
    let mesh = format!(", drainTimeoutMs: {drain_ms}");
    common::mesh::edgecore_in(ns, dir, db, &top, &mesh)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rules in our chain inside `ns`; `None` when the chain is gone.
fn rules(ns: &Netns) -> Option<usize> {
    let out = ns.output(&["iptables", "-t", "nat", "-S", "EDGE-MESH"]);
    out.status
        .success()
        .then(|| stdout(&out).lines().filter(|l| l.starts_with("-A")).count())
}

/// True while OUTPUT or PREROUTING jumps to our chain: connections are redirected to
/// edgemesh. (The chain itself stays until the drain ends, so the connections already
/// redirected keep their address translation: see `iptables::unhook`.)
fn hooked(ns: &Netns) -> bool {
    ["OUTPUT", "PREROUTING"].iter().any(|hook| {
        stdout(&ns.output(&["iptables", "-t", "nat", "-S", hook])).contains("EDGE-MESH")
    })
}

/// `/readyz` inside `ns`: its status code and body.
fn readyz(ns: &Netns) -> (String, String) {
    let out = stdout(&ns.output(&[
        "curl",
        "-s",
        "--max-time",
        "5",
        "-w",
        "\n%{http_code}",
        "http://127.0.0.1:10350/readyz",
    ]));
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.to_owned(), body.to_owned())
}

/// Waits until every service port is redirected and `/readyz` says ready.
async fn ready(ns: &Netns, ports: usize) {
    eventually("the rules", || {
        let n = rules(ns);
        async move { n == Some(ports) }
    })
    .await;
    eventually("/readyz ready", || {
        let (code, _) = readyz(ns);
        async move { code == "200" }
    })
    .await;
}

/// Sends SIGTERM to `process`.
fn terminate(process: &Process) {
    let pid = process.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A file's text, empty while it does not exist.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Awaits a line `line` in the file at `path`.
async fn line_in(path: &Path, line: &str) {
    eventually(&format!("{line:?} in {}", path.display()), || {
        let found = read(path).lines().any(|l| l == line);
        async move { found }
    })
    .await;
}

/// A curl of `url` inside `ns` (with `args`) started in the background, writing the
/// response headers, body and status code to files in `dir` named after `name`.
struct Curl {
    process: Process,
    headers: PathBuf,
    body: PathBuf,
    code: PathBuf,
}

fn curl_in_background(ns: &Netns, dir: &Path, name: &str, args: &[&str], url: &str) -> Curl {
    let headers = dir.join(format!("{name}.headers"));
    let body = dir.join(format!("{name}.body"));
    let code = dir.join(format!("{name}.code"));
    let process = Process(
        ns.command("curl")
            .args(["-s", "--max-time", "60", "-w", "%{http_code}"])
            .args(args)
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&code).unwrap())
            .spawn()
            .unwrap(),
    );
    Curl {
        process,
        headers,
        body,
        code,
    }
}

/// Awaits `n` arrivals of `/slow` at the backend.
async fn slow_arrivals(arrived: &mut mpsc::UnboundedReceiver<String>, n: usize) {
    let mut seen = 0;
    while seen < n {
        let path = tokio::time::timeout(WAIT, arrived.recv())
            .await
            .expect("the slow requests reach the backend")
            .unwrap();
        seen += usize::from(path == "/slow");
    }
}

/// A python3 client inside `ns` running `script`, its stdin piped, its output in `out`.
fn python(ns: &Netns, script: &str, out: &Path) -> Process {
    Process(
        ns.command("python3")
            .args(["-u", "-c", script])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Sends one request on a keep-alive connection, says `answered` once the whole response
/// is in, then `closed` when the proxy closes the connection.
const KEEP_ALIVE_CLIENT: &str = "import socket\n\
s=socket.create_connection(('10.96.20.10',80))\n\
s.sendall(b'GET /fast HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n')\n\
got=b''\n\
while b'\\r\\n\\r\\n' not in got: got+=s.recv(4096)\n\
head,_,body=got.partition(b'\\r\\n\\r\\n')\n\
n=[int(l.split(b':')[1]) for l in head.split(b'\\r\\n') if l.lower().startswith(b'content-length')][0]\n\
while len(body)<n: body+=s.recv(4096)\n\
print('answered')\n\
try:\n    rest=s.recv(1)\nexcept OSError:\n    rest=b''\n\
print('closed' if rest==b'' else 'more')\n";

/// Echoes once, waits for a line on stdin, echoes again (`echo1`, `echo2`), then says
/// `closed` when the relay is closed.
const OPAQUE_CLIENT: &str = "import socket,sys\n\
s=socket.create_connection(('10.96.21.11',9000))\n\
def echo(m):\n    s.sendall(m)\n    got=b''\n    while len(got)<len(m): got+=s.recv(64)\n    return got==m\n\
print('echo1' if echo(b'ping1') else 'bad1')\n\
sys.stdin.readline()\n\
print('echo2' if echo(b'ping2') else 'bad2')\n\
try:\n    rest=s.recv(1)\nexcept OSError:\n    rest=b''\n\
print('closed' if rest==b'' else 'more')\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_request_in_flight_after_the_rules_and_listeners_are_gone() {
    assert!(
        is_root(),
        "this test needs root for namespaces and iptables (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    let (release, released) = watch::channel(false);
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let backend = slow_backend(&ns.host_ip, released, arrived_tx).await;
    let db = dir.path().join("edge.db");
    common::mesh::store(
        &db,
        &[
            (
                "default/service/web",
                service("web", "10.96.20.10", 80, None),
            ),
            (
                "default/endpoints/web",
                common::mesh::endpoints_on("web", &[backend], "edge-t"),
            ),
        ],
    )
    .await;
    // A deadline far beyond the test: the drain must end because the work is done.
    let mut edgecore = start_edgecore(&ns, dir.path(), &db, 120_000);
    ready(&ns, 1).await;

    // An idle keep-alive connection, and a request in flight at the backend.
    let idle_out = dir.path().join("idle.out");
    let _idle = python(&ns, KEEP_ALIVE_CLIENT, &idle_out);
    line_in(&idle_out, "answered").await;
    // Two requests in flight: one on the HTTP/1 fast path, one over h2c (hyper's path).
    let mut slow = curl_in_background(&ns, dir.path(), "h1", &[], "http://10.96.20.10/slow");
    let mut slow_h2 = curl_in_background(
        &ns,
        dir.path(),
        "h2",
        &["--http2-prior-knowledge"],
        "http://10.96.20.10/slow",
    );
    slow_arrivals(&mut arrived, 2).await;

    terminate(&edgecore);
    eventually("/readyz not ready", || {
        let (code, body) = readyz(&ns);
        async move { code == "503" && body.contains("not ready") && body.contains("draining") }
    })
    .await;
    // The idle connection is closed without waiting for the one in flight.
    line_in(&idle_out, "closed").await;
    eventually("no jump to EDGE-MESH", || {
        let gone = !hooked(&ns);
        async move { gone }
    })
    .await;
    // Then the listener closes (curl exit 7: connection refused).
    eventually("the listener closed", || {
        let refused = ns
            .output(&["curl", "-s", "--max-time", "5", "http://127.0.0.1:40001/"])
            .status
            .code()
            == Some(7);
        async move { refused }
    })
    .await;
    assert!(
        edgecore.0.try_wait().unwrap().is_none(),
        "edgecore must wait for the request in flight"
    );

    release.send(true).unwrap();
    let status = slow.process.exited("the slow request to finish").await;
    assert!(status.success(), "curl: {status}");
    assert_eq!(read(&slow.code), "200");
    assert_eq!(std::fs::metadata(&slow.body).unwrap().len(), BODY as u64);
    let headers = read(&slow.headers).to_ascii_lowercase();
    assert!(headers.contains("connection: close"), "{headers}");
    let status = slow_h2
        .process
        .exited("the slow h2c request to finish")
        .await;
    assert!(status.success(), "curl --http2-prior-knowledge: {status}");
    assert_eq!(read(&slow_h2.code), "200");
    assert_eq!(std::fs::metadata(&slow_h2.body).unwrap().len(), BODY as u64);

    let status = edgecore.exited("edgecore to exit").await;
    let log = read(&dir.path().join("edgecore.log"));
    assert!(status.success(), "edgecore exit {status}: {log}");
    assert!(log.contains("edgemesh drained"), "{log}");
    assert!(log.contains("abandoned: []"), "{log}");
    assert!(rules(&ns).is_none(), "the chain outlived the process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_still_open_at_the_drain_deadline_is_cut() {
    assert!(
        is_root(),
        "this test needs root for namespaces and iptables (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    // Never released: the slow response outlasts any deadline.
    let (_release, released) = watch::channel(false);
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let slow_addr = slow_backend(&ns.host_ip, released, arrived_tx).await;
    let echo_addr = echo_backend(&ns.host_ip).await;
    let db = dir.path().join("edge.db");
    common::mesh::store(
        &db,
        &[
            (
                "default/service/web",
                service("web", "10.96.21.10", 80, None),
            ),
            (
                "default/endpoints/web",
                common::mesh::endpoints_on("web", &[slow_addr], "edge-t"),
            ),
            (
                "default/service/raw",
                service("raw", "10.96.21.11", 9000, Some("tcp")),
            ),
            (
                "default/endpoints/raw",
                common::mesh::endpoints_on("raw", &[echo_addr], "edge-t"),
            ),
        ],
    )
    .await;
    let mut edgecore = start_edgecore(&ns, dir.path(), &db, 4_000);
    ready(&ns, 2).await;

    let relay_out = dir.path().join("relay.out");
    let mut relay = python(&ns, OPAQUE_CLIENT, &relay_out);
    line_in(&relay_out, "echo1").await;
    let mut slow = curl_in_background(&ns, dir.path(), "h1", &[], "http://10.96.21.10/slow");
    slow_arrivals(&mut arrived, 1).await;

    terminate(&edgecore);
    eventually("/readyz not ready", || {
        let (code, _) = readyz(&ns);
        async move { code == "503" }
    })
    .await;
    // The opaque relay still carries bytes while the drain runs...
    let mut stdin = relay.0.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    line_in(&relay_out, "echo2").await;
    // ... until the deadline cuts it, and the slow response with it.
    line_in(&relay_out, "closed").await;
    let status = slow.process.exited("the slow request to be cut").await;
    assert!(!status.success(), "curl: {status}");
    assert_ne!(read(&slow.code), "200");

    let status = edgecore.exited("edgecore to exit").await;
    let log = read(&dir.path().join("edgecore.log"));
    assert!(status.success(), "edgecore exit {status}: {log}");
    assert!(log.contains("still open after"), "{log}");
    assert!(log.contains("abandoned: []"), "{log}");
    assert!(rules(&ns).is_none(), "the chain outlived the process");
}
