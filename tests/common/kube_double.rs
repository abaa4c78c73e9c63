//! A test double of the Kubernetes API server — not a real one (none can be installed on
//! these machines). It speaks the list/watch protocol kube-rs uses: JSON lists with a
//! resourceVersion, and chunked watch streams of `ADDED` / `MODIFIED` / `DELETED` /
//! `BOOKMARK` lines, with `410 Gone` (an `ERROR` event) for a watch that asks for a
//! compacted version, which forces the client to list again.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The collections the double serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Res {
    /// `/api/v1/services`
    Services,
    /// `/api/v1/pods`
    Pods,
    /// `/api/v1/nodes`
    Nodes,
    /// `/apis/discovery.k8s.io/v1/endpointslices`
    EndpointSlices,
}

impl Res {
    const ALL: [Res; 4] = [Res::Services, Res::Pods, Res::Nodes, Res::EndpointSlices];

    fn path(self) -> &'static str {
        match self {
            Res::Services => "/api/v1/services",
            Res::Pods => "/api/v1/pods",
            Res::Nodes => "/api/v1/nodes",
            Res::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
        }
    }

    fn list(self) -> (&'static str, &'static str) {
        match self {
            Res::Services => ("v1", "ServiceList"),
            Res::Pods => ("v1", "PodList"),
            Res::Nodes => ("v1", "NodeList"),
            Res::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSliceList"),
        }
    }
}

#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, event line) since the last compaction.
    log: Vec<(u64, Value)>,
    watchers: Vec<(Option<String>, mpsc::UnboundedSender<Bytes>)>,
}

#[derive(Default)]
struct State {
    rv: u64,
    compacted: u64,
    gone_served: usize,
    collections: HashMap<Res, Collection>,
}

/// The double; stops serving when dropped.
pub struct KubeDouble {
    state: Arc<Mutex<State>>,
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(obj: &Value) -> (String, String) {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `key` (exists) or `key=value`, as kube-rs sends a label selector.
fn selected(selector: Option<&str>, obj: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &obj["metadata"]["labels"];
    match selector.split_once('=') {
        Some((k, v)) => labels[k].as_str() == Some(v),
        None => !labels[selector].is_null(),
    }
}

fn line(event: &Value) -> Bytes {
    let mut text = event.to_string();
    text.push('\n');
    Bytes::from(text)
}

impl State {
    fn record(&mut self, res: Res, kind: &str, mut obj: Value, live: bool) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let coll = self.collections.entry(res).or_default();
        let k = key(&obj);
        let event = json!({"type": kind, "object": obj});
        if kind == "DELETED" {
            coll.objects.remove(&k);
        } else {
            coll.objects.insert(k, obj.clone());
        }
        coll.log.push((self.rv, event.clone()));
        if live {
            coll.watchers.retain(|(sel, tx)| {
                !selected(sel.as_deref(), &obj) || tx.send(line(&event)).is_ok()
            });
        }
    }

    fn upsert(&mut self, res: Res, obj: Value, live: bool) {
        let exists = self
            .collections
            .get(&res)
            .is_some_and(|c| c.objects.contains_key(&key(&obj)));
        let kind = if exists { "MODIFIED" } else { "ADDED" };
        self.record(res, kind, obj, live);
    }

    fn remove(&mut self, res: Res, ns: &str, name: &str, live: bool) {
        let k = (ns.to_owned(), name.to_owned());
        let Some(obj) = self
            .collections
            .get(&res)
            .and_then(|c| c.objects.get(&k))
            .cloned()
        else {
            return;
        };
        self.record(res, "DELETED", obj, live);
    }
}

/// Changes made while every watch is down; see [`KubeDouble::expire`].
pub struct Gap<'a>(&'a mut State);

impl Gap<'_> {
    /// Creates or replaces an object, unseen by any watch.
    pub fn apply(&mut self, res: Res, obj: Value) {
        self.0.upsert(res, obj, false);
    }
    /// Deletes an object, unseen by any watch.
    pub fn delete(&mut self, res: Res, ns: &str, name: &str) {
        self.0.remove(res, ns, name, false);
    }
}

impl KubeDouble {
    /// Starts serving `objects` on a loopback port.
    pub async fn start(objects: Vec<(Res, Value)>) -> KubeDouble {
        Self::start_on("127.0.0.1", objects).await
    }

    /// Starts serving `objects` on `ip` (port chosen by the system): a host address a
    /// network namespace reaches, say.
    pub async fn start_on(ip: &str, objects: Vec<(Res, Value)>) -> KubeDouble {
        let mut state = State::default();
        for (res, obj) in objects {
            state.upsert(res, obj, false);
        }
        let state = Arc::new(Mutex::new(state));
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(req, state.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        KubeDouble { state, addr, task }
    }

    /// Writes a kubeconfig pointing at the double.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: \"http://{}\"}}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: double, user: test}}\n\
             current-context: test\n",
            self.addr
        );
        std::fs::write(path, text).unwrap();
    }

    /// Creates or replaces an object; watches see `ADDED` or `MODIFIED`.
    pub fn apply(&self, res: Res, obj: Value) {
        self.state.lock().unwrap().upsert(res, obj, true);
    }

    /// Deletes an object; watches see `DELETED`.
    pub fn delete(&self, res: Res, ns: &str, name: &str) {
        self.state.lock().unwrap().remove(res, ns, name, true);
    }

    /// Ends every watch and makes `changes` while they are down, then compacts history:
    /// a client that watches again from where it was gets `410 Gone` and must list again
    /// to see the changes.
    pub fn expire(&self, changes: impl FnOnce(&mut Gap<'_>)) {
        let mut state = self.state.lock().unwrap();
        for coll in state.collections.values_mut() {
            coll.watchers.clear();
        }
        changes(&mut Gap(&mut state));
        state.rv += 1;
        state.compacted = state.rv;
        let compacted = state.compacted;
        for coll in state.collections.values_mut() {
            coll.log.retain(|(rv, _)| *rv > compacted);
        }
    }

    /// Watch requests answered with 410 Gone so far.
    pub fn gone_served(&self) -> usize {
        self.state.lock().unwrap().gone_served
    }

    /// Watch streams open now, over all collections.
    pub fn watchers(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state
            .collections
            .values_mut()
            .map(|c| {
                c.watchers.retain(|(_, tx)| !tx.is_closed());
                c.watchers.len()
            })
            .sum()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

async fn serve(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Body>, Infallible> {
    let Some(res) = Res::ALL.into_iter().find(|r| r.path() == req.uri().path()) else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}),
        ));
    };
    let params: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/").replace("%3D", "=")))
        .collect();
    let selector = params.get("labelSelector").cloned();
    let mut state = state.lock().unwrap();
    let rv = state.rv;
    let compacted = state.compacted;
    let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(rv);
    if watch && from < compacted {
        state.gone_served += 1;
    }
    let coll = state.collections.entry(res).or_default();
    if !watch {
        let items: Vec<Value> = coll
            .objects
            .values()
            .filter(|o| selected(selector.as_deref(), o))
            .cloned()
            .collect();
        let (api_version, kind) = res.list();
        return Ok(full(
            StatusCode::OK,
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        ));
    }
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    if from < compacted {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("too old resource version: {from} ({compacted})"), "reason": "Expired", "code": 410}});
        let _ = tx.send(line(&gone));
        drop(tx);
    } else {
        for (_, event) in coll.log.iter().filter(|(v, _)| *v > from) {
            if selected(selector.as_deref(), &event["object"]) {
                let _ = tx.send(line(event));
            }
        }
        if params
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true")
        {
            let (api_version, kind) = res.list();
            let bookmark = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version,
                "kind": kind.trim_end_matches("List"), "metadata": {"resourceVersion": rv.to_string()}}});
            let _ = tx.send(line(&bookmark));
        }
        coll.watchers.push((selector, tx));
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}
