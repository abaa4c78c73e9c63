//! The Service DNS server, over UDP and TCP: Service names get their ClusterIP, unknown
//! names inside the cluster domain get NXDOMAIN, and every other name is forwarded to the
//! upstream servers, with a small cache. It never touches the host's resolv.conf: apps
//! (or their pods' dnsConfig) point at it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::metrics::{DnsOutcome, Metrics};
use crate::names::Names;

/// Warnings of failed accepts (out of descriptors, usually): at most one per 10 s.
static ACCEPT_FAILED: beehive::Throttle =
    beehive::Throttle::new(std::time::Duration::from_secs(10));

/// TTL of Service answers: short, since ClusterIPs are reassigned when Services are
/// recreated.
const SERVICE_TTL: u32 = 5;
/// The longest a forwarded answer is cached, and how long a negative one is.
const MAX_CACHE_TTL: u32 = 300;
const NEGATIVE_TTL: u32 = 30;
/// A TCP client silent this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// UDP queries answered at once, at most: beyond this a flood is dropped (and counted)
/// rather than turned into as many tasks and upstream sockets.
const MAX_UDP_IN_FLIGHT: usize = 1024;

/// `IP` or `IP:port` (53 when left out) of an upstream server.
pub fn upstream_addr(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The nameservers of a resolv.conf.
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            // A zone index (fe80::1%eth0) cannot be dialled from here without more work.
            upstream_addr(rest.split('%').next().unwrap_or_default())
        })
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CacheKey {
    name: String,
    kind: RecordType,
    class: DNSClass,
}

struct Cached {
    answer: Message,
    stored: Instant,
    expires: Instant,
}

/// The server's state.
pub struct Dns {
    catalog: Arc<ArcSwap<Catalog>>,
    names: Names,
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<HashMap<CacheKey, Cached>>,
    cache_size: usize,
    metrics: Arc<Metrics>,
}

impl Dns {
    /// A server answering from `catalog`, forwarding to `upstreams`.
    pub fn new(
        catalog: Arc<ArcSwap<Catalog>>,
        names: Names,
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
        cache_size: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Dns {
            catalog,
            names,
            upstreams,
            timeout,
            cache: Mutex::default(),
            cache_size,
            metrics,
        }
    }

    /// Serves UDP on `udp` and TCP on `tcp` until `stop`.
    pub async fn serve(self: Arc<Self>, udp: UdpSocket, tcp: TcpListener, stop: CancellationToken) {
        let udp = Arc::new(udp);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_UDP_IN_FLIGHT));
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = udp.recv_from(&mut buf) => {
                    let (n, from) = match received {
                        Ok(r) => r,
                        Err(e) => {
                            log::debug!("dns: udp receive: {e}");
                            continue;
                        }
                    };
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        self.metrics.dns(DnsOutcome::dropped);
                        continue;
                    };
                    let packet = buf[..n].to_vec();
                    let (this, udp) = (self.clone(), udp.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Some(answer) = this.answer(&packet, false).await
                            && let Err(e) = udp.send_to(&answer, from).await
                        {
                            log::debug!("dns: answering {from}: {e}");
                        }
                    });
                }
                accepted = tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let this = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.serve_tcp(stream).await {
                                log::debug!("dns: tcp {peer}: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of descriptors, mostly: pause rather than spin on it.
                        ACCEPT_FAILED.warn(format_args!("dns: accept failed: {e}"));
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    async fn serve_tcp(&self, mut stream: TcpStream) -> Result<()> {
        loop {
            let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
                Err(_) => return Ok(()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(len) => len?,
            };
            let mut packet = vec![0u8; usize::from(len)];
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet))
                .await
                .map_err(|_| Error::Protocol("DNS message cut short".into()))??;
            // A malformed message ends the connection: the framing can no longer be trusted.
            let Some(answer) = self.answer(&packet, true).await else {
                return Ok(());
            };
            let len = u16::try_from(answer.len())
                .map_err(|_| Error::Protocol("answer over 64 KiB".into()))?;
            stream.write_u16(len).await?;
            stream.write_all(&answer).await?;
        }
    }

    /// The answer to one packet, or nothing for a malformed one (counted).
    pub async fn answer(&self, packet: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
        let Ok(request) = Message::from_vec(packet) else {
            self.metrics.dns_malformed();
            return None;
        };
        if request.metadata.message_type != MessageType::Query {
            self.metrics.dns_malformed();
            return None;
        }
        let response = self.respond(&request, packet, over_tcp).await;
        let mut bytes = response.to_vec().ok()?;
        let limit = usize::from(request.max_payload().max(512));
        if !over_tcp && bytes.len() > limit {
            // Too big for the client's UDP buffer: the truncation bit sends it to TCP.
            let mut short = response.truncate();
            short.metadata.truncation = true;
            bytes = short.to_vec().ok()?;
        }
        Some(bytes)
    }

    async fn respond(&self, request: &Message, packet: &[u8], over_tcp: bool) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        response.add_query(query.clone());
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response;
        }
        let host = query.name.to_lowercase().to_ascii();
        let host = host.trim_end_matches('.');
        if let Some(service) = self.names.service(host) {
            let ip = self
                .catalog
                .load()
                .cluster_ip(&service.namespace, &service.name);
            if let Some(ip) = ip {
                response.metadata.authoritative = true;
                let rdata = match (query.query_type, ip) {
                    (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
                    (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
                    // Any other type: the name exists, with nothing of that type.
                    _ => None,
                };
                if let Some(rdata) = rdata {
                    response.add_answer(Record::from_rdata(query.name.clone(), SERVICE_TTL, rdata));
                }
                self.metrics.dns(DnsOutcome::service);
                return response;
            }
            if service.qualified {
                return self.nxdomain(response);
            }
        }
        if self.names.in_domain(host) {
            return self.nxdomain(response);
        }
        self.forward(request, packet, query, over_tcp).await
    }

    fn nxdomain(&self, mut response: Message) -> Message {
        response.metadata.authoritative = true;
        response.metadata.response_code = ResponseCode::NXDomain;
        self.metrics.dns(DnsOutcome::nxdomain);
        response
    }

    async fn forward(
        &self,
        request: &Message,
        packet: &[u8],
        query: &hickory_proto::op::Query,
        over_tcp: bool,
    ) -> Message {
        let key = CacheKey {
            name: query.name.to_lowercase().to_ascii(),
            kind: query.query_type,
            class: query.query_class,
        };
        if let Some(mut hit) = self.cached(&key) {
            hit.metadata.id = request.metadata.id;
            self.metrics.dns(DnsOutcome::cached);
            return hit;
        }
        for upstream in &self.upstreams {
            let asked = if over_tcp {
                ask_tcp(*upstream, packet, self.timeout).await
            } else {
                ask_udp(*upstream, packet, request.metadata.id, self.timeout).await
            };
            match asked {
                Ok(answer) => {
                    self.store(key, &answer);
                    self.metrics.dns(DnsOutcome::forwarded);
                    return answer;
                }
                Err(e) => log::debug!("dns: upstream {upstream}: {e}"),
            }
        }
        self.metrics.dns(DnsOutcome::failed);
        let mut failed = Message::response(request.metadata.id, request.metadata.op_code);
        failed.add_query(query.clone());
        failed.metadata.recursion_desired = request.metadata.recursion_desired;
        failed.metadata.response_code = ResponseCode::ServFail;
        failed
    }

    fn cached(&self, key: &CacheKey) -> Option<Message> {
        let cache = self.cache.lock().expect("dns cache poisoned");
        let entry = cache.get(key)?;
        let now = Instant::now();
        if now >= entry.expires {
            return None;
        }
        let aged = now.duration_since(entry.stored).as_secs() as u32;
        let mut answer = entry.answer.clone();
        for record in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
            .chain(answer.additionals.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(aged);
        }
        Some(answer)
    }

    fn store(&self, key: CacheKey, answer: &Message) {
        let ttl = match answer.metadata.response_code {
            _ if answer.metadata.truncation => return,
            ResponseCode::NoError | ResponseCode::NXDomain => answer
                .answers
                .iter()
                .chain(answer.authorities.iter())
                .map(|r| r.ttl)
                .min()
                .unwrap_or(NEGATIVE_TTL)
                .min(MAX_CACHE_TTL),
            _ => return,
        };
        if ttl == 0 {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("dns cache poisoned");
        if cache.len() >= self.cache_size {
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= self.cache_size
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            key,
            Cached {
                answer: answer.clone(),
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
            },
        );
    }
}

/// Asks `upstream` over UDP from a fresh socket (a random source port per query).
async fn ask_udp(upstream: SocketAddr, packet: &[u8], id: u16, wait: Duration) -> Result<Message> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| Error::Protocol("no answer in time".into()))??;
        // Anything that is not the answer to this query is ignored, not trusted.
        if let Ok(answer) = Message::from_vec(&buf[..n])
            && answer.metadata.id == id
            && answer.metadata.message_type == MessageType::Response
        {
            return Ok(answer);
        }
    }
}

/// Asks `upstream` over TCP.
async fn ask_tcp(upstream: SocketAddr, packet: &[u8], wait: Duration) -> Result<Message> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let len =
            u16::try_from(packet.len()).map_err(|_| Error::Protocol("query over 64 KiB".into()))?;
        stream.write_u16(len).await?;
        stream.write_all(packet).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        Message::from_vec(&buf).map_err(|e| Error::Protocol(format!("upstream answer: {e}")))
    };
    tokio::time::timeout(wait, exchange)
        .await
        .map_err(|_| Error::Protocol("no answer in time".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_resolv_conf_lines() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver  fe80::1%eth0\nnameserver 127.0.0.53\noptions edns0\n";
        assert_eq!(
            resolv_conf_servers(text),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap()
            ]
        );
        assert_eq!(
            upstream_addr("1.1.1.1:5353"),
            Some("1.1.1.1:5353".parse().unwrap())
        );
        assert_eq!(upstream_addr("dns.google"), None);
    }
}
