//! Queries from nodes that were refused, counted by reason for `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Refused queries by reason: `not_edge_node` (the asking node is not an edge node in the
/// source), `forbidden` (a Pod not bound to the asking node), `bad_query` (a path that
/// names nothing a node may read), `not_served` (a request this cloudcore does not serve).
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

    /// Adds the family to `registry` as `query_refusals_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "query_refusals",
            "Queries from edge nodes refused, by reason",
            self.0.clone(),
        );
    }
}
