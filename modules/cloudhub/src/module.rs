//! The bus module: delivers messages addressed to nodes and runs the server.

use std::sync::Arc;

use beehive::{Context, Module, ModuleError, async_trait};
use rustls::ServerConfig;
use tokio::net::TcpListener;

use crate::config::CloudHubConfig;
use crate::hub::Hub;
use crate::server;
use proto::stream::{Carriage, MESH_LANE};

/// Bus group of the mesh module that takes streams for the cloud.
const MESH_GROUP: &str = "mesh";

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
        let cloud_mesh = tokio::spawn(serve_cloud_mesh(ctx.clone(), this.hub.clone()));
        let mut batch = Vec::with_capacity(256);
        while ctx.receive_many(MODULE, &mut batch, 256).await.is_ok() {
            for msg in batch.drain(..) {
                this.hub.deliver(msg);
            }
        }
        // Closing every session tells each node why its link ends.
        stop.cancel();
        let _ = serving.await;
        cloud_mesh.abort();
        this.hub.detach_cloud("cloudcore is shutting down");
        Ok(())
    }
}

/// When cloudcore runs a mesh module, it is the port for streams that leave the edge
/// (endpoints in the cloud, and cloud workloads calling edge Services): its frames go to
/// the router as they come.
async fn serve_cloud_mesh(ctx: Context, hub: Arc<Hub>) {
    if ctx.members(MESH_GROUP).is_empty() {
        return;
    }
    let lane = match ctx.lane::<Carriage>(MESH_LANE) {
        Ok(lane) => lane,
        Err(e) => {
            log::error!("no lane to the cloud mesh: {e}");
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    hub.attach_cloud(lane.clone());
    if lane.send(Carriage::Up(tx)).is_err() {
        return;
    }
    let port = crate::hub::cloud_port();
    while let Some(frame) = rx.recv().await {
        hub.stream_inbound(&port, frame);
    }
    hub.detach_cloud("the cloud mesh stopped");
}
