//! What every connection of one worker needs: the catalog, the upstream seam, the limits
//! and timeouts, passed down from the front doors to the forwarders.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::catalog::Catalog;
use crate::metrics::ServiceStats;
use crate::names::Names;
use crate::upstream::Upstream;

/// What every connection needs.
pub struct Shared {
    /// The current snapshot.
    pub catalog: Arc<ArcSwap<Catalog>>,
    /// Choosing, admitting and dialling endpoints, and the kept connections (HTTP/1 and
    /// HTTP/2).
    pub upstream: Upstream,
    /// UDP flows for the explicit proxy's SOCKS5 UDP ASSOCIATE; `None` with `udp` off.
    pub udp: Option<Arc<crate::udp::Ports>>,
    /// Limits on what clients send.
    pub limits: Limits,
    /// Limit on a silent connection.
    pub idle_timeout: Duration,
    /// How long to wait for a client's first bytes before treating it as opaque.
    pub sniff_timeout: Duration,
    /// Metrics of requests that reached no Service.
    pub unknown: Arc<ServiceStats>,
    /// How Service names are completed (explicit proxy).
    pub names: Names,
    /// Shutdown's drain: kept connections take no new requests once it begins.
    pub drain: crate::drain::Drain,
}

/// Limits on a client's HTTP requests.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest request head accepted (431 above it).
    pub max_head: usize,
    /// How long a client may take to finish a request head it started (408 after).
    pub head_timeout: Duration,
}

/// The ConsistentHash key of a connection: its client's IP (not the port), as bytes.
pub fn ip_key(peer: SocketAddr) -> Vec<u8> {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}
