//! Handing the heap's free pages back to the kernel after a burst of work.
//!
//! glibc keeps freed memory in the arena of the thread that allocated it (up to eight arenas
//! per core) and returns to the kernel only what is free at the top of an arena. A burst
//! (the store's first list of 1,000 Services passing through, a catalog rebuilt from it)
//! leaves its free pages resident for good: an idle edgecore with 1,000 Services held
//! 5.4–6.6 MiB of anonymous memory, 4.5 MiB once `malloc_trim` had run
//! (`bench/footprint.sh`). Limiting glibc to one arena gave the same saving but made the
//! proxy's worker threads wait on the arena's lock: HTTP/2 through edgemesh fell from
//! 0.68–0.73× HAProxy to 0.54× (`bench/http_modes.sh h2`, a futex call per request).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two trims: a trim walks every arena's free chunks under its lock, so
/// a run of rebuilds trims once, not at each one.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

static LAST_TRIM: Mutex<Option<Instant>> = Mutex::new(None);

/// Returns free heap pages to the kernel after a burst, unless that was done less than
/// [`TRIM_EVERY`] ago. Returns whether it trimmed.
pub fn trim_after_burst() -> bool {
    {
        let mut last = LAST_TRIM.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < TRIM_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
    }
    trim();
    true
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes a size and works on the allocator's own state under its
    // locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries have no `malloc_trim`; musl returns free memory by itself.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_trim_within_the_interval_is_skipped() {
        // The first call of the process may find a trim done by another test: take the
        // state as it comes, then check the interval.
        trim_after_burst();
        assert!(!trim_after_burst(), "trimmed twice within {TRIM_EVERY:?}");
    }
}
