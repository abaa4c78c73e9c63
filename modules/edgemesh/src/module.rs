//! The bus module: follows the metadata, serves the listener, keeps the iptables rules.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use beehive::{Context, Module, ModuleError, async_trait};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::EdgeMeshConfig;
use crate::follow::follow;
use crate::http::Upstreams;
use crate::iptables;
use crate::lb::Load;
use crate::proxy::{self, Shared};

/// Module name on the bus.
pub const MODULE: &str = "edgemesh";
/// Group of the module: tunnel traffic from the cloud link arrives here.
pub const GROUP: &str = "mesh";

/// The edgemesh module. It takes a bound listener, so a busy port is reported before
/// anything starts, and tests bind `127.0.0.1:0`.
pub struct EdgeMesh {
    config: EdgeMeshConfig,
    node: String,
    listener: TcpListener,
    catalog: Arc<ArcSwap<Catalog>>,
    generation: watch::Sender<u64>,
}

impl EdgeMesh {
    /// A module for node `node` serving intercepted connections on `listener` (bind it with
    /// [`crate::proxy::bind`] so each worker thread gets a socket of its own).
    pub fn new(config: EdgeMeshConfig, node: &str, listener: TcpListener) -> Self {
        EdgeMesh {
            config,
            node: node.to_owned(),
            listener,
            catalog: Arc::default(),
            generation: watch::channel(0).0,
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
        // start owns the module, so the listener simply moves out of it.
        let this = *self;
        let listener = this.listener;
        let port = listener.local_addr()?.port();
        log::info!("edgemesh listening on {}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let load = Arc::new(Load::default());
        let following = tokio::spawn(follow(
            this.config.socket_path.clone(),
            this.catalog.clone(),
            this.config.lb_strategy,
            load,
            this.generation.clone(),
            stop.clone(),
        ));
        // One thread per core, each with a single-threaded runtime and a listening socket
        // of its own on the same address (SO_REUSEPORT, so the kernel spreads connections
        // evenly): a connection, its upstream connections and their tasks stay on one
        // thread, with no wake-ups across cores on the request path.
        let addr = listener.local_addr()?;
        let first = listener.into_std()?;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut listeners = vec![first];
        for _ in 1..workers {
            match proxy::bind(addr) {
                Ok(l) => listeners.push(l),
                // The first socket was bound without SO_REUSEPORT: share it instead.
                Err(_) => listeners.push(listeners[0].try_clone()?),
            }
        }
        let mut threads = Vec::with_capacity(workers);
        for (i, listener) in listeners.into_iter().enumerate() {
            let stop = stop.clone();
            let catalog = this.catalog.clone();
            let node = this.node.clone();
            let config = this.config.clone();
            let thread = std::thread::Builder::new()
                .name(format!("edgemesh-{i}"))
                .spawn(move || {
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
                    runtime.block_on(async move {
                        let shared = Arc::new(Shared {
                            catalog,
                            node,
                            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
                            sniff_timeout: Duration::from_millis(config.sniff_timeout_ms),
                            upstreams: Upstreams::new(
                                Duration::from_millis(config.connect_timeout_ms),
                                Duration::from_millis(config.idle_timeout_ms),
                            ),
                        });
                        match TcpListener::from_std(listener) {
                            Ok(listener) => proxy::serve(listener, shared, stop).await,
                            Err(e) => log::error!("edgemesh worker {i}: {e}"),
                        }
                    });
                })?;
            threads.push(thread);
        }
        let serving = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let rules = this.config.iptables.then(|| {
            tokio::spawn(keep_rules(
                this.catalog.clone(),
                this.generation.subscribe(),
                port,
                Duration::from_millis(this.config.iptables_sync_ms),
                stop.clone(),
            ))
        });
        // Tunnel traffic will arrive here; until then the inbox only hears link events.
        while let Ok(msg) = ctx.receive(MODULE).await {
            log::debug!("edgemesh: {} {}", msg.operation(), msg.resource());
        }
        stop.cancel();
        let _ = tokio::join!(following, serving);
        if let Some(rules) = rules {
            let _ = rules.await;
        }
        Ok(())
    }
}

/// Installs the rules after each catalog change, repairs them when they go missing, and
/// removes them at the end.
async fn keep_rules(
    catalog: Arc<ArcSwap<Catalog>>,
    mut generation: watch::Receiver<u64>,
    port: u16,
    every: Duration,
    stop: CancellationToken,
) {
    let mut installed: Option<usize> = None;
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
        let vips = catalog.load().vips();
        match iptables::apply(&vips, port).await {
            Ok(()) => {
                let count = vips.iter().filter(|v| v.is_ipv4()).count();
                log::info!("iptables: {count} service port(s) redirected to :{port}");
                installed = Some(count);
            }
            Err(e) => log::error!("{e}"),
        }
    }
    if installed.is_some() {
        match iptables::remove().await {
            Ok(()) => log::info!("iptables rules removed"),
            Err(e) => log::error!("removing iptables rules: {e}"),
        }
    }
}
