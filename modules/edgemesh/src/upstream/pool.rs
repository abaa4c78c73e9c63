//! Kept upstream connections, shared by every client connection of one worker thread:
//! sockets grow with the load, not with clients × endpoints. Each endpoint keeps at most a
//! capped number idle, each for at most the idle expiry; a kept connection is checked
//! before it is handed out (see [`Conn::reusable`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::conn::Conn;

/// Idle connections by endpoint. The lock is per worker thread, so it is never contended
/// on the request path (the explicit proxy's copy is shared by its runtime's threads).
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, VecDeque<(Conn, Instant)>>>,
    /// Idle connections kept per endpoint, at most.
    max_idle: usize,
    /// How long one may stay idle.
    expiry: Duration,
}

impl Pool {
    /// A pool keeping up to `max_idle` connections per endpoint for up to `expiry` each.
    pub fn new(max_idle: usize, expiry: Duration) -> Self {
        Pool {
            idle: Mutex::default(),
            max_idle,
            expiry,
        }
    }

    /// A kept connection to `addr` that is still usable, most recently used first (the
    /// one least likely to have been closed by the endpoint).
    pub fn take(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("pool poisoned");
        let conns = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((conn, since)) = conns.pop_back() {
            if now.duration_since(since) < self.expiry && conn.reusable() {
                return Some(conn);
            }
        }
        idle.remove(&addr);
        None
    }

    /// Keeps `conn` to `addr` for reuse, unless the endpoint has its fill; the oldest
    /// goes first.
    pub fn put(&self, addr: SocketAddr, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().expect("pool poisoned");
        let conns = idle.entry(addr).or_default();
        if conns.len() >= self.max_idle {
            conns.pop_front();
        }
        conns.push_back((conn, Instant::now()));
    }

    /// Closes the connections idle past the expiry; returns how many are left.
    pub fn sweep(&self) -> usize {
        let mut idle = self.idle.lock().expect("pool poisoned");
        let now = Instant::now();
        idle.retain(|_, conns| {
            conns.retain(|(_, since)| now.duration_since(*since) < self.expiry);
            !conns.is_empty()
        });
        idle.values().map(VecDeque::len).sum()
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.idle
            .lock()
            .expect("pool poisoned")
            .values()
            .map(VecDeque::len)
            .sum()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn kept_connections_are_capped_per_endpoint_and_expire() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut servers = Vec::new();
        let pool = Pool::new(2, Duration::from_secs(60));
        for _ in 0..3 {
            let conn = Conn::Tcp(TcpStream::connect(addr).await.unwrap());
            servers.push(listener.accept().await.unwrap().0);
            pool.put(addr, conn);
        }
        assert_eq!(pool.len(), 2, "capped at 2 per endpoint");
        assert!(pool.take(addr).is_some());
        assert!(pool.take(addr).is_some());
        assert!(pool.take(addr).is_none());
        assert!(pool.is_empty());

        let expiring = Pool::new(4, Duration::ZERO);
        expiring.put(addr, Conn::Tcp(TcpStream::connect(addr).await.unwrap()));
        assert!(expiring.take(addr).is_none(), "expired");
        expiring.put(addr, Conn::Tcp(TcpStream::connect(addr).await.unwrap()));
        assert_eq!(expiring.sweep(), 0);
    }

    #[tokio::test]
    async fn a_connection_closed_while_kept_is_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(4, Duration::from_secs(60));
        let conn = Conn::Tcp(TcpStream::connect(addr).await.unwrap());
        let (server, _) = listener.accept().await.unwrap();
        pool.put(addr, conn);
        drop(server);
        let probe = Conn::Tcp(TcpStream::connect(addr).await.unwrap());
        let (_kept_server, _) = listener.accept().await.unwrap();
        // Wait until the close has reached the kept socket (a fresh one stays usable).
        crate::upstream::tests::until(|| {
            let idle = pool.idle.lock().unwrap();
            !idle[&addr][0].0.reusable()
        })
        .await;
        assert!(probe.reusable());
        assert!(pool.take(addr).is_none(), "the closed one is dropped");
    }
}
