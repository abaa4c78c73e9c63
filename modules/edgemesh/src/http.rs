//! The HTTP-aware path: HTTP/1.1 (keep-alive) and HTTP/2 (h2c, gRPC) served by hyper, every
//! request balanced on its own over pooled upstream connections, upgrades (WebSocket)
//! passed through, and failures answered in plain text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::catalog::Target;
use crate::error::Error;
use crate::lb::Strategy;
use crate::metrics::Reason;
use crate::prefixed::Prefixed;
use crate::refusal::{Body, refusal};
use crate::shared::{Shared, ip_key};
use crate::upstream::{ClientBody, Conn, Fault, Lease};

/// Sends an HTTP/1 request over a connection from the shared pool (or a new one) and
/// gives the connection back once the response has ended, unless the endpoint wants it
/// closed. An upgrade request gets a connection of its own, since the upgrade takes it
/// over. A kept connection that turns out closed before the request went out is replaced
/// and the request sent once more (hyper hands back a request it did not send).
async fn send_h1(
    mut req: Request<ClientBody>,
    lease: &Lease<'_>,
    shared: &Arc<Shared>,
    upgrade: bool,
    fault: &Fault,
    first: (Conn, bool),
) -> Result<Response<Incoming>, Error> {
    let upstream = |reason: String| lease.upstream_error(reason);
    let mut fresh_only = upgrade;
    let mut first = Some(first);
    loop {
        let (conn, reused) = match first.take() {
            Some(first) => first,
            None => {
                let kept = if fresh_only {
                    None
                } else {
                    shared.upstream.kept(lease)
                };
                match kept {
                    Some(conn) => (conn, true),
                    None => (shared.upstream.connect(lease).await?, false),
                }
            }
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
            .await
            .map_err(|e| upstream(e.to_string()))?;
        let keep = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if upgrade {
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    log::debug!("upstream connection: {e}");
                }
            });
        } else {
            let poolable = shared.upstream.poolable(lease);
            let (keep, shared, addr) = (keep.clone(), shared.clone(), lease.addr());
            tokio::spawn(async move {
                // Ends once the response is over and the sender is gone.
                if let Ok(parts) = connection.without_shutdown().await
                    && parts.read_buf.is_empty()
                    && keep.load(Ordering::Relaxed)
                    && poolable
                {
                    shared.upstream.pool().put(addr, parts.io.into_inner());
                }
            });
        }
        match sender.try_send_request(req).await {
            Ok(resp) => {
                let close = resp.version() != Version::HTTP_11
                    || resp
                        .headers()
                        .get_all(header::CONNECTION)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(','))
                        .any(|t| t.trim().eq_ignore_ascii_case("close"));
                keep.store(!close, Ordering::Relaxed);
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => {
                    req = unsent;
                    fresh_only = true;
                }
                _ => return Err(fault.blame(e.into_error().to_string(), upstream)),
            },
        }
    }
}

/// Serves one client connection (its first bytes in `io` already) meant for `dst`, in the
/// HTTP version detection found, so hyper need not detect it again.
pub async fn serve(
    io: Prefixed,
    http2: bool,
    peer: SocketAddr,
    dst: SocketAddr,
    shared: Arc<Shared>,
) {
    let drain = shared.drain.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(forward(req, peer, dst, &shared).await) }
    });
    let io = TokioIo::new(io);
    let ended = if http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, service);
        drain.graceful(conn, |c| c.graceful_shutdown()).await
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(io, service)
            .with_upgrades();
        drain.graceful(conn, |c| c.graceful_shutdown()).await
    };
    if let Err(e) = ended {
        log::debug!("{peer}: HTTP connection ended: {e}");
    }
}

/// Headers that belong to one hop, not to the request.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        if keep_upgrade && (*name == header::UPGRADE || *name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    headers.remove("keep-alive");
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Answers `req`, meant for Service address `dst`, from one of its endpoints; every
/// failure is answered in plain text and counted against the Service.
pub async fn forward(
    req: Request<Incoming>,
    peer: SocketAddr,
    dst: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<Body> {
    let Some(target) = shared.catalog.load().lookup(dst).cloned() else {
        shared.unknown.error(Reason::unknown_service);
        return refusal(&Error::UnknownService(dst));
    };
    target.stats.http_requests.inc();
    let started = std::time::Instant::now();
    match send(req, peer, &target, shared).await {
        Ok(resp) => {
            target
                .stats
                .latency
                .observe(started.elapsed().as_secs_f64());
            if resp.status().is_server_error() {
                target.stats.error(Reason::upstream);
            }
            resp
        }
        Err(e) => {
            target.stats.failed(&e);
            e.log(peer);
            refusal(&e)
        }
    }
}

async fn send(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    target: &Target,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, Error> {
    // Only ConsistentHash reads a key; the others pay nothing for it.
    let key = (target.balancer.strategy() == Strategy::ConsistentHash).then(|| {
        target
            .hash_key
            .as_ref()
            .and_then(|name| req.headers().get(name.as_str()))
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_else(|| ip_key(peer))
    });
    let mut lease = shared.upstream.lease(target, key.as_deref())?;
    let upgrade = is_upgrade(&req);
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // The upgrade handle lives in the extensions, which the parts keep.
    let (parts, body) = req.into_parts();
    let (body, fault) = ClientBody::new(body);
    let mut req = Request::from_parts(parts, body);
    let sent = if req.version() == Version::HTTP_2 {
        // An h2 request arrives with :scheme and :authority, kept as the client sent them
        // (as the HTTP/1 path keeps Host); only a request without them gets the endpoint's.
        if req.uri().scheme().is_none() || req.uri().authority().is_none() {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            match format!("http://{}{path}", lease.addr()).parse::<Uri>() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(e) => return Err(Error::BadRequest(format!("bad request target: {e}"))),
            }
        }
        shared.upstream.send_h2(req, &lease, &fault).await
    } else {
        origin_form(&mut req);
        let kept = if upgrade {
            None
        } else {
            shared.upstream.kept(&lease)
        };
        let first = match kept {
            Some(conn) => (conn, true),
            None => match shared.upstream.connect(&lease).await {
                Ok(conn) => (conn, false),
                Err(e) => {
                    lease.report(Err(&e));
                    // Nothing of the request left: once more, to another endpoint if any.
                    let next = shared
                        .upstream
                        .may_retry(target, &e)
                        .then(|| {
                            shared
                                .upstream
                                .lease_except(target, key.as_deref(), Some(lease.addr()))
                                .ok()
                        })
                        .flatten();
                    let Some(next) = next else {
                        return Err(e);
                    };
                    log::debug!("{e}; trying {} instead", next.addr());
                    target.stats.error(crate::metrics::Reason::retried);
                    lease = next;
                    match shared.upstream.connect(&lease).await {
                        Ok(conn) => (conn, false),
                        Err(e) => {
                            lease.report(Err(&e));
                            return Err(e);
                        }
                    }
                }
            },
        };
        send_h1(req, &lease, shared, upgrade, &fault, first).await
    };
    let mut resp = match sent {
        Ok(resp) => {
            lease.report_status(resp.status().as_u16());
            resp
        }
        Err(e) => {
            lease.report(Err(&e));
            return Err(e);
        }
    };
    if let Some(client_upgrade) = client_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let service = target.service.clone();
        let stats = target.stats.handle();
        tokio::spawn(shared.drain.run(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((a, b)) => {
                    let mut a = TokioIo::new(a);
                    let mut b = TokioIo::new(b);
                    if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                        stats.bytes_sent.inc_by(up);
                        stats.bytes_received.inc_by(down);
                    }
                }
                Err(e) => log::warn!("{service}: upgrade failed: {e}"),
            }
        }));
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    Ok(resp.map(|b| b.map_err(Into::into).boxed()))
}

/// An HTTP/1 request as an origin server expects it: a path, with the authority of an
/// absolute URI (a proxy request) moved into `Host`.
fn origin_form<B>(req: &mut Request<B>) {
    let Some(authority) = req.uri().authority().cloned() else {
        return;
    };
    if !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    req.headers_mut().remove("proxy-connection");
}
