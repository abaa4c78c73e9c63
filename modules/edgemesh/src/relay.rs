//! Carries bytes both ways between two connections, passing a half-close on and closing
//! both when neither side has sent anything for the idle timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::idle::Watch;

/// Bytes moved each way: (client → server, server → client).
pub type Moved = (u64, u64);

/// Most bytes read per system call: enough that a bulk transfer costs few calls.
const CHUNK: usize = 64 * 1024;

/// Relays until both directions have ended, or until the pair has been idle for `idle`
/// (then both connections are dropped). One watchdog per connection pair checks the idle
/// time, so the data path arms no timer per read.
pub async fn relay(client: TcpStream, server: TcpStream, idle: Duration) -> std::io::Result<Moved> {
    let watch = Watch::new(idle);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let both = async {
        let (up, down) = tokio::join!(pump(cr, sw, &watch), pump(sr, cw, &watch));
        Ok((up?, down?))
    };
    tokio::select! {
        moved = both => moved,
        _ = watch.expired() => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("idle for {idle:?}"),
        )),
    }
}

/// One direction: copies until EOF, then shuts the writer, passing the half-close on.
///
/// The buffer is held only while bytes flow: a read that leaves the socket drained lets it
/// go before the next wait, so a quiet connection holds none and a node with thousands of
/// mostly idle connections (MQTT, database pools) pays for the busy ones only. The buffer
/// is never zeroed either, so only the bytes actually read touch its pages.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    watch: &Watch,
) -> std::io::Result<u64> {
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        if buf.capacity() == 0 {
            from.readable().await?;
            buf.reserve_exact(CHUNK);
        }
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
        to.write_all(&buf).await?;
        total += n as u64;
        watch.touch();
        if n < buf.capacity() {
            buf = Vec::new();
        } else {
            buf.clear();
        }
    }
}
