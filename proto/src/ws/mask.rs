//! The client-to-server masking of RFC 6455 §5.3: each payload byte XORed with the key
//! byte at its offset modulo four.

/// Masks (or unmasks: the operation is its own inverse) `buf` in place.
pub(crate) fn apply(buf: &mut [u8], key: [u8; 4]) {
    // Eight bytes at a time (the compiler widens this further); a whole word keeps the
    // key's phase because 8 is a multiple of 4.
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let masked = u64::from_ne_bytes((&*chunk).try_into().expect("chunk of 8")) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytewise(buf: &mut [u8], key: [u8; 4]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }

    #[test]
    fn matches_the_bytewise_definition_at_every_length() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let (mut fast, mut slow) = (data.clone(), data.clone());
            apply(&mut fast, key);
            bytewise(&mut slow, key);
            assert_eq!(fast, slow, "length {len}");
            apply(&mut fast, key);
            assert_eq!(fast, data, "unmasking restores length {len}");
        }
    }

    #[test]
    fn rfc_6455_example() {
        // §5.7: a masked "Hello" with key 37 fa 21 3d.
        let mut payload = *b"Hello";
        apply(&mut payload, [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
