//! HTTP/1 forwarder conformance: what a client gets from the proxy AND what reached the
//! backend, for valid, malformed and hostile requests and responses. Each test runs an
//! edgecore process in a network namespace of its own with real iptables (as in
//! tests/mesh_netns.rs); one Service whose one endpoint is a raw logging backend
//! (tests/common/raw_backend.rs) on the host end of the veth.
//!
//! The client is raw TCP: the test connects (host side) to a small python3 relay running
//! inside the namespace, names the ClusterIP, and from then on its bytes and its closes are
//! the relay's, on a connection the namespace's iptables intercept. That keeps the exact
//! bytes and the half-closes under the test's control without entering the namespace
//! from this process (which would need unsafe code).
//!
//! Every vector is checked and reported by name; a test fails at its end listing every
//! vector that did not hold (run with `--nocapture` to see the passes too).

mod common;

use common::Process;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use common::WAIT;
use common::netns::{Netns, is_root};
use common::raw_backend::{Closed, Framing, Options, RawBackend, Request};
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The `modules.edgeMesh` keys of the strict forwarder, in one place so they are easy to
/// adjust: a 16 KiB request-head limit (431 beyond) and 1 s for a started head (408
/// after).
const STRICT_KEYS: &str = "maxHeadBytes: 16384, headTimeoutMs: 1000";

/// The Service under test.
const VIP: &str = "10.96.30.10";
/// Its name as metrics label it.
const SERVICE: &str = "default/web";
/// How long any one response, close or backend event may take before the vector fails.
const WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The verdicts.

/// Checks collected by vector name, so one failing vector does not hide the others.
struct Report {
    test: &'static str,
    results: Mutex<Vec<(String, Option<String>)>>,
}

impl Report {
    fn new(test: &'static str) -> Report {
        Report {
            test,
            results: Mutex::default(),
        }
    }

    /// Records that `vector` held `ok`, or failed with `detail`.
    fn check(&self, vector: &str, ok: bool, detail: impl FnOnce() -> String) {
        let failure = (!ok).then(detail);
        self.results
            .lock()
            .unwrap()
            .push((vector.to_owned(), failure));
    }

    /// Records a failure of `vector`.
    fn fail(&self, vector: &str, detail: String) {
        self.check(vector, false, || detail);
    }

    /// The value of `result`, or `None` after recording its error against `vector`.
    fn ok<T>(&self, vector: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(vector, e);
                None
            }
        }
    }

    /// Prints every vector's verdict and fails the test if any vector failed.
    fn finish(self) {
        let results = self.results.into_inner().unwrap();
        let mut order: Vec<&str> = Vec::new();
        for (v, _) in &results {
            if !order.contains(&v.as_str()) {
                order.push(v);
            }
        }
        let mut failed = Vec::new();
        for v in order {
            let failures: Vec<&String> = results
                .iter()
                .filter(|(name, f)| name == v && f.is_some())
                .filter_map(|(_, f)| f.as_ref())
                .collect();
            if failures.is_empty() {
                eprintln!("{}: PASS {v}", self.test);
            } else {
                eprintln!("{}: FAIL {v}", self.test);
                for f in &failures {
                    eprintln!("    {f}");
                }
                failed.push(format!(
                    "{v}: {}",
                    failures
                        .iter()
                        .map(|f| f.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        assert!(
            failed.is_empty(),
            "{}: {} vector(s) failed:\n{}",
            self.test,
            failed.len(),
            failed.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// The namespace, the edgecore, the relay.

/// A relay inside the namespace: accepts on the namespace's address, reads one line
/// `host:port`, connects there (intercepted by iptables), answers `OK`, then copies bytes
/// both ways, passing each direction's end (FIN) on as a half-close.
const RELAY: &str = r#"
import socket, sys, threading
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], 0))
ls.listen(256)
print(ls.getsockname()[1], flush=True)
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    line = b''
    while not line.endswith(b'\n'):
        d = c.recv(1)
        if not d:
            c.close()
            return
        line += d
    host, port = line.decode().strip().rsplit(':', 1)
    try:
        u = socket.create_connection((host, int(port)), timeout=10)
    except OSError as e:
        c.sendall(('ERR %s\n' % e).encode())
        c.close()
        return
    u.settimeout(None)
    u.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b'OK\n')
    t = threading.Thread(target=pump, args=(u, c), daemon=True)
    t.start()
    pump(c, u)
    t.join()
    c.close()
    u.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A test's namespace and files, made before its backend (which binds on the host end of
/// the namespace's veth).
struct World {
    ns: Netns,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        assert!(
            is_root(),
            "this test needs root for namespaces and iptables (CI runs as root)"
        );
        World {
            ns: Netns::create(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Where backends bind: the host end of the veth, reachable from the namespace.
    fn backend_ip(&self) -> &str {
        &self.ns.host_ip
    }
}

/// One test's running world: edgecore, relay, namespace and files. Fields drop in
/// order: processes first, then the namespace, then the files.
struct Mesh {
    relay: SocketAddr,
    _relay: Process,
    edgecore: Process,
    ns: Netns,
    dir: tempfile::TempDir,
}

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "main", "port": 80, "protocol": "TCP"}]}})
}

fn endpoints(name: &str, at: SocketAddr) -> Value {
    common::mesh::endpoints_on(name, &[at], "edge-t")
}

/// The edgecore config: no cloud link, the proxy with iptables, health on 10350.
fn edgecore_config(dir: &Path, db: &Path) -> String {
    format!(
        "health: {{address: \"127.0.0.1:10350\"}}\n\
         modules:\n  \
           edgeHub: {{enable: false, nodeId: edge-t}}\n  \
           metaManager: {{dbPath: \"{}\", socketPath: \"{}\"}}\n  \
           edgeMesh: {{listen: \"0.0.0.0:40001\", iptablesSyncMs: 200, {STRICT_KEYS}}}\n",
        db.display(),
        dir.join("mm.sock").display()
    )
}

impl Mesh {
    /// A namespace with an edgecore proxying Service `web` at [`VIP`] to `backend`, and
    /// the relay; returns once the rule is in and the relay listens.
    async fn start(world: World, backend: &RawBackend) -> Mesh {
        let World { ns, dir } = world;
        let db = dir.path().join("edge.db");
        common::mesh::store(
            &db,
            &[
                ("default/service/web", service("web", VIP)),
                ("default/endpoints/web", endpoints("web", backend.addr())),
            ],
        )
        .await;
        let config = dir.path().join("edgecore.yaml");
        std::fs::write(&config, edgecore_config(dir.path(), &db)).unwrap();
        let log = dir.path().join("edgecore.log");
        let mut edgecore = Process(ns.spawn(
            &[
                env!("CARGO_BIN_EXE_edgecore"),
                "--config",
                config.to_str().unwrap(),
            ],
            &log,
        ));
        let port_file = dir.path().join("relay.port");
        let relay = Process(ns.spawn(&["python3", "-u", "-c", RELAY, &ns.ip], &port_file));

        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = edgecore.0.try_wait().unwrap() {
                panic!(
                    "edgecore exited ({status}) before serving. Log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let rules = ns.output(&["iptables", "-t", "nat", "-S", "EDGE-MESH"]);
            let rules = String::from_utf8_lossy(&rules.stdout);
            if rules
                .lines()
                .any(|l| l.starts_with("-A") && l.contains(VIP))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no iptables rule for {VIP}; edgecore log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let port: u16 = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "the relay never listened: {text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Mesh {
            relay: SocketAddr::new(ns.ip.parse().unwrap(), port),
            _relay: relay,
            edgecore,
            ns,
            dir,
        }
    }

    /// A client connection to the Service, from inside the namespace.
    async fn client(&self) -> Result<Client, String> {
        Client::connect(self.relay, &format!("{VIP}:80")).await
    }

    /// Sends `bytes` on a new connection and reads one response.
    async fn exchange(&self, bytes: &[u8]) -> Result<Response, String> {
        let mut client = self.client().await?;
        client.send(bytes).await?;
        client.response().await
    }

    /// `/metrics` of the edgecore, as text.
    async fn metrics(&self) -> String {
        let out = tokio::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns.name,
                "curl",
                "-s",
                "--max-time",
                "5",
            ])
            .arg("http://127.0.0.1:10350/metrics")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `edgemesh_errors_total` of the Service for `reason`. A series is created on first
    /// use, so an absent one is 0; `None` only when `/metrics` did not answer.
    async fn errors(&self, reason: &str) -> Option<f64> {
        let text = self.metrics().await;
        if !text.contains("# EOF") {
            return None;
        }
        Some(
            common::mesh::sample(
                &text,
                &format!(r#"edgemesh_errors_total{{service="{SERVICE}",reason="{reason}"}}"#),
            )
            .unwrap_or(0.0),
        )
    }

    /// Awaits `edgemesh_errors_total{reason}` satisfying `want` (described by `what`);
    /// the last value seen is in the error.
    async fn await_errors(
        &self,
        reason: &str,
        what: &str,
        want: impl Fn(f64) -> bool,
    ) -> Result<f64, String> {
        let deadline = Instant::now() + WITHIN;
        loop {
            let value = self.errors(reason).await;
            if let Some(v) = value
                && want(v)
            {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "edgemesh_errors_total{{reason=\"{reason}\"}} never became {what}: last {}",
                    value.map_or("absent".to_owned(), |v| v.to_string())
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks `edgemesh_errors_total{reason}` is 0 (or absent: never counted).
    async fn check_zero(&self, report: &Report, vector: &str, reason: &str) {
        let v = self.errors(reason).await;
        report.check(vector, v == Some(0.0), || {
            format!("edgemesh_errors_total{{reason=\"{reason}\"}} should be 0, is {v:?}")
        });
    }

    /// The edgecore's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edgecore.log")).unwrap_or_default()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "edgecore log (last 40 lines, newest first; pid {}):\n{}",
                self.edgecore.0.id(),
                tail.join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The raw client.

/// A response as the client read it.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn body(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the raw backend wrote it (it rejected what the proxy sent).
    fn is_backend_rejection(&self) -> bool {
        self.header("x-raw-backend").is_some()
    }
}

/// A raw TCP client connection to the Service (through the relay).
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    async fn connect(relay: SocketAddr, to: &str) -> Result<Client, String> {
        let mut stream = TcpStream::connect(relay)
            .await
            .map_err(|e| format!("relay: {e}"))?;
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(format!("{to}\n").as_bytes())
            .await
            .map_err(|e| format!("relay: {e}"))?;
        let mut line = Vec::new();
        let deadline = Instant::now() + WITHIN;
        while !line.ends_with(b"\n") {
            let b = tokio::time::timeout_at(deadline, stream.read_u8())
                .await
                .map_err(|_| format!("relay: no answer connecting to {to}"))?
                .map_err(|e| format!("relay: {e}"))?;
            line.push(b);
        }
        if line != b"OK\n" {
            return Err(format!(
                "relay could not connect to {to}: {}",
                String::from_utf8_lossy(&line)
            ));
        }
        Ok(Client {
            stream,
            buf: Vec::new(),
            eof: false,
        })
    }

    /// A connection straight to `addr` (no relay, no proxy): for checking the backend.
    async fn direct(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("sending: {e}"))
    }

    /// Ends what the client sends (FIN), keeping the read side.
    async fn close_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads more into the buffer; false at EOF.
    async fn fill(&mut self, deadline: Instant, what: &str) -> Result<bool, String> {
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => Err(format!(
                "no {what} within {WITHIN:?} (got so far: {:?})",
                String::from_utf8_lossy(&self.buf)
            )),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                Ok(false)
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }

    /// Reads one final response (skipping 1xx other than 101).
    async fn response(&mut self) -> Result<Response, String> {
        let deadline = Instant::now() + WITHIN;
        loop {
            let resp = self.response_by(deadline).await?;
            if resp.status >= 200 || resp.status == 101 {
                return Ok(resp);
            }
        }
    }

    async fn response_by(&mut self, deadline: Instant) -> Result<Response, String> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill(deadline, "response").await? {
                return Err(format!(
                    "connection closed without a (complete) response; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end - 4]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .filter(|_| status_line.starts_with("HTTP/1."))
            .ok_or_else(|| format!("not an HTTP/1 status line: {status_line:?}"))?;
        let headers: Vec<(String, Vec<u8>)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.trim().as_bytes().to_vec()))
            .collect();
        self.buf.drain(..head_end);
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = resp.header("transfer-encoding").is_some_and(|v| {
            String::from_utf8_lossy(v)
                .to_ascii_lowercase()
                .contains("chunked")
        });
        let length = resp
            .header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        if status < 200 || status == 204 || status == 304 {
            return Ok(resp);
        }
        if chunked {
            resp.body = self.dechunk(deadline).await?;
        } else if let Some(n) = length {
            while self.buf.len() < n {
                if !self.fill(deadline, "response body").await? {
                    return Err(format!("closed after {} of {n} body bytes", self.buf.len()));
                }
            }
            resp.body = self.buf.drain(..n).collect();
        } else {
            while self.fill(deadline, "response body (until close)").await? {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    async fn dechunk(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !self.fill(deadline, "chunk").await? {
                    return Err("closed mid-chunk".into());
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            self.buf.drain(..line_end + 2);
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .map_err(|_| format!("bad chunk size in response: {line:?}"))?;
            if size == 0 {
                // Trailers through the blank line.
                loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        let blank = i == 0;
                        self.buf.drain(..i + 2);
                        if blank {
                            return Ok(body);
                        }
                    } else if !self.fill(deadline, "trailers").await? {
                        return Err("closed in trailers".into());
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if !self.fill(deadline, "chunk data").await? {
                    return Err("closed mid-chunk".into());
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Awaits the proxy closing the connection (EOF), within [`WITHIN`].
    async fn closed(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WITHIN;
        while self.fill(deadline, "close of the connection").await? {}
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Requests.

/// A request: `start` line, `fields` (each line without CRLF), then `body`.
fn request(start: &str, fields: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{start}\r\n").into_bytes();
    for f in fields {
        out.extend_from_slice(f.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn get(path: &str) -> Vec<u8> {
    request(&format!("GET {path} HTTP/1.1"), &["Host: web"], b"")
}

/// The target of vector `name`: every vector has its own, to find it in the backend's log.
fn target(name: &str) -> String {
    format!("/v/{name}")
}

/// Checks `resp` was the backend's normal answer to the one request for `target`, and
/// returns that request.
fn answered_once(
    report: &Report,
    vector: &str,
    backend: &RawBackend,
    target: &str,
    resp: &Response,
) -> Option<Request> {
    report.check(vector, resp.status == 200, || {
        format!("status {} (body {:?}), want 200", resp.status, resp.body())
    });
    let got = backend.requests_to(target);
    report.check(vector, got.len() == 1, || {
        format!(
            "the backend got {} complete request(s) to {target}, want 1; log:{}",
            got.len(),
            backend.summary()
        )
    });
    let req = got.into_iter().next()?;
    let want = format!("{}:{}:{}", req.conn, req.seq, req.method);
    report.check(vector, resp.body() == want, || {
        format!(
            "the response body {:?} is not the backend's answer {want:?} to it",
            resp.body()
        )
    });
    Some(req)
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

// ---------------------------------------------------------------------------------------
// Valid requests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_requests_reach_the_backend_exactly() {
    let world = World::new();
    let backend = RawBackend::spawn(world.backend_ip(), Options::default()).await;
    let mesh = Mesh::start(world, &backend).await;
    let report = Report::new("valid_requests_reach_the_backend_exactly");
    let r = &report;
    let b = &backend;
    let m = &mesh;

    // End-to-end fields, name as sent and value: forwarded byte for byte.
    const END_TO_END: [(&str, &[u8]); 9] = [
        ("Host", b"web"),
        ("X-Mixed-Case", b"MiXeD  Value\twith tab"),
        ("x-lower", b"v"),
        ("X-Dup", b"a"),
        ("X-Dup", b"b"),
        ("X-Empty", b""),
        ("X-Obs-Text", "caf\u{e9}".as_bytes()),
        ("Accept", b"*/*"),
        ("User-Agent", b"conformance/1 (raw)"),
    ];
    const HOP_BY_HOP: [&str; 8] = [
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Proxy-Connection",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        // Named in Connection, so hop-by-hop too (RFC 9110 §7.6.1).
        "X-Conn-Listed",
    ];

    let vectors = vec![
        // A GET with hop-by-hop and end-to-end fields.
        Box::pin(async move {
            let v = "get-hop-by-hop";
            let t = target(v);
            let mut bytes = format!("GET {t} HTTP/1.1\r\n").into_bytes();
            for (n, val) in END_TO_END {
                bytes.extend_from_slice(format!("{n}: ").as_bytes());
                bytes.extend_from_slice(val);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(
                b"Connection: keep-alive, X-Conn-Listed\r\nKeep-Alive: timeout=5\r\n\
                  TE: trailers\r\nTrailer: X-Trail\r\nProxy-Connection: keep-alive\r\n\
                  Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Authenticate: Basic\r\n\
                  X-Conn-Listed: 1\r\n\r\n",
            );
            let Some(resp) = r.ok(v, m.exchange(&bytes).await) else {
                return;
            };
            let Some(req) = answered_once(r, v, b, &t, &resp) else {
                return;
            };
            for h in HOP_BY_HOP {
                r.check(v, !req.has(h), || {
                    format!("hop-by-hop {h} forwarded: {}", show(&req.raw_head))
                });
            }
            for name in [
                "Host",
                "X-Mixed-Case",
                "x-lower",
                "X-Dup",
                "X-Empty",
                "X-Obs-Text",
                "Accept",
                "User-Agent",
            ] {
                let want: Vec<&[u8]> = END_TO_END
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, v)| *v)
                    .collect();
                let got = req.values(name);
                r.check(v, got == want, || {
                    format!(
                        "{name}: forwarded {:?}, want {:?}",
                        got.iter().map(|g| show(g)).collect::<Vec<_>>(),
                        want.iter().map(|g| show(g)).collect::<Vec<_>>()
                    )
                });
            }
            r.check(v, req.method == "GET" && req.body.is_empty(), || {
                format!("method {} body {}", req.method, show(&req.body))
            });
            // Names are case-insensitive, but a byte-exact forwarder keeps their case.
            let v = "get-header-name-case";
            for (name, _) in END_TO_END {
                r.check(v, req.headers.iter().any(|(n, _)| n == name), || {
                    format!(
                        "{name} not forwarded with its case: {}",
                        show(&req.raw_head)
                    )
                });
            }
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
        // Upgrade without the Connection option: hop-by-hop, not an upgrade.
        Box::pin(async move {
            let v = "get-upgrade-not-in-connection";
            let t = target(v);
            let bytes = request(
                &format!("GET {t} HTTP/1.1"),
                &["Host: web", "Upgrade: foo/1"],
                b"",
            );
            let Some(resp) = r.ok(v, m.exchange(&bytes).await) else {
                return;
            };
            if let Some(req) = answered_once(r, v, b, &t, &resp) {
                r.check(v, !req.has("upgrade"), || {
                    format!("Upgrade forwarded: {}", show(&req.raw_head))
                });
            }
        }),
        // Two equal Content-Length fields: accepted, forwarded as one.
        Box::pin(async move {
            let v = "cl-equal-twice";
            let t = target(v);
            let bytes = request(
                &format!("POST {t} HTTP/1.1"),
                &["Host: web", "Content-Length: 5", "Content-Length: 5"],
                b"hello",
            );
            let Some(resp) = r.ok(v, m.exchange(&bytes).await) else {
                return;
            };
            if let Some(req) = answered_once(r, v, b, &t, &resp) {
                let cls = req.values("content-length");
                r.check(v, cls == [b"5"], || {
                    format!("Content-Length fields forwarded: {}", show(&req.raw_head))
                });
                r.check(v, req.body == b"hello", || {
                    format!("body {}", show(&req.body))
                });
            }
        }),
        // Content-Length with trailing whitespace: OWS, trimmed.
        Box::pin(async move {
            let v = "cl-trailing-ows";
            let t = target(v);
            let bytes = request(
                &format!("POST {t} HTTP/1.1"),
                &["Host: web", "Content-Length: 5 "],
                b"hello",
            );
            let Some(resp) = r.ok(v, m.exchange(&bytes).await) else {
                return;
            };
            if let Some(req) = answered_once(r, v, b, &t, &resp) {
                r.check(v, req.body == b"hello", || {
                    format!("body {}", show(&req.body))
                });
            }
        }),
        // Chunked with extensions and trailers: forwarded chunked, the body intact.
        Box::pin(async move {
            let v = "chunked-extensions-trailers";
            let t = target(v);
            let bytes = request(
                &format!("POST {t} HTTP/1.1"),
                &["Host: web", "Transfer-Encoding: chunked"],
                b"5;name=value\r\nhello\r\n7;q=\"a b\";flag\r\n, world\r\n0\r\nX-Trail: t1\r\n\r\n",
            );
            let Some(resp) = r.ok(v, m.exchange(&bytes).await) else {
                return;
            };
            if let Some(req) = answered_once(r, v, b, &t, &resp) {
                r.check(v, req.body == b"hello, world", || {
                    format!("de-chunked body {}", show(&req.body))
                });
                r.check(v, matches!(req.framing, Framing::Chunked { .. }), || {
                    format!("forwarded as {:?}, want chunked", req.framing)
                });
            }
        }),
        // A 15 KiB head: under the 16 KiB limit.
        Box::pin(async move {
            let v = "head-15k";
            let t = target(v);
            let pad = "p".repeat(15 * 1024 - 100);
            let bytes = request(
                &format!("GET {t} HTTP/1.1"),
                &["Host: web", &format!("X-Pad: {pad}")],
                b"",
            );
            r.check(
                v,
                bytes.len() > 14 * 1024 && bytes.len() < 15 * 1024 + 1,
                || format!("the head is {} bytes", bytes.len()),
            );
            let Some(resp) = r.ok(v, m.exchange(&bytes).await) else {
                return;
            };
            if let Some(req) = answered_once(r, v, b, &t, &resp) {
                r.check(v, req.values("x-pad") == [pad.as_bytes()], || {
                    "X-Pad not forwarded whole".into()
                });
            }
        }),
        // Two GETs in one write: two answers, in order.
        Box::pin(async move {
            let v = "pipelined-get-get";
            let (ta, tb) = (target("pipe-a"), target("pipe-b"));
            let mut bytes = get(&ta);
            bytes.extend(get(&tb));
            pipelined(r, v, m, b, &bytes, &[&ta, &tb]).await;
        }),
        // A GET and a POST with a body in one write.
        Box::pin(async move {
            let v = "pipelined-get-post";
            let (tc, td) = (target("pipe-c"), target("pipe-d"));
            let mut bytes = get(&tc);
            bytes.extend(request(
                &format!("POST {td} HTTP/1.1"),
                &["Host: web", "Content-Length: 5"],
                b"hello",
            ));
            if let Some(reqs) = pipelined(r, v, m, b, &bytes, &[&tc, &td]).await {
                r.check(v, reqs[1].body == b"hello", || {
                    format!("POST body {}", show(&reqs[1].body))
                });
            }
        }),
        // HTTP/1.0 without Host: forwarded, and the connection closes after it.
        Box::pin(async move {
            let v = "http10-without-host";
            let t = target(v);
            let bytes = request(&format!("GET {t} HTTP/1.0"), &[], b"");
            let mut client = match m.client().await {
                Ok(c) => c,
                Err(e) => return r.fail(v, e),
            };
            if let Err(e) = client.send(&bytes).await {
                return r.fail(v, e);
            }
            let Some(resp) = r.ok(v, client.response().await) else {
                return;
            };
            answered_once(r, v, b, &t, &resp);
            let closed = client.closed().await;
            r.check(v, closed.is_ok(), || {
                format!("the HTTP/1.0 connection was not closed: {closed:?}")
            });
        }),
        // Connection: close on HTTP/1.1: answered, then closed.
        Box::pin(async move {
            let v = "connection-close-honoured";
            let t = target(v);
            let bytes = request(
                &format!("GET {t} HTTP/1.1"),
                &["Host: web", "Connection: close"],
                b"",
            );
            let mut client = match m.client().await {
                Ok(c) => c,
                Err(e) => return r.fail(v, e),
            };
            if let Err(e) = client.send(&bytes).await {
                return r.fail(v, e);
            }
            let Some(resp) = r.ok(v, client.response().await) else {
                return;
            };
            answered_once(r, v, b, &t, &resp);
            let closed = client.closed().await;
            r.check(v, closed.is_ok(), || {
                format!("the connection was not closed after Connection: close: {closed:?}")
            });
        }),
    ];
    join_all(vectors).await;
    report.finish();
}

/// Sends `bytes` (several requests) in one write; checks one answer per target, in order,
/// each the backend's to that target. Returns the backend's requests in target order.
async fn pipelined(
    r: &Report,
    v: &str,
    m: &Mesh,
    b: &RawBackend,
    bytes: &[u8],
    targets: &[&str],
) -> Option<Vec<Request>> {
    let mut client = match m.client().await {
        Ok(c) => c,
        Err(e) => {
            r.fail(v, e);
            return None;
        }
    };
    if let Err(e) = client.send(bytes).await {
        r.fail(v, e);
        return None;
    }
    let mut reqs = Vec::new();
    for t in targets {
        let resp = r.ok(
            v,
            client
                .response()
                .await
                .map_err(|e| format!("answer for {t}: {e}")),
        )?;
        reqs.push(answered_once(r, v, b, t, &resp)?);
    }
    Some(reqs)
}

// ---------------------------------------------------------------------------------------
// Malformed requests.

/// What a refused vector must get.
#[derive(Clone, Copy)]
enum Want {
    /// Exactly this status.
    Status(u16),
    /// Any 4xx, or 501 (unknown transfer coding).
    ClientErrorOr501,
}

impl Want {
    fn admits(self, status: u16) -> bool {
        match self {
            Want::Status(s) => status == s,
            Want::ClientErrorOr501 => (400..500).contains(&status) || status == 501,
        }
    }
}

/// How much of a refused vector may have reached the backend.
#[derive(Clone, Copy, PartialEq)]
enum Reach {
    /// Not a byte of it (refused on its head).
    Nothing,
    /// Perhaps some bytes, never a complete request (refused in its body).
    NoComplete,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_before_the_backend() {
    let world = World::new();
    let backend = RawBackend::spawn(world.backend_ip(), Options::default()).await;
    let mesh = Mesh::start(world, &backend).await;
    let report = Report::new("malformed_requests_are_refused_before_the_backend");

    let post = |name: &str, fields: &[&str], body: &[u8]| {
        let start = format!("POST {} HTTP/1.1", target(name));
        let mut all = vec!["Host: web"];
        all.extend_from_slice(fields);
        request(&start, &all, body)
    };
    let chunked_body = b"5\r\nhello\r\n0\r\n\r\n".as_slice();
    let big = format!("X-Big: {}", "b".repeat(20 * 1024));
    let cases: Vec<(&str, Vec<u8>, Want, Reach)> = vec![
        // Content-Length: digits only, one value.
        (
            "cl-plus",
            post("cl-plus", &["Content-Length: +5"], b"hello"),
            Want::Status(400),
            Reach::NoComplete,
        ),
        (
            "cl-minus",
            post("cl-minus", &["Content-Length: -1"], b"hello"),
            Want::Status(400),
            Reach::NoComplete,
        ),
        (
            "cl-hex",
            post("cl-hex", &["Content-Length: 0x5"], b"hello"),
            Want::Status(400),
            Reach::NoComplete,
        ),
        (
            "cl-list",
            post("cl-list", &["Content-Length: 5, 6"], b"hello!"),
            Want::Status(400),
            Reach::NoComplete,
        ),
        (
            "cl-differing-twice",
            post(
                "cl-differing-twice",
                &["Content-Length: 5", "Content-Length: 6"],
                b"hello!",
            ),
            Want::Status(400),
            Reach::NoComplete,
        ),
        // Chunk sizes: hex digits, present, in range, clean extensions.
        (
            "chunk-size-0x",
            post(
                "chunk-size-0x",
                &["Transfer-Encoding: chunked"],
                b"0x5\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Status(400),
            Reach::NoComplete,
        ),
        (
            "chunk-size-empty",
            post(
                "chunk-size-empty",
                &["Transfer-Encoding: chunked"],
                b"\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Status(400),
            Reach::NoComplete,
        ),
        (
            "chunk-size-overflow",
            post(
                "chunk-size-overflow",
                &["Transfer-Encoding: chunked"],
                b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Status(400),
            Reach::NoComplete,
        ),
        (
            "chunk-extension-control-char",
            post(
                "chunk-extension-control-char",
                &["Transfer-Encoding: chunked"],
                b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Status(400),
            Reach::NoComplete,
        ),
        // Transfer-Encoding: chunked last and alone, no Content-Length beside it.
        (
            "te-chunked-then-gzip",
            post(
                "te-chunked-then-gzip",
                &["Transfer-Encoding: chunked, gzip"],
                chunked_body,
            ),
            Want::Status(400),
            Reach::Nothing,
        ),
        (
            "te-gzip-then-chunked",
            post(
                "te-gzip-then-chunked",
                &["Transfer-Encoding: gzip, chunked"],
                chunked_body,
            ),
            Want::Status(501),
            Reach::Nothing,
        ),
        (
            "te-xchunked",
            post(
                "te-xchunked",
                &["Transfer-Encoding: xchunked"],
                chunked_body,
            ),
            Want::ClientErrorOr501,
            Reach::Nothing,
        ),
        (
            "te-chunked-twice",
            post(
                "te-chunked-twice",
                &["Transfer-Encoding: chunked, chunked"],
                chunked_body,
            ),
            Want::ClientErrorOr501,
            Reach::Nothing,
        ),
        (
            "te-space-before-colon",
            post(
                "te-space-before-colon",
                &["Transfer-Encoding : chunked"],
                chunked_body,
            ),
            Want::Status(400),
            Reach::Nothing,
        ),
        (
            "te-with-cl",
            post(
                "te-with-cl",
                &["Transfer-Encoding: chunked", "Content-Length: 5"],
                chunked_body,
            ),
            Want::Status(400),
            Reach::Nothing,
        ),
        // Field syntax.
        (
            "obs-fold",
            request(
                &format!("GET {} HTTP/1.1", target("obs-fold")),
                &["Host: web", "X-Fold: a", " b"],
                b"",
            ),
            Want::Status(400),
            Reach::Nothing,
        ),
        (
            "bare-cr-in-field",
            request(
                &format!("GET {} HTTP/1.1", target("bare-cr-in-field")),
                &["Host: web", "X-CR: a\rb"],
                b"",
            ),
            Want::Status(400),
            Reach::Nothing,
        ),
        (
            "nul-in-value",
            request(
                &format!("GET {} HTTP/1.1", target("nul-in-value")),
                &["Host: web", "X-Nul: a\0b"],
                b"",
            ),
            Want::Status(400),
            Reach::Nothing,
        ),
        (
            "space-in-field-name",
            request(
                &format!("GET {} HTTP/1.1", target("space-in-field-name")),
                &["Host: web", "X Bad: v"],
                b"",
            ),
            Want::Status(400),
            Reach::Nothing,
        ),
        // Over the 16 KiB head limit.
        (
            "head-20k",
            request(
                &format!("GET {} HTTP/1.1", target("head-20k")),
                &["Host: web", &big],
                b"",
            ),
            Want::Status(431),
            Reach::Nothing,
        ),
    ];
    let r = &report;
    let m = &mesh;
    join_all(cases.iter().map(|(v, bytes, want, _)| async move {
        let Some(resp) = r.ok(v, m.exchange(bytes).await) else {
            return;
        };
        r.check(
            v,
            want.admits(resp.status) && !resp.is_backend_rejection(),
            || {
                format!(
                    "got {} (body {:?}{}), want {}",
                    resp.status,
                    resp.body(),
                    if resp.is_backend_rejection() {
                        ", written by the backend: the proxy forwarded it"
                    } else {
                        ""
                    },
                    match want {
                        Want::Status(s) => s.to_string(),
                        Want::ClientErrorOr501 => "4xx or 501".into(),
                    }
                )
            },
        );
    }))
    .await;

    // A valid request after them all, so what the proxy forwarded has had its chance to
    // arrive (the connection is new; the bytes of the others went first).
    let sentinel = target("sentinel");
    match mesh.exchange(&get(&sentinel)).await {
        Ok(resp) => {
            answered_once(r, "sentinel-get-after-refusals", &backend, &sentinel, &resp);
        }
        Err(e) => r.fail("sentinel-get-after-refusals", e),
    }
    for (v, _, _, reach) in &cases {
        let t = target(v);
        let complete = backend.requests_to(&t);
        r.check(v, complete.is_empty(), || {
            format!(
                "the backend got {} complete request(s) to {t}; log:{}",
                complete.len(),
                backend.summary()
            )
        });
        if *reach == Reach::Nothing {
            let marker = format!(" {t} ");
            r.check(v, !backend.received(marker.as_bytes()), || {
                format!("bytes of it reached the backend; log:{}", backend.summary())
            });
        }
    }
    report.finish();
}

// ---------------------------------------------------------------------------------------
// Client faults.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_are_answered_and_never_count_against_the_endpoint() {
    let world = World::new();
    let backend = RawBackend::spawn(world.backend_ip(), Options::default()).await;
    let mesh = Mesh::start(world, &backend).await;
    let report = Report::new("client_faults_are_answered_and_never_count_against_the_endpoint");
    let r = &report;

    let v = "get-before-faults";
    let t = target(v);
    if let Some(resp) = r.ok(v, mesh.exchange(&get(&t)).await) {
        answered_once(r, v, &backend, &t, &resp);
    }

    // Eight malformed chunked bodies: each 400, each the client's fault.
    for i in 0..8 {
        let v = "chunk-size-zz-x8";
        let t = target(&format!("zz-{i}"));
        let bytes = request(
            &format!("POST {t} HTTP/1.1"),
            &["Host: web", "Transfer-Encoding: chunked"],
            b"zz\r\nhello\r\n0\r\n\r\n",
        );
        if let Some(resp) = r.ok(v, mesh.exchange(&bytes).await) {
            r.check(
                v,
                resp.status == 400 && !resp.is_backend_rejection(),
                || {
                    format!(
                        "#{i}: got {} (body {:?}), want 400 from the proxy",
                        resp.status,
                        resp.body()
                    )
                },
            );
        }
    }
    let v = "get-after-bad-chunks";
    let t = target(v);
    match mesh.exchange(&get(&t)).await {
        Ok(resp) => {
            answered_once(r, v, &backend, &t, &resp);
        }
        Err(e) => r.fail(v, format!("the endpoint looks ejected: {e}")),
    }
    for i in 0..8 {
        let t = target(&format!("zz-{i}"));
        r.check(
            "chunk-size-zz-x8",
            backend.requests_to(&t).is_empty(),
            || {
                format!(
                    "#{i} reached the backend complete; log:{}",
                    backend.summary()
                )
            },
        );
    }
    let v = "metrics-after-bad-chunks";
    r.ok(v, mesh.await_errors("bad_request", "8", |n| n == 8.0).await);
    mesh.check_zero(r, v, "upstream").await;
    mesh.check_zero(r, v, "connect_failed").await;

    // Eight uploads abandoned 10 bytes into 1000: the proxy ends each connection.
    for i in 0..8 {
        let v = "client-abort-x8";
        let t = target(&format!("abort-{i}"));
        let mut bytes = request(
            &format!("POST {t} HTTP/1.1"),
            &["Host: web", "Content-Length: 1000"],
            b"",
        );
        bytes.extend_from_slice(&[b'a'; 10]);
        let mut client = match mesh.client().await {
            Ok(c) => c,
            Err(e) => {
                r.fail(v, e);
                continue;
            }
        };
        if let Err(e) = client.send(&bytes).await {
            r.fail(v, e);
            continue;
        }
        client.close_write().await;
        let closed = client.closed().await;
        r.check(v, closed.is_ok(), || {
            format!("#{i}: the proxy kept the aborted connection: {closed:?}")
        });
        r.check(v, backend.requests_to(&t).is_empty(), || {
            format!("#{i} reached the backend complete")
        });
    }
    let v = "get-after-aborts";
    let t = target(v);
    match mesh.exchange(&get(&t)).await {
        Ok(resp) => {
            answered_once(r, v, &backend, &t, &resp);
        }
        Err(e) => r.fail(v, format!("the endpoint looks ejected: {e}")),
    }
    let v = "metrics-after-aborts";
    r.ok(
        v,
        mesh.await_errors("client_aborted", "at least 1", |n| n >= 1.0)
            .await,
    );
    mesh.check_zero(r, v, "upstream").await;
    mesh.check_zero(r, v, "connect_failed").await;

    // Half a head, then nothing: 408 once headTimeoutMs has passed.
    let v = "stalled-head-408";
    let t = target(v);
    match mesh.client().await {
        Ok(mut client) => {
            let half = format!("GET {t} HTTP/1.1\r\nHost: web\r\nX-Part");
            match client.send(half.as_bytes()).await {
                Ok(()) => match client.response().await {
                    Ok(resp) => r.check(v, resp.status == 408, || {
                        format!("got {} (body {:?}), want 408", resp.status, resp.body())
                    }),
                    Err(e) => r.fail(v, e),
                },
                Err(e) => r.fail(v, e),
            }
        }
        Err(e) => r.fail(v, e),
    }
    r.check(v, !backend.received(t.as_bytes()), || {
        format!(
            "bytes of the stalled head reached the backend; log:{}",
            backend.summary()
        )
    });
    let v = "metrics-after-stall";
    mesh.check_zero(r, v, "upstream").await;
    mesh.check_zero(r, v, "connect_failed").await;
    report.finish();
}

// ---------------------------------------------------------------------------------------
// Upstream connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_backend_closed_is_not_used_for_the_next_request() {
    let world = World::new();
    let backend = RawBackend::spawn(
        world.backend_ip(),
        Options {
            close_idle_after: Some(Duration::from_millis(100)),
            ..Options::default()
        },
    )
    .await;
    let mesh = Mesh::start(world, &backend).await;
    let report =
        Report::new("a_kept_connection_the_backend_closed_is_not_used_for_the_next_request");
    let r = &report;
    let mut client = mesh.client().await.expect("a client connection");
    // Three rounds, each on the one client connection: GET, the backend closes that
    // upstream connection, POST.
    for round in 0..3 {
        let v = "stale-upstream-post";
        let tg = target(&format!("stale-get-{round}"));
        let tp = target(&format!("stale-post-{round}"));
        if let Err(e) = client.send(&get(&tg)).await {
            r.fail(v, format!("round {round}: {e}"));
            break;
        }
        let Some(resp) = r.ok(v, client.response().await) else {
            break;
        };
        let Some(first) = answered_once(r, v, &backend, &tg, &resp) else {
            break;
        };
        match backend.await_closed(first.conn, WITHIN).await {
            Ok(Closed::Idle) => {}
            other => {
                r.fail(
                    v,
                    format!(
                        "round {round}: upstream connection {}: {other:?}, want closed idle",
                        first.conn
                    ),
                );
                break;
            }
        }
        let post = request(
            &format!("POST {tp} HTTP/1.1"),
            &["Host: web", "Content-Length: 5"],
            b"hello",
        );
        if let Err(e) = client.send(&post).await {
            r.fail(v, format!("round {round}: {e}"));
            break;
        }
        let Some(resp) = r.ok(
            v,
            client
                .response()
                .await
                .map_err(|e| format!("round {round}: {e}")),
        ) else {
            break;
        };
        if let Some(req) = answered_once(r, v, &backend, &tp, &resp) {
            r.check(v, req.conn != first.conn && req.body == b"hello", || {
                format!(
                    "round {round}: POST on upstream connection {} (the closed one was {}), body {}",
                    req.conn,
                    first.conn,
                    show(&req.body)
                )
            });
        }
    }
    mesh.check_zero(r, "metrics-after-stale-connections", "upstream")
        .await;
    report.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_are_502_and_count_as_upstream_faults() {
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "response-cl-plus",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello".to_vec(),
        ),
        (
            "response-cl-with-te",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "response-head-20k",
            format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\ncontent-length: 2\r\n\r\nok",
                "b".repeat(20 * 1024)
            )
            .into_bytes(),
        ),
    ];
    let world = World::new();
    let backend = RawBackend::spawn(
        world.backend_ip(),
        Options {
            respond_with: bad
                .iter()
                .map(|(v, raw)| (target(v), raw.clone()))
                .collect(),
            ..Options::default()
        },
    )
    .await;
    let mesh = Mesh::start(world, &backend).await;
    let report = Report::new("malformed_responses_are_502_and_count_as_upstream_faults");
    let r = &report;
    for (v, _) in &bad {
        let t = target(v);
        if let Some(resp) = r.ok(v, mesh.exchange(&get(&t)).await) {
            r.check(v, resp.status == 502, || {
                format!("got {} (body {:?}), want 502", resp.status, resp.body())
            });
        }
        r.check(v, backend.requests_to(&t).len() == 1, || {
            format!(
                "the backend got {} request(s) to {t}, want 1",
                backend.requests_to(&t).len()
            )
        });
    }
    let v = "get-after-bad-responses";
    let t = target(v);
    match mesh.exchange(&get(&t)).await {
        Ok(resp) => {
            answered_once(r, v, &backend, &t, &resp);
        }
        Err(e) => r.fail(v, e),
    }
    let v = "metrics-after-bad-responses";
    r.ok(v, mesh.await_errors("upstream", "3", |n| n == 3.0).await);
    report.finish();
}

// ---------------------------------------------------------------------------------------
// The oracle itself.

/// The raw backend, spoken to directly on loopback (no namespace, no proxy): it must take
/// what is valid and refuse, never as a complete request, what is not; otherwise the
/// verdicts above mean nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_backend_is_strict() {
    let backend = RawBackend::spawn(
        "127.0.0.1",
        Options {
            close_idle_after: Some(Duration::from_millis(100)),
            respond_with: [(
                "/raw".to_owned(),
                b"HTTP/1.1 299 Raw\r\ncontent-length: 1\r\n\r\nr".to_vec(),
            )]
            .into_iter()
            .collect(),
        },
    )
    .await;
    let addr = backend.addr();

    // Valid: a GET and a chunked POST with extensions and trailers, pipelined.
    let mut client = Client::direct(addr).await;
    let mut bytes = get("/a");
    bytes.extend(request(
        "POST /b HTTP/1.1",
        &["Host: web", "Transfer-Encoding: chunked"],
        b"5;x=\"y z\"\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n",
    ));
    client.send(&bytes).await.unwrap();
    let a = client.response().await.unwrap();
    let b = client.response().await.unwrap();
    assert_eq!((a.status, a.body()), (200, "1:1:GET".to_owned()));
    assert_eq!((b.status, b.body()), (200, "1:2:POST".to_owned()));
    let post = &backend.requests_to("/b")[0];
    assert_eq!(post.body, b"hello!");
    assert!(
        matches!(&post.framing, Framing::Chunked { trailers, .. } if trailers == &[("X-T".to_owned(), b"1".to_vec())]),
        "{:?}",
        post.framing
    );
    // Idle after its last answer: closed, and the close recorded.
    assert_eq!(backend.await_closed(1, WITHIN).await, Ok(Closed::Idle));
    client.closed().await.unwrap();

    // Raw bytes instead of the answer, then a close.
    let mut client = Client::direct(addr).await;
    client.send(&get("/raw")).await.unwrap();
    let raw = client.response().await.unwrap();
    assert_eq!((raw.status, raw.body()), (299, "r".to_owned()));
    client.closed().await.unwrap();

    let post = |fields: &[&str], body: &[u8]| {
        let mut all = vec!["Host: web"];
        all.extend_from_slice(fields);
        request("POST /bad HTTP/1.1", &all, body)
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("cl-plus", post(&["Content-Length: +5"], b"hello")),
        ("cl-list", post(&["Content-Length: 5, 5"], b"hello")),
        (
            "cl-differing",
            post(&["Content-Length: 5", "Content-Length: 6"], b"hello!"),
        ),
        (
            "chunk-0x",
            post(
                &["Transfer-Encoding: chunked"],
                b"0x5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk-zz",
            post(&["Transfer-Encoding: chunked"], b"zz\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk-empty",
            post(&["Transfer-Encoding: chunked"], b"\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk-overflow",
            post(
                &["Transfer-Encoding: chunked"],
                b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk-ext-ctl",
            post(
                &["Transfer-Encoding: chunked"],
                b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk-no-crlf",
            post(&["Transfer-Encoding: chunked"], b"5\r\nhelloX\r\n0\r\n\r\n"),
        ),
        (
            "te-gzip",
            post(&["Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n"),
        ),
        (
            "te-cl",
            post(
                &["Transfer-Encoding: chunked", "Content-Length: 5"],
                b"0\r\n\r\n",
            ),
        ),
        (
            "te-space-colon",
            post(&["Transfer-Encoding : chunked"], b"0\r\n\r\n"),
        ),
        ("obs-fold", post(&["X-A: a", " b"], b"")),
        ("bare-cr", post(&["X-A: a\rb"], b"")),
        ("nul", post(&["X-A: a\0b"], b"")),
        ("bare-lf", b"GET /bad HTTP/1.1\nHost: web\n\n".to_vec()),
        ("no-host", b"GET /bad HTTP/1.1\r\n\r\n".to_vec()),
        ("two-hosts", post(&["Host: other"], b"")),
    ];
    for (name, bytes) in &bad {
        let mut client = Client::direct(addr).await;
        client.send(bytes).await.unwrap();
        let resp = client
            .response()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            resp.status == 400 && resp.is_backend_rejection(),
            "{name}: {resp:?}"
        );
    }
    assert!(
        backend.requests_to("/bad").is_empty(),
        "{}",
        backend.summary()
    );
    let rejected = backend
        .connections()
        .iter()
        .filter(|c| c.rejected.is_some())
        .count();
    assert_eq!(rejected, bad.len(), "{}", backend.summary());
}
