//! Serving a connection on the runtime that reads the cloud link. A connection accepted by
//! a proxy worker and carried by the tunnel would hand every frame from the worker's
//! thread to the link's and every grant back, a wake-up of another thread each time; on
//! the link's runtime (one thread in edgecore) those hand-offs stay on one thread
//! (`bench/tunnel.md`, 2026-12-02 evening).

use std::future::Future;
use std::io;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::task::AbortOnDropHandle;

use super::Tunnel;

impl Tunnel {
    /// The runtime that reads the link, when the caller runs on another one.
    pub(crate) fn elsewhere(&self) -> Option<Handle> {
        let link = self.runtime()?;
        let here = Handle::try_current().ok();
        here.is_none_or(|here| here.id() != link.id())
            .then(|| link.clone())
    }
}

/// Runs `serve` with `tcp` on `runtime` (the socket moved to its reactor) and waits for
/// it. Dropping this future (a drain's cut) aborts the task, closing the socket, as it
/// would have closed it where it was.
pub async fn serve_on<F, Fut, T>(runtime: &Handle, tcp: TcpStream, serve: F) -> io::Result<T>
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let tcp = tcp.into_std()?;
    let task = runtime.spawn(async move { serve(TcpStream::from_std(tcp)?).await });
    AbortOnDropHandle::new(task)
        .await
        .map_err(|e| io::Error::other(format!("the task serving the connection ended: {e}")))?
}
