//! The HTTP/1 fast path's head parsers and chunked-body scanner
//! (`edgemesh_module::h1`, `h1::framing`). The input is what a client (or an upstream)
//! sends: a head, then a body.
//!
//! - A head passed on is passed on unchanged by a second proxy (within the limits):
//!   rewriting is idempotent, so what the upstream reads is framed exactly as what was
//!   checked.
//! - The chunked scanner gives the same answer however the body is cut into reads.
#![no_main]

use std::sync::OnceLock;

use edgemesh_module::h1::framing::{Chunked, Framing};
use edgemesh_module::h1::fuzzing::Heads;
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 8 * 1024;
const MAX_TRAILERS: usize = 1024;

fn heads() -> &'static Heads {
    static HEADS: OnceLock<Heads> = OnceLock::new();
    HEADS.get_or_init(|| Heads::new(MAX_HEAD))
}

/// Header fields in a head (its lines less the start line and the blank line).
fn fields(head: &[u8]) -> usize {
    head.windows(2).filter(|w| w == b"\r\n").count() - 2
}

/// Whether a rewritten head is past what the parsers take when read again: longer than
/// the limit, or with more fields than `max` (100 for requests; 99 for responses, which
/// leave room for the `connection: close` the proxy may add).
fn over_limits(head: &[u8], max: usize) -> bool {
    head.len() > MAX_HEAD || fields(head) > max
}

/// Scans `body` whole and cut into `step`-byte reads: both must agree.
fn scan(body: &[u8], step: usize) {
    let mut whole = Chunked::new(MAX_TRAILERS);
    let expected = whole.scan(body).map(|n| (n, whole.done()));
    let mut pieces = Chunked::new(MAX_TRAILERS);
    let mut taken = 0;
    let mut got = Ok((0, false));
    for piece in body.chunks(step) {
        match pieces.scan(piece) {
            Ok(n) => {
                taken += n;
                got = Ok((taken, pieces.done()));
                if pieces.done() {
                    break;
                }
                assert_eq!(n, piece.len(), "a body not done takes every byte");
            }
            Err(e) => {
                got = Err(e);
                break;
            }
        }
    }
    assert_eq!(got, expected, "step {step}");
}

fuzz_target!(|data: &[u8]| {
    let heads = heads();
    let step = data.len() % 5 + 1;

    if let Ok(Some((head, consumed, framing))) = heads.request(data) {
        assert!(consumed <= data.len());
        match heads.request(&head) {
            Ok(Some((again, n, f))) => {
                assert_eq!(again, head, "request rewrite is idempotent");
                assert_eq!((n, f), (head.len(), framing));
            }
            Err(e) if over_limits(&head, 100) => drop(e),
            other => panic!(
                "rewritten request head {:?} read as {other:?}",
                String::from_utf8_lossy(&head)
            ),
        }
        if framing == Framing::Chunked {
            scan(&data[consumed..], step);
        }
    }

    let (is_head, close) = (data.len() % 3 == 0, data.len() % 2 == 0);
    if let Ok(Some((head, consumed, framing))) = heads.response(data, is_head, close) {
        assert!(consumed <= data.len());
        assert!(fields(&head) <= 100, "a client takes what is written on");
        match heads.response(&head, is_head, close) {
            Ok(Some((again, n, f))) => {
                assert_eq!(again, head, "response rewrite is idempotent");
                assert_eq!((n, f), (head.len(), framing));
            }
            Err(e) if over_limits(&head, 99) => drop(e),
            other => panic!(
                "rewritten response head {:?} read as {other:?}",
                String::from_utf8_lossy(&head)
            ),
        }
        if framing == Framing::Chunked {
            scan(&data[consumed..], step);
        }
    }

    // Bodies on their own, so the scanner is reached without a valid head too.
    scan(data, step);
});
