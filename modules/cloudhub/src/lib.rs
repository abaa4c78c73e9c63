//! cloudhub: the cloud end of the cloud link.
//!
//! Edge nodes dial in over WebSocket (TLS with client certificates when configured) and name
//! themselves with the `node_id` and `project_id` headers. Every node has one outbound queue
//! that coalesces by object (a newer version replaces a queued older one), so its memory
//! grows with objects, not with changes. Each object is sent, its ACK awaited (the edge ACKs
//! after its SQLite commit), resent with backoff a few times, and then kept for the node's
//! next connection. Every node is served by its own task, so a slow or absent node never
//! delays another.
//!
//! Tunnel streams between nodes and the cloud are relayed by [`router`]: stamped with the
//! sending node, routed by destination, held to their credit, reset when a link goes.
//!
//! On the bus the module is `cloudhub`: it takes messages whose resource is
//! `node/<nodeID>/...` and delivers them to that node with the prefix stripped; what a node
//! sends up (other than keepalives and ACKs) goes to `edgecontroller` with the prefix added.

pub mod config;
pub mod error;
pub mod hub;
pub mod module;
pub mod object_sync;
pub mod queue;
pub mod refusal;
pub mod router;
pub mod server;
pub mod session;
pub mod tls;

pub use config::{CloudHubConfig, TlsFiles};
pub use error::{Error, Result};
pub use hub::{Hub, HubStats};
pub use module::{CloudHub, GROUP, MODULE};
pub use object_sync::ObjectSync;
pub use refusal::{Refusals, Refused};
