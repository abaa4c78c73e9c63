//! Why a connection was turned away, and the count of each reason for `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A connection turned away before it became a node's session.
#[derive(Debug)]
pub struct Refused {
    /// The metric label: `handshake`, `certificate`, `identity`, `revoked` or `busy`
    /// (and, for a live session cut, `revoked` or `expired`).
    pub reason: &'static str,
    /// What the log says.
    pub detail: String,
}

impl Refused {
    /// A refusal for `reason` (a label) with `detail`.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Refused {
            reason,
            detail: detail.into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Refusals counted by reason.
#[derive(Clone, Default)]
pub struct Refusals(Family<ReasonLabel, Counter>);

impl Refusals {
    /// Counts one.
    pub fn count(&self, reason: &'static str) {
        self.0.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Refusals of `reason` so far.
    pub fn get(&self, reason: &'static str) -> u64 {
        self.0.get_or_create(&ReasonLabel { reason }).get()
    }

    /// Adds the family to `registry` as `refusals_total`.
    pub fn register(&self, registry: &mut Registry) {
        self.register_as(
            registry,
            "refusals",
            "Connections turned away, or node sessions cut (a certificate revoked or expired \
             while connected), by reason",
        );
    }

    /// Adds the family to `registry` as `<name>_total` with `help`.
    pub fn register_as(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.0.clone());
    }
}
