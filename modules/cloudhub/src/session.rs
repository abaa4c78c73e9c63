//! One node's connection: writes what its queue has to send, reads what it sends up, and
//! drops it when it falls silent, floods, or is replaced.

use std::time::Duration;

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

/// Serves `ws` for the attached node until the link ends; returns why it ended.
pub(crate) async fn run<S>(hub: &Hub, attached: &Attached, ws: &mut WebSocketStream<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = hub.config();
    let node = &attached.node;
    let keepalive = config.keepalive_timeout();
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    let codec = FrameCodec::new(config.max_frame_len);
    let port = attached.port();
    let mut last_seen = Instant::now();
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
        let more_streams = budget == 0;
        if !batch.is_empty() || !streams.is_empty() {
            let write = async {
                for frame in batch.into_iter().chain(streams) {
                    ws.feed(frame).await?;
                }
                ws.flush().await
            };
            match timeout(write_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return format!("write failed: {e}"),
                Err(_) => {
                    return format!(
                        "a write blocked for {write_timeout:?}: the node reads nothing"
                    );
                }
            }
        }
        let silent_until = last_seen + keepalive;
        let due = node.queue.lock().expect("queue poisoned").next_due();
        let mut wake_at = due.map_or(silent_until, |d| d.min(silent_until));
        if more_streams {
            wake_at = Instant::now();
        }
        let notified = node.wake.notified();
        // In this order: a frame that is waiting is read before the silence deadline is
        // looked at. A session that ran late (a busy cloudcore) finds both ready, and an
        // unordered pick dropped live nodes as silent.
        tokio::select! {
            biased;
            _ = attached.cancel.cancelled() => {
                if let Some(why) = attached.cut.get() {
                    close(ws, CloseCode::Policy, why).await;
                    return why.clone();
                }
                let reason = if hub.shutdown.is_cancelled() {
                    "cloudcore is shutting down"
                } else {
                    "replaced by a newer connection of the same node"
                };
                close(ws, CloseCode::Away, reason).await;
                return reason.into();
            }
            frame = ws.next() => {
                last_seen = Instant::now();
                let msg = match frame {
                    None => return "the node closed the connection".into(),
                    Some(Ok(WsMessage::Text(text))) => Message::from_json(text.as_bytes())
                        .map_err(|e| format!("malformed message: {e}")),
                    Some(Ok(WsMessage::Binary(bytes))) if proto::stream::is_stream_frame(&bytes) => {
                        hub.stream_inbound(&port, bytes);
                        continue;
                    }
                    Some(Ok(WsMessage::Binary(bytes))) => codec
                        .decode_frame(bytes)
                        .map_err(|e| format!("malformed binary frame: {e}")),
                    Some(Ok(WsMessage::Close(frame))) => {
                        return match frame {
                            Some(f) => format!("the node closed the link: {} {}", f.code, f.reason),
                            None => "the node closed the link".into(),
                        };
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        let reason = format!("oversized message: {e}");
                        close(ws, CloseCode::Size, &reason).await;
                        return reason;
                    }
                    Some(Err(e)) => return format!("read failed: {e}"),
                };
                match msg {
                    Ok(msg) => hub.inbound(node, msg).await,
                    Err(reason) => {
                        close(ws, CloseCode::Invalid, &reason).await;
                        return reason;
                    }
                }
            }
            _ = notified => {}
            _ = sleep_until(wake_at) => {
                if Instant::now() >= silent_until {
                    let reason = format!("silent for {keepalive:?}");
                    close(ws, CloseCode::Away, &reason).await;
                    return reason;
                }
            }
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
