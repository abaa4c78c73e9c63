//! Graceful drain on shutdown: the state every connection of every worker shares, and the
//! tracker of their tasks.
//!
//! The module drives it in order (see `module.rs`): [`Drain::begin`] (readiness turns
//! false, idle HTTP keep-alive connections close, in-flight HTTP/1 responses carry
//! `connection: close`, hyper connections shut down gracefully); then, once the iptables
//! jumps that redirect connections here are gone, [`Drain::stop_accepting`] (listeners
//! take what is already queued and close); then [`Drain::settle`] waits for the live
//! connection tasks up to the deadline and [`Drain::cut`]s whatever is left (opaque
//! relays, upgraded connections, slow responses).
//!
//! It is one `Arc` shared by every worker thread: its tokens and counter are
//! runtime-agnostic, so a worker's tasks and the module's task on another runtime see the
//! same state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Where a drain stands, shared by every connection; cheap to clone. Each worker thread
/// takes its own view ([`Drain::for_worker`]): waiting on a token registers under that
/// token's lock, and one token shared by every worker put that lock on the request path
/// of all of them (p99 latency +70% in the proxy benchmark).
#[derive(Clone, Debug, Default)]
pub struct Drain {
    inner: Arc<Inner>,
    count: Arc<Count>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Shutdown has begun: take no new work on kept connections.
    draining: CancellationToken,
    /// Listeners stop accepting (after the rules that send connections here are gone).
    closing: CancellationToken,
    /// The deadline passed, or the module was dropped: every tracked task ends now.
    cut: CancellationToken,
}

/// The live connection tasks of every view of a drain.
#[derive(Debug, Default)]
struct Count {
    /// Tracked connection tasks still running.
    live: AtomicUsize,
    /// Woken when `live` drops to zero.
    idle: Notify,
}

/// Counts one connection task as live until dropped (a panicking task counts out too).
#[derive(Debug)]
pub struct Live(Arc<Count>);

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Cuts its drain when dropped (see [`Drain::cut_on_drop`]).
#[derive(Debug)]
pub struct CutOnDrop(Drain);

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        self.0.cut();
    }
}

pin_project_lite::pin_project! {
    /// A connection task run by [`Drain::run`]: a named future, so it is `Send` exactly
    /// when the task is (see [`Graceful`]).
    pub struct Tracked<F> {
        #[pin]
        task: F,
        #[pin]
        cut: WaitForCancellationFutureOwned,
        _live: Live,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.task.poll(cx) {
            return Poll::Ready(Some(out));
        }
        this.cut.poll(cx).map(|()| None)
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Every connection finished before the deadline.
    Done,
    /// This many connections were still open at the deadline and were cut.
    Cut(usize),
}

impl Drain {
    /// A drain not begun: everything serves as usual.
    pub fn new() -> Self {
        Self::default()
    }

    /// A view of this drain for one worker thread: tokens of its own, cancelled with this
    /// drain's, and the same count of live tasks.
    pub fn for_worker(&self) -> Drain {
        Drain {
            inner: Arc::new(Inner {
                draining: self.inner.draining.child_token(),
                closing: self.inner.closing.child_token(),
                cut: self.inner.cut.child_token(),
            }),
            count: self.count.clone(),
        }
    }

    /// Begins draining (idempotent): readiness turns false and kept connections take no
    /// new requests.
    pub fn begin(&self) {
        self.inner.draining.cancel();
    }

    /// True once draining has begun.
    pub fn draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Resolves once draining has begun.
    pub async fn started(&self) {
        self.inner.draining.cancelled().await
    }

    /// Tells the listeners to stop accepting (after what is already queued); begins the
    /// drain too, if it had not begun.
    pub fn stop_accepting(&self) {
        self.begin();
        self.inner.closing.cancel();
    }

    /// The token listeners stop accepting on.
    pub fn closing(&self) -> CancellationToken {
        self.inner.closing.clone()
    }

    /// Ends every tracked task now (the deadline passed); stops the listeners too.
    pub fn cut(&self) {
        self.stop_accepting();
        self.inner.cut.cancel();
    }

    /// True once [`Drain::cut`] was called.
    pub fn is_cut(&self) -> bool {
        self.inner.cut.is_cancelled()
    }

    /// Cuts when dropped: a module future dropped mid-drain (its task aborted) must not
    /// leave worker threads waiting on connections.
    pub fn cut_on_drop(&self) -> CutOnDrop {
        CutOnDrop(self.clone())
    }

    /// Counts a connection task as live until the guard is dropped.
    pub fn track(&self) -> Live {
        self.count.live.fetch_add(1, Ordering::AcqRel);
        Live(self.count.clone())
    }

    /// Connection tasks live now.
    pub fn live(&self) -> usize {
        self.count.live.load(Ordering::Acquire)
    }

    /// Runs `task` as a tracked connection task: counted live until it ends, and dropped
    /// (closing its sockets) when the drain is cut. `None` when it was cut.
    pub fn run<F: Future>(&self, task: F) -> Tracked<F> {
        Tracked {
            task,
            cut: self.inner.cut.clone().cancelled_owned(),
            _live: self.track(),
        }
    }

    /// Resolves once no tracked task is live.
    pub async fn idle(&self) {
        loop {
            let notified = self.count.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drop to zero in between still wakes us.
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Waits for the live connections to finish until `deadline`, then cuts whatever is
    /// left and waits for those tasks to end (they do at their next poll).
    pub async fn settle(&self, deadline: Instant) -> Settled {
        if tokio::time::timeout_at(deadline, self.idle()).await.is_ok() {
            return Settled::Done;
        }
        let left = self.live();
        self.cut();
        self.idle().await;
        Settled::Cut(left)
    }

    /// Awaits `read` (the wait for a kept connection's next request), unless the drain
    /// begins first while the connection is `idle` (no request started): then `None`, and
    /// the caller closes the connection. A read that is ready wins over the drain.
    pub async fn unless_idle<T>(&self, idle: bool, read: impl Future<Output = T>) -> Option<T> {
        if !idle {
            return Some(read.await);
        }
        tokio::select! {
            biased;
            out = read => Some(out),
            _ = self.started() => None,
        }
    }

    /// Drives a hyper server connection, calling `shutdown` on it (its
    /// `graceful_shutdown`) once the drain begins: an idle HTTP/1 connection closes at
    /// once, one with a request in flight finishes it with `connection: close`, an
    /// HTTP/2 connection sends GOAWAY and finishes its open streams.
    pub fn graceful<C, S>(&self, conn: C, shutdown: S) -> Graceful<C, S>
    where
        C: Future,
        S: FnOnce(Pin<&mut C>),
    {
        Graceful {
            conn,
            started: self.inner.draining.clone().cancelled_owned(),
            shutdown: Some(shutdown),
        }
    }
}

pin_project_lite::pin_project! {
    /// A hyper connection driven by [`Drain::graceful`]. A named future rather than an
    /// async fn: over hyper connections whose service borrows (`&Target`), rustc could
    /// not prove the async fn's future `Send` ("implementation of `Send` is not general
    /// enough") though the connection is.
    pub struct Graceful<C, S> {
        #[pin]
        conn: C,
        #[pin]
        started: WaitForCancellationFutureOwned,
        shutdown: Option<S>,
    }
}

impl<C: Future, S: FnOnce(Pin<&mut C>)> Future for Graceful<C, S> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Polled until the drain begins, never after.
        if this.shutdown.is_some() && this.started.poll(cx).is_ready() {
            let shutdown = this.shutdown.take().expect("checked above");
            shutdown(this.conn.as_mut());
        }
        this.conn.poll(cx)
    }
}

/// Adds `connection: close` to an HTTP/1 response head (ending in the blank line) unless
/// it already has it, so the client opens its next request elsewhere.
pub fn mark_close(head: &mut Vec<u8>) {
    const CLOSE: &[u8] = b"\r\nconnection: close\r\n";
    if head
        .windows(CLOSE.len())
        .any(|w| w.eq_ignore_ascii_case(CLOSE))
    {
        return;
    }
    if head.ends_with(b"\r\n\r\n") {
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"connection: close\r\n\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test(start_paused = true)]
    async fn tasks_that_finish_in_time_settle_and_the_rest_are_cut_at_the_deadline() {
        let drain = Drain::new();
        assert!(!drain.draining());
        let (finish, finished) = oneshot::channel::<&str>();
        let quick = tokio::spawn(drain.run(async move { finished.await.unwrap() }));
        let slow = tokio::spawn(drain.run(std::future::pending::<()>()));
        assert_eq!(drain.live(), 2);

        drain.begin();
        assert!(drain.draining() && !drain.closing().is_cancelled());
        drain.stop_accepting();
        assert!(drain.closing().is_cancelled());
        finish.send("done").unwrap();
        assert_eq!(
            quick.await.unwrap(),
            Some("done"),
            "an in-flight task finishes"
        );
        assert_eq!(drain.live(), 1);

        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(drain.settle(deadline).await, Settled::Cut(1));
        assert!(
            Instant::now() >= deadline,
            "cut only once the deadline passed"
        );
        assert!(drain.is_cut());
        assert_eq!(
            slow.await.unwrap(),
            None,
            "the task past the deadline was cut"
        );
        assert_eq!(drain.live(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_with_nothing_open_settles_at_once() {
        let drain = Drain::new();
        drain.begin();
        let task = tokio::spawn(drain.run(async { 7 }));
        assert_eq!(task.await.unwrap(), Some(7));
        let start = Instant::now();
        let settled = drain.settle(start + Duration::from_secs(10)).await;
        assert_eq!(settled, Settled::Done);
        assert_eq!(Instant::now(), start, "no waiting for the deadline");
        assert!(!drain.is_cut());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_kept_connections_close_when_the_drain_begins_busy_ones_do_not() {
        let drain = Drain::new();
        // Idle: waiting for the next request ends when the drain begins.
        let idle = tokio::spawn({
            let drain = drain.clone();
            async move { drain.unless_idle(true, std::future::pending::<()>()).await }
        });
        // Within a request: the read goes on.
        let (send, read) = oneshot::channel::<u8>();
        let busy = tokio::spawn({
            let drain = drain.clone();
            async move { drain.unless_idle(false, read).await }
        });
        tokio::task::yield_now().await;
        drain.begin();
        assert_eq!(idle.await.unwrap(), None);
        send.send(1).unwrap();
        assert_eq!(busy.await.unwrap(), Some(Ok(1)));
        // Once draining, an idle wait ends at once, but bytes already there win.
        assert_eq!(
            drain.unless_idle(true, std::future::pending::<()>()).await,
            None
        );
        assert_eq!(drain.unless_idle(true, async { 3 }).await, Some(3));
        assert_eq!(drain.unless_idle(false, async { 3 }).await, Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_shut_down_gracefully_once_the_drain_begins() {
        let drain = Drain::new();
        let (ended, end) = oneshot::channel::<()>();
        let mut ended = Some(ended);
        let conn = tokio::spawn({
            let drain = drain.clone();
            async move {
                drain
                    .graceful(async move { end.await.is_ok() }, move |_| {
                        ended.take().unwrap().send(()).unwrap();
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        assert!(!conn.is_finished());
        drain.begin();
        assert!(
            conn.await.unwrap(),
            "the connection ran on to its end after shutdown"
        );
        // Ended on its own before any drain: no shutdown call.
        let calm = Drain::new();
        assert_eq!(calm.graceful(async { 5 }, |_| panic!("no drain")).await, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_guard_cuts() {
        let drain = Drain::new();
        let task = tokio::spawn(drain.run(std::future::pending::<()>()));
        drop(drain.cut_on_drop());
        assert!(drain.is_cut() && drain.closing().is_cancelled() && drain.draining());
        assert_eq!(task.await.unwrap(), None);
        drain.idle().await;
    }

    #[test]
    fn a_response_head_gets_connection_close_once() {
        let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n".to_vec();
        mark_close(&mut head);
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
        );
        mark_close(&mut head);
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_worker_view_follows_the_drain_and_shares_its_count() {
        let drain = Drain::new();
        let worker = drain.for_worker();
        let live = worker.track();
        assert_eq!(drain.live(), 1, "one count for every view");
        assert!(!worker.draining());
        drain.begin();
        assert!(
            worker.draining(),
            "the worker's token is cancelled with the drain's"
        );
        worker.started().await;
        drain.cut();
        assert!(worker.is_cut());
        drop(live);
        drain.idle().await;
    }
}
