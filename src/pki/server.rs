//! The PKI's HTTPS port, at KubeEdge's paths so its edges can use it too:
//!
//! - `GET /ca.crt`: the CA certificate, DER. Fetched before the edge trusts anything; the
//!   edge checks its hash against the one in its join token.
//! - `GET|POST /edge.crt` with header `NodeName` and a certificate request (DER) as the
//!   body: the node's certificate, DER. Authenticated by the node's current certificate
//!   (renewal: it must be issued for `NodeName` and not revoked) or, without one, by
//!   `Authorization: Bearer <token>` (join). The certificate names `NodeName` whatever
//!   the request asks for.
//!
//! Refusals answer 401 (or 400 for a malformed request) with the reason as text, are
//! logged, and counted as `pki_refusals_total{reason}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::pki::Pki;

/// A certificate request is a few hundred bytes; more is refused.
const MAX_BODY: usize = 64 * 1024;
/// Header naming the node (KubeEdge's).
pub const NODE_NAME_HEADER: &str = "NodeName";

/// What the server shares between connections.
pub struct Bootstrap {
    pki: Arc<Pki>,
    refusals: cloudhub::Refusals,
}

impl Bootstrap {
    /// Serves `pki`, counting refusals in `refusals`.
    pub fn new(pki: Arc<Pki>, refusals: cloudhub::Refusals) -> Arc<Self> {
        Arc::new(Bootstrap { pki, refusals })
    }
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

/// The TLS settings: the server certificate, and a client certificate asked for but not
/// required (a joining node has none yet).
pub fn tls(pki: &Pki) -> crate::Result<Arc<rustls::ServerConfig>> {
    let files = pki.hub_tls();
    crate::tls::server_config_optional_client(&files)
}

/// Serves on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    boot: Arc<Bootstrap>,
    stop: CancellationToken,
) {
    static ACCEPT: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(10));
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                ACCEPT.warn(format_args!("PKI: accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, boot) = (acceptor.clone(), boot.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    boot.refusals.count("handshake");
                    log::warn!("PKI: TLS handshake with {peer} failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            let service = service_fn(move |req| {
                let (boot, cert) = (boot.clone(), cert.clone());
                async move { Ok::<_, Infallible>(handle(&boot, req, cert.as_ref()).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(
    boot: &Bootstrap,
    req: Request<Incoming>,
    cert: Option<&CertificateDer<'static>>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ca.crt") => answer(StatusCode::OK, boot.pki.ca_der().to_vec()),
        (&Method::GET | &Method::POST, "/edge.crt") => match sign(boot, req, cert).await {
            Ok(der) => answer(StatusCode::OK, der),
            Err((status, reason, why)) => {
                boot.refusals.count(reason);
                log::warn!("PKI: certificate request refused: {why}");
                answer(status, why)
            }
        },
        _ => answer(StatusCode::NOT_FOUND, "try /ca.crt or /edge.crt\n"),
    }
}

type Refused = (StatusCode, &'static str, String);

async fn sign(
    boot: &Bootstrap,
    req: Request<Incoming>,
    cert: Option<&CertificateDer<'static>>,
) -> Result<Vec<u8>, Refused> {
    let unauthorized = |reason, why: String| (StatusCode::UNAUTHORIZED, reason, why);
    let node = req
        .headers()
        .get(NODE_NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| cloudhub::hub::valid_node_id(n))
        .map(str::to_owned)
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "identity",
                format!("missing or invalid header {NODE_NAME_HEADER}"),
            )
        })?;
    match cert {
        // Renewal: the current certificate speaks for the node.
        Some(cert) => {
            cloudhub::tls::check_node_name(cert, &node)
                .map_err(|why| unauthorized("certificate", why))?;
            if let Some(why) = boot.pki.revocation(cert) {
                return Err(unauthorized("revoked", why));
            }
        }
        None => {
            let token = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    unauthorized(
                        "token_missing",
                        format!("node {node}: no client certificate and no Bearer token"),
                    )
                })?;
            let id = boot
                .pki
                .tokens()
                .verify(token.trim())
                .map_err(|r| unauthorized(r.label(), format!("node {node}: {r}")))?;
            log::info!("PKI: node {node} joins with token {id}");
        }
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                format!("node {node}: request body: {e}"),
            )
        })?
        .to_bytes();
    let signed = boot.pki.sign(&body, &node).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("node {node}: {e}"),
        )
    })?;
    log::info!(
        "PKI: signed certificate {} for node {node}, valid until {}",
        signed.serial,
        signed.not_after
    );
    Ok(signed.der)
}
