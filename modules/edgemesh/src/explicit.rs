//! The explicit proxy: one listener for apps that iptables does not cover, and for use
//! without root. It speaks HTTP CONNECT, absolute-URI HTTP (`curl -x`) and SOCKS5
//! (`curl --socks5-hostname`), and SOCKS5 UDP ASSOCIATE for UDP Services
//! ([`crate::udp::associate`]); names are Service names. Once a connection knows its
//! Service it takes the same path as an intercepted one: same balancing, same policies.
//!
//! It reaches cluster Services only: it is not an open proxy to the outside world.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::http;
use crate::metrics::Reason;
use crate::prefixed::Prefixed;
use crate::proxy::{accept_each, dispatch};
use crate::refusal;
use crate::shared::Shared;
use crate::udp::associate;

/// How long a client may take to say where it is going.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read before a CONNECT is recognised.
const MAX_HEAD: usize = 16 * 1024;

/// Accepts proxy clients until `stop`, each in its own task.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    accept_each(&listener, "explicit proxy", &stop, |stream, peer| {
        // Tracked like an intercepted connection, so a drain waits for it (or cuts it).
        let served = shared.drain.run(handle(stream, peer, shared.clone()));
        async move { served.await.unwrap_or(Ok(())) }
    })
    .await;
}

/// What a client asked for before its traffic starts.
enum Opening {
    /// A tunnel to this Service address, with any bytes sent after the request.
    Tunnel(SocketAddr, Vec<u8>),
    /// Plain proxy HTTP: the bytes read so far belong to the first request.
    Http(Vec<u8>),
    /// A SOCKS5 UDP association; the address the client said it would send from.
    Associate(SocketAddr),
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> Result<()> {
    let _ = stream.set_nodelay(true);
    let opening = tokio::time::timeout(HANDSHAKE_TIMEOUT, open(&mut stream, &shared))
        .await
        .map_err(|_| Error::Protocol("no proxy request in time".into()))??;
    // Boxed: a task's memory is its future's largest state, and a client that has not
    // spoken yet should cost the handshake's few bytes, not the forwarders' state.
    match opening {
        Opening::Tunnel(vip, early) => Box::pin(dispatch(stream, early, peer, vip, shared)).await,
        Opening::Http(head) => {
            Box::pin(serve_http(Prefixed::new(head, stream), peer, shared)).await;
            Ok(())
        }
        Opening::Associate(expect) => {
            // The relay listens where the client reached this proxy, so it can reach that.
            let relay = match UdpSocket::bind((stream.local_addr()?.ip(), 0)).await {
                Ok(relay) => relay,
                Err(e) => {
                    // 1: general failure.
                    socks_reply(&mut stream, 1).await?;
                    return Err(e.into());
                }
            };
            socks_reply_from(&mut stream, 0, relay.local_addr()?).await?;
            Box::pin(associate::serve(stream, relay, peer, expect, shared)).await;
            Ok(())
        }
    }
}

async fn open(stream: &mut TcpStream, shared: &Shared) -> Result<Opening> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(Error::Protocol("closed before a request".into()));
    }
    opening(first[0], stream, shared).await
}

/// Reads the client's request, whose first byte (peeked, still unread) is `first`. Generic
/// over the stream so the fuzz target can feed it bytes from memory.
async fn opening<S>(first: u8, stream: &mut S, shared: &Shared) -> Result<Opening>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if first == 5 {
        return Box::pin(socks5(stream, shared)).await;
    }
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.reserve(1024);
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(Error::Protocol("closed in the request head".into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                if req.method != Some("CONNECT") {
                    return Ok(Opening::Http(buf));
                }
                let authority = req.path.unwrap_or_default().to_owned();
                return match resolve_authority(&authority, None, shared) {
                    Ok(vip) => {
                        stream
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await?;
                        Ok(Opening::Tunnel(vip, buf.split_off(len)))
                    }
                    Err(e) => {
                        refuse_connect(stream, &e).await?;
                        Err(e)
                    }
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            // Not HTTP that httparse reads (or too long): hyper answers it properly.
            _ => return Ok(Opening::Http(buf)),
        }
    }
}

/// Answers a refused CONNECT in plain text, the way the HTTP path answers.
async fn refuse_connect<S: AsyncWrite + Unpin>(stream: &mut S, error: &Error) -> Result<()> {
    stream
        .write_all(&refusal::refusal_bytes(error, true))
        .await?;
    stream.shutdown().await?;
    Ok(())
}

/// Serves absolute-URI requests on one client connection, each to the Service its URI
/// names.
async fn serve_http(io: Prefixed, peer: SocketAddr, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        async move {
            let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned()) else {
                return Ok::<_, Infallible>(refusal::refusal(&Error::Protocol(
                    "this is a proxy: send the request with an absolute URI (curl -x)".into(),
                )));
            };
            match resolve_authority(&authority, Some(80), &shared) {
                Ok(vip) => Ok(http::forward(req, peer, vip, &shared).await),
                Err(e) => Ok(refusal::refusal(&e)),
            }
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
    {
        log::debug!("explicit proxy: {peer}: {e}");
    }
}

/// The Service address of `host:port` (the port may be left out when `default_port` is
/// given).
fn resolve_authority(
    authority: &str,
    default_port: Option<u16>,
    shared: &Shared,
) -> Result<SocketAddr> {
    let bad = || Error::Protocol(format!("{authority:?} is not host:port"));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, default_port.ok_or_else(bad)?),
    };
    resolve(host, port, shared)
}

/// The Service address of a host name or ClusterIP and a port.
pub fn resolve(host: &str, port: u16, shared: &Shared) -> Result<SocketAddr> {
    resolve_port(host, port, shared, false)
}

/// The Service address of a host name or ClusterIP and a UDP port.
pub fn resolve_udp(host: &str, port: u16, shared: &Shared) -> Result<SocketAddr> {
    resolve_port(host, port, shared, true)
}

fn resolve_port(host: &str, port: u16, shared: &Shared, udp: bool) -> Result<SocketAddr> {
    let catalog = shared.catalog.load();
    let unknown = || {
        shared.unknown.error(Reason::unknown_service);
        Error::UnknownName(format!(
            "{host}:{port}{} (this proxy reaches cluster Services only)",
            if udp { "/udp" } else { "" }
        ))
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        let vip = SocketAddr::new(ip, port);
        let known = if udp {
            catalog.lookup_udp(vip).is_some()
        } else {
            catalog.lookup(vip).is_some()
        };
        return known.then_some(vip).ok_or_else(unknown);
    }
    let name = shared.names.service(host).ok_or_else(unknown)?;
    if udp {
        let ip = catalog.cluster_ip(&name.namespace, &name.name);
        return catalog
            .target_udp(&name.namespace, &name.name, port)
            .and(ip)
            .map(|ip| SocketAddr::new(ip, port))
            .ok_or_else(unknown);
    }
    catalog
        .vip(&name.namespace, &name.name, &port.to_string())
        .ok_or_else(unknown)
}

/// The SOCKS5 greeting and a CONNECT or UDP ASSOCIATE request (RFC 1928), without
/// authentication.
async fn socks5<S>(stream: &mut S, shared: &Shared) -> Result<Opening>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = [0u8; 2];
    stream.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        stream.write_all(&[5, 0xff]).await?;
        return Err(Error::Protocol(
            "SOCKS5 client offers no unauthenticated method".into(),
        ));
    }
    stream.write_all(&[5, 0]).await?;
    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    let [version, command, _, kind] = request;
    if version != 5 {
        return Err(Error::Protocol(format!("SOCKS version {version}")));
    }
    let host = match kind {
        1 => {
            let mut ip = [0u8; 4];
            stream.read_exact(&mut ip).await?;
            Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let len = stream.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            stream.read_exact(&mut name).await?;
            String::from_utf8(name)
                .map_err(|_| Error::Protocol("SOCKS5 host name is not UTF-8".into()))?
        }
        4 => {
            let mut ip = [0u8; 16];
            stream.read_exact(&mut ip).await?;
            Ipv6Addr::from(ip).to_string()
        }
        other => {
            socks_reply(stream, 8).await?;
            return Err(Error::Protocol(format!("SOCKS5 address type {other}")));
        }
    };
    let port = stream.read_u16().await?;
    if command == 3 && shared.udp.is_some() {
        // DST here is where the client will send from; zeros when it does not know.
        let ip = host.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        return Ok(Opening::Associate(SocketAddr::new(ip, port)));
    }
    if command != 1 {
        socks_reply(stream, 7).await?;
        return Err(Error::Protocol(format!(
            "SOCKS5 command {command} (CONNECT, and UDP ASSOCIATE with udp on)"
        )));
    }
    match resolve(&host, port, shared) {
        Ok(vip) => {
            socks_reply(stream, 0).await?;
            Ok(Opening::Tunnel(vip, Vec::new()))
        }
        Err(e) => {
            // 4: host unreachable.
            socks_reply(stream, 4).await?;
            Err(e)
        }
    }
}

async fn socks_reply<S: AsyncWrite + Unpin>(stream: &mut S, code: u8) -> Result<()> {
    stream.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    Ok(())
}

/// A reply naming an address (BND.ADDR and BND.PORT): the relay of a UDP association.
async fn socks_reply_from<S: AsyncWrite + Unpin>(
    stream: &mut S,
    code: u8,
    addr: SocketAddr,
) -> Result<()> {
    let mut reply = vec![5, code, 0];
    reply.extend_from_slice(&associate::socks_address(addr));
    stream.write_all(&reply).await?;
    Ok(())
}

/// Entry points for the fuzz targets in `fuzz/` (not an API: it may change at any time).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Reads a client's proxy request from `client` (all it sends before closing) as the
    /// listener does: the Service address of a tunnel with the bytes sent after the
    /// request, or `None` for plain proxy HTTP or a UDP association. Also returns what the
    /// proxy wrote back.
    pub async fn open(
        client: &[u8],
        shared: &Shared,
    ) -> (Result<Option<(SocketAddr, Vec<u8>)>>, Vec<u8>) {
        let Some(&first) = client.first() else {
            return (
                Err(Error::Protocol("closed before a request".into())),
                Vec::new(),
            );
        };
        let mut stream = tokio::io::join(client, Vec::new());
        let opened = opening(first, &mut stream, shared).await;
        let (_, written) = stream.into_inner();
        let opened = opened.map(|o| match o {
            Opening::Tunnel(vip, early) => Some((vip, early)),
            Opening::Http(_) | Opening::Associate(_) => None,
        });
        (opened, written)
    }
}
