//! KubeEdge Message JSON (`proto::Message::from_json`), as read from the cloud link and the
//! metamanager socket. What parses must write back out and parse again to the same header
//! and route, and must survive the trip through the binary frame when it fits one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{Error, FrameCodec, Message};

/// Same header (as the protocol reads it) and route. The frame has no way to tell an empty
/// parent id from none, and neither does `Message::parent_id`, so neither is compared raw.
fn assert_same(a: &Message, b: &Message) {
    assert_eq!(a.id(), b.id());
    assert_eq!(a.parent_id(), b.parent_id());
    assert_eq!(a.header.timestamp, b.header.timestamp);
    assert_eq!(a.header.resource_version, b.header.resource_version);
    assert_eq!(a.header.sync, b.header.sync);
    assert_eq!(a.route, b.route);
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::from_json(data) else {
        return;
    };
    let json = msg.to_json_vec().expect("a parsed message serializes");
    let again = Message::from_json(&json).expect("our own JSON parses");
    assert_eq!(again.header, msg.header);
    assert_eq!(again.route, msg.route);
    // Floats may not print back to the same bits (serde_json parses without exact
    // rounding), so content is compared as text after one trip.
    assert_eq!(again.to_json_vec().unwrap(), json);

    let codec = FrameCodec::default();
    match codec.encode_to_bytes(&msg) {
        Ok(frame) => assert_same(&codec.decode_frame(frame).expect("our frame decodes"), &msg),
        Err(Error::FrameTooLarge { .. } | Error::FrameInvalid(_)) => {}
        Err(e) => panic!("unexpected encode error {e}"),
    }
});
