//! One tunnel stream as an ordinary byte stream (`AsyncRead` + `AsyncWrite`), so the
//! forwarders and the relay use it as they use a socket.
//!
//! Reading hands out the Data the dispatcher queued and returns credit to the far end as
//! the bytes are consumed (batched by [`RecvWindow`]); writing sends Data only within the
//! credit the far end granted, and waits for a `Window` otherwise. So the bytes held for a
//! stream here never exceed its window, whatever the far end does.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use proto::stream::{
    HEADER_LEN, LinkSender, RecvWindow, ResetCode, SendWindow, StreamCodec, StreamFrame, StreamId,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::Tunnel;

/// What both ends of a stream share: the dispatcher writes into it, the stream's user
/// reads from it.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Told when the stream is accepted or reset (for the opener's wait).
    pub(crate) settled: Notify,
}

/// A stream's flow and lifecycle.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) recv: RecvWindow,
    pub(crate) send: SendWindow,
    chunks: VecDeque<Bytes>,
    /// The far end sent Fin.
    pub(crate) fin_in: bool,
    /// This end sent Fin.
    pub(crate) fin_out: bool,
    /// Reset by either end (code, reason).
    pub(crate) reset: Option<(ResetCode, String)>,
    /// The acceptor granted its window (for a stream this end opened).
    pub(crate) accepted: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl Shared {
    pub(crate) fn new(recv_window: u32, send_credit: u32) -> Arc<Self> {
        let mut send = SendWindow::new(send_credit).expect("credit within bounds");
        if send_credit > 0 {
            // Credit from the start (the opener's window): the first grant measures from here.
            send.mark(send_credit, std::time::Instant::now());
        }
        Arc::new(Shared {
            state: Mutex::new(State {
                recv: RecvWindow::new(recv_window).expect("window within bounds"),
                send,
                chunks: VecDeque::new(),
                fin_in: false,
                fin_out: false,
                reset: None,
                accepted: false,
                read_waker: None,
                write_waker: None,
            }),
            settled: Notify::new(),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("stream state poisoned")
    }

    /// Data from the far end; an overrun of the window is refused (the caller resets).
    pub(crate) fn data(&self, payload: Bytes) -> Result<(), proto::Error> {
        let mut state = self.lock();
        state.recv.received(payload.len())?;
        if !payload.is_empty() {
            state.chunks.push_back(payload);
        }
        wake(&mut state.read_waker);
        Ok(())
    }

    pub(crate) fn fin(&self) {
        let mut state = self.lock();
        state.fin_in = true;
        wake(&mut state.read_waker);
    }

    /// More credit; the first grant is also the acceptance.
    pub(crate) fn window(&self, increment: u32) -> Result<(), proto::Error> {
        let mut state = self.lock();
        state.send.grant(increment)?;
        state.send.mark(increment, std::time::Instant::now());
        if !state.accepted {
            state.accepted = true;
            drop(state);
            self.settled.notify_one();
            state = self.lock();
        }
        wake(&mut state.write_waker);
        Ok(())
    }

    pub(crate) fn reset(&self, code: ResetCode, reason: &str) {
        let mut state = self.lock();
        if state.reset.is_none() {
            state.reset = Some((code, reason.to_owned()));
        }
        state.chunks.clear();
        wake(&mut state.read_waker);
        wake(&mut state.write_waker);
        drop(state);
        self.settled.notify_one();
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

fn reset_error(code: ResetCode, reason: &str) -> io::Error {
    let kind = match code {
        ResetCode::Refused => io::ErrorKind::ConnectionRefused,
        ResetCode::Timeout => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, format!("stream reset ({code}): {reason}"))
}

/// A tunnel stream, from the end that uses it.
#[derive(Debug)]
pub struct TunnelStream {
    pub(crate) id: StreamId,
    pub(crate) shared: Arc<Shared>,
    pub(crate) link: LinkSender,
    pub(crate) tunnel: Arc<Tunnel>,
    /// Where the stream goes, for logs: the node (empty: the cloud) and the endpoint.
    pub(crate) peer: String,
}

impl TunnelStream {
    /// Where the stream goes, for logs.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether a kept stream can carry another request: open both ways, nothing unread.
    pub fn reusable(&self) -> bool {
        let state = self.shared.lock();
        state.reset.is_none() && !state.fin_in && !state.fin_out && state.chunks.is_empty()
    }

    fn send(&self, frame: &StreamFrame) -> io::Result<()> {
        let bytes = StreamCodec::default()
            .encode_to_bytes(frame)
            .map_err(io::Error::other)?;
        self.link
            .send(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the cloud link is down"))
    }

    /// Resets the stream with `code` (when neither end has ended it).
    pub fn abort(&self, code: ResetCode, reason: &str) {
        let mut state = self.shared.lock();
        if state.reset.is_some() || (state.fin_in && state.fin_out) {
            return;
        }
        state.reset = Some((code, reason.to_owned()));
        drop(state);
        let _ = self.send(&StreamFrame::Reset {
            id: self.id,
            code,
            reason: reason.into(),
        });
    }
}

impl TunnelStream {
    /// Waits for send credit and takes up to a frame's worth: the caller then sends that
    /// many bytes or fewer with [`TunnelStream::send_data`] and gives back the rest with
    /// [`TunnelStream::give_back`].
    pub(crate) async fn credit(&self) -> io::Result<usize> {
        let max = StreamCodec::default().max_data_len();
        std::future::poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some((code, reason)) = &state.reset {
                return Poll::Ready(Err(reset_error(*code, reason)));
            }
            let len = state.send.frame_len(max);
            match state.send.reserve(len) {
                0 => {
                    state.write_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                n => Poll::Ready(Ok(n)),
            }
        })
        .await
    }

    /// Takes exactly `n` bytes of send credit now, or none (`false`) when there is less:
    /// a datagram is sent whole or not at all, and never waits.
    pub(crate) fn try_reserve(&self, n: usize) -> io::Result<bool> {
        let mut state = self.shared.lock();
        if let Some((code, reason)) = &state.reset {
            return Err(reset_error(*code, reason));
        }
        if state.fin_out {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            ));
        }
        if (state.send.credit() as usize) < n {
            return Ok(false);
        }
        state.send.reserve(n);
        Ok(true)
    }

    /// Returns credit taken and not used.
    pub(crate) fn give_back(&self, n: usize) {
        if n > 0 {
            let _ = self.shared.lock().send.grant(n as u32);
        }
    }

    /// Sends `frame`: [`HEADER_LEN`] bytes of room, then the payload, read in place.
    pub(crate) fn send_data(&self, mut frame: BytesMut) -> io::Result<()> {
        StreamCodec::default()
            .seal_data(self.id, &mut frame)
            .map_err(io::Error::other)?;
        self.link
            .send(frame.freeze())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the cloud link is down"))
    }

    /// The next chunk the far end sent, whole, without copying; `None` at its Fin. Its
    /// credit goes back with [`TunnelStream::consumed`] once the bytes are passed on, so
    /// nothing is held beyond the window.
    pub(crate) async fn chunk(&self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some((code, reason)) = &state.reset {
                return Poll::Ready(Err(reset_error(*code, reason)));
            }
            if let Some(chunk) = state.chunks.pop_front() {
                return Poll::Ready(Ok(Some(chunk)));
            }
            if state.fin_in {
                return Poll::Ready(Ok(None));
            }
            state.read_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// `n` bytes taken with [`TunnelStream::chunk`] were passed on: credit for the far end.
    pub(crate) fn consumed(&self, n: usize) {
        let increment = self.shared.lock().recv.consumed(n);
        if let Some(increment) = increment {
            let _ = self.send(&StreamFrame::Window {
                id: self.id,
                increment,
            });
        }
    }

    /// Half-closes: this end sends no more.
    pub(crate) fn finish(&self) -> io::Result<()> {
        let mut state = self.shared.lock();
        if state.fin_out || state.reset.is_some() {
            return Ok(());
        }
        state.fin_out = true;
        drop(state);
        self.send(&StreamFrame::Fin { id: self.id })
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        self.abort(ResetCode::Cancelled, "closed");
        self.tunnel.forget(self.id);
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        if let Some((code, reason)) = &state.reset {
            return Poll::Ready(Err(reset_error(*code, reason)));
        }
        let mut n = 0;
        while buf.remaining() > 0
            && let Some(chunk) = state.chunks.front_mut()
        {
            let take = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk.split_to(take));
            n += take;
            if chunk.is_empty() {
                state.chunks.pop_front();
            }
        }
        if n > 0 {
            if let Some(increment) = state.recv.consumed(n) {
                drop(state);
                let _ = this.send(&StreamFrame::Window {
                    id: this.id,
                    increment,
                });
            }
            return Poll::Ready(Ok(()));
        }
        if state.fin_in {
            return Poll::Ready(Ok(()));
        }
        state.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        if let Some((code, reason)) = &state.reset {
            return Poll::Ready(Err(reset_error(*code, reason)));
        }
        if state.fin_out {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let max = state.send.frame_len(StreamCodec::default().max_data_len());
        let n = state.send.reserve(buf.len().min(max));
        if n == 0 {
            state.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        drop(state);
        // The one copy on the way out: into a frame that has its header in front.
        let mut frame = BytesMut::with_capacity(HEADER_LEN + n);
        let header = StreamCodec::default()
            .data_header(this.id, n)
            .map_err(io::Error::other)?;
        frame.put_slice(&header);
        frame.put_slice(&buf[..n]);
        this.link
            .send(frame.freeze())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the cloud link is down"))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish())
    }
}
