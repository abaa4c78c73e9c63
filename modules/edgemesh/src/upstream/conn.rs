//! The connection the seam hands out: a TCP socket to an endpoint this node dials, or a
//! stream over the cloud link to one elsewhere; the forwarders never name which.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tunnel::TunnelStream;

/// A connection to an endpoint.
#[derive(Debug)]
pub enum Conn {
    /// A TCP connection dialled from this node.
    Tcp(TcpStream),
    /// A stream through the cloud link to an endpoint on another node or in the cloud.
    Tunnel(TunnelStream),
}

impl Conn {
    /// Whether a kept connection can still carry a request: the endpoint has not closed
    /// it, reset it, or sent anything unasked. One non-blocking peek, no wait.
    pub fn reusable(&self) -> bool {
        match self {
            Conn::Tcp(stream) => {
                let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                match socket2::SockRef::from(stream).peek(&mut byte) {
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    // 0: closed; more: bytes nobody asked for, so the framing is lost.
                    Ok(_) => false,
                }
            }
            Conn::Tunnel(stream) => stream.reusable(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tunnel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Tunnel(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tunnel(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_or_wrote_to_is_not_reusable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = Conn::Tcp(TcpStream::connect(addr).await.unwrap());
        let (mut server, _) = listener.accept().await.unwrap();
        assert!(conn.reusable(), "quiet and open");
        server.write_all(b"x").await.unwrap();
        crate::upstream::tests::until(|| !conn.reusable()).await;

        let conn = Conn::Tcp(TcpStream::connect(addr).await.unwrap());
        let (server, _) = listener.accept().await.unwrap();
        drop(server);
        crate::upstream::tests::until(|| !conn.reusable()).await;
    }
}
