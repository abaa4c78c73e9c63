//! HTTP/2 (h2c) connections to endpoints: one per endpoint on each worker thread, each
//! multiplexing many streams, dialled through the seam like every other upstream
//! connection (so the tunnel's streams will carry them too).
//!
//! Kept by hand rather than in hyper_util's pooling client: that client locks its pool,
//! clones a pool key and the URI, and races a checkout against a connect on every request,
//! which showed in profiles of the h2 path, and it dials with a connector of its own,
//! around the seam. Here a request costs one uncontended lock and a clone of the sender.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::Response;
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::body::{ClientBody, Fault};
use super::{Lease, Upstream};
use crate::error::Result;

/// A worker's HTTP/2 connections, by endpoint.
pub struct H2 {
    conns: Arc<Mutex<HashMap<SocketAddr, Kept>>>,
    /// A connection that took no request for this long is let go.
    idle: Duration,
    /// Numbers the connections, so that one ending never removes its successor.
    next: AtomicU64,
    /// What [`Kept::used`] counts from.
    epoch: Instant,
}

/// One kept connection: its sender, when it last took a request (milliseconds since
/// [`H2::epoch`]), and which connection it is.
struct Kept {
    sender: SendRequest<ClientBody>,
    used: Arc<AtomicU64>,
    id: u64,
}

impl std::fmt::Debug for H2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let conns = self.conns.lock().map_or(0, |c| c.len());
        f.debug_struct("H2")
            .field("conns", &conns)
            .field("idle", &self.idle)
            .finish()
    }
}

impl H2 {
    /// Connections let go once they took no request for `idle`.
    pub fn new(idle: Duration) -> Self {
        H2 {
            conns: Arc::default(),
            idle,
            next: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// How many endpoints have a kept connection.
    pub fn len(&self) -> usize {
        self.conns.lock().expect("h2 conns poisoned").len()
    }

    /// Whether no endpoint has a kept connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Sends `req` over the kept connection to the lease's endpoint, dialling one (through
    /// `upstream`) if there is none or it closed. A request the kept connection handed
    /// back unsent (it closed as the request went out: a GOAWAY crossed it) is sent once
    /// more on a new connection. A failure is blamed by `fault` (the client's body, or
    /// the endpoint), not yet reported.
    pub async fn send(
        &self,
        req: Request<ClientBody>,
        lease: &Lease<'_>,
        upstream: &Upstream,
        fault: &Fault,
    ) -> Result<Response<Incoming>> {
        let addr = lease.addr();
        let blame = |e: hyper::Error| fault.blame(e.to_string(), |r| lease.upstream_error(r));
        if !upstream.poolable(lease) {
            // A stream of its own, so the far node counts this request against its limit.
            let conn = upstream.connect(lease).await?;
            let (mut sender, conn) = Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(conn))
                .await
                .map_err(|e| lease.upstream_error(e.to_string()))?;
            tokio::spawn(conn);
            return sender.send_request(req).await.map_err(blame);
        }
        let kept = {
            let conns = self.conns.lock().expect("h2 conns poisoned");
            conns.get(&addr).and_then(|k| {
                (!k.sender.is_closed()).then(|| {
                    k.used.store(self.now(), Ordering::Relaxed);
                    k.sender.clone()
                })
            })
        };
        let req = match kept {
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => unsent,
                    None => return Err(blame(e.into_error())),
                },
            },
            None => req,
        };
        let mut sender = self.dial(lease, upstream).await?;
        sender.send_request(req).await.map_err(blame)
    }

    /// A new connection to the lease's endpoint, kept for the next requests; its task
    /// lets it go after the idle expiry.
    async fn dial(
        &self,
        lease: &Lease<'_>,
        upstream: &Upstream,
    ) -> Result<SendRequest<ClientBody>> {
        let conn = upstream.connect(lease).await?;
        let (sender, conn) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(conn))
            .await
            .map_err(|e| lease.upstream_error(e.to_string()))?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let used = Arc::new(AtomicU64::new(self.now()));
        let addr = lease.addr();
        self.conns.lock().expect("h2 conns poisoned").insert(
            addr,
            Kept {
                sender: sender.clone(),
                used: used.clone(),
                id,
            },
        );
        let (conns, idle, epoch) = (self.conns.clone(), self.idle, self.epoch);
        // Removes this connection's entry (not a successor's): dropping the kept sender
        // lets the connection end once its streams have.
        let forget = move || {
            let mut conns = conns.lock().expect("h2 conns poisoned");
            if conns.get(&addr).is_some_and(|k| k.id == id) {
                conns.remove(&addr);
            }
        };
        tokio::spawn(async move {
            let expire = async {
                loop {
                    let since = Duration::from_millis(
                        u64::try_from(epoch.elapsed().as_millis())
                            .unwrap_or(u64::MAX)
                            .saturating_sub(used.load(Ordering::Relaxed)),
                    );
                    if since >= idle {
                        break;
                    }
                    tokio::time::sleep(idle - since).await;
                }
            };
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = &mut conn => ended,
                () = expire => {
                    forget();
                    conn.await
                }
            };
            forget();
            if let Err(e) = ended {
                log::debug!("h2 upstream {addr}: {e}");
            }
        });
        Ok(sender)
    }
}
