//! Idle limits: one watchdog per connection (or pair) notices when nothing has moved for
//! too long, so the data path only records a timestamp per read and arms no timer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A connection's idle limit, checked by one watchdog per connection instead of a timer
/// per read, which showed in the proxy benchmark.
#[derive(Debug)]
pub struct Watch {
    started: Instant,
    /// Milliseconds after `started` of the last read that brought bytes.
    last: AtomicU64,
    /// How long the connection may now go without one.
    limit: AtomicU64,
}

impl Watch {
    /// A watch allowing `limit` of quiet.
    pub fn new(limit: Duration) -> Self {
        Watch {
            started: Instant::now(),
            last: AtomicU64::new(0),
            limit: AtomicU64::new(limit.as_millis() as u64),
        }
    }

    /// Bytes moved: the quiet starts again.
    pub fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Changes how much quiet is allowed from the last bytes on.
    pub fn set_limit(&self, limit: Duration) {
        self.limit
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once the connection has been quiet for its limit.
    pub async fn expired(&self) {
        loop {
            let now = self.started.elapsed().as_millis() as u64;
            let quiet = now.saturating_sub(self.last.load(Ordering::Relaxed));
            let limit = self.limit.load(Ordering::Relaxed);
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(Duration::from_millis(limit - quiet)).await;
        }
    }
}
