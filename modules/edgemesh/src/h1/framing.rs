//! Strict HTTP/1.1 message framing (RFC 9112), where request smuggling lives: which
//! Content-Length and Transfer-Encoding a message may carry, and a chunked-body scanner
//! that checks every byte before it is forwarded. What is ambiguous is refused, never
//! passed on for a backend to read differently.
//!
//! - Content-Length is `1*DIGIT`; repeated values (in one field or several) must agree.
//! - Transfer-Encoding in a request must be exactly `chunked`: `chunked` not last, or
//!   twice, is malformed (400); another coding is not implemented (501). With
//!   Content-Length too, the request is refused (RFC 9112 §6.3 lets a server either
//!   refuse or drop Content-Length; refusing leaves nothing to guess).
//! - Chunk sizes are hex only, at most 16 digits; extensions are bounded and free of
//!   control bytes; every line ends in CRLF; trailers are bounded, `name: value` lines
//!   without obs-fold or control bytes.

/// How a message body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a message's framing is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed or ambiguous: 400 for a request, 502 for a response.
    Malformed(String),
    /// A transfer coding the proxy does not forward: 501.
    Unsupported(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(why) | Refusal::Unsupported(why) => f.write_str(why),
        }
    }
}

fn malformed(why: impl Into<String>) -> Refusal {
    Refusal::Malformed(why.into())
}

/// The Content-Length of a message, if it has one: every value in every field must be
/// `1*DIGIT` and all must be equal.
pub fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, Refusal> {
    let mut found: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for value in h.value.split(|&b| b == b',') {
            let value = value.trim_ascii();
            // 19 digits always fit in a u64; a longer length is no real body.
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(malformed(format!(
                    "invalid Content-Length {:?}",
                    String::from_utf8_lossy(h.value)
                )));
            }
            let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                return Err(malformed("differing Content-Length values"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// The transfer codings of a message, lowercased, in order; empty list elements skipped.
fn codings(headers: &[httparse::Header<'_>]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut any = false;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        any = true;
        for coding in String::from_utf8_lossy(h.value).split(',') {
            let coding = coding.trim_matches([' ', '\t']);
            if !coding.is_empty() {
                out.push(coding.to_ascii_lowercase());
            }
        }
    }
    any.then_some(out)
}

/// How a request's body is framed, or why the request is refused.
pub fn request_framing(headers: &[httparse::Header<'_>], version: u8) -> Result<Framing, Refusal> {
    let length = content_length(headers)?;
    let Some(codings) = codings(headers) else {
        return Ok(match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        });
    };
    if version == 0 {
        return Err(malformed("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if length.is_some() {
        return Err(malformed("both Transfer-Encoding and Content-Length"));
    }
    match codings.iter().position(|c| c == "chunked") {
        Some(at) if at + 1 == codings.len() && codings.len() == 1 => Ok(Framing::Chunked),
        Some(at) if at + 1 != codings.len() => Err(malformed("chunked is not the last coding")),
        None if codings.is_empty() => Err(malformed("empty Transfer-Encoding")),
        None => Err(malformed("Transfer-Encoding without chunked")),
        Some(_) => match codings.iter().find(|c| *c != "chunked") {
            Some(other) => Err(Refusal::Unsupported(format!("transfer coding {other:?}"))),
            None => Err(malformed("chunked applied more than once")),
        },
    }
}

/// How a response's body is framed (RFC 9112 §6.3), or why it is refused.
pub fn response_framing(
    headers: &[httparse::Header<'_>],
    status: u16,
    request_is_head: bool,
) -> Result<Framing, Refusal> {
    let length = content_length(headers)?;
    if request_is_head || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Framing::None);
    }
    let Some(codings) = codings(headers) else {
        return Ok(length.map_or(Framing::UntilClose, Framing::Length));
    };
    if length.is_some() {
        return Err(malformed("both Transfer-Encoding and Content-Length"));
    }
    let chunked = codings.iter().filter(|c| *c == "chunked").count();
    match codings.last() {
        Some(last) if last == "chunked" && chunked == 1 => Ok(Framing::Chunked),
        _ if chunked > 0 => Err(malformed("chunked is not the last coding, or repeated")),
        // Another final coding: the body runs to the close (RFC 9112 §6.3 item 4).
        _ => Ok(Framing::UntilClose),
    }
}

/// The longest chunk size, in hex digits (a u64).
const MAX_SIZE_DIGITS: u32 = 16;
/// The longest chunk extension on one size line.
const MAX_EXTENSION: u32 = 1024;

/// Where a chunked body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a size line: a hex digit must come.
    SizeStart,
    /// In the size: its value and digit count.
    Size(u64, u32),
    /// Whitespace after the size, before `;` or CR.
    SizeSpace(u64),
    /// In extensions: the size and the extension's length so far.
    Extension(u64, u32),
    /// The LF after a size line's CR.
    SizeLf(u64),
    /// Chunk data still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// In a trailer field's name (a colon must come) or its value.
    Trailer {
        colon: bool,
    },
    TrailerLf,
    EndLf,
    Done,
}

/// Scans a chunked body as it passes, checking every byte of the framing.
#[derive(Clone, Debug)]
pub struct Chunked {
    state: State,
    trailer_bytes: usize,
    max_trailers: usize,
}

fn field_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
}

impl Chunked {
    /// A scanner at the start of a body, allowing `max_trailers` bytes of trailers.
    pub fn new(max_trailers: usize) -> Self {
        Chunked {
            state: State::SizeStart,
            trailer_bytes: 0,
            max_trailers,
        }
    }

    /// Whether the body (last chunk and trailers) has ended.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `bytes`; returns how many belong to the body (all of them, unless it ends
    /// inside).
    pub fn scan(&mut self, bytes: &[u8]) -> Result<usize, Refusal> {
        let mut i = 0;
        while i < bytes.len() && self.state != State::Done {
            if let State::Data(n) = self.state {
                let take = n.min((bytes.len() - i) as u64);
                i += take as usize;
                self.state = if take == n {
                    State::DataCr
                } else {
                    State::Data(n - take)
                };
                continue;
            }
            self.state = self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(&mut self, b: u8) -> Result<State, Refusal> {
        let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
        Ok(match self.state {
            State::SizeStart => match hex(b) {
                Some(d) => State::Size(d, 1),
                None if b == b'\r' => return Err(malformed("empty chunk size")),
                None => return Err(malformed("chunk size is not hex")),
            },
            State::Size(n, digits) => match (b, hex(b)) {
                (_, Some(_)) if digits >= MAX_SIZE_DIGITS => {
                    return Err(malformed("chunk size too large"));
                }
                (_, Some(d)) => State::Size(n << 4 | d, digits + 1),
                (b'\r', _) => State::SizeLf(n),
                (b';', _) => State::Extension(n, 0),
                (b' ' | b'\t', _) => State::SizeSpace(n),
                _ => return Err(malformed("chunk size is not hex")),
            },
            State::SizeSpace(n) => match b {
                b' ' | b'\t' => State::SizeSpace(n),
                b';' => State::Extension(n, 0),
                b'\r' => State::SizeLf(n),
                _ => return Err(malformed("chunk size is not hex")),
            },
            State::Extension(n, len) => match b {
                b'\r' => State::SizeLf(n),
                _ if len >= MAX_EXTENSION => return Err(malformed("chunk extension too long")),
                _ if b == b'\t' || (0x20..0x7f).contains(&b) => State::Extension(n, len + 1),
                _ => return Err(malformed("control byte in a chunk extension")),
            },
            State::SizeLf(0) if b == b'\n' => State::TrailerStart,
            State::SizeLf(n) if b == b'\n' => State::Data(n),
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::SizeStart,
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b' ' | b'\t' => return Err(malformed("obs-fold in trailers")),
                b':' => return Err(malformed("trailer field without a name")),
                _ if field_byte(b) => self.trailer_byte(State::Trailer { colon: false })?,
                _ => return Err(malformed("control byte in trailers")),
            },
            State::Trailer { colon } => match b {
                b'\r' if colon => State::TrailerLf,
                b'\r' => return Err(malformed("trailer line without a colon")),
                b':' => self.trailer_byte(State::Trailer { colon: true })?,
                _ if field_byte(b) => self.trailer_byte(State::Trailer { colon })?,
                _ => return Err(malformed("control byte in trailers")),
            },
            State::TrailerLf if b == b'\n' => State::TrailerStart,
            State::EndLf if b == b'\n' => State::Done,
            State::SizeLf(_) | State::DataCr | State::DataLf | State::TrailerLf | State::EndLf => {
                return Err(malformed("chunked body lines must end in CRLF"));
            }
            State::Data(_) | State::Done => unreachable!("handled by scan"),
        })
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, Refusal> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailers {
            return Err(malformed("trailers too large"));
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&'static str, &'static str)]) -> Vec<httparse::Header<'static>> {
        list.iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect()
    }

    fn request(list: &[(&'static str, &'static str)]) -> Result<Framing, Refusal> {
        request_framing(&headers(list), 1)
    }

    #[test]
    fn content_length_is_digits_only_and_repeats_must_agree() {
        assert_eq!(request(&[("Content-Length", "5")]), Ok(Framing::Length(5)));
        assert_eq!(request(&[("content-length", "0")]), Ok(Framing::None));
        assert_eq!(
            request(&[("Content-Length", "5"), ("Content-Length", "5")]),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            request(&[("Content-Length", "5, 5")]),
            Ok(Framing::Length(5))
        );
        for bad in [
            "+5",
            "-1",
            "0x5",
            "5 6",
            "",
            "5.0",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(
                matches!(
                    request(&[("Content-Length", bad)]),
                    Err(Refusal::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        assert!(request(&[("Content-Length", "5"), ("Content-Length", "6")]).is_err());
        assert!(request(&[("Content-Length", "5, 6")]).is_err());
    }

    #[test]
    fn transfer_encoding_must_be_exactly_chunked_and_alone() {
        assert_eq!(
            request(&[("Transfer-Encoding", "chunked")]),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            request(&[("Transfer-Encoding", "Chunked")]),
            Ok(Framing::Chunked)
        );
        for bad in ["chunked, gzip", "chunked, chunked", "xchunked", "gzip", ""] {
            assert!(
                matches!(
                    request(&[("Transfer-Encoding", bad)]),
                    Err(Refusal::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            request(&[("Transfer-Encoding", "gzip, chunked")]),
            Err(Refusal::Unsupported(_))
        ));
        assert!(matches!(
            request(&[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]),
            Err(Refusal::Malformed(_))
        ));
        assert!(request_framing(&headers(&[("Transfer-Encoding", "chunked")]), 0).is_err());
    }

    #[test]
    fn responses_follow_rfc_9112_section_6_3() {
        let r = |list, status, head| response_framing(&headers(list), status, head);
        assert_eq!(
            r(&[("Content-Length", "3")], 200, false),
            Ok(Framing::Length(3))
        );
        assert_eq!(r(&[], 200, false), Ok(Framing::UntilClose));
        assert_eq!(r(&[("Content-Length", "3")], 200, true), Ok(Framing::None));
        assert_eq!(r(&[], 204, false), Ok(Framing::None));
        assert_eq!(
            r(&[("Transfer-Encoding", "gzip, chunked")], 200, false),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            r(&[("Transfer-Encoding", "gzip")], 200, false),
            Ok(Framing::UntilClose)
        );
        assert!(r(&[("Content-Length", "+3")], 200, false).is_err());
        assert!(
            r(
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
                200,
                false
            )
            .is_err()
        );
    }

    fn scan_all(body: &[u8]) -> Result<(usize, bool), Refusal> {
        let mut c = Chunked::new(1024);
        let n = c.scan(body)?;
        Ok((n, c.done()))
    }

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
        let body = b"4\r\nWiki\r\n5;ext=1;q=\"a b\"\r\npedia\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(scan_all(body), Ok((body.len() - 4, true)));
        // Byte by byte gives the same.
        let mut c = Chunked::new(1024);
        let mut total = 0;
        for b in body.chunks(1) {
            if c.done() {
                break;
            }
            total += c.scan(b).unwrap();
        }
        assert_eq!(total, body.len() - 4);
        assert_eq!(scan_all(b"0\r\n\r\n"), Ok((5, true)));
        assert_eq!(
            scan_all(b"3\r\nab"),
            Ok((5, false)),
            "incomplete is not an error"
        );
    }

    /// Scans `body` in the pieces `cuts` makes: the outcome (bytes taken, done, or the
    /// error) must not depend on how the bytes arrived.
    fn scan_split(body: &[u8], cuts: &[usize]) -> Result<(usize, bool), Refusal> {
        let mut c = Chunked::new(1024);
        let mut at = 0;
        let mut taken = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        points.push(body.len());
        for end in points {
            if end <= at || c.done() {
                continue;
            }
            taken += c.scan(&body[at..end])?;
            at = end;
        }
        Ok((taken, c.done()))
    }

    proptest::proptest! {
        #[test]
        fn any_split_of_any_input_scans_the_same(
            body in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"0123456789abcdefABCDEF;= \t\r\n:xX".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..64,
            ),
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            let whole = scan_all(&body);
            proptest::prop_assert_eq!(whole.clone(), scan_split(&body, &cuts));
            if let Ok((taken, true)) = whole {
                // A finished body never takes a byte past its end.
                proptest::prop_assert!(taken <= body.len());
                proptest::prop_assert_eq!(&body[taken - 2..taken], b"\r\n");
            }
        }
    }

    #[test]
    fn malformed_chunk_framing_is_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"fffffffffffffffff1\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"2\r\nabX",
            b"2\nab\r\n",
            b"2\r\nab\n0\r\n\r\n",
            b"1;a\x00b\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\nX: a\rb\r\n\r\n",
            b"0\r\nX: a\x00\r\n\r\n",
            b"5 x\r\n",
        ] {
            assert!(scan_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long_ext = format!("1;{}\r\n", "a".repeat(2000));
        assert!(scan_all(long_ext.as_bytes()).is_err());
        let big_trailers = format!("0\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert!(scan_all(big_trailers.as_bytes()).is_err());
        // Sixteen hex digits is the most; its value is checked by the body's end.
        assert!(scan_all(b"000000000000000A\r\n").is_ok());
    }
}
