//! Carries bytes both ways between two connections, passing a half-close on and closing
//! both when neither side has sent anything for the idle timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Bytes moved each way: (client → server, server → client).
pub type Moved = (u64, u64);

/// Relays until both directions have ended (or the pair has been idle for `idle`).
pub async fn relay(client: TcpStream, server: TcpStream, idle: Duration) -> std::io::Result<Moved> {
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, last.clone(), started, idle);
    let down = pump(sr, cw, last, started, idle);
    let (up, down) = tokio::join!(up, down);
    Ok((up?, down?))
}

/// One direction: copies until EOF (then shuts the writer, passing the half-close on) or
/// until the whole pair has been idle for `idle`.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    last: Arc<AtomicU64>,
    started: Instant,
    idle: Duration,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let read = tokio::time::timeout(idle, from.read(&mut buf)).await;
        let n = match read {
            Ok(result) => result?,
            Err(_) => {
                // Quiet this way; the other way may still be busy.
                let since = started.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
                if since >= idle.as_millis() as u64 {
                    let _ = to.shutdown().await;
                    return Ok(total);
                }
                continue;
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
