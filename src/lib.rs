//! Process assembly for the edge mesh: the `cloudcore`, `edgecore` and `edgemesh` binaries,
//! their config files, health endpoints and TLS material, and the demo.

pub mod certs;
pub mod cli;
pub mod cloudcore;
pub mod config_file;
pub mod demo;
pub mod edgecore;
pub mod error;
pub mod health;
pub mod pki;
pub mod standalone;
pub mod tls;

pub use error::{Error, Result};
