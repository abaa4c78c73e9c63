//! `/healthz` and `/readyz` over HTTP, and the bus module that tracks the cloud link and
//! the metadata store's state for them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use beehive::{Context, Module, ModuleError, async_trait};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use proto::{connection, operation, store_state};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Warnings of failed accepts (out of descriptors, usually): at most one per 10 s.
static ACCEPT_FAILED: beehive::Throttle =
    beehive::Throttle::new(std::time::Duration::from_secs(10));

/// Settings of the health endpoint (`health:` in a process's config). Each process has its
/// own default address; a `health:` section that is present must name one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthConfig {
    /// Whether to serve `/healthz` and `/readyz`.
    pub enable: bool,
    /// Address to serve them on.
    pub address: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig::on("")
    }
}

impl HealthConfig {
    /// Enabled on `address`.
    pub fn on(address: &str) -> Self {
        HealthConfig {
            enable: true,
            address: address.into(),
        }
    }

    /// Names a bad address.
    pub fn validate(&self) -> Result<(), String> {
        if self.enable && self.address.parse::<std::net::SocketAddr>().is_err() {
            return Err("invalid config field address: must be IP:port".into());
        }
        Ok(())
    }
}

/// Binds the health listener when `config` enables it.
pub async fn listen(config: &HealthConfig) -> crate::Result<Option<TcpListener>> {
    if !config.enable {
        return Ok(None);
    }
    TcpListener::bind(&config.address)
        .await
        .map(Some)
        .map_err(|e| crate::Error::Io(format!("health: cannot listen on {}: {e}", config.address)))
}

/// One line of `/readyz`.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Whether readiness depends on it (otherwise it is shown only).
    pub required: bool,
    /// Whether liveness depends on it too: it is shown in `/healthz`, which fails with it.
    pub live: bool,
    /// What was seen.
    pub detail: String,
}

/// Produces the current checks.
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Check>> + Send>> + Send + Sync>;

/// Produces `/metrics` in Prometheus text format.
pub type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `/healthz` (200 while the process answers and its liveness checks pass), `/readyz` (200 when every
/// required check passes, else 503, one line per check) and, when given, `/metrics`,
/// until `stop`.
pub async fn serve(
    listener: TcpListener,
    probe: Probe,
    metrics: Option<MetricsText>,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        let what = if metrics.is_some() {
            "/healthz, /readyz and /metrics"
        } else {
            "/healthz and /readyz"
        };
        log::info!("{what} on http://{addr}");
    }
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, mostly: pause rather than spin on it.
                    ACCEPT_FAILED.warn(format_args!("health accept failed: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let probe = probe.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, probe.clone(), metrics.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                log::debug!("health connection: {e}");
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    probe: Probe,
    metrics: Option<MetricsText>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut content_type = "text/plain; charset=utf-8";
    let (status, body) = match req.uri().path() {
        "/metrics" if metrics.is_some() => {
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            (
                StatusCode::OK,
                metrics.as_ref().map(|m| m()).unwrap_or_default(),
            )
        }
        "/healthz" | "/livez" => {
            let checks: Vec<Check> = probe().await.into_iter().filter(|c| c.live).collect();
            let alive = checks.iter().all(|c| c.ok);
            let mut body = lines(&checks);
            body.push_str(if alive { "ok\n" } else { "failing\n" });
            let status = if alive {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, body)
        }
        "/readyz" => {
            let checks = probe().await;
            let ready = checks.iter().all(|c| c.ok || !c.required);
            let mut body = lines(&checks);
            body.push_str(if ready { "ready\n" } else { "not ready\n" });
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, body)
        }
        _ => (
            StatusCode::NOT_FOUND,
            if metrics.is_some() {
                "try /healthz, /readyz or /metrics\n"
            } else {
                "try /healthz or /readyz\n"
            }
            .to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    Ok(resp)
}

/// One line per check: `[+] name: detail` or `[-] ...`.
fn lines(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| {
            format!(
                "[{}] {}: {}\n",
                if c.ok { "+" } else { "-" },
                c.name,
                c.detail
            )
        })
        .collect()
}

/// What the health module has heard on the bus.
#[derive(Clone, Debug, Default)]
pub struct Heard {
    /// Whether edgehub's cloud link is up.
    pub link_up: Arc<AtomicBool>,
    /// Why metamanager's store cannot commit, while it cannot (`None`: it commits).
    pub store_failure: Arc<Mutex<Option<String>>>,
}

impl Heard {
    /// The store's `/readyz` line: required, since an edge whose store cannot commit takes
    /// nothing new from the cloud (it serves what it holds, but falls behind).
    pub fn store_check(&self) -> Check {
        let failure = self
            .store_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Check {
            name: "metadata store",
            ok: failure.is_none(),
            required: true,
            live: false,
            detail: failure.unwrap_or_else(|| "writable".into()),
        }
    }
}

/// A bus module (group `health`) that hears edgehub's link events and metamanager's store
/// state, so `/readyz` can show them.
pub struct LinkWatch {
    heard: Heard,
}

impl LinkWatch {
    /// The module and what it keeps.
    pub fn new() -> (Self, Heard) {
        let heard = Heard::default();
        (
            LinkWatch {
                heard: heard.clone(),
            },
            heard,
        )
    }
}

#[async_trait]
impl Module for LinkWatch {
    fn name(&self) -> &str {
        "healthz"
    }
    fn group(&self) -> &str {
        store_state::HEALTH_GROUP
    }
    async fn start(self: Box<Self>, ctx: Context) -> Result<(), ModuleError> {
        while let Ok(msg) = ctx.receive("healthz").await {
            if msg.operation() == operation::CONNECT && msg.resource() == connection::RESOURCE {
                let up = msg.content.as_str() == Some(connection::CONNECTED);
                self.heard.link_up.store(up, Ordering::SeqCst);
            } else if msg.operation() == operation::UPDATE
                && msg.resource() == store_state::RESOURCE
            {
                let failure = match msg.content.as_str() {
                    Some(store_state::WRITABLE) => None,
                    Some(reason) => Some(reason.to_owned()),
                    None => Some("metamanager sent a store state that is not text".into()),
                };
                *self
                    .heard
                    .store_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = failure;
            }
        }
        Ok(())
    }
}

/// `/metrics` of a process: the mesh's families (when it runs one), then the other
/// modules' in `registry`.
pub fn metrics_text(
    mesh: Option<Arc<edgemesh_proxy::metrics::Metrics>>,
    registry: Arc<prometheus_client::registry::Registry>,
) -> MetricsText {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    Arc::new(move || {
        let mut out = String::new();
        if let Some(mesh) = &mesh {
            mesh.encode_families(&mut out);
        }
        let encoded = encode_registry(&mut out, &registry).and_then(|()| encode_eof(&mut out));
        if let Err(e) = encoded {
            log::error!("encoding metrics: {e}");
        }
        out
    })
}
