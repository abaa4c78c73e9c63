//! The upstream seam: the one place that chooses an endpoint (with the node it runs on and
//! its breaker in view), admits the request (this node's QPS limit), counts it in flight,
//! dials or reuses a connection, and takes the outcome to the breaker. The HTTP/1
//! forwarder, the hyper path and the byte relay all go through it, and what it hands out
//! is a [`Conn`], which the tunnel will extend with streams over the cloud link.
//!
//! Fault attribution lives here too: [`Lease::report`] passes only upstream faults to the
//! breaker; a client's fault or a policy refusal leaves the endpoint's health as it was.

mod body;
mod choose;
mod conn;
mod h2;
mod pool;

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpStream;

pub use body::{ClientBody, Fault};
pub use choose::{Pick, choose};
pub use conn::Conn;
pub use h2::H2;
pub use pool::Pool;

use crate::breaker::Verdict;
use crate::catalog::Target;
use crate::error::{Error, Result, Side};
use crate::lb::{Backend, InFlight};
use crate::metrics::Via;
use crate::objects::Topology;
use crate::tunnel::{DatagramStream, OpenError, OpenRequest, Tunnel};
use proto::stream::ProtocolHint;
use std::sync::Arc;

/// A worker's way to its endpoints.
#[derive(Debug)]
pub struct Upstream {
    node: String,
    connect_timeout: Duration,
    pool: Pool,
    h2: H2,
    /// Streams to endpoints on other nodes and in the cloud; `None`: local endpoints only.
    tunnel: Option<Arc<Tunnel>>,
    /// Endpoints on other nodes are dialled from here (no tunnel, a routed pod network).
    direct: bool,
}

impl Upstream {
    /// The upstream side of node `node`: dials with `connect_timeout`, keeps idle HTTP/1
    /// connections in `pool` and HTTP/2 connections in `h2`.
    pub fn new(node: &str, connect_timeout: Duration, pool: Pool, h2: H2) -> Self {
        Upstream {
            node: node.to_owned(),
            connect_timeout,
            pool,
            h2,
            tunnel: None,
            direct: false,
        }
    }

    /// Dials endpoints on other nodes directly, at their address, when there is no tunnel
    /// (`remoteEndpoints: direct`: the pod network routes between nodes).
    pub fn dialling_remote(mut self) -> Self {
        self.direct = true;
        self
    }

    /// Reaches endpoints elsewhere through `tunnel`.
    pub fn with_tunnel(mut self, tunnel: Arc<Tunnel>) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    /// Its kept HTTP/1 connections.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Its kept HTTP/2 connections.
    pub fn h2(&self) -> &H2 {
        &self.h2
    }

    /// Sends an HTTP/2 request to the lease's endpoint over its kept connection (see
    /// [`H2::send`]).
    pub async fn send_h2(
        &self,
        req: Request<ClientBody>,
        lease: &Lease<'_>,
        fault: &Fault,
    ) -> Result<Response<Incoming>> {
        self.h2.send(req, lease, self, fault).await
    }

    /// Whether this node dials `backend` itself: it runs on this node. An endpoint with no
    /// node recorded is not a pod of any edge node (an address outside the cluster, or a
    /// cloud pod), so with a tunnel it is the cloud's to dial; without one (and in the
    /// cloud itself) it is dialled from here. Endpoints elsewhere go through the tunnel.
    pub fn is_local(&self, backend: &Backend) -> bool {
        match backend.node.as_deref() {
            Some(node) => node == self.node,
            None => self.tunnel.is_none() || self.node.is_empty(),
        }
    }

    /// Whether this node can reach `backend` at all.
    pub fn reachable(&self, backend: &Backend) -> bool {
        self.tunnel.is_some() || self.direct || self.is_local(backend)
    }

    /// Chooses an endpoint of `target` for one request or connection (`key`: the
    /// ConsistentHash key), following the Service's topology, admits it against the
    /// Service's QPS limit when the endpoint is this node's (a remote endpoint's own node
    /// applies the limit it shares with its local clients), and counts it in flight until
    /// the lease is dropped.
    pub fn lease<'t>(&self, target: &'t Target, key: Option<&[u8]>) -> Result<Lease<'t>> {
        self.lease_except(target, key, None)
    }

    /// [`Upstream::lease`] leaving out endpoint `except` (a retry after it failed).
    pub fn lease_except<'t>(
        &self,
        target: &'t Target,
        key: Option<&[u8]>,
        except: Option<SocketAddr>,
    ) -> Result<Lease<'t>> {
        self.lease_where(target, key, except, |b| self.reachable(b))
    }

    /// [`Upstream::lease`] for a UDP flow: any endpoint this node reaches, as for TCP.
    /// [`Upstream::tunnel_route`] tells whether its datagrams go through the tunnel.
    pub fn lease_datagram<'t>(&self, target: &'t Target, key: Option<&[u8]>) -> Result<Lease<'t>> {
        self.lease(target, key)
    }

    /// Where a lease's datagrams go through the tunnel: `None` when this node sends them
    /// to the endpoint itself.
    pub fn tunnel_route(&self, lease: &Lease<'_>) -> Option<TunnelRoute> {
        if self.is_local(lease.backend) {
            return None;
        }
        Some(TunnelRoute {
            tunnel: self.tunnel.clone()?,
            node: lease.backend.node.clone().unwrap_or_default(),
            service: lease.target.service.clone(),
            port: lease.target.port,
            endpoint: lease.backend.addr,
        })
    }

    /// Opens a datagram stream along `route`, waiting up to the connect timeout for the
    /// far side to take it.
    pub async fn open_datagrams(&self, route: &TunnelRoute) -> Result<DatagramStream> {
        let request = OpenRequest {
            node: &route.node,
            service: &route.service,
            port: route.port,
            endpoint: route.endpoint,
            protocol: ProtocolHint::Datagram,
        };
        match route.tunnel.open(&request, self.connect_timeout).await {
            Ok(stream) => Ok(DatagramStream::new(stream)),
            Err(e) => Err(open_error(&route.service, route.endpoint, &route.node, e)),
        }
    }

    fn lease_where<'t>(
        &self,
        target: &'t Target,
        key: Option<&[u8]>,
        except: Option<SocketAddr>,
        reachable: impl Fn(&Backend) -> bool,
    ) -> Result<Lease<'t>> {
        let allowed = |b: &Backend| Some(b.addr) != except;
        let unreachable = |b: &'t Backend| Error::Remote {
            service: target.service.clone(),
            endpoint: b.addr,
            node: b.node.clone().unwrap_or_default(),
        };
        let pick = match target.topology {
            Topology::All => choose(target, key, |b| allowed(b) && reachable(b), unreachable),
            Topology::Local => choose(
                target,
                key,
                |b| allowed(b) && self.is_local(b),
                |_| Error::NotLocal(target.service.clone()),
            ),
            Topology::PreferClose => {
                choose(target, key, |b| allowed(b) && self.is_local(b), unreachable)
                    .or_else(|_| choose(target, key, |b| allowed(b) && reachable(b), unreachable))
            }
        }?;
        if self.is_local(pick.backend)
            && let Some(limiter) = &target.limiter
            && let Err(retry_after) = limiter.check()
        {
            // The pick is dropped unreported: a probe slot it held is given back.
            return Err(Error::Limited {
                service: target.service.clone(),
                qps: limiter.qps(),
                retry_after,
            });
        }
        let via = if self.is_local(pick.backend) {
            Via::local
        } else if pick.backend.node.is_some() {
            Via::edge
        } else {
            Via::cloud
        };
        target.stats.via[via as usize].inc();
        Ok(Lease {
            target,
            backend: pick.backend,
            _inflight: InFlight::on(pick.backend),
            verdict: pick.verdict,
        })
    }

    /// Whether a failed first try may go once more to another endpoint: nothing of the
    /// request reached the endpoint (`e` is a connect or open failure), and another one
    /// exists.
    pub fn may_retry(&self, target: &Target, e: &Error) -> bool {
        matches!(
            e,
            Error::Connect { .. } | Error::ConnectTimeout { .. } | Error::Tunnel { .. }
        ) && e.side() == Side::Upstream
            && target.backends.len() > 1
    }

    /// A lease and a new connection for it; when the connect (or tunnel open) fails and
    /// another endpoint exists, once more with another. Failures are reported to the
    /// breaker here; the caller reports the outcome of what follows.
    pub async fn dial<'t>(
        &self,
        target: &'t Target,
        key: Option<&[u8]>,
    ) -> Result<(Lease<'t>, Conn)> {
        let mut lease = self.lease(target, key)?;
        let first = match self.connect(&lease).await {
            Ok(conn) => return Ok((lease, conn)),
            Err(e) => e,
        };
        lease.report(Err(&first));
        if !self.may_retry(target, &first) {
            return Err(first);
        }
        let failed = lease.addr();
        drop(lease);
        let Ok(mut lease) = self.lease_except(target, key, Some(failed)) else {
            return Err(first);
        };
        log::debug!("{first}; trying {} instead", lease.addr());
        target.stats.error(crate::metrics::Reason::retried);
        match self.connect(&lease).await {
            Ok(conn) => Ok((lease, conn)),
            Err(e) => {
                lease.report(Err(&e));
                Err(e)
            }
        }
    }

    /// A kept connection to the lease's endpoint, if one is idle and still usable.
    pub fn kept(&self, lease: &Lease<'_>) -> Option<Conn> {
        self.pool.take(lease.backend.addr)
    }

    /// Keeps `conn` to the lease's endpoint for the next request, when it may be kept.
    pub fn keep(&self, lease: &Lease<'_>, conn: Conn) {
        if self.poolable(lease) {
            self.pool.put(lease.backend.addr, conn);
        }
    }

    /// Whether a connection of this lease may carry later requests. Not a tunnel stream to a
    /// Service with a QPS limit: the endpoint's node counts its limit per stream (it relays
    /// bytes and does not parse them), so each request there goes on a stream of its own
    /// and is counted, and answered 429 over the limit, as a local client's would be.
    pub fn poolable(&self, lease: &Lease<'_>) -> bool {
        lease.target.limiter.is_none() || self.is_local(lease.backend)
    }

    /// A new connection to the lease's endpoint. A failure is typed (connect error or
    /// timeout) but not yet reported: the caller reports the lease's outcome once.
    pub async fn connect(&self, lease: &Lease<'_>) -> Result<Conn> {
        let (target, backend) = (lease.target, lease.backend);
        if !self.is_local(backend)
            && let Some(tunnel) = &self.tunnel
        {
            return self.open(tunnel, lease).await;
        }
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(backend.addr))
            .await
            .map_err(|_| Error::ConnectTimeout {
                service: target.service.clone(),
                endpoint: backend.addr,
                after: self.connect_timeout,
            })?
            .map_err(|e| Error::Connect {
                service: target.service.clone(),
                endpoint: backend.addr,
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Conn::Tcp(stream))
    }
}

impl Upstream {
    /// A tunnel stream to the lease's endpoint, through its node (or the cloud).
    async fn open(&self, tunnel: &Arc<Tunnel>, lease: &Lease<'_>) -> Result<Conn> {
        let (target, backend) = (lease.target, lease.backend);
        let node = backend.node.as_deref().unwrap_or_default();
        let request = OpenRequest {
            node,
            service: &target.service,
            port: target.port,
            endpoint: backend.addr,
            protocol: if target.opaque {
                ProtocolHint::Tcp
            } else {
                ProtocolHint::Http1
            },
        };
        match tunnel.open(&request, self.connect_timeout).await {
            Ok(stream) => Ok(Conn::Tunnel(stream)),
            Err(e) => Err(open_error(&target.service, backend.addr, node, e)),
        }
    }
}

/// A failed open as the error counted and reported: the far side's code when it refused.
fn open_error(service: &str, endpoint: SocketAddr, node: &str, e: OpenError) -> Error {
    Error::Tunnel {
        service: service.to_owned(),
        endpoint,
        via: if node.is_empty() {
            "the cloud".to_owned()
        } else {
            format!("node {node}")
        },
        code: match &e {
            OpenError::Reset(code, _) => Some(*code),
            _ => None,
        },
        reason: e.to_string(),
    }
}

/// A UDP flow's way through the tunnel, owned, for the flow's task.
#[derive(Debug, Clone)]
pub struct TunnelRoute {
    tunnel: Arc<Tunnel>,
    node: String,
    service: String,
    port: u16,
    endpoint: SocketAddr,
}

/// A lease's breaker claim, taken out of it to be settled later (a UDP flow's tunnel open,
/// in the flow's own task).
#[derive(Debug)]
pub struct Claim(Option<Verdict>);

impl Claim {
    /// Settles the claim as [`Lease::report`] does.
    pub fn report(mut self, outcome: Result<(), &Error>) {
        settle(&mut self.0, outcome);
    }
}

fn settle(verdict: &mut Option<Verdict>, outcome: Result<(), &Error>) {
    let Some(verdict) = verdict.take() else {
        return;
    };
    match outcome {
        Ok(()) => verdict.success(),
        Err(e) if e.side() == Side::Upstream => verdict.failure(),
        // Dropped unsettled: a probe gives its slot back.
        Err(_) => {}
    }
}

/// One request's or connection's hold on an endpoint: in flight until dropped, its
/// breaker claim settled by [`Lease::report`] (or abandoned, neutrally, if never).
pub struct Lease<'t> {
    /// The Service port.
    pub target: &'t Target,
    /// The endpoint.
    pub backend: &'t Backend,
    verdict: Option<Verdict>,
    _inflight: InFlight,
}

impl Lease<'_> {
    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
    }

    /// An upstream fault of this endpoint, with `reason`.
    pub fn upstream_error(&self, reason: impl Into<String>) -> Error {
        Error::Upstream {
            service: self.target.service.clone(),
            endpoint: self.backend.addr,
            reason: reason.into(),
        }
    }

    /// Settles the breaker claim: success restores the endpoint's count, an upstream
    /// fault counts against it, anything else (the client's fault, a refusal) is neutral.
    pub fn report(&mut self, outcome: Result<(), &Error>) {
        settle(&mut self.verdict, outcome);
    }

    /// Takes the breaker claim out, to be settled after the lease is gone.
    pub fn claim(&mut self) -> Claim {
        Claim(self.verdict.take())
    }

    /// Settles the claim by an HTTP status: 5xx is the endpoint's fault.
    pub fn report_status(&mut self, status: u16) {
        if status >= 500 {
            if let Some(v) = self.verdict.take() {
                v.failure();
            }
        } else {
            self.report(Ok(()));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::breaker::BreakerPolicy;
    use crate::lb::{Balancer, Strategy};

    /// Awaits `cond` with a deadline (no fixed sleeps in tests).
    pub async fn until(mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "condition never held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn backend(addr: &str, node: Option<&str>) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            node: node.map(str::to_owned),
            inflight: Arc::default(),
            breaker: Arc::default(),
        }
    }

    fn target(backends: Vec<Backend>, breaker: BreakerPolicy) -> Target {
        Target {
            service: "default/web".into(),
            port_name: String::new(),
            port: 80,
            backends,
            balancer: Balancer::new(Strategy::RoundRobin),
            hash_key: None,
            opaque: false,
            topology: Topology::All,
            limiter: None,
            breaker,
            stats: Arc::new(crate::metrics::LazyStats::new(
                Arc::default(),
                "default/web",
            )),
            udp_idle: None,
        }
    }

    fn upstream() -> Upstream {
        Upstream::new(
            "edge-1",
            Duration::from_secs(1),
            Pool::new(4, Duration::from_secs(60)),
            H2::new(Duration::from_secs(60)),
        )
    }

    #[test]
    fn an_endpoint_this_node_cannot_reach_is_never_chosen() {
        let t = target(
            vec![
                backend("10.0.0.1:80", Some("edge-2")),
                backend("10.0.0.2:80", Some("edge-1")),
                backend("10.0.0.3:80", None),
            ],
            BreakerPolicy::default(),
        );
        let up = upstream();
        for _ in 0..30 {
            let lease = up.lease(&t, None).unwrap();
            assert_ne!(lease.addr().to_string(), "10.0.0.1:80");
        }
        let remote_only = target(
            vec![backend("10.0.0.1:80", Some("edge-2"))],
            BreakerPolicy::default(),
        );
        assert!(matches!(
            up.lease(&remote_only, None),
            Err(Error::Remote { .. })
        ));
        let none = target(vec![], BreakerPolicy::default());
        assert!(matches!(up.lease(&none, None), Err(Error::NoEndpoint(_))));
    }

    #[test]
    fn dialling_remote_reaches_other_nodes_but_keeps_local_only_services_local() {
        let up = upstream().dialling_remote();
        let remote_only = target(
            vec![backend("10.0.0.1:80", Some("edge-2"))],
            BreakerPolicy::default(),
        );
        let lease = up.lease(&remote_only, None).unwrap();
        assert_eq!(lease.addr().to_string(), "10.0.0.1:80");
        assert!(
            !up.is_local(lease.backend),
            "still counted as another node's"
        );
        drop(lease);
        let mut local_only = remote_only;
        local_only.topology = Topology::Local;
        assert!(matches!(
            up.lease(&local_only, None),
            Err(Error::NotLocal(_))
        ));
    }

    #[test]
    fn only_upstream_faults_reach_the_breaker() {
        let policy = BreakerPolicy {
            consecutive_failures: 2,
            ..BreakerPolicy::default()
        };
        let t = target(vec![backend("10.0.0.1:80", None)], policy);
        let up = upstream();
        let client_fault = Error::BadRequest("bad chunk size".into());
        for _ in 0..10 {
            let mut lease = up.lease(&t, None).unwrap();
            lease.report(Err(&client_fault));
        }
        assert!(
            !t.backends[0].breaker.ejected(),
            "client faults are neutral"
        );
        for _ in 0..2 {
            let mut lease = up.lease(&t, None).unwrap();
            lease.report(Err(&lease.upstream_error("reset")));
        }
        assert!(t.backends[0].breaker.ejected());
        assert!(matches!(up.lease(&t, None), Err(Error::BreakerOpen(_))));
    }

    #[test]
    fn in_flight_counts_last_as_long_as_the_lease() {
        let t = target(vec![backend("10.0.0.1:80", None)], BreakerPolicy::default());
        let up = upstream();
        let lease = up.lease(&t, None).unwrap();
        let count = || {
            t.backends[0]
                .inflight
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(count(), 1);
        drop(lease);
        assert_eq!(count(), 0);
    }
}
