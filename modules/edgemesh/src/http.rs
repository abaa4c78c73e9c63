//! The HTTP-aware path: HTTP/1.1 (keep-alive) and HTTP/2 (h2c, gRPC) served by hyper, every
//! request balanced on its own over pooled upstream connections, upgrades (WebSocket)
//! passed through, and failures answered in plain text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use crate::error::Error;
use crate::lb::InFlight;
use crate::prefixed::Prefixed;
use crate::proxy::{Shared, choose};

/// A response body: the upstream's, or ours.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Upstream clients, shared by every connection: one pool for HTTP/1.1, one for h2c.
pub struct Upstreams {
    h1: Client<HttpConnector, Incoming>,
    h2: Client<HttpConnector, Incoming>,
}

impl Upstreams {
    /// Clients dialling with `connect_timeout`, keeping idle connections `idle`.
    pub fn new(connect_timeout: Duration, idle: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(idle).pool_timer(TokioTimer::new());
            b
        };
        Upstreams {
            h1: builder().build(connector.clone()),
            h2: builder().http2_only(true).build(connector),
        }
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

/// Serves one client connection (its first bytes in `io` already) meant for `dst`.
pub async fn serve(io: Prefixed, peer: SocketAddr, dst: SocketAddr, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(forward(req, peer, dst, &shared).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
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

async fn forward(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    dst: SocketAddr,
    shared: &Shared,
) -> Response<Body> {
    let catalog = shared.catalog.load();
    let Some(target) = catalog.lookup(dst).cloned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            Error::UnknownService(dst).to_string(),
        );
    };
    drop(catalog);
    let client_ip = peer.ip().to_string();
    let key = match &target.hash_key {
        Some(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_else(|| client_ip.into_bytes()),
        None => client_ip.into_bytes(),
    };
    let backend = match choose(&target, Some(&key)) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("{e}");
            return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
    };
    if let Some(node) = &backend.node
        && *node != shared.node
    {
        let e = Error::Remote {
            service: target.service.clone(),
            endpoint: backend.addr,
            node: node.clone(),
        };
        log::warn!("{e}");
        return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    let _inflight = InFlight::on(&backend);
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = match format!("http://{}{path}", backend.addr).parse() {
        Ok(uri) => uri,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad request target: {e}")),
    };
    *req.uri_mut() = uri;
    let upgrade = is_upgrade(&req);
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let client = if req.version() == Version::HTTP_2 {
        &shared.upstreams.h2
    } else {
        &shared.upstreams.h1
    };
    let mut resp = match client.request(req).await {
        Ok(resp) => resp,
        Err(e) => {
            let reason = format!("{}: {} did not answer: {e}", target.service, backend.addr);
            log::warn!("{reason}");
            return text(StatusCode::BAD_GATEWAY, reason);
        }
    };
    if let Some(client_upgrade) = client_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let service = target.service.clone();
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((a, b)) => {
                    let mut a = TokioIo::new(a);
                    let mut b = TokioIo::new(b);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                Err(e) => log::warn!("{service}: upgrade failed: {e}"),
            }
        });
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    resp.map(|b| b.map_err(Into::into).boxed())
}
