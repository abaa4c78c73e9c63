//! The accepting end of a stream: a node (or the cloud) dials only endpoints of Services it
//! knows, on itself, for whoever the hub says opened the stream; the Service's QPS limit
//! is the one local clients share. Nothing else is ever dialled: no open relay.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use proto::stream::{Open, ProtocolHint, ResetCode, StreamId};
use tokio::net::TcpStream;

use super::Tunnel;
use super::datagram::{self, DatagramStream};
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
    /// Quiet time after which a datagram stream is closed, for Services without their own
    /// (`edgemesh.io/udp-idle-timeout`); the opener's flow normally ends it first.
    pub udp_idle: Duration,
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
        let target = if open.protocol == ProtocolHint::Datagram {
            catalog.target_udp(&open.namespace, &open.name, open.port)
        } else {
            catalog.target(&open.namespace, &open.name, open.port)
        };
        let Some(target) = target else {
            return refuse(
                ResetCode::UnknownService,
                format!(
                    "no {} Service port {service}:{}",
                    if open.protocol == ProtocolHint::Datagram {
                        "UDP"
                    } else {
                        "TCP"
                    },
                    open.port
                ),
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
        let stats = target.stats.handle();
        if open.protocol == ProtocolHint::Datagram {
            let idle = target.udp_idle.unwrap_or(self.udp_idle);
            drop(catalog);
            return self.relay_datagrams(tunnel, stream, open, (source, service), idle, stats);
        }
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

    /// A datagram stream (a UDP flow elsewhere): a socket connected to the endpoint, the
    /// acceptance granted at once (UDP has no handshake to wait for), and datagrams relayed
    /// both ways until the opener ends the flow or it is idle for `idle`.
    fn relay_datagrams(
        self: Arc<Self>,
        tunnel: Arc<Tunnel>,
        stream: super::TunnelStream,
        open: Open,
        (source, service): (String, String),
        idle: Duration,
        stats: Arc<crate::metrics::ServiceStats>,
    ) {
        let endpoint = open.endpoint;
        let socket = match datagram::connect_udp(endpoint) {
            Ok(socket) => socket,
            Err(e) => {
                log::warn!("tunnel: datagrams from {source} to {service}: {endpoint}: {e}");
                self.metrics.tunnel_stream(&open.source_node, "refused");
                stream.abort(ResetCode::Refused, &format!("socket to {endpoint}: {e}"));
                return;
            }
        };
        self.metrics.tunnel_stream(&open.source_node, "accepted");
        tunnel.grant(&stream);
        stats.udp_flows.inc();
        log::debug!("tunnel: {source} → {service} ({endpoint}) datagrams");
        tokio::spawn(async move {
            let _active = crate::metrics::Active::on(&stats);
            let stream = DatagramStream::new(stream);
            if let Err(e) = datagram::relay(socket, stream, idle, &stats).await {
                log::debug!("tunnel: datagrams {source} → {service} ({endpoint}): {e}");
            }
        });
    }
}
