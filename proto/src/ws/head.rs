//! A stream wrapper for the handshake: it hands its reader the HTTP head and nothing after
//! it, so the frames a peer sends right behind the head stay here for the framing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest head read before the handshake is refused.
const MAX_HEAD: usize = 16 * 1024;

/// `S` with reads held back at the end of the first HTTP head (`\r\n\r\n`).
#[derive(Debug)]
pub struct HeadFirst<S> {
    inner: S,
    held: BytesMut,
    /// Bytes of `\r\n\r\n` matched at the end of what was handed out so far.
    matched: usize,
    /// Bytes of the head handed out.
    head: usize,
}

impl<S> HeadFirst<S> {
    /// Wraps `inner` before its handshake.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            held: BytesMut::new(),
            matched: 0,
            head: 0,
        }
    }

    /// Whether the whole head has been handed out.
    fn head_done(&self) -> bool {
        self.matched == 4
    }

    /// The stream, and what was read past the head.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.inner, self.held)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadFirst<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_empty() {
            if this.head_done() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            this.held.reserve(4096);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.held) {
                Poll::Ready(Ok(_)) => {}
                other => return other.map_ok(|_| ()),
            }
        }
        let mut give = this.held.len().min(buf.remaining());
        if !this.head_done() {
            const END: &[u8; 4] = b"\r\n\r\n";
            for (i, &byte) in this.held[..give].iter().enumerate() {
                this.matched = match byte {
                    b if b == END[this.matched] => this.matched + 1,
                    b'\r' => 1,
                    _ => 0,
                };
                if this.head_done() {
                    give = i + 1;
                    break;
                }
            }
            this.head += give;
            if !this.head_done() && this.head > MAX_HEAD {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("an HTTP head of more than {MAX_HEAD} bytes"),
                )));
            }
        }
        buf.put_slice(&this.held[..give]);
        this.held.advance(give);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadFirst<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_head_is_read_and_what_follows_is_kept() {
        let wire = b"HTTP/1.1 101 Switching Protocols\r\nA: b\r\n\r\n\x81\x02hi".to_vec();
        let mut s = HeadFirst::new(wire.as_slice());
        let mut got = Vec::new();
        // Reads stop at the head however the reader asks.
        let mut small = [0u8; 5];
        while !s.head_done() {
            let n = s.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert!(got.ends_with(b"A: b\r\n\r\n"));
        assert_eq!(got.len(), wire.len() - 4);
        let (_, rest) = s.into_parts();
        assert_eq!(&rest[..], b"\x81\x02hi");
    }

    #[tokio::test]
    async fn a_head_split_over_reads_and_cr_runs_are_found() {
        let (mut tx, rx) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // Fails once the reader is dropped with the rest unread.
            let _ = tx
                .write_all(b"GET / HTTP/1.1\r\r\nX: y\r\n\r\n\r\nrest")
                .await;
        });
        let mut s = HeadFirst::new(rx);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !s.head_done() {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"GET / HTTP/1.1\r\r\nX: y\r\n\r\n");
        drop(s);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn an_endless_head_is_refused() {
        let wire = vec![b'a'; MAX_HEAD + 100];
        let mut s = HeadFirst::new(wire.as_slice());
        let mut sink = Vec::new();
        let err = s.read_to_end(&mut sink).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
