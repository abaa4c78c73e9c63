//! Spreads intercepted connections over the worker threads by load.
//!
//! Each worker accepts on a socket of its own (`SO_REUSEPORT`), and the kernel picks the
//! socket by a hash of the connection's addresses. That is even only on average: 64
//! connections land 28/36 or worse often enough, and since a connection stays on its
//! thread for life, the busier thread's clients queue behind each other while the other
//! thread has time to spare. So a worker that accepts a connection while another serves
//! fewer hands it over (HAProxy balances its threads' accepted connections the same way).
//! A hand-over costs one wake-up of the other thread, once per connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use beehive::Throttle;
use rustix::process::{Resource, getrlimit};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::drain::Drain;
use crate::error::Result;

/// A connection on its way to another worker, out of the accepting thread's reactor.
struct Handover {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// Counted against the receiving worker from the moment it was picked, so the next
    /// accept anywhere sees it.
    load: Load,
}

/// The connection counts of every worker, and the way to each one's inbox.
pub struct Spread {
    loads: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<Handover>>,
}

/// One worker's place in a [`Spread`]: its index and the connections handed to it.
pub struct Seat {
    index: usize,
    spread: Arc<Spread>,
    inbox: mpsc::UnboundedReceiver<Handover>,
    drain: Drain,
}

/// Counts a connection against its worker until dropped.
pub struct Load {
    spread: Arc<Spread>,
    index: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.spread.loads[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Spread {
    /// A spread over `workers` threads (at least one) and a seat for each.
    pub fn seats(workers: usize) -> Vec<Seat> {
        let workers = workers.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let spread = Arc::new(Spread {
            loads: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders,
        });
        receivers
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Seat {
                index,
                spread: spread.clone(),
                inbox,
                drain: Drain::new(),
            })
            .collect()
    }

    /// Connections each worker serves now.
    pub fn loads(&self) -> Vec<usize> {
        self.loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// The worker that should serve a connection accepted by worker `here`: the least
    /// loaded, `here` itself on a tie (no hand-over when nothing is gained).
    fn pick(&self, here: usize) -> usize {
        let mut best = here;
        let mut least = self.loads[here].load(Ordering::Relaxed);
        for (i, load) in self.loads.iter().enumerate() {
            let load = load.load(Ordering::Relaxed);
            if load < least {
                best = i;
                least = load;
            }
        }
        best
    }

    /// Counts one more connection on worker `index`.
    fn take(self: &Arc<Self>, index: usize) -> Load {
        self.loads[index].fetch_add(1, Ordering::Relaxed);
        Load {
            spread: self.clone(),
            index,
        }
    }
}

impl Seat {
    /// Its worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The spread it belongs to.
    pub fn spread(&self) -> &Arc<Spread> {
        &self.spread
    }

    /// The seat with its connection tasks tracked by `drain` (see [`Seat::serve`]).
    pub fn drained_by(mut self, drain: Drain) -> Self {
        self.drain = drain;
        self
    }

    /// Serves connections until `stop`: those `listener` accepts (when this worker has
    /// one) that are not handed to a less loaded worker, and those handed to this one.
    /// Each runs `serve` in a task of its own, tracked by the seat's drain (ended when it
    /// is cut); a failure is logged once (see [`crate::Error::log`]).
    ///
    /// When `stop` comes with the drain begun, no connection the kernel has already
    /// completed is refused: the ones queued on the listener and in the inbox are served,
    /// and this returns once every tracked connection has ended (the caller's runtime must
    /// outlive them). Without a drain it returns at once.
    pub async fn serve<F, Fut>(
        mut self,
        listener: Option<TcpListener>,
        what: &str,
        stop: CancellationToken,
        mut serve: F,
    ) where
        F: FnMut(TcpStream, SocketAddr) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let drain = self.drain.clone();
        let mut spawn = |stream: TcpStream, peer: SocketAddr, load: Load| {
            let served = serve(stream, peer);
            tokio::spawn(drain.run(async move {
                let _load = load;
                if let Err(e) = served.await {
                    e.log(peer);
                }
            }));
        };
        loop {
            let (stream, peer, load) = tokio::select! {
                _ = stop.cancelled() => break,
                // Matched by hand: with a `Some(..)` pattern a failed accept would disable
                // this branch and leave the select waiting on the others alone.
                accepted = accept(listener.as_ref(), what) => {
                    let Some((stream, peer)) = accepted else { continue };
                    let to = self.spread.pick(self.index);
                    if to == self.index {
                        (stream, peer, self.spread.take(to))
                    } else {
                        match self.hand_over(to, stream, peer) {
                            None => continue,
                            // That worker has stopped taking hand-overs: serve it here.
                            Some(back) => back,
                        }
                    }
                }
                Some(handed) = self.inbox.recv() => match Self::arrived(handed, what) {
                    Some(arrived) => arrived,
                    None => continue,
                },
            };
            spawn(stream, peer, load);
        }
        if !self.drain.draining() {
            return;
        }
        // What the kernel has already accepted would be reset when the socket closes.
        if let Some(listener) = &listener {
            while let Some((stream, peer)) = accept_queued(listener) {
                let load = self.spread.take(self.index);
                spawn(stream, peer, load);
            }
        }
        // Hand-overs sent before the close are still queued; later ones fail and are
        // served by their sender.
        self.inbox.close();
        while let Some(handed) = self.inbox.recv().await {
            if let Some((stream, peer, load)) = Self::arrived(handed, what) {
                spawn(stream, peer, load);
            }
        }
        drop(listener);
        self.drain.idle().await;
    }

    /// A handed-over connection in this worker's reactor.
    fn arrived(handed: Handover, what: &str) -> Option<(TcpStream, SocketAddr, Load)> {
        match TcpStream::from_std(handed.stream) {
            Ok(stream) => Some((stream, handed.peer, handed.load)),
            Err(e) => {
                log::warn!(
                    "{what}: connection from {} lost in a hand-over: {e}",
                    handed.peer
                );
                None
            }
        }
    }

    /// Sends a connection to worker `to`; gives it back (counted here) when that worker
    /// no longer takes hand-overs.
    fn hand_over(
        &self,
        to: usize,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TcpStream, SocketAddr, Load)> {
        let load = self.spread.take(to);
        match stream.into_std() {
            Ok(stream) => {
                let handover = Handover { stream, peer, load };
                match self.spread.inboxes[to].send(handover) {
                    Ok(()) => None,
                    Err(mpsc::error::SendError(back)) => {
                        log::debug!("connection from {peer}: worker {to} has stopped; served here");
                        let stream = TcpStream::from_std(back.stream).ok()?;
                        Some((stream, peer, self.spread.take(self.index)))
                    }
                }
            }
            Err(e) => {
                log::warn!("connection from {peer} lost in a hand-over: {e}");
                None
            }
        }
    }
}

/// A connection already waiting in `listener`'s queue, without waiting for one. Asked of
/// the socket itself: the reactor may not have seen the latest arrivals yet.
fn accept_queued(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let accepted = socket2::SockRef::from(listener)
        .accept()
        .and_then(|(socket, peer)| {
            socket.set_nonblocking(true)?;
            let peer = peer
                .as_socket()
                .ok_or_else(|| std::io::Error::other("peer is not an IP address"))?;
            Ok((TcpStream::from_std(socket.into())?, peer))
        });
    match accepted {
        Ok(accepted) => Some(accepted),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => {
            log::warn!("accept while draining failed: {e}");
            None
        }
    }
}

/// Descriptors a new client may not take, kept for the rest of the process (the health
/// endpoint, the cloud link, metamanager's socket and SQLite, DNS, the upstream connections
/// of the clients already served): this many, plus an eighth of the limit.
const RESERVED_FDS: u64 = 64;

/// Warnings of refused connections and failed accepts: a flood would otherwise write a line
/// per connection.
static REFUSING: Throttle = Throttle::new(Duration::from_secs(10));
static ACCEPT_FAILED: Throttle = Throttle::new(Duration::from_secs(10));

/// The lowest descriptor number a new client may not have: the descriptor limit (read each
/// time, as `prlimit` may change it under a running process) less the reserve, with that
/// limit (`None`: unlimited).
pub fn fd_ceiling() -> (u64, Option<u64>) {
    let limit = getrlimit(Resource::Nofile).current;
    let ceiling = limit.map_or(u64::MAX, |l| l.saturating_sub(RESERVED_FDS + l / 8));
    (ceiling, limit)
}

/// Whether a just-accepted client leaves the process enough descriptors. The kernel hands
/// out the lowest free number, so a descriptor numbered `n` means `0..n` are all open: a
/// free lower bound of what the whole process holds (listeners, upstream connections,
/// files), with no count to keep. Refusing the client beats taking the last descriptors:
/// then the health endpoint, the cloud link and every listener would fail their accepts
/// until the flood ended.
fn admit(stream: &TcpStream, what: &str) -> bool {
    use std::os::fd::AsRawFd;
    let number = u64::try_from(stream.as_raw_fd()).unwrap_or(0);
    let (ceiling, limit) = fd_ceiling();
    if number < ceiling {
        return true;
    }
    let limit = limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
    REFUSING.warn(format_args!(
        "{what}: refusing new connections: {number} descriptors open, near the descriptor \
         limit ({limit}); the rest are kept for the health endpoint, the cloud link and \
         the connections already served"
    ));
    false
}

/// The next connection `listener` accepts and admits ([`admit`]); never, without a
/// listener. A connection beyond the descriptor reserve is reset at once (a refusal the
/// client sees now, rather than a wait in the listen queue) and yields `None`. A failed
/// accept is logged (throttled) and yields `None` after a pause rather than a spin: it is
/// usually a lack of descriptors, and the connection stays queued until one is free.
pub async fn accept(listener: Option<&TcpListener>, what: &str) -> Option<(TcpStream, SocketAddr)> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    match listener.accept().await {
        Ok((stream, peer)) => {
            if admit(&stream, what) {
                return Some((stream, peer));
            }
            // A reset, not an orderly close: nothing was said, and no TIME_WAIT is left
            // behind on this side of a flood.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            None
        }
        Err(e) => {
            ACCEPT_FAILED.warn(format_args!("{what}: accept failed: {e}"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn accepts_on_one_worker_are_evened_out_and_released() {
        let seats = Spread::seats(3);
        let spread = seats[0].spread().clone();
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(spread.take(spread.pick(0)));
        }
        assert_eq!(spread.loads(), vec![4, 3, 3]);
        // A tie keeps the connection where it was accepted.
        let seats = Spread::seats(2);
        let even = seats[1].spread().clone();
        let _one = even.take(0);
        let _two = even.take(1);
        assert_eq!(even.pick(1), 1);
        assert_eq!(even.pick(0), 0);
        held.truncate(4);
        assert_eq!(spread.loads().iter().sum::<usize>(), 4);
        drop(held);
        assert_eq!(spread.loads(), vec![0, 0, 0]);
    }

    /// Two worker threads, only the first with a listener (the kernel sending every
    /// connection to one socket): half of the connections are served on the second.
    #[test]
    fn a_real_connection_is_served_by_the_worker_it_is_handed_to() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let seats = Spread::seats(2);
        let spread = seats[0].spread().clone();
        let mut listener = Some(listener);
        let workers: Vec<_> = seats
            .into_iter()
            .map(|seat| {
                let listener = if seat.index() == 0 {
                    listener.take()
                } else {
                    None
                };
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("worker-{}", seat.index()))
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        runtime.block_on(async move {
                            let listener = listener.map(|l| TcpListener::from_std(l).unwrap());
                            seat.serve(listener, "test", stop, |mut stream, _| async move {
                                let name = std::thread::current().name().unwrap().to_owned();
                                stream.write_all(name.as_bytes()).await?;
                                let mut rest = Vec::new();
                                stream.read_to_end(&mut rest).await?;
                                Ok(())
                            })
                            .await
                        })
                    })
                    .unwrap()
            })
            .collect();

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut clients = Vec::new();
            let mut served_by = Vec::new();
            for _ in 0..10 {
                let mut client = TcpStream::connect(addr).await.unwrap();
                let mut name = [0u8; 8];
                client.read_exact(&mut name).await.unwrap();
                served_by.push(String::from_utf8_lossy(&name).into_owned());
                clients.push(client);
            }
            let on = |w: &str| served_by.iter().filter(|n| *n == w).count();
            assert_eq!((on("worker-0"), on("worker-1")), (5, 5), "{served_by:?}");
            assert_eq!(spread.loads(), vec![5, 5]);
            drop(clients);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while spread.loads() != vec![0, 0] {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:?}",
                    spread.loads()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        stop.cancel();
        for worker in workers {
            worker.join().unwrap();
        }
    }

    /// A drain stops the accepting without refusing what the kernel already queued, and
    /// waits for the connections it serves.
    #[tokio::test]
    async fn a_drained_seat_serves_its_queue_and_waits_for_its_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Handshakes complete in the kernel's queue before the seat ever runs.
        let mut queued = Vec::new();
        for _ in 0..3 {
            queued.push(TcpStream::connect(addr).await.unwrap());
        }
        let drain = Drain::new();
        let stop = drain.closing();
        drain.stop_accepting();
        let seat = Spread::seats(1).pop().unwrap().drained_by(drain.clone());
        let serving = tokio::spawn(async move {
            seat.serve(Some(listener), "test", stop, |mut stream, _| async move {
                stream.write_all(b"hi").await?;
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await?;
                Ok(())
            })
            .await
        });
        for client in &mut queued {
            let mut hi = [0u8; 2];
            client.read_exact(&mut hi).await.unwrap();
            assert_eq!(&hi, b"hi");
        }
        assert_eq!(drain.live(), 3);
        assert!(!serving.is_finished());
        drop(queued);
        serving.await.unwrap();
        assert_eq!(drain.live(), 0);
        // The listener is closed: a new connection is refused.
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
