//! The local socket edgemesh reads metadata from (protocol in [`proto::meta_socket`]).
//!
//! Each connection has one task that reads requests and writes their answers, and one
//! forwarder per watch. Everything a connection may queue is bounded: a watcher that stops reading
//! fills its buffers and is disconnected — by the store when its change buffer overflows, or
//! by its forwarder when the socket accepts nothing for the stall timeout — while the store
//! and every other client go on.
//!
//! Who connects is checked first (`SO_PEERCRED`): root, edgecore's own user and members of
//! `socketGroup` are served; anyone else gets one `error` frame and is disconnected before
//! any request of theirs is read, with a (throttled) warning, and is counted.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use beehive::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use proto::meta_socket::{self, ALL_NAMESPACES, PING, WATCH, WATCH_SYNCED};
use proto::{Content, Message, ResourcePath, ResourceType, Route, operation};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::config::MetaManagerConfig;
use crate::error::{Error, Result};
use crate::module::MODULE;
use crate::store::{Event, Filter, Row, Store};

/// Warnings of failed accepts (out of descriptors, usually): at most one per 10 s.
static ACCEPT_FAILED: beehive::Throttle =
    beehive::Throttle::new(std::time::Duration::from_secs(10));

/// Warnings of refused clients: at most one per 10 s (a local loop of them must not flood
/// the log).
static PEER_REFUSED: beehive::Throttle = beehive::Throttle::new(std::time::Duration::from_secs(10));

/// How long the one error frame to a refused client may take to write.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Frames a connection may have queued for its writer.
const OUTBOUND_FRAMES: usize = 256;

/// Binds the socket at `path` with mode 0600: the parent folder is created, a stale socket
/// file (no server behind it) is replaced, and a live one is an error. The socket is bound
/// under a temporary name, restricted, then renamed into place, so it is never reachable
/// with wider permissions.
pub fn bind(path: &Path) -> Result<UnixListener> {
    bind_for_group(path, None)
}

/// As [`bind`]; with `group`, the socket file belongs to that group with mode 0660 so its
/// members can connect (the server still checks each one: see [`Server::serve`]).
pub fn bind_for_group(path: &Path, group: Option<u32>) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                )));
            }
            log::info!("replacing stale socket {}", path.display());
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let mode = match group {
        None => 0o600,
        Some(gid) => {
            // Only root, or an owner who is a member, may give a file to a group.
            if let Err(e) = std::os::unix::fs::chown(&tmp, None, Some(gid)) {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot give {} to group {gid}: {e}", path.display()),
                )));
            }
            0o660
        }
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// A count of clients the socket refused, readable after the server or module is moved.
#[derive(Clone, Debug, Default)]
pub struct RefusedPeers(prometheus_client::metrics::counter::Counter);

impl RefusedPeers {
    /// Clients refused so far.
    pub fn get(&self) -> u64 {
        self.0.get()
    }

    fn add(&self) {
        self.0.inc();
    }

    /// Adds the count to `registry` as `socket_refused_peers_total`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "socket_refused_peers",
            "Socket clients refused by their credentials (SO_PEERCRED)",
            self.0.clone(),
        );
    }
}

/// Who may connect: root, our own effective uid, and members of the configured group.
#[derive(Clone, Copy, Debug)]
struct Admission {
    own_uid: u32,
    group: Option<u32>,
}

/// A connecting client's credentials, as the kernel recorded them at `connect()`.
#[derive(Clone, Copy, Debug)]
struct Peer {
    pid: u32,
    uid: u32,
    gid: u32,
}

impl Peer {
    /// `SO_PEERCRED` through tokio, not rustix: rustix's `UCred` holds the pid as a
    /// non-zero `Pid`, but the kernel reports 0 for a peer in a pid namespace we cannot see
    /// (edgecore in a container, a client on the host), which such a type must never hold.
    fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        Ok(Peer {
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            uid: cred.uid(),
            gid: cred.gid(),
        })
    }
}

impl Admission {
    fn admits(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        peer.gid == group || supplementary_groups(peer.pid).contains(&group)
    }
}

/// The supplementary groups of process `pid` (the `Groups:` line of its /proc status); none
/// when that cannot be read (the process is gone, or in a pid namespace we do not see).
fn supplementary_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What every connection shares.
pub struct Server {
    store: Store,
    /// The bus, to ask metamanager (and through it the cloud) about objects the store lacks.
    ctx: Option<Context>,
    max_frame_len: usize,
    watch_buffer: usize,
    stall: Duration,
    remote_timeout: Duration,
    admission: Admission,
    refused: RefusedPeers,
}

impl Server {
    /// A server for `store`; with `ctx`, a get that misses is asked of the metaManager module
    /// (which asks the cloud when it is reachable). Fails when `socketGroup` names no group.
    pub fn new(
        store: Store,
        ctx: Option<Context>,
        config: &MetaManagerConfig,
    ) -> Result<Arc<Self>> {
        Self::counting(store, ctx, config, RefusedPeers::default())
    }

    /// As [`Server::new`], counting refused clients in `refused`.
    pub fn counting(
        store: Store,
        ctx: Option<Context>,
        config: &MetaManagerConfig,
        refused: RefusedPeers,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(Server {
            store,
            ctx,
            max_frame_len: config.max_frame_len,
            watch_buffer: config.watch_buffer,
            stall: Duration::from_millis(config.watch_stall_timeout_ms),
            remote_timeout: Duration::from_millis(config.remote_query_timeout_ms),
            admission: Admission {
                own_uid: rustix::process::geteuid().as_raw(),
                group: config.socket_gid()?,
            },
            refused,
        }))
    }

    /// Clients refused so far (not root, not our user, not in `socketGroup`).
    pub fn refused_peers(&self) -> u64 {
        self.refused.get()
    }

    /// Accepts connections until `shutdown` is cancelled, then closes them all. Each client's
    /// credentials are checked before anything of it is read.
    pub async fn serve(self: Arc<Self>, listener: UnixListener, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let server = self.clone();
                        let close = shutdown.child_token();
                        tokio::spawn(async move {
                            if server.admit(&stream).await {
                                server.connection(stream, close).await;
                            }
                        });
                    }
                    Err(e) => {
                        ACCEPT_FAILED.warn(format_args!("metamanager socket accept failed: {e}"));
                        // Out of descriptors and the like: pause instead of spinning.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// Whether the client behind `stream` may use the socket; a refused one is sent one
    /// `error` frame, logged and counted (the caller then drops the stream, closing it).
    async fn admit(&self, stream: &UnixStream) -> bool {
        let peer = match Peer::of(stream) {
            Ok(peer) => peer,
            Err(e) => {
                // Not expected on a Unix stream socket; without credentials, nobody is admitted.
                PEER_REFUSED.warn(format_args!(
                    "metamanager socket: refused a client whose credentials cannot be read: {e}"
                ));
                self.refused.add();
                return false;
            }
        };
        if self.admission.admits(&peer) {
            return true;
        }
        self.refused.add();
        let group = self
            .admission
            .group
            .map_or_else(|| "none configured".to_owned(), |g| g.to_string());
        PEER_REFUSED.warn(format_args!(
            "metamanager socket: refused a client (uid {}, gid {}, pid {}): only root, uid {} \
             and group {group} (socketGroup) may connect",
            peer.uid, peer.gid, peer.pid, self.admission.own_uid
        ));
        let reply = Message::new(
            Route::new(MODULE, "meta", operation::ERROR, ""),
            Content::text(format!(
                "permission denied: uid {} may not use this socket",
                peer.uid
            )),
        );
        if let Ok(json) = reply.to_json_vec() {
            let mut frame = Vec::with_capacity(json.len() + 4);
            frame.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
            frame.extend_from_slice(&json);
            let _ = tokio::time::timeout(REFUSAL_WRITE, write_all(stream, &frame)).await;
        }
        false
    }

    /// One task reads requests and writes their answers itself (no hand-off on the query
    /// path); watch forwarders queue their changes for it on a bounded channel.
    async fn connection(self: Arc<Self>, stream: UnixStream, close: CancellationToken) {
        let (rd, wr) = stream.into_split();
        let mut reader = FramedRead::new(rd, meta_socket::codec(self.max_frame_len));
        let mut writer = FramedWrite::new(wr, meta_socket::codec(self.max_frame_len));
        let (out, mut out_rx) = mpsc::channel::<Bytes>(OUTBOUND_FRAMES);
        loop {
            let frames = tokio::select! {
                biased;
                () = close.cancelled() => break,
                Some(frame) = out_rx.recv() => vec![frame],
                frame = reader.next() => match frame {
                    None => break,
                    Some(Err(e)) => {
                        log::warn!("metamanager socket: closing a connection that sent a bad frame: {e}");
                        break;
                    }
                    Some(Ok(bytes)) => self.request(&bytes, &out, &close).await,
                },
            };
            if !write(&mut writer, frames, &close).await {
                break;
            }
        }
        close.cancel();
    }

    /// The frames answering one request.
    async fn request(
        &self,
        bytes: &[u8],
        out: &mpsc::Sender<Bytes>,
        close: &CancellationToken,
    ) -> Vec<Bytes> {
        let req = match Message::from_json(bytes) {
            Ok(m) => m,
            Err(e) => {
                let reply = Message::new(
                    Route::new(MODULE, "meta", operation::ERROR, ""),
                    Content::text(format!("malformed request: {e}")),
                );
                return encode(&[reply]);
            }
        };
        let reply = match req.operation() {
            PING => Message::reply(&req, "pong"),
            operation::QUERY => match self.query(&req).await {
                Ok(v) => Message::reply(&req, Content::Json(v)),
                Err(e) => Message::error_reply(&req, e),
            },
            WATCH => match self.watch(&req, out, close).await {
                Ok(initial) => return initial,
                Err(e) => Message::error_reply(&req, e),
            },
            other => Message::error_reply(&req, format!("unsupported operation {other:?}")),
        };
        encode(&[reply])
    }

    async fn query(&self, req: &Message) -> Result<Value, String> {
        let target = Target::parse(req.resource())?;
        match target {
            Target::One(path) => {
                let key = path.to_string();
                match self.store.get(&key).map_err(|e| e.to_string())? {
                    Some(row) => Ok(row.json()),
                    None => Ok(self.ask_bus(&key).await),
                }
            }
            Target::Many(filter) => {
                let rows = self.store.list(filter).await.map_err(|e| e.to_string())?;
                Ok(Value::Array(rows.iter().map(|r| r.json()).collect()))
            }
        }
    }

    /// Asks the metaManager module for a key the store lacks: it queries the cloud when the
    /// link is up. Anything but an object means "absent" (null).
    async fn ask_bus(&self, key: &str) -> Value {
        let Some(ctx) = &self.ctx else {
            return Value::Null;
        };
        let ask = Message::new(
            Route::new("metaSocket", "meta", operation::QUERY, key),
            Content::default(),
        );
        match ctx
            .send_sync(MODULE, ask, self.remote_timeout + Duration::from_secs(1))
            .await
        {
            Ok(reply) if reply.operation() == operation::RESPONSE => {
                reply.content.into_json().unwrap_or(Value::Null)
            }
            Ok(reply) => {
                log::debug!("{key}: {}", reply.content.as_str().unwrap_or("not found"));
                Value::Null
            }
            Err(e) => {
                log::warn!("{key}: asking metaManager failed: {e}");
                Value::Null
            }
        }
    }

    async fn watch(
        &self,
        req: &Message,
        out: &mpsc::Sender<Bytes>,
        close: &CancellationToken,
    ) -> Result<Vec<Bytes>, String> {
        let Target::Many(filter) = Target::parse(req.resource())? else {
            return Err("a watch names a type, not one object".into());
        };
        let (tx, mut rx) = mpsc::channel(self.watch_buffer);
        let rows = self
            .store
            .watch(filter, tx)
            .await
            .map_err(|e| e.to_string())?;
        // Each object is encoded as soon as it is parsed, so one JSON tree is alive at a
        // time: a thousand Services listed at once would otherwise be a thousand trees
        // (12 MiB here), whose freed pages the allocator keeps long after.
        let mut initial: Vec<Bytes> = Vec::with_capacity(rows.len() + 1);
        for row in &rows {
            initial.extend(encode(&[stream_message(req, operation::INSERT, row)]));
        }
        let mut synced = Message::reply(req, Content::default());
        synced.route.operation = WATCH_SYNCED.into();
        initial.extend(encode(&[synced]));
        let (req, out, close, stall) = (req.clone(), out.clone(), close.clone(), self.stall);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = close.cancelled() => return,
                    e = rx.recv() => e,
                };
                let Some(event) = event else {
                    log::warn!(
                        "metamanager socket: watcher {} fell behind; disconnecting it",
                        req.id()
                    );
                    let bye = Message::error_reply(&req, "watch buffer overflowed: list again");
                    if let Ok(json) = bye.to_json_vec() {
                        let _ = out.try_send(Bytes::from(json));
                    }
                    close.cancel();
                    return;
                };
                let (op, row) = match &event {
                    Event::Inserted(r) => (operation::INSERT, r),
                    Event::Updated(r) => (operation::UPDATE, r),
                    Event::Deleted(r) => (operation::DELETE, r),
                };
                let msg = stream_message(&req, op, row);
                let Ok(json) = msg.to_json_vec() else {
                    continue;
                };
                let sent = tokio::select! {
                    () = close.cancelled() => return,
                    r = tokio::time::timeout(stall, out.send(Bytes::from(json))) => r,
                };
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        log::warn!(
                            "metamanager socket: watcher {} stopped reading for {stall:?}; disconnecting it",
                            req.id()
                        );
                        close.cancel();
                        return;
                    }
                }
            }
        });
        Ok(initial)
    }
}

/// What a query or watch resource names.
enum Target {
    One(ResourcePath),
    Many(Filter),
}

impl Target {
    fn parse(resource: &str) -> Result<Target, String> {
        if let Some(kind) = resource
            .strip_prefix(ALL_NAMESPACES)
            .and_then(|r| r.strip_prefix('/'))
        {
            let kind = ResourceType::parse(kind)
                .ok_or_else(|| format!("unknown resource type in {resource:?}"))?;
            return Ok(Target::Many(Filter {
                kind: Some(kind.element()),
                namespace: None,
            }));
        }
        let path = ResourcePath::parse_edge(resource).map_err(|e| e.to_string())?;
        Ok(match Filter::of(&path) {
            None => Target::One(path),
            Some(filter) => Target::Many(filter),
        })
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not an API: it may change at any time).
#[doc(hidden)]
pub mod fuzzing {
    /// How the server reads a request's resource: `Ok(true)` for one object, `Ok(false)`
    /// for a list or watch filter, `Err` with the reason it would answer.
    pub fn target(resource: &str) -> Result<bool, String> {
        super::Target::parse(resource).map(|t| matches!(t, super::Target::One(_)))
    }
}

fn stream_message(req: &Message, op: &str, row: &Row) -> Message {
    let mut msg = Message::reply(req, Content::Json(row.json()));
    msg.route = Route::new(MODULE, "meta", op, row.key.as_str());
    msg
}

fn encode(msgs: &[Message]) -> Vec<Bytes> {
    msgs.iter()
        .filter_map(|m| match m.to_json_vec() {
            Ok(json) => Some(Bytes::from(json)),
            Err(e) => {
                log::error!("cannot encode an answer: {e}");
                None
            }
        })
        .collect()
}

/// Writes all of `bytes` through a shared reference (the stream is not split yet).
async fn write_all(stream: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `frames` and flushes once; false when the connection is closed or closing.
async fn write(
    writer: &mut FramedWrite<
        tokio::net::unix::OwnedWriteHalf,
        tokio_util::codec::LengthDelimitedCodec,
    >,
    frames: Vec<Bytes>,
    close: &CancellationToken,
) -> bool {
    let io = async {
        for frame in frames {
            writer.feed(frame).await?;
        }
        SinkExt::<Bytes>::flush(writer).await
    };
    tokio::select! {
        () = close.cancelled() => false,
        r = io => r.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        // A pid that never exists: no supplementary groups.
        Peer { pid: 0, uid, gid }
    }

    #[test]
    fn root_our_uid_and_the_group_are_admitted_and_nobody_else() {
        let private = Admission {
            own_uid: 1000,
            group: None,
        };
        assert!(private.admits(&peer(0, 0)));
        assert!(private.admits(&peer(1000, 1000)));
        assert!(!private.admits(&peer(1001, 1000)));
        assert!(!private.admits(&peer(65534, 65534)));
        let shared = Admission {
            own_uid: 1000,
            group: Some(4242),
        };
        assert!(shared.admits(&peer(1001, 4242)));
        assert!(!shared.admits(&peer(1001, 1001)));
    }

    #[test]
    fn supplementary_groups_come_from_proc_status() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        let expected: Vec<u32> = line["Groups:".len()..]
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        assert_eq!(supplementary_groups(std::process::id()), expected);
        assert!(supplementary_groups(0).is_empty());
        assert!(supplementary_groups(u32::MAX).is_empty());
    }
}
