//! The WebSocket server: accepts connections, runs TLS and WebSocket handshakes under a
//! deadline, checks the node's identity and admits it as a session.
//!
//! Like KubeEdge's, the upgrade is accepted on any path: identity comes from the `node_id`
//! and `project_id` headers (and, with TLS, from the client certificate).

use std::sync::Arc;
use std::time::Duration;

use proto::ws::{Closing, HeadFirst, Role, Socket, SocketConfig, close_code};
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, valid_node_id};
use crate::refusal::Refused;
use crate::session;
use crate::tls::check_node_name;
use proto::handshake;

/// Header that names the node.
pub const NODE_ID_HEADER: &str = "node_id";
/// Header that names the project.
pub const PROJECT_ID_HEADER: &str = "project_id";

/// Warnings of failed handshakes: at most one per 10 s.
static HANDSHAKE_FAILED: beehive::Throttle =
    beehive::Throttle::new(std::time::Duration::from_secs(10));

/// Warnings of failed accepts (out of descriptors, usually): at most one per 10 s.
static ACCEPT_FAILED: beehive::Throttle =
    beehive::Throttle::new(std::time::Duration::from_secs(10));

/// Bytes read per read call while messages are small: little enough that ten thousand
/// idle nodes cost little. A larger frame gets room for all of it once its header is read.
const READ_BUFFER: usize = 32 * 1024;

/// Accepts connections on `listener` until `stop` is cancelled; each one is served by its
/// own task.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    tls: Option<Arc<ServerConfig>>,
    stop: CancellationToken,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let hub = hub.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Err(refused) = handle(stream, hub.clone(), acceptor).await {
                        hub.refusals().count(refused.reason);
                        // Failed handshakes name no node and come in floods from scanners:
                        // throttled. The others name who was refused and why.
                        if refused.reason == "handshake" {
                            HANDSHAKE_FAILED.warn(format_args!(
                                "connection from {peer} refused: {}",
                                refused.detail
                            ));
                        } else {
                            log::warn!("connection from {peer} refused: {}", refused.detail);
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of spinning.
                ACCEPT_FAILED.warn(format_args!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A failed TLS handshake: the client's certificate's fault (expired, unknown CA, revoked,
/// none), or the handshake's.
fn tls_refusal(e: std::io::Error) -> Refused {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    let reason = if certificate {
        "certificate"
    } else {
        "handshake"
    };
    Refused::new(reason, format!("TLS handshake: {e}"))
}

async fn handle(
    stream: TcpStream,
    hub: Arc<Hub>,
    acceptor: Option<TlsAcceptor>,
) -> Result<(), Refused> {
    let _ = stream.set_nodelay(true);
    let deadline = Duration::from_millis(hub.config().handshake_timeout_ms);
    match acceptor {
        None => {
            let (ws, ident) = timeout(deadline, upgrade(stream, hub.config().max_frame_len))
                .await
                .map_err(|_| Refused::new("handshake", "handshake timed out"))??;
            admit(hub, ws, ident, None).await
        }
        Some(acceptor) => {
            let handshakes = async {
                let tls = acceptor.accept(stream).await.map_err(tls_refusal)?;
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned());
                let (ws, ident) = upgrade(tls, hub.config().max_frame_len).await?;
                Ok::<_, Refused>((ws, ident, cert))
            };
            let (ws, ident, cert) = timeout(deadline, handshakes)
                .await
                .map_err(|_| Refused::new("handshake", "handshake timed out"))??;
            admit(hub, ws, ident, cert).await
        }
    }
}

/// The identity headers as sent; either may be missing.
#[derive(Debug, Default)]
struct Identity {
    node_id: Option<String>,
    project_id: Option<String>,
}

/// The WebSocket handshake (tungstenite's), then the connection framed by
/// [`proto::ws`]. Clients wait for the answer before they send frames (RFC 6455 §4.1);
/// any that came early are kept by [`HeadFirst`] all the same.
async fn upgrade<S>(stream: S, max_frame_len: usize) -> Result<(Socket<S>, Identity), Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ident = Identity::default();
    // The Err type is tungstenite's, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        ident.node_id = header(NODE_ID_HEADER);
        ident.project_id = header(PROJECT_ID_HEADER);
        let mut resp = resp;
        resp.headers_mut().insert(
            handshake::FRAMES,
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(
                handshake::FRAMES_BINARY,
            ),
        );
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(HeadFirst::new(stream), callback)
        .await
        .map_err(|e| Refused::new("handshake", format!("WebSocket handshake: {e}")))?;
    let (stream, leftover) = ws.into_inner().into_parts();
    let config = SocketConfig {
        read_chunk: READ_BUFFER,
        max_message: max_frame_len,
    };
    Ok((Socket::new(stream, leftover, Role::Server, config), ident))
}

/// Checks who the node is, then serves it; refusals are told to the node in the close
/// frame, so an operator reading the edge's log sees why.
async fn admit<S>(
    hub: Arc<Hub>,
    mut ws: Socket<S>,
    ident: Identity,
    cert: Option<CertificateDer<'static>>,
) -> Result<(), Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let refuse = async |ws: &mut Socket<S>, code, refused: Refused| {
        ws.end(Closing::send(code, refused.detail.clone())).await;
        Err(refused)
    };
    let Some(node_id) = ident.node_id else {
        return refuse(
            &mut ws,
            close_code::POLICY,
            Refused::new("identity", format!("missing header {NODE_ID_HEADER}")),
        )
        .await;
    };
    if ident.project_id.as_deref().is_none_or(str::is_empty) {
        return refuse(
            &mut ws,
            close_code::POLICY,
            Refused::new("identity", format!("missing header {PROJECT_ID_HEADER}")),
        )
        .await;
    }
    if !valid_node_id(&node_id) {
        return refuse(
            &mut ws,
            close_code::POLICY,
            Refused::new("identity", format!("invalid node_id {node_id:?}")),
        )
        .await;
    }
    if let Some(cert) = &cert
        && let Err(reason) = check_node_name(cert, &node_id)
    {
        return refuse(
            &mut ws,
            close_code::POLICY,
            Refused::new("certificate", reason),
        )
        .await;
    }
    if let Some(cert) = &cert
        && let Some(reason) = hub.revoked(cert)
    {
        return refuse(&mut ws, close_code::POLICY, Refused::new("revoked", reason)).await;
    }
    let attached = match hub.attach(&node_id) {
        Ok(attached) => attached,
        Err(reason) => {
            return refuse(&mut ws, close_code::AGAIN, Refused::new("busy", reason)).await;
        }
    };
    log::info!("node {node_id} connected");
    if let Some(cert) = cert {
        tokio::spawn(watch_certificate(
            hub.clone(),
            node_id.clone(),
            cert,
            attached.cancel.clone(),
            attached.cut.clone(),
        ));
    }
    hub.publish_link(&node_id, true).await;
    let why = session::run(&hub, &attached, &mut ws).await;
    if hub.detach(&attached, &why) {
        log::info!("node {node_id} disconnected: {why}");
        hub.publish_link(&node_id, false).await;
    } else {
        log::debug!("node {node_id}: old connection ended: {why}");
    }
    Ok(())
}

/// How often a live session's certificate is checked against the revocations.
const REVOCATION_CHECK: Duration = Duration::from_secs(2);

/// Cuts `node`'s session when its certificate is revoked or expires while it is connected
/// (the handshake checks both only at the start).
async fn watch_certificate(
    hub: Arc<Hub>,
    node: String,
    cert: CertificateDer<'static>,
    cancel: CancellationToken,
    cut: Arc<std::sync::OnceLock<String>>,
) {
    let expires = x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp());
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let (reason, why) = match expires {
            Some(at) if at <= now => ("expired", format!("the certificate of node {node} expired")),
            _ => match hub.revoked(&cert) {
                Some(why) => ("revoked", why),
                None => {
                    let left = expires.map_or(REVOCATION_CHECK, |at| {
                        Duration::from_secs(u64::try_from(at - now).unwrap_or(0))
                    });
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(left.min(REVOCATION_CHECK)) => continue,
                    }
                }
            },
        };
        hub.refusals().count(reason);
        log::warn!("node {node}: session cut: {why}");
        let _ = cut.set(why);
        cancel.cancel();
        return;
    }
}
