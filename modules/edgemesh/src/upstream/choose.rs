//! Choosing an endpoint: the balancer picks among the endpoints a predicate allows and
//! their breakers let through, so an endpoint that cannot be used is never chosen and then
//! refused.

use crate::breaker::Verdict;
use crate::catalog::Target;
use crate::error::{Error, Result};
use crate::lb::Backend;

/// An endpoint chosen for one request or connection, and its claim on the endpoint's
/// breaker (none when the Service has breaking off).
pub struct Pick<'t> {
    /// The endpoint.
    pub backend: &'t Backend,
    /// The breaker's claim; dropped without a verdict, it is abandoned (neutral).
    pub verdict: Option<Verdict>,
}

/// Picks one of `target`'s endpoints that `eligible` allows, leaving out those their
/// breaker ejected; `key` is the ConsistentHash key. With no eligible endpoint the error
/// says why: none at all, none reachable from here (`unreachable` builds that error), or
/// every one ejected.
pub fn choose<'t>(
    target: &'t Target,
    key: Option<&[u8]>,
    eligible: impl Fn(&Backend) -> bool,
    unreachable: impl FnOnce(&'t Backend) -> Error,
) -> Result<Pick<'t>> {
    let Some(first) = target.backends.first() else {
        return Err(Error::NoEndpoint(target.service.clone()));
    };
    let breaking = target.breaker.enabled();
    // The common case, every endpoint eligible and healthy, allocates nothing.
    let all_eligible = target.backends.iter().all(&eligible);
    if all_eligible && (!breaking || target.backends.iter().all(|b| b.breaker.available())) {
        let backend = target
            .balancer
            .pick(&target.backends, key)
            .expect("backends is not empty");
        // Without a claim, a probe slot was taken meanwhile: the careful path follows.
        if let Some(pick) = claim(target, backend) {
            return Ok(pick);
        }
    }
    let candidates: Vec<&Backend> = target.backends.iter().filter(|b| eligible(b)).collect();
    if candidates.is_empty() {
        return Err(unreachable(first));
    }
    // A probe slot may be taken between the check and the claim: try again a few times.
    for _ in 0..3 {
        let up: Vec<&Backend> = candidates
            .iter()
            .copied()
            .filter(|b| !breaking || b.breaker.available())
            .collect();
        let Some(backend) = target.balancer.pick(&up, key).copied() else {
            break;
        };
        if let Some(pick) = claim(target, backend) {
            return Ok(pick);
        }
    }
    Err(Error::BreakerOpen(target.service.clone()))
}

/// Claims `backend`'s breaker for one request, if it lets one through.
fn claim<'t>(target: &Target, backend: &'t Backend) -> Option<Pick<'t>> {
    if !target.breaker.enabled() {
        return Some(Pick {
            backend,
            verdict: None,
        });
    }
    let admission = backend.breaker.admit()?;
    Some(Pick {
        backend,
        verdict: Some(Verdict::new(
            backend.breaker.clone(),
            admission,
            target.breaker,
        )),
    })
}
