//! The interception listener: recovers where each connection was going, detects the
//! protocol, and hands HTTP to the per-request path and everything else (TLS included) to
//! an opaque relay, so any protocol passes: Redis, PostgreSQL, MQTT...

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use tokio::io::AsyncWriteExt;

use crate::catalog::{Catalog, Target};
use crate::error::{Error, Result};
use crate::http::{self, Upstreams};
use crate::lb::{Backend, InFlight, Strategy};
use crate::prefixed::Prefixed;
use crate::relay::relay;
use crate::sniff::{Protocol, sniff};

/// What every connection needs.
pub struct Shared {
    /// The current snapshot.
    pub catalog: Arc<ArcSwap<Catalog>>,
    /// This node's name: endpoints elsewhere go through the tunnel.
    pub node: String,
    /// Limit on dialling an endpoint.
    pub connect_timeout: Duration,
    /// Limit on a silent connection.
    pub idle_timeout: Duration,
    /// How long to wait for a client's first bytes before treating it as opaque.
    pub sniff_timeout: Duration,
    /// Pooled upstream HTTP clients.
    pub upstreams: Upstreams,
}

/// Accepts intercepted connections until `stop`; each is served by its own task, so a
/// stalled client holds up nobody else.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, peer, local, shared).await {
                log::warn!("{peer}: {e}");
            }
        });
    }
}

/// A listening socket for intercepted connections, with `SO_REUSEPORT` so that each worker
/// thread can have a socket of its own on the same address and the kernel spreads
/// connections over them evenly.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Where an intercepted connection was going (`SO_ORIGINAL_DST`).
pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    shared: Arc<Shared>,
) -> Result<()> {
    let dst = original_dst(&client)?;
    if Some(dst) == local {
        // Dialled directly, not redirected: there is no Service to go to.
        return Err(Error::UnknownService(dst));
    }
    let _ = client.set_nodelay(true);
    let declared_opaque = shared.catalog.load().lookup(dst).is_some_and(|t| t.opaque);
    if declared_opaque {
        return opaque(client, Vec::new(), peer, dst, &shared).await;
    }
    let (protocol, first) = sniff(&mut client, shared.sniff_timeout).await?;
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let h2 = protocol == Protocol::Http2;
            http::serve(Prefixed::new(first, client), h2, peer, dst, shared).await;
            Ok(())
        }
        Protocol::Tls { sni } => {
            log::debug!(
                "{peer} → {dst}: TLS for {}",
                sni.as_deref().unwrap_or("(no SNI)")
            );
            opaque(client, first, peer, dst, &shared).await
        }
        Protocol::Opaque => opaque(client, first, peer, dst, &shared).await,
    }
}

/// Relays a connection as bytes, after the ones read for detection.
async fn opaque(
    client: TcpStream,
    first: Vec<u8>,
    peer: SocketAddr,
    dst: SocketAddr,
    shared: &Shared,
) -> Result<()> {
    let target = shared
        .catalog
        .load()
        .lookup(dst)
        .cloned()
        .ok_or(Error::UnknownService(dst))?;
    let key = (target.balancer.strategy() == Strategy::ConsistentHash).then(|| ip_key(peer));
    let backend = choose(&target, key.as_deref())?;
    let _inflight = InFlight::on(backend);
    let mut server = dial(&target, backend, shared).await?;
    server.write_all(&first).await?;
    let (up, down) = relay(client, server, shared.idle_timeout).await?;
    log::debug!(
        "{peer} → {} via {}: {} bytes up, {down} down",
        target.service,
        backend.addr,
        up + first.len() as u64
    );
    Ok(())
}

/// Picks an endpoint that this node can reach now.
pub fn choose<'a>(target: &'a Target, key: Option<&[u8]>) -> Result<&'a Backend> {
    target
        .balancer
        .pick(&target.backends, key)
        .ok_or_else(|| Error::NoEndpoint(target.service.clone()))
}

/// The ConsistentHash key of a connection: its client's IP (not the port), as bytes.
pub fn ip_key(peer: SocketAddr) -> Vec<u8> {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

/// Ok for an endpoint this node dials itself (on this node, or with no node recorded); one
/// on another node is a typed error until the tunnel exists.
pub fn local_only(target: &Target, backend: &Backend, shared: &Shared) -> Result<()> {
    match &backend.node {
        Some(node) if *node != shared.node => Err(Error::Remote {
            service: target.service.clone(),
            endpoint: backend.addr,
            node: node.clone(),
        }),
        _ => Ok(()),
    }
}

/// Dials a local endpoint (see [`local_only`]).
pub async fn dial(target: &Target, backend: &Backend, shared: &Shared) -> Result<TcpStream> {
    local_only(target, backend, shared)?;
    let connect_err = |reason: String| Error::Connect {
        service: target.service.clone(),
        endpoint: backend.addr,
        reason,
    };
    let stream = tokio::time::timeout(shared.connect_timeout, TcpStream::connect(backend.addr))
        .await
        .map_err(|_| connect_err(format!("timed out after {:?}", shared.connect_timeout)))?
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
