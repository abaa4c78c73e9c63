//! Relays between a TCP connection and a tunnel stream with no buffer in between: bytes
//! from the socket are read straight into the frame that carries them (room kept for its
//! header), and frames from the far end are written to the socket as they came. A generic
//! copy would pass every byte through one more buffer each way.

use std::io;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use proto::stream::HEADER_LEN;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::runtime::Handle;
use tokio_util::task::AbortOnDropHandle;

use super::TunnelStream;
use crate::idle::Watch;
use crate::relay::Moved;

/// Relays until both directions have ended, or until nothing has moved for `idle`; returns
/// the bytes moved (socket → stream, stream → socket). Dropping the stream at the end
/// resets it if it did not end cleanly.
pub async fn pipe(tcp: TcpStream, stream: TunnelStream, idle: Duration) -> io::Result<Moved> {
    let watch = Watch::new(idle);
    let (read, write) = tcp.into_split();
    let both = async {
        let (up, down) = tokio::join!(up(read, &stream, &watch), down(&stream, write, &watch));
        Ok((up?, down?))
    };
    let moved = tokio::select! {
        moved = both => moved,
        _ = watch.expired() => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("idle for {idle:?}"),
        )),
    };
    drop(stream);
    moved
}

/// [`pipe`], run on the runtime that reads the cloud link (the tunnel's), so that its frames
/// stay on the link's thread. From a proxy worker's thread every Data frame was handed to
/// the link's task and every grant handed back, each a wake-up of another thread
/// (`bench/tunnel.md`, 2026-12-02 evening). The relay is aborted, closing its socket,
/// when this future is dropped, as the relay itself would be (a drain's cut).
pub async fn pipe_on_link_runtime(
    tcp: TcpStream,
    stream: TunnelStream,
    idle: Duration,
) -> io::Result<Moved> {
    let link_runtime = match stream.tunnel.runtime() {
        Some(link) if Handle::try_current().map_or(true, |here| here.id() != link.id()) => {
            link.clone()
        }
        _ => return pipe(tcp, stream, idle).await,
    };
    let tcp = tcp.into_std()?;
    let relay =
        link_runtime.spawn(async move { pipe(TcpStream::from_std(tcp)?, stream, idle).await });
    AbortOnDropHandle::new(relay)
        .await
        .map_err(|e| io::Error::other(format!("the relay task ended: {e}")))?
}

/// Socket to stream: within credit, a frame per read.
async fn up(mut from: OwnedReadHalf, to: &TunnelStream, watch: &Watch) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // Nothing is held while the socket is quiet.
        from.readable().await?;
        let credit = to.credit().await?;
        let mut frame = BytesMut::with_capacity(HEADER_LEN + credit);
        frame.put_bytes(0, HEADER_LEN);
        let n = match from.read_buf(&mut (&mut frame).limit(credit)).await {
            Ok(n) => n,
            Err(e) => {
                to.give_back(credit);
                return Err(e);
            }
        };
        to.give_back(credit - n);
        if n == 0 {
            to.finish()?;
            return Ok(total);
        }
        to.send_data(frame)?;
        total += n as u64;
        watch.touch();
    }
}

/// Stream to socket: each chunk as it came, its credit returned once written.
async fn down(from: &TunnelStream, mut to: OwnedWriteHalf, watch: &Watch) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = from.chunk().await? {
        to.write_all(&chunk).await?;
        from.consumed(chunk.len());
        total += chunk.len() as u64;
        watch.touch();
    }
    let _ = to.shutdown().await;
    Ok(total)
}
