//! One node's connection: writes what its queue has to send, reads what it sends up, and
//! drops it when it falls silent, floods, or is replaced.
//!
//! Reading and writing are two loops of one task, polled together: a write that waits for
//! the node's socket (a full send buffer) does not stop the frames the node sends up — its
//! stream credit among them — from being read and routed meanwhile. With one loop doing
//! both, each hop of a stream waited for the one before it in lock-step.

use std::time::Duration;

use proto::ws::{Closing, Reading, Socket, Writing, WsMessage, close_code};
use proto::{FrameCodec, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout};

use crate::hub::{Attached, Hub};

/// Bytes of stream frames written per pass before objects get their turn again.
const STREAM_BUDGET: usize = 512 * 1024;

/// Why a session ended, and how the link is closed.
struct End {
    reason: String,
    close: Closing,
}

impl End {
    fn quiet(reason: String) -> Self {
        Self {
            reason,
            close: Closing::Drop,
        }
    }

    /// Ends with a close frame of `code` that tells the node `reason`.
    fn closing(code: u16, reason: String) -> Self {
        Self {
            close: Closing::send(code, reason.clone()),
            reason,
        }
    }
}

/// Serves `ws` for the attached node until the link ends; returns why it ended.
pub(crate) async fn run<S>(hub: &Hub, attached: &Attached, ws: &mut Socket<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let end = {
        let Socket { reading, writing } = &mut *ws;
        tokio::select! {
            biased;
            _ = attached.cancel.cancelled() => match attached.cut.get() {
                Some(why) => End::closing(close_code::POLICY, why.clone()),
                None if hub.shutdown.is_cancelled() => {
                    End::closing(close_code::AWAY, "cloudcore is shutting down".into())
                }
                None => End::closing(
                    close_code::AWAY,
                    "replaced by a newer connection of the same node".into(),
                ),
            },
            end = read_loop(hub, attached, reading) => end,
            end = write_loop(hub, attached, writing) => end,
        }
    };
    ws.end(end.close).await;
    end.reason
}

/// Writes the node's queued objects and stream frames as they come, taking turns.
async fn write_loop<S>(hub: &Hub, attached: &Attached, sink: &mut Writing<S>) -> End
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
                streams.push(frame);
            }
        }
        if !batch.is_empty() || !streams.is_empty() || sink.pong_owed() {
            for frame in batch {
                sink.push(frame);
            }
            for frame in streams {
                sink.push(WsMessage::Binary(frame));
            }
            match timeout(write_timeout, sink.flush()).await {
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
                    _ = sink.owes_pong() => {}
                    _ = sleep_until(due) => {}
                }
            }
            None => {
                tokio::select! {
                    _ = notified => {}
                    _ = sink.owes_pong() => {}
                }
            }
        }
    }
}

/// Reads what the node sends up until it closes, errs, or falls silent.
async fn read_loop<S>(hub: &Hub, attached: &Attached, stream: &mut Reading<S>) -> End
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
            return End::closing(close_code::AWAY, format!("silent for {keepalive:?}"));
        };
        let msg = match frame {
            Ok(None) => return End::quiet("the node closed the connection".into()),
            Ok(Some(WsMessage::Text(text))) => {
                Message::from_json(&text).map_err(|e| format!("malformed message: {e}"))
            }
            Ok(Some(WsMessage::Binary(bytes))) if proto::stream::is_stream_frame(&bytes) => {
                hub.stream_inbound(&port, bytes);
                continue;
            }
            Ok(Some(WsMessage::Binary(bytes))) => codec
                .decode_frame(bytes)
                .map_err(|e| format!("malformed binary frame: {e}")),
            Ok(Some(WsMessage::Close(frame))) => {
                return End {
                    reason: match &frame {
                        Some(f) => format!("the node closed the link: {} {}", f.code, f.reason),
                        None => "the node closed the link".into(),
                    },
                    close: Closing::Answer(frame),
                };
            }
            Ok(Some(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Err(e) => {
                return End {
                    reason: format!("read failed: {e}"),
                    close: Closing::after_read_error(&e),
                };
            }
        };
        match msg {
            Ok(msg) => hub.inbound(node, msg).await,
            Err(reason) => return End::closing(close_code::INVALID, reason),
        }
    }
}
