//! The bus module: delivers messages addressed to nodes and runs the server.

use std::sync::Arc;

use beehive::{Context, Module, ModuleError, async_trait};
use rustls::ServerConfig;
use tokio::net::TcpListener;

use crate::config::CloudHubConfig;
use crate::hub::Hub;
use crate::object_sync::ObjectSync;
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
    /// is given. Fails when the record of what nodes hold (`objectSyncDb`) cannot be opened.
    pub fn new(
        config: CloudHubConfig,
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
    ) -> crate::Result<Self> {
        let record = ObjectSync::open(&config.object_sync_db)?;
        Ok(CloudHub {
            hub: Hub::new(config.clone(), record),
            config,
            listener,
            tls,
        })
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
        let flushing = tokio::spawn(flush_acks(this.hub.clone(), stop.clone()));
        let mut batch = Vec::with_capacity(256);
        while ctx.receive_many(MODULE, &mut batch, 256).await.is_ok() {
            this.hub.deliver_all(batch.drain(..));
        }
        // Closing every session tells each node why its link ends.
        stop.cancel();
        let _ = serving.await;
        cloud_mesh.abort();
        let _ = flushing.await;
        this.hub.object_sync().flush();
        this.hub.detach_cloud("cloudcore is shutting down");
        Ok(())
    }
}

/// How long ACKs wait in memory before they are written (when no delivery writes them
/// first). Losing them in a crash only makes the record less precise, never wrong.
const ACK_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

/// Writes buffered ACKs to the record now and then, until shutdown.
async fn flush_acks(hub: Arc<Hub>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(ACK_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => hub.object_sync().flush(),
        }
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
