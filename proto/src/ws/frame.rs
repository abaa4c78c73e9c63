//! Frame headers (RFC 6455 §5.2): two to fourteen bytes before each payload.
//!
//! ```text
//!  byte 0: FIN | RSV1 RSV2 RSV3 | opcode (4 bits)
//!  byte 1: MASK | length (7 bits: 0-125, or 126: 16-bit length follows, 127: 64-bit)
//!  [2 or 8 bytes of extended length, big-endian]
//!  [4 bytes of masking key when MASK is set]
//! ```

use bytes::BufMut;

use super::{MAX_CONTROL_LEN, opcode};
use crate::{Error, Result};

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

/// Longest header.
pub(crate) const MAX_HEADER_LEN: usize = 14;

/// Parses the header at the start of `buf`: its length in bytes and the header, or `None`
/// while `buf` holds only part of it.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(usize, Header)>> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(Error::WsProtocol(
            "reserved bits set, and no extension was negotiated",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let control = opcode & 0x8 != 0;
    match opcode {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {}
        _ => return Err(Error::WsProtocol("reserved opcode")),
    }
    let masked = b1 & 0x80 != 0;
    let (len_bytes, short) = match b1 & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let len = match short {
        Some(n) => n,
        None if len_bytes == 2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        None => {
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if n >> 63 != 0 {
                return Err(Error::WsProtocol("64-bit length with its top bit set"));
            }
            n
        }
    };
    if control && (!fin || len > MAX_CONTROL_LEN as u64) {
        return Err(Error::WsProtocol(
            "control frame fragmented or longer than 125 bytes",
        ));
    }
    let mask = masked.then(|| {
        let at = 2 + len_bytes;
        [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
    });
    Ok(Some((
        header_len,
        Header {
            fin,
            opcode,
            mask,
            len,
        },
    )))
}

/// Appends the header of a final (unfragmented) frame to `dst`.
pub(crate) fn encode(dst: &mut impl BufMut, opcode: u8, mask: Option<[u8; 4]>, len: usize) {
    dst.put_u8(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        dst.put_u8(mask_bit | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        dst.put_u8(mask_bit | 126);
        dst.put_u16(short);
    } else {
        dst.put_u8(mask_bit | 127);
        dst.put_u64(len as u64);
    }
    if let Some(key) = mask {
        dst.put_slice(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(opcode: u8, mask: Option<[u8; 4]>, len: usize) {
        let mut buf = Vec::new();
        encode(&mut buf, opcode, mask, len);
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]).unwrap(), None, "a header cut at {cut}");
        }
        let (n, header) = parse(&buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(
            header,
            Header {
                fin: true,
                opcode,
                mask,
                len: len as u64
            }
        );
    }

    #[test]
    fn every_length_form_round_trips() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
            round_trip(opcode::BINARY, None, len);
            round_trip(opcode::TEXT, Some([1, 2, 3, 4]), len);
        }
    }

    #[test]
    fn rfc_6455_examples() {
        // §5.7: an unmasked "Hello", a 256-byte and a 64 KiB unmasked binary message.
        assert_eq!(
            parse(&[0x81, 0x05]).unwrap(),
            Some((
                2,
                Header {
                    fin: true,
                    opcode: opcode::TEXT,
                    mask: None,
                    len: 5
                }
            ))
        );
        assert_eq!(
            parse(&[0x82, 0x7e, 0x01, 0x00]).unwrap().unwrap().1.len,
            256
        );
        let big = [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(parse(&big).unwrap().unwrap().1.len, 65_536);
        // A first fragment of "Hel" (FIN clear).
        assert!(!parse(&[0x01, 0x03]).unwrap().unwrap().1.fin);
    }

    #[test]
    fn breaches_are_refused() {
        for bad in [
            &[0xc2, 0x00][..],                        // RSV1 without an extension
            &[0x83, 0x00],                            // reserved data opcode
            &[0x8b, 0x00],                            // reserved control opcode
            &[0x09, 0x00],                            // fragmented ping
            &[0x89, 0x7e, 0x00, 0x7e],                // 126-byte ping
            &[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0], // top length bit
        ] {
            assert!(
                matches!(parse(bad), Err(Error::WsProtocol(_))),
                "{bad:02x?} accepted"
            );
        }
    }
}
