//! The binary message frame (`proto::FrameCodec::decode_frame`), whole and fed to the
//! streaming decoder in pieces. Both must agree, and what decodes must encode and decode
//! to the same message.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use proto::{Content, FrameCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // A small limit, so oversized frames are reached by short inputs too.
    let codec = FrameCodec::new(4096);
    let whole = codec.decode_frame(Bytes::copy_from_slice(data));

    // The same bytes arriving in pieces on a byte stream.
    let mut streaming = codec;
    let mut buf = BytesMut::new();
    let step = data.len() % 7 + 1;
    let mut streamed = None;
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        match streaming.decode(&mut buf) {
            Ok(Some(m)) => {
                streamed = Some(Ok(m));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                streamed = Some(Err(e));
                break;
            }
        }
    }
    if let Ok(msg) = &whole {
        // One whole frame: the stream decoder returns the same message, with no bytes left.
        match streamed {
            Some(Ok(m)) => assert_eq!(&m, msg),
            other => panic!("stream decoder disagrees: {other:?}"),
        }
        assert!(buf.is_empty());
        let frame = codec.encode_to_bytes(msg).expect("a decoded frame encodes");
        let back = codec
            .decode_frame(frame.clone())
            .expect("our own frame decodes");
        assert_eq!(back.header, msg.header);
        assert_eq!(back.route, msg.route);
        if let Content::Bytes(b) = &msg.content {
            // Raw payloads are carried untouched: the frame is the input itself.
            assert_eq!(back.content, Content::Bytes(b.clone()));
            assert_eq!(&frame[..], data);
        }
    }
});
