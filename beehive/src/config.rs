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
    /// Threads that run the modules' tasks; 0 lets the binary choose (see
    /// [`CoreConfig::threads_or`]): edgecore runs one, since its cloud link is one task and
    /// a tunnel stream's frames cross edgehub, edgemesh and the stream's relay, hops that
    /// cost another thread's wake-up each when they land on different threads; cloudcore
    /// runs one per core for its many nodes. (edgemesh's proxy has threads of its own,
    /// `workers`.)
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
                    "must be at most 1024 (0 for the binary's choice), got {}",
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
        self.threads_or(Self::per_core())
    }

    /// The runtime's worker threads: as configured, or `auto` (the binary's choice).
    pub fn threads_or(&self, auto: usize) -> usize {
        match self.worker_threads {
            0 => auto.max(1),
            n => n,
        }
    }

    /// One thread per core.
    pub fn per_core() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
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

    #[test]
    fn zero_threads_take_the_binarys_choice_and_a_number_is_kept() {
        let auto = CoreConfig::default();
        assert_eq!(auto.threads_or(1), 1, "edgecore's choice");
        assert_eq!(auto.threads_or(6), 6);
        assert_eq!(auto.threads(), CoreConfig::per_core());
        let three = CoreConfig {
            worker_threads: 3,
            ..CoreConfig::default()
        };
        assert_eq!(three.threads_or(1), 3);
        assert_eq!(three.threads(), 3);
    }
}
