//! The bus module: keeps the desired state from the source, sends each connected edge node
//! its share as it changes, resyncs nodes that (re)connect, and answers their queries.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use beehive::{Context, Module, ModuleError, async_trait};
use proto::application::DYNAMIC_CONTROLLER;
use proto::{Content, Message, ResourcePath, Route, connection, group, operation};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::applications::{self, Asker};
use crate::config::{EdgeControllerConfig, SourceKind};
use crate::kubernetes::KubernetesSource;
use crate::manifests::ManifestSource;
use crate::node_requests;
use crate::object::{Kind, Object};
use crate::refusal::Refusals;
use crate::source::{Source, SourceEvent};
use crate::state::{Delta, State};
use crate::versions::Versions;

/// Module name on the bus.
pub const MODULE: &str = "edgecontroller";
/// Group of the module.
pub const GROUP: &str = "edgecontroller";
/// Where messages for nodes go.
const HUB: &str = "cloudhub";
/// Group of the mesh that may run in cloudcore.
const MESH_GROUP: &str = "mesh";
/// Internal: a node's holdings report did not arrive in time (content: the wait's token).
const RESYNC_TIMEOUT: &str = "resync_timeout";

/// The edgecontroller module.
pub struct EdgeController {
    config: EdgeControllerConfig,
    source: Box<dyn Source>,
    versions: Versions,
    refusals: Refusals,
}

impl EdgeController {
    /// A module reading from the source `config` names (for `kubernetes`, the client is
    /// set up here, so a bad kubeconfig stops cloudcore at start with the reason), with
    /// its resourceVersion ledger opened (an unusable `versionsDb` stops it too).
    pub async fn new(config: EdgeControllerConfig) -> crate::Result<Self> {
        let versions = Versions::open(&config.versions_db)?;
        let source: Box<dyn Source> = match config.source {
            SourceKind::Manifests => Box::new(ManifestSource::new(
                config.manifests.dir.clone(),
                Duration::from_millis(config.manifests.poll_interval_ms),
            )),
            SourceKind::Kubernetes => {
                let client = crate::kubernetes::client(&config.kubernetes.kubeconfig).await?;
                Box::new(KubernetesSource::new(client, &config.edge_node_label))
            }
        };
        Ok(Self::with_source(config, source, versions))
    }

    /// A module reading from `source`, versioning with `versions`.
    pub fn with_source(
        config: EdgeControllerConfig,
        source: Box<dyn Source>,
        versions: Versions,
    ) -> Self {
        EdgeController {
            config,
            source,
            versions,
            refusals: Refusals::default(),
        }
    }

    /// Queries refused, by reason (register them for `/metrics`).
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }
}

#[async_trait]
impl Module for EdgeController {
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
        let (tx, rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        log::info!("edgecontroller reading from {}", self.source.name());
        let source = tokio::spawn(self.source.run(tx, stop.clone()));
        let mut events = Some(rx);
        let mut ctl = Controller {
            ctx: ctx.clone(),
            config: self.config,
            state: State::default(),
            versions: self.versions,
            connected: BTreeSet::new(),
            edge_nodes: BTreeSet::new(),
            awaiting: HashMap::new(),
            remembered: HashMap::new(),
            assumed: HashMap::new(),
            listed: BTreeSet::new(),
            deferred: HashMap::new(),
            next_token: 0,
            refusals: self.refusals,
        };
        loop {
            let next_event = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = next_event => match event {
                    Some(event) => ctl.on_source(event).await,
                    None => {
                        log::error!("the source stopped; serving its last state");
                        events = None;
                    }
                },
                msg = ctx.receive(MODULE) => match msg {
                    Ok(msg) => ctl.on_message(msg).await,
                    Err(_) => break,
                },
            }
        }
        stop.cancel();
        let _ = source.await;
        Ok(())
    }
}

struct Controller {
    ctx: Context,
    config: EdgeControllerConfig,
    state: State,
    versions: Versions,
    connected: BTreeSet<String>,
    /// Edge nodes per the source; empty means every connected node is served.
    edge_nodes: BTreeSet<String>,
    /// Nodes whose holdings report is awaited, with the token of the wait.
    awaiting: HashMap<String, u64>,
    /// Kinds the source has given a complete list of (its first `Replace` of each).
    listed: BTreeSet<Kind>,
    /// Resyncs asked for before the source had listed every kind, by node, run once it has
    /// (the latest report of a node wins).
    deferred: HashMap<String, Option<Map<String, Value>>>,
    /// What cloudhub's record says each connected node may hold (`synced`), used when the
    /// node sends no holdings report of its own (a KubeEdge edgecore never does).
    remembered: HashMap<String, Map<String, Value>>,
    /// Nodes whose report did not come in time, with the holdings the resync that ran in
    /// its place assumed (cloudhub's record, or nothing), until the report comes after all
    /// or the node goes.
    assumed: HashMap<String, Map<String, Value>>,
    next_token: u64,
    refusals: Refusals,
}

impl Controller {
    fn serves(&self, node: &str) -> bool {
        self.edge_nodes.is_empty() || self.edge_nodes.contains(node)
    }

    /// Whether live changes go to `node` now: connected and served. Changes go on while its
    /// holdings report is awaited: cloudhub's queue keeps the latest of each object, so one
    /// the resync sends again replaces the queued copy rather than doubling it, and a change
    /// held back would leave an older queued version of that object to reach the node after
    /// the report (a Service deleted meanwhile would come back as its queued insert, and the
    /// resync, computed from a report that never had it, would not delete it).
    fn live(&self, node: &str) -> bool {
        self.connected.contains(node) && self.serves(node)
    }

    /// Nodes that get live changes to Services and Endpoints.
    fn audience(&self) -> Vec<String> {
        self.connected
            .iter()
            .filter(|n| self.live(n))
            .cloned()
            .collect()
    }

    async fn on_source(&mut self, event: SourceEvent) {
        let was_ready = self.source_ready();
        let deltas = match event {
            SourceEvent::Replace(kind, objects) => {
                self.listed.insert(kind);
                let objects = self.versions.stamp_all(objects);
                let keys: Vec<_> = objects.iter().map(Object::key).collect();
                self.versions.retain(kind, &keys);
                self.state.replace(kind, objects)
            }
            SourceEvent::Apply(obj) => {
                let obj = self.versions.stamp(obj);
                self.state.apply(obj).into_iter().collect()
            }
            SourceEvent::Delete(key) => {
                self.versions.forget(&key);
                self.state.delete(&key).into_iter().collect()
            }
        };
        let mut nodes_changed = false;
        for delta in &deltas {
            let kind = match delta {
                Delta::Upsert { new, .. } => new.kind,
                Delta::Delete(old) => old.kind,
            };
            if kind == Kind::Node {
                nodes_changed = true;
            } else {
                self.distribute(delta).await;
            }
        }
        if nodes_changed {
            self.refresh_edge_nodes().await;
        }
        if !was_ready && self.source_ready() {
            let deferred = std::mem::take(&mut self.deferred);
            log::info!(
                "the source has listed every kind: {} deferred resync(s) now",
                deferred.len()
            );
            for (node, digest) in deferred {
                if self.connected.contains(&node) {
                    self.resync(&node, digest).await;
                }
            }
        }
    }

    /// Whether the source has given a complete list of every kind. Before that, its state
    /// is partial (empty after a cloudcore restart), and a resync computed from it would
    /// delete from a node everything the source has not listed yet.
    fn source_ready(&self) -> bool {
        Kind::ALL.iter().all(|k| self.listed.contains(k))
    }

    async fn refresh_edge_nodes(&mut self) {
        let before: Vec<String> = self.audience();
        self.edge_nodes = self
            .state
            .labelled_nodes(&self.config.edge_node_label)
            .into_iter()
            .collect();
        log::info!(
            "{} edge node(s) labelled {}",
            self.edge_nodes.len(),
            self.config.edge_node_label
        );
        for node in self.audience() {
            if !before.contains(&node) {
                self.resync(&node, None).await;
            }
        }
    }

    async fn distribute(&self, delta: &Delta) {
        match delta {
            Delta::Upsert { old, new } if new.kind == Kind::Pod => {
                let old_node = old.as_ref().and_then(Object::pod_node);
                let new_node = new.pod_node();
                if let (Some(o), Some(old)) = (old_node, old)
                    && old_node != new_node
                {
                    self.send_if_present(o, operation::DELETE, old).await;
                }
                if let Some(n) = new_node {
                    let op = if old_node == new_node && old.is_some() {
                        operation::UPDATE
                    } else {
                        operation::INSERT
                    };
                    self.send_if_present(n, op, new).await;
                }
            }
            Delta::Upsert { old, new } => {
                let op = if old.is_some() {
                    operation::UPDATE
                } else {
                    operation::INSERT
                };
                self.to_cloud_mesh(op, new).await;
                for node in self.audience() {
                    self.send(&node, op, new).await;
                }
            }
            Delta::Delete(old) if old.kind == Kind::Pod => {
                if let Some(n) = old.pod_node() {
                    self.send_if_present(n, operation::DELETE, old).await;
                }
            }
            Delta::Delete(old) => {
                self.to_cloud_mesh(operation::DELETE, old).await;
                for node in self.audience() {
                    self.send(&node, operation::DELETE, old).await;
                }
            }
        }
    }

    /// Hands a Service or Endpoints change to the mesh running in cloudcore, if any: it
    /// dials cloud endpoints for edges and serves cloud workloads' calls to edge Services.
    async fn to_cloud_mesh(&self, op: &str, obj: &Object) {
        if self.ctx.members(MESH_GROUP).is_empty() {
            return;
        }
        let Some(path) = obj.edge_path() else {
            return;
        };
        let content = content_for(obj);
        let msg = Message::new(Route::new(MODULE, group::RESOURCE, op, path), content)
            .with_resource_version(&obj.rv);
        if let Err(e) = self.ctx.send_to_group(MESH_GROUP, msg).await {
            log::warn!("cannot hand {op} to the cloud mesh: {e}");
        }
    }

    /// Sends to `node` when it takes live changes; an absent node is resynced when it
    /// returns, so nothing is queued for it meanwhile.
    async fn send_if_present(&self, node: &str, op: &str, obj: &Object) {
        if self.live(node) {
            self.send(node, op, obj).await;
        }
    }

    async fn send(&self, node: &str, op: &str, obj: &Object) {
        let Some(path) = obj.edge_path() else {
            return;
        };
        let content = content_for(obj);
        self.send_path(node, op, &path, content, &obj.rv).await;
    }

    async fn send_path(
        &self,
        node: &str,
        op: &str,
        path: &str,
        content: impl Into<Content>,
        rv: &str,
    ) {
        let msg = Message::new(
            Route::new(MODULE, group::RESOURCE, op, format!("node/{node}/{path}")),
            content,
        )
        .with_resource_version(rv);
        if let Err(e) = self.ctx.send(HUB, msg).await {
            log::warn!("cannot hand {op} {path} for {node} to cloudhub: {e}");
        }
    }

    async fn on_message(&mut self, msg: Message) {
        let node = msg
            .resource()
            .strip_prefix("node/")
            .map(|rest| rest.split('/').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        if msg.route.group == DYNAMIC_CONTROLLER && !node.is_empty() {
            self.application(&node, &msg).await;
            return;
        }
        match msg.operation() {
            operation::CONNECT if msg.content.as_str() == Some(connection::NODE_CONNECTED) => {
                self.connected.insert(node.clone());
                // A `synced` for this connection, if any, follows.
                self.remembered.remove(&node);
                self.assumed.remove(&node);
                let token = self.next_token;
                self.next_token += 1;
                self.awaiting.insert(node.clone(), token);
                let ctx = self.ctx.clone();
                let wait = Duration::from_millis(self.config.resync_wait_ms);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let timeout = Message::new(
                        Route::new(
                            MODULE,
                            group::RESOURCE,
                            RESYNC_TIMEOUT,
                            format!("node/{node}"),
                        ),
                        json!(token),
                    );
                    let _ = ctx.send(MODULE, timeout).await;
                });
            }
            operation::CONNECT if msg.content.as_str() == Some(connection::NODE_DISCONNECTED) => {
                self.connected.remove(&node);
                self.awaiting.remove(&node);
                self.remembered.remove(&node);
                self.assumed.remove(&node);
                self.deferred.remove(&node);
            }
            operation::SYNCED => match msg.content.decode::<Map<String, Value>>() {
                Ok(held) => {
                    self.remembered.insert(node, held);
                }
                Err(e) => log::warn!("cloudhub's record of node {node} is unreadable: {e}"),
            },
            operation::RESYNC => {
                self.awaiting.remove(&node);
                // The node's own report wins over cloudhub's record, which only adds the
                // paths the report lacks: objects queued for the node before its link
                // dropped may still reach it after its report (cloudhub resends what was
                // not ACKed), so one deleted at the source while the node was away must be
                // deleted again here, or its queued insert would outlive the resync.
                let remembered = self.remembered.remove(&node);
                self.connected.insert(node.clone());
                match msg.content.decode::<Map<String, Value>>() {
                    Ok(mut digest) => {
                        for (path, _) in remembered.into_iter().flatten() {
                            digest.entry(path).or_insert(Value::Null);
                        }
                        if let Some(assumed) = self.assumed.remove(&node) {
                            log::info!(
                                "node {node} reported after its wait ran out: only what the \
                                 resync in its place skipped, and deletes, are left"
                            );
                            let current = self.current_versions(&node);
                            digest = late_digest(digest, &assumed, current);
                        }
                        self.resync(&node, Some(digest)).await
                    }
                    Err(e) => log::warn!("node {node} sent an unreadable holdings report: {e}"),
                }
            }
            RESYNC_TIMEOUT => {
                let token = msg.content.decode::<u64>().ok();
                if token.is_some() && self.awaiting.get(&node) == token.as_ref() {
                    self.awaiting.remove(&node);
                    let held = self.remembered.remove(&node);
                    match &held {
                        Some(held) => log::info!(
                            "node {node} sent no report: resyncing from what it ACKed ({} objects)",
                            held.len()
                        ),
                        None => {
                            log::info!("node {node} reported no holdings: sending it everything")
                        }
                    }
                    // A report may still come (a busy cloud, a slow node): it is then
                    // read against what this resync assumed, so nothing travels twice.
                    if self.source_ready() && self.serves(&node) {
                        self.assumed
                            .insert(node.clone(), held.clone().unwrap_or_default());
                    }
                    self.resync(&node, held).await;
                }
            }
            operation::QUERY => {
                let mut reply = self.answer(&node, &msg);
                reply.route.source = MODULE.into();
                if let Err(e) = self.ctx.send(HUB, reply).await {
                    log::warn!("cannot answer node {node}: {e}");
                }
            }
            operation::RESPONSE | operation::ERROR => {
                log::debug!(
                    "ignoring a {} for {} from cloudhub",
                    msg.operation(),
                    msg.resource()
                );
            }
            // A request this cloudcore does not serve (a KubeEdge edge's node status, lease
            // or configmap request): refused at once in KubeEdge's error shape, so the edge
            // does not wait out its timeout.
            other if !node.is_empty() && msg.parent_id().is_none() => {
                let rest = rest_of(&node, &msg);
                match node_requests::refusal(MODULE, rest, &msg) {
                    None => {
                        log::debug!("took a {other} of {rest} from node {node}");
                    }
                    Some(reply) => {
                        let why = format!("not served by this cloudcore: {other} {rest}");
                        self.note_refusal(&node, &msg, "not_served", &why);
                        if let Err(e) = self.ctx.send(HUB, reply).await {
                            log::warn!("cannot answer node {node}: {e}");
                        }
                    }
                }
            }
            other => log::debug!("ignoring {other} for {} from cloudhub", msg.resource()),
        }
    }

    /// Brings `node` in line with what it should hold. With its report (`digest`: path →
    /// version), only differences travel and what it holds beyond its share is deleted;
    /// without one, everything it should hold is sent. Deferred until the source has
    /// listed every kind (live changes reach the node meanwhile).
    async fn resync(&mut self, node: &str, digest: Option<Map<String, Value>>) {
        if !self.source_ready() {
            log::info!("node {node}: resync deferred until the source has listed every kind");
            // A report says more than none (it lets the resync delete): a later request
            // without one (the node newly labelled) does not replace it.
            if digest.is_some() || !self.deferred.contains_key(node) {
                self.deferred.insert(node.to_owned(), digest);
            }
            return;
        }
        if !self.serves(node) {
            log::warn!(
                "node {node} is not labelled {} in the source: it gets nothing",
                self.config.edge_node_label
            );
            return;
        }
        let mut want: HashSet<String> = HashSet::new();
        let (mut sent, mut deleted) = (0usize, 0usize);
        for obj in self.state.desired_for(node) {
            let Some(path) = obj.edge_path() else {
                continue;
            };
            let held = digest
                .as_ref()
                .and_then(|d| d.get(&path))
                .map(|v| v.as_str());
            let op = match held {
                Some(Some(rv)) if rv == obj.rv => None,
                Some(Some(_)) => Some(operation::UPDATE),
                // Not reported (only maybe on its way, per cloudhub's record), or absent.
                Some(None) | None => Some(operation::INSERT),
            };
            want.insert(path);
            if let Some(op) = op {
                self.send(node, op, obj).await;
                sent += 1;
            }
        }
        for key in digest.iter().flat_map(|d| d.keys()) {
            if want.contains(key) {
                continue;
            }
            let Ok(path) = ResourcePath::parse_edge(key) else {
                continue;
            };
            let Some(name) = &path.name else { continue };
            let content = gone_content(&path, name);
            self.send_path(node, operation::DELETE, key, content, "")
                .await;
            deleted += 1;
        }
        log::info!(
            "resync of node {node}: {sent} object(s) sent, {deleted} deleted, {} already current",
            want.len() - sent
        );
    }

    /// The path and resourceVersion of every object `node` should hold now.
    fn current_versions(&self, node: &str) -> Vec<(String, String)> {
        self.state
            .desired_for(node)
            .filter_map(|obj| Some((obj.edge_path()?, obj.rv.clone())))
            .collect()
    }

    /// Refuses `msg` from `node`: logged, counted under `reason`, answered with `why`.
    fn refuse(&self, node: &str, msg: &Message, reason: &'static str, why: String) -> Message {
        self.note_refusal(node, msg, reason, &why);
        Message::error_reply(msg, why)
    }

    /// Logs (throttled) and counts a refusal of `msg` from `node`.
    fn note_refusal(&self, node: &str, msg: &Message, reason: &'static str, why: &str) {
        static LOG: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(10));
        self.refusals.count(reason);
        LOG.warn(format_args!(
            "request {} from node {node} refused: {why}",
            msg.resource()
        ));
    }

    /// Answers a KubeEdge edge's metaServer Application, or its report of watches.
    async fn application(&self, node: &str, msg: &Message) {
        let asker = Asker {
            node,
            served: self.serves(node),
        };
        let answer = applications::answer(&self.state, &asker, rest_of(node, msg), msg);
        if let Some(refused) = &answer.refused {
            self.note_refusal(node, msg, refused.reason, &refused.why);
        } else {
            log::debug!("node {node}: Application {} approved", msg.resource());
        }
        if let Err(e) = self.ctx.send(HUB, answer.reply).await {
            log::warn!("cannot answer node {node}: {e}");
        }
    }

    /// The object or list a node asked for, or an error reply saying why not.
    fn answer(&self, node: &str, msg: &Message) -> Message {
        let rest = rest_of(node, msg);
        let path = match ResourcePath::parse_edge(rest) {
            Ok(path) => path,
            Err(e) => return self.refuse(node, msg, "bad_query", format!("bad query: {e}")),
        };
        if !self.serves(node) {
            let why = format!("node {node} is not an edge node here");
            return self.refuse(node, msg, "not_edge_node", why);
        }
        let kind = Kind::from_edge(path.kind);
        let visible = |o: &Object| kind != Kind::Pod || o.pod_node() == Some(node);
        match (&path.name, path.kind.is_list()) {
            (Some(name), false) => {
                let key = (kind, path.namespace.to_string(), name.to_string());
                match self.state.get(&key) {
                    Some(obj) if visible(obj) => Message::reply(msg, (*obj.value).clone())
                        .with_resource_version(obj.rv.as_str()),
                    // Forbidden whether it exists elsewhere or not at all: the answer
                    // tells a node nothing about other nodes' Pods.
                    _ if kind == Kind::Pod => {
                        let why = format!(
                            "forbidden: node {node} may read only the Pods bound to it, \
                             and {rest} is not"
                        );
                        self.refuse(node, msg, "forbidden", why)
                    }
                    _ => Message::error_reply(msg, format!("{rest} not found")),
                }
            }
            _ => {
                let items: Vec<Value> = self
                    .state
                    .of_kind(kind)
                    .filter(|o| o.namespace == path.namespace.as_str() && visible(o))
                    .map(|o| (*o.value).clone())
                    .collect();
                Message::reply(msg, Value::Array(items))
            }
        }
    }
}

/// A holdings report that came after a resync from `assumed` ran in its place, made into
/// the digest that leaves this resync only what is still to do. Each object of `current`
/// that the earlier resync sent (the version it assumed was not the current one) counts as
/// held, since it is on its way, and so does one changed since (the change went out as
/// one); what it skipped, and what the node holds that is gone, stay as reported.
fn late_digest(
    mut digest: Map<String, Value>,
    assumed: &Map<String, Value>,
    current: Vec<(String, String)>,
) -> Map<String, Value> {
    for (path, rv) in current {
        let skipped = assumed.get(&path).and_then(Value::as_str) == Some(rv.as_str());
        if !skipped {
            digest.insert(path, Value::String(rv));
        }
    }
    digest
}

/// A node's message's resource without the `node/<node>/` prefix.
fn rest_of<'a>(node: &str, msg: &'a Message) -> &'a str {
    msg.resource()
        .strip_prefix("node/")
        .and_then(|r| r.strip_prefix(node))
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or_default()
}

/// What a change of `obj` carries: the object, for a delete too — its last state, as
/// KubeEdge's cloud sends it (`FillBody(content.DeepCopyObject())` for a watch's Deleted
/// event, kubeedge/kubeedge cloud/pkg/dynamiccontroller/application/listener.go:89-92), so
/// a KubeEdge edge's metaServer can decode what was deleted.
///
/// Shared, not copied: a resync of a thousand nodes sends each object a thousand times.
fn content_for(obj: &Object) -> Arc<Value> {
    obj.value.clone()
}

/// The content of a delete for an object the node holds and the source no longer has (a
/// resync): its last state is gone with it, so its type and name, in the object's shape.
fn gone_content(path: &ResourcePath, name: &str) -> Value {
    let kind = match Kind::from_edge(path.kind) {
        Kind::Service => "Service",
        Kind::Endpoints => "Endpoints",
        Kind::Pod => "Pod",
        Kind::Node => "Node",
    };
    json!({
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": path.namespace.as_str()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use beehive::{Core, CoreConfig};
    use tokio::sync::oneshot;

    /// A source whose first lists wait for `open`, as a Kubernetes API slow to answer
    /// after a cloudcore restart.
    struct Gated {
        open: oneshot::Receiver<()>,
        objects: Vec<Value>,
    }

    #[async_trait]
    impl Source for Gated {
        fn name(&self) -> &'static str {
            "gated"
        }
        async fn run(self: Box<Self>, events: mpsc::Sender<SourceEvent>, stop: CancellationToken) {
            let Gated { open, objects } = *self;
            let _ = open.await;
            let objects: Vec<Object> = objects
                .into_iter()
                .filter_map(|v| Object::from_value(v, true).unwrap())
                .collect();
            for kind in Kind::ALL {
                let set = objects.iter().filter(|o| o.kind == kind).cloned().collect();
                let _ = events.send(SourceEvent::Replace(kind, set)).await;
            }
            stop.cancelled().await;
        }
    }

    fn service(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "default", "resourceVersion": "7"},
               "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}})
    }

    fn to_node(operation: &str, resource: &str, content: Value) -> Message {
        Message::new(
            Route::new(HUB, group::RESOURCE, operation, resource),
            content,
        )
    }

    /// A controller with `config` on `source`, running; the context to play cloudhub with,
    /// and what stops it.
    fn start(
        config: EdgeControllerConfig,
        source: Gated,
    ) -> (beehive::Context, beehive::ShutdownHandle) {
        let versions = Versions::open(std::path::Path::new("")).unwrap();
        let module = EdgeController::with_source(config, Box::new(source), versions);
        let mut core = Core::new(CoreConfig::default()).unwrap();
        core.register(Box::new(module)).unwrap();
        let ctx = core.context();
        ctx.add_module(HUB, HUB).unwrap();
        let stop = core.shutdown_handle();
        tokio::spawn(core.run_until(std::future::pending()));
        (ctx, stop)
    }

    /// The next message the controller sends cloudhub.
    async fn next_sent(ctx: &beehive::Context) -> Message {
        tokio::time::timeout(Duration::from_secs(10), ctx.receive(HUB))
            .await
            .expect("cloudhub heard nothing")
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_reports_before_the_source_has_listed_loses_nothing_it_should_keep() {
        let (open, gate) = oneshot::channel();
        let source = Gated {
            open: gate,
            objects: vec![service("web")],
        };
        let (ctx, stop) = start(EdgeControllerConfig::default(), source);

        // The node comes back holding `web`, which the source still has, and `gone`, which
        // it no longer has; it reports both before the source has listed anything.
        let node = "node/edge-a";
        ctx.send(
            MODULE,
            to_node(operation::CONNECT, node, json!(connection::NODE_CONNECTED)),
        )
        .await
        .unwrap();
        let report = json!({"default/service/web": "1", "default/service/gone": "1"});
        ctx.send(MODULE, to_node(operation::RESYNC, node, report))
            .await
            .unwrap();
        // A query's answer comes after everything the report made the controller send.
        let query = to_node(
            operation::QUERY,
            "node/edge-a/default/service/web",
            Value::Null,
        );
        let asked = query.id().clone();
        ctx.send(MODULE, query).await.unwrap();
        let next = || next_sent(&ctx);
        let answer = next().await;
        assert_eq!(
            answer.parent_id(),
            Some(&asked),
            "before the source listed, the report made the controller send {} {}",
            answer.operation(),
            answer.resource()
        );

        // Once it has listed, the resync runs: `web` updated, only `gone` deleted.
        open.send(()).unwrap();
        let mut heard = Vec::new();
        loop {
            let msg = next().await;
            heard.push(format!("{} {}", msg.operation(), msg.resource()));
            if msg.operation() == operation::DELETE {
                break;
            }
        }
        assert_eq!(
            heard.last().map(String::as_str),
            Some("delete node/edge-a/default/service/gone"),
            "{heard:?}"
        );
        assert!(
            heard
                .iter()
                .any(|h| h.ends_with("default/service/web") && !h.starts_with("delete")),
            "{heard:?}"
        );
        stop.shutdown();
    }

    /// A controller serving `web` and `api`, whose nodes' reports are awaited 50 ms.
    fn late_report_setup() -> (beehive::Context, beehive::ShutdownHandle) {
        let (open, gate) = oneshot::channel();
        open.send(()).unwrap();
        let source = Gated {
            open: gate,
            objects: vec![service("web"), service("api")],
        };
        let config = EdgeControllerConfig {
            resync_wait_ms: 50,
            ..Default::default()
        };
        start(config, source)
    }

    /// `web` as a query answers it, once the source has listed it.
    async fn listed_web(ctx: &beehive::Context) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, answer) = sent_until_answered(ctx).await;
            if let Ok(web) = answer.content.decode::<Value>()
                && web["metadata"]["resourceVersion"].is_string()
            {
                return web;
            }
            assert!(tokio::time::Instant::now() < deadline, "web never listed");
            tokio::task::yield_now().await;
        }
    }

    /// What the controller sends cloudhub up to the answer to a query sent now ("op
    /// resource" each), and that answer.
    async fn sent_until_answered(ctx: &beehive::Context) -> (Vec<String>, Message) {
        let query = to_node(
            operation::QUERY,
            "node/edge-a/default/service/web",
            Value::Null,
        );
        let asked = query.id().clone();
        ctx.send(MODULE, query).await.unwrap();
        let mut heard = Vec::new();
        loop {
            let msg = next_sent(ctx).await;
            if msg.parent_id() == Some(&asked) {
                return (heard, msg);
            }
            heard.push(format!("{} {}", msg.operation(), msg.resource()));
        }
    }

    /// Paths sent more than once in `heard`.
    fn twice(heard: &[String]) -> Vec<&String> {
        heard
            .iter()
            .enumerate()
            .filter(|(i, h)| heard[..*i].contains(h))
            .map(|(_, h)| h)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_after_its_wait_adds_deletes_and_resends_nothing() {
        let (ctx, stop) = late_report_setup();
        listed_web(&ctx).await;
        let node = "node/edge-a";
        ctx.send(
            MODULE,
            to_node(operation::CONNECT, node, json!(connection::NODE_CONNECTED)),
        )
        .await
        .unwrap();
        // No report within the wait: everything is sent.
        let first = next_sent(&ctx).await;
        assert_eq!(first.operation(), operation::INSERT, "{}", first.resource());
        // Then the report comes: the node holds nothing but an object that is gone.
        let report = json!({"default/service/gone": "1"});
        ctx.send(MODULE, to_node(operation::RESYNC, node, report))
            .await
            .unwrap();
        let (mut heard, _) = sent_until_answered(&ctx).await;
        heard.insert(0, format!("{} {}", first.operation(), first.resource()));
        assert!(twice(&heard).is_empty(), "sent twice: {heard:?}");
        assert_eq!(
            heard.last().map(String::as_str),
            Some("delete node/edge-a/default/service/gone"),
            "{heard:?}"
        );
        assert!(
            heard.contains(&"insert node/edge-a/default/service/web".to_owned()),
            "{heard:?}"
        );
        stop.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_after_its_wait_gets_what_the_record_made_the_resync_skip() {
        let (ctx, stop) = late_report_setup();
        let node = "node/edge-a";
        let web = listed_web(&ctx).await;
        let rv = web["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        ctx.send(
            MODULE,
            to_node(operation::CONNECT, node, json!(connection::NODE_CONNECTED)),
        )
        .await
        .unwrap();
        // cloudhub's record: the node ACKed web at its current version.
        let record = json!({"default/service/web": rv});
        ctx.send(MODULE, to_node(operation::SYNCED, node, record))
            .await
            .unwrap();
        let first = next_sent(&ctx).await;
        // The node lost its store after all: it reports holding nothing.
        ctx.send(MODULE, to_node(operation::RESYNC, node, json!({})))
            .await
            .unwrap();
        let (mut heard, _) = sent_until_answered(&ctx).await;
        heard.insert(0, format!("{} {}", first.operation(), first.resource()));
        assert!(twice(&heard).is_empty(), "sent twice: {heard:?}");
        let web_at = heard
            .iter()
            .position(|h| h == "insert node/edge-a/default/service/web");
        let api_at = heard
            .iter()
            .position(|h| h == "insert node/edge-a/default/service/api");
        assert!(
            web_at.is_some() && api_at.is_some() && api_at < web_at,
            "api by the record's resync, web only after the report: {heard:?}"
        );
        stop.shutdown();
    }
}
