//! The bus module: follows the metadata, serves the listener, keeps the iptables rules.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use beehive::{Context, Module, ModuleError, async_trait};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus_feed::BusFeed;
use crate::catalog::{Catalog, Defaults, Kept};
use crate::config::{EdgeMeshConfig, RemoteEndpoints, Source};
use crate::conntrack;
use crate::dns::{self, Dns};
use crate::drain::{Drain, Settled};
use crate::error::Error;
use crate::explicit;
use crate::follow::follow;
use crate::iptables;
use crate::kube_feed::{self, FeedStatus};
use crate::metrics::Metrics;
use crate::names::Names;
use crate::proxy;
use crate::shared::{Limits, Shared};
use crate::spread::Spread;
use crate::tunnel::{Acceptor, Tunnel};
use crate::udp::{self, UdpProxy};
use crate::upstream::{H2, Pool, Upstream};
use proto::stream::{Carriage, MESH_LANE};

/// Module name on the bus.
pub const MODULE: &str = "edgemesh";
/// Group of the module: tunnel traffic from the cloud link arrives here.
pub const GROUP: &str = "mesh";

/// The edgemesh module. Its sockets are bound by [`EdgeMesh::bind`], so a busy port is
/// reported before anything starts, and tests can bind `127.0.0.1:0`.
pub struct EdgeMesh {
    config: EdgeMeshConfig,
    node: String,
    listener: TcpListener,
    proxy: Option<TcpListener>,
    dns: Option<(UdpSocket, TcpListener)>,
    catalog: Arc<ArcSwap<Catalog>>,
    generation: watch::Sender<u64>,
    kept: Arc<Kept>,
    liveness: Arc<Liveness>,
    drain: Drain,
    tunnel: Option<Arc<Tunnel>>,
    /// Metadata comes as bus messages from edgecontroller (in cloudcore), not over
    /// metamanager's socket.
    bus_fed: bool,
    /// How far the Kubernetes source got, with `source: kubernetes`.
    feed_status: Option<Arc<FeedStatus>>,
}

/// Whether the worker threads run, for liveness checks.
#[derive(Debug, Default)]
pub struct Liveness {
    started: std::sync::atomic::AtomicBool,
    serving: std::sync::atomic::AtomicUsize,
}

impl Liveness {
    /// Worker threads serving now; `None` before the module starts them.
    pub fn workers(&self) -> Option<usize> {
        use std::sync::atomic::Ordering;
        self.started
            .load(Ordering::SeqCst)
            .then(|| self.serving.load(Ordering::SeqCst))
    }
}

/// Counts one worker serving until dropped (a panicking worker counts out too).
struct Serving(Arc<Liveness>);

impl Serving {
    fn on(liveness: &Arc<Liveness>) -> Self {
        liveness
            .serving
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Serving(liveness.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0
            .serving
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Where an edgemesh listens.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    /// Intercepted connections.
    pub intercept: SocketAddr,
    /// The explicit proxy, if on.
    pub proxy: Option<SocketAddr>,
    /// The DNS server (UDP and TCP on the same port), if on.
    pub dns: Option<SocketAddr>,
}

fn listen_err(what: &str, addr: &str, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("{what}: cannot listen on {addr}: {e}"),
    ))
}

fn parse_addr(addr: &str) -> std::io::Result<SocketAddr> {
    addr.parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))
}

impl EdgeMesh {
    /// Binds every socket the config asks for (interception with `SO_REUSEPORT` so each
    /// worker thread gets one of its own; the explicit proxy; DNS over UDP and TCP on one
    /// port) for node `node`. Must run inside a tokio runtime.
    pub fn bind(config: EdgeMeshConfig, node: &str) -> Result<Self, Error> {
        let listener = parse_addr(&config.listen)
            .and_then(proxy::bind)
            .and_then(TcpListener::from_std)
            .map_err(|e| listen_err("edgemesh", &config.listen, e))?;
        let proxy = match config.proxy_listen.as_str() {
            "" => None,
            addr => Some(
                parse_addr(addr)
                    .and_then(std::net::TcpListener::bind)
                    .and_then(|l| {
                        l.set_nonblocking(true)?;
                        TcpListener::from_std(l)
                    })
                    .map_err(|e| listen_err("explicit proxy", addr, e))?,
            ),
        };
        let dns = match config.dns.listen.as_str() {
            "" => None,
            addr => Some(bind_dns(addr).map_err(|e| listen_err("dns", addr, e))?),
        };
        let kubernetes = config.source == Source::Kubernetes;
        // EndpointSlices name nodes as the API knows them, which may differ from the name
        // this process was given.
        let node = match &config.kubernetes.node_name {
            name if kubernetes && !name.is_empty() => name.as_str(),
            _ => node,
        };
        Ok(EdgeMesh {
            node: node.to_owned(),
            listener,
            proxy,
            dns,
            catalog: Arc::default(),
            generation: watch::channel(0).0,
            kept: Arc::default(),
            liveness: Arc::default(),
            drain: Drain::new(),
            // A Kubernetes source comes without a cloud link to tunnel through.
            tunnel: (config.tunnel.enable && !kubernetes)
                .then(|| Tunnel::new(config.tunnel.window_bytes, config.tunnel.max_streams)),
            feed_status: kubernetes.then(|| Arc::new(FeedStatus::new(&config.kubernetes))),
            config,
            bus_fed: false,
        })
    }

    /// Takes Services and Endpoints from bus messages (edgecontroller's, in cloudcore)
    /// instead of metamanager's socket: the cloud's own mesh.
    pub fn fed_by_bus(mut self) -> Self {
        self.bus_fed = true;
        self.feed_status = None;
        self
    }

    /// How far the Kubernetes source got (`source: kubernetes`), for readiness.
    pub fn feed_status(&self) -> Option<Arc<FeedStatus>> {
        self.feed_status.clone()
    }

    /// The tunnel, if on (for stats and tests).
    pub fn tunnel(&self) -> Option<Arc<Tunnel>> {
        self.tunnel.clone()
    }

    /// Where it listens.
    pub fn addresses(&self) -> Addresses {
        Addresses {
            intercept: self
                .listener
                .local_addr()
                .expect("a bound listener has an address"),
            proxy: self.proxy.as_ref().and_then(|l| l.local_addr().ok()),
            dns: self.dns.as_ref().and_then(|(u, _)| u.local_addr().ok()),
        }
    }

    /// The snapshot the proxy reads, for health checks and tests.
    pub fn catalog(&self) -> Arc<ArcSwap<Catalog>> {
        self.catalog.clone()
    }

    /// Counts the catalogs swapped in; 1 or more once the metadata is loaded.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether its worker threads run.
    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    /// Its metrics, for `/metrics`.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.kept.metrics.clone()
    }

    /// Its shutdown drain, for readiness: it begins when the module is told to stop.
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }
}

/// What every connection of one runtime needs.
struct Parts {
    config: EdgeMeshConfig,
    node: String,
    catalog: Arc<ArcSwap<Catalog>>,
    kept: Arc<Kept>,
    drain: Drain,
    tunnel: Option<Arc<Tunnel>>,
    /// The cap on UDP flows, shared by intercepted flows and SOCKS5 UDP associations.
    udp_budget: Arc<udp::Budget>,
}

impl Parts {
    /// What every UDP flow needs (intercepted, or from the explicit proxy).
    fn udp_ports(&self) -> udp::Ports {
        udp::Ports {
            catalog: self.catalog.clone(),
            upstream: self.upstream(),
            default_idle: Duration::from_millis(self.config.udp.idle_timeout_ms),
            budget: self.udp_budget.clone(),
            unknown: self.kept.metrics.service(UNKNOWN),
        }
    }

    fn upstream(&self) -> Upstream {
        let config = &self.config;
        let mut upstream = Upstream::new(
            &self.node,
            Duration::from_millis(config.connect_timeout_ms),
            Pool::new(
                config.max_idle_per_endpoint,
                Duration::from_millis(config.upstream_idle_timeout_ms),
            ),
            H2::new(Duration::from_millis(config.upstream_idle_timeout_ms)),
        );
        if let Some(tunnel) = &self.tunnel {
            upstream = upstream.with_tunnel(tunnel.clone());
        } else if config.source == Source::Kubernetes
            && config.kubernetes.remote_endpoints == RemoteEndpoints::Direct
        {
            upstream = upstream.dialling_remote();
        }
        upstream
    }

    fn shared(&self) -> Shared {
        let config = &self.config;
        Shared {
            catalog: self.catalog.clone(),
            upstream: self.upstream(),
            udp: config.udp.enable.then(|| Arc::new(self.udp_ports())),
            limits: Limits {
                max_head: config.max_head_bytes,
                head_timeout: Duration::from_millis(config.head_timeout_ms),
            },
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            sniff_timeout: Duration::from_millis(config.sniff_timeout_ms),
            unknown: self.kept.metrics.service(UNKNOWN),
            names: self.names(),
            drain: self.drain.clone(),
        }
    }

    fn names(&self) -> Names {
        Names {
            namespace: self.config.namespace.clone(),
            domain: self.config.cluster_domain.clone(),
        }
    }
}

/// The service label of requests that reached no Service.
const UNKNOWN: &str = "(unknown)";

/// UDP and TCP on the same address; with port 0, TCP takes the port UDP got (and when
/// something holds that port for TCP, another port is tried).
fn bind_dns(addr: &str) -> std::io::Result<(UdpSocket, TcpListener)> {
    let addr = parse_addr(addr)?;
    let mut attempts = if addr.port() == 0 { 16 } else { 1 };
    loop {
        attempts -= 1;
        let udp = std::net::UdpSocket::bind(addr)?;
        udp.set_nonblocking(true)?;
        let tcp = match std::net::TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => tcp,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts > 0 => continue,
            Err(e) => return Err(e),
        };
        tcp.set_nonblocking(true)?;
        return Ok((UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?));
    }
}

#[async_trait]
impl Module for EdgeMesh {
    fn name(&self) -> &str {
        MODULE
    }
    fn group(&self) -> &str {
        GROUP
    }
    fn enabled(&self) -> bool {
        self.config.enable
    }
    async fn start(self: Box<Self>, ctx: Context) -> Result<(), ModuleError> {
        // start owns the module, so the sockets simply move out of it.
        let EdgeMesh {
            config,
            node,
            listener,
            proxy,
            dns,
            catalog,
            generation,
            kept,
            liveness,
            drain,
            tunnel,
            bus_fed,
            feed_status,
        } = *self;
        let config_udp_max_flows = config.udp.max_flows;
        let this = Parts {
            config,
            node,
            catalog,
            kept,
            drain: drain.clone(),
            tunnel,
            udp_budget: Arc::new(udp::Budget::new(config_udp_max_flows)),
        };
        let tunnelling = this.tunnel.clone().and_then(|tunnel| {
            let lane = match ctx.take_lane::<Carriage>(MESH_LANE) {
                Ok(lane) => lane,
                Err(e) => {
                    log::error!("tunnel off: {e}");
                    return None;
                }
            };
            let acceptor = Acceptor {
                catalog: this.catalog.clone(),
                node: this.node.clone(),
                connect_timeout: Duration::from_millis(this.config.connect_timeout_ms),
                idle_timeout: Duration::from_millis(this.config.idle_timeout_ms),
                udp_idle: Duration::from_millis(this.config.udp.idle_timeout_ms),
                metrics: this.kept.metrics.clone(),
            };
            Some(tokio::spawn(tunnel.run(lane, acceptor)))
        });
        let stop = CancellationToken::new();
        // The worker threads outlive this future unless told: if it is dropped (its task
        // aborted, its runtime shut down) they must stop too, or a runtime waiting for
        // its blocking threads would wait forever. Their connections are cut with them.
        let _stop_when_dropped = stop.clone().drop_guard();
        let _cut_when_dropped = drain.cut_on_drop();
        if let Some(proxy_listener) = proxy {
            log::info!(
                "explicit proxy (HTTP CONNECT, HTTP, SOCKS5) on {}",
                proxy_listener.local_addr()?
            );
            tokio::spawn(explicit::serve(
                proxy_listener,
                Arc::new(this.shared()),
                drain.closing(),
            ));
        }
        if let Some((udp, tcp)) = dns {
            let upstreams = if this.config.dns.upstreams.is_empty() {
                let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                dns::resolv_conf_servers(&text)
            } else {
                this.config
                    .dns
                    .upstreams
                    .iter()
                    .filter_map(|u| dns::upstream_addr(u))
                    .collect()
            };
            let own = udp.local_addr()?;
            // Forwarding to ourselves would loop (a resolv.conf already pointing here, or
            // naming loopback while we listen on every address).
            let is_self = |u: &SocketAddr| {
                u.port() == own.port()
                    && (u.ip() == own.ip() || (own.ip().is_unspecified() && u.ip().is_loopback()))
            };
            let upstreams: Vec<SocketAddr> =
                upstreams.into_iter().filter(|u| !is_self(u)).collect();
            if upstreams.is_empty() {
                log::warn!("dns: no upstream server: names outside the cluster get SERVFAIL");
            }
            log::info!("dns on {own} (udp and tcp), forwarding to {upstreams:?}");
            let server = Arc::new(Dns::new(
                this.catalog.clone(),
                this.names(),
                upstreams,
                Duration::from_millis(this.config.dns.upstream_timeout_ms),
                this.config.dns.cache_size,
                this.kept.metrics.clone(),
            ));
            tokio::spawn(server.serve(udp, tcp, stop.clone()));
        }
        let port = listener.local_addr()?.port();
        log::info!("edgemesh listening on {}", listener.local_addr()?);
        let defaults = Defaults {
            strategy: this.config.lb_strategy,
            qps: NonZeroU32::new(this.config.qps),
            breaker: this.config.circuit_breaker,
        };
        let following = match (bus_fed, feed_status) {
            (true, _) => None,
            (false, Some(status)) => Some(tokio::spawn(kube_feed::follow(
                this.config.kubernetes.clone(),
                this.catalog.clone(),
                defaults,
                this.kept.clone(),
                generation.clone(),
                status,
                stop.clone(),
            ))),
            (false, None) => Some(tokio::spawn(follow(
                this.config.socket_path.clone(),
                this.catalog.clone(),
                defaults,
                this.kept.clone(),
                generation.clone(),
                stop.clone(),
            ))),
        };
        // One thread per core, each with a single-threaded runtime and a listening socket
        // of its own on the same address (SO_REUSEPORT): a connection, its upstream
        // connections and their tasks stay on one thread, with no wake-ups across cores
        // on the request path. The kernel's spread is evened out by hand-overs (spread.rs).
        let addr = listener.local_addr()?;
        let first = listener.into_std()?;
        let workers = match this.config.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let mut listeners = vec![first];
        for _ in 1..workers {
            match proxy::bind(addr) {
                Ok(l) => listeners.push(l),
                // The first socket was bound without SO_REUSEPORT: share it instead.
                Err(_) => listeners.push(listeners[0].try_clone()?),
            }
        }
        let mut threads = Vec::with_capacity(workers);
        // Each worker's runtime, so UDP Service ports are served on the workers too.
        let (runtimes_tx, runtimes_rx) = std::sync::mpsc::channel();
        for (i, (listener, seat)) in listeners
            .into_iter()
            .zip(Spread::seats(workers))
            .enumerate()
        {
            // Listeners stop when the drain says (after the rules are gone); the seat then
            // keeps the runtime up until its connections end.
            let drain = drain.for_worker();
            let stop = drain.closing();
            let seat = seat.drained_by(drain.clone());
            let mut shared = this.shared();
            shared.drain = drain;
            let serving = Serving::on(&liveness);
            let runtimes_tx = runtimes_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("edgemesh-{i}"))
                .spawn(move || {
                    let _serving = serving;
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            log::error!("edgemesh worker {i}: {e}");
                            return;
                        }
                    };
                    let _ = runtimes_tx.send((i, runtime.handle().clone()));
                    drop(runtimes_tx);
                    runtime.block_on(async move {
                        let shared = Arc::new(shared);
                        tokio::spawn(sweep(shared.clone(), stop.clone()));
                        match TcpListener::from_std(listener) {
                            Ok(listener) => proxy::serve(listener, seat, shared, stop).await,
                            Err(e) => log::error!("edgemesh worker {i}: {e}"),
                        }
                    });
                })?;
            threads.push(thread);
        }
        drop(runtimes_tx);
        let mut runtimes: Vec<(usize, tokio::runtime::Handle)> = runtimes_rx.iter().collect();
        runtimes.sort_by_key(|(i, _)| *i);
        let runtimes: Vec<tokio::runtime::Handle> = runtimes.into_iter().map(|(_, h)| h).collect();
        liveness
            .started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let serving = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        // The jumps to the rules go first on shutdown, while the listeners still accept: no
        // connection is refused in between. The chain itself goes last (see
        // `iptables::unhook`).
        let rules_stop = CancellationToken::new();
        let _rules_stop_when_dropped = rules_stop.clone().drop_guard();
        let udp = (this.config.iptables && this.config.udp.enable).then(|| {
            Arc::new(UdpProxy::new(
                addr.ip(),
                runtimes,
                this.udp_ports(),
                stop.child_token(),
            ))
        });
        let rules = this.config.iptables.then(|| {
            tokio::spawn(keep_rules(
                this.catalog.clone(),
                generation.subscribe(),
                port,
                udp.clone(),
                Duration::from_millis(this.config.iptables_sync_ms),
                rules_stop.clone(),
            ))
        });
        // Stream frames have a lane of their own; the inbox hears link events and, in the
        // cloud, edgecontroller's Services and Endpoints.
        let mut feed = bus_fed.then(BusFeed::default);
        let mut batch = Vec::with_capacity(256);
        while ctx.receive_many(MODULE, &mut batch, 256).await.is_ok() {
            let mut changed = false;
            for msg in batch.drain(..) {
                match feed.as_mut() {
                    Some(feed) => changed |= feed.apply(msg),
                    None => log::debug!("edgemesh: {} {}", msg.operation(), msg.resource()),
                }
            }
            if changed && let Some(feed) = &feed {
                let next = feed.catalog(&defaults, &this.kept);
                crate::rebuild::publish(&this.catalog, &generation, next);
            }
        }
        // The drain's deadline counts from here, as beehive's grace period does.
        let timeout = Duration::from_millis(this.config.drain_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        drain.begin();
        log::info!(
            "edgemesh draining: {} connection(s) open, up to {timeout:?}",
            drain.live()
        );
        rules_stop.cancel();
        let hooked = match rules {
            Some(rules) => rules.await.unwrap_or(false),
            None => false,
        };
        drain.stop_accepting();
        match drain.settle(deadline).await {
            Settled::Done => log::info!("edgemesh drained"),
            Settled::Cut(n) => {
                log::warn!("edgemesh drain: {n} connection(s) still open after {timeout:?}; cut")
            }
        }
        if hooked {
            match iptables::remove().await {
                Ok(()) => log::info!("iptables rules removed"),
                Err(e) => log::error!("removing iptables rules: {e}"),
            }
        }
        stop.cancel();
        if let Some(following) = following {
            let _ = following.await;
        }
        if let Some(tunnelling) = tunnelling {
            tunnelling.abort();
        }
        let _ = serving.await;
        Ok(())
    }
}

/// Closes a worker's kept upstream connections once they pass their idle expiry, so a
/// quiet node holds no sockets for traffic long gone.
async fn sweep(shared: Arc<Shared>, stop: CancellationToken) {
    let every = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {
                shared.upstream.pool().sweep();
            }
        }
    }
}

/// Forgets the tracked UDP flows of every Service port whose redirect is new or moved
/// (see [`conntrack`]), so their next datagram reaches the socket that serves it now.
async fn forget_moved(
    udp: &[(SocketAddr, u16)],
    last: &mut std::collections::HashMap<SocketAddr, u16>,
) {
    static MISSING: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(3600));
    for (vip, port) in udp {
        if last.get(vip) == Some(port) {
            continue;
        }
        if let Err(e) = conntrack::forget_udp(*vip).await {
            MISSING.warn(format_args!(
                "{e}: a UDP client that kept sending across a restart of edgemesh goes on \
                 reaching the old port until it pauses for 30 s (install conntrack)"
            ));
        }
    }
    *last = udp.iter().copied().collect();
}

/// Installs the rules after each catalog change, repairs them when they go missing, and
/// at the end removes the jumps to them (see [`iptables::unhook`]); true when rules were
/// installed, so the chain is left for the caller to remove.
async fn keep_rules(
    catalog: Arc<ArcSwap<Catalog>>,
    mut generation: watch::Receiver<u64>,
    port: u16,
    udp: Option<Arc<UdpProxy>>,
    every: Duration,
    stop: CancellationToken,
) -> bool {
    let mut installed: Option<usize> = None;
    // Where each UDP Service port was last redirected to.
    let mut udp_ports: std::collections::HashMap<SocketAddr, u16> = Default::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = generation.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(every) => {
                let Some(expected) = installed else { continue };
                if iptables::in_place(expected).await {
                    continue;
                }
                log::warn!("iptables rules of {} were changed from outside: repairing", iptables::CHAIN);
            }
        }
        let now = catalog.load();
        // The UDP sockets are open before their rules send datagrams there.
        let to = iptables::Redirects {
            tcp: now.vips(),
            port,
            udp: udp.as_ref().map(|u| u.reconcile(&now)).unwrap_or_default(),
        };
        match iptables::apply(&to).await {
            Ok(()) => {
                let count = to.rules();
                log::info!(
                    "iptables: {count} service port(s) redirected (TCP to :{port}, {} UDP)",
                    to.udp.len()
                );
                installed = Some(count);
                forget_moved(&to.udp, &mut udp_ports).await;
            }
            Err(e) => log::error!("{e}"),
        }
    }
    if installed.is_some() {
        match iptables::unhook().await {
            Ok(()) => log::info!("iptables: connections no longer redirected here"),
            Err(e) => log::error!("removing the jumps to the iptables rules: {e}"),
        }
    }
    installed.is_some()
}
