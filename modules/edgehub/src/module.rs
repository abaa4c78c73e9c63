//! The bus module: keeps the link up and carries what the bus sends up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use beehive::{Context, Module, ModuleError, async_trait};
use proto::{Message, Route, connection, group, operation};
use rustls::ClientConfig;

use crate::config::EdgeHubConfig;
use crate::link::{self, Ended, Uplink};

/// Module name on the bus (KubeEdge's).
pub const MODULE: &str = "websocket";
/// Group of the module (KubeEdge's).
pub const GROUP: &str = "hub";

/// A link that lived this long was healthy: its loss starts the backoff afresh.
const STABLE_LINK: Duration = Duration::from_secs(10);

/// The edgehub module.
pub struct EdgeHub {
    config: EdgeHubConfig,
    tls: Option<TlsSource>,
}

/// The TLS settings edgehub dials with, as they change: each dial takes the latest, and a
/// change (a renewed certificate) ends the live link so the next one presents it.
pub type TlsSource = watch::Receiver<Arc<ClientConfig>>;

impl EdgeHub {
    /// A module dialling per `config`, over TLS when `tls` is given.
    pub fn new(config: EdgeHubConfig, tls: Option<Arc<ClientConfig>>) -> Self {
        Self::renewable(config, tls.map(|t| watch::channel(t).1))
    }

    /// A module dialling per `config` with the TLS settings `tls` gives as they change.
    pub fn renewable(config: EdgeHubConfig, tls: Option<TlsSource>) -> Self {
        EdgeHub { config, tls }
    }
}

#[async_trait]
impl Module for EdgeHub {
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
        let uplink: Uplink = Arc::default();
        let dialer = tokio::spawn(keep_linked(ctx.clone(), *self, uplink.clone()));
        while let Ok(msg) = ctx.receive(MODULE).await {
            let tx = uplink.lock().expect("uplink poisoned").clone();
            let unsent = match tx {
                Some(tx) => tx.send(msg).await.err().map(|e| e.0),
                None => Some(msg),
            };
            if let Some(msg) = unsent {
                refuse_offline(&ctx, msg);
            }
        }
        let _ = dialer.await;
        Ok(())
    }
}

/// A sync request fails at once while offline; anything else is dropped (the cloud resends
/// what it has not had ACKed).
fn refuse_offline(ctx: &Context, msg: Message) {
    if msg.header.sync {
        ctx.send_resp(Message::error_reply(&msg, connection::LINK_DOWN));
    } else {
        log::debug!(
            "cloud link down: dropping a {} for {}",
            msg.operation(),
            msg.resource()
        );
    }
}

async fn keep_linked(ctx: Context, mut hub: EdgeHub, uplink: Uplink) {
    let config = &hub.config;
    let mut failures = 0u32;
    while !ctx.is_shutting_down() {
        let dialled = Instant::now();
        let ended = link::dial_and_run(&ctx, config, hub.tls.as_mut(), &uplink).await;
        let was_up = uplink.lock().expect("uplink poisoned").take().is_some();
        if was_up {
            publish(&ctx, false).await;
            // A link the cloud closes at once (a refused identity) backs off like a failed
            // dial; one that lived a while is redialled at once.
            if dialled.elapsed() >= STABLE_LINK {
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
            }
        }
        match ended {
            Ended::Shutdown => break,
            Ended::Renewed => {
                // Redialled at once with the new certificate; the cloud resends what the
                // old link had not had ACKed.
                log::info!("cloud link: redialling with the renewed certificate");
                failures = 0;
                continue;
            }
            Ended::Lost(why) => log::warn!("cloud link down: {why}"),
            Ended::DialFailed(why) => {
                failures = failures.saturating_add(1);
                log::warn!("cannot reach the cloud (attempt {failures}): {why}");
            }
        }
        let wait = config.backoff(failures.saturating_sub(1));
        tokio::select! {
            _ = ctx.done() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Tells every group (other than ours) the link state, as KubeEdge's edgehub does.
pub(crate) async fn publish(ctx: &Context, up: bool) {
    let content = if up {
        connection::CONNECTED
    } else {
        connection::DISCONNECTED
    };
    let event = Message::new(
        Route::new(
            MODULE,
            group::RESOURCE,
            operation::CONNECT,
            connection::RESOURCE,
        ),
        content,
    );
    for g in ctx.groups().into_iter().filter(|g| g != GROUP) {
        if let Err(e) = ctx.send_to_group(&g, event.clone()).await {
            log::debug!("link event to group {g}: {e}");
        }
    }
}
