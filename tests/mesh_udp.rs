//! UDP Services with real iptables, inside a network namespace the test creates: `dig`
//! against dnsmasq behind a UDP ClusterIP, and UDP echo servers (in this process, on the
//! host end of the namespace's link, logging what reaches them) behind a Service with two
//! endpoints — flows balanced and pinned, replies from the ClusterIP:port the client
//! addressed, idle flows expired, a flood of flows past the cap dropped with memory
//! bounded. Needs root, as CI has.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use common::mesh::{Seen, udp_echoes};
use common::netns::{Netns, is_root};
use common::{Process, eventually, rss_kib};
use serde_json::{Value, json};

/// A client run inside the namespace: `flows` sockets, each sending `count` datagrams to
/// `target` and reading the replies; prints one JSON object per flow.
const CLIENT: &str = r#"
import json, socket, sys
target, port, flows, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks = []
for f in range(flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    s.bind(("0.0.0.0", 0))
    socks.append(s)
for s in socks:
    out = {"port": s.getsockname()[1], "replies": []}
    for i in range(count):
        s.sendto(b"ping-%d" % i, (target, port))
        try:
            data, src = s.recvfrom(65536)
            out["replies"].append([data.decode(), "%s:%d" % src])
        except socket.timeout:
            out["replies"].append(None)
    print(json.dumps(out), flush=True)
"#;

fn service(name: &str, ip: &str, port: u16, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"clusterIP": ip, "ports": [
            {"name": "udp", "port": port, "protocol": "UDP"},
            {"name": "tcp", "port": port, "protocol": "TCP"}]}})
}

/// Endpoints with one subset per address, each with its own UDP port.
fn endpoints(name: &str, addrs: &[SocketAddr], node: &str) -> Value {
    let subsets: Vec<Value> = addrs
        .iter()
        .map(|a| {
            json!({"addresses": [{"ip": a.ip().to_string(), "nodeName": node}],
                   "ports": [{"name": "udp", "port": a.port(), "protocol": "UDP"}]})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "default"}, "subsets": subsets})
}

fn start_edgecore(ns: &Netns, dir: &Path, db: &Path, udp: &str) -> Process {
    common::mesh::edgecore_in(ns, dir, db, "", &format!(", udp: {udp}"))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One echo server behind Service `echo` (10.96.9.7:7/UDP), stored in `db`.
async fn one_echo_service(ns: &Netns, db: &Path) -> Seen {
    let (echoes, seen) = udp_echoes(&ns.host_ip, 1).await;
    common::mesh::store(
        db,
        &[
            (
                "default/service/echo",
                service("echo", "10.96.9.7", 7, json!({})),
            ),
            (
                "default/endpoints/echo",
                endpoints("echo", &echoes, "edge-t"),
            ),
        ],
    )
    .await;
    seen
}

/// UDP rules in our chain inside `ns`.
fn udp_rules(ns: &Netns) -> usize {
    let out = ns.output(&["iptables", "-t", "nat", "-S", "EDGE-MESH"]);
    stdout(&out)
        .lines()
        .filter(|l| l.starts_with("-A") && l.contains("-p udp"))
        .count()
}

/// One flow's replies, as the client saw them: (payload, source).
struct FlowSeen {
    port: u16,
    replies: Vec<Option<(String, String)>>,
}

fn run_client(
    ns: &Netns,
    script: &Path,
    target: &str,
    port: u16,
    flows: usize,
    count: usize,
) -> Vec<FlowSeen> {
    let out = ns.output(&[
        "python3",
        script.to_str().unwrap(),
        target,
        &port.to_string(),
        &flows.to_string(),
        &count.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            FlowSeen {
                port: v["port"].as_u64().unwrap() as u16,
                replies: v["replies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        r.as_array().map(|p| {
                            (
                                p[0].as_str().unwrap().to_owned(),
                                p[1].as_str().unwrap().to_owned(),
                            )
                        })
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A metric's value inside `ns` (edgecore's health address is the namespace's loopback).
fn metric(ns: &Netns, series: &str) -> f64 {
    let out = ns.output(&[
        "curl",
        "-s",
        "--max-time",
        "5",
        "http://127.0.0.1:10350/metrics",
    ]);
    common::mesh::sample(&stdout(&out), series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_services_are_balanced_per_flow_through_iptables() {
    assert!(
        is_root(),
        "this test needs root for namespaces and iptables (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    let script = dir.path().join("client.py");
    std::fs::write(&script, CLIENT).unwrap();

    // dnsmasq, a real DNS server, inside the namespace.
    let _dns = Process(ns.spawn(
        &[
            "dnsmasq",
            "--no-daemon",
            "--port=5353",
            &format!("--listen-address={}", ns.ip),
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--address=/shop.example/10.1.2.3",
            &format!("--pid-file={}", dir.path().join("dnsmasq.pid").display()),
        ],
        &dir.path().join("dnsmasq.log"),
    ));
    let dns_endpoint: SocketAddr = format!("{}:5353", ns.ip).parse().unwrap();
    let (echoes, seen) = udp_echoes(&ns.host_ip, 2).await;

    let db = dir.path().join("edge.db");
    common::mesh::store(
        &db,
        &[
            (
                "default/service/dns",
                service("dns", "10.96.9.53", 53, json!({})),
            ),
            (
                "default/endpoints/dns",
                endpoints("dns", &[dns_endpoint], "edge-t"),
            ),
            (
                "default/service/echo",
                service(
                    "echo",
                    "10.96.9.7",
                    7,
                    json!({"edgemesh.io/udp-idle-timeout": "1s"}),
                ),
            ),
            (
                "default/endpoints/echo",
                endpoints("echo", &echoes, "edge-t"),
            ),
        ],
    )
    .await;
    let _edgecore = start_edgecore(&ns, dir.path(), &db, "{maxFlows: 1000}");
    eventually("UDP rules for both Services", || {
        let n = udp_rules(&ns);
        async move { n == 2 }
    })
    .await;

    // dig, against dnsmasq, through the ClusterIP.
    let mut answer = String::new();
    for _ in 0..20 {
        let out = ns.output(&[
            "dig",
            "+short",
            "+time=1",
            "+tries=1",
            "@10.96.9.53",
            "shop.example",
        ]);
        answer = stdout(&out);
        if answer.trim() == "10.1.2.3" {
            break;
        }
    }
    assert_eq!(answer.trim(), "10.1.2.3");

    // Twenty flows of five datagrams: every reply comes from the ClusterIP:port, each flow
    // stays on one endpoint, and both endpoints get flows.
    let flows = run_client(&ns, &script, "10.96.9.7", 7, 20, 5);
    assert_eq!(flows.len(), 20);
    let mut used = BTreeSet::new();
    for flow in &flows {
        let ids: BTreeSet<&str> = flow
            .replies
            .iter()
            .map(|r| {
                let (payload, source) = r.as_ref().expect("every datagram answered");
                assert_eq!(source, "10.96.9.7:7", "replies come from the address asked");
                payload.split(':').next().unwrap()
            })
            .collect();
        assert_eq!(ids.len(), 1, "flow {} moved between endpoints", flow.port);
        used.extend(ids.iter().map(|s| s.to_string()));
    }
    assert_eq!(used.len(), 2, "both endpoints chosen over many flows");
    // The echo servers saw every datagram once, as sent.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 100);
        let mut per_source: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
        for (_, from, payload) in seen.iter() {
            per_source
                .entry(*from)
                .or_default()
                .push(String::from_utf8(payload.clone()).unwrap());
        }
        assert_eq!(per_source.len(), 20, "one upstream socket per flow");
        for payloads in per_source.values() {
            assert_eq!(
                payloads,
                &(0..5).map(|i| format!("ping-{i}")).collect::<Vec<_>>()
            );
        }
    }
    let flows_series = "edgemesh_requests_total{service=\"default/echo\",path=\"udp\"}";
    assert_eq!(metric(&ns, flows_series), 20.0);
    assert_eq!(
        metric(
            &ns,
            "edgemesh_datagrams_total{service=\"default/echo\",direction=\"sent\"}"
        ),
        100.0
    );

    // Idle flows expire (1 s for this Service): none left open.
    eventually("echo flows expired", || {
        let open = metric(&ns, "edgemesh_active_connections{service=\"default/echo\"}");
        async move { open == 0.0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_flows_past_the_cap_is_dropped_with_memory_bounded() {
    assert!(
        is_root(),
        "this test needs root for namespaces and iptables (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    let db = dir.path().join("edge.db");
    let _seen = one_echo_service(&ns, &db).await;
    let edgecore = start_edgecore(
        &ns,
        dir.path(),
        &db,
        "{maxFlows: 100, idleTimeoutMs: 600000}",
    );
    eventually("a UDP rule", || {
        let n = udp_rules(&ns);
        async move { n == 1 }
    })
    .await;
    let before = rss_kib(edgecore.0.id());

    // 2,000 flows of one datagram each: 100 are served, the rest dropped at once (some
    // may be dropped by the kernel before edgemesh reads them: a socket buffer is finite).
    let answered = flood(&ns, dir.path(), 2000);
    assert_eq!(answered, 100, "exactly the cap is served");
    let flows_series = "edgemesh_requests_total{service=\"default/echo\",path=\"udp\"}";
    assert_eq!(metric(&ns, flows_series), 100.0);
    let capped = "edgemesh_errors_total{service=\"default/echo\",reason=\"flow_limit\"}";
    assert!(metric(&ns, capped) >= 1.0);
    let after = rss_kib(edgecore.0.id());
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB for 100 flows"
    );
    let log = std::fs::read_to_string(dir.path().join("edgecore.log")).unwrap();
    assert_eq!(log.matches("udp.maxFlows").count(), 1, "one warning: {log}");
}

/// The flood: `flows` sockets each send one datagram, then replies are read for a while;
/// prints how many sockets got one.
const FLOOD: &str = r#"
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
target, port, flows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for f in range(flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.bind(("0.0.0.0", 0))
    s.sendto(b"flood", (target, port))
    socks.append(s)
answered = set()
deadline = time.time() + 3.0
while time.time() < deadline:
    time.sleep(0.05)
    for s in socks:
        try:
            s.recvfrom(65536)
            answered.add(s.fileno())
        except BlockingIOError:
            pass
print(len(answered), flush=True)
"#;

/// Runs the flood inside `ns` against the echo Service; the number of flows answered.
fn flood(ns: &Netns, dir: &Path, flows: usize) -> usize {
    let script = dir.join("flood.py");
    std::fs::write(&script, FLOOD).unwrap();
    let out = ns.output(&[
        "python3",
        script.to_str().unwrap(),
        "10.96.9.7",
        "7",
        &flows.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out).trim().parse().unwrap()
}

/// One datagram from a fixed source port, one reply awaited for a second; prints the reply
/// or nothing.
const ONESHOT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(1.0)
s.sendto(b"again", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recvfrom(65536)[0].decode(), flush=True)
except socket.timeout:
    pass
"#;

/// The redirect of the echo Service port: the port its rule sends datagrams to.
fn echo_redirect(ns: &Netns) -> Option<String> {
    let out = ns.output(&["iptables", "-t", "nat", "-S", "EDGE-MESH"]);
    stdout(&out)
        .lines()
        .find(|l| l.contains("-p udp") && l.contains("10.96.9.7"))
        .and_then(|l| l.split("--to-ports ").nth(1))
        .map(|p| p.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_is_served_again_after_a_restart() {
    assert!(
        is_root(),
        "this test needs root for namespaces and iptables (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    let script = dir.path().join("oneshot.py");
    std::fs::write(&script, ONESHOT).unwrap();
    let db = dir.path().join("edge.db");
    let _seen = one_echo_service(&ns, &db).await;
    // Always the same source port, as a syslog or metrics agent keeps.
    let send = || {
        let out = ns.output(&[
            "python3",
            script.to_str().unwrap(),
            "10.96.9.7",
            "7",
            "40555",
        ]);
        stdout(&out).trim().to_owned()
    };
    let edgecore = start_edgecore(&ns, dir.path(), &db, "{}");
    eventually("a UDP rule", || {
        let r = echo_redirect(&ns);
        async move { r.is_some() }
    })
    .await;
    let first = echo_redirect(&ns).unwrap();
    assert_eq!(send(), "0:again");
    drop(edgecore);

    // A new edgecore redirects the Service port to a new socket; the client's conntrack
    // entry still names the old one until edgemesh forgets it.
    let _edgecore = start_edgecore(&ns, dir.path(), &db, "{}");
    eventually("the rule moved to the new socket", || {
        let r = echo_redirect(&ns);
        let first = first.clone();
        async move { r.is_some_and(|r| r != first) }
    })
    .await;
    let mut answer = String::new();
    for _ in 0..5 {
        answer = send();
        if !answer.is_empty() {
            break;
        }
    }
    assert_eq!(
        answer, "0:again",
        "the same client address is served after the restart"
    );
}
