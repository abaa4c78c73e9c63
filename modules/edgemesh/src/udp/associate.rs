//! SOCKS5 UDP ASSOCIATE (RFC 1928 §7) on the explicit proxy: a client without
//! interception (an app in the cloud, a host without iptables rights) sends datagrams for
//! UDP Services, by name or ClusterIP, to a relay socket; each destination Service port is
//! a flow of its own, balanced and tunnelled like an intercepted one, and its replies come
//! back wrapped in the SOCKS5 UDP header naming the Service's ClusterIP:port.
//!
//! The association lives as long as its control connection. Only datagrams from the
//! client's host are taken, and once the first one has come (or the request named the
//! port), only from that address. Fragmented datagrams (`FRAG` ≠ 0) are dropped, as RFC
//! 1928 allows a relay that does not reassemble.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::flow::{self, Return};
use super::port::Flows;
use crate::explicit::resolve_udp;
use crate::metrics::Reason;
use crate::shared::Shared;

/// Where a client's datagram is going, as its SOCKS5 UDP header says.
#[derive(Debug, PartialEq, Eq)]
pub struct Destination {
    /// A name or an IP address, as text.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Where the payload starts.
    pub data_at: usize,
}

/// Reads a SOCKS5 UDP request header: `RSV(2) FRAG ATYP DST.ADDR DST.PORT`.
pub fn parse_header(datagram: &[u8]) -> Result<Destination, &'static str> {
    let short = "shorter than its SOCKS5 UDP header";
    let [_, _, frag, atyp, rest @ ..] = datagram else {
        return Err(short);
    };
    if *frag != 0 {
        return Err("a fragment (FRAG is not 0): not reassembled");
    }
    let (host, rest) = match atyp {
        1 => {
            let (ip, rest) = rest.split_first_chunk::<4>().ok_or(short)?;
            (Ipv4Addr::from(*ip).to_string(), rest)
        }
        4 => {
            let (ip, rest) = rest.split_first_chunk::<16>().ok_or(short)?;
            (Ipv6Addr::from(*ip).to_string(), rest)
        }
        3 => {
            let (len, rest) = rest.split_first().ok_or(short)?;
            let len = usize::from(*len);
            if rest.len() < len {
                return Err(short);
            }
            let name = std::str::from_utf8(&rest[..len]).map_err(|_| "a name that is not UTF-8")?;
            (name.to_owned(), &rest[len..])
        }
        _ => return Err("an unknown address type"),
    };
    let (port, rest) = rest.split_first_chunk::<2>().ok_or(short)?;
    Ok(Destination {
        host,
        port: u16::from_be_bytes(*port),
        data_at: datagram.len() - rest.len(),
    })
}

/// An address as SOCKS5 writes it: `ATYP ADDR PORT`.
pub(crate) fn socks_address(addr: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 16 + 2);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// The header put before each reply from Service address `vip`.
fn reply_header(vip: SocketAddr) -> Box<[u8]> {
    let mut header = vec![0, 0, 0];
    header.extend_from_slice(&socks_address(vip));
    header.into_boxed_slice()
}

/// Relays `peer`'s association on `relay` until `control` closes. `expect` is the address
/// the client said it would send from (any part may be zero: unknown).
pub async fn serve(
    mut control: TcpStream,
    relay: UdpSocket,
    peer: SocketAddr,
    expect: SocketAddr,
    shared: Arc<Shared>,
) {
    static BAD: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(10));
    let Some(ports) = shared.udp.clone() else {
        return;
    };
    let relay = Arc::new(relay);
    let flows: Flows = Arc::default();
    let stop = CancellationToken::new();
    let _end_flows = stop.clone().drop_guard();
    let mut client = (expect.port() != 0).then(|| SocketAddr::new(peer.ip(), expect.port()));
    let mut buf = vec![0u8; 65_536];
    let mut ignored = [0u8; 256];
    loop {
        let (n, from) = tokio::select! {
            // Nothing more is said on the control connection: its end ends the association.
            read = control.read(&mut ignored) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            got = relay.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(_) => continue,
            },
        };
        if from.ip() != peer.ip() || client.is_some_and(|c| c != from) {
            BAD.warn(format_args!(
                "socks5 udp: datagram from {from} on {peer}'s association dropped"
            ));
            continue;
        }
        client = Some(from);
        let to = match parse_header(&buf[..n]) {
            Ok(to) => to,
            Err(why) => {
                shared.unknown.error(Reason::bad_request);
                BAD.warn(format_args!("socks5 udp: {peer}: datagram dropped: {why}"));
                continue;
            }
        };
        // Counted as unknown_service when it names no UDP Service port.
        let Ok(vip) = resolve_udp(&to.host, to.port, &shared) else {
            BAD.warn(format_args!(
                "socks5 udp: {peer}: no UDP Service at {}:{}",
                to.host, to.port
            ));
            continue;
        };
        let known = flows.lock().expect("flows poisoned").get(&vip).cloned();
        let flow = match known {
            Some(flow) => flow,
            None => {
                let back = Return {
                    client: from,
                    local: None,
                    key: vip,
                    header: Some(reply_header(vip)),
                };
                match flow::start(vip, back, &relay, &ports, &flows, &stop) {
                    Some(flow) => flow,
                    None => continue,
                }
            }
        };
        flow.forward(&buf[to.data_at..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_every_address_type() {
        let mut d = vec![0, 0, 0, 1, 10, 96, 0, 53, 0, 53];
        d.extend_from_slice(b"query");
        let to = parse_header(&d).unwrap();
        assert_eq!((to.host.as_str(), to.port), ("10.96.0.53", 53));
        assert_eq!(&d[to.data_at..], b"query");

        let mut d = vec![0, 0, 0, 3, 3];
        d.extend_from_slice(b"dns\x00\x35x");
        let to = parse_header(&d).unwrap();
        assert_eq!((to.host.as_str(), to.port, to.data_at), ("dns", 53, 10));

        let mut d = vec![0, 0, 0, 4];
        d.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        d.extend_from_slice(&[0, 7]);
        let to = parse_header(&d).unwrap();
        assert_eq!((to.host.as_str(), to.port, to.data_at), ("::1", 7, 22));
    }

    #[test]
    fn bad_headers_are_refused_not_misread() {
        for bad in [
            &[][..],
            &[0, 0, 0],
            &[0, 0, 1, 1, 10, 0, 0, 1, 0, 53],
            &[0, 0, 0, 1, 10, 0, 0],
            &[0, 0, 0, 3, 9, b'a'],
            &[0, 0, 0, 3, 1, 0xff, 0, 53],
            &[0, 0, 0, 9, 0, 0],
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies_name_the_service_address() {
        let h = reply_header("10.96.0.53:53".parse().unwrap());
        assert_eq!(&*h, &[0, 0, 0, 1, 10, 96, 0, 53, 0, 53]);
        assert_eq!(
            parse_header(&h).unwrap().host,
            "10.96.0.53",
            "a reply header reads as a request header"
        );
    }
}
