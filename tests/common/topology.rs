//! Three hosts in network namespaces, the way the tunnel (issue 15) is meant to run: a cloud
//! and two edges, each edge joined to the cloud by one veth of its own and to nothing else
//! (not to the host, not to the other edge). The cloud does not forward, so the only way from
//! edge-a to edge-b is through a process in the cloud, as on a real edge cluster whose nodes
//! sit behind NAT and reach only the cloud. Removed on drop, even when the test fails.
//!
//! Addresses are fixed: the namespaces reach nothing outside themselves, so two topologies
//! alive at once cannot collide. Edge-a's link is 10.203.1.0/24 (cloud .1, edge .2),
//! edge-b's 10.203.2.0/24, and the cloud also has 10.203.0.1 on its loopback, one address
//! both edges reach (an edgecore config can name it whichever edge it runs on).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::netns::{
    add_namespace, command_in, output_in, remove_namespace, run, spawn_in, unique_tag,
};
use super::{Process, WAIT};

/// The cloud's own address, on its loopback: reachable from both edges without forwarding.
pub const CLOUD_IP: &str = "10.203.0.1";

/// How long a connection that must not happen is given to happen. With forwarding off the
/// cloud drops the SYN without a word (checked here: a timeout, no ICMP), so every such probe
/// takes this long; they run at once. A SYN that got through would be answered in well
/// under a millisecond on a veth.
const REFUSE_WITHIN: Duration = Duration::from_secs(1);

/// One host of the topology: a namespace and its address.
pub struct Host {
    /// The namespace's name.
    pub name: String,
    /// Its address on its link (for the cloud, the loopback address both edges reach).
    pub ip: String,
    /// "cloud", "edge-a" or "edge-b", for messages.
    role: &'static str,
}

/// What one TCP connect attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The connection was accepted.
    Connected,
    /// A RST came back: the packet reached the host, no one listened.
    Refused,
    /// An ICMP unreachable came back (a router on the way would not forward).
    Unreachable,
    /// Nothing came back in time.
    TimedOut,
    /// Anything else, with python's words for it.
    Other(String),
}

/// Tries one connection and prints its outcome in one word; python3 because it is on every
/// machine these tests run on, and its socket errors name the outcome plainly.
const PROBE: &str = "\
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print('connected')
except socket.timeout:
    print('timeout')
except ConnectionRefusedError:
    print('refused')
except OSError as e:
    print('unreachable' if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else f'error {e}')
";

/// Accepts and closes connections on every address of its host; prints its port once
/// listening, so that the caller waits for that line rather than for a while.
const LISTENER: &str = "\
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 0))
s.listen(128)
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
";

impl Host {
    /// A new namespace with only its loopback; dropped, it is removed with its links.
    fn create(name: String, ip: &str, role: &'static str) -> Host {
        // Made before the namespace, so that a failure from here on still removes it.
        let host = Host {
            name,
            ip: ip.into(),
            role,
        };
        add_namespace(&host.name);
        host
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        command_in(&self.name, program)
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn output(&self, args: &[&str]) -> Output {
        output_in(&self.name, args)
    }

    /// Starts a long-running process inside the namespace, its output going to `log`.
    pub fn spawn(&self, args: &[&str], log: &std::path::Path) -> Child {
        spawn_in(&self.name, args, log)
    }

    /// Tries one TCP connection from this host to `ip:port`, giving up after `timeout`.
    pub fn connect(&self, ip: &str, port: u16, timeout: Duration) -> Reach {
        let out = self.output(&[
            "python3",
            "-c",
            PROBE,
            ip,
            &port.to_string(),
            &timeout.as_secs_f64().to_string(),
        ]);
        reach(&out)
    }

    /// Starts a probe without waiting for it, so that several run at once.
    fn start_probe(&self, ip: &str, port: u16, timeout: Duration) -> Child {
        self.command("python3")
            .args(["-c", PROBE, ip, &port.to_string()])
            .arg(timeout.as_secs_f64().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Starts a listener on every address of this host and waits until it listens; it is
    /// killed when the returned guard drops.
    fn listen(&self) -> (Process, u16) {
        let mut child = self
            .command("python3")
            .args(["-c", LISTENER])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let guard = Process(child);
        // The line is read on a thread of its own so that a listener that never starts
        // fails the test after WAIT instead of hanging it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no listener in {} within {WAIT:?}", self.role));
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("listener in {} said {line:?}", self.role));
        (guard, port)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        remove_namespace(&self.name);
    }
}

fn reach(out: &Output) -> Reach {
    let said = String::from_utf8_lossy(&out.stdout);
    match said.trim() {
        "connected" => Reach::Connected,
        "refused" => Reach::Refused,
        "unreachable" => Reach::Unreachable,
        "timeout" => Reach::TimedOut,
        other => Reach::Other(format!(
            "{other} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The cloud and two edges. Fields drop in order, each removing its namespace.
pub struct Topology {
    /// The cloud host: where cloudcore runs; reachable from both edges.
    pub cloud: Host,
    /// The first edge host.
    pub edge_a: Host,
    /// The second edge host.
    pub edge_b: Host,
    /// Whether the cloud forwards between the edges (only for the direct baseline).
    forwarding: bool,
}

impl Topology {
    /// The tunnel's topology: each edge reaches the cloud and nothing else.
    pub fn create() -> Topology {
        Self::build(false)
    }

    /// The same hosts with the cloud forwarding between the edges, as a router would: the
    /// "direct" baseline the tunnel is measured against, where edge-a reaches edge-b's
    /// addresses through the cloud's kernel.
    pub fn with_direct_routing() -> Topology {
        Self::build(true)
    }

    fn build(forwarding: bool) -> Topology {
        let (_, tag) = unique_tag();
        let topo = Topology {
            cloud: Host::create(format!("emt-{tag}-cloud"), CLOUD_IP, "cloud"),
            edge_a: Host::create(format!("emt-{tag}-a"), "10.203.1.2", "edge-a"),
            edge_b: Host::create(format!("emt-{tag}-b"), "10.203.2.2", "edge-b"),
            forwarding,
        };
        let cloud = &topo.cloud.name;
        run(&[
            "ip",
            "-n",
            cloud,
            "addr",
            "add",
            &format!("{CLOUD_IP}/32"),
            "dev",
            "lo",
        ]);
        // Said outright rather than left to the default: a new namespace can copy the host's
        // IPv4 settings (net.core.devconf_inherit_init_net), and a host running containers
        // forwards.
        let forward = format!("net.ipv4.ip_forward={}", u8::from(forwarding));
        run(&["ip", "netns", "exec", cloud, "sysctl", "-qw", &forward]);
        for (edge, cloud_if, subnet) in [(&topo.edge_a, "to-a", 1), (&topo.edge_b, "to-b", 2)] {
            // Both ends are made inside their namespaces: no interface ever exists on the
            // host, so no name there can clash and nothing is left behind on the host.
            run(&[
                "ip", "link", "add", "to-cloud", "netns", &edge.name, "type", "veth", "peer",
                "name", cloud_if, "netns", cloud,
            ]);
            let cloud_end = format!("10.203.{subnet}.1");
            run(&[
                "ip",
                "-n",
                cloud,
                "addr",
                "add",
                &format!("{cloud_end}/24"),
                "dev",
                cloud_if,
            ]);
            run(&["ip", "-n", cloud, "link", "set", cloud_if, "up"]);
            let edge_ns = &edge.name;
            run(&[
                "ip",
                "-n",
                edge_ns,
                "addr",
                "add",
                &format!("{}/24", edge.ip),
                "dev",
                "to-cloud",
            ]);
            run(&["ip", "-n", edge_ns, "link", "set", "to-cloud", "up"]);
            run(&[
                "ip", "-n", edge_ns, "route", "add", "default", "via", &cloud_end,
            ]);
        }
        topo
    }

    /// The cloud's address on edge-a's link (edge-a's default gateway).
    pub fn cloud_ip_for_a(&self) -> &str {
        "10.203.1.1"
    }

    /// The cloud's address on edge-b's link (edge-b's default gateway).
    pub fn cloud_ip_for_b(&self) -> &str {
        "10.203.2.1"
    }

    /// Proves, with real TCP connects to listeners on every host, that neither edge reaches
    /// the other while both reach the cloud (on its own address and on their link's), and
    /// the cloud reaches both. Panics naming the path that behaved otherwise.
    pub fn prove_isolated(&self) {
        assert!(
            !self.forwarding,
            "prove_isolated on a topology made with_direct_routing: its cloud forwards"
        );
        self.prove(false);
    }

    /// Proves that with the cloud forwarding each edge reaches the other (and the cloud).
    pub fn prove_routed(&self) {
        assert!(
            self.forwarding,
            "prove_routed on a topology made without direct routing"
        );
        self.prove(true);
    }

    fn prove(&self, edges_meet: bool) {
        let (_a, port_a) = self.edge_a.listen();
        let (_b, port_b) = self.edge_b.listen();
        let (_c, port_c) = self.cloud.listen();
        // (from, to's address, port, to's role, must connect)
        let mut paths: Vec<(&Host, &str, u16, &str, bool)> = Vec::new();
        for (edge, port, other, other_port, gateway) in [
            (
                &self.edge_a,
                port_a,
                &self.edge_b,
                port_b,
                self.cloud_ip_for_a(),
            ),
            (
                &self.edge_b,
                port_b,
                &self.edge_a,
                port_a,
                self.cloud_ip_for_b(),
            ),
        ] {
            // The listener answers on its own address: a failed edge-to-edge connect below
            // then means the path, not a dead listener.
            paths.push((edge, &edge.ip, port, edge.role, true));
            paths.push((edge, &other.ip, other_port, other.role, edges_meet));
            paths.push((edge, CLOUD_IP, port_c, "cloud", true));
            paths.push((edge, gateway, port_c, "cloud (link address)", true));
            paths.push((&self.cloud, &edge.ip, port, edge.role, true));
        }
        // All at once: the ones that must fail each take up to REFUSE_WITHIN.
        let probes: Vec<Child> = paths
            .iter()
            .map(|(from, ip, port, _, must)| {
                from.start_probe(ip, *port, if *must { WAIT } else { REFUSE_WITHIN })
            })
            .collect();
        let mut wrong = Vec::new();
        for ((from, ip, port, to, must), probe) in paths.iter().zip(probes) {
            let got = reach(&probe.wait_with_output().unwrap());
            let ok = if *must {
                got == Reach::Connected
            } else {
                matches!(got, Reach::Unreachable | Reach::TimedOut)
            };
            if !ok {
                let want = if *must {
                    "must connect"
                } else {
                    "must not reach"
                };
                wrong.push(format!(
                    "{} -> {to} at {ip}:{port} {want}, got {got:?}",
                    from.role
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "the topology is not as built ({}): {}",
            if edges_meet {
                "cloud forwarding between edges"
            } else {
                "edges reach only the cloud"
            },
            wrong.join("; ")
        );
    }
}
