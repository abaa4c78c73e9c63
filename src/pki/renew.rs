//! The edge renews its certificate before it expires: at `renewAtPercent` of its life it
//! asks cloudcore's PKI for a new one (with a new key), authenticated by the current
//! certificate, writes it, and hands edgehub the new TLS settings, which ends the live
//! link and redials with them at once. The cloud resends whatever the old link had not had
//! ACKed, so no message is lost in the switch.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pki::join::{NodeFiles, renew, validity};

/// Never renew more often than this, whatever the certificate's dates say (a clock far
/// off, or a life so short that the due time is always past).
const MIN_GAP: Duration = Duration::from_secs(1);
/// Longest wait between failed attempts.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What the renewal needs.
pub struct Renewal {
    /// cloudcore's PKI port.
    pub address: String,
    /// This node.
    pub node: String,
    /// The files edgehub's TLS settings name.
    pub tls: edgehub::TlsFiles,
    /// Percent of the life after which to renew.
    pub percent: u8,
    /// Where new TLS settings go (edgehub's source).
    pub publish: watch::Sender<Arc<rustls::ClientConfig>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn pause(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Renews until `stop`.
pub async fn run(r: Renewal, stop: CancellationToken) {
    let files = NodeFiles::of(&r.tls);
    let mut retry = MIN_GAP;
    loop {
        let wait = match validity(&files.cert) {
            Ok((not_before, not_after)) => {
                let due = not_before + (not_after - not_before) * i64::from(r.percent) / 100;
                Duration::from_secs(u64::try_from(due - now()).unwrap_or(0))
            }
            Err(e) => {
                log::warn!("certificate renewal: {e}");
                MAX_RETRY
            }
        };
        if wait > Duration::ZERO {
            log::info!("certificate renewal due in {} s", wait.as_secs());
        }
        if !pause(wait.max(MIN_GAP), &stop).await {
            return;
        }
        let renewed = match renew(&r.address, &r.node, &files).await {
            Ok(()) => crate::tls::client_config(&r.tls),
            Err(e) => Err(e),
        };
        match renewed {
            Ok(config) => {
                retry = MIN_GAP;
                r.publish.send_replace(config);
                let until = validity(&files.cert).map_or(0, |(_, after)| after);
                log::info!("certificate renewed: valid until {until} (unix time)");
            }
            Err(e) => {
                log::warn!(
                    "certificate renewal failed, retrying in {} s: {e}",
                    retry.as_secs()
                );
                if !pause(retry, &stop).await {
                    return;
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}
