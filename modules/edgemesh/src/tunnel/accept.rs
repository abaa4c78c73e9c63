//! The accepting end of a stream: a node (or the cloud) dials only endpoints of Services it
//! knows, on itself, for whoever the hub says opened the stream; the Service's QPS limit
//! is the one local clients share. Nothing else is ever dialled: no open relay.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use proto::stream::{Open, ResetCode, StreamId};
use tokio::net::TcpStream;

use super::Tunnel;
use super::pipe::pipe;
use crate::catalog::Catalog;
use crate::metrics::Metrics;

/// Where this end stands, and what it may dial.
#[derive(Debug)]
pub struct Acceptor {
    /// The Services and their endpoints.
    pub catalog: Arc<ArcSwap<Catalog>>,
    /// This node's name; empty for the cloud.
    pub node: String,
    /// Time to connect an endpoint.
    pub connect_timeout: Duration,
    /// Quiet time after which a stream and its connection are closed.
    pub idle_timeout: Duration,
    /// Counts per source node.
    pub metrics: Arc<Metrics>,
}

impl Acceptor {
    /// Whether an endpoint recorded on `node` is one this end dials: on an edge, its own
    /// node's only. In the cloud, any endpoint the hub routed here: the hub sends the
    /// cloud only endpoints that are not on an edge node.
    fn dials(&self, node: Option<&str>) -> bool {
        self.node.is_empty() || node == Some(self.node.as_str())
    }

    /// Takes a stream the far side opened: refused at once when not allowed, else dialled
    /// in a task of its own and piped.
    pub fn accept(self: Arc<Self>, tunnel: Arc<Tunnel>, id: StreamId, open: Open) {
        let source = if open.source_node.is_empty() {
            "the cloud".to_owned()
        } else {
            format!("node {}", open.source_node)
        };
        let service = format!("{}/{}", open.namespace, open.name);
        let refuse = |code: ResetCode, reason: String| {
            log::warn!(
                "tunnel: stream from {source} to {service}:{} ({}) refused: {reason}",
                open.port,
                open.endpoint
            );
            self.metrics.tunnel_stream(&open.source_node, code.as_str());
            tunnel.refuse(id, code, &reason);
        };
        let catalog = self.catalog.load();
        let Some(target) = catalog.target(&open.namespace, &open.name, open.port) else {
            return refuse(
                ResetCode::UnknownService,
                format!("no Service port {service}:{}", open.port),
            );
        };
        let allowed = target
            .backends
            .iter()
            .find(|b| b.addr == open.endpoint)
            .is_some_and(|b| self.dials(b.node.as_deref()));
        if !allowed {
            return refuse(
                ResetCode::Forbidden,
                format!(
                    "{} is not an endpoint of {service} on this node",
                    open.endpoint
                ),
            );
        }
        if let Some(limiter) = &target.limiter
            && limiter.check().is_err()
        {
            target.stats.error(crate::metrics::Reason::qps_limited);
            return refuse(
                ResetCode::Limited,
                format!("over {service}'s limit of {} per second", limiter.qps()),
            );
        }
        let Some(stream) = tunnel.accepted_stream(id, open.initial_window, source.clone()) else {
            return refuse(
                ResetCode::TooManyStreams,
                "this node has its limit of tunnel streams open".to_owned(),
            );
        };
        let stats = target.stats.clone();
        drop(catalog);
        let this = self.clone();
        tokio::spawn(async move {
            let endpoint = open.endpoint;
            let dialled =
                tokio::time::timeout(this.connect_timeout, TcpStream::connect(endpoint)).await;
            let conn = match dialled {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    log::warn!("tunnel: stream from {source} to {service}: {endpoint}: {e}");
                    this.metrics.tunnel_stream(&open.source_node, "refused");
                    stream.abort(ResetCode::Refused, &format!("connect {endpoint}: {e}"));
                    return;
                }
                Err(_) => {
                    this.metrics.tunnel_stream(&open.source_node, "timeout");
                    stream.abort(
                        ResetCode::Timeout,
                        &format!(
                            "connect {endpoint}: no answer in {:?}",
                            this.connect_timeout
                        ),
                    );
                    return;
                }
            };
            let _ = conn.set_nodelay(true);
            this.metrics.tunnel_stream(&open.source_node, "accepted");
            tunnel.grant(&stream);
            log::debug!(
                "tunnel: {source} → {service} ({endpoint}) stream {}",
                id.get()
            );
            match pipe(conn, stream, this.idle_timeout).await {
                Ok((to_endpoint, from_endpoint)) => {
                    stats.bytes_received.inc_by(from_endpoint);
                    stats.bytes_sent.inc_by(to_endpoint);
                }
                Err(e) => log::debug!("tunnel: {source} → {service} ({endpoint}): {e}"),
            }
        });
    }
}
