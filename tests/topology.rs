//! The three hosts the tunnel tests and benchmark run on (cloud, edge-a, edge-b in network
//! namespaces, tests/common/topology.rs): each edge reaches the cloud and nothing else,
//! proven with real TCP connects; with the cloud forwarding (the benchmark's "direct"
//! baseline) the edges reach each other. Needs root, as CI has.

mod common;

use common::netns::is_root;
use common::topology::Topology;

#[test]
fn edges_reach_each_other_only_when_the_cloud_forwards() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let tunnel = Topology::create();
    tunnel.prove_isolated();
    let direct = Topology::with_direct_routing();
    direct.prove_routed();
}
