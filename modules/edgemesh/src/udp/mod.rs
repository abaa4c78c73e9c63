//! UDP Services: datagrams to a ClusterIP:port are balanced per flow — a client address and
//! a Service port — to one endpoint, kept while datagrams flow either way, and answered from
//! the ClusterIP:port the client addressed.
//!
//! **Why a socket per Service port, and not TPROXY.** TCP interception redirects every
//! Service port to one listener and asks each connection where it was going
//! (`SO_ORIGINAL_DST`), but the kernel answers that for TCP and SCTP only, and a REDIRECTed
//! datagram's `IP_ORIGDSTADDR` is the rewritten address. That leaves two ways to know a
//! datagram's Service: TPROXY (the packet keeps its destination; needs the `xt_TPROXY`
//! module, a policy-routing rule and table, and, for this host's own traffic, marking in
//! OUTPUT and rerouting through `lo`; replies must be sent from the ClusterIP with
//! `IP_TRANSPARENT`), or a listening socket per Service port, each with a nat REDIRECT of
//! its own. This takes the second, as kube-proxy's userspace mode did: it needs nothing
//! beyond the nat table the TCP path already uses, conntrack turns the replies' source
//! back into the ClusterIP:port by itself, and it costs one descriptor per UDP Service port.
//!
//! Each flow has a connected socket towards its endpoint, so its replies are told apart
//! from other flows' by the kernel, or, for an endpoint on another node or in the cloud, a
//! datagram stream through the tunnel ([`crate::tunnel::datagram`]); a flow is idle when no datagram went either way for
//! its Service's idle time (`edgemesh.io/udp-idle-timeout`, else `udp.idleTimeoutMs`), and
//! flows are capped over all Services (`udp.maxFlows`).

pub mod associate;
mod flow;
mod pktinfo;
mod port;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::metrics::ServiceStats;
use crate::upstream::Upstream;

/// Annotation setting a Service's UDP flow idle time (`30s`, `500ms`, `2m`).
pub const IDLE_ANNOTATION: &str = "edgemesh.io/udp-idle-timeout";

/// Reads an idle time: a number with `ms`, `s`, `m` or `h`, between 100 ms and a day.
pub fn parse_idle(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s or 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    };
    if !(Duration::from_millis(100)..=Duration::from_secs(86_400)).contains(&d) {
        return Err(format!("{text:?} must be between 100ms and 24h"));
    }
    Ok(d)
}

/// What every UDP flow needs, intercepted or from the explicit proxy.
#[derive(Debug)]
pub struct Ports {
    /// The Services.
    pub catalog: Arc<ArcSwap<Catalog>>,
    /// Chooses endpoints, and opens datagram streams to other nodes.
    pub upstream: Upstream,
    /// Idle time of a flow whose Service sets none.
    pub default_idle: Duration,
    /// The cap on live flows.
    pub budget: Arc<Budget>,
    /// The label of datagrams for a port that left the catalog.
    pub unknown: Arc<ServiceStats>,
}

/// The flow cap over all Services.
#[derive(Debug)]
pub struct Budget {
    live: AtomicUsize,
    max: usize,
}

impl Budget {
    /// A cap of `max` flows.
    pub fn new(max: usize) -> Self {
        Budget {
            live: AtomicUsize::new(0),
            max,
        }
    }

    /// Flows live now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

/// One flow's place under the cap, given back when dropped.
struct Slot(Arc<Budget>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One Service port's listening socket.
struct Listening {
    port: u16,
    stop: CancellationToken,
}

/// The UDP side of edgemesh: a listening socket per UDP Service port.
pub struct UdpProxy {
    ip: IpAddr,
    /// The worker runtimes: one socket of each port per worker, served there.
    runtimes: Vec<tokio::runtime::Handle>,
    ports: Arc<Ports>,
    listening: Mutex<HashMap<SocketAddr, Listening>>,
    stop: CancellationToken,
}

impl UdpProxy {
    /// Listens on `ip` (the interception listener's address), one port per Service port,
    /// with a socket of it on each of `runtimes` (the workers'; the current runtime when
    /// empty).
    pub(crate) fn new(
        ip: IpAddr,
        runtimes: Vec<tokio::runtime::Handle>,
        ports: Ports,
        stop: CancellationToken,
    ) -> Self {
        let runtimes = if runtimes.is_empty() {
            vec![tokio::runtime::Handle::current()]
        } else {
            runtimes
        };
        UdpProxy {
            ip,
            runtimes,
            ports: Arc::new(ports),
            listening: Mutex::default(),
            stop,
        }
    }

    /// The flow cap and its count.
    pub fn budget(&self) -> Arc<Budget> {
        self.ports.budget.clone()
    }

    /// Opens a socket for every UDP Service port of `catalog` that has none and closes
    /// those of ports it no longer has (their flows end with them); gives back where each
    /// ClusterIP:port is to be redirected, for the rules.
    pub fn reconcile(&self, catalog: &Catalog) -> Vec<(SocketAddr, u16)> {
        let vips = catalog.udp_vips();
        let mut listening = self.listening.lock().expect("udp ports poisoned");
        listening.retain(|vip, l| {
            let keep = vips.contains(vip);
            if !keep {
                l.stop.cancel();
            }
            keep
        });
        for vip in vips.iter().filter(|v| v.is_ipv4()) {
            if listening.contains_key(vip) {
                continue;
            }
            match self.open(*vip) {
                Ok(l) => {
                    listening.insert(*vip, l);
                }
                Err(e) => log::error!("udp: cannot listen for {vip}: {e}"),
            }
        }
        let mut out: Vec<(SocketAddr, u16)> =
            listening.iter().map(|(vip, l)| (*vip, l.port)).collect();
        out.sort();
        out
    }

    /// Opens a socket per worker on one new port (`SO_REUSEPORT`), each read by a task on
    /// its worker's runtime, so a busy Service port is read on every core and a flow's
    /// datagrams, its socket towards the endpoint and its task stay on one thread, with no
    /// wake-ups across cores (as the TCP path does). The kernel sends a client address's
    /// datagrams always to the same socket, so each socket keeps its own flows.
    fn open(&self, vip: SocketAddr) -> std::io::Result<Listening> {
        let mut sockets = vec![reuse_port_socket(SocketAddr::new(self.ip, 0))?];
        let bound = sockets[0].local_addr()?;
        for _ in 1..self.runtimes.len() {
            sockets.push(reuse_port_socket(bound)?);
        }
        let stop = self.stop.child_token();
        for (socket, runtime) in sockets.into_iter().zip(&self.runtimes) {
            let (ports, stop) = (self.ports.clone(), stop.clone());
            // Registered with the worker's reactor, so made there.
            runtime.spawn(async move {
                let socket = match UdpSocket::from_std(socket)
                    .and_then(|s| pktinfo::enable(&s).map(|()| s))
                {
                    Ok(socket) => socket,
                    Err(e) => {
                        log::error!("udp: {vip}: {e}");
                        return;
                    }
                };
                port::serve(vip, Arc::new(socket), ports, stop).await;
            });
        }
        log::debug!("udp: {vip} served on port {}", bound.port());
        Ok(Listening {
            port: bound.port(),
            stop,
        })
    }
}

fn reuse_port_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_times_read_with_their_unit() {
        assert_eq!(parse_idle("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_idle("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_idle("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_idle("10"), Ok(Duration::from_secs(10)));
        for bad in ["", "x", "10d", "50ms", "25h", "-1s"] {
            assert!(parse_idle(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_budget_caps_flows_and_frees_on_drop() {
        let budget = Arc::new(Budget::new(2));
        let a = budget.take().unwrap();
        let _b = budget.take().unwrap();
        assert!(budget.take().is_none());
        drop(a);
        assert_eq!(budget.live(), 1);
        assert!(budget.take().is_some());
    }
}
