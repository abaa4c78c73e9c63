//! The tunnel on three hosts, as an operator would set it up: network namespaces `cloud`,
//! `edge-a` and `edge-b`, each edge routed only to the cloud (proven first). cloudcore runs
//! in the cloud; an edgecore on each edge, edge-a with real iptables interception. Apps on
//! edge-a call ClusterIPs with curl and redis-cli and are answered by pods on edge-b and in
//! the cloud, whose only way there is the cloud link; `dig` and a UDP client on edge-a are
//! answered by dnsmasq on edge-b and a UDP echo in the cloud, the same way. Needs root, as
//! CI has.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Process;
use common::netns::is_root;
use common::three::{endpoints_at, write_manifests};
use common::topology::{CLOUD_IP, Host, Topology};
use serde_json::{Value, json};

fn service(name: &str, ip: &str, port: u16, app_protocol: Option<&str>) -> Value {
    let mut port_spec = json!({"name": "main", "port": port, "protocol": "TCP"});
    if let Some(p) = app_protocol {
        port_spec["appProtocol"] = json!(p);
    }
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [port_spec]}})
}

/// Serves `dir` over HTTP from inside `host` on `ip:port` (python3's http.server).
fn pod(host: &Host, ip: &str, port: u16, dir: &Path, who: &str, log: &Path) -> Process {
    let root = dir.join(who);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("who"), format!("{who}\n")).unwrap();
    Process(host.spawn(
        &[
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            ip,
            "--directory",
            root.to_str().unwrap(),
        ],
        log,
    ))
}

/// Runs `args` in `host` until its stdout contains `expect` (30 s at most).
fn until(host: &Host, args: &[&str], expect: &str, logs: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = host.output(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(expect) {
            return text;
        }
        if Instant::now() > deadline {
            let tail: String = ["cloud.log", "edge-a.log", "edge-b.log"]
                .iter()
                .map(|f| {
                    let t = std::fs::read_to_string(logs.join(f)).unwrap_or_default();
                    let start = t.len().saturating_sub(1500);
                    format!("--- {f}\n{}", &t[start..])
                })
                .collect();
            panic!("{args:?} never gave {expect:?}: {text}\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A UDP Service with one port, `port`.
fn udp_service(name: &str, ip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "main", "port": port, "protocol": "UDP"}]}})
}

/// Its endpoint at `ip:port` on `node`.
fn udp_endpoints(name: &str, ip: &str, port: u16, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [{"addresses": [{"ip": ip, "nodeName": node}],
                     "ports": [{"name": "main", "port": port, "protocol": "UDP"}]}]})
}

/// A UDP echo server: answers each datagram with `echo:` and the datagram, and logs the
/// size of each it got.
const ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(65535)
    print(len(data), flush=True)
    s.sendto(b"echo:" + data, peer)
"#;

/// A UDP client: from one connected socket (so only replies from the ClusterIP:port it
/// addressed are taken), sends datagrams of the sizes given, each of its own bytes, and
/// prints `ok <size>` for each that came back whole, in order.
const CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))
for i, size in enumerate(int(n) for n in sys.argv[3:]):
    payload = bytes((i * 7 + k) % 251 for k in range(size))
    for attempt in range(10):
        s.send(payload)
        try:
            reply = s.recv(65535)
        except socket.timeout:
            continue
        if reply == b"echo:" + payload:
            print("ok", size, flush=True)
        else:
            print("bad", size, len(reply), flush=True)
        break
"#;

fn curl(host: &Host, url: &str) -> String {
    let out = host.output(&["curl", "-s", "--max-time", "5", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn edge_a_reaches_pods_on_edge_b_and_in_the_cloud_through_the_cloud_link() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces and iptables");
        return;
    }
    let topo = Topology::create();
    topo.prove_isolated();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a_ip, b_ip) = (topo.edge_a.ip.clone(), topo.edge_b.ip.clone());

    let _pods = [
        pod(
            &topo.edge_b,
            &b_ip,
            8080,
            d,
            "pod-on-edge-b",
            &d.join("pb.log"),
        ),
        pod(
            &topo.cloud,
            CLOUD_IP,
            8081,
            d,
            "pod-in-cloud",
            &d.join("pc.log"),
        ),
        pod(
            &topo.edge_a,
            &a_ip,
            8082,
            d,
            "pod-on-edge-a",
            &d.join("pa.log"),
        ),
    ];
    let _redis = Process(topo.edge_b.spawn(
        &[
            "redis-server",
            "--bind",
            &b_ip,
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        &d.join("redis.log"),
    ));

    // A real DNS server on edge-b, and a UDP echo in the cloud.
    let _dns = Process(topo.edge_b.spawn(
        &[
            "dnsmasq",
            "--no-daemon",
            "--port=5353",
            &format!("--listen-address={b_ip}"),
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--address=/shop.example/10.1.2.3",
            &format!("--pid-file={}", d.join("dnsmasq.pid").display()),
        ],
        &d.join("dnsmasq.log"),
    ));
    let echo_py = d.join("echo.py");
    std::fs::write(&echo_py, ECHO).unwrap();
    let _echo = Process(topo.cloud.spawn(
        &["python3", echo_py.to_str().unwrap(), CLOUD_IP, "7007"],
        &d.join("echo.log"),
    ));

    let manifests = d.join("manifests");
    write_manifests(
        &manifests,
        &[
            service("onb", "10.96.20.1", 80, None),
            endpoints_at("onb", &[(&b_ip, 8080, Some("edge-b"))]),
            service("incloud", "10.96.20.2", 80, None),
            endpoints_at("incloud", &[(CLOUD_IP, 8081, Some("cloud-1"))]),
            service("mixed", "10.96.20.3", 80, None),
            endpoints_at(
                "mixed",
                &[(&a_ip, 8082, Some("edge-a")), (&b_ip, 8080, Some("edge-b"))],
            ),
            service("redis", "10.96.20.4", 6379, None),
            endpoints_at("redis", &[(&b_ip, 6379, Some("edge-b"))]),
            udp_service("dns", "10.96.20.5", 53),
            udp_endpoints("dns", &b_ip, 5353, "edge-b"),
            udp_service("uecho", "10.96.20.6", 7),
            udp_endpoints("uecho", CLOUD_IP, 7007, "cloud-1"),
        ],
    );
    let cloud_cfg = d.join("cloud.yaml");
    std::fs::write(
        &cloud_cfg,
        format!(
            "health: {{address: \"127.0.0.1:10550\"}}\n\
             modules:\n  cloudHub: {{address: \"{CLOUD_IP}:10000\", insecure: true, objectSyncDb: \"{}\"}}\n  \
             edgeController: {{source: manifests, manifests: {{dir: \"{}\", pollIntervalMs: 100}}, \
             versionsDb: \"{}\"}}\n",
            d.join("object-sync.db").display(),
            manifests.display(),
            d.join("versions.db").display()
        ),
    )
    .unwrap();
    let _cloud = Process(topo.cloud.spawn(
        &[
            env!("CARGO_BIN_EXE_cloudcore"),
            "--config",
            cloud_cfg.to_str().unwrap(),
        ],
        &d.join("cloud.log"),
    ));
    let mut edges = Vec::new();
    for (node, host, iptables) in [
        ("edge-a", &topo.edge_a, true),
        ("edge-b", &topo.edge_b, false),
    ] {
        let cfg = d.join(format!("{node}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "health: {{address: \"127.0.0.1:10350\"}}\n\
                 modules:\n  \
                 edgeHub: {{server: \"{CLOUD_IP}:10000\", insecure: true, nodeId: {node}, reconnectInitialMs: 100}}\n  \
                 metaManager: {{dbPath: \"{d}/{node}.db\", socketPath: \"{d}/{node}.sock\"}}\n  \
                 edgeMesh: {{iptables: {iptables}, iptablesSyncMs: 200, proxyListen: \"\"}}\n",
                d = d.display()
            ),
        )
        .unwrap();
        edges.push(Process(host.spawn(
            &[
                env!("CARGO_BIN_EXE_edgecore"),
                "--config",
                cfg.to_str().unwrap(),
            ],
            &d.join(format!("{node}.log")),
        )));
    }

    let a = &topo.edge_a;
    // A ClusterIP on edge-a, answered by the pod on edge-b and by the pod in the cloud.
    until(
        a,
        &["curl", "-s", "--max-time", "2", "http://10.96.20.1/who"],
        "pod-on-edge-b",
        d,
    );
    until(
        a,
        &["curl", "-s", "--max-time", "2", "http://10.96.20.2/who"],
        "pod-in-cloud",
        d,
    );
    // One endpoint here, one on edge-b: every request answered, both used.
    let (mut here, mut there) = (0, 0);
    for _ in 0..16 {
        let body = curl(a, "http://10.96.20.3/who");
        here += body.contains("pod-on-edge-a") as u32;
        there += body.contains("pod-on-edge-b") as u32;
    }
    assert_eq!(here + there, 16, "every request answered");
    assert!(
        here > 0 && there > 0,
        "both used: {here} here, {there} on edge-b"
    );
    // redis-cli through the tunnel to a real redis-server on edge-b.
    until(
        a,
        &["redis-cli", "-h", "10.96.20.4", "-p", "6379", "PING"],
        "PONG",
        d,
    );
    let set = a.output(&[
        "redis-cli",
        "-h",
        "10.96.20.4",
        "-p",
        "6379",
        "SET",
        "greeting",
        "through the cloud",
    ]);
    assert!(String::from_utf8_lossy(&set.stdout).contains("OK"));
    let got = a.output(&[
        "redis-cli",
        "-h",
        "10.96.20.4",
        "-p",
        "6379",
        "GET",
        "greeting",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "through the cloud"
    );

    // UDP through the tunnel: dig on edge-a, through a ClusterIP, to dnsmasq on edge-b.
    until(
        a,
        &[
            "dig",
            "+short",
            "+time=1",
            "+tries=1",
            "@10.96.20.5",
            "shop.example",
        ],
        "10.1.2.3",
        d,
    );
    // And to the echo in the cloud: datagrams from 1 byte to 8000 come back whole, from
    // the ClusterIP:port they were sent to, and the echo got each at its size.
    let client_py = d.join("client.py");
    std::fs::write(&client_py, CLIENT).unwrap();
    let sizes = ["1", "512", "1400", "8000"];
    let mut args = vec!["python3", client_py.to_str().unwrap(), "10.96.20.6", "7"];
    args.extend(sizes);
    let out = until(a, &args, "ok 8000", d);
    let expected: String = sizes.iter().map(|n| format!("ok {n}\n")).collect();
    assert_eq!(out, expected, "every datagram back whole");
    let got = std::fs::read_to_string(d.join("echo.log")).unwrap();
    for size in sizes {
        assert!(
            got.lines().any(|l| l.trim() == size),
            "the echo got a {size}-byte datagram: {got}"
        );
    }
    assert!(
        !got.lines().any(|l| !sizes.contains(&l.trim())),
        "nothing else reached the echo: {got}"
    );

    // Still no direct way from edge-a to edge-b: everything above went through the cloud.
    topo.prove_isolated();
    drop(edges);
}
