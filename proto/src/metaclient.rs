//! Client of the metamanager socket ([`crate::meta_socket`]): queries, and a watch that
//! reconnects by itself and starts over with a fresh list, kube-rs style.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::meta_socket::{self, ALL_NAMESPACES, PING, WATCH, WATCH_SYNCED};
use crate::{Content, Message, MsgId, ResourceType, Route, operation};

/// What a client call can fail at.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, reading or writing the socket failed, or the server closed it.
    #[error("metamanager socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an `error` reply.
    #[error("metamanager refused: {0}")]
    Server(String),
    /// The server sent something that is not a Message of the protocol.
    #[error("metamanager protocol: {0}")]
    Protocol(String),
    /// No answer within the call's timeout.
    #[error("no answer from metamanager within {0:?}")]
    Timeout(Duration),
}

type Result<T> = std::result::Result<T, ClientError>;

const SOURCE: &str = "metaclient";

fn request(op: &str, resource: String) -> Message {
    Message::new(Route::new(SOURCE, "meta", op, resource), Content::default())
}

fn list_resource(namespace: Option<&str>, kind: ResourceType) -> String {
    format!("{}/{}", namespace.unwrap_or(ALL_NAMESPACES), kind.element())
}

/// One connection for request/response calls.
pub struct MetaClient {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    timeout: Duration,
}

impl MetaClient {
    /// Connects to the socket at `path`; each call waits at most `timeout` for its answer.
    pub async fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        let stream = UnixStream::connect(path).await?;
        Ok(MetaClient {
            framed: Framed::new(
                stream,
                meta_socket::codec(meta_socket::DEFAULT_MAX_FRAME_LEN),
            ),
            timeout,
        })
    }

    async fn call(&mut self, req: Message) -> Result<Message> {
        let id = req.id().clone();
        let exchange = async {
            send(&mut self.framed, &req).await?;
            loop {
                let reply = recv(&mut self.framed).await?;
                if reply.parent_id() == Some(&id) {
                    return Ok::<_, ClientError>(reply);
                }
            }
        };
        let reply = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        if reply.operation() == operation::ERROR {
            return Err(ClientError::Server(
                reply.content.as_str().unwrap_or("unknown error").to_owned(),
            ));
        }
        Ok(reply)
    }

    /// Checks the server answers.
    pub async fn ping(&mut self) -> Result<()> {
        self.call(request(PING, String::new())).await.map(|_| ())
    }

    /// One object, or `None` when neither the store nor (when reachable) the cloud has it.
    pub async fn get(
        &mut self,
        namespace: &str,
        kind: ResourceType,
        name: &str,
    ) -> Result<Option<Value>> {
        let reply = self
            .call(request(
                operation::QUERY,
                format!("{namespace}/{kind}/{name}"),
            ))
            .await?;
        match reply.content.into_json() {
            Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(v)),
            None => Err(ClientError::Protocol("bytes in a query answer".into())),
        }
    }

    /// Every object of `kind` in `namespace` (`None`: every namespace), ordered by key.
    pub async fn list(
        &mut self,
        namespace: Option<&str>,
        kind: ResourceType,
    ) -> Result<Vec<Value>> {
        let reply = self
            .call(request(operation::QUERY, list_resource(namespace, kind)))
            .await?;
        reply
            .content
            .decode()
            .map_err(|e| ClientError::Protocol(format!("list answer: {e}")))
    }
}

async fn send(framed: &mut Framed<UnixStream, LengthDelimitedCodec>, msg: &Message) -> Result<()> {
    let bytes = msg
        .to_json_vec()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    framed.send(bytes::Bytes::from(bytes)).await?;
    Ok(())
}

async fn recv(framed: &mut Framed<UnixStream, LengthDelimitedCodec>) -> Result<Message> {
    match framed.next().await {
        Some(Ok(frame)) => {
            Message::from_json(&frame).map_err(|e| ClientError::Protocol(e.to_string()))
        }
        Some(Err(e)) => Err(e.into()),
        None => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
    }
}

/// A change seen by a [`Watch`].
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// A (re)started list begins: drop what you hold and rebuild from the events up to
    /// [`WatchEvent::InitDone`].
    Init,
    /// An object of the initial list.
    InitApply(String, Value),
    /// The initial list is complete; the snapshot is current.
    InitDone,
    /// An object was created or changed.
    Apply(String, Value),
    /// An object was removed (its last known state).
    Delete(String, Value),
}

/// A watch that never ends: when the connection drops it reconnects with capped backoff and
/// starts again with [`WatchEvent::Init`], so a consumer's snapshot always converges.
pub struct Watch {
    path: PathBuf,
    resource: String,
    conn: Option<WatchConn>,
    backoff: Duration,
}

struct WatchConn {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    id: MsgId,
    /// The initial list has ended on this connection.
    synced: bool,
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Watch {
    /// A watch of `kind` in `namespace` (`None`: every namespace) on the socket at `path`.
    /// It connects on the first [`Watch::next`].
    pub fn new(path: impl Into<PathBuf>, namespace: Option<&str>, kind: ResourceType) -> Self {
        Watch {
            path: path.into(),
            resource: list_resource(namespace, kind),
            conn: None,
            backoff: BACKOFF_MIN,
        }
    }

    /// The next event; reconnects as long as it takes.
    pub async fn next(&mut self) -> WatchEvent {
        loop {
            let Some(conn) = &mut self.conn else {
                match self.open().await {
                    Ok(conn) => {
                        self.conn = Some(conn);
                        self.backoff = BACKOFF_MIN;
                        return WatchEvent::Init;
                    }
                    Err(e) => {
                        log::warn!(
                            "metamanager watch {}: {e}; retrying in {:?}",
                            self.resource,
                            self.backoff
                        );
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            };
            match recv(&mut conn.framed).await {
                Ok(msg) if msg.parent_id() == Some(&conn.id) => {
                    if let Some(event) = Self::event(msg, &mut conn.synced) {
                        return event;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!(
                        "metamanager watch {} lost: {e}; reconnecting",
                        self.resource
                    );
                    self.conn = None;
                }
            }
        }
    }

    async fn open(&self) -> Result<WatchConn> {
        let stream = UnixStream::connect(&self.path).await?;
        let mut framed = Framed::new(
            stream,
            meta_socket::codec(meta_socket::DEFAULT_MAX_FRAME_LEN),
        );
        let req = request(WATCH, self.resource.clone());
        send(&mut framed, &req).await?;
        Ok(WatchConn {
            framed,
            id: req.id().clone(),
            synced: false,
        })
    }

    fn event(msg: Message, synced: &mut bool) -> Option<WatchEvent> {
        let key = msg.resource().to_owned();
        let value = msg.content.into_json().unwrap_or(Value::Null);
        Some(match msg.route.operation.as_str() {
            WATCH_SYNCED => {
                *synced = true;
                WatchEvent::InitDone
            }
            operation::INSERT if !*synced => WatchEvent::InitApply(key, value),
            operation::INSERT | operation::UPDATE => WatchEvent::Apply(key, value),
            operation::DELETE => WatchEvent::Delete(key, value),
            operation::ERROR => {
                log::warn!(
                    "metamanager ended the watch: {}",
                    value.as_str().unwrap_or("")
                );
                return None;
            }
            _ => return None,
        })
    }
}
