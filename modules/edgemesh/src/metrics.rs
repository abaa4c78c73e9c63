//! Prometheus metrics of the proxy and the DNS server, served as text at `/metrics`.
//!
//! Every Service gets its handles (counters are shared atomics) once, when the catalog is
//! built, so the request path increments without looking anything up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Error;

/// Why a request or connection was not served.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values, as Prometheus shows them
pub enum Reason {
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
    /// The endpoint is on another node and the tunnel is not built.
    remote,
    /// The client's request was malformed, ambiguous or too large (answered 4xx).
    bad_request,
    /// The client stalled in the middle of a request head (answered 408).
    client_timeout,
    /// The client went away mid-request.
    client_aborted,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 11] = [
        Reason::unknown_service,
        Reason::no_endpoint,
        Reason::breaker_open,
        Reason::qps_limited,
        Reason::connect_failed,
        Reason::timeout,
        Reason::upstream,
        Reason::remote,
        Reason::bad_request,
        Reason::client_timeout,
        Reason::client_aborted,
    ];

    /// The reason an error is counted under, if it is a serving failure.
    pub fn of(error: &Error) -> Option<Reason> {
        Some(match error {
            Error::UnknownService(_) | Error::UnknownName(_) => Reason::unknown_service,
            Error::NoEndpoint(_) => Reason::no_endpoint,
            Error::BreakerOpen(_) => Reason::breaker_open,
            Error::Limited { .. } => Reason::qps_limited,
            Error::Connect { .. } => Reason::connect_failed,
            Error::ConnectTimeout { .. } => Reason::timeout,
            Error::Upstream { .. } => Reason::upstream,
            Error::Remote { .. } => Reason::remote,
            Error::BadRequest(_)
            | Error::HeadTooLarge { .. }
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

/// One Service's handles.
#[derive(Debug)]
pub struct ServiceStats {
    /// HTTP requests.
    pub http_requests: Counter,
    /// TCP connections relayed as bytes.
    pub tcp_connections: Counter,
    /// Seconds from an HTTP request to its response head.
    pub latency: Histogram,
    /// Connections open now.
    pub active: Gauge,
    /// Bytes relayed client → endpoint.
    pub bytes_sent: Counter,
    /// Bytes relayed endpoint → client.
    pub bytes_received: Counter,
    errors: [Counter; Reason::ALL.len()],
}

impl ServiceStats {
    /// Counts a failure.
    pub fn error(&self, reason: Reason) {
        self.errors[reason as usize].inc();
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
        stats.active.inc();
        Active(stats.active.clone())
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

/// Every metric of one edgemesh.
pub struct Metrics {
    registry: Registry,
    requests: Family<ServicePath, Counter>,
    errors: Family<ServiceReason, Counter>,
    latency: Family<ServiceOnly, Histogram, fn() -> Histogram>,
    active: Family<ServiceOnly, Gauge>,
    bytes: Family<ServiceDirection, Counter>,
    dns: Family<DnsAnswer, Counter>,
    dns_malformed: Counter,
    services: Mutex<HashMap<String, Arc<ServiceStats>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("edgemesh");
        let requests = Family::<ServicePath, Counter>::default();
        let errors = Family::<ServiceReason, Counter>::default();
        let latency = Family::<ServiceOnly, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let active = Family::<ServiceOnly, Gauge>::default();
        let bytes = Family::<ServiceDirection, Counter>::default();
        let dns = Family::<DnsAnswer, Counter>::default();
        let dns_malformed = Counter::default();
        registry.register(
            "requests",
            "HTTP requests and TCP connections, by Service and path",
            requests.clone(),
        );
        registry.register(
            "errors",
            "Requests and connections not served, by Service and reason",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Seconds from an HTTP request to its response head",
            latency.clone(),
        );
        registry.register(
            "active_connections",
            "Client connections open now, by Service",
            active.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed as TCP (and upgraded HTTP), by Service and direction",
            bytes.clone(),
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
            requests,
            errors,
            latency,
            active,
            bytes,
            dns,
            dns_malformed,
            services: Mutex::default(),
        }
    }
}

impl Metrics {
    /// The handles of `service` (`<ns>/<name>`, or anything for requests no Service took).
    pub fn service(&self, service: &str) -> Arc<ServiceStats> {
        let mut services = self.services.lock().expect("metrics poisoned");
        if let Some(stats) = services.get(service) {
            return stats.clone();
        }
        let name = service.to_owned();
        let path = |path| ServicePath {
            service: name.clone(),
            path,
        };
        let direction = |direction| ServiceDirection {
            service: name.clone(),
            direction,
        };
        let only = ServiceOnly {
            service: name.clone(),
        };
        let stats = Arc::new(ServiceStats {
            http_requests: self.requests.get_or_create_owned(&path(Path::http)),
            tcp_connections: self.requests.get_or_create_owned(&path(Path::tcp)),
            latency: self.latency.get_or_create_owned(&only),
            active: self.active.get_or_create_owned(&only),
            bytes_sent: self.bytes.get_or_create_owned(&direction(Direction::sent)),
            bytes_received: self
                .bytes
                .get_or_create_owned(&direction(Direction::received)),
            errors: Reason::ALL.map(|reason| {
                self.errors.get_or_create_owned(&ServiceReason {
                    service: name.clone(),
                    reason,
                })
            }),
        });
        services.insert(name, stats.clone());
        stats
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
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            log::error!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_per_service_in_text_format() {
        let metrics = Metrics::default();
        let web = metrics.service("default/web");
        web.http_requests.inc();
        web.error(Reason::qps_limited);
        web.latency.observe(0.002);
        let _open = Active::on(&web);
        assert!(Arc::ptr_eq(&web, &metrics.service("default/web")));
        metrics.dns_malformed();
        let text = metrics.encode();
        for line in [
            r#"edgemesh_requests_total{service="default/web",path="http"} 1"#,
            r#"edgemesh_errors_total{service="default/web",reason="qps_limited"} 1"#,
            r#"edgemesh_errors_total{service="default/web",reason="breaker_open"} 0"#,
            r#"edgemesh_request_duration_seconds_count{service="default/web"} 1"#,
            r#"edgemesh_active_connections{service="default/web"} 1"#,
            "edgemesh_dns_malformed_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
