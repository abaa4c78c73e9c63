//! The UDP benchmark's two ends (bench/udp.sh builds and runs it):
//!
//! - `udp_load echo ADDR`: a UDP echo server on one blocking thread;
//! - `udp_load load TARGET FLOWS SECONDS SIZE`: FLOWS client sockets (flows), each sending a
//!   SIZE-byte datagram and waiting for its echo before the next (closed loop, a datagram
//!   lost after 200 ms counts as lost), all on one thread; prints `datagrams/s p50_us
//!   p99_us lost`;
//! - `udp_load hold TARGET FLOWS`: opens FLOWS flows with one echoed datagram each, prints
//!   `held N`, then keeps them open until killed (for the RSS of a proxy holding them).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: udp_load echo ADDR | load TARGET FLOWS SECONDS SIZE | hold TARGET FLOWS";
    match args.get(1).map(String::as_str) {
        Some("echo") => echo(args[2].parse().expect(usage)),
        Some("load") => load(
            args[2].parse().expect(usage),
            args[3].parse().expect(usage),
            args[4].parse().expect(usage),
            args[5].parse().expect(usage),
        ),
        Some("hold") => hold(args[2].parse().expect(usage), args[3].parse().expect(usage)),
        _ => panic!("{usage}"),
    }
}

fn echo(addr: SocketAddr) {
    let socket = UdpSocket::bind(addr).unwrap();
    let mut buf = [0u8; 65_536];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        let _ = socket.send_to(&buf[..n], from);
    }
}

fn load(target: SocketAddr, flows: usize, seconds: u64, size: usize) {
    // One thread for the whole load, so the proxy under test keeps the other core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut rtts, lost) = runtime.block_on(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..flows)
            .map(|_| tokio::spawn(flow(target, deadline, size)))
            .collect();
        let (mut rtts, mut lost) = (Vec::new(), 0u64);
        for t in tasks {
            let (r, l) = t.await.unwrap();
            rtts.extend(r);
            lost += l;
        }
        (rtts, lost)
    });
    rtts.sort_unstable();
    let pct = |p: f64| {
        let i = ((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1));
        rtts.get(i).copied().unwrap_or(0)
    };
    println!(
        "{:.0} {} {} {lost}",
        rtts.len() as f64 / seconds as f64,
        pct(0.50),
        pct(0.99)
    );
}

/// One closed-loop flow: a datagram out, its echo back (or 200 ms), the next.
async fn flow(target: SocketAddr, deadline: tokio::time::Instant, size: usize) -> (Vec<u32>, u64) {
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    socket.connect(target).await.unwrap();
    let payload = vec![b'x'; size];
    let mut buf = vec![0u8; size.max(64) + 64];
    let (mut rtts, mut lost) = (Vec::with_capacity(1 << 16), 0u64);
    while tokio::time::Instant::now() < deadline {
        let sent = Instant::now();
        if socket.send(&payload).await.is_err() {
            lost += 1;
            continue;
        }
        match tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await {
            Ok(Ok(_)) => rtts.push(sent.elapsed().as_micros() as u32),
            _ => lost += 1,
        }
    }
    (rtts, lost)
}

fn hold(target: SocketAddr, flows: usize) {
    // One flow at a time, each waiting for its echo: a burst of ten thousand first
    // datagrams would overflow the proxy's socket buffer, in any proxy.
    let mut socks = Vec::with_capacity(flows);
    let mut held = 0;
    let mut buf = [0u8; 64];
    for _ in 0..flows {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(target).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = s.send(b"hold");
        held += usize::from(s.recv(&mut buf).is_ok());
        socks.push(s);
    }
    println!("held {held}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
