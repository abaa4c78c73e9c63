//! The HTTP/1.1 fast path: one task per client connection reads each request head
//! (httparse), checks its framing strictly ([`framing`]), balances it through the upstream
//! seam, writes it to a kept or new upstream connection and copies the response back,
//! bodies framed by Content-Length or chunked encoding checked byte by byte as they pass.
//! No channels or extra tasks sit between the two sockets, which is where hyper's
//! general-purpose client and server spend their time on a proxy.
//!
//! Faults are typed by side: a malformed, oversized or stalled request is answered 4xx and
//! never counts against the endpoint; only the endpoint's own failures reach its breaker.
//! A kept upstream connection found closed before any response byte is replaced and the
//! request sent again (see [`exchange`]).
//!
//! `Expect: 100-continue` is answered here, the way nginx does: `100 Continue` once the
//! request is on its way upstream and its body is still to come; `Expect` is not passed on.
//! HTTP/1.0 and Upgrade requests are handed, once their head passed the same checks, to
//! the hyper path in [`crate::http`] for the rest of the connection.

pub mod framing;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::catalog::Target;
use crate::error::Error;
use crate::http;
use crate::idle::Watch;
use crate::lb::Strategy;
use crate::metrics::Reason;
use crate::prefixed::Prefixed;
use crate::refusal;
use crate::shared::{Limits, Shared, ip_key};
use crate::upstream::Conn;
use framing::{Chunked, Framing, Refusal};

/// Headers per head, at most (more is answered 431).
const MAX_HEADERS: usize = 100;
/// Headers per upstream response head, at most (more is the endpoint's fault, 502): one
/// fewer than a client takes, since a `connection: close` may be added on the way, and
/// hyper and edgemesh itself refuse a head of 101.
const MAX_RESPONSE_HEADERS: usize = MAX_HEADERS - 1;
/// Bytes copied per read.
const CHUNK: usize = 64 * 1024;

/// What the request head says, once rewritten for the upstream.
struct Request {
    /// The head to send upstream.
    head: Vec<u8>,
    /// Bytes of the client buffer the head took.
    consumed: usize,
    framing: Framing,
    close: bool,
    is_head: bool,
    idempotent: bool,
    /// The client waits for `100 Continue` before it sends the body.
    expect_continue: bool,
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

enum Head<T> {
    Done(T),
    Partial,
    /// Valid, but served better by hyper: hand the connection over.
    Hyper,
    /// Refused; the error says with what.
    Refused(Error),
}

fn is_hop_by_hop(name: &str, listed: &[String]) -> bool {
    const HOP: [&str; 11] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        // Answered here (see the module doc).
        "expect",
        // Framing is rewritten from what was checked, never copied.
        "content-length",
        "transfer-encoding",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// Tokens of the Connection headers (other than close/keep-alive, which are handled).
/// `Host` is never one: it is meant for every recipient (RFC 9110 §7.6.1), and dropping it
/// would send the upstream an HTTP/1.1 request without the Host it requires.
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
            } else if !token.is_empty()
                && !token.eq_ignore_ascii_case("keep-alive")
                && !token.eq_ignore_ascii_case("host")
            {
                listed.push(token.to_owned());
            }
        }
    }
    (listed, close)
}

fn has(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case(name))
}

/// The client's error for a refused framing.
fn client_refusal(refusal: Refusal) -> Error {
    match refusal {
        Refusal::Malformed(why) => Error::BadRequest(why),
        Refusal::Unsupported(why) => Error::NotImplemented(why),
    }
}

fn parse_request(buf: &[u8], target: &Target, limits: &Limits) -> Head<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let too_large = || {
        Head::Refused(Error::HeadTooLarge {
            limit: limits.max_head,
        })
    };
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > limits.max_head => return too_large(),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head => return too_large(),
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Head::Refused(Error::TooManyHeaders { limit: MAX_HEADERS });
        }
        Err(e) => {
            return Head::Refused(Error::BadRequest(format!("malformed request head: {e}")));
        }
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Head::Refused(Error::BadRequest("incomplete request line".into()));
    };
    let framing = match framing::request_framing(req.headers, version) {
        Ok(f) => f,
        Err(r) => return Head::Refused(client_refusal(r)),
    };
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 || (version == 1 && hosts == 0) {
        return Head::Refused(Error::BadRequest(
            "an HTTP/1.1 request needs exactly one Host".into(),
        ));
    }
    let mut expect_continue = false;
    for h in req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("expect"))
    {
        if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
            let value = String::from_utf8_lossy(h.value).into_owned();
            return Head::Refused(Error::Expectation(value));
        }
        expect_continue = version == 1;
    }
    if version == 0
        || has(req.headers, "upgrade")
        || !path.starts_with('/') && path != "*"
        || method == "CONNECT"
    {
        return Head::Hyper;
    }
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
    match framing {
        Framing::Length(n) => push_length(&mut head, n),
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A body announced as empty stays announced (some servers want a length on POST).
        _ if has(req.headers, "content-length") => push_length(&mut head, 0),
        _ => {}
    }
    head.extend_from_slice(b"\r\n");
    Head::Done(Request {
        head,
        consumed,
        framing,
        close,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        expect_continue,
        key,
    })
}

fn push_length(head: &mut Vec<u8>, n: u64) {
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(n.to_string().as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// Appends `headers` to `head` as `name: value` lines, leaving out the hop-by-hop and
/// framing ones (and those `Connection` lists in `listed`).
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

/// Parses a response head; an error is the endpoint's fault.
fn parse_response(
    buf: &[u8],
    request: &Request,
    max_head: usize,
) -> Result<Option<Response>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Ok(None),
        Ok(_) => return Err(format!("response head larger than {max_head} bytes")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!(
                "response head has more than {MAX_RESPONSE_HEADERS} header fields"
            ));
        }
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    // httparse takes any three digits, but below 100 is no status (RFC 9110 §15), and it
    // would be written on as fewer digits: a status line no client reads.
    if status < 100 {
        return Err(format!("malformed response: status code {status:03}"));
    }
    let version = resp.version.unwrap_or(0);
    let (listed, upstream_close) = connection_tokens(resp.headers);
    let framing = framing::response_framing(resp.headers, status, request.is_head)
        .map_err(|r| format!("response framing: {r}"))?;
    let mut head = Vec::with_capacity(consumed + 24);
    head.extend_from_slice(
        format!("HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or("")).as_bytes(),
    );
    push_end_to_end(&mut head, resp.headers, &listed);
    match framing {
        Framing::Length(n) => push_length(&mut head, n),
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {
            // HEAD and 304 answers describe the body they would have had.
            if let Ok(Some(n)) = framing::content_length(resp.headers) {
                push_length(&mut head, n);
            }
        }
        Framing::UntilClose => {
            // A final coding other than chunked: the client must still decode it.
            for h in resp
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            {
                head.extend_from_slice(b"transfer-encoding: ");
                head.extend_from_slice(h.value);
                head.extend_from_slice(b"\r\n");
            }
        }
    }
    if request.close || framing == Framing::UntilClose {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(Some(Response {
        head,
        consumed,
        status,
        framing,
        keep_upstream: version == 1 && !upstream_close && framing != Framing::UntilClose,
    }))
}

/// Reads more into `buf`; `Ok(0)` at the end of the stream.
async fn fill<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    watch: &Watch,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let n = stream.read_buf(buf).await?;
    watch.touch();
    Ok(n)
}

/// Why copying a body stopped, by side: the reader's, the writer's, or the framing's.
#[derive(Debug)]
enum CopyError {
    Read(String),
    Write(String),
    Framing(Refusal),
}

/// Copies one body framed by `framing` from `from` (whose buffer `buf` may already hold
/// some of it) to `to`, checking chunked framing with `chunked`; bytes read past its end
/// stay in `buf`. Returns the bytes copied.
async fn copy_body<R, W>(
    from: &mut R,
    buf: &mut Vec<u8>,
    to: &mut W,
    framing: Framing,
    chunked: &mut Chunked,
    watch: &Watch,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut copied = 0u64;
    let mut left = match framing {
        Framing::None => return Ok(0),
        Framing::Length(n) => n,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    loop {
        if !buf.is_empty() {
            let take = match framing {
                Framing::Chunked => chunked.scan(buf).map_err(CopyError::Framing)?,
                _ => (left.min(buf.len() as u64)) as usize,
            };
            to.write_all(&buf[..take])
                .await
                .map_err(|e| CopyError::Write(e.to_string()))?;
            buf.drain(..take);
            copied += take as u64;
            if let Framing::Length(_) = framing {
                left -= take as u64;
            }
        }
        let done = match framing {
            Framing::Chunked => chunked.done(),
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
            .map_err(|e| CopyError::Read(e.to_string()))?;
        watch.touch();
        if n == 0 {
            return match framing {
                Framing::UntilClose => Ok(copied),
                _ => Err(CopyError::Read("closed before the body ended".into())),
            };
        }
    }
}

/// A client connection, the bytes read from it but not yet used, and a buffer for
/// upstream bytes kept across its requests.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    up_buf: Vec<u8>,
}

/// How a connection's fast path ended.
enum End {
    Done,
    /// Hand the connection, and the bytes read from it, to hyper.
    Hyper(TcpStream, Vec<u8>),
}
use End::Done;

/// Serves a client connection meant for `dst` whose first bytes are in `buf`; a
/// connection quiet for the idle timeout is closed, one that starts a request head and
/// does not finish it in time is answered 408.
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

/// Answers a failure to the client (if it can still hear it) and counts it; with
/// `close`, the connection is then closed gently (see [`linger`]).
async fn answer(client: &mut TcpStream, e: &Error, target: &Target, peer: SocketAddr, close: bool) {
    target.stats.failed(e);
    e.log(peer);
    if matches!(e, Error::ClientAborted(_)) {
        return;
    }
    if client
        .write_all(&refusal::refusal_bytes(e, close))
        .await
        .is_ok()
        && close
    {
        linger(client).await;
    }
}

/// Most bytes read and dropped while closing after a refusal.
const LINGER_BYTES: usize = 256 * 1024;
/// How long a refused client gets to stop sending.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes our side, then reads and drops what the client still sends for a moment:
/// closing a socket with unread bytes makes the kernel send a reset, which can destroy
/// the refusal before the client reads it (nginx's lingering close).
async fn linger(client: &mut TcpStream) {
    if client.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = vec![0u8; 16 * 1024];
        let mut read = 0;
        while read < LINGER_BYTES {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

async fn run(
    stream: TcpStream,
    buf: Vec<u8>,
    peer: SocketAddr,
    dst: SocketAddr,
    shared: &Shared,
    watch: &Watch,
) -> End {
    let limits = shared.limits;
    // The first bytes came with the connection: its head started then.
    let mut head_started = (!buf.is_empty()).then(Instant::now);
    let mut client = Client {
        stream,
        buf,
        up_buf: Vec::new(),
    };
    loop {
        // The next request head.
        let Some(target) = shared.catalog.load().lookup(dst).cloned() else {
            shared.unknown.error(Reason::unknown_service);
            let _ = client
                .stream
                .write_all(&refusal::refusal_bytes(&Error::UnknownService(dst), true))
                .await;
            return Done;
        };
        let request = loop {
            match parse_request(&client.buf, &target, &limits) {
                Head::Done(r) => break r,
                Head::Hyper => return End::Hyper(client.stream, client.buf),
                Head::Refused(e) => {
                    answer(&mut client.stream, &e, &target, peer, true).await;
                    return Done;
                }
                Head::Partial => {}
            }
            // Idle between requests (the watchdog's limit); once a head has started, it
            // must finish within the head timeout.
            let read = match head_started {
                // Between requests: a drain closes the connection now.
                None => {
                    let read = fill(&mut client.stream, &mut client.buf, watch);
                    match shared.drain.unless_idle(true, read).await {
                        Some(read) => read,
                        None => return Done,
                    }
                }
                Some(started) => match tokio::time::timeout_at(
                    started + limits.head_timeout,
                    fill(&mut client.stream, &mut client.buf, watch),
                )
                .await
                {
                    Ok(read) => read,
                    Err(_) => {
                        let e = Error::HeadTimeout(limits.head_timeout);
                        answer(&mut client.stream, &e, &target, peer, true).await;
                        return Done;
                    }
                },
            };
            match read {
                Ok(0) | Err(_) => {
                    if !client.buf.is_empty() {
                        target.stats.error(Reason::client_aborted);
                    }
                    return Done;
                }
                Ok(_) => {
                    head_started.get_or_insert_with(Instant::now);
                }
            }
        };
        client.buf.drain(..request.consumed);
        target.stats.http_requests.inc();
        match exchange(&mut client, &request, peer, &target, shared, watch).await {
            Ok(true) => {}
            Ok(false) => return Done,
            Err(e) => {
                // A body not yet read cannot be skipped safely: close after answering.
                let close =
                    request.close || request.framing != Framing::None || shared.drain.draining();
                answer(&mut client.stream, &e, &target, peer, close).await;
                if close {
                    return Done;
                }
            }
        }
        if request.close {
            return Done;
        }
        // A pipelined request may already be here: its head has started.
        head_started = (!client.buf.is_empty()).then(Instant::now);
    }
}

/// Why no response head came.
enum NoResponse {
    /// The connection ended or failed before any byte of a response.
    Silent(String),
    /// Some of a response came, but not a valid head.
    Broken(String),
}

/// One request and its response. `Ok(true)`: the client connection goes on; `Ok(false)`:
/// it must end (close-delimited response, a socket failed mid-body). `Err`: nothing was
/// written to the client yet; answer it with the error.
///
/// A kept upstream connection may have been closed by the endpoint meanwhile (it is
/// checked when taken, but a close can cross the request on the wire): if writing to it
/// fails, nothing reached a live endpoint, so any request is sent again once on a new
/// connection; if it ends before any response byte, an idempotent request whose body was
/// all at hand is.
async fn exchange(
    client: &mut Client,
    request: &Request,
    peer: SocketAddr,
    target: &Target,
    shared: &Shared,
    watch: &Watch,
) -> Result<bool, Error> {
    let started = std::time::Instant::now();
    let key = (target.balancer.strategy() == Strategy::ConsistentHash)
        .then(|| request.key.clone().unwrap_or_else(|| ip_key(peer)));
    let mut lease = shared.upstream.lease(target, key.as_deref())?;
    let upstream = &shared.upstream;

    // What of the body is here already is checked and goes out with the head.
    let mut chunked = Chunked::new(shared.limits.max_head);
    let body_now = match request.framing {
        Framing::Length(n) => (n.min(client.buf.len() as u64)) as usize,
        Framing::Chunked => chunked.scan(&client.buf).map_err(client_refusal)?,
        _ => 0,
    };
    let rest = match request.framing {
        Framing::Length(n) => Framing::Length(n - body_now as u64),
        Framing::Chunked if chunked.done() => Framing::None,
        f => f,
    };
    let whole = rest == Framing::None || rest == Framing::Length(0);
    let mut out = Vec::with_capacity(request.head.len() + body_now);
    out.extend_from_slice(&request.head);
    out.extend_from_slice(&client.buf[..body_now]);
    client.buf.drain(..body_now);

    let mut fresh_only = false;
    let mut redialled = false;
    let mut continued = false;
    let (up, response) = loop {
        let kept = if fresh_only {
            None
        } else {
            upstream.kept(&lease)
        };
        let reused = kept.is_some();
        let mut up = match kept {
            Some(conn) => conn,
            None => match upstream.connect(&lease).await {
                Ok(conn) => conn,
                Err(e) => {
                    lease.report(Err(&e));
                    // Nothing reached the endpoint: once more, to another one if any.
                    if !redialled
                        && upstream.may_retry(target, &e)
                        && let Ok(next) =
                            upstream.lease_except(target, key.as_deref(), Some(lease.addr()))
                    {
                        log::debug!("{e}; trying {} instead", next.addr());
                        target.stats.error(crate::metrics::Reason::retried);
                        redialled = true;
                        lease = next;
                        continue;
                    }
                    return Err(e);
                }
            },
        };
        if let Err(e) = up.write_all(&out).await {
            if reused {
                fresh_only = true;
                continue;
            }
            let e = lease.upstream_error(format!("sending the request: {e}"));
            lease.report(Err(&e));
            return Err(e);
        }
        if !whole {
            if request.expect_continue && !continued {
                continued = true;
                let interim = client.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                if let Err(e) = interim.await {
                    return Err(Error::ClientAborted(e.to_string()));
                }
            }
            let sent = copy_body(
                &mut client.stream,
                &mut client.buf,
                &mut up,
                rest,
                &mut chunked,
                watch,
            )
            .await;
            match sent {
                Ok(_) => {}
                // The lease goes unreported: the endpoint did nothing wrong.
                Err(CopyError::Read(why)) => return Err(Error::ClientAborted(why)),
                Err(CopyError::Framing(r)) => return Err(client_refusal(r)),
                Err(CopyError::Write(why)) => {
                    let e = lease.upstream_error(format!("sending the request body: {why}"));
                    lease.report(Err(&e));
                    return Err(e);
                }
            }
        }
        client.up_buf.clear();
        match read_response_head(&mut up, &mut client.up_buf, request, shared, watch).await {
            Ok(r) => break (up, r),
            Err(NoResponse::Silent(_)) if reused && whole && request.idempotent => {
                fresh_only = true;
            }
            Err(NoResponse::Silent(why) | NoResponse::Broken(why)) => {
                let e = lease.upstream_error(why);
                lease.report(Err(&e));
                return Err(e);
            }
        }
    };
    target
        .stats
        .latency
        .observe(started.elapsed().as_secs_f64());
    let up_buf = &mut client.up_buf;
    // The head and whatever of the body is already here, in one write. While draining,
    // this is the connection's last response.
    let drained = !request.close && shared.drain.draining();
    let mut out = response.head;
    if drained {
        crate::drain::mark_close(&mut out);
    }
    let mut chunked = Chunked::new(shared.limits.max_head);
    let body_now = match response.framing {
        Framing::Length(n) => (n.min(up_buf.len() as u64)) as usize,
        Framing::Chunked => match chunked.scan(up_buf) {
            Ok(n) => n,
            Err(r) => {
                // Nothing was written to the client yet: it gets a 502.
                let e = lease.upstream_error(format!("response body: {r}"));
                lease.report(Err(&e));
                return Err(e);
            }
        },
        Framing::UntilClose => up_buf.len(),
        Framing::None => 0,
    };
    lease.report_status(response.status);
    if response.status >= 500 {
        target.stats.error(Reason::upstream);
    }
    out.extend_from_slice(&up_buf[..body_now]);
    up_buf.drain(..body_now);
    let rest = match response.framing {
        Framing::Length(n) => Framing::Length(n - body_now as u64),
        Framing::Chunked if chunked.done() => Framing::None,
        f => f,
    };
    // All of the response is here: the upstream connection is free before the client
    // has it, so the client's next request (or another client's) can reuse it.
    let mut up = Some(up);
    if matches!(rest, Framing::None | Framing::Length(0))
        && response.keep_upstream
        && up_buf.is_empty()
        && let Some(conn) = up.take()
    {
        upstream.keep(&lease, conn);
    }
    if let Err(e) = client.stream.write_all(&out).await {
        log::debug!("{peer}: {}: writing the response: {e}", target.service);
        target.stats.error(Reason::client_aborted);
        return Ok(false);
    }
    let Some(mut up) = up else {
        return Ok(!drained);
    };
    match copy_body(
        &mut up,
        up_buf,
        &mut client.stream,
        rest,
        &mut chunked,
        watch,
    )
    .await
    {
        Ok(_) if response.framing == Framing::UntilClose => return Ok(false),
        Ok(_) => {
            if response.keep_upstream && up_buf.is_empty() {
                upstream.keep(&lease, up);
            }
        }
        Err(CopyError::Write(why)) => {
            log::debug!("{peer}: {}: writing the response: {why}", target.service);
            target.stats.error(Reason::client_aborted);
            return Ok(false);
        }
        Err(CopyError::Read(why)) => {
            log::warn!(
                "{peer}: {}: response body from {} broke off: {why}",
                target.service,
                lease.addr()
            );
            target.stats.error(Reason::upstream);
            return Ok(false);
        }
        Err(CopyError::Framing(r)) => {
            log::warn!(
                "{peer}: {}: response body from {}: {r}",
                target.service,
                lease.addr()
            );
            target.stats.error(Reason::upstream);
            return Ok(false);
        }
    }
    Ok(!drained)
}

/// Reads the response head (skipping interim 1xx answers).
async fn read_response_head(
    up: &mut Conn,
    buf: &mut Vec<u8>,
    request: &Request,
    shared: &Shared,
    watch: &Watch,
) -> Result<Response, NoResponse> {
    let max_head = shared.limits.max_head;
    loop {
        match parse_response(buf, request, max_head).map_err(NoResponse::Broken)? {
            Some(r) if (100..200).contains(&r.status) => {
                buf.drain(..r.consumed);
            }
            Some(r) => {
                buf.drain(..r.consumed);
                return Ok(r);
            }
            None => {
                let had = !buf.is_empty();
                let why = match fill(up, buf, watch).await {
                    Ok(0) => "closed before answering".to_owned(),
                    Ok(_) => continue,
                    Err(e) => e.to_string(),
                };
                return Err(if had {
                    NoResponse::Broken(why)
                } else {
                    NoResponse::Silent(why)
                });
            }
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not an API: it may change at any time).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A head parsed as the fast path parses it: the head it would send on, the client or
    /// upstream bytes it took, and how its body is framed.
    pub type Parsed = (Vec<u8>, usize, Framing);

    /// The request and response head parsers with a Service that hashes on a header, so
    /// every branch of them is reachable.
    pub struct Heads {
        target: Target,
        limits: Limits,
    }

    impl Heads {
        /// Parsers refusing heads over `max_head` bytes.
        pub fn new(max_head: usize) -> Self {
            Heads {
                target: Target {
                    service: "default/web".into(),
                    port_name: String::new(),
                    port: 80,
                    backends: Vec::new(),
                    balancer: crate::lb::Balancer::new(Strategy::ConsistentHash),
                    hash_key: Some("x-user".into()),
                    opaque: false,
                    topology: crate::objects::Topology::All,
                    limiter: None,
                    breaker: crate::breaker::BreakerPolicy::default(),
                    stats: Arc::new(crate::metrics::LazyStats::new(
                        Arc::default(),
                        "default/web",
                    )),
                    udp_idle: None,
                },
                limits: Limits {
                    max_head,
                    head_timeout: std::time::Duration::from_secs(1),
                },
            }
        }

        /// A client's request head: `Ok(None)` while partial or when handed to hyper,
        /// `Err` with what the client would be answered.
        pub fn request(&self, buf: &[u8]) -> Result<Option<Parsed>, String> {
            match parse_request(buf, &self.target, &self.limits) {
                Head::Done(r) => Ok(Some((r.head, r.consumed, r.framing))),
                Head::Partial | Head::Hyper => Ok(None),
                Head::Refused(e) => Err(e.to_string()),
            }
        }

        /// An upstream's response head to a request (`HEAD` or not, `Connection: close`
        /// or not): `Ok(None)` while partial, `Err` when the endpoint is at fault.
        pub fn response(
            &self,
            buf: &[u8],
            is_head: bool,
            close: bool,
        ) -> Result<Option<Parsed>, String> {
            let request = Request {
                head: Vec::new(),
                consumed: 0,
                framing: Framing::None,
                close,
                is_head,
                idempotent: true,
                expect_continue: false,
                key: None,
            };
            Ok(parse_response(buf, &request, self.limits.max_head)?
                .map(|r| (r.head, r.consumed, r.framing)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fuzzing::Heads;

    /// Found by fuzz/ (h1_framing): a status code under 100 was written on as
    /// `HTTP/1.1 20 OK`, a status line no client can read.
    #[test]
    fn a_status_code_under_100_is_the_endpoint_fault() {
        let input = b"HTTP/1.0 020 OK\r\nContentjjjing:coding:PO,   g\xc4ziGETp\r\n\nTraPOn-fS er-";
        let heads = Heads::new(8 * 1024);
        let refused = heads.response(input, false, false).unwrap_err();
        assert!(refused.contains("status code 020"), "{refused}");
        assert!(
            heads
                .response(b"HTTP/1.1 099 x\r\n\r\n", false, false)
                .is_err()
        );
        let (head, _, _) = heads
            .response(b"HTTP/1.1 100 Continue\r\n\r\n", false, false)
            .unwrap()
            .unwrap();
        assert!(head.starts_with(b"HTTP/1.1 100 Continue\r\n"));
    }

    /// Found by fuzz/ (h1_framing): `Connection: Host` made the proxy drop the Host
    /// header, so the upstream got an HTTP/1.1 request without one.
    #[test]
    fn connection_cannot_take_the_host_away() {
        let input = b"GET /a?b=c HTTP/1.1\r\nHost:en: \xff\xff\xff\xff\xff\r\nConnection: \xff,,<,,,,,,,,,,,,,,,,,\",,,,,,,,,,,,,,,,,,,,,,,,,,,,,,\",,,,,,,\xbc,,,,,,,,,,,X-Uhhh,,,,,,,,,,,,,,,,,,,,,,,\",,,,,,,,,,,,,,,,,,,,,,,,,,Host,,,,,,,,,,,,,,o:o,!a a\x9e,,,\n\r\n";
        let heads = Heads::new(8 * 1024);
        let (head, _, _) = heads.request(input).unwrap().unwrap();
        assert!(
            head.windows(6).any(|w| w == b"\r\nHost"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        assert!(
            heads.request(&head).unwrap().is_some(),
            "the upstream reads it"
        );

        let (head, _, _) = heads
            .request(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: host, x-a\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n");
    }

    fn head_with(first: &str, fields: usize) -> Vec<u8> {
        let mut head = format!("{first}\r\nHost: web\r\n");
        for i in 1..fields {
            head.push_str(&format!("x-f{i}: v\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// Left open by the fuzzing work: a response of 100 fields went on as 101 (with the
    /// added `connection: close`), which clients refuse; and too many fields were reported
    /// as a head too large.
    #[test]
    fn a_forwarded_head_never_has_more_fields_than_a_client_takes() {
        let heads = Heads::new(64 * 1024);
        let (head, _, _) = heads
            .response(&head_with("HTTP/1.1 200 OK", 99), false, true)
            .unwrap()
            .unwrap();
        let mut fields = [httparse::EMPTY_HEADER; super::MAX_HEADERS];
        let parsed = httparse::Response::new(&mut fields).parse(&head);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(_))),
            "{parsed:?}"
        );
        let refused = heads
            .response(&head_with("HTTP/1.1 200 OK", 100), false, true)
            .unwrap_err();
        assert!(refused.contains("more than 99 header fields"), "{refused}");

        assert!(heads.request(&head_with("GET / HTTP/1.1", 100)).is_ok());
        let refused = heads
            .request(&head_with("GET / HTTP/1.1", 101))
            .unwrap_err();
        assert_eq!(refused, "request head has more than 100 header fields");
    }
}
