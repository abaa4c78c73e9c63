//! Circuit breaking per endpoint: consecutive failures eject an endpoint for a while (longer
//! each time a probe fails), then one probe decides whether it comes back.
//!
//! The state is kept in atomics so that the common case (a healthy endpoint) costs a load
//! per request and nothing is written; only transitions take the lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Annotation with a Service's breaker settings: `failures=5,ejection=30s`, or `off`.
pub const BREAKER_ANNOTATION: &str = "edgemesh.io/circuit-breaker";

/// When an endpoint is ejected, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakerPolicy {
    /// Consecutive failures (connect errors, HTTP 5xx) that eject an endpoint; 0 turns
    /// breaking off.
    pub consecutive_failures: u32,
    /// Milliseconds of the first ejection; each failed probe doubles it.
    pub base_ejection_ms: u64,
    /// Milliseconds an ejection lasts at most.
    pub max_ejection_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            consecutive_failures: 5,
            base_ejection_ms: 10_000,
            max_ejection_ms: 300_000,
        }
    }
}

impl BreakerPolicy {
    /// Whether breaking is on.
    pub fn enabled(&self) -> bool {
        self.consecutive_failures > 0
    }

    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<&'static str> {
        if self.enabled() && self.base_ejection_ms == 0 {
            return Some("baseEjectionMs must be at least 1");
        }
        if self.max_ejection_ms < self.base_ejection_ms {
            return Some("maxEjectionMs must be at least baseEjectionMs");
        }
        None
    }

    /// The ejection after `ejections` earlier ones in a row.
    fn ejection(&self, ejections: u32) -> Duration {
        let ms = self
            .base_ejection_ms
            .saturating_mul(1u64 << ejections.min(20))
            .min(self.max_ejection_ms);
        Duration::from_millis(ms)
    }

    /// Reads an annotation value over `self` (the defaults): `off`, or comma-separated
    /// `failures=N`, `ejection=<duration>`, `maxEjection=<duration>` (durations as `500ms`,
    /// `30s`, `5m`).
    pub fn with_annotation(mut self, value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("off") {
            self.consecutive_failures = 0;
            return Ok(self);
        }
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, val) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected key=value"))?;
            match key.trim() {
                "failures" => {
                    self.consecutive_failures = val
                        .trim()
                        .parse()
                        .map_err(|_| format!("failures={val}: expected a whole number"))?
                }
                "ejection" => self.base_ejection_ms = millis(val)?,
                "maxEjection" => self.max_ejection_ms = millis(val)?,
                other => {
                    return Err(format!(
                        "unknown key {other:?} (failures, ejection, maxEjection)"
                    ));
                }
            }
        }
        if self.max_ejection_ms < self.base_ejection_ms {
            self.max_ejection_ms = self.base_ejection_ms;
        }
        match self.problem() {
            Some(p) => Err(p.to_owned()),
            None => Ok(self),
        }
    }
}

/// `500ms`, `30s`, `5m` in milliseconds.
fn millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 500ms, 30s or 5m"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        _ => return Err(format!("{text:?}: expected a unit: ms, s or m")),
    };
    Ok(n.saturating_mul(scale))
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Breaker {
    born: Instant,
    failures: AtomicU32,
    /// Milliseconds after `born` when the ejection ends, plus one; 0 when not ejected.
    until: AtomicU64,
    /// A probe is out: others wait for its verdict.
    probing: AtomicBool,
    /// Ejections since the endpoint last succeeded.
    ejections: Mutex<u32>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            born: Instant::now(),
            failures: AtomicU32::new(0),
            until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            ejections: Mutex::new(0),
        }
    }
}

/// How a request was let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The endpoint is healthy.
    Normal,
    /// The ejection is over and this request is the one probe.
    Probe,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.born)
            .as_millis() as u64
    }

    /// Whether a request could go to this endpoint now (for choosing among endpoints).
    pub fn available(&self) -> bool {
        match self.until.load(Ordering::Acquire) {
            0 => true,
            until => self.now_ms() + 1 >= until && !self.probing.load(Ordering::Acquire),
        }
    }

    /// Lets a request through, or not while ejected or while another probe is out.
    pub fn admit(&self) -> Option<Admission> {
        match self.until.load(Ordering::Acquire) {
            0 => Some(Admission::Normal),
            until if self.now_ms() + 1 < until => None,
            _ => self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .ok()
                .map(|_| Admission::Probe),
        }
    }

    /// The request succeeded: the count starts again, and a successful probe restores
    /// the endpoint.
    pub fn success(&self, admission: Admission) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if admission == Admission::Probe {
            *self.ejections.lock().expect("breaker poisoned") = 0;
            self.until.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
        }
    }

    /// The request failed: enough in a row eject the endpoint; a failed probe ejects it
    /// again for twice as long.
    pub fn failure(&self, admission: Admission, policy: &BreakerPolicy) {
        if !policy.enabled() {
            return;
        }
        match admission {
            Admission::Probe => {
                self.eject(policy);
                self.probing.store(false, Ordering::Release);
            }
            Admission::Normal => {
                let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= policy.consecutive_failures && self.until.load(Ordering::Acquire) == 0 {
                    self.eject(policy);
                }
            }
        }
    }

    /// A probe ended without a verdict (the client went away): another may go.
    pub fn abandon(&self, admission: Admission) {
        if admission == Admission::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    fn eject(&self, policy: &BreakerPolicy) {
        let mut ejections = self.ejections.lock().expect("breaker poisoned");
        let length = policy.ejection(*ejections);
        *ejections += 1;
        self.failures.store(0, Ordering::Relaxed);
        let until = self.now_ms() + length.as_millis() as u64 + 1;
        self.until.store(until, Ordering::Release);
    }

    /// Whether the endpoint is ejected now (its ejection not yet over).
    pub fn ejected(&self) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until != 0 && self.now_ms() + 1 < until
    }
}

/// A request's claim on a breaker: report how it went, or it counts as abandoned.
#[derive(Debug)]
pub struct Verdict {
    breaker: Arc<Breaker>,
    admission: Admission,
    policy: BreakerPolicy,
    done: bool,
}

impl Verdict {
    /// A claim on `breaker` let through as `admission`.
    pub fn new(breaker: Arc<Breaker>, admission: Admission, policy: BreakerPolicy) -> Self {
        Verdict {
            breaker,
            admission,
            policy,
            done: false,
        }
    }

    /// The request succeeded.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.success(self.admission);
    }

    /// The request failed.
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.failure(self.admission, &self.policy);
    }
}

impl Drop for Verdict {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.abandon(self.admission);
        }
    }
}

/// Breakers by endpoint address, kept across catalog rebuilds.
#[derive(Debug, Default)]
pub struct Breakers {
    by_addr: Mutex<HashMap<SocketAddr, Arc<Breaker>>>,
}

impl Breakers {
    /// The breaker of `addr`.
    pub fn of(&self, addr: SocketAddr) -> Arc<Breaker> {
        self.by_addr
            .lock()
            .expect("breakers poisoned")
            .entry(addr)
            .or_default()
            .clone()
    }

    /// Forgets endpoints that are gone.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.by_addr
            .lock()
            .expect("breakers poisoned")
            .retain(|addr, _| keep(addr));
    }
}

impl FromStr for BreakerPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BreakerPolicy::default().with_annotation(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        consecutive_failures: 3,
        base_ejection_ms: 1_000,
        max_ejection_ms: 3_000,
    };

    fn fail(b: &Breaker, n: usize) {
        for _ in 0..n {
            let a = b.admit().expect("admitted");
            b.failure(a, &POLICY);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_the_threshold_probes_after_the_backoff_and_restores_on_success() {
        let b = Breaker::default();
        fail(&b, 2);
        b.success(b.admit().unwrap());
        fail(&b, 2);
        assert!(b.available(), "a success in between restarts the count");
        fail(&b, 1);
        assert!(b.ejected() && !b.available());
        assert_eq!(b.admit(), None);

        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.admit(), None, "still ejected");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.admit(), Some(Admission::Probe));
        assert_eq!(b.admit(), None, "one probe at a time");
        assert!(!b.available());

        // The probe fails: ejected twice as long.
        b.failure(Admission::Probe, &POLICY);
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert_eq!(b.admit(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = b.admit().unwrap();
        b.failure(probe, &POLICY);
        // Capped at maxEjection.
        tokio::time::advance(Duration::from_millis(3_000)).await;
        let probe = b.admit().unwrap();
        assert_eq!(probe, Admission::Probe);
        b.success(probe);
        assert!(b.available() && !b.ejected());
        assert_eq!(b.admit(), Some(Admission::Normal));

        // Restored means the backoff starts again from the base.
        fail(&b, 3);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert_eq!(b.admit(), Some(Admission::Probe));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_another_one_go() {
        let b = Arc::new(Breaker::default());
        fail(&b, 3);
        tokio::time::advance(Duration::from_secs(1)).await;
        let verdict = Verdict::new(b.clone(), b.admit().unwrap(), POLICY);
        assert_eq!(b.admit(), None);
        drop(verdict);
        assert_eq!(b.admit(), Some(Admission::Probe));
    }

    #[test]
    fn annotations_parse_over_the_defaults() {
        let d = BreakerPolicy::default();
        let p: BreakerPolicy = "failures=2, ejection=500ms".parse().unwrap();
        assert_eq!(p.consecutive_failures, 2);
        assert_eq!(p.base_ejection_ms, 500);
        assert_eq!(p.max_ejection_ms, d.max_ejection_ms);
        assert!(!"off".parse::<BreakerPolicy>().unwrap().enabled());
        assert_eq!(
            "ejection=10m"
                .parse::<BreakerPolicy>()
                .unwrap()
                .max_ejection_ms,
            600_000,
            "the cap is raised to the base"
        );
        for bad in [
            "failures",
            "failures=x",
            "ejection=5",
            "speed=1",
            "ejection=0ms",
        ] {
            assert!(bad.parse::<BreakerPolicy>().is_err(), "{bad}");
        }
    }
}
