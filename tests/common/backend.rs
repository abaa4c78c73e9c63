//! Backends for the proxy tests: an HTTP server (HTTP/1.1 and h2c) that answers with its
//! name, the HTTP version it was spoken to in, and the request path, and echoes bytes after
//! a WebSocket-style upgrade.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves on `ip` (port chosen by the system) until the test ends; returns the address.
pub async fn spawn(ip: &str, name: &'static str) -> SocketAddr {
    spawn_at(format!("{ip}:0").parse().unwrap(), name).await
}

/// Serves on `addr` until the test ends; returns the address.
pub async fn spawn_at(addr: SocketAddr, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, name));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn answer(
    mut req: Request<Incoming>,
    name: &'static str,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(hyper::header::UPGRADE, "websocket".parse().unwrap());
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, "upgrade".parse().unwrap());
        return Ok(resp);
    }
    let body = format!("{name} {:?} {}\n", req.version(), req.uri().path());
    Ok(Response::new(Full::new(Bytes::from(body))))
}
