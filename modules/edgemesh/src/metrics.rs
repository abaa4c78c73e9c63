//! Prometheus metrics of the proxy and the DNS server, served as text at `/metrics`.
//!
//! Every Service in the catalog gets its handles when the catalog is built, but a handle's
//! series is made only when something is first counted on it: a thousand Services that
//! never see a request cost no histogram buckets, no error series and no `/metrics` lines.
//! After that first use the handle holds its series (a `OnceLock`), so the request path
//! increments a shared atomic without looking anything up. When a Service leaves the
//! catalog its series leave the families.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Error;

/// Declares [`Reason`] and its list from one line per reason, so adding one is adding a
/// line here (and, if an [`Error`] is counted under it, an arm in [`Reason::of`]).
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Why a request or connection was not served.
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
        #[allow(non_camel_case_types)] // the label values, as Prometheus shows them
        pub enum Reason {
            $($(#[doc = $doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in label order.
            pub const ALL: &[Reason] = &[$(Reason::$name,)*];
        }
    };
}

reasons! {
    /// No Service at the address or name asked for.
    unknown_service,
    /// The Service has no ready endpoint.
    no_endpoint,
    /// Every endpoint is ejected by its breaker.
    breaker_open,
    /// Over the Service's QPS limit.
    qps_limited,
    /// Dialling the endpoint failed.
    connect_failed,
    /// Dialling the endpoint timed out.
    timeout,
    /// The endpoint failed mid-request or answered 5xx.
    upstream,
    /// The endpoint is on a node this one cannot reach (no tunnel, or topology).
    remote,
    /// A tunnel stream to the endpoint's node was refused or broke before it connected.
    tunnel,
    /// The client's request was malformed, ambiguous or too large (answered 4xx).
    bad_request,
    /// The client stalled in the middle of a request head (answered 408).
    client_timeout,
    /// The client went away mid-request.
    client_aborted,
    /// Dialling the chosen endpoint failed and the request or connection went to another
    /// (it was served; the failed endpoint's breaker counted it).
    retried,
    /// A datagram that would have started a UDP flow past `udp.maxFlows`.
    flow_limit,
    /// A datagram dropped because its tunnel stream had no window left for it (or it was
    /// still opening with its queue full).
    tunnel_backlog,
}

/// How many reasons there are.
const REASONS: usize = Reason::ALL.len();

impl Reason {
    /// The reason an error is counted under, if it is a serving failure.
    pub fn of(error: &Error) -> Option<Reason> {
        Some(match error {
            Error::UnknownService(_) | Error::UnknownName(_) => Reason::unknown_service,
            Error::NoEndpoint(_) | Error::NotLocal(_) => Reason::no_endpoint,
            Error::BreakerOpen(_) => Reason::breaker_open,
            Error::Limited { .. } => Reason::qps_limited,
            Error::Connect { .. } => Reason::connect_failed,
            Error::ConnectTimeout { .. } => Reason::timeout,
            Error::Upstream { .. } => Reason::upstream,
            Error::Remote { .. } => Reason::remote,
            Error::Tunnel {
                code: Some(proto::stream::ResetCode::Limited),
                ..
            } => Reason::qps_limited,
            Error::Tunnel { .. } => Reason::tunnel,
            Error::BadRequest(_)
            | Error::HeadTooLarge { .. }
            | Error::TooManyHeaders { .. }
            | Error::NotImplemented(_)
            | Error::Expectation(_)
            | Error::Protocol(_) => Reason::bad_request,
            Error::HeadTimeout(_) => Reason::client_timeout,
            Error::ClientAborted(_) => Reason::client_aborted,
            _ => return None,
        })
    }
}

/// Which protocol path served it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Path {
    /// Balanced per HTTP request.
    http,
    /// Relayed as bytes, balanced per connection.
    tcp,
    /// UDP datagrams, balanced per flow (client address and Service port).
    udp,
}

/// Where a chosen endpoint runs, seen from this node.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Via {
    /// On this node: dialled directly.
    local,
    /// On another node: a stream through the cloud link to that node.
    edge,
    /// Outside the edge (no node recorded): a stream to the cloud, which dials it.
    cloud,
}

/// Which way bytes went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// Client to endpoint.
    sent,
    /// Endpoint to client.
    received,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServicePath {
    service: String,
    path: Path,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceReason {
    service: String,
    reason: Reason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceOnly {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceVia {
    service: String,
    via: Via,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceDirection {
    service: String,
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsAnswer {
    answer: DnsOutcome,
}

/// How a DNS query was answered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DnsOutcome {
    /// A Service's address.
    service,
    /// NXDOMAIN inside the cluster domain.
    nxdomain,
    /// Answered from the forwarding cache.
    cached,
    /// Forwarded to an upstream server.
    forwarded,
    /// No upstream answered.
    failed,
    /// Not answered: too many queries in flight.
    dropped,
}

/// The families every Service's series live in (a `Family` is a shared handle).
struct Families {
    requests: Family<ServicePath, Counter>,
    errors: Family<ServiceReason, Counter>,
    latency: Family<ServiceOnly, Histogram, fn() -> Histogram>,
    active: Family<ServiceOnly, Gauge>,
    bytes: Family<ServiceDirection, Counter>,
    upstreams: Family<ServiceVia, Counter>,
    datagrams: Family<ServiceDirection, Counter>,
}

/// Where one Service's series are made, on their first use.
struct Origin {
    service: Arc<str>,
    families: Arc<Families>,
    /// Set when the Service left the catalog. A request still in flight on an old snapshot
    /// may count for the first time after that: it gets a series of its own, counted and
    /// never shown, rather than bringing the removed Service back into `/metrics`. The
    /// flag is read and the series made under this lock, which retiring also takes, so the
    /// two cannot interleave.
    retired: Mutex<bool>,
}

impl Origin {
    /// A new series from `make`, or a detached one from `detached` once retired.
    fn series<M>(&self, make: impl FnOnce(&Families) -> M, detached: impl FnOnce() -> M) -> M {
        let retired = self.retired.lock().expect("metrics origin poisoned");
        if *retired {
            detached()
        } else {
            make(&self.families)
        }
    }

    fn counter(&self, series: CounterSeries) -> Counter {
        let service = self.service.to_string();
        self.series(
            |f| match series {
                CounterSeries::Requests(path) => f
                    .requests
                    .get_or_create_owned(&ServicePath { service, path }),
                CounterSeries::Errors(reason) => f
                    .errors
                    .get_or_create_owned(&ServiceReason { service, reason }),
                CounterSeries::Bytes(direction) => f
                    .bytes
                    .get_or_create_owned(&ServiceDirection { service, direction }),
                CounterSeries::Upstreams(via) => f
                    .upstreams
                    .get_or_create_owned(&ServiceVia { service, via }),
                CounterSeries::Datagrams(direction) => f
                    .datagrams
                    .get_or_create_owned(&ServiceDirection { service, direction }),
            },
            Counter::default,
        )
    }

    /// Takes every series of the Service out of the families, for good.
    fn retire(&self) {
        let mut retired = self.retired.lock().expect("metrics origin poisoned");
        *retired = true;
        let f = &self.families;
        let service = || self.service.to_string();
        for path in [Path::http, Path::tcp, Path::udp] {
            f.requests.remove(&ServicePath {
                service: service(),
                path,
            });
        }
        for &reason in Reason::ALL {
            f.errors.remove(&ServiceReason {
                service: service(),
                reason,
            });
        }
        for direction in [Direction::sent, Direction::received] {
            f.bytes.remove(&ServiceDirection {
                service: service(),
                direction,
            });
            f.datagrams.remove(&ServiceDirection {
                service: service(),
                direction,
            });
        }
        for via in [Via::local, Via::edge, Via::cloud] {
            f.upstreams.remove(&ServiceVia {
                service: service(),
                via,
            });
        }
        let only = ServiceOnly { service: service() };
        f.latency.remove(&only);
        f.active.remove(&only);
    }
}

/// Which counter series a [`LazyCounter`] stands for.
#[derive(Clone, Copy, Debug)]
enum CounterSeries {
    Requests(Path),
    Errors(Reason),
    Bytes(Direction),
    Upstreams(Via),
    Datagrams(Direction),
}

/// A counter whose series is made on its first use.
pub struct LazyCounter {
    series: OnceLock<Counter>,
    origin: Arc<Origin>,
    which: CounterSeries,
}

impl LazyCounter {
    fn new(origin: &Arc<Origin>, which: CounterSeries) -> Self {
        LazyCounter {
            series: OnceLock::new(),
            origin: origin.clone(),
            which,
        }
    }

    fn counter(&self) -> &Counter {
        self.series.get_or_init(|| self.origin.counter(self.which))
    }

    /// Adds one; returns the value before.
    pub fn inc(&self) -> u64 {
        self.counter().inc()
    }

    /// Adds `v`; returns the value before.
    pub fn inc_by(&self, v: u64) -> u64 {
        self.counter().inc_by(v)
    }

    /// The value, without making the series.
    pub fn get(&self) -> u64 {
        self.series.get().map_or(0, Counter::get)
    }
}

impl std::fmt::Debug for LazyCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.which, self.get())
    }
}

/// A latency histogram whose series (and its buckets) is made on its first observation.
pub struct LazyHistogram {
    series: OnceLock<Histogram>,
    origin: Arc<Origin>,
}

impl LazyHistogram {
    /// Counts one observation of `v` seconds.
    pub fn observe(&self, v: f64) {
        self.series
            .get_or_init(|| {
                self.origin.series(
                    |f| {
                        f.latency.get_or_create_owned(&ServiceOnly {
                            service: self.origin.service.to_string(),
                        })
                    },
                    latency_histogram,
                )
            })
            .observe(v);
    }
}

impl std::fmt::Debug for LazyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let made = self.series.get().is_some();
        write!(f, "latency (series made: {made})")
    }
}

/// A gauge whose series is made on its first use.
pub struct LazyGauge {
    series: OnceLock<Gauge>,
    origin: Arc<Origin>,
}

impl LazyGauge {
    fn gauge(&self) -> &Gauge {
        self.series.get_or_init(|| {
            self.origin.series(
                |f| {
                    f.active.get_or_create_owned(&ServiceOnly {
                        service: self.origin.service.to_string(),
                    })
                },
                Gauge::default,
            )
        })
    }

    /// The value, without making the series.
    pub fn get(&self) -> i64 {
        self.series.get().map_or(0, Gauge::get)
    }
}

impl std::fmt::Debug for LazyGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "active: {}", self.get())
    }
}

/// One Service's handles. Each makes its series on first use, then counts lock-free.
pub struct ServiceStats {
    /// HTTP requests.
    pub http_requests: LazyCounter,
    /// TCP connections relayed as bytes.
    pub tcp_connections: LazyCounter,
    /// Seconds from an HTTP request to its response head.
    pub latency: LazyHistogram,
    /// Connections open now.
    pub active: LazyGauge,
    /// Bytes relayed client → endpoint.
    pub bytes_sent: LazyCounter,
    /// Bytes relayed endpoint → client.
    pub bytes_received: LazyCounter,
    /// Endpoints chosen, by where they run: local, edge, cloud.
    pub via: [LazyCounter; 3],
    /// UDP flows started.
    pub udp_flows: LazyCounter,
    /// UDP datagrams client → endpoint.
    pub datagrams_sent: LazyCounter,
    /// UDP datagrams endpoint → client.
    pub datagrams_received: LazyCounter,
    /// By reason; the array itself is made on the first error, as most Services never
    /// see one.
    errors: OnceLock<Box<[OnceLock<Counter>; REASONS]>>,
    origin: Arc<Origin>,
}

impl std::fmt::Debug for ServiceStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceStats")
            .field("service", &self.origin.service)
            .field("http_requests", &self.http_requests)
            .field("tcp_connections", &self.tcp_connections)
            .finish_non_exhaustive()
    }
}

impl ServiceStats {
    fn new(origin: Origin) -> Self {
        let origin = Arc::new(origin);
        let counter = |which| LazyCounter::new(&origin, which);
        ServiceStats {
            http_requests: counter(CounterSeries::Requests(Path::http)),
            tcp_connections: counter(CounterSeries::Requests(Path::tcp)),
            latency: LazyHistogram {
                series: OnceLock::new(),
                origin: origin.clone(),
            },
            active: LazyGauge {
                series: OnceLock::new(),
                origin: origin.clone(),
            },
            bytes_sent: counter(CounterSeries::Bytes(Direction::sent)),
            bytes_received: counter(CounterSeries::Bytes(Direction::received)),
            via: [Via::local, Via::edge, Via::cloud].map(|v| counter(CounterSeries::Upstreams(v))),
            udp_flows: counter(CounterSeries::Requests(Path::udp)),
            datagrams_sent: counter(CounterSeries::Datagrams(Direction::sent)),
            datagrams_received: counter(CounterSeries::Datagrams(Direction::received)),
            errors: OnceLock::new(),
            origin,
        }
    }

    /// Counts a failure.
    pub fn error(&self, reason: Reason) {
        self.errors
            .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())))[reason as usize]
            .get_or_init(|| self.origin.counter(CounterSeries::Errors(reason)))
            .inc();
    }

    /// Counts a failure of this kind, if it is one.
    pub fn failed(&self, error: &Error) {
        if let Some(reason) = Reason::of(error) {
            self.error(reason);
        }
    }
}

/// Counts one open connection until dropped.
pub struct Active(Gauge);

impl Active {
    /// Starts counting on `stats`.
    pub fn on(stats: &ServiceStats) -> Self {
        let gauge = stats.active.gauge();
        gauge.inc();
        Active(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// A Service's handles, and whether they outlive the catalog.
struct Entry {
    stats: Arc<ServiceStats>,
    /// Asked for by name outside the catalog (the label of requests no Service took):
    /// never retired.
    pinned: bool,
}

/// A tunnel stream opened towards this node, by who opened it and what came of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelOpen {
    /// The opening node as the hub stamped it (empty: the cloud).
    source: String,
    /// `accepted`, or the reset code it was refused with.
    outcome: &'static str,
}

/// Every metric of one edgemesh.
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
    tunnel: Family<TunnelOpen, Counter>,
    dns: Family<DnsAnswer, Counter>,
    dns_malformed: Counter,
    services: Mutex<HashMap<Arc<str>, Entry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("edgemesh");
        let families = Families {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            active: Family::default(),
            bytes: Family::default(),
            upstreams: Family::default(),
            datagrams: Family::default(),
        };
        let dns = Family::<DnsAnswer, Counter>::default();
        let dns_malformed = Counter::default();
        let tunnel = Family::<TunnelOpen, Counter>::default();
        registry.register(
            "tunnel_streams_in",
            "Tunnel streams opened towards this node, by source node and outcome",
            tunnel.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests, TCP connections and UDP flows, by Service and path",
            families.requests.clone(),
        );
        registry.register(
            "errors",
            "Requests and connections not served, by Service and reason",
            families.errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Seconds from an HTTP request to its response head",
            families.latency.clone(),
        );
        registry.register(
            "active_connections",
            "Client connections and UDP flows open now, by Service",
            families.active.clone(),
        );
        registry.register(
            "upstreams",
            "Endpoints chosen for requests and connections, by Service and where they run (local; edge: another node, through the cloud link; cloud)",
            families.upstreams.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed as TCP (and upgraded HTTP) and UDP, by Service and direction",
            families.bytes.clone(),
        );
        registry.register(
            "datagrams",
            "UDP datagrams relayed, by Service and direction",
            families.datagrams.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries answered, by outcome",
            dns.clone(),
        );
        registry.register(
            "dns_malformed",
            "DNS packets dropped as malformed",
            dns_malformed.clone(),
        );
        Metrics {
            registry,
            families: Arc::new(families),
            tunnel,
            dns,
            dns_malformed,
            services: Mutex::default(),
        }
    }
}

/// A catalog Service's handles, made on its first request or error: most Services of a
/// large catalog never see one, and a full set of handles costs about 400 bytes each (a
/// tenth of an idle edgecore's heap with 1,000 Services).
pub struct LazyStats {
    service: Arc<str>,
    metrics: Arc<Metrics>,
    stats: OnceLock<Arc<ServiceStats>>,
}

impl LazyStats {
    /// Handles of catalog Service `service` (`<ns>/<name>`) in `metrics`, not made yet.
    pub fn new(metrics: Arc<Metrics>, service: &str) -> Self {
        LazyStats {
            service: service.into(),
            metrics,
            stats: OnceLock::new(),
        }
    }

    /// The handles, shared, for a task that outlives the catalog entry.
    pub fn handle(&self) -> Arc<ServiceStats> {
        self.made().clone()
    }

    fn made(&self) -> &Arc<ServiceStats> {
        self.stats
            .get_or_init(|| self.metrics.catalogued(&self.service))
    }
}

impl std::ops::Deref for LazyStats {
    type Target = ServiceStats;

    fn deref(&self) -> &ServiceStats {
        self.made()
    }
}

impl std::fmt::Debug for LazyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyStats")
            .field("service", &self.service)
            .field("made", &self.stats.get().is_some())
            .finish()
    }
}

impl Metrics {
    /// The handles of `service` (anything: say the label of requests no Service took),
    /// kept for the life of the process.
    pub fn service(&self, service: &str) -> Arc<ServiceStats> {
        self.entry(service, true)
    }

    /// The handles of catalog Service `service` (`<ns>/<name>`), kept until
    /// [`Metrics::retain`] leaves it out.
    pub fn catalogued(&self, service: &str) -> Arc<ServiceStats> {
        self.entry(service, false)
    }

    fn entry(&self, service: &str, pin: bool) -> Arc<ServiceStats> {
        let mut services = self.services.lock().expect("metrics poisoned");
        if let Some(entry) = services.get_mut(service) {
            entry.pinned |= pin;
            return entry.stats.clone();
        }
        // One copy of the name, shared by the map and the handles.
        let name: Arc<str> = service.into();
        let stats = Arc::new(ServiceStats::new(Origin {
            service: name.clone(),
            families: self.families.clone(),
            retired: Mutex::new(false),
        }));
        services.insert(
            name,
            Entry {
                stats: stats.clone(),
                pinned: pin,
            },
        );
        stats
    }

    /// Forgets catalog Services `keep` says no to, and takes their series out of
    /// `/metrics`.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut services = self.services.lock().expect("metrics poisoned");
        services.retain(|name, entry| {
            let kept = entry.pinned || keep(name);
            if !kept {
                entry.stats.origin.retire();
            }
            kept
        });
    }

    /// Counts a stream opened towards this node by `source`, with its `outcome`.
    pub fn tunnel_stream(&self, source: &str, outcome: &'static str) {
        self.tunnel
            .get_or_create(&TunnelOpen {
                source: source.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts a DNS answer.
    pub fn dns(&self, answer: DnsOutcome) {
        self.dns.get_or_create(&DnsAnswer { answer }).inc();
    }

    /// Counts a malformed DNS packet.
    pub fn dns_malformed(&self) {
        self.dns_malformed.inc();
    }

    /// Everything, in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.encode_families(&mut out);
        if let Err(e) = prometheus_client::encoding::text::encode_eof(&mut out) {
            log::error!("encoding metrics: {e}");
        }
        out
    }

    /// Every family, without the closing `# EOF`, for a process that serves other
    /// modules' metrics beside.
    pub fn encode_families(&self, out: &mut String) {
        if let Err(e) = prometheus_client::encoding::text::encode_registry(out, &self.registry) {
            log::error!("encoding metrics: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines (not comments) that name `service`.
    fn series_of(text: &str, service: &str) -> Vec<String> {
        let label = format!("service=\"{service}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn counts_show_per_service_in_text_format() {
        let metrics = Metrics::default();
        let web = metrics.catalogued("default/web");
        web.http_requests.inc();
        web.error(Reason::qps_limited);
        web.latency.observe(0.002);
        let _open = Active::on(&web);
        assert!(Arc::ptr_eq(&web, &metrics.catalogued("default/web")));
        metrics.dns_malformed();
        let text = metrics.encode();
        for line in [
            r#"edgemesh_requests_total{service="default/web",path="http"} 1"#,
            r#"edgemesh_errors_total{service="default/web",reason="qps_limited"} 1"#,
            r#"edgemesh_request_duration_seconds_count{service="default/web"} 1"#,
            r#"edgemesh_active_connections{service="default/web"} 1"#,
            "edgemesh_dns_malformed_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        // Only what was counted: no other reason, no TCP path, no bytes.
        assert!(!text.contains(r#"reason="breaker_open""#), "{text}");
        assert!(!text.contains(r#"path="tcp""#), "{text}");
        assert!(!text.contains("edgemesh_bytes_total{"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_service_without_traffic_has_no_series() {
        let metrics = Metrics::default();
        let quiet = metrics.catalogued("default/quiet");
        let text = metrics.encode();
        assert_eq!(series_of(&text, "default/quiet"), Vec::<String>::new());
        // Reading a value does not make the series either.
        assert_eq!(quiet.http_requests.get(), 0);
        assert_eq!(quiet.active.get(), 0);
        assert!(series_of(&metrics.encode(), "default/quiet").is_empty());
    }

    #[test]
    fn each_series_appears_on_its_first_use() {
        let metrics = Metrics::default();
        let web = metrics.catalogued("default/web");
        web.tcp_connections.inc();
        web.bytes_sent.inc_by(5);
        web.bytes_received.inc_by(7);
        web.failed(&Error::NoEndpoint("default/web".into()));
        drop(Active::on(&web));
        let mut lines = series_of(&metrics.encode(), "default/web");
        lines.sort();
        assert_eq!(
            lines,
            [
                r#"edgemesh_active_connections{service="default/web"} 0"#,
                r#"edgemesh_bytes_total{service="default/web",direction="received"} 7"#,
                r#"edgemesh_bytes_total{service="default/web",direction="sent"} 5"#,
                r#"edgemesh_errors_total{service="default/web",reason="no_endpoint"} 1"#,
                r#"edgemesh_requests_total{service="default/web",path="tcp"} 1"#,
            ]
        );
    }

    #[test]
    fn lazy_handles_make_their_entry_on_first_use_and_share_it_across_catalogs() {
        let metrics = Arc::new(Metrics::default());
        let entries = |m: &Metrics| m.services.lock().unwrap().len();
        let first = LazyStats::new(metrics.clone(), "default/web");
        let quiet = LazyStats::new(metrics.clone(), "default/quiet");
        assert_eq!(entries(&metrics), 0, "nothing made before use");
        first.http_requests.inc();
        // The next catalog's handle for the same Service counts on the same series.
        let next = LazyStats::new(metrics.clone(), "default/web");
        next.http_requests.inc();
        assert!(Arc::ptr_eq(&first.handle(), &next.handle()));
        assert_eq!(next.http_requests.get(), 2);
        assert_eq!(
            entries(&metrics),
            1,
            "the quiet Service has none: {quiet:?}"
        );
    }

    #[test]
    fn retired_services_leave_and_do_not_come_back() {
        let metrics = Metrics::default();
        let old = metrics.catalogued("default/old");
        let unknown = metrics.service("(unknown)");
        old.http_requests.inc();
        old.latency.observe(0.1);
        unknown.error(Reason::unknown_service);
        metrics.retain(|_| false);
        let text = metrics.encode();
        assert!(series_of(&text, "default/old").is_empty(), "{text}");
        assert_eq!(series_of(&text, "(unknown)").len(), 1, "pinned: {text}");
        // A request still in flight on an old snapshot counts on, out of sight.
        old.http_requests.inc();
        old.error(Reason::upstream);
        old.bytes_sent.inc_by(3);
        assert_eq!(old.http_requests.get(), 2);
        assert!(series_of(&metrics.encode(), "default/old").is_empty());
        // Back in the catalog, it starts afresh.
        let again = metrics.catalogued("default/old");
        assert!(!Arc::ptr_eq(&old, &again));
        again.http_requests.inc();
        assert_eq!(
            series_of(&metrics.encode(), "default/old"),
            [r#"edgemesh_requests_total{service="default/old",path="http"} 1"#]
        );
    }
}
