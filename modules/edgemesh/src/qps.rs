//! Server-side QPS limits per Service (GCRA, through governor): one limiter per Service on
//! this node, shared by every connection and every worker thread, kept across catalog
//! rebuilds so that a metadata change does not hand out a fresh burst.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Annotation with a Service's limit: requests (HTTP) or connections (TCP) per second
/// accepted by this node's endpoints; `0` or `unlimited` for none.
pub const QPS_ANNOTATION: &str = "edgemesh.io/qps";

/// A Service's limiter.
#[derive(Debug)]
pub struct Limiter {
    qps: u32,
    inner: DefaultDirectRateLimiter,
}

impl Limiter {
    /// A limiter admitting `qps` per second, with a burst of a tenth of a second's worth
    /// (at least one): enough to absorb jitter, too little to let a second's worth through
    /// at once.
    pub fn new(qps: NonZeroU32) -> Self {
        let burst = NonZeroU32::new(qps.get() / 10).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(qps).allow_burst(burst);
        Limiter {
            qps: qps.get(),
            inner: RateLimiter::direct(quota),
        }
    }

    /// Its rate.
    pub fn qps(&self) -> u32 {
        self.qps
    }

    /// Takes one request; over the limit, says how long until one would be accepted.
    pub fn check(&self) -> Result<(), Duration> {
        self.inner
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Limiters by Service (`<ns>/<name>`).
#[derive(Debug, Default)]
pub struct Limiters {
    by_service: Mutex<HashMap<String, Arc<Limiter>>>,
}

impl Limiters {
    /// The limiter of `service` at `qps` (`None`: unlimited). A changed rate gets a new
    /// limiter; an unchanged one keeps its state.
    pub fn of(&self, service: &str, qps: Option<NonZeroU32>) -> Option<Arc<Limiter>> {
        let mut map = self.by_service.lock().expect("limiters poisoned");
        let Some(qps) = qps else {
            map.remove(service);
            return None;
        };
        let limiter = map
            .entry(service.to_owned())
            .and_modify(|l| {
                if l.qps != qps.get() {
                    *l = Arc::new(Limiter::new(qps));
                }
            })
            .or_insert_with(|| Arc::new(Limiter::new(qps)));
        Some(limiter.clone())
    }

    /// Forgets Services that are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.by_service
            .lock()
            .expect("limiters poisoned")
            .retain(|service, _| keep(service));
    }
}

/// Reads an annotation value: a whole number of requests per second; 0 or `unlimited`
/// means none.
pub fn parse(value: &str) -> Result<Option<NonZeroU32>, String> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    value
        .parse::<u32>()
        .map(NonZeroU32::new)
        .map_err(|_| format!("{value:?}: expected requests per second (a whole number)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_limiter_per_service_kept_until_its_rate_changes() {
        let limiters = Limiters::default();
        let ten = NonZeroU32::new(10);
        let a = limiters.of("default/web", ten).unwrap();
        let b = limiters.of("default/web", ten).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "shared, not per caller");
        // Burst of one at 10/s: the second request at once is refused, with a wait.
        assert!(a.check().is_ok());
        let wait = b.check().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        let c = limiters.of("default/web", NonZeroU32::new(20)).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(limiters.of("default/web", None).is_none());
    }

    #[test]
    fn annotation_values() {
        assert_eq!(parse("50"), Ok(NonZeroU32::new(50)));
        assert_eq!(parse("0"), Ok(None));
        assert_eq!(parse("unlimited"), Ok(None));
        assert!(parse("fast").is_err());
        assert!(parse("-1").is_err());
    }
}
