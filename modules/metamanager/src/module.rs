//! The bus handler: module `metaManager`, group `meta`.
//!
//! A message is from the cloud when its `route.group` is the wire group `resource` (edgehub
//! delivers cloud messages to the bus group `meta` without rewriting them); local modules
//! address the bus group `meta`. Changes from the cloud are ACKed to the hub group — after
//! the commit — and their failures answered there with an `error` reply; local sync requests
//! are answered with `send_resp`.
//!
//! A change the store cannot commit (disk full) is not answered to the cloud at all: an error
//! reply would settle it in cloudhub's queue like an ACK, while silence makes cloudhub resend
//! it until the store has room. The store's state goes to the health module (bus group
//! `health`) on every change, and to the log once per outage (at most once a minute).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use beehive::{Context, Module, ModuleError, async_trait};
use proto::{Content, Message, ResourcePath, Route, connection, group, operation, store_state};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::applications;
use crate::config::MetaManagerConfig;
use crate::error::{Error, Result};
use crate::object::{changes, other_change};
use crate::server::{self, RefusedPeers, Server};
use crate::store::{Filter, Store, StoreState};

/// Module name on the bus (KubeEdge's).
pub const MODULE: &str = "metaManager";
/// Group on the bus (KubeEdge's).
pub const GROUP: &str = "meta";
/// The bus group of the cloud link (edgehub).
pub const HUB_GROUP: &str = "hub";

/// The store failing again within this long of the last logged failure is not logged again
/// (a nearly full disk lets small commits through between failures).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long the cloud has to answer the watch report (KubeEdge's edge waits as long,
/// agent.go:198).
const WATCH_REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The metamanager module.
pub struct MetaManager {
    config: MetaManagerConfig,
    store: Store,
    refused: RefusedPeers,
    node: String,
}

impl MetaManager {
    /// A module serving `store`.
    pub fn new(config: MetaManagerConfig, store: Store) -> Self {
        MetaManager {
            config,
            store,
            refused: RefusedPeers::default(),
            node: String::new(),
        }
    }

    /// The node this edge is (its edgehub's `nodeID`): with one, its watch Applications
    /// are filed with the cloud on every link up.
    pub fn for_node(mut self, node: &str) -> Self {
        self.node = node.to_owned();
        self
    }

    /// The count of clients its socket refused (kept by the caller; the module is moved
    /// into the core when it starts).
    pub fn refused_peers(&self) -> RefusedPeers {
        self.refused.clone()
    }
}

struct Handler {
    ctx: Context,
    store: Store,
    online: AtomicBool,
    remote_timeout: Duration,
    node: String,
}

#[async_trait]
impl Module for MetaManager {
    fn name(&self) -> &str {
        MODULE
    }
    fn group(&self) -> &str {
        GROUP
    }
    fn enabled(&self) -> bool {
        self.config.enable
    }
    async fn start(self: Box<Self>, ctx: Context) -> Result<(), ModuleError> {
        let handler = Arc::new(Handler {
            ctx: ctx.clone(),
            store: self.store.clone(),
            online: AtomicBool::new(false),
            remote_timeout: Duration::from_millis(self.config.remote_query_timeout_ms),
            node: self.node.clone(),
        });
        // The socket serves what the store holds from the start, before any cloud link.
        let group = self.config.socket_gid()?;
        let listener = server::bind_for_group(&self.config.socket_path, group)?;
        log::info!(
            "metamanager socket at {}{}",
            self.config.socket_path.display(),
            group.map_or_else(String::new, |g| format!(" (group {g} admitted)"))
        );
        let stop_serving = CancellationToken::new();
        let server = Server::counting(
            self.store.clone(),
            Some(ctx.clone()),
            &self.config,
            self.refused.clone(),
        )?;
        let serving = tokio::spawn(server.serve(listener, stop_serving.clone()));
        let reporting = tokio::spawn(report_state(
            ctx.clone(),
            self.store.state(),
            stop_serving.clone(),
        ));

        let mut batch = Vec::with_capacity(256);
        // Runs until the core closes the inbox; what was queued is still handled.
        while ctx.receive_many(MODULE, &mut batch, 256).await.is_ok() {
            for msg in batch.drain(..) {
                handler.clone().handle(msg);
            }
        }
        stop_serving.cancel();
        let _ = serving.await;
        let _ = reporting.await;
        let _ = std::fs::remove_file(&self.config.socket_path);
        Ok(())
    }
}

impl Handler {
    /// Queues the message's store work now (so writes apply in arrival order) and answers it
    /// from a task once the store has.
    fn handle(self: Arc<Self>, msg: Message) {
        match msg.operation() {
            operation::INSERT | operation::UPDATE | operation::DELETE => self.change(msg),
            operation::QUERY => {
                tokio::spawn(async move { self.query(msg).await });
            }
            operation::CONNECT if msg.resource() == connection::RESOURCE => {
                let up = msg.content.as_str() == Some(connection::CONNECTED);
                self.online.store(up, Ordering::SeqCst);
                log::info!("cloud link {}", if up { "up" } else { "down" });
                if up {
                    tokio::spawn(async move {
                        self.report_holdings().await;
                        self.file_watches().await;
                    });
                }
            }
            operation::RESPONSE | operation::ERROR => {
                // Replies to our own remote queries arrive through send_resp, not here.
                log::debug!(
                    "ignoring a stray {} for {}",
                    msg.operation(),
                    msg.resource()
                );
            }
            other => {
                let reason = format!("unsupported operation {other:?}");
                self.fail(&msg, &reason);
            }
        }
    }

    /// Tells the cloud what this node holds, so it sends only what changed while the link
    /// was down and deletes what no longer exists.
    async fn report_holdings(&self) {
        let rows = match self.store.list(Filter::default()).await {
            Ok(rows) => rows,
            Err(e) => {
                log::warn!("cannot report holdings to the cloud: {e}");
                return;
            }
        };
        let digest: serde_json::Map<String, Value> = rows
            .iter()
            .map(|row| {
                let rv = row.resource_version.clone().unwrap_or_default();
                (row.key.clone(), Value::String(rv))
            })
            .collect();
        let report = Message::new(
            Route::new(MODULE, group::RESOURCE, operation::RESYNC, ""),
            Value::Object(digest),
        );
        if let Err(e) = self.ctx.send_to_group(HUB_GROUP, report).await {
            log::warn!("cannot report holdings to the cloud: {e}");
        } else {
            log::info!("reported {} object(s) to the cloud for resync", rows.len());
        }
    }

    /// Files this node's watch Applications with the cloud (a KubeEdge cloud sends
    /// Services and Endpoints only to edges that watch them) and logs any it refuses.
    async fn file_watches(&self) {
        if self.node.is_empty() {
            return;
        }
        let report = applications::watch_report(&self.node);
        let answer = self
            .ctx
            .send_to_group_sync(HUB_GROUP, report, WATCH_REPORT_TIMEOUT)
            .await;
        let refused = match answer {
            Ok(replies) => match replies.first().map(applications::refused) {
                Some(Ok(refused)) => refused,
                Some(Err(e)) => vec![("watch report".into(), e)],
                None => vec![("watch report".into(), "no answer".into())],
            },
            Err(e) => vec![("watch report".into(), format!("not answered: {e}"))],
        };
        if refused.is_empty() {
            log::info!(
                "the cloud approved this node's watches of {:?}",
                applications::WATCHED
            );
        }
        for (key, why) in refused {
            log::warn!("the cloud refused the watch of {key}: {why}");
        }
    }

    fn change(self: Arc<Self>, msg: Message) {
        let delete = msg.operation() == operation::DELETE;
        let content = || match &msg.content {
            Content::Bytes(b) => serde_json::from_slice(b)
                .map_err(|e| Error::BadRequest(format!("content is not JSON: {e}"))),
            json => Ok(json.json().cloned().unwrap_or(Value::Null)),
        };
        let rv = &msg.header.resource_version;
        let parsed = match ResourcePath::parse_edge(msg.resource()) {
            Ok(path) => content().and_then(|c| changes(&path, &c, rv, delete)),
            Err(proto::Error::UnknownResourceType { .. }) => {
                content().and_then(|c| match other_change(msg.resource(), &c, rv, delete) {
                    Some(change) => change.map(|c| vec![c]),
                    None => Err(Error::BadRequest(format!(
                        "{}: not <namespace>/<type>/<name>",
                        msg.resource()
                    ))),
                })
            }
            Err(e) => Err(e.into()),
        };
        let changes = match parsed {
            Ok(c) => c,
            Err(e) => return self.fail(&msg, &e.to_string()),
        };
        let applied = self.store.apply(changes);
        tokio::spawn(async move {
            match applied.await {
                Ok(_) => self.succeed(&msg, Content::text("OK")),
                // No ACK, so cloudhub resends it; the state report says why, once.
                Err(Error::Unwritable(_)) if from_cloud(&msg) => {}
                Err(Error::Unwritable(reason)) => {
                    self.answer(&msg, Message::error_reply(&msg, &reason));
                }
                Err(e) => self.fail(&msg, &e.to_string()),
            }
        });
    }

    async fn query(&self, msg: Message) {
        let path = match ResourcePath::parse_edge(msg.resource()) {
            Ok(p) => p,
            Err(e) => return self.fail(&msg, &e.to_string()),
        };
        let answer = match Filter::of(&path) {
            None => match self.store.get(&path.to_string()) {
                Ok(Some(row)) => Ok(row.json()),
                Ok(None) => self.remote_query(&msg, &path).await,
                Err(e) => Err(e.to_string()),
            },
            Some(filter) => match self.store.list(filter).await {
                Ok(rows) => Ok(Value::Array(rows.iter().map(|r| r.json()).collect())),
                Err(e) => Err(e.to_string()),
            },
        };
        match answer {
            Ok(v) => self.succeed(&msg, Content::Json(v)),
            Err(reason) => self.fail(&msg, &reason),
        }
    }

    /// Asks the cloud for an object the store lacks and stores the answer. Offline, or when
    /// the cloud does not answer in time, the caller gets an error rather than a wait.
    async fn remote_query(&self, msg: &Message, path: &ResourcePath) -> Result<Value, String> {
        let not_found = || format!("{path} not found");
        if from_cloud(msg) || !self.online.load(Ordering::SeqCst) {
            return Err(not_found());
        }
        let ask = Message::new(
            Route::new(MODULE, group::RESOURCE, operation::QUERY, path.to_string()),
            Content::default(),
        );
        let replies = self
            .ctx
            .send_to_group_sync(HUB_GROUP, ask, self.remote_timeout)
            .await
            .map_err(|e| format!("{}: remote query failed: {e}", not_found()))?;
        let reply = replies.into_iter().next().ok_or_else(not_found)?;
        if reply.operation() == operation::ERROR {
            return Err(reply.content.as_str().map_or_else(not_found, str::to_owned));
        }
        let Some(mut object) = reply.content.into_json() else {
            return Err(format!("{path}: the cloud answered with bytes"));
        };
        // A KubeEdge cloud answers in its `ObjectResp {Object, Err}` envelope, an error
        // included (edge/pkg/metamanager/process.go:393-403 reads it the same way).
        if object.get("Object").is_some() && object.get("Err").is_some() {
            if let Some(why) = proto::api_status::error_in(&object) {
                return Err(format!("{}: {why}", not_found()));
            }
            object = object["Object"].take();
        }
        let rv = reply.header.resource_version.clone();
        let stored = changes(path, &object, &rv, false)
            .map_err(|e| format!("{path}: bad answer from the cloud: {e}"))?;
        self.store
            .apply(stored)
            .await
            .map_err(|e| format!("{path}: storing the cloud's answer: {e}"))?;
        Ok(object)
    }

    fn succeed(&self, req: &Message, content: Content) {
        self.answer(req, Message::reply(req, content));
    }

    fn fail(&self, req: &Message, reason: &str) {
        log::warn!("{} {}: {reason}", req.operation(), req.resource());
        self.answer(req, Message::error_reply(req, reason));
    }

    fn answer(&self, req: &Message, mut reply: Message) {
        reply.route.source = MODULE.into();
        if from_cloud(req) {
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = ctx.send_to_group(HUB_GROUP, reply).await {
                    log::debug!("no cloud link for an answer: {e}");
                }
            });
        } else if req.header.sync {
            self.ctx.send_resp(reply);
        }
    }
}

/// Follows the store's state until `stop`: every change goes to the health module, and an
/// outage is logged once when it begins (at most once per [`FAILURE_LOG_EVERY`]) and once
/// when it ends, rather than once per write refused.
async fn report_state(
    ctx: Context,
    mut state: watch::Receiver<StoreState>,
    stop: CancellationToken,
) {
    let mut last_logged: Option<Instant> = None;
    let mut announced = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
        let now = state.borrow_and_update().clone();
        let content = match &now {
            StoreState::Writable => {
                if announced {
                    log::info!("metadata store commits again: writes are ACKed");
                    announced = false;
                }
                store_state::WRITABLE.to_owned()
            }
            StoreState::Unwritable(reason) => {
                let quiet = last_logged.is_some_and(|t| t.elapsed() < FAILURE_LOG_EVERY);
                if !announced && !quiet {
                    log::error!(
                        "{reason}; cloud changes are not ACKed (cloudhub resends them) until it commits again"
                    );
                    announced = true;
                    last_logged = Some(Instant::now());
                } else {
                    log::debug!("{reason}");
                }
                reason.clone()
            }
        };
        let event = Message::new(
            Route::new(MODULE, GROUP, operation::UPDATE, store_state::RESOURCE),
            Content::text(content),
        );
        if let Err(e) = ctx.send_to_group(store_state::HEALTH_GROUP, event).await {
            log::debug!("no health module for the store state: {e}");
        }
    }
}

fn from_cloud(msg: &Message) -> bool {
    msg.route.group == group::RESOURCE
}

#[cfg(test)]
mod tests {
    use super::*;
    use beehive::{Core, CoreConfig};
    use serde_json::json;

    const WAIT: Duration = Duration::from_secs(10);

    fn insert(name: &str, pad: usize) -> Message {
        let object = json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "pad": "x".repeat(pad),
        });
        Message::new(
            Route::new(
                "edgecontroller",
                group::RESOURCE,
                operation::INSERT,
                format!("default/service/{name}"),
            ),
            Content::Json(object),
        )
    }

    async fn next(ctx: &Context, module: &str) -> Message {
        tokio::time::timeout(WAIT, ctx.receive(module))
            .await
            .unwrap_or_else(|_| panic!("{module} got nothing"))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_the_full_store_cannot_commit_is_not_acked_and_health_hears_why() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("edge.db");
        let config = MetaManagerConfig {
            db_path: db.clone(),
            socket_path: dir.path().join("mm.sock"),
            ..MetaManagerConfig::default()
        };
        let store = Store::open_probing(&db, Duration::from_secs(3600)).unwrap();
        let mut core = Core::new(CoreConfig::default()).unwrap();
        core.register(Box::new(MetaManager::new(config, store.clone())))
            .unwrap();
        let ctx = core.context();
        ctx.add_module("websocket", HUB_GROUP).unwrap();
        ctx.add_module("healthz", store_state::HEALTH_GROUP)
            .unwrap();
        let stop = core.shutdown_handle();
        tokio::spawn(core.run_until(std::future::pending()));

        // SQLite answers a write past max_page_count as it answers a full disk.
        store.pragma("max_page_count", 1).await.unwrap();
        ctx.send(MODULE, insert("big", 64 * 1024)).await.unwrap();
        let event = next(&ctx, "healthz").await;
        assert_eq!(event.operation(), operation::UPDATE);
        assert_eq!(event.resource(), store_state::RESOURCE);
        let reason = event.content.as_str().unwrap();
        assert!(reason.contains("disk full"), "{reason}");
        assert!(reason.contains(&db.display().to_string()), "{reason}");

        store.pragma("max_page_count", 1 << 30).await.unwrap();
        let small = insert("small", 10);
        let id = small.id().clone();
        ctx.send(MODULE, small).await.unwrap();
        // The first thing the hub hears is the ACK of the write that committed: the one
        // that did not got neither an ACK nor an error reply (which cloudhub would take as
        // settled), so cloudhub resends it.
        let ack = next(&ctx, "websocket").await;
        assert_eq!(ack.parent_id(), Some(&id));
        assert_eq!(ack.operation(), operation::RESPONSE);
        let event = next(&ctx, "healthz").await;
        assert_eq!(event.content.as_str(), Some(store_state::WRITABLE));
        assert!(store.get("default/service/big").unwrap().is_none());
        stop.shutdown();
    }
}
