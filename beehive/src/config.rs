//! Settings of the bus.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Settings of the module bus (`beehive:` in a process's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CoreConfig {
    /// Messages a module's inbox holds before senders wait (or `try_send` reports full).
    pub inbox_capacity: usize,
    /// Milliseconds modules get to stop after a shutdown signal before they are abandoned.
    /// A module that drains on shutdown (edgemesh's `drainTimeoutMs`, 10 s by default)
    /// needs a grace period longer than its drain, hence 15 s.
    pub grace_period_ms: u64,
    /// Threads that run the modules' tasks; 0 for one per core. Fewer threads mean fewer
    /// hand-offs between them: a tunnel stream's frames cross edgehub, edgemesh and the
    /// stream's relay, and with one thread those hops cost no wake-up of another thread.
    /// (edgemesh's proxy has threads of its own, `workers`.)
    pub worker_threads: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            inbox_capacity: 1024,
            grace_period_ms: 15_000,
            worker_threads: 0,
        }
    }
}

impl CoreConfig {
    /// Largest inbox accepted; beyond it a stuck module would hide in memory growth.
    pub const MAX_INBOX_CAPACITY: usize = 1 << 20;

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every field out of range, each named.
    pub fn problems(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        if self.inbox_capacity == 0 || self.inbox_capacity > Self::MAX_INBOX_CAPACITY {
            problems.push(Error::InvalidConfig {
                field: "inboxCapacity",
                reason: format!(
                    "must be between 1 and {}, got {}",
                    Self::MAX_INBOX_CAPACITY,
                    self.inbox_capacity
                ),
            });
        }
        if self.worker_threads > 1024 {
            problems.push(Error::InvalidConfig {
                field: "workerThreads",
                reason: format!(
                    "must be at most 1024 (0 for one per core), got {}",
                    self.worker_threads
                ),
            });
        }
        if self.grace_period_ms > 600_000 {
            problems.push(Error::InvalidConfig {
                field: "gracePeriodMs",
                reason: format!(
                    "must be at most 600000 (10 min), got {}",
                    self.grace_period_ms
                ),
            });
        }
        problems
    }

    /// The runtime's worker threads: as configured, or one per core.
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    /// The grace period as a duration.
    pub fn grace_period(&self) -> Duration {
        Duration::from_millis(self.grace_period_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_field() {
        CoreConfig::default().validate().unwrap();
        let bad = CoreConfig {
            inbox_capacity: 0,
            ..CoreConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("inboxCapacity"), "{err}");
        let bad = CoreConfig {
            grace_period_ms: 700_000,
            ..CoreConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("gracePeriodMs")
        );
    }
}
