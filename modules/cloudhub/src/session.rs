//! One node's connection: writes what its queue has to send, reads what it sends up, and
//! drops it when it falls silent, floods, or is replaced.
//!
//! Reading and writing are two loops of one task, polled together: a write that waits for
//! the node's socket (a full send buffer) does not stop the frames the node sends up — its
//! stream credit among them — from being read and routed meanwhile. With one loop doing
//! both, each hop of a stream waited for the one before it in lock-step.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use proto::{FrameCodec, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::hub::{Attached, Hub};

/// Bytes of stream frames written per pass before objects get their turn again.
const STREAM_BUDGET: usize = 512 * 1024;

/// Time a close handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a session ended, and the close frame the node is sent (none when the socket is
/// already unusable).
struct End {
    reason: String,
    close: Option<CloseCode>,
}

impl End {
    fn quiet(reason: String) -> Self {
        Self {
            reason,
            close: None,
        }
    }

    fn closing(code: CloseCode, reason: String) -> Self {
        Self {
            reason,
            close: Some(code),
        }
    }
}

/// Serves `ws` for the attached node until the link ends; returns why it ended.
pub(crate) async fn run<S>(hub: &Hub, attached: &Attached, ws: &mut WebSocketStream<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let end = {
        let (mut sink, mut stream) = ws.split();
        tokio::select! {
            biased;
            _ = attached.cancel.cancelled() => match attached.cut.get() {
                Some(why) => End::closing(CloseCode::Policy, why.clone()),
                None if hub.shutdown.is_cancelled() => {
                    End::closing(CloseCode::Away, "cloudcore is shutting down".into())
                }
                None => End::closing(
                    CloseCode::Away,
                    "replaced by a newer connection of the same node".into(),
                ),
            },
            end = read_loop(hub, attached, &mut stream) => end,
            end = write_loop(hub, attached, &mut sink) => end,
        }
    };
    if let Some(code) = end.close {
        close(ws, code, &end.reason).await;
    }
    end.reason
}

/// Writes the node's queued objects and stream frames as they come, taking turns.
async fn write_loop<S>(
    hub: &Hub,
    attached: &Attached,
    sink: &mut SplitSink<&mut WebSocketStream<S>, WsMessage>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = hub.config();
    let node = &attached.node;
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    loop {
        let batch = node.queue.lock().expect("queue poisoned").take(
            Instant::now(),
            config.window,
            config.ack_timeout(),
            config.max_resends,
        );
        // Stream frames take turns with objects: a budget per pass, so neither starves.
        let mut streams = Vec::new();
        let mut budget = STREAM_BUDGET;
        {
            let mut outbox = attached.outbox.lock().expect("outbox poisoned");
            while budget > 0
                && let Some(frame) = outbox.pop()
            {
                budget = budget.saturating_sub(frame.len());
                streams.push(WsMessage::Binary(frame));
            }
        }
        if !batch.is_empty() || !streams.is_empty() {
            let write = async {
                for frame in batch.into_iter().chain(streams) {
                    sink.feed(frame).await?;
                }
                sink.flush().await
            };
            match timeout(write_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return End::quiet(format!("write failed: {e}")),
                Err(_) => {
                    return End::quiet(format!(
                        "a write blocked for {write_timeout:?}: the node reads nothing"
                    ));
                }
            }
        }
        if budget == 0 {
            // More is waiting; the reader (same task) gets its turn first.
            tokio::task::yield_now().await;
            continue;
        }
        let notified = node.wake.notified();
        let due = node.queue.lock().expect("queue poisoned").next_due();
        match due {
            Some(due) => {
                tokio::select! {
                    _ = notified => {}
                    _ = sleep_until(due) => {}
                }
            }
            None => notified.await,
        }
    }
}

/// Reads what the node sends up until it closes, errs, or falls silent.
async fn read_loop<S>(
    hub: &Hub,
    attached: &Attached,
    stream: &mut SplitStream<&mut WebSocketStream<S>>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = hub.config();
    let node = &attached.node;
    let keepalive = config.keepalive_timeout();
    let codec = FrameCodec::new(config.max_frame_len);
    let port = attached.port();
    loop {
        // A frame that is waiting is read before the silence deadline is looked at
        // (`timeout` polls the read first): a session that ran late (a busy cloudcore)
        // finds both ready, and an unordered pick dropped live nodes as silent.
        let Ok(frame) = timeout(keepalive, stream.next()).await else {
            return End::closing(CloseCode::Away, format!("silent for {keepalive:?}"));
        };
        let msg = match frame {
            None => return End::quiet("the node closed the connection".into()),
            Some(Ok(WsMessage::Text(text))) => {
                Message::from_json(text.as_bytes()).map_err(|e| format!("malformed message: {e}"))
            }
            Some(Ok(WsMessage::Binary(bytes))) if proto::stream::is_stream_frame(&bytes) => {
                hub.stream_inbound(&port, bytes);
                continue;
            }
            Some(Ok(WsMessage::Binary(bytes))) => codec
                .decode_frame(bytes)
                .map_err(|e| format!("malformed binary frame: {e}")),
            Some(Ok(WsMessage::Close(frame))) => {
                return End::quiet(match frame {
                    Some(f) => format!("the node closed the link: {} {}", f.code, f.reason),
                    None => "the node closed the link".into(),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(tungstenite::Error::Capacity(e))) => {
                return End::closing(CloseCode::Size, format!("oversized message: {e}"));
            }
            Some(Err(e)) => return End::quiet(format!("read failed: {e}")),
        };
        match msg {
            Ok(msg) => hub.inbound(node, msg).await,
            Err(reason) => return End::closing(CloseCode::Invalid, reason),
        }
    }
}

/// Sends a close frame with `reason` (cut to the 123 bytes a close frame allows) and waits
/// briefly for the close handshake.
pub(crate) async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    };
    let _ = timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}
