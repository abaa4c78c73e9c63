//! Warnings for a condition that can recur thousands of times a second (an accept loop out
//! of descriptors, a listener refusing a flood): the first is logged at once, the rest at
//! most once per interval with a count of those held back, so the log stays readable and
//! writing it costs nothing while the process is under pressure.

use std::fmt::Arguments;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One throttled warning; usually a `static`.
pub struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

struct State {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// A warning logged at most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new(State {
                last: None,
                held: 0,
            }),
        }
    }

    /// Logs `message` at warn level, unless one was logged less than the interval ago (then
    /// it is counted, and the count is added to the next one logged). Returns whether it
    /// was logged.
    pub fn warn(&self, message: Arguments<'_>) -> bool {
        let now = Instant::now();
        let held = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state
                .last
                .is_some_and(|last| now.duration_since(last) < self.every)
            {
                state.held += 1;
                return false;
            }
            state.last = Some(now);
            std::mem::take(&mut state.held)
        };
        if held == 0 {
            log::warn!("{message}");
        } else {
            log::warn!("{message} ({held} more like it since the last such warning)");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_and_the_rest_are_counted_until_the_interval_passes() {
        let throttle = Throttle::new(Duration::from_millis(200));
        assert!(throttle.warn(format_args!("out of descriptors")));
        for _ in 0..1000 {
            assert!(!throttle.warn(format_args!("out of descriptors")));
        }
        assert_eq!(throttle.state.lock().unwrap().held, 1000);
        throttle.state.lock().unwrap().last = Some(Instant::now() - Duration::from_secs(1));
        assert!(throttle.warn(format_args!("out of descriptors")));
        assert_eq!(throttle.state.lock().unwrap().held, 0);
    }
}
