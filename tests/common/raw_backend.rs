//! A raw HTTP/1.1 backend for the forwarder conformance tests: plain tokio sockets, no
//! hyper, so that what the proxy sent is seen exactly as it went over the wire. Per
//! connection it logs every byte received and every complete request it parsed; its parser
//! is strict (CRLF only, token names, no obs-fold or control bytes, Content-Length digits
//! only, well-formed chunks) so that a malformed request the proxy let through is logged as
//! a rejection, never counted as a complete request.
//!
//! Each complete request is answered `200` with the body `<conn#>:<req#>:<method>` (both
//! counted from 1), unless the test asked for raw bytes for that target.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The largest head (request line, headers, or trailers) the backend reads before it gives up.
const MAX_HEAD: usize = 256 * 1024;

/// How a request's body was framed on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (neither Content-Length nor Transfer-Encoding).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// Chunked: the body exactly as it came (sizes, extensions, trailers), and its trailers.
    Chunked {
        /// The chunked body as received, up to and including the final CRLF.
        raw: Vec<u8>,
        /// Trailer fields, name as sent.
        trailers: Vec<(String, Vec<u8>)>,
    },
}

/// One complete request as the backend parsed it.
#[derive(Clone, Debug)]
pub struct Request {
    /// The connection it came on (from 1, in accept order).
    pub conn: usize,
    /// Its place on that connection (from 1).
    pub seq: usize,
    /// The method.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header fields in order, names as sent, values without surrounding whitespace.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// How the body was framed.
    pub framing: Framing,
    /// The head as received, through the blank line.
    pub raw_head: Vec<u8>,
}

impl Request {
    /// Values of the header `name` (any case), in order.
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// Whether a header `name` (any case) arrived.
    pub fn has(&self, name: &str) -> bool {
        !self.values(name).is_empty()
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The proxy closed it (EOF), or reset it.
    ByPeer,
    /// The backend closed it after `close_idle_after` with nothing to read.
    Idle,
    /// The backend closed it after answering (Connection: close, HTTP/1.0, raw bytes sent).
    AfterResponse,
    /// The backend closed it after rejecting malformed input.
    Rejected,
}

/// One accepted connection.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Its number, from 1 in accept order.
    pub id: usize,
    /// Where it came from.
    pub peer: SocketAddr,
    /// Every byte received on it.
    pub raw: Vec<u8>,
    /// Complete requests parsed on it.
    pub requests: usize,
    /// Why the parser rejected what came, if it did.
    pub rejected: Option<String>,
    /// How it ended, once it has.
    pub closed: Option<Closed>,
}

/// How the backend behaves.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Close a kept-alive connection this long after its last response if nothing arrives.
    pub close_idle_after: Option<Duration>,
    /// Raw bytes written (then the connection closed) instead of the usual answer, by
    /// request target.
    pub respond_with: HashMap<String, Vec<u8>>,
}

#[derive(Default)]
struct State {
    conns: Vec<Connection>,
    requests: Vec<Request>,
}

struct Inner {
    state: Mutex<State>,
    changed: Notify,
    options: Options,
}

impl Inner {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_waiters();
    }
}

/// A running raw backend; stops accepting when dropped.
pub struct RawBackend {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl RawBackend {
    /// Serves on `ip` (port chosen by the system) with `options`.
    pub async fn spawn(ip: &str, options: Options) -> RawBackend {
        let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            state: Mutex::default(),
            changed: Notify::new(),
            options,
        });
        let shared = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let mut id = 0;
                shared.update(|s| {
                    id = s.conns.len() + 1;
                    s.conns.push(Connection {
                        id,
                        peer,
                        raw: Vec::new(),
                        requests: 0,
                        rejected: None,
                        closed: None,
                    });
                });
                tokio::spawn(serve(shared.clone(), stream, id));
            }
        });
        RawBackend {
            addr,
            inner,
            accept,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every complete request so far, in completion order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.state.lock().unwrap().requests.clone()
    }

    /// Complete requests for `target`.
    pub fn requests_to(&self, target: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.target == target)
            .collect()
    }

    /// Every connection so far.
    pub fn connections(&self) -> Vec<Connection> {
        self.inner.state.lock().unwrap().conns.clone()
    }

    /// Connection `id` (from 1).
    pub fn connection(&self, id: usize) -> Option<Connection> {
        self.inner.state.lock().unwrap().conns.get(id - 1).cloned()
    }

    /// Whether `needle` occurs in the bytes received on any connection.
    pub fn received(&self, needle: &[u8]) -> bool {
        self.inner
            .state
            .lock()
            .unwrap()
            .conns
            .iter()
            .any(|c| c.raw.windows(needle.len()).any(|w| w == needle))
    }

    /// A one-line-per-connection account of what arrived, for failure messages.
    pub fn summary(&self) -> String {
        let state = self.inner.state.lock().unwrap();
        let mut out = String::new();
        for c in &state.conns {
            let head: Vec<u8> = c.raw.iter().take(300).copied().collect();
            out.push_str(&format!(
                "\n  conn {} from {}: {} complete, rejected {:?}, closed {:?}, {} bytes: {:?}",
                c.id,
                c.peer,
                c.requests,
                c.rejected,
                c.closed,
                c.raw.len(),
                String::from_utf8_lossy(&head)
            ));
        }
        out
    }

    /// Awaits until `f` gives a value, or `within` passes (an error naming `what`).
    pub async fn await_until<T>(
        &self,
        what: &str,
        within: Duration,
        f: impl Fn(&RawBackend) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + within;
        loop {
            // Registered before the check, so a change between the check and the wait
            // still wakes us.
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = f(self) {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "backend: timed out after {within:?} waiting for {what}; log:{}",
                    self.summary()
                ));
            }
        }
    }

    /// Awaits `n` complete requests for `target`.
    pub async fn await_requests_to(
        &self,
        target: &str,
        n: usize,
        within: Duration,
    ) -> Result<Vec<Request>, String> {
        self.await_until(&format!("{n} request(s) to {target}"), within, |b| {
            let got = b.requests_to(target);
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// Awaits the end of connection `id`, and says how it ended.
    pub async fn await_closed(&self, id: usize, within: Duration) -> Result<Closed, String> {
        self.await_until(&format!("connection {id} closed"), within, |b| {
            b.connection(id).and_then(|c| c.closed)
        })
        .await
    }
}

/// Reads, parses and answers one connection until it ends.
async fn serve(inner: Arc<Inner>, mut stream: TcpStream, id: usize) {
    let mut buf: Vec<u8> = Vec::new();
    let mut seq = 0;
    let mut answered = false;
    let mut chunk = vec![0u8; 64 * 1024];
    let closed = loop {
        // Parse every complete request already buffered before reading more.
        match parse(&buf) {
            Err(reason) => {
                inner.update(|s| s.conns[id - 1].rejected = Some(reason.clone()));
                let body = format!("raw-backend rejected: {reason}");
                let resp = format!(
                    "HTTP/1.1 400 Bad Request\r\nx-raw-backend: rejected\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
                break Closed::Rejected;
            }
            Ok(Some((mut req, used))) => {
                buf.drain(..used);
                seq += 1;
                req.conn = id;
                req.seq = seq;
                let close = wants_close(&req);
                let raw = inner.options.respond_with.get(&req.target).cloned();
                let method = req.method.clone();
                inner.update(|s| {
                    s.conns[id - 1].requests += 1;
                    s.requests.push(req);
                });
                if let Some(raw) = raw {
                    let _ = stream.write_all(&raw).await;
                    break Closed::AfterResponse;
                }
                let body = format!("{id}:{seq}:{method}");
                let mut resp =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n", body.len()).into_bytes();
                if close {
                    resp.extend_from_slice(b"connection: close\r\n");
                }
                resp.extend_from_slice(b"\r\n");
                if method != "HEAD" {
                    resp.extend_from_slice(body.as_bytes());
                }
                if stream.write_all(&resp).await.is_err() {
                    break Closed::ByPeer;
                }
                answered = true;
                if close {
                    break Closed::AfterResponse;
                }
                continue;
            }
            Ok(None) => {}
        }
        let read = match inner.options.close_idle_after {
            Some(idle) if answered && buf.is_empty() => {
                match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
                    Ok(r) => r,
                    Err(_) => break Closed::Idle,
                }
            }
            _ => stream.read(&mut chunk).await,
        };
        match read {
            Ok(0) | Err(_) => break Closed::ByPeer,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                inner.update(|s| s.conns[id - 1].raw.extend_from_slice(&chunk[..n]));
            }
        }
    };
    let _ = stream.shutdown().await;
    drop(stream);
    inner.update(|s| s.conns[id - 1].closed = Some(closed));
}

fn wants_close(req: &Request) -> bool {
    let tokens: Vec<String> = req
        .values("connection")
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .to_ascii_lowercase()
                .split(',')
                .map(|t| t.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    if req.version == "HTTP/1.0" {
        !tokens.iter().any(|t| t == "keep-alive")
    } else {
        tokens.iter().any(|t| t == "close")
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field value byte: visible, obs-text, space or tab (no controls, no NUL).
fn is_value_byte(b: u8) -> bool {
    b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// The next CRLF-terminated line at `at`: `Ok(None)` if incomplete. A bare LF or a CR not
/// followed by LF is an error.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, String> {
    let rest = &buf[at..];
    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > MAX_HEAD {
            return Err("line too long".into());
        }
        // A CR followed by anything but LF can be judged already.
        if let Some(cr) = rest.iter().position(|&b| b == b'\r')
            && cr + 1 < rest.len()
        {
            return Err("bare CR".into());
        }
        return Ok(None);
    };
    if lf == 0 || rest[lf - 1] != b'\r' {
        return Err("bare LF".into());
    }
    let text = &rest[..lf - 1];
    if text.contains(&b'\r') {
        return Err("bare CR".into());
    }
    Ok(Some((text, at + lf + 1)))
}

/// Header (or trailer) fields from `at` through the blank line: the fields and where the
/// section ended.
#[allow(clippy::type_complexity)]
fn fields(buf: &[u8], mut at: usize) -> Result<Option<(Vec<(String, Vec<u8>)>, usize)>, String> {
    let mut out = Vec::new();
    loop {
        let Some((text, next)) = line(buf, at)? else {
            return Ok(None);
        };
        at = next;
        if text.is_empty() {
            return Ok(Some((out, at)));
        }
        if text[0] == b' ' || text[0] == b'\t' {
            return Err("obs-fold".into());
        }
        let colon = text
            .iter()
            .position(|&b| b == b':')
            .ok_or("field line without a colon")?;
        let name = &text[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(format!(
                "bad field name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        let value = &text[colon + 1..];
        if !value.iter().all(|&b| is_value_byte(b)) {
            return Err(format!(
                "bad byte in the value of {}",
                String::from_utf8_lossy(name)
            ));
        }
        let start = value
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(value.len());
        let end = value
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(start, |e| e + 1);
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            value[start..end].to_vec(),
        ));
    }
}

/// One complete request at the start of `buf` and the bytes it took; `Ok(None)` if more
/// bytes are needed.
fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some((start, at)) = line(buf, 0)? else {
        return Ok(None);
    };
    let parts: Vec<&[u8]> = start.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!(
            "bad request line {:?}",
            String::from_utf8_lossy(start)
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err("bad method".into());
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err("bad target".into());
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err("bad version".into());
    }
    let Some((headers, body_at)) = fields(buf, at)? else {
        return Ok(None);
    };
    let mut req = Request {
        conn: 0,
        seq: 0,
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        version: String::from_utf8_lossy(version).into_owned(),
        headers,
        body: Vec::new(),
        framing: Framing::None,
        raw_head: buf[..body_at].to_vec(),
    };
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host.
    let hosts = req.values("host").len();
    if (req.version == "HTTP/1.1" && hosts != 1) || hosts > 1 {
        return Err(format!("{hosts} Host fields"));
    }
    let te: Vec<String> = req
        .values("transfer-encoding")
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let lengths = req.values("content-length");
    if !te.is_empty() {
        if !lengths.is_empty() {
            return Err("Transfer-Encoding with Content-Length".into());
        }
        if te != ["chunked"] {
            return Err(format!("Transfer-Encoding {te:?}"));
        }
        let Some((body, trailers, end)) = chunked(buf, body_at)? else {
            return Ok(None);
        };
        req.body = body;
        req.framing = Framing::Chunked {
            raw: buf[body_at..end].to_vec(),
            trailers,
        };
        return Ok(Some((req, end)));
    }
    if lengths.is_empty() {
        return Ok(Some((req, body_at)));
    }
    let mut length = None;
    for v in lengths {
        if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
            return Err(format!("Content-Length {:?}", String::from_utf8_lossy(v)));
        }
        let n: u64 = std::str::from_utf8(v).unwrap().parse().unwrap();
        if length.is_some_and(|l| l != n) {
            return Err("differing Content-Length fields".into());
        }
        length = Some(n);
    }
    let n = length.unwrap();
    let end = body_at + n as usize;
    if buf.len() < end {
        return Ok(None);
    }
    req.body = buf[body_at..end].to_vec();
    req.framing = Framing::Length(n);
    Ok(Some((req, end)))
}

/// A chunked body from `at`: the data, the trailers, and where it ended.
#[allow(clippy::type_complexity)]
fn chunked(
    buf: &[u8],
    mut at: usize,
) -> Result<Option<(Vec<u8>, Vec<(String, Vec<u8>)>, usize)>, String> {
    let mut body = Vec::new();
    loop {
        let Some((size_line, next)) = line(buf, at)? else {
            return Ok(None);
        };
        let digits = size_line
            .iter()
            .position(|b| !b.is_ascii_hexdigit())
            .unwrap_or(size_line.len());
        if digits == 0 || digits > 16 {
            return Err(format!(
                "chunk size {:?}",
                String::from_utf8_lossy(size_line)
            ));
        }
        let size = u64::from_str_radix(std::str::from_utf8(&size_line[..digits]).unwrap(), 16)
            .map_err(|e| e.to_string())?;
        let ext = &size_line[digits..];
        // Extensions: optional whitespace, then `;` and printable bytes.
        let ext_start = ext
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(ext.len());
        let ext = &ext[ext_start..];
        if !ext.is_empty() && (ext[0] != b';' || !ext.iter().all(|&b| is_value_byte(b))) {
            return Err(format!(
                "chunk extension {:?}",
                String::from_utf8_lossy(ext)
            ));
        }
        at = next;
        if size == 0 {
            let Some((trailers, end)) = fields(buf, at)? else {
                return Ok(None);
            };
            return Ok(Some((body, trailers, end)));
        }
        let end = (at as u64)
            .checked_add(size)
            .filter(|e| *e < u64::MAX - 2)
            .ok_or("chunk size overflows")?;
        if (buf.len() as u64) < end + 2 {
            return Ok(None);
        }
        let end = end as usize;
        body.extend_from_slice(&buf[at..end]);
        if &buf[end..end + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at = end + 2;
    }
}
