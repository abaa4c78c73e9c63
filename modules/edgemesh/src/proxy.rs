//! The interception listener: recovers where each connection was going, detects the
//! protocol, and hands HTTP to the per-request path and everything else (TLS included) to
//! an opaque relay, so any protocol passes: Redis, PostgreSQL, MQTT...

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use tokio::io::AsyncWriteExt;

use crate::catalog::Target;
use crate::error::{Error, Result};
use crate::h1;
use crate::http;
use crate::lb::Strategy;
use crate::metrics::{Active, Reason};
use crate::prefixed::Prefixed;
use crate::relay::relay;
use crate::shared::{Shared, ip_key};
use crate::sniff::{Protocol, classify, sniff};
use crate::spread::{Seat, accept};
use crate::tunnel::pipe::pipe_on_link_runtime;
use crate::upstream::Conn;

/// Serves intercepted connections until `stop`, as worker `seat` (see [`Seat::serve`]):
/// those its `listener` accepts and those other workers hand it. Each is served by its own
/// task, so a stalled client holds up nobody else.
pub async fn serve(
    listener: TcpListener,
    seat: Seat,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    // Every worker's socket has this address (SO_REUSEPORT).
    let local = listener.local_addr().ok();
    seat.serve(Some(listener), "edgemesh", stop, |stream, peer| {
        handle(stream, peer, local, shared.clone())
    })
    .await;
}

/// Accepts connections on `listener` until `stop`, each served by `serve` in a task of its
/// own; a failure is logged once (see [`Error::log`]).
pub async fn accept_each<F, Fut>(
    listener: &TcpListener,
    what: &str,
    stop: &CancellationToken,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            // Matched by hand: with a `Some(..)` pattern a failed accept would disable
            // this branch and leave the select waiting for `stop` alone.
            accepted = accept(Some(listener), what) => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
        };
        let served = serve(stream, peer);
        tokio::spawn(async move {
            if let Err(e) = served.await {
                e.log(peer);
            }
        });
    }
}

/// A listening socket for intercepted connections, with `SO_REUSEPORT` so that each worker
/// thread can have a socket of its own on the same address (the kernel's spread over them
/// is evened out in [`crate::spread`]).
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

/// Where an intercepted connection from `peer` was going (`SO_ORIGINAL_DST`). The peer's
/// address family is the socket's, so no `getsockname` is needed to pick the option.
pub fn original_dst(stream: &TcpStream, peer: SocketAddr) -> std::io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = match peer {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}

async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    shared: Arc<Shared>,
) -> Result<()> {
    let dst = original_dst(&client, peer)?;
    if Some(dst) == local {
        // Dialled directly, not redirected: there is no Service to go to.
        shared.unknown.error(Reason::unknown_service);
        return Err(Error::UnknownService(dst));
    }
    dispatch(client, Vec::new(), peer, dst, shared).await
}

/// Serves a connection meant for Service address `dst` (intercepted, or named through the
/// explicit proxy); `early` holds bytes the client already sent, if any.
pub async fn dispatch(
    mut client: TcpStream,
    early: Vec<u8>,
    peer: SocketAddr,
    dst: SocketAddr,
    shared: Arc<Shared>,
) -> Result<()> {
    let _ = client.set_nodelay(true);
    let Some(target) = shared.catalog.load().lookup(dst).cloned() else {
        shared.unknown.error(Reason::unknown_service);
        return Err(Error::UnknownService(dst));
    };
    let _active = Active::on(&target.stats);
    if target.opaque {
        return opaque(client, early, peer, &target, &shared).await;
    }
    let (protocol, first) = if early.is_empty() {
        sniff(&mut client, shared.sniff_timeout).await?
    } else {
        (classify(&early), early)
    };
    match protocol {
        Protocol::Http1 => {
            h1::serve(client, first, peer, dst, shared).await;
            Ok(())
        }
        Protocol::Http2 => {
            http::serve(Prefixed::new(first, client), true, peer, dst, shared).await;
            Ok(())
        }
        Protocol::Tls { sni } => {
            log::debug!(
                "{peer} → {dst}: TLS for {}",
                sni.as_deref().unwrap_or("(no SNI)")
            );
            opaque(client, first, peer, &target, &shared).await
        }
        Protocol::Opaque => opaque(client, first, peer, &target, &shared).await,
    }
}

/// Relays a connection as bytes, after the ones read for detection; every failure is
/// counted against the Service.
async fn opaque(
    client: TcpStream,
    first: Vec<u8>,
    peer: SocketAddr,
    target: &Target,
    shared: &Shared,
) -> Result<()> {
    target.stats.tcp_connections.inc();
    let relayed = relay_to(client, first, peer, target, shared).await;
    if let Err(e) = &relayed {
        target.stats.failed(e);
    }
    relayed
}

async fn relay_to(
    client: TcpStream,
    first: Vec<u8>,
    peer: SocketAddr,
    target: &Target,
    shared: &Shared,
) -> Result<()> {
    let key = (target.balancer.strategy() == Strategy::ConsistentHash).then(|| ip_key(peer));
    let (mut lease, mut server) = shared.upstream.dial(target, key.as_deref()).await?;
    lease.report(Ok(()));
    server.write_all(&first).await?;
    let (up, down) = match server {
        Conn::Tcp(server) => relay(client, server, shared.idle_timeout).await?,
        Conn::Tunnel(stream) => pipe_on_link_runtime(client, stream, shared.idle_timeout).await?,
    };
    let up = up + first.len() as u64;
    target.stats.bytes_sent.inc_by(up);
    target.stats.bytes_received.inc_by(down);
    log::debug!(
        "{peer} → {} via {}: {up} bytes up, {down} down",
        target.service,
        lease.addr()
    );
    Ok(())
}
