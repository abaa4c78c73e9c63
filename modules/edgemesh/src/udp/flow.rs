//! One UDP flow: a client address talking to one Service port, pinned to the endpoint the
//! Service's strategy chose for its first datagram. Its connected socket towards the
//! endpoint carries the client's datagrams; a task relays the endpoint's replies back
//! through the port's socket (so they leave from the redirected port, which conntrack
//! turns back into the ClusterIP:port) and ends the flow once it has been idle.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::pktinfo;
use super::port::Flows;
use super::{Ports, Slot};
use crate::metrics::{Active, Reason, ServiceStats};

/// A live flow.
pub(super) struct Flow {
    upstream: UdpSocket,
    /// The address the client's datagrams arrived at, which replies leave from.
    local: Option<Ipv4Addr>,
    stats: Arc<ServiceStats>,
    /// Milliseconds since `born` of the last datagram either way.
    last: AtomicU64,
    born: Instant,
    _slot: Slot,
    _active: Active,
}

impl Flow {
    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.born.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }

    /// Sends a client's datagram to the endpoint, without waiting: a full socket buffer
    /// loses it, as a full link would.
    pub(super) fn forward(&self, datagram: &[u8]) {
        self.touch();
        // Straight to the socket: tokio's `try_send` answers WouldBlock until its reactor
        // has seen the new socket writable, which would lose every flow's first datagram.
        match socket2::SockRef::from(&self.upstream).send(datagram) {
            Ok(n) => {
                self.stats.datagrams_sent.inc();
                self.stats.bytes_sent.inc_by(n as u64);
            }
            // The endpoint's ICMP "port unreachable" from an earlier datagram, a full
            // buffer, or a local error: this datagram is lost.
            Err(_) => self.stats.error(Reason::upstream),
        }
    }
}

/// Starts `client`'s flow to Service port `vip`: chooses its endpoint, connects a socket to
/// it and starts relaying replies. `None` (the datagram dropped and counted) when the flow
/// cap is reached, the Service has no usable endpoint, or its QPS limit refuses a new flow.
pub(super) fn start(
    vip: SocketAddr,
    (client, local): (SocketAddr, Option<Ipv4Addr>),
    port: &Arc<UdpSocket>,
    ports: &Arc<Ports>,
    flows: &Flows,
    stop: &CancellationToken,
) -> Option<Arc<Flow>> {
    static CAP: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(60));
    static REFUSED: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(10));
    let catalog = ports.catalog.load();
    let Some(target) = catalog.lookup_udp(vip) else {
        // The port left the catalog (its socket closes soon): counted under the label of
        // traffic no Service took.
        ports.unknown.error(Reason::unknown_service);
        return None;
    };
    let Some(slot) = ports.budget.take() else {
        target.stats.error(Reason::flow_limit);
        CAP.warn(format_args!(
            "udp: {} flows at once (udp.maxFlows): datagrams that would start another are \
             dropped",
            ports.budget.max
        ));
        return None;
    };
    // ConsistentHash keys a flow on its client's address, as TCP does.
    let key = match client.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let endpoint = match ports.upstream.lease_datagram(target, Some(&key)) {
        // The lease only chooses: a flow is not a request in flight, and its breaker claim
        // is given back unsettled.
        Ok(lease) => lease.addr(),
        Err(e) => {
            target.stats.failed(&e);
            REFUSED.warn(format_args!("udp {vip} from {client}: {e}"));
            return None;
        }
    };
    let upstream = match connect(endpoint) {
        Ok(socket) => socket,
        Err(e) => {
            target.stats.error(Reason::connect_failed);
            REFUSED.warn(format_args!("udp {vip}: socket towards {endpoint}: {e}"));
            return None;
        }
    };
    let flow = Arc::new(Flow {
        upstream,
        local,
        stats: target.stats.clone(),
        last: AtomicU64::new(0),
        born: Instant::now(),
        _slot: slot,
        _active: Active::on(&target.stats),
    });
    target.stats.udp_flows.inc();
    let idle = target.udp_idle.unwrap_or(ports.default_idle);
    flows
        .lock()
        .expect("flows poisoned")
        .insert(client, flow.clone());
    tokio::spawn(replies(
        flow.clone(),
        client,
        port.clone(),
        flows.clone(),
        idle,
        stop.child_token(),
    ));
    Some(flow)
}

fn connect(endpoint: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = if endpoint.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(endpoint)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

thread_local! {
    /// One receive buffer per worker thread, not per flow: ten thousand idle flows hold
    /// no buffers.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 65_536]);
}

/// Relays the endpoint's datagrams to `client` until the flow is idle for `idle` or its
/// port closes; then the flow leaves the table.
async fn replies(
    flow: Arc<Flow>,
    client: SocketAddr,
    port: Arc<UdpSocket>,
    flows: Flows,
    idle: Duration,
    stop: CancellationToken,
) {
    loop {
        let quiet = flow.idle_for();
        if quiet >= idle {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(idle - quiet) => continue,
            ready = flow.upstream.readable() => {
                if ready.is_err() {
                    break;
                }
            }
        }
        // Everything that is there, without holding the buffer across an await.
        BUF.with_borrow_mut(|buf| {
            loop {
                match flow.upstream.try_recv(buf) {
                    Ok(n) => {
                        flow.touch();
                        match pktinfo::try_send(&port, &buf[..n], client, flow.local) {
                            Ok(_) => {
                                flow.stats.datagrams_received.inc();
                                flow.stats.bytes_received.inc_by(n as u64);
                            }
                            // The client's side is full or gone: lost, as on the wire.
                            Err(_) => flow.stats.error(Reason::client_aborted),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // ICMP "port unreachable" from the endpoint: nothing listens there (now).
                    Err(_) => {
                        flow.stats.error(Reason::upstream);
                        break;
                    }
                }
            }
        });
    }
    let mut table = flows.lock().expect("flows poisoned");
    if table.get(&client).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
        table.remove(&client);
    }
}
