//! edgemesh: the proxy on every edge node (module `edgemesh`, group `mesh`).
//!
//! - **Metadata** comes over metamanager's socket, never by a function call: a watch of
//!   Services and Endpoints feeds an in-memory [`Catalog`] that is rebuilt whole and
//!   swapped in on each change, so the connection path reads it without locks. With
//!   `source: kubernetes` the same catalog is fed by a list-watch of Services and
//!   EndpointSlices on a Kubernetes-style API instead ([`kube_feed`]).
//! - **Interception**: iptables nat rules in our own chain (`EDGE-MESH`) send every
//!   ClusterIP:port to one listener, which recovers the original destination with
//!   `SO_ORIGINAL_DST`. No bridge (docker0 or other) is assumed.
//! - **Balancing** per Service from the `edgemesh.io/lb-strategy` annotation: RoundRobin,
//!   Random, LeastRequest (power of two choices), ConsistentHash (client IP, or a header
//!   named by `edgemesh.io/hash-key`).
//! - **Forwarding**: endpoints on this node (or with no node recorded) are dialled
//!   directly; endpoints on other nodes and in the cloud are reached through tunnel
//!   streams over the cloud link ([`tunnel`]), following the Service's topology fields.
//!
//! - **Policies**: server-side QPS limits per Service (`edgemesh.io/qps`, GCRA) and
//!   circuit breaking per endpoint (`edgemesh.io/circuit-breaker`), both kept across
//!   catalog rebuilds.
//! - **Front doors** besides iptables: an explicit proxy (HTTP CONNECT, absolute-URI HTTP,
//!   SOCKS5) and a Service DNS server; Prometheus metrics of all of it.
//! - **Sniffing**: one bounded read decides HTTP/1.x, HTTP/2 (h2c, gRPC), TLS (the SNI is
//!   logged) or opaque; the bytes are replayed. HTTP is served by hyper and balanced per
//!   request over pooled upstream connections, upgrades passed through; everything else is
//!   relayed as bytes with half-close passed on.

pub mod breaker;
pub mod bus_feed;
pub mod catalog;
pub mod config;
pub mod conntrack;
pub mod dns;
pub mod drain;
pub mod error;
pub mod explicit;
pub mod follow;
pub mod h1;
pub mod http;
pub mod idle;
pub mod iptables;
pub mod kube_feed;
pub mod lb;
pub mod metrics;
pub mod module;
pub mod names;
pub mod objects;
pub mod prefixed;
pub mod proxy;
pub mod qps;
mod rebuild;
pub mod refusal;
pub mod relay;
pub mod shared;
pub mod sniff;
pub mod spread;
pub mod tunnel;
pub mod udp;
pub mod upstream;

pub use catalog::Catalog;
pub use config::EdgeMeshConfig;
pub use error::{Error, Result};
pub use lb::Strategy;
pub use module::{Addresses, EdgeMesh, GROUP, Liveness, MODULE};
