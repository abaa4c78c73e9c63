//! Overload of a real edgecore process: 10,000 idle client connections held open to its
//! proxy (memory per idle connection measured and bounded, a new client still served); a
//! flood of connections far beyond its descriptor limit (refused, the rest of the process
//! unharmed, served again once the flood ends); and clients that ask for 64 MiB and never
//! read it (the proxy's memory stays flat while another client is served).

mod common;

use common::{Cloud, Process, change, cloud_config, fds, rss_kib};

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::backend;
use common::mesh::{NODE, endpoints, get, get_via, proxy_client, service, store};
use common::three::Proc;
use proto::ResourceType;
use proto::metaclient::MetaClient;
use proto::operation;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IDLE: usize = 10_000;

/// Raises this test process's descriptor limit towards `want` (its own end of every
/// connection needs one too) and says whether it is now at least `need`. Root may raise the
/// hard limit (where the container allows); anyone the soft one to it.
fn raise_own_limit(want: u64, need: u64) -> bool {
    let limit = getrlimit(Resource::Nofile);
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(limit.maximum.map_or(want, |m| m.max(want))),
        },
    );
    if raised.is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < need {
        eprintln!("skipped: the descriptor limit ({now}) is below what the test needs ({need})");
    }
    now >= need
}

/// An edgecore process with its explicit proxy and health endpoint on loopback.
struct Edge {
    proc: Proc,
    proxy: SocketAddr,
    health: SocketAddr,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Edge {
    /// Starts edgecore with `objects` in its store, its cloud link dialling `cloud` (none
    /// without), and its descriptor limit set to `nofile` when given: through util-linux's
    /// `prlimit`, since setting it between fork and exec would take `unsafe`. Returns once
    /// the proxy serves Service `web`.
    async fn start(
        objects: &[(&str, Value)],
        cloud: Option<SocketAddr>,
        nofile: Option<u64>,
    ) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("edge.db");
        store(&db, objects).await;
        let socket = dir.path().join("edge.sock");
        let hub = match cloud {
            Some(server) => format!(
                "{{server: \"{server}\", insecure: true, nodeId: {NODE}, reconnectInitialMs: 100, reconnectMaxMs: 1000}}"
            ),
            None => format!("{{enable: false, nodeId: {NODE}}}"),
        };
        let cfg = dir.path().join("edge.yaml");
        std::fs::write(
            &cfg,
            format!(
                "health: {{address: \"127.0.0.1:0\"}}\n\
                 modules:\n  edgeHub: {hub}\n  \
                 metaManager: {{dbPath: \"{}\", socketPath: \"{}\"}}\n  \
                 edgeMesh: {{iptables: false, listen: \"127.0.0.1:0\", proxyListen: \"127.0.0.1:0\"}}\n",
                db.display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("edge.log");
        let proc = match nofile {
            None => Proc::start(env!("CARGO_BIN_EXE_edgecore"), &cfg, log),
            Some(n) => {
                let file = std::fs::File::create(&log).unwrap();
                // prlimit execs the command: the child's pid is edgecore's.
                let child = Command::new("prlimit")
                    .arg(format!("--nofile={n}:{n}"))
                    .arg(env!("CARGO_BIN_EXE_edgecore"))
                    .arg("--config")
                    .arg(&cfg)
                    .env("RUST_LOG", "info")
                    .stdin(Stdio::null())
                    .stdout(file.try_clone().unwrap())
                    .stderr(file)
                    .spawn()
                    .expect("prlimit (util-linux) runs; tests/run.sh installs it");
                Proc {
                    process: Process(child),
                    log,
                }
            }
        };
        let proxy = proc.logged_addr("SOCKS5) on ").await;
        let health = proc.logged_addr("/metrics on http://").await;
        let edge = Edge {
            proc,
            proxy,
            health,
            socket,
            _dir: dir,
        };
        let ready = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _, body) = get_via(&mut proxy_client(proxy).await, "http://web/").await;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < ready,
                "never answered: {status} {body}\n{}",
                edge.proc.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        edge
    }

    fn pid(&self) -> u32 {
        self.proc.process.0.id()
    }
}

/// Service `web` (at `addr`) as edgemesh finds it in its store.
fn web(addr: SocketAddr) -> [(&'static str, Value); 2] {
    [
        (
            "default/service/web",
            service("web", "10.96.40.1", 80, json!({})),
        ),
        ("default/endpoints/web", endpoints("web", &[addr])),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_clients_cost_little_and_block_nobody() {
    if !raise_own_limit(65_536, IDLE as u64 + 1_000) {
        return;
    }
    let backend = backend::spawn("127.0.0.1", "web").await;
    let edge = Edge::start(&web(backend), None, None).await;
    let (proxy, pid) = (edge.proxy, edge.pid());

    let before = rss_kib(pid);
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(proxy).await.unwrap());
    }
    // Every connection accepted (and so holding whatever it holds) before measuring.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fds(pid) < IDLE {
        assert!(
            Instant::now() < deadline,
            "the proxy did not accept them all"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, body) = get_via(&mut proxy_client(proxy).await, "http://web/").await;
    assert_eq!(
        status, 200,
        "a new client is served beside 10,000 idle ones: {body}"
    );
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before) as f64 * 1024.0) / IDLE as f64;
    eprintln!(
        "{IDLE} idle clients: RSS {before} KiB -> {after} KiB, {per:.0} bytes per connection"
    );
    // 29.5 KiB before the forwarders' state was boxed out of a waiting client's task;
    // 12.5 KiB measured after.
    assert!(
        per < 24.0 * 1024.0,
        "{per:.0} bytes per idle connection (before {before} KiB, after {after} KiB)"
    );
    drop(idle);
}

/// edgecore's descriptor limit in the flood test, and the connections the flood holds.
const NOFILE: u64 = 256;
const FLOOD: usize = 1_000;

/// CPU time a process has used (user and system), in clock ticks, from `/proc`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start at the state, the
    // third field: utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    rest.split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// Whether the proxy has reset or closed `stream` (read without waiting; the flood never
/// says anything, so the proxy has nothing to answer).
fn refused(mut stream: &std::net::TcpStream) -> bool {
    match stream.read(&mut [0u8; 1]) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_descriptor_limit_is_refused_and_the_edge_recovers() {
    if !raise_own_limit(65_536, FLOOD as u64 + 1_000) {
        return;
    }
    let mut cloud = Cloud::start(cloud_config("127.0.0.1:0"), HashMap::new()).await;
    let backend = backend::spawn("127.0.0.1", "web").await;
    let edge = Edge::start(&web(backend), Some(cloud.addr), Some(NOFILE)).await;
    cloud.await_link(NODE, true).await;
    let (proxy, pid) = (edge.proxy, edge.pid());
    let (cpu_before, fds_before) = (cpu_ticks(pid), fds(pid));

    // Plain blocking sockets, opened on a thread of their own: their reads below must not
    // wait, and must ask the socket itself rather than a reactor.
    let flood = tokio::task::spawn_blocking(move || {
        (0..FLOOD)
            .filter_map(|_| {
                let stream = std::net::TcpStream::connect(proxy).ok()?;
                stream.set_nonblocking(true).unwrap();
                Some(stream)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let connected = flood.len();
    // The health endpoint answers at once, the flood still arriving: its accept is not
    // starved of descriptors (it was, and held connections freed them only when the
    // proxy's 10 s handshake timeout closed them).
    let (status, ready) = get(edge.health, "/readyz")
        .await
        .expect("/readyz answers during the flood");
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("[+] cloud link: up"), "{ready}");
    // Edgecore cannot hold a thousand connections in 256 descriptors: every one it does
    // not hold must be refused (a reset now), none left waiting in the listen queue. Done
    // when those not refused fit in its descriptors beside what it held before, and their
    // count has stood still for half a second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut still) = (usize::MAX, 0);
    let held = loop {
        let held = flood.iter().filter(|s| !refused(s)).count();
        still = if held == last { still + 1 } else { 0 };
        last = held;
        if held + fds_before < NOFILE as usize && still >= 10 {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "{held} of {connected} connections neither served nor refused\n{}",
            edge.proc.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "flood: {FLOOD} connections, {held} held, {} refused ({} at connect); edgecore fds \
         {fds_before} -> {}",
        FLOOD - held,
        FLOOD - connected,
        fds(pid)
    );

    // While the flood is held: the process lives and has descriptors to spare...
    let mut proc = edge.proc;
    assert!(
        proc.process.0.try_wait().unwrap().is_none(),
        "edgecore died: {}",
        proc.text()
    );
    assert!(
        fds(pid) < NOFILE as usize,
        "edgecore ran out of descriptors"
    );
    // ... the cloud link delivers...
    cloud
        .send(change(
            NODE,
            operation::INSERT,
            "default",
            "late",
            "7",
            "10.96.0.7",
        ))
        .await;
    cloud.await_all_acked().await;
    // ... and metamanager's socket takes a new client, which finds what the link brought.
    let mut meta = MetaClient::connect(&edge.socket, Duration::from_secs(5))
        .await
        .unwrap();
    let late = meta
        .get("default", ResourceType::Service, "late")
        .await
        .unwrap()
        .expect("the change sent during the flood is stored");
    assert_eq!(late["spec"]["clusterIP"], "10.96.0.7");
    drop(meta);

    // The log says why, a few times at most, not once per refused connection.
    let text = proc.text();
    let said = text.matches("refusing new connections").count();
    let failed = text.matches("accept failed").count();
    eprintln!(
        "flood: {said} refusal warnings, {failed} failed accepts logged; edgecore used {} \
         CPU ticks over the flood",
        cpu_ticks(pid) - cpu_before
    );
    assert!(
        text.contains(&format!("descriptor limit ({NOFILE})")),
        "no warning of the refusals:\n{text}"
    );
    assert!(
        (1..=5).contains(&said) && failed <= 5,
        "{said} refusal warnings, {failed} failed accepts:\n{text}"
    );

    // Once the flood is gone, a new client is served.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(proxy, "http://web/").await {
            Ok((200, body)) => {
                assert!(body.starts_with("web"), "{body}");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "no client served after the flood: {other:?}\n{}",
                proc.text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proc.process.0.try_wait().unwrap().is_none());
}

/// The response size a slow reader asks for and never reads.
const LARGE: u64 = 64 << 20;

/// A backend that answers every connection's first bytes with [`LARGE`] bytes (an HTTP
/// response when they were an HTTP request, raw bytes otherwise) and counts what it wrote
/// on each connection: the proxy's push-back shows as writes that stop short.
async fn large_backend() -> (SocketAddr, Arc<Mutex<Vec<u64>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(Mutex::new(Vec::new()));
    let counts = written.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let written = counts.clone();
            let id = {
                let mut counts = written.lock().unwrap();
                counts.push(0);
                counts.len() - 1
            };
            tokio::spawn(async move {
                let mut first = [0u8; 4096];
                let Ok(n) = stream.read(&mut first).await else {
                    return;
                };
                if first[..n].starts_with(b"GET ") {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {LARGE}\r\n\r\n");
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = LARGE;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    written.lock().unwrap()[id] += n as u64;
                    left -= n as u64;
                }
            });
        }
    });
    (addr, written)
}

/// A connection to `addr` whose receive buffer stays small (setting it stops the kernel's
/// autotuning, which on loopback may grow it to 32 MiB): what the client does not read
/// then stays in the proxy's hands, not the client's kernel.
async fn small_window(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_a_large_answer_cost_the_proxy_no_memory() {
    let backend = backend::spawn("127.0.0.1", "web").await;
    let (large, written) = large_backend().await;
    let [svc, eps] = web(backend);
    let objects = [
        svc,
        eps,
        (
            "default/service/large",
            service("large", "10.96.40.2", 80, json!({})),
        ),
        ("default/endpoints/large", endpoints("large", &[large])),
    ];
    let edge = Edge::start(&objects, None, None).await;
    let (proxy, pid) = (edge.proxy, edge.pid());
    let before = rss_kib(pid);

    // Keep-alive HTTP: two requests for the large answer, pipelined, never read.
    let mut http = small_window(proxy).await;
    http.write_all(
        b"GET http://large/ HTTP/1.1\r\nHost: large\r\n\r\n\
          GET http://large/ HTTP/1.1\r\nHost: large\r\n\r\n",
    )
    .await
    .unwrap();
    // Plain TCP through CONNECT: a few bytes out, the large answer never read.
    let mut tcp = small_window(proxy).await;
    tcp.write_all(b"CONNECT large:80 HTTP/1.1\r\nHost: large:80\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    tcp.write_all(b"more, please").await.unwrap();

    // Both answers flow until every buffer on the way is full, then stop: the backend's
    // counts stand still (checked over half a second; a condition, not a timing).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut still) = (Vec::new(), 0);
    while still < 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = written.lock().unwrap().clone();
        still = if now == last && now.len() >= 2 {
            still + 1
        } else {
            0
        };
        last = now;
        assert!(
            Instant::now() < deadline,
            "the backend never stopped writing"
        );
    }
    assert!(
        last.iter().all(|&w| w < LARGE),
        "the backend wrote {last:?} bytes: a whole answer, nothing pushed back"
    );
    let (status, _, body) = get_via(&mut proxy_client(proxy).await, "http://web/").await;
    assert_eq!(
        status, 200,
        "another client is served beside the slow readers: {body}"
    );
    let after = rss_kib(pid);
    eprintln!(
        "two slow readers of 64 MiB (HTTP, CONNECT): the backend wrote {:?} KiB before it \
         was held back; edgecore RSS {before} KiB -> {after} KiB",
        last.iter().map(|w| w >> 10).collect::<Vec<_>>()
    );
    assert!(
        after.saturating_sub(before) < 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB with two slow readers"
    );
    drop((http, tcp));
}
