//! The HTTP-aware path: HTTP/1.1 (keep-alive) and HTTP/2 (h2c, gRPC) served by hyper, every
//! request balanced on its own over pooled upstream connections, upgrades (WebSocket)
//! passed through, and failures answered in plain text.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use hyper::client::conn::http1::SendRequest;

use crate::catalog::Target;
use crate::error::Error;
use crate::lb::{Backend, InFlight, Strategy};
use crate::metrics::Reason;
use crate::prefixed::Prefixed;
use crate::proxy::{Shared, admit, choose, dial, ip_key};

/// A response body: the upstream's, or ours.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The shared HTTP/2 (h2c) upstream client: it multiplexes many streams per connection.
pub struct Upstreams {
    h2: Client<HttpConnector, Incoming>,
}

impl Upstreams {
    /// A client dialling with `connect_timeout`, keeping idle connections `idle`.
    pub fn new(connect_timeout: Duration, idle: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(idle)
            .pool_timer(TokioTimer::new());
        Upstreams {
            h2: builder.http2_only(true).build(connector),
        }
    }
}

/// Upstream HTTP/1.1 connections of one client connection, by endpoint. A client
/// connection sends one request at a time, so one upstream connection per endpoint is
/// enough, and keeping them here (not in a shared pool) means no lock is shared between
/// worker threads on the request path.
#[derive(Default)]
pub struct Http1Pool {
    conns: Mutex<HashMap<SocketAddr, SendRequest<Incoming>>>,
}

impl Http1Pool {
    /// Sends `req` to `backend` on a kept connection or a new one; an upgrade request gets
    /// a connection of its own, since the upgrade takes it over.
    async fn send(
        &self,
        req: Request<Incoming>,
        target: &Target,
        backend: &Backend,
        shared: &Shared,
        upgrade: bool,
    ) -> Result<Response<Incoming>, Error> {
        let upstream = |reason: String| Error::Upstream {
            service: target.service.clone(),
            endpoint: backend.addr,
            reason,
        };
        let kept = self
            .conns
            .lock()
            .expect("pool poisoned")
            .remove(&backend.addr);
        let mut sender = match kept {
            Some(s) if !s.is_closed() => s,
            _ => {
                let stream = dial(target, backend, shared).await?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| upstream(e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        log::debug!("upstream connection: {e}");
                    }
                });
                sender
            }
        };
        sender.ready().await.map_err(|e| upstream(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| upstream(e.to_string()))?;
        if !upgrade {
            self.conns
                .lock()
                .expect("pool poisoned")
                .insert(backend.addr, sender);
        }
        Ok(resp)
    }
}

/// Plain-text answer with `status`.
pub fn text(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    let mut body = reason.into();
    body.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
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
    let pool = Arc::new(Http1Pool::default());
    let drain = shared.drain.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let pool = pool.clone();
        async move { Ok::<_, Infallible>(forward(req, peer, dst, &shared, &pool).await) }
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
    shared: &Shared,
    pool: &Http1Pool,
) -> Response<Body> {
    let Some(target) = shared.catalog.load().lookup(dst).cloned() else {
        shared.unknown.error(Reason::unknown_service);
        return refusal(&Error::UnknownService(dst));
    };
    target.stats.http_requests.inc();
    let started = std::time::Instant::now();
    match send(req, peer, &target, shared, pool).await {
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

/// The plain-text answer to a failure.
pub fn refusal(error: &Error) -> Response<Body> {
    let mut resp = text(refusal_status(error), error.to_string());
    if let Some(secs) = retry_after(error) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The status a failure is answered with.
pub fn refusal_status(error: &Error) -> StatusCode {
    match error {
        Error::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Connect { .. } | Error::Upstream { .. } => StatusCode::BAD_GATEWAY,
        Error::ConnectTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::Protocol(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `Retry-After` seconds for a QPS refusal: whole seconds, rounded up, at least 1 (a
/// client told 0 would come straight back).
fn retry_after(error: &Error) -> Option<u64> {
    match error {
        Error::Limited { retry_after, .. } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            Some(secs.max(1))
        }
        _ => None,
    }
}

/// The same answer as raw HTTP/1.1 bytes, for paths that write to the socket themselves;
/// `close` adds `connection: close`.
pub fn refusal_bytes(error: &Error, close: bool) -> Vec<u8> {
    let status = refusal_status(error);
    let body = format!("{error}\n");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(secs) = retry_after(error) {
        out.push_str(&format!("retry-after: {secs}\r\n"));
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

async fn send(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    target: &Target,
    shared: &Shared,
    pool: &Http1Pool,
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
    let pick = choose(target, key.as_deref())?;
    let backend = pick.backend;
    admit(target, backend, shared)?;
    let _inflight = InFlight::on(backend);
    let upgrade = is_upgrade(&req);
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let sent = if req.version() == Version::HTTP_2 {
        // The shared client wants an absolute URI naming the endpoint.
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        match format!("http://{}{path}", backend.addr).parse::<Uri>() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Err(Error::Protocol(format!("bad request target: {e}"))),
        }
        shared.upstreams.h2.request(req).await.map_err(|e| {
            let reason = e.to_string();
            if e.is_connect() {
                Error::Connect {
                    service: target.service.clone(),
                    endpoint: backend.addr,
                    reason,
                }
            } else {
                Error::Upstream {
                    service: target.service.clone(),
                    endpoint: backend.addr,
                    reason,
                }
            }
        })
    } else {
        origin_form(&mut req);
        pool.send(req, target, backend, shared, upgrade).await
    };
    let mut resp = match sent {
        Ok(resp) if resp.status().is_server_error() => {
            pick.failure();
            resp
        }
        Ok(resp) => {
            pick.success();
            resp
        }
        Err(e) => {
            pick.failure();
            return Err(e);
        }
    };
    if let Some(client_upgrade) = client_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let service = target.service.clone();
        let stats = target.stats.clone();
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
fn origin_form(req: &mut Request<Incoming>) {
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
