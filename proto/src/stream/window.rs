//! Per-stream flow control: pure state machines, no I/O, no clock.
//!
//! Each direction of a stream has a window: the receiver grants the sender credit in bytes
//! ([`Open`](super::Open)'s initial window, then `Window` frames), and the sender never sends
//! more data than it holds credit for. [`SendWindow`] is the sender's account of its credit;
//! [`RecvWindow`] is the receiver's account of what it granted, received and handed on.
//!
//! **Invariant: no hop ever buffers more than the window per stream.** A receiver holds only
//! bytes the sender had credit for, and credit comes back only as the local reader consumes,
//! so received-but-unread bytes never exceed the window ([`RecvWindow::received`] refuses a
//! sender that overruns it: a protocol error, which resets the stream). A relay that forwards
//! frames and `Window` updates unchanged holds at most the far receiver's window of a stream,
//! since the sender's credit is that receiver's; a relay that terminates flow control on each
//! side holds at most its own window. Either way a slow reader stalls its stream's sender and
//! nothing else.
//!
//! Windows and credit are at most [`MAX_WINDOW`] (2^31-1, as in HTTP/2), so a sum of credit and
//! an increment always fits in a u32 and an overflow is detected, not wrapped.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The largest window and the largest credit: 2^31-1 bytes.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// A window that lets a stream run at link speed without holding much memory per stream:
/// 512 KiB, two of the largest default Data frames.
pub const DEFAULT_WINDOW: u32 = 512 * 1024;

/// The smallest Data frame [`SendWindow::frame_len`] asks for (unless less is allowed).
pub const MIN_FRAME: usize = 16 * 1024;

/// How long one Data frame should take to cross the slowest link of its path, at most.
/// Each hop that relays a frame takes it whole before passing it on, so a frame costs the
/// transfer about this much once more; bulk runs cost per frame, so frames are otherwise as
/// large as allowed (with fixed 256 KiB frames in a 512 KiB window, 4 MiB at 100 Mbit/s
/// took 1.75× the direct time; sized by rate, 1.01×).
pub const FRAME_TIME: Duration = Duration::from_millis(2);

/// The sender's credit on one stream: how many more bytes it may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendWindow {
    credit: u32,
    /// The most credit held at once: the peer's window, as far as this end has seen it.
    peak: u32,
    /// When credit last came (a grant, or the stream's start with credit).
    last_grant: Option<Instant>,
    /// Bytes per second the peer returns credit at: what the path carries now (unknown
    /// until measured). A slower sample at most halves it, so one late wake-up on a busy
    /// host does not shrink the frames of a fast path.
    rate: Option<u64>,
}

impl SendWindow {
    /// Credit starting at the peer's initial window (0 when the peer grants it later).
    /// A window above [`MAX_WINDOW`] is a protocol error.
    pub fn new(initial: u32) -> Result<Self> {
        if initial > MAX_WINDOW {
            return Err(Error::WindowOverflow {
                credit: 0,
                increment: initial,
            });
        }
        Ok(SendWindow {
            credit: initial,
            peak: initial,
            last_grant: None,
            rate: None,
        })
    }

    /// Takes up to `n` bytes of credit and returns how many were taken: the sender may now
    /// send that many bytes. 0 means wait for a grant.
    pub fn reserve(&mut self, n: usize) -> usize {
        let take = n.min(self.credit as usize);
        // `take` ≤ credit, which fits a u32.
        self.credit -= take as u32;
        take
    }

    /// Adds the peer's `increment` (a `Window` frame). Credit past [`MAX_WINDOW`] means the
    /// peer granted more than it can have room for: a protocol error, credit left unchanged.
    pub fn grant(&mut self, increment: u32) -> Result<()> {
        // Both are ≤ 2^31-1 or the check fails, so the sum cannot wrap before the check.
        match self.credit.checked_add(increment) {
            Some(credit) if credit <= MAX_WINDOW => {
                self.credit = credit;
                self.peak = self.peak.max(credit);
                Ok(())
            }
            _ => Err(Error::WindowOverflow {
                credit: self.credit,
                increment,
            }),
        }
    }

    /// The credit left.
    pub fn credit(&self) -> u32 {
        self.credit
    }

    /// Notes that the credit held or granted at `now` started to flow, or that `increment`
    /// more came back (the caller has [`grant`](Self::grant)ed it): the time between two
    /// grants measures the rate of the path.
    pub fn mark(&mut self, increment: u32, now: Instant) {
        if let Some(last) = self.last_grant {
            let took = now.saturating_duration_since(last).as_secs_f64().max(1e-6);
            let sample = (f64::from(increment) / took) as u64;
            self.rate = Some(self.rate.map_or(sample, |rate| sample.max(rate / 2)));
        }
        self.last_grant = Some(now);
    }

    /// The most to put in one Data frame: what the path carries in [`FRAME_TIME`] (at
    /// least [`MIN_FRAME`], and that until the rate is measured), and at most half the
    /// peer's window, so that a frame is in flight while the credit of the one before comes
    /// back; never more than `max`.
    pub fn frame_len(&self, max: usize) -> usize {
        let by_rate = self.rate.map_or(MIN_FRAME, |rate| {
            ((rate as f64 * FRAME_TIME.as_secs_f64()) as usize).max(MIN_FRAME)
        });
        max.min(by_rate).min((self.peak as usize / 2).max(1))
    }
}

/// The receiver's account of one stream's window.
///
/// Of the `window` bytes the receiver offers, some are held (received, not yet read by the
/// local reader), some are read but not yet given back to the sender (`Window` updates are
/// batched), and the rest is the sender's credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvWindow {
    window: u32,
    /// Received and not yet consumed by the local reader.
    buffered: u32,
    /// Consumed but not yet returned to the sender in a `Window` update.
    unacked: u32,
}

impl RecvWindow {
    /// A receiver whose sender knows it may send `window` bytes (the window was announced in
    /// the `Open` or in a `Window` frame). A window above [`MAX_WINDOW`] is refused.
    pub fn new(window: u32) -> Result<Self> {
        if window > MAX_WINDOW {
            return Err(Error::WindowOverflow {
                credit: 0,
                increment: window,
            });
        }
        Ok(RecvWindow {
            window,
            buffered: 0,
            unacked: 0,
        })
    }

    /// Accounts `len` bytes of data that arrived. More than the sender's credit means the
    /// sender overran the window: a protocol error, nothing accounted.
    pub fn received(&mut self, len: usize) -> Result<()> {
        let credit = self.sender_credit();
        if len > credit as usize {
            return Err(Error::WindowOverrun { len, credit });
        }
        // `len` ≤ credit ≤ window - buffered, so the sum stays ≤ window.
        self.buffered += len as u32;
        Ok(())
    }

    /// Accounts `n` bytes handed to the local reader, and returns the increment of a `Window`
    /// frame to send once the consumed-but-unreturned bytes reach a quarter of the window:
    /// updates are batched so a stream of small reads does not become a stream of small
    /// frames, and a quarter leaves the sender credit to keep going while the update
    /// travels.
    ///
    /// `n` beyond what was received is a bug of the caller; it is clamped to what was received
    /// so the accounting stays within the window.
    pub fn consumed(&mut self, n: usize) -> Option<u32> {
        debug_assert!(n <= self.buffered as usize, "consumed more than received");
        let n = n.min(self.buffered as usize) as u32;
        self.buffered -= n;
        self.unacked += n;
        if self.unacked > 0 && self.unacked >= (self.window / 4).max(1) {
            return Some(std::mem::take(&mut self.unacked));
        }
        None
    }

    /// The whole window offered to the sender.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Bytes received and not yet consumed: never more than the window.
    pub fn buffered(&self) -> u32 {
        self.buffered
    }

    /// The credit the sender holds as the receiver sees it (grants in flight included).
    pub fn sender_credit(&self) -> u32 {
        self.window - self.buffered - self.unacked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_follow_the_measured_rate_within_half_the_window() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(0).unwrap();
        assert_eq!(w.frame_len(256 * 1024), 1, "nothing granted yet");
        w.grant(1024 * 1024).unwrap();
        w.mark(1024 * 1024, t0);
        assert_eq!(w.frame_len(1 << 20), MIN_FRAME, "no rate measured yet");
        // A fast path: 256 KiB back within 0.2 ms (1.3 GB/s) allows the largest frame.
        w.reserve(1024 * 1024);
        w.grant(256 * 1024).unwrap();
        w.mark(256 * 1024, t0 + Duration::from_micros(200));
        assert_eq!(w.frame_len(256 * 1024), 256 * 1024, "the codec's largest");
        assert_eq!(w.frame_len(1 << 20), 512 * 1024, "half the window");
        assert_eq!(w.frame_len(64 * 1024), 64 * 1024, "the codec's limit holds");
        // One slow sample (a late wake-up) halves the rate at most: still the largest frame.
        w.grant(256 * 1024).unwrap();
        w.mark(256 * 1024, t0 + Duration::from_micros(200 + 21_000));
        assert_eq!(w.frame_len(256 * 1024), 256 * 1024);
        // 100 Mbit/s from the start: 256 KiB in 21 ms; a frame is what it carries in 2 ms.
        let mut slow = SendWindow::new(1024 * 1024).unwrap();
        slow.mark(1024 * 1024, t0);
        slow.reserve(1024 * 1024);
        slow.grant(256 * 1024).unwrap();
        slow.mark(256 * 1024, t0 + Duration::from_millis(21));
        let len = slow.frame_len(1 << 20);
        assert!((24_000..26_000).contains(&len), "{len}");
        // Slower still: frames of MIN_FRAME, once the rate has come down.
        for n in 1..=8 {
            slow.grant(1024).unwrap();
            slow.mark(1024, t0 + Duration::from_secs(n));
        }
        assert_eq!(slow.frame_len(1 << 20), MIN_FRAME);
        let mut small = SendWindow::new(32 * 1024).unwrap();
        small.mark(32 * 1024, t0);
        small.grant(16 * 1024).unwrap();
        small.mark(16 * 1024, t0 + Duration::from_micros(10));
        assert_eq!(
            small.frame_len(256 * 1024),
            24 * 1024,
            "half a small window"
        );
    }

    #[test]
    fn reserve_takes_what_credit_allows() {
        let mut w = SendWindow::new(100).unwrap();
        assert_eq!(w.reserve(30), 30);
        assert_eq!(w.credit(), 70);
        assert_eq!(w.reserve(1000), 70);
        assert_eq!(w.reserve(1), 0, "0 means wait");
        w.grant(5).unwrap();
        assert_eq!(w.reserve(10), 5);
        assert_eq!(w.reserve(0), 0);
    }

    #[test]
    fn a_zero_initial_window_waits_for_a_grant() {
        let mut w = SendWindow::new(0).unwrap();
        assert_eq!(w.reserve(10), 0);
        w.grant(DEFAULT_WINDOW).unwrap();
        assert_eq!(w.reserve(usize::MAX), DEFAULT_WINDOW as usize);
    }

    #[test]
    fn grants_past_the_maximum_are_refused_and_change_nothing() {
        let mut w = SendWindow::new(MAX_WINDOW - 10).unwrap();
        w.grant(10).unwrap();
        assert_eq!(w.credit(), MAX_WINDOW);
        assert!(matches!(
            w.grant(1),
            Err(Error::WindowOverflow {
                credit: MAX_WINDOW,
                increment: 1
            })
        ));
        assert_eq!(w.credit(), MAX_WINDOW);
        assert!(w.grant(u32::MAX).is_err());
        let mut w = SendWindow::new(5).unwrap();
        assert!(w.grant(u32::MAX).is_err(), "a wrapping sum is an overflow");
        assert_eq!(w.credit(), 5);
        assert!(SendWindow::new(MAX_WINDOW + 1).is_err());
    }

    #[test]
    fn receiving_past_the_window_is_an_overrun() {
        let mut r = RecvWindow::new(100).unwrap();
        r.received(60).unwrap();
        r.received(40).unwrap();
        assert_eq!(r.buffered(), 100);
        assert_eq!(r.sender_credit(), 0);
        assert!(matches!(
            r.received(1),
            Err(Error::WindowOverrun { len: 1, credit: 0 })
        ));
        assert_eq!(r.buffered(), 100, "an overrun is not accounted");
        assert!(RecvWindow::new(MAX_WINDOW + 1).is_err());
    }

    #[test]
    fn updates_are_sent_once_a_quarter_of_the_window_is_consumed() {
        let mut r = RecvWindow::new(100).unwrap();
        r.received(100).unwrap();
        assert_eq!(r.consumed(10), None);
        assert_eq!(r.consumed(14), None);
        assert_eq!(r.consumed(1), Some(25));
        assert_eq!(r.sender_credit(), 25);
        assert_eq!(r.consumed(75), Some(75));
        assert_eq!(r.sender_credit(), 100);
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.window(), 100);
    }

    #[test]
    fn consumption_not_yet_returned_is_not_credit() {
        let mut r = RecvWindow::new(100).unwrap();
        r.received(100).unwrap();
        assert_eq!(r.consumed(20), None);
        // The sender has not been told, so it still has no credit.
        assert!(r.received(1).is_err());
        assert_eq!(r.sender_credit(), 0);
    }

    #[test]
    fn tiny_windows_still_return_credit() {
        let mut r = RecvWindow::new(1).unwrap();
        r.received(1).unwrap();
        assert_eq!(r.consumed(1), Some(1));
        let mut r = RecvWindow::new(3).unwrap();
        r.received(3).unwrap();
        assert_eq!(r.consumed(1), Some(1));
        assert_eq!(r.consumed(0), None, "nothing consumed, nothing sent");
    }

    #[test]
    fn a_sender_and_receiver_in_lockstep_never_exceed_the_window() {
        // A sender pushing 1 MB through a 64 KiB window with a slow reader: the receiver
        // never holds more than the window, and every byte gets through.
        let window = 64 * 1024;
        let mut tx = SendWindow::new(window).unwrap();
        let mut rx = RecvWindow::new(window).unwrap();
        let total = 1_000_000usize;
        let (mut sent, mut read) = (0, 0);
        let mut in_flight_updates = Vec::new();
        let mut rounds = 0;
        while read < total {
            rounds += 1;
            let n = tx.reserve((total - sent).min(10_000));
            if n > 0 {
                rx.received(n).unwrap();
                sent += n;
            }
            assert!(rx.buffered() <= window);
            let r = (rx.buffered() as usize).min(3_000);
            read += r;
            if let Some(inc) = rx.consumed(r) {
                in_flight_updates.push(inc);
            }
            // Updates arrive one round late, as over a link.
            if rounds % 2 == 0 {
                for inc in in_flight_updates.drain(..) {
                    tx.grant(inc).unwrap();
                }
            }
            assert!(rounds < 10_000, "stalled: sent {sent}, read {read}");
        }
        assert_eq!(sent, total);
    }

    proptest! {
        /// Any schedule of sends, reads and late-arriving updates: the receiver never holds
        /// more than the window, both sides agree on the credit once updates have landed,
        /// and an honest sender never trips the overrun check.
        #[test]
        fn any_schedule_keeps_within_the_window(
            window in 1u32..10_000,
            steps in proptest::collection::vec((0usize..4, 0usize..20_000), 1..200),
        ) {
            let mut tx = SendWindow::new(window).unwrap();
            let mut rx = RecvWindow::new(window).unwrap();
            let mut in_flight: Vec<u32> = Vec::new();
            for (op, n) in steps {
                match op {
                    0 | 1 => {
                        let sent = tx.reserve(n);
                        rx.received(sent).unwrap();
                    }
                    2 => {
                        let read = n.min(rx.buffered() as usize);
                        in_flight.extend(rx.consumed(read));
                    }
                    _ => {
                        for inc in in_flight.drain(..) {
                            tx.grant(inc).unwrap();
                        }
                    }
                }
                prop_assert!(rx.buffered() <= window);
                let pending: u32 = in_flight.iter().sum();
                prop_assert_eq!(tx.credit() + pending, rx.sender_credit());
            }
        }
    }
}
