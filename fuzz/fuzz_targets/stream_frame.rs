//! Tunnel stream frames (`proto::stream::StreamCodec::decode_frame`). The encoding is
//! canonical: whatever decodes encodes back to exactly the input bytes, and the streaming
//! decoder agrees with the whole-frame one.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use proto::StreamCodec;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The smallest limit the codec allows (the largest Open frame), so oversized Data
    // frames are reached by short inputs too.
    let codec = StreamCodec::new(0);
    let Ok(frame) = codec.decode_frame(Bytes::copy_from_slice(data)) else {
        return;
    };
    let bytes = codec
        .encode_to_bytes(&frame)
        .expect("a decoded frame encodes");
    assert_eq!(&bytes[..], data, "encode(decode(x)) == x");
    let again = codec.decode_frame(bytes).expect("our own frame decodes");
    assert_eq!(again, frame);

    let mut streaming = codec;
    let mut buf = BytesMut::from(data);
    let streamed = streaming
        .decode(&mut buf)
        .expect("the stream decoder agrees");
    assert_eq!(streamed, Some(frame));
    assert!(buf.is_empty());
});
