//! edgehub: the edge end of the cloud link.
//!
//! Module `websocket` in group `hub` (KubeEdge's names). It dials cloudhub with the
//! `node_id` and `project_id` headers (over TLS with a client certificate when configured),
//! sends a keepalive every heartbeat, and reconnects with capped exponential backoff and
//! jitter. It tells every bus group when the link comes up or goes down.
//!
//! Downstream, messages are routed by their wire group (`resource` → group `meta`, `mesh`
//! → group `mesh`), and replies to sync requests sent up are handed to the waiting
//! requester by parent id. Upstream, whatever the bus sends to the module goes to the
//! cloud; a sync request while the link is down gets an `error` reply at once
//! ([`proto::connection::LINK_DOWN`]) instead of a wait.
//!
//! On the wire, stream payloads (group `mesh` with byte content) travel as binary frames
//! ([`proto::frame`]); everything else as JSON text.

pub mod config;
pub mod error;
pub mod link;
pub mod module;

pub use config::{EdgeHubConfig, TlsFiles};
pub use error::{Error, Result};
pub use module::{EdgeHub, GROUP, MODULE, TlsSource};
