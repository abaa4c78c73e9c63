//! Datagrams on a tunnel stream (protocol hint `Datagram`): one Data frame per datagram,
//! never split or merged, so its boundaries survive the hops. Nothing is added to UDP: no
//! ordering beyond the link's own, no retransmission. A datagram the stream's window has
//! no room for is dropped and counted, never queued, so a hop holds at most a window per
//! stream as with TCP. Zero-length datagrams are not carried (an empty Data frame means
//! nothing on a stream).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use proto::stream::{HEADER_LEN, StreamCodec};
use tokio::net::UdpSocket;

use super::TunnelStream;
use crate::idle::Watch;
use crate::metrics::{Reason, ServiceStats};

/// Whether a datagram went on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// On the link.
    Sent,
    /// Dropped: the window had no room, or it is larger than a frame.
    Dropped,
}

/// A tunnel stream carrying datagrams.
#[derive(Debug)]
pub struct DatagramStream(TunnelStream);

impl DatagramStream {
    /// Carries datagrams on `stream`.
    pub fn new(stream: TunnelStream) -> Self {
        DatagramStream(stream)
    }

    /// Sends one datagram now, or drops it when the window has no room for all of it. An
    /// error means the stream is over (reset, or the link is down).
    pub fn send(&self, datagram: &[u8]) -> io::Result<Sent> {
        let max = StreamCodec::default().max_data_len();
        if datagram.is_empty() || datagram.len() > max {
            return Ok(Sent::Dropped);
        }
        if !self.0.try_reserve(datagram.len())? {
            return Ok(Sent::Dropped);
        }
        let mut frame = BytesMut::with_capacity(HEADER_LEN + datagram.len());
        frame.put_bytes(0, HEADER_LEN);
        frame.put_slice(datagram);
        self.0.send_data(frame)?;
        Ok(Sent::Sent)
    }

    /// The next datagram from the far end; `None` when it ended the stream. Call
    /// [`DatagramStream::delivered`] with its length once it is passed on.
    pub async fn recv(&self) -> io::Result<Option<Bytes>> {
        self.0.chunk().await
    }

    /// A datagram taken with [`DatagramStream::recv`] was passed on (or lost): its credit
    /// goes back to the far end.
    pub fn delivered(&self, n: usize) {
        self.0.consumed(n);
    }
}

/// Relays between a UDP socket connected to an endpoint and a datagram stream until the
/// stream ends or nothing has moved for `idle`; counts datagrams, bytes and drops in
/// `stats` (sent: towards the endpoint).
pub async fn relay(
    socket: UdpSocket,
    stream: DatagramStream,
    idle: Duration,
    stats: &ServiceStats,
) -> io::Result<()> {
    let watch = Watch::new(idle);
    let to_endpoint = async {
        while let Some(datagram) = stream.recv().await? {
            match socket.send(&datagram).await {
                Ok(n) => {
                    stats.datagrams_sent.inc();
                    stats.bytes_sent.inc_by(n as u64);
                }
                // An ICMP error from an earlier datagram, or a full buffer: this one is lost.
                Err(_) => stats.error(Reason::upstream),
            }
            stream.delivered(datagram.len());
            watch.touch();
        }
        Ok::<(), io::Error>(())
    };
    let from_endpoint = async {
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = match socket.recv(&mut buf).await {
                Ok(n) => n,
                // "Port unreachable" from the endpoint: nothing listens there now; the
                // flow goes on, as it would for a local client.
                Err(_) => {
                    stats.error(Reason::upstream);
                    continue;
                }
            };
            watch.touch();
            match stream.send(&buf[..n])? {
                Sent::Sent => {
                    stats.datagrams_received.inc();
                    stats.bytes_received.inc_by(n as u64);
                }
                Sent::Dropped => stats.error(Reason::tunnel_backlog),
            }
        }
    };
    tokio::select! {
        ended = to_endpoint => ended,
        failed = from_endpoint => failed,
        _ = watch.expired() => Ok(()),
    }
}

/// A UDP socket connected to `endpoint`, from any local address.
pub fn connect_udp(endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if endpoint.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(endpoint)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}
