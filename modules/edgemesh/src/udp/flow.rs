//! One UDP flow: a client address talking to one Service port, pinned to the endpoint the
//! Service's strategy chose for its first datagram. An endpoint this node reaches itself
//! gets a connected socket; one on another node or in the cloud gets a datagram stream
//! through the tunnel. A task relays the endpoint's replies back through the port's socket
//! (so they leave from the redirected port, which conntrack turns back into the
//! ClusterIP:port) and ends the flow once it has been idle.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::pktinfo;
use super::port::Flows;
use super::{Ports, Slot};
use crate::metrics::{Active, Reason, ServiceStats};
use crate::tunnel::DatagramStream;
use crate::tunnel::datagram::{Sent, connect_udp};
use crate::upstream::{Claim, TunnelRoute};

/// Datagrams a tunnelled flow keeps while its stream opens; beyond, they are dropped.
const OPENING_QUEUE: usize = 16;

/// New flows refused, logged at most every 10 s.
static REFUSED: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(10));

/// Where a flow's datagrams go.
enum Way {
    /// A socket connected to the endpoint (this node's, or a routed pod network's).
    Socket(UdpSocket),
    /// A datagram stream through the tunnel to the endpoint's node or the cloud.
    Tunnel(Mutex<Tunneled>),
}

/// A tunnelled flow's stream.
enum Tunneled {
    /// Being opened: the datagrams that came meanwhile.
    Opening(Vec<Box<[u8]>>),
    /// Open.
    Open(Arc<DatagramStream>),
    /// Ended; datagrams that still arrive before the flow leaves the table are lost.
    Closed,
}

/// Where a flow's replies go, and the key of the flow in its table.
pub(super) struct Return {
    /// The client.
    pub client: SocketAddr,
    /// The address the client's datagrams arrived at, which replies leave from (an
    /// intercepted flow's ClusterIP, after conntrack).
    pub local: Option<Ipv4Addr>,
    /// The flow's key in its table: the client for an intercepted port, the Service
    /// address for a SOCKS5 association (whose client is fixed).
    pub key: SocketAddr,
    /// Bytes put before each reply (a SOCKS5 UDP header naming the Service).
    pub header: Option<Box<[u8]>>,
}

/// A live flow.
pub(super) struct Flow {
    way: Way,
    /// The address the client's datagrams arrived at, which replies leave from.
    local: Option<Ipv4Addr>,
    /// Bytes put before each reply.
    header: Option<Box<[u8]>>,
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

    /// Sends a client's datagram towards the endpoint, without waiting: a full socket
    /// buffer or tunnel window loses it, as a full link would.
    pub(super) fn forward(&self, datagram: &[u8]) {
        self.touch();
        let sent = match &self.way {
            // Straight to the socket: tokio's `try_send` answers WouldBlock until its
            // reactor has seen the new socket writable, which would lose every flow's first
            // datagram.
            Way::Socket(socket) => match socket2::SockRef::from(socket).send(datagram) {
                Ok(n) => Ok(n),
                // The endpoint's ICMP "port unreachable" from an earlier datagram, a full
                // buffer, or a local error: this datagram is lost.
                Err(_) => Err(Reason::upstream),
            },
            Way::Tunnel(tunneled) => match &mut *tunneled.lock().expect("flow poisoned") {
                Tunneled::Opening(queue) if queue.len() < OPENING_QUEUE => {
                    queue.push(datagram.into());
                    return;
                }
                Tunneled::Opening(_) => Err(Reason::tunnel_backlog),
                Tunneled::Open(stream) => sent_on(stream, datagram),
                Tunneled::Closed => Err(Reason::tunnel),
            },
        };
        self.count(sent);
    }

    fn count(&self, sent: Result<usize, Reason>) {
        match sent {
            Ok(n) => {
                self.stats.datagrams_sent.inc();
                self.stats.bytes_sent.inc_by(n as u64);
            }
            Err(reason) => self.stats.error(reason),
        }
    }

    /// A datagram from the endpoint goes back to `client` from the address it addressed.
    fn reply(&self, port: &UdpSocket, datagram: &[u8], client: SocketAddr) {
        self.touch();
        let sent = match &self.header {
            None => pktinfo::try_send(port, datagram, client, self.local),
            Some(header) => {
                let mut wrapped = Vec::with_capacity(header.len() + datagram.len());
                wrapped.extend_from_slice(header);
                wrapped.extend_from_slice(datagram);
                port.try_send_to(&wrapped, client)
            }
        };
        match sent {
            Ok(_) => {
                self.stats.datagrams_received.inc();
                self.stats.bytes_received.inc_by(datagram.len() as u64);
            }
            // The client's side is full or gone: lost, as on the wire.
            Err(_) => self.stats.error(Reason::client_aborted),
        }
    }
}

/// One datagram onto a stream: its length, or why it was lost.
fn sent_on(stream: &DatagramStream, datagram: &[u8]) -> Result<usize, Reason> {
    match stream.send(datagram) {
        Ok(Sent::Sent) => Ok(datagram.len()),
        Ok(Sent::Dropped) => Err(Reason::tunnel_backlog),
        Err(_) => Err(Reason::tunnel),
    }
}

/// Starts `client`'s flow to Service port `vip`: chooses its endpoint, connects a socket to
/// it (or starts opening a datagram stream to its node) and starts relaying replies. `None`
/// (the datagram dropped and counted) when the flow cap is reached, the Service has no
/// usable endpoint, or its QPS limit refuses a new flow.
pub(super) fn start(
    vip: SocketAddr,
    to: Return,
    port: &Arc<UdpSocket>,
    ports: &Arc<Ports>,
    flows: &Flows,
    stop: &CancellationToken,
) -> Option<Arc<Flow>> {
    static CAP: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(60));
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
    let client = to.client;
    // ConsistentHash keys a flow on its client's address, as TCP does.
    let key = match client.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let mut lease = match ports.upstream.lease_datagram(target, Some(&key)) {
        Ok(lease) => lease,
        Err(e) => {
            target.stats.failed(&e);
            REFUSED.warn(format_args!("udp {vip} from {client}: {e}"));
            return None;
        }
    };
    let endpoint = lease.addr();
    // A flow is not a request in flight. A local flow gives its breaker claim back
    // unsettled; a tunnelled one settles it on the open's outcome.
    let route = ports
        .upstream
        .tunnel_route(&lease)
        .map(|route| (route, lease.claim()));
    drop(lease);
    let way = match &route {
        Some(_) => Way::Tunnel(Mutex::new(Tunneled::Opening(Vec::new()))),
        None => match connect_udp(endpoint) {
            Ok(socket) => Way::Socket(socket),
            Err(e) => {
                target.stats.error(Reason::connect_failed);
                REFUSED.warn(format_args!("udp {vip}: socket towards {endpoint}: {e}"));
                return None;
            }
        },
    };
    let flow = Arc::new(Flow {
        way,
        local: to.local,
        header: to.header,
        stats: target.stats.handle(),
        last: AtomicU64::new(0),
        born: Instant::now(),
        _slot: slot,
        _active: Active::on(&target.stats),
    });
    target.stats.udp_flows.inc();
    flows
        .lock()
        .expect("flows poisoned")
        .insert(to.key, flow.clone());
    let ends = Ends {
        flow: flow.clone(),
        client,
        key: to.key,
        port: port.clone(),
        flows: flows.clone(),
        idle: target.udp_idle.unwrap_or(ports.default_idle),
        stop: stop.child_token(),
    };
    match route {
        Some((route, claim)) => tokio::spawn(tunnelled(ends, ports.clone(), route, claim, vip)),
        None => tokio::spawn(replies(ends)),
    };
    Some(flow)
}

/// What a flow's task holds.
struct Ends {
    flow: Arc<Flow>,
    client: SocketAddr,
    key: SocketAddr,
    port: Arc<UdpSocket>,
    flows: Flows,
    idle: Duration,
    stop: CancellationToken,
}

impl Ends {
    /// How long the flow may stay quiet from now; `None` once it is idle.
    fn quiet_left(&self) -> Option<Duration> {
        let quiet = self.flow.idle_for();
        (quiet < self.idle).then(|| self.idle - quiet)
    }

    /// The flow leaves its port's table (unless a newer flow of the client took its place).
    fn end(self) {
        if let Way::Tunnel(t) = &self.flow.way {
            *t.lock().expect("flow poisoned") = Tunneled::Closed;
        }
        let mut table = self.flows.lock().expect("flows poisoned");
        if table
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flow))
        {
            table.remove(&self.key);
        }
    }
}

/// The end of a flow's life: its port closing, or the flow going idle. One timer and one
/// cancellation wait for the whole life, not one per datagram.
struct Life {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    quiet: Pin<Box<Sleep>>,
}

impl Life {
    fn new(ends: &Ends) -> Self {
        Life {
            cancelled: Box::pin(ends.stop.clone().cancelled_owned()),
            quiet: Box::pin(tokio::time::sleep(ends.idle)),
        }
    }

    /// Returns when the flow is over. Cancel-safe: a datagram that wins the race leaves
    /// the timer and the wait as they were.
    async fn over(&mut self, ends: &Ends) {
        loop {
            tokio::select! {
                _ = &mut self.cancelled => return,
                _ = &mut self.quiet => match ends.quiet_left() {
                    Some(left) => self.quiet.as_mut().reset(tokio::time::Instant::now() + left),
                    None => return,
                },
            }
        }
    }
}

thread_local! {
    /// One receive buffer per worker thread, not per flow: ten thousand idle flows hold
    /// no buffers.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 65_536]);
}

/// Relays the endpoint's datagrams to the client until the flow is idle or its port
/// closes; then the flow leaves the table.
async fn replies(ends: Ends) {
    let Way::Socket(upstream) = &ends.flow.way else {
        return ends.end();
    };
    let mut life = Life::new(&ends);
    loop {
        tokio::select! {
            _ = life.over(&ends) => break,
            ready = upstream.readable() => {
                if ready.is_err() {
                    break;
                }
            }
        }
        // Everything that is there, without holding the buffer across an await.
        BUF.with_borrow_mut(|buf| {
            loop {
                match upstream.try_recv(buf) {
                    Ok(n) => ends.flow.reply(&ends.port, &buf[..n], ends.client),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // ICMP "port unreachable" from the endpoint: nothing listens there (now).
                    Err(_) => {
                        ends.flow.stats.error(Reason::upstream);
                        break;
                    }
                }
            }
        });
    }
    ends.end();
}

/// A tunnelled flow: opens its datagram stream, sends what queued meanwhile, then relays
/// the far side's datagrams to the client until the flow is idle, the stream ends (its
/// node went away) or the port closes. A failed open ends the flow — the client's next
/// datagram starts another, which may choose another endpoint — and counts against the
/// endpoint's breaker when the failure is on the endpoint's side.
async fn tunnelled(
    ends: Ends,
    ports: Arc<Ports>,
    route: TunnelRoute,
    claim: Claim,
    vip: SocketAddr,
) {
    let opened = tokio::select! {
        _ = ends.stop.cancelled() => return ends.end(),
        opened = ports.upstream.open_datagrams(&route) => opened,
    };
    let stream = match opened {
        Ok(stream) => {
            claim.report(Ok(()));
            Arc::new(stream)
        }
        Err(e) => {
            claim.report(Err(&e));
            ends.flow.stats.failed(&e);
            REFUSED.warn(format_args!("udp {vip} from {}: {e}", ends.client));
            return ends.end();
        }
    };
    if let Way::Tunnel(t) = &ends.flow.way {
        let mut state = t.lock().expect("flow poisoned");
        let queued = std::mem::replace(&mut *state, Tunneled::Open(stream.clone()));
        if let Tunneled::Opening(queue) = queued {
            for datagram in queue {
                ends.flow.count(sent_on(&stream, &datagram));
            }
        }
    }
    let mut life = Life::new(&ends);
    loop {
        tokio::select! {
            _ = life.over(&ends) => break,
            got = stream.recv() => match got {
                Ok(Some(datagram)) => {
                    ends.flow.reply(&ends.port, &datagram, ends.client);
                    stream.delivered(datagram.len());
                }
                Ok(None) | Err(_) => break,
            },
        }
    }
    ends.end();
}
