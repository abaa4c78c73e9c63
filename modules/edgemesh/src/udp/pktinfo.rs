//! Datagrams with the local address they were sent to (`IP_PKTINFO`), and replies sent
//! from that same address.
//!
//! A REDIRECTed datagram arrives addressed to 127.0.0.1 when this host sent it, and to the
//! primary address of the interface it came in on otherwise. Conntrack turns a reply back
//! into the ClusterIP:port only when it leaves from exactly that address; a socket bound to
//! 0.0.0.0 lets routing choose the source, which for a local client is the client's own
//! address, so `dig` would see its answer come from the wrong server and drop it.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel to tell each datagram's local address.
pub(super) fn enable(socket: &UdpSocket) -> io::Result<()> {
    setsockopt(socket, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)
}

/// A buffer for one datagram's ancillary data.
pub(super) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(libc::in_pktinfo)
}

/// Receives one datagram: its length, sender and the local address it was sent to.
// nix's recvmsg takes the control buffer as a Vec.
#[allow(clippy::ptr_arg)]
pub(super) async fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
    control: &mut Vec<u8>,
) -> io::Result<(usize, SocketAddr, Option<Ipv4Addr>)> {
    loop {
        socket.readable().await?;
        let got = socket.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            let msg = recvmsg::<SockaddrIn>(
                socket.as_raw_fd(),
                &mut iov,
                Some(control),
                MsgFlags::empty(),
            )
            .map_err(io::Error::from)?;
            let from = msg
                .address
                .map(|a| SocketAddr::V4(SocketAddrV4::from(a)))
                .ok_or_else(|| io::Error::other("a datagram without a sender"))?;
            let local = msg.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|c| match c {
                    ControlMessageOwned::Ipv4PacketInfo(info) => {
                        Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))
                    }
                    _ => None,
                })
            });
            Ok((msg.bytes, from, local))
        });
        match got {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Sends `datagram` to `to` from `local` (the kernel's choice when `None`), without
/// waiting: a full socket buffer is an error, as a full link would lose it.
pub(super) fn try_send(
    socket: &UdpSocket,
    datagram: &[u8],
    to: SocketAddr,
    local: Option<Ipv4Addr>,
) -> io::Result<usize> {
    let SocketAddr::V4(to) = to else {
        return socket2::SockRef::from(socket).send_to(datagram, &to.into());
    };
    let dest = SockaddrIn::from(to);
    let info = local.map(|ip| libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    });
    // Straight to the (non-blocking) socket, not through tokio's readiness: nothing waits
    // here for room, and the kernel says when there is none.
    let iov = [IoSlice::new(datagram)];
    let cmsg = info.as_ref().map(ControlMessage::Ipv4PacketInfo);
    sendmsg(
        socket.as_raw_fd(),
        &iov,
        cmsg.as_slice(),
        MsgFlags::empty(),
        Some(&dest),
    )
    .map_err(io::Error::from)
}
