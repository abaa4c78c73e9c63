//! Load balancing: the strategies, and the in-flight counts LeastRequest reads.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// How a Service's endpoints are chosen (annotation `edgemesh.io/lb-strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The less loaded of two endpoints picked at random (power of two choices).
    LeastRequest,
    /// The same key always to the same endpoint while the set is unchanged, and mostly
    /// still when it changes (rendezvous hashing). The key is a header named by
    /// `edgemesh.io/hash-key`, or the client's IP (not its port).
    ConsistentHash,
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "RoundRobin" => Ok(Strategy::RoundRobin),
            "Random" => Ok(Strategy::Random),
            "LeastRequest" => Ok(Strategy::LeastRequest),
            "ConsistentHash" => Ok(Strategy::ConsistentHash),
            other => Err(format!(
                "unknown strategy {other:?} (RoundRobin, Random, LeastRequest, ConsistentHash)"
            )),
        }
    }
}

/// One endpoint of a Service port.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Where to dial.
    pub addr: SocketAddr,
    /// The node it runs on, when the Endpoints say.
    pub node: Option<String>,
    /// Requests or connections in flight to it (shared across catalog snapshots).
    pub inflight: Arc<AtomicUsize>,
    /// Its circuit breaker (shared across catalog snapshots).
    pub breaker: Arc<crate::breaker::Breaker>,
}

/// In-flight counts by endpoint address, kept across catalog rebuilds so LeastRequest
/// does not forget the load when metadata changes.
#[derive(Debug, Default)]
pub struct Load {
    counts: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

impl Load {
    /// The counter of `addr`.
    pub fn counter(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        self.counts
            .lock()
            .expect("load map poisoned")
            .entry(addr)
            .or_default()
            .clone()
    }
}

/// Counts one request in flight on a backend until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Starts counting on `backend`.
    pub fn on(backend: &Backend) -> Self {
        backend.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(backend.inflight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks endpoints for one Service port.
#[derive(Debug, Default)]
pub struct Balancer {
    strategy: Strategy,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer with `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Balancer {
            strategy,
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    /// Its strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Picks one of `backends` (endpoints, or references to those still available); `key`
    /// is the hash key for ConsistentHash (without one it falls back to round robin).
    pub fn pick<'a, B: Borrow<Backend>>(
        &self,
        backends: &'a [B],
        key: Option<&[u8]>,
    ) -> Option<&'a B> {
        let n = backends.len();
        if n <= 1 {
            return backends.first();
        }
        let at = |i: usize| -> &Backend { backends[i].borrow() };
        let index = match (self.strategy, key) {
            (Strategy::Random, _) => fastrand::usize(..n),
            (Strategy::LeastRequest, _) => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let load = |i: usize| at(i).inflight.load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
            (Strategy::ConsistentHash, Some(key)) => (0..n)
                .max_by_key(|&i| rendezvous(key, at(i).addr))
                .expect("n > 1"),
            (Strategy::RoundRobin | Strategy::ConsistentHash, _) => {
                self.next.fetch_add(1, Ordering::Relaxed) % n
            }
        };
        backends.get(index)
    }
}

/// The rendezvous weight of `addr` for `key`.
fn rendezvous(key: &[u8], addr: SocketAddr) -> u64 {
    let seed = xxh3_64_with_seed(addr.to_string().as_bytes(), 0);
    xxh3_64_with_seed(key, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                addr: format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                node: None,
                inflight: Arc::default(),
                breaker: Arc::default(),
            })
            .collect()
    }

    fn counts(b: &Balancer, set: &[Backend], key: impl Fn(usize) -> Option<Vec<u8>>) -> Vec<usize> {
        let mut counts = vec![0; set.len()];
        for i in 0..3000 {
            let k = key(i);
            let chosen = b.pick(set, k.as_deref()).unwrap();
            counts[set.iter().position(|x| x.addr == chosen.addr).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_is_exact_and_random_is_spread() {
        let set = backends(3);
        assert_eq!(
            counts(&Balancer::new(Strategy::RoundRobin), &set, |_| None),
            [1000; 3]
        );
        for c in counts(&Balancer::new(Strategy::Random), &set, |_| None) {
            assert!((800..1200).contains(&c), "{c}");
        }
    }

    #[test]
    fn least_request_avoids_the_loaded_endpoint() {
        let set = backends(3);
        set[0].inflight.store(100, Ordering::Relaxed);
        let c = counts(&Balancer::new(Strategy::LeastRequest), &set, |_| None);
        assert_eq!(c[0], 0, "{c:?}");
        assert!(c[1] > 1000 && c[2] > 1000, "{c:?}");
        let guard = InFlight::on(&set[1]);
        assert_eq!(set[1].inflight.load(Ordering::Relaxed), 1);
        drop(guard);
        assert_eq!(set[1].inflight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn consistent_hash_keeps_a_key_and_moves_few_when_the_set_changes() {
        let set = backends(4);
        let b = Balancer::new(Strategy::ConsistentHash);
        let key = |i: usize| format!("client-{i}").into_bytes();
        let first: Vec<SocketAddr> = (0..400)
            .map(|i| b.pick(&set, Some(&key(i))).unwrap().addr)
            .collect();
        let again: Vec<SocketAddr> = (0..400)
            .map(|i| b.pick(&set, Some(&key(i))).unwrap().addr)
            .collect();
        assert_eq!(first, again);
        let spread = counts(&b, &set, |i| Some(key(i)));
        assert!(spread.iter().all(|&c| c > 500), "{spread:?}");
        // One endpoint leaves: only its keys move.
        let fewer: Vec<Backend> = set[..3].to_vec();
        let moved = (0..400)
            .filter(|&i| {
                first[i] != set[3].addr && b.pick(&fewer, Some(&key(i))).unwrap().addr != first[i]
            })
            .count();
        assert_eq!(moved, 0);
    }
}
