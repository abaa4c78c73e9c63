//! When a feed rebuilds the catalog after changes. A build is linear in the catalog, so
//! one per change would make a burst of N changes (a node's resync, a list after a
//! reconnect) cost N² work: with 3,000 Services that kept a core busy for a minute, long
//! enough for metamanager to drop the watch as a reader that stopped reading. Changes are
//! instead gathered while more are ready, and builds come at most once per [`MIN_GAP`];
//! a lone change after a quiet spell is built at once, and a change waits no longer than
//! [`MAX_WAIT`] however long the burst lasts.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::Catalog;

/// Swaps `next` in for the proxy's readers and counts it in `generation` (the first swap
/// marks the initial sync, and the rule keeper follows the count).
pub(crate) fn publish(catalog: &ArcSwap<Catalog>, generation: &watch::Sender<u64>, next: Catalog) {
    log::debug!("catalog: {} service port(s)", next.vips().len());
    catalog.store(Arc::new(next));
    generation.send_modify(|g| *g += 1);
    // A build follows a burst of changes (at start, the whole store): what the burst freed
    // would otherwise stay resident.
    beehive::memory::trim_after_burst();
}

/// Shortest time between two builds while changes keep coming: a bound on how stale the
/// catalog may be during a burst (kube-proxy's own minimum sync period is a second).
pub(crate) const MIN_GAP: Duration = Duration::from_millis(100);

/// Longest a change waits for its build while changes keep coming faster than they are
/// taken (a feed that always has one at hand would otherwise never build).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(1);

/// Whether changes await a build, since when, and when the last build was made.
#[derive(Debug, Default)]
pub(crate) struct Rebuild {
    dirty: Option<Instant>,
    last: Option<Instant>,
}

impl Rebuild {
    /// Notes a change the catalog does not have yet.
    pub(crate) fn mark(&mut self) {
        self.dirty.get_or_insert_with(Instant::now);
    }

    /// True when the oldest change not built yet has waited [`MAX_WAIT`]: build now,
    /// before taking more.
    pub(crate) fn overdue(&self) -> bool {
        self.dirty.is_some_and(|since| since.elapsed() >= MAX_WAIT)
    }

    /// The earliest instant a build may start, if one is owed.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.dirty?;
        Some(self.last.map_or_else(Instant::now, |last| last + MIN_GAP))
    }

    /// Notes a build just made.
    pub(crate) fn built(&mut self) {
        self.dirty = None;
        self.last = Some(Instant::now());
    }
}

/// Resolves when a build owed at `due` may start: not before `due`, and only after the
/// task has yielded once, so a `biased` select that polls the feeds first takes every
/// change already at hand before the build. Never resolves when nothing is owed.
pub(crate) async fn ready(due: Option<Instant>) {
    let Some(at) = due else {
        return std::future::pending().await;
    };
    tokio::time::sleep_until(at).await;
    tokio::task::yield_now().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_built_once_per_gap_and_a_lone_change_at_once() {
        let mut r = Rebuild::default();
        assert_eq!(r.due(), None, "nothing owed");
        r.mark();
        let first = r.due().expect("owed");
        assert!(first <= Instant::now(), "the first change is built at once");
        r.built();
        r.mark();
        let second = r.due().expect("owed");
        assert_eq!(
            second,
            Instant::now() + MIN_GAP,
            "a change right after waits"
        );
        tokio::time::advance(MIN_GAP * 3).await;
        r.built();
        tokio::time::advance(MIN_GAP * 2).await;
        r.mark();
        assert!(
            r.due().unwrap() <= Instant::now(),
            "after a quiet spell: at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changes_at_hand_are_taken_before_the_build() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        for n in 0..100 {
            tx.send(n).unwrap();
        }
        let mut r = Rebuild::default();
        let (mut applied, mut builds) = (0, 0);
        while builds == 0 {
            tokio::select! {
                biased;
                Some(_) = rx.recv() => {
                    applied += 1;
                    r.mark();
                }
                _ = ready(r.due()) => {
                    builds += 1;
                    r.built();
                }
            }
        }
        assert_eq!((applied, builds), (100, 1));
    }
}
