//! metamanager: the edge's metadata store (KubeEdge module `metaManager`, group `meta`).
//!
//! - [`store`]: SQLite (WAL, one table `meta(key, type, value)`) owned by one worker thread,
//!   batched transactions, watchers fed in commit order.
//! - [`module`]: the bus handler: insert/update/delete/query from the cloud and local modules,
//!   ACK after commit, remote query when a row is missing and the cloud is reachable.
//! - [`server`]: the local Unix socket (query, watch, ping) edgemesh reads from.

pub mod applications;
pub mod config;
pub mod error;
pub mod module;
pub mod object;
pub mod server;
pub mod store;

pub use config::MetaManagerConfig;
pub use error::{Error, Result};
pub use module::MetaManager;
pub use store::{Event, Filter, Outcome, Row, Store, StoreState};
