//! The bus module: delivers messages addressed to nodes and runs the server.

use std::sync::Arc;

use beehive::{Context, Module, ModuleError, async_trait};
use rustls::ServerConfig;
use tokio::net::TcpListener;

use crate::config::CloudHubConfig;
use crate::hub::Hub;
use crate::server;

/// Module name on the bus.
pub const MODULE: &str = "cloudhub";
/// Group of the module.
pub const GROUP: &str = "cloudhub";

/// The cloudhub module. It takes a bound listener, so the process reports a busy port
/// before it starts and tests bind `127.0.0.1:0`.
pub struct CloudHub {
    config: CloudHubConfig,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    hub: Arc<Hub>,
}

impl CloudHub {
    /// A module serving on `listener`, with TLS (client certificates required) when `tls`
    /// is given.
    pub fn new(
        config: CloudHubConfig,
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
    ) -> Self {
        CloudHub {
            hub: Hub::new(config.clone()),
            config,
            listener,
            tls,
        }
    }

    /// The shared state, for stats.
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }
}

#[async_trait]
impl Module for CloudHub {
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
        if let Ok(addr) = listener.local_addr() {
            let scheme = if this.tls.is_some() { "wss" } else { "ws" };
            log::info!("cloudhub listening on {scheme}://{addr}");
        }
        this.hub.set_context(ctx.clone());
        let stop = this.hub.shutdown.clone();
        let serving = tokio::spawn(server::serve(
            listener,
            this.hub.clone(),
            this.tls.clone(),
            stop.child_token(),
        ));
        let mut batch = Vec::with_capacity(256);
        while ctx.receive_many(MODULE, &mut batch, 256).await.is_ok() {
            for msg in batch.drain(..) {
                this.hub.deliver(msg);
            }
        }
        // Closing every session tells each node why its link ends.
        stop.cancel();
        let _ = serving.await;
        Ok(())
    }
}
