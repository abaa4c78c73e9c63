//! The HTTP/1.1 fast path: one task per client connection reads each request head
//! (httparse), balances it, writes it to a kept upstream connection and copies the
//! response back, bodies framed by Content-Length or chunked encoding scanned in place.
//! No channels or extra tasks sit between the two sockets, which is where hyper's
//! general-purpose client and server spend their time on a proxy.
//!
//! Anything unusual (HTTP/1.0, a chunked or `Expect` request, Upgrade) is handed, with the
//! bytes already read, to the hyper path in [`crate::http`] for the rest of the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::catalog::Target;
use crate::error::Error;
use crate::http;
use crate::idle::Watch;
use crate::lb::{InFlight, Strategy};
use crate::metrics::Reason;
use crate::prefixed::Prefixed;
use crate::proxy::{Shared, admit, choose, dial, ip_key};

/// The largest request or response head.
const MAX_HEAD: usize = 32 * 1024;
/// Headers per head, at most.
const MAX_HEADERS: usize = 100;
/// Bytes copied per read.
const CHUNK: usize = 64 * 1024;
/// How long a client may take to send a request head once it started one.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How a body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the request head says, once rewritten for the upstream.
struct Request {
    /// The head to send upstream.
    head: Vec<u8>,
    /// Bytes of the client buffer the head took.
    consumed: usize,
    body: u64,
    close: bool,
    is_head: bool,
    idempotent: bool,
    key: Option<Vec<u8>>,
}

/// What the response head says, rewritten for the client.
struct Response {
    head: Vec<u8>,
    consumed: usize,
    status: u16,
    framing: Framing,
    keep_upstream: bool,
}

enum Parsed<T> {
    Done(T),
    Partial,
    /// Served better by hyper (or refused by it): hand the connection over.
    Hyper,
}

/// One kept upstream connection and the bytes read from it but not yet used.
struct Upstream {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn is_hop_by_hop(name: &str, listed: &[String]) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// Tokens of the Connection headers (other than close/keep-alive, which are handled).
fn connection_tokens(headers: &[httparse::Header<'_>]) -> (Vec<String>, bool) {
    let mut listed = Vec::new();
    let mut close = false;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        for token in String::from_utf8_lossy(h.value).split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("close") {
                close = true;
            } else if !token.is_empty() && !token.eq_ignore_ascii_case("keep-alive") {
                listed.push(token.to_owned());
            }
        }
    }
    (listed, close)
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let n: u64 = std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(())?;
        if found.is_some_and(|f| f != n) {
            return Err(());
        }
        found = Some(n);
    }
    Ok(found)
}

fn parse_request(buf: &[u8], target: &Target) -> Parsed<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    let unusual = req.headers.iter().any(|h| {
        ["transfer-encoding", "upgrade", "expect"]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
    });
    if unusual || path.starts_with("http://") || method == "CONNECT" {
        return Parsed::Hyper;
    }
    let Ok(length) = content_length(req.headers) else {
        return Parsed::Hyper;
    };
    let (listed, close) = connection_tokens(req.headers);
    let key = (target.balancer.strategy() == Strategy::ConsistentHash)
        .then(|| {
            target.hash_key.as_ref().and_then(|name| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value.to_vec())
            })
        })
        .flatten();
    let mut head = Vec::with_capacity(consumed + 16);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    push_end_to_end(&mut head, req.headers, &listed);
    head.extend_from_slice(b"\r\n");
    Parsed::Done(Request {
        head,
        consumed,
        body: length.unwrap_or(0),
        close,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        key,
    })
}

/// Appends `headers` to `head` as `name: value` lines, leaving out the hop-by-hop ones (and
/// those `Connection` lists in `listed`).
fn push_end_to_end(head: &mut Vec<u8>, headers: &[httparse::Header<'_>], listed: &[String]) {
    for h in headers {
        if is_hop_by_hop(h.name, listed) {
            continue;
        }
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
}

fn parse_response(
    buf: &[u8],
    request_is_head: bool,
    client_close: bool,
) -> Result<Parsed<Response>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(Parsed::Partial),
        Ok(httparse::Status::Partial) => return Err("response head too large".into()),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(0);
    let (listed, upstream_close) = connection_tokens(resp.headers);
    let chunked = resp
        .headers
        .iter()
        .rfind(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|h| {
            String::from_utf8_lossy(h.value)
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
    let framing =
        if request_is_head || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::None
        } else {
            match (chunked, content_length(resp.headers)) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) => Framing::UntilClose,
                (None, Ok(Some(n))) => Framing::Length(n),
                (None, Ok(None)) => Framing::UntilClose,
                (None, Err(())) => return Err("conflicting Content-Length".into()),
            }
        };
    let mut head = Vec::with_capacity(consumed + 24);
    head.extend_from_slice(
        format!("HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or("")).as_bytes(),
    );
    push_end_to_end(&mut head, resp.headers, &listed);
    if client_close || framing == Framing::UntilClose {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(Parsed::Done(Response {
        head,
        consumed,
        status,
        framing,
        keep_upstream: version == 1 && !upstream_close && framing != Framing::UntilClose,
    }))
}

/// Reads more into `buf`; `Ok(0)` at the end of the stream.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, watch: &Watch) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let n = stream.read_buf(buf).await?;
    watch.touch();
    Ok(n)
}

/// Where a chunked body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In a size line; the size so far, and whether past its extensions.
    Size(u64, bool),
    /// The LF after a size line's CR.
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// In trailers: at the start of a line (true) or within one.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

/// Scans `bytes` of a chunked body from `state`; returns how many belong to the body
/// (all of them, unless it ends inside) and the new state.
fn scan_chunked(mut state: Chunk, bytes: &[u8]) -> Result<(usize, Chunk), String> {
    let mut i = 0;
    while i < bytes.len() && state != Chunk::Done {
        let b = bytes[i];
        state = match state {
            Chunk::Size(n, ext) => match b {
                b'\r' => Chunk::SizeLf(n),
                _ if ext => Chunk::Size(n, true),
                b';' | b' ' | b'\t' => Chunk::Size(n, true),
                _ => {
                    let digit = (b as char)
                        .to_digit(16)
                        .ok_or_else(|| "bad chunk size".to_owned())?;
                    let n = n
                        .checked_mul(16)
                        .and_then(|n| n.checked_add(u64::from(digit)))
                        .ok_or_else(|| "chunk size overflow".to_owned())?;
                    Chunk::Size(n, false)
                }
            },
            Chunk::SizeLf(n) if b == b'\n' => {
                if n == 0 {
                    Chunk::Trailer(true)
                } else {
                    Chunk::Data(n)
                }
            }
            Chunk::Data(n) => {
                let take = (n as usize).min(bytes.len() - i);
                i += take;
                let left = n - take as u64;
                state = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size(0, false),
            Chunk::Trailer(start) => match b {
                b'\r' => Chunk::TrailerLf(start),
                _ => Chunk::Trailer(false),
            },
            Chunk::TrailerLf(start) if b == b'\n' => {
                if start {
                    Chunk::Done
                } else {
                    Chunk::Trailer(true)
                }
            }
            _ => return Err("malformed chunked body".into()),
        };
        i += 1;
    }
    Ok((i, state))
}

/// Copies one body framed by `framing` from `from` (whose buffer `buf` may already hold
/// some of it) to `to`; bytes read past its end stay in `buf`. Returns the bytes copied.
async fn copy_body(
    from: &mut TcpStream,
    buf: &mut Vec<u8>,
    to: &mut TcpStream,
    framing: Framing,
    watch: &Watch,
) -> Result<u64, String> {
    let mut copied = 0u64;
    let mut chunk = Chunk::Size(0, false);
    let mut left = match framing {
        Framing::None => return Ok(0),
        Framing::Length(n) => n,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    loop {
        if !buf.is_empty() {
            let take = match framing {
                Framing::Chunked => {
                    let (n, state) = scan_chunked(chunk, buf)?;
                    chunk = state;
                    n
                }
                _ => (left.min(buf.len() as u64)) as usize,
            };
            to.write_all(&buf[..take])
                .await
                .map_err(|e| e.to_string())?;
            buf.drain(..take);
            copied += take as u64;
            if let Framing::Length(_) = framing {
                left -= take as u64;
            }
        }
        let done = match framing {
            Framing::Chunked => chunk == Chunk::Done,
            Framing::Length(_) => left == 0,
            _ => false,
        };
        if done {
            return Ok(copied);
        }
        buf.reserve(CHUNK);
        // A known length never reads past its end, so a pipelined next request stays in
        // the socket.
        let room = match framing {
            Framing::Length(_) => left.min(CHUNK as u64),
            _ => CHUNK as u64,
        };
        let n = (&mut *from)
            .take(room)
            .read_buf(buf)
            .await
            .map_err(|e| e.to_string())?;
        watch.touch();
        if n == 0 {
            return match framing {
                Framing::UntilClose => Ok(copied),
                _ => Err("closed before the body ended".into()),
            };
        }
    }
}

/// A client connection, the bytes read from it but not yet used, and its kept upstream
/// connections.
struct Conn {
    client: TcpStream,
    buf: Vec<u8>,
    upstreams: HashMap<SocketAddr, Upstream>,
}

/// How a connection's fast path ended.
enum End {
    Done,
    /// Hand the connection, and the bytes read from it, to hyper.
    Hyper(TcpStream, Vec<u8>),
}
use End::Done;

/// Serves a client connection meant for `dst` whose first bytes are in `buf`; a
/// connection quiet for the idle timeout (or for [`HEAD_TIMEOUT`] in the middle of a
/// request head) is closed.
pub async fn serve(
    client: TcpStream,
    buf: Vec<u8>,
    peer: SocketAddr,
    dst: SocketAddr,
    shared: Arc<Shared>,
) {
    let watch = Watch::new(shared.idle_timeout);
    let ended = tokio::select! {
        end = run(client, buf, peer, dst, &shared, &watch) => end,
        _ = watch.expired() => {
            log::debug!("{peer}: HTTP connection idle; closed");
            Done
        }
    };
    // Outside the watchdog: hyper keeps its own timers, and an upgraded connection may
    // rightly stay quiet.
    if let End::Hyper(client, buf) = ended {
        http::serve(Prefixed::new(buf, client), false, peer, dst, shared).await;
    }
}

async fn run(
    client: TcpStream,
    buf: Vec<u8>,
    peer: SocketAddr,
    dst: SocketAddr,
    shared: &Shared,
    watch: &Watch,
) -> End {
    let mut conn = Conn {
        client,
        buf,
        upstreams: HashMap::new(),
    };
    loop {
        // The next request head.
        let Some(target) = shared.catalog.load().lookup(dst).cloned() else {
            shared.unknown.error(Reason::unknown_service);
            let _ = conn
                .client
                .write_all(&http::refusal_bytes(&Error::UnknownService(dst), true))
                .await;
            return Done;
        };
        let request = loop {
            match parse_request(&conn.buf, &target) {
                Parsed::Done(r) => break r,
                Parsed::Hyper => return End::Hyper(conn.client, conn.buf),
                Parsed::Partial => {
                    // Idle between requests; once a head has started, it must finish.
                    if !conn.buf.is_empty() {
                        watch.set_limit(HEAD_TIMEOUT.min(shared.idle_timeout));
                    }
                    let idle = conn.buf.is_empty();
                    let read = fill(&mut conn.client, &mut conn.buf, watch);
                    match shared.drain.unless_idle(idle, read).await {
                        None | Some(Ok(0) | Err(_)) => return Done,
                        Some(Ok(_)) => {}
                    }
                }
            }
        };
        conn.buf.drain(..request.consumed);
        watch.set_limit(shared.idle_timeout);
        target.stats.http_requests.inc();
        match exchange(&mut conn, &request, peer, &target, shared, watch).await {
            Ok(Some(())) => {}
            Ok(None) => return Done,
            Err(e) => {
                target.stats.failed(&e);
                e.log(peer);
                // A body not yet read cannot be skipped safely: close after answering.
                let close = request.close || request.body > 0 || shared.drain.draining();
                if conn
                    .client
                    .write_all(&http::refusal_bytes(&e, close))
                    .await
                    .is_err()
                    || close
                {
                    return Done;
                }
            }
        }
        if request.close {
            return Done;
        }
    }
}

/// One request and its response. `Ok(None)`: the client connection must end (the
/// response was close-delimited, or a socket failed mid-body).
async fn exchange(
    conn: &mut Conn,
    request: &Request,
    peer: SocketAddr,
    target: &Target,
    shared: &Shared,
    watch: &Watch,
) -> Result<Option<()>, Error> {
    let Conn {
        client,
        buf,
        upstreams,
    } = conn;
    let started = Instant::now();
    let key = (target.balancer.strategy() == Strategy::ConsistentHash)
        .then(|| request.key.clone().unwrap_or_else(|| ip_key(peer)));
    let pick = choose(target, key.as_deref())?;
    let backend = pick.backend;
    admit(target, backend, shared)?;
    let _inflight = InFlight::on(backend);
    let upstream_err = |reason: String| Error::Upstream {
        service: target.service.clone(),
        endpoint: backend.addr,
        reason,
    };
    // A kept connection may have been closed by the endpoint meanwhile: a request without
    // a body that got no answer on it is sent again once on a new connection.
    let mut attempt = 0;
    let (mut upstream, mut response) = loop {
        attempt += 1;
        let (mut up, reused) = match upstreams.remove(&backend.addr) {
            Some(up) => (up, true),
            None => match dial(target, backend, shared).await {
                Ok(stream) => (
                    Upstream {
                        stream,
                        buf: Vec::with_capacity(16 * 1024),
                    },
                    false,
                ),
                Err(e) => {
                    pick.failure();
                    return Err(e);
                }
            },
        };
        let sent = send_request(client, buf, &mut up, request, watch).await;
        let answered = match sent {
            Ok(()) => read_response_head(&mut up, request, watch).await,
            Err(e) => Err((e, false)),
        };
        match answered {
            Ok(r) => break (up, r),
            Err((_, false))
                if reused && attempt == 1 && request.body == 0 && request.idempotent =>
            {
                continue;
            }
            Err((reason, _)) => {
                pick.failure();
                return Err(upstream_err(reason));
            }
        }
    };
    target
        .stats
        .latency
        .observe(started.elapsed().as_secs_f64());
    if response.status >= 500 {
        pick.failure();
        target.stats.error(Reason::upstream);
    } else {
        pick.success();
    }
    let drained = !request.close && shared.drain.draining();
    if drained {
        crate::drain::mark_close(&mut response.head);
    }
    // The head and whatever of the body is already here, in one write.
    let mut out = response.head;
    let body_now = match response.framing {
        Framing::Length(n) => (n.min(upstream.buf.len() as u64)) as usize,
        _ => 0,
    };
    out.extend_from_slice(&upstream.buf[..body_now]);
    upstream.buf.drain(..body_now);
    if client.write_all(&out).await.is_err() {
        return Ok(None);
    }
    let framing = match response.framing {
        Framing::Length(n) => Framing::Length(n - body_now as u64),
        f => f,
    };
    let Upstream {
        stream: mut up_stream,
        buf: mut up_buf,
    } = upstream;
    match copy_body(&mut up_stream, &mut up_buf, client, framing, watch).await {
        Ok(_) if response.framing == Framing::UntilClose => return Ok(None),
        Ok(_) => {
            if response.keep_upstream && up_buf.is_empty() {
                upstreams.insert(
                    backend.addr,
                    Upstream {
                        stream: up_stream,
                        buf: up_buf,
                    },
                );
            }
        }
        Err(e) => {
            log::debug!(
                "{peer}: {}: response body from {}: {e}",
                target.service,
                backend.addr
            );
            return Ok(None);
        }
    }
    Ok((!drained).then_some(()))
}

/// Writes the request head and body upstream.
async fn send_request(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    up: &mut Upstream,
    request: &Request,
    watch: &Watch,
) -> Result<(), String> {
    let body_now = (request.body.min(buf.len() as u64)) as usize;
    if body_now == 0 {
        up.stream
            .write_all(&request.head)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        let mut out = Vec::with_capacity(request.head.len() + body_now);
        out.extend_from_slice(&request.head);
        out.extend_from_slice(&buf[..body_now]);
        buf.drain(..body_now);
        up.stream.write_all(&out).await.map_err(|e| e.to_string())?;
    }
    let rest = request.body - body_now as u64;
    if rest > 0 {
        copy_body(client, buf, &mut up.stream, Framing::Length(rest), watch).await?;
    }
    Ok(())
}

/// Reads the response head (skipping interim 1xx answers). The error says whether any of
/// the response arrived.
async fn read_response_head(
    up: &mut Upstream,
    request: &Request,
    watch: &Watch,
) -> Result<Response, (String, bool)> {
    loop {
        match parse_response(&up.buf, request.is_head, request.close).map_err(|e| (e, true))? {
            Parsed::Done(r) if (100..200).contains(&r.status) => {
                up.buf.drain(..r.consumed);
            }
            Parsed::Done(r) => {
                up.buf.drain(..r.consumed);
                return Ok(r);
            }
            _ => {
                let had = !up.buf.is_empty();
                match fill(&mut up.stream, &mut up.buf, watch).await {
                    Ok(0) => return Err(("closed before answering".into(), had)),
                    Ok(_) => {}
                    Err(e) => return Err((e.to_string(), had)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (n, state) = scan_chunked(Chunk::Size(0, false), body).unwrap();
        assert_eq!(state, Chunk::Done);
        assert_eq!(&body[n..], b"NEXT");
        // Byte by byte gives the same.
        let mut state = Chunk::Size(0, false);
        let mut total = 0;
        for b in body.chunks(1) {
            if state == Chunk::Done {
                break;
            }
            let (n, s) = scan_chunked(state, b).unwrap();
            total += n;
            state = s;
        }
        assert_eq!(total, body.len() - 4);
        assert!(scan_chunked(Chunk::Size(0, false), b"zz\r\n").is_err());
        assert!(scan_chunked(Chunk::Size(0, false), b"2\r\nabX").is_err());
    }
}
