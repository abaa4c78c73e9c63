//! The crate's error type.

use proto::stream::ResetCode;

/// Everything the proxy can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid config field {field}: {reason}")]
    InvalidConfig {
        /// The field, as spelled in the YAML.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No Service has this ClusterIP and port.
    #[error("no service at {0}")]
    UnknownService(std::net::SocketAddr),
    /// No Service has this name and port (explicit proxy, DNS).
    #[error("no service {0}")]
    UnknownName(String),
    /// The Service has no ready endpoint for the port.
    #[error("service {0} has no ready endpoint")]
    NoEndpoint(String),
    /// Every endpoint of the Service is ejected by its circuit breaker.
    #[error("service {0}: every endpoint is ejected by the circuit breaker")]
    BreakerOpen(String),
    /// The Service's QPS limit on this node is used up.
    #[error("service {service}: over its limit of {qps} requests per second")]
    Limited {
        /// `<ns>/<name>`.
        service: String,
        /// The limit.
        qps: u32,
        /// How long until a request would be accepted.
        retry_after: std::time::Duration,
    },
    /// The Service's endpoints are all on other nodes or in the cloud, and this node has
    /// no tunnel (or the Service allows only this node's endpoints).
    #[error(
        "service {service}: endpoint {endpoint} is on node {node}, which this node cannot reach"
    )]
    Remote {
        /// `<ns>/<name>`.
        service: String,
        /// `ip:port`.
        endpoint: std::net::SocketAddr,
        /// Where it runs.
        node: String,
    },
    /// The Service's `internalTrafficPolicy` is `Local` and no endpoint runs on this node.
    #[error("service {0}: internalTrafficPolicy is Local and no ready endpoint runs on this node")]
    NotLocal(String),
    /// A tunnel stream to the endpoint was refused or broke before it was connected.
    #[error("service {service}: {endpoint} via {via}: {reason}")]
    Tunnel {
        /// `<ns>/<name>`.
        service: String,
        /// `ip:port`.
        endpoint: std::net::SocketAddr,
        /// The node the stream went to (or "the cloud").
        via: String,
        /// The far side's reset code, when it refused; `None` when the link was down or
        /// nothing came back in time.
        code: Option<proto::stream::ResetCode>,
        /// Why.
        reason: String,
    },
    /// Dialling the endpoint failed or timed out.
    #[error("service {service}: connecting to {endpoint}: {reason}")]
    Connect {
        /// `<ns>/<name>`.
        service: String,
        /// `ip:port`.
        endpoint: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// Dialling the endpoint took longer than the connect timeout.
    #[error("service {service}: connecting to {endpoint}: timed out after {after:?}")]
    ConnectTimeout {
        /// `<ns>/<name>`.
        service: String,
        /// `ip:port`.
        endpoint: std::net::SocketAddr,
        /// The timeout.
        after: std::time::Duration,
    },
    /// The endpoint failed after the connection was made.
    #[error("service {service}: {endpoint} did not answer: {reason}")]
    Upstream {
        /// `<ns>/<name>`.
        service: String,
        /// `ip:port`.
        endpoint: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// A client of the explicit proxy or the DNS server broke its protocol.
    #[error("{0}")]
    Protocol(String),
    /// The client's HTTP request is malformed or ambiguous (framing, header syntax).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client's request head is larger than the proxy accepts.
    #[error("request head larger than {limit} bytes")]
    HeadTooLarge {
        /// The limit (`maxHeadBytes`).
        limit: usize,
    },
    /// The client's request head has more header fields than the proxy parses.
    #[error("request head has more than {limit} header fields")]
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// The client started a request head and did not finish it in time.
    #[error("request head not completed within {0:?}")]
    HeadTimeout(std::time::Duration),
    /// The request expects something other than `100-continue`.
    #[error("unsupported expectation {0:?}")]
    Expectation(String),
    /// The request uses a transfer coding the proxy does not forward.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// The client went away, or its request body broke off, before the request was sent.
    #[error("client aborted the request: {0}")]
    ClientAborted(String),
    /// An iptables command failed.
    #[error("iptables: {0}")]
    Iptables(String),
    /// A socket failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Whose fault a failure is: only upstream faults count against an endpoint's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client broke the protocol, went away or stalled: answered 4xx, never counted
    /// against an endpoint.
    Client,
    /// The endpoint failed: refused, reset, timed out, answered malformed or 5xx.
    Upstream,
    /// The proxy declined by policy or lack of a destination (no Service, no endpoint,
    /// QPS, breaker).
    Policy,
    /// A local fault of the proxy itself (configuration, iptables, sockets).
    Local,
}

impl Error {
    /// Whose fault it is.
    pub fn side(&self) -> Side {
        match self {
            Error::Protocol(_)
            | Error::BadRequest(_)
            | Error::HeadTooLarge { .. }
            | Error::TooManyHeaders { .. }
            | Error::HeadTimeout(_)
            | Error::NotImplemented(_)
            | Error::Expectation(_)
            | Error::ClientAborted(_) => Side::Client,
            Error::Connect { .. } | Error::ConnectTimeout { .. } | Error::Upstream { .. } => {
                Side::Upstream
            }
            // The far node's policy refused (its QPS limit, or a catalog that does not
            // have the endpoint yet): not the endpoint's fault.
            Error::Tunnel {
                code:
                    Some(
                        ResetCode::Limited
                        | ResetCode::Forbidden
                        | ResetCode::UnknownService
                        | ResetCode::TooManyStreams,
                    ),
                ..
            } => Side::Policy,
            Error::Tunnel { .. } => Side::Upstream,
            Error::UnknownService(_)
            | Error::UnknownName(_)
            | Error::NoEndpoint(_)
            | Error::BreakerOpen(_)
            | Error::Limited { .. }
            | Error::Remote { .. }
            | Error::NotLocal(_) => Side::Policy,
            Error::InvalidConfig { .. } | Error::Iptables(_) | Error::Io(_) => Side::Local,
        }
    }

    /// Logs a failure to serve `peer` once: a warning, except for QPS limiting, which is
    /// the policy working (and at ten times the limit a line per request would drown the
    /// log): it is counted in metrics and logged at debug.
    pub fn log(&self, peer: std::net::SocketAddr) {
        match self {
            // A client's own fault is its business; at warn, one bad client could flood
            // the log.
            Error::Limited { .. } => log::debug!("{peer}: {self}"),
            _ if self.side() == Side::Client => log::debug!("{peer}: {self}"),
            _ => log::warn!("{peer}: {self}"),
        }
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
