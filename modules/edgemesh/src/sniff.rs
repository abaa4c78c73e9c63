//! Protocol detection: one bounded read under a timeout decides what the client speaks.
//! The bytes read are kept and replayed to whoever handles the connection.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What a connection carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x: a request line.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC): the connection preface.
    Http2,
    /// TLS: a ClientHello, with the server name it asks for, if any.
    Tls {
        /// The SNI host name.
        sni: Option<String>,
    },
    /// Anything else, or a protocol where the server speaks first.
    Opaque,
}

/// Bytes read for detection, at most.
const SNIFF_LEN: usize = 4096;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Reads once (waiting at most `wait`) and classifies. No bytes in time means the server
/// speaks first (SMTP, MySQL, PostgreSQL's SSL answer...): opaque.
pub async fn sniff(stream: &mut TcpStream, wait: Duration) -> std::io::Result<(Protocol, Vec<u8>)> {
    let mut buf = vec![0u8; SNIFF_LEN];
    let n = match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Err(_) => 0,
        Ok(read) => read?,
    };
    buf.truncate(n);
    Ok((classify(&buf), buf))
}

/// What the first bytes of a connection say.
pub fn classify(bytes: &[u8]) -> Protocol {
    if bytes.is_empty() {
        return Protocol::Opaque;
    }
    if bytes.len() >= H2_PREFACE.len().min(4)
        && H2_PREFACE.starts_with(&bytes[..bytes.len().min(H2_PREFACE.len())])
    {
        return Protocol::Http2;
    }
    if METHODS.iter().any(|m| bytes.starts_with(m)) {
        return Protocol::Http1;
    }
    if bytes.len() >= 3 && bytes[0] == 0x16 && bytes[1] == 0x03 {
        return Protocol::Tls { sni: sni(bytes) };
    }
    Protocol::Opaque
}

/// The server name in a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3), when the first
/// read holds it.
pub fn sni(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    r.skip(5)?; // record header
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    r.skip(3 + 2 + 32)?; // handshake length, version, random
    let session = r.u8()? as usize;
    r.skip(session)?;
    let suites = r.u16()? as usize;
    r.skip(suites)?;
    let compression = r.u8()? as usize;
    r.skip(compression)?;
    let mut extensions = Reader(r.vec16()?);
    while let (Some(kind), Some(len)) = (extensions.u16(), extensions.u16()) {
        let body = extensions.take(len as usize)?;
        if kind == 0 {
            let mut names = Reader(body);
            let mut list = Reader(names.vec16()?);
            while let Some(name_type) = list.u8() {
                let name = list.vec16()?;
                if name_type == 0 {
                    return String::from_utf8(name.to_vec()).ok();
                }
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a 16-bit length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello asking for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut sni_ext = Vec::new();
        let entry_len = 1 + 2 + name.len();
        sni_ext.extend_from_slice(&(entry_len as u16).to_be_bytes());
        sni_ext.push(0);
        sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni_ext.extend_from_slice(name.as_bytes());
        let mut exts = Vec::new();
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sni_ext);
        let mut hello = vec![0x03, 0x03];
        hello.extend_from_slice(&[0; 32]);
        hello.push(0); // session id
        hello.extend_from_slice(&2u16.to_be_bytes());
        hello.extend_from_slice(&[0x13, 0x01]);
        hello.extend_from_slice(&[1, 0]); // compression
        hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        hello.extend_from_slice(&exts);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&hello);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn first_bytes_decide_the_protocol() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Protocol::Http1
        );
        assert_eq!(classify(b"POST /api HTTP/1.0\r\n"), Protocol::Http1);
        assert_eq!(classify(H2_PREFACE), Protocol::Http2);
        assert_eq!(
            classify(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
            Protocol::Opaque,
            "redis"
        );
        assert_eq!(classify(b""), Protocol::Opaque, "server speaks first");
        assert_eq!(classify(b"GETX"), Protocol::Opaque);
        assert_eq!(
            classify(&client_hello("api.example.com")),
            Protocol::Tls {
                sni: Some("api.example.com".into())
            }
        );
        let mut cut = client_hello("api.example.com");
        cut.truncate(40);
        assert_eq!(
            classify(&cut),
            Protocol::Tls { sni: None },
            "partial hello: TLS, name unknown"
        );
    }
}
