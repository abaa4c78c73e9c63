//! An upgraded connection, split so a read loop and a write loop of one task use it at
//! once; pings are answered and closes are handshaken.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::{Instant, timeout_at};

use super::{CloseFrame, FrameReader, FrameWriter, Role, WsMessage, close_code};
use crate::Result;

/// Settings of an upgraded connection.
#[derive(Clone, Copy, Debug)]
pub struct SocketConfig {
    /// Spare room asked for before each read, in bytes (the read buffer's size while
    /// messages are small).
    pub read_chunk: usize,
    /// Largest message taken, in bytes (fragments counted together).
    pub max_message: usize,
}

/// The pong the writer owes for the latest ping (RFC 6455 §5.5.3: answering only the
/// latest is enough, so a ping flood queues nothing).
#[derive(Debug, Default)]
struct PongOwed {
    payload: Mutex<Option<Bytes>>,
    wake: Notify,
}

/// Time a close handshake may take before the socket is simply dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a connection is ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Not at all: the socket is unusable.
    Drop,
    /// With this close frame, waiting for the peer's answer.
    Send(CloseFrame),
    /// By answering the close frame the peer sent.
    Answer(Option<CloseFrame>),
}

impl Closing {
    /// A close frame of `code` with `reason` as its text.
    pub fn send(code: u16, reason: impl Into<String>) -> Self {
        Self::Send(CloseFrame {
            code,
            reason: reason.into(),
        })
    }

    /// How to end a connection whose read failed with `error`: a fault of the peer's
    /// (RFC 6455 §7.4.1: too big 1009, a protocol breach 1002, text that is not UTF-8
    /// 1007) is told to it; a failed socket is simply dropped.
    pub fn after_read_error(error: &crate::Error) -> Self {
        let code = match error {
            crate::Error::FrameTooLarge { .. } => close_code::SIZE,
            crate::Error::WsProtocol(_) => close_code::PROTOCOL,
            crate::Error::WsInvalidText => close_code::INVALID,
            _ => return Self::Drop,
        };
        Self::send(code, error.to_string())
    }
}

/// An upgraded WebSocket connection.
#[derive(Debug)]
pub struct Socket<S> {
    /// The reading half.
    pub reading: Reading<S>,
    /// The writing half.
    pub writing: Writing<S>,
}

/// What reads a [`Socket`].
#[derive(Debug)]
pub struct Reading<S> {
    io: ReadHalf<S>,
    frames: FrameReader,
    pong: Arc<PongOwed>,
}

/// What writes a [`Socket`].
#[derive(Debug)]
pub struct Writing<S> {
    io: WriteHalf<S>,
    frames: FrameWriter,
    pong: Arc<PongOwed>,
}

impl<S: AsyncRead + AsyncWrite> Socket<S> {
    /// The connection over `io` once the handshake is done; `leftover` is what the
    /// handshake read past its head ([`super::HeadFirst::into_parts`]).
    pub fn new(io: S, leftover: BytesMut, role: Role, config: SocketConfig) -> Self {
        let (rd, wr) = tokio::io::split(io);
        let pong = Arc::new(PongOwed::default());
        Self {
            reading: Reading {
                io: rd,
                frames: FrameReader::new(role, config.read_chunk, config.max_message, leftover),
                pong: pong.clone(),
            },
            writing: Writing {
                io: wr,
                frames: FrameWriter::new(role),
                pong,
            },
        }
    }

    /// Ends the connection as `how` says, within [`CLOSE_TIMEOUT`].
    pub async fn end(&mut self, how: Closing) {
        match how {
            Closing::Drop => {}
            Closing::Send(frame) => self.close(frame.code, &frame.reason, CLOSE_TIMEOUT).await,
            Closing::Answer(frame) => self.answer_close(frame.as_ref(), CLOSE_TIMEOUT).await,
        }
    }

    /// Starts the close handshake with `code` and `reason` and waits, for at most
    /// `within`, for the peer's answer (or the end of its stream), so the close frame is
    /// not lost to a reset of a socket closed with unread data.
    pub async fn close(&mut self, code: u16, reason: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let frame = CloseFrame {
            code,
            reason: reason.to_owned(),
        };
        if !self.send_close(Some(frame), deadline).await {
            return;
        }
        let answered = async {
            loop {
                match self.reading.next().await {
                    Ok(Some(WsMessage::Close(_)) | None) | Err(_) => return,
                    Ok(Some(_)) => {}
                }
            }
        };
        let _ = timeout_at(deadline, answered).await;
    }

    /// Answers a close the peer sent with the same status (RFC 6455 §5.5.1; a status no
    /// close frame may carry, §7.4, is answered with a protocol error), for at most
    /// `within`.
    pub async fn answer_close(&mut self, received: Option<&CloseFrame>, within: Duration) {
        let frame = received.map(|f| CloseFrame {
            code: if sendable(f.code) {
                f.code
            } else {
                close_code::PROTOCOL
            },
            reason: String::new(),
        });
        self.send_close(frame, Instant::now() + within).await;
    }

    /// Writes a close frame and ends the sending side; whether that was done in time.
    async fn send_close(&mut self, frame: Option<CloseFrame>, deadline: Instant) -> bool {
        let writing = &mut self.writing;
        writing.push(WsMessage::Close(frame));
        let sent = async {
            writing.flush().await?;
            writing.io.shutdown().await
        };
        matches!(timeout_at(deadline, sent).await, Ok(Ok(())))
    }
}

/// Whether a close frame may carry `code` (RFC 6455 §7.4: 1004–1006 and 1015 are reserved
/// for reporting, not for the wire; below 1000 is unused; 1016–2999 is for the protocol
/// and extensions, none assigned here).
fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl<S: AsyncRead> Reading<S> {
    /// The next message or control frame; `None` when the peer ended its stream between
    /// frames. A ping is returned as well as answered (its pong leaves with the writer's
    /// next flush), so deadlines of silence see it.
    pub async fn next(&mut self) -> Result<Option<WsMessage>> {
        let msg = self.frames.next(&mut self.io).await?;
        if let Some(WsMessage::Ping(payload)) = &msg {
            *self.pong.payload.lock().expect("pong poisoned") = Some(payload.clone());
            self.pong.wake.notify_one();
        }
        Ok(msg)
    }
}

impl<S: AsyncWrite> Writing<S> {
    /// Queues `msg`; it is written by the next [`Writing::flush`].
    pub fn push(&mut self, msg: WsMessage) {
        self.frames.push(msg);
    }

    /// Writes what is queued (and the pong owed, if any), then flushes.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        let owed = self.pong.payload.lock().expect("pong poisoned").take();
        if let Some(payload) = owed {
            self.frames.push(WsMessage::Pong(payload));
        }
        self.frames.flush(&mut self.io).await
    }

    /// Whether a pong waits for the next flush.
    pub fn pong_owed(&self) -> bool {
        self.pong.payload.lock().expect("pong poisoned").is_some()
    }

    /// Resolves once a pong is owed (at once if one already is).
    pub async fn owes_pong(&self) {
        loop {
            let woken = self.pong.wake.notified();
            if self.pong_owed() {
                return;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against tungstenite, an implementation of its own, over real sockets.
    use super::super::HeadFirst;
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::Message as TMessage;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    const CONFIG: SocketConfig = SocketConfig {
        read_chunk: 4096,
        max_message: 1 << 20,
    };

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dial = TcpStream::connect(listener.local_addr().unwrap());
        let (dialled, accepted) = tokio::join!(dial, listener.accept());
        (dialled.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_tungstenite_client_and_this_server_talk_and_close() {
        let (client_io, server_io) = pair().await;
        let client = tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::client_async("ws://edge/x", client_io)
                .await
                .unwrap();
            ws.send(TMessage::text("up")).await.unwrap();
            ws.send(TMessage::binary(vec![5u8; 200_000])).await.unwrap();
            ws.send(TMessage::Ping(Bytes::from_static(b"p1")))
                .await
                .unwrap();
            let mut got = Vec::new();
            while let Some(msg) = ws.next().await {
                match msg.unwrap() {
                    TMessage::Close(frame) => {
                        got.push(format!(
                            "close {:?}",
                            frame.map(|f| (f.code, f.reason.to_string()))
                        ));
                    }
                    TMessage::Binary(b) => got.push(format!("binary {}", b.len())),
                    other => got.push(format!("{other:?}")),
                }
            }
            got
        });
        let head = HeadFirst::new(server_io);
        let ws = tokio_tungstenite::accept_async(head).await.unwrap();
        let (io, leftover) = ws.into_inner().into_parts();
        let mut socket = Socket::new(io, leftover, Role::Server, CONFIG);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(socket.reading.next().await.unwrap().unwrap());
        }
        assert_eq!(seen[0], WsMessage::Text(Bytes::from_static(b"up")));
        assert_eq!(seen[1], WsMessage::Binary(Bytes::from(vec![5u8; 200_000])));
        assert_eq!(seen[2], WsMessage::Ping(Bytes::from_static(b"p1")));
        assert!(socket.writing.pong_owed());
        socket
            .writing
            .push(WsMessage::Binary(Bytes::from(vec![6u8; 300_000])));
        socket.writing.flush().await.unwrap();
        socket
            .close(1008, "refused: no reason", Duration::from_secs(5))
            .await;
        let got = client.await.unwrap();
        assert_eq!(
            got,
            // The pong leaves with the flush, behind what was queued before it.
            vec![
                "binary 300000".to_owned(),
                "Pong(b\"p1\")".to_owned(),
                format!(
                    "close {:?}",
                    Some((CloseCode::Policy, "refused: no reason"))
                ),
            ]
        );
    }

    #[test]
    fn only_wire_statuses_are_echoed() {
        for code in [1000, 1001, 1008, 1011, 1013, 3000, 4999] {
            assert!(sendable(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert!(!sendable(code), "{code}");
        }
    }

    #[tokio::test]
    async fn frames_that_come_with_the_handshake_answer_are_not_lost() {
        let (client_io, server_io) = pair().await;
        // A server that writes its 101 and a first frame in one write.
        let server = tokio::spawn(async move {
            let mut server_io = BufReader::new(server_io);
            let mut key = None;
            loop {
                let mut line = String::new();
                server_io.read_line(&mut line).await.unwrap();
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("sec-websocket-key")
                {
                    key = Some(value.trim().to_owned());
                }
                if line == "\r\n" {
                    break;
                }
            }
            let accept = derive_accept_key(key.expect("a key").as_bytes());
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(b"\x81\x05early");
            server_io.get_mut().write_all(&out).await.unwrap();
            server_io
        });
        let head = HeadFirst::new(client_io);
        let (ws, _) = tokio_tungstenite::client_async("ws://cloud/x", head)
            .await
            .unwrap();
        let (io, leftover) = ws.into_inner().into_parts();
        let mut socket = Socket::new(io, leftover, Role::Client, CONFIG);
        let first = socket.reading.next().await.unwrap();
        assert_eq!(first, Some(WsMessage::Text(Bytes::from_static(b"early"))));
        drop(server.await.unwrap());
        assert_eq!(socket.reading.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn this_client_and_a_tungstenite_server_talk() {
        let (client_io, server_io) = pair().await;
        let server = tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_async(server_io).await.unwrap();
            let mut got = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                if let TMessage::Text(t) = &msg {
                    ws.send(TMessage::text(format!("echo {t}"))).await.unwrap();
                }
                got.push(msg);
            }
            got
        });
        let (ws, _) = tokio_tungstenite::client_async("ws://cloud/x", HeadFirst::new(client_io))
            .await
            .unwrap();
        let (io, leftover) = ws.into_inner().into_parts();
        let mut socket = Socket::new(io, leftover, Role::Client, CONFIG);
        socket
            .writing
            .push(WsMessage::Text(Bytes::from_static(b"hello")));
        socket
            .writing
            .push(WsMessage::Binary(Bytes::from(vec![9u8; 100_000])));
        socket.writing.flush().await.unwrap();
        let echo = socket.reading.next().await.unwrap();
        assert_eq!(
            echo,
            Some(WsMessage::Text(Bytes::from_static(b"echo hello")))
        );
        socket.close(1000, "done", Duration::from_secs(5)).await;
        let got = server.await.unwrap();
        assert_eq!(got[0], TMessage::text("hello"));
        assert_eq!(got[1], TMessage::binary(vec![9u8; 100_000]));
        assert!(matches!(&got[2], TMessage::Close(Some(f)) if f.code == CloseCode::Normal));
    }

    /// A peer's fault is told to it with the status RFC 6455 names; the socket's own
    /// failure is not (nothing could carry it).
    #[tokio::test]
    async fn a_read_error_of_the_peers_is_answered_with_its_close_status() {
        let (mut client, server_io) = pair().await;
        let mut socket = Socket::new(server_io, BytesMut::new(), Role::Server, CONFIG);
        // A masked text frame (key 0) of one byte that is no UTF-8.
        client
            .write_all(&[0x81, 0x81, 0, 0, 0, 0, 0xff])
            .await
            .unwrap();
        let e = socket.reading.next().await.unwrap_err();
        let how = Closing::after_read_error(&e);
        assert!(
            matches!(&how, Closing::Send(f) if f.code == close_code::INVALID),
            "{how:?}"
        );
        let ended = tokio::spawn(async move { socket.end(how).await });
        let mut head = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut head)
            .await
            .unwrap();
        assert_eq!(head[0], 0x88, "a close frame");
        assert_eq!(u16::from_be_bytes([head[2], head[3]]), close_code::INVALID);
        drop(client);
        ended.await.unwrap();

        let too_big = crate::Error::FrameTooLarge { size: 2, max: 1 };
        assert!(matches!(Closing::after_read_error(&too_big),
            Closing::Send(f) if f.code == close_code::SIZE));
        let breach = crate::Error::WsProtocol("reserved opcode");
        assert!(matches!(Closing::after_read_error(&breach),
            Closing::Send(f) if f.code == close_code::PROTOCOL));
        let failed = crate::Error::Io(std::io::Error::other("reset"));
        assert_eq!(Closing::after_read_error(&failed), Closing::Drop);
    }
}
