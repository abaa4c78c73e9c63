//! One UDP Service port: takes every datagram its REDIRECT brings, finds or starts the
//! sender's flow and passes the datagram on to the flow's endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::Ports;
use super::flow::{self, Flow};
use super::pktinfo;

/// The flows of one port, by client address.
pub(super) type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// Serves Service port `vip` on `socket` until `stop`.
pub(super) async fn serve(
    vip: SocketAddr,
    socket: Arc<UdpSocket>,
    ports: Arc<Ports>,
    stop: CancellationToken,
) {
    static RECV: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(10));
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut control = pktinfo::control_buffer();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let (n, client, local) = tokio::select! {
            _ = &mut cancelled => break,
            got = pktinfo::recv(&socket, &mut buf, &mut control) => match got {
                Ok(got) => got,
                // A client's ICMP error lands here on some kernels; the port goes on.
                Err(e) => {
                    RECV.warn(format_args!("udp {vip}: receive: {e}"));
                    continue;
                }
            },
        };
        let known = flows.lock().expect("flows poisoned").get(&client).cloned();
        let flow = match known {
            Some(flow) => flow,
            None => match flow::start(
                vip,
                intercepted(client, local),
                &socket,
                &ports,
                &flows,
                &stop,
            ) {
                Some(flow) => flow,
                None => continue,
            },
        };
        flow.forward(&buf[..n]);
    }
    // Flows end with their port (their tasks hold children of `stop`).
    flows.lock().expect("flows poisoned").clear();
}

/// An intercepted client's flow: keyed by the client, answered from the address it sent to.
fn intercepted(client: SocketAddr, local: Option<std::net::Ipv4Addr>) -> flow::Return {
    flow::Return {
        client,
        local,
        key: client,
        header: None,
    }
}
