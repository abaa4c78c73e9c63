//! Wire compatibility of Message JSON with KubeEdge, and the binary frame codec.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::frame::{DEFAULT_MAX_FRAME_LEN, PREFIX_LEN};
use proto::{Content, FrameCodec, Header, Message, MsgId, Route, operation};
use serde_json::json;

const ID: &str = "0b6f5e9c-3a7d-4e52-9d3a-8f0c1e2d3b4a";
const PARENT: &str = "5d1c9a7e-2b4f-4c1d-8e6a-7f9b0c3d2e1a";

fn fixed(id: &str, parent: Option<&str>, route: Route, content: Content) -> Message {
    Message {
        header: Header {
            id: MsgId::parse(id),
            parent_id: parent.map(MsgId::parse),
            timestamp: 1_700_000_000_000,
            ..Header::default()
        },
        route,
        content,
    }
}

/// Serializes `msg`, checks it equals `golden` byte for byte, and that `golden` parses back
/// into `msg`.
fn assert_golden(msg: &Message, golden: &str) {
    assert_eq!(msg.to_json().unwrap(), golden);
    assert_eq!(&Message::from_json(golden.as_bytes()).unwrap(), msg);
}

#[test]
fn golden_request() {
    let msg = fixed(
        ID,
        None,
        Route::new(
            "edgecontroller",
            "resource",
            "insert",
            "node/edge-1/default/service/hello",
        ),
        Content::Json(json!({"kind": "Service", "metadata": {"name": "hello"}})),
    )
    .with_resource_version("42");
    assert_golden(
        &msg,
        r#"{"header":{"msg_id":"0b6f5e9c-3a7d-4e52-9d3a-8f0c1e2d3b4a","timestamp":1700000000000,"resourceversion":"42"},"route":{"source":"edgecontroller","group":"resource","operation":"insert","resource":"node/edge-1/default/service/hello"},"content":{"kind":"Service","metadata":{"name":"hello"}}}"#,
    );
}

#[test]
fn golden_sync_request() {
    let msg = fixed(
        ID,
        None,
        Route::new("metaManager", "resource", "query", "default/service/hello"),
        Content::default(),
    )
    .with_sync(true);
    assert_golden(
        &msg,
        r#"{"header":{"msg_id":"0b6f5e9c-3a7d-4e52-9d3a-8f0c1e2d3b4a","timestamp":1700000000000,"sync":true},"route":{"source":"metaManager","group":"resource","operation":"query","resource":"default/service/hello"},"content":null}"#,
    );
}

#[test]
fn golden_reply() {
    let msg = fixed(
        ID,
        Some(PARENT),
        Route::new(
            "edgecontroller",
            "resource",
            "response",
            "default/service/hello",
        ),
        Content::Json(json!({"spec": {"clusterIP": "10.96.0.10"}})),
    );
    assert_golden(
        &msg,
        r#"{"header":{"msg_id":"0b6f5e9c-3a7d-4e52-9d3a-8f0c1e2d3b4a","parent_msg_id":"5d1c9a7e-2b4f-4c1d-8e6a-7f9b0c3d2e1a","timestamp":1700000000000},"route":{"source":"edgecontroller","group":"resource","operation":"response","resource":"default/service/hello"},"content":{"spec":{"clusterIP":"10.96.0.10"}}}"#,
    );
}

#[test]
fn golden_ack() {
    let msg = fixed(
        ID,
        Some(PARENT),
        Route::new(
            "metaManager",
            "resource",
            "response",
            "default/service/hello",
        ),
        Content::text("OK"),
    );
    assert_golden(
        &msg,
        r#"{"header":{"msg_id":"0b6f5e9c-3a7d-4e52-9d3a-8f0c1e2d3b4a","parent_msg_id":"5d1c9a7e-2b4f-4c1d-8e6a-7f9b0c3d2e1a","timestamp":1700000000000},"route":{"source":"metaManager","group":"resource","operation":"response","resource":"default/service/hello"},"content":"OK"}"#,
    );
}

#[test]
fn golden_keepalive() {
    let msg = fixed(
        ID,
        None,
        Route::new("websocket", "resource", "keepalive", "node"),
        Content::text("ping"),
    );
    assert_golden(
        &msg,
        r#"{"header":{"msg_id":"0b6f5e9c-3a7d-4e52-9d3a-8f0c1e2d3b4a","timestamp":1700000000000},"route":{"source":"websocket","group":"resource","operation":"keepalive","resource":"node"},"content":"ping"}"#,
    );
}

#[test]
fn unknown_keys_are_ignored_and_missing_ones_default() {
    let text = r#"{"header":{"msg_id":"x-1","type":"t","timestamp":5},"route":{"destination":"d","operation":"update"},"extra":[1,2]}"#;
    let msg = Message::from_json(text.as_bytes()).unwrap();
    assert_eq!(msg.id().to_string(), "x-1");
    assert_eq!(msg.operation(), "update");
    assert!(msg.content.is_null());
    assert_eq!(
        msg.to_json().unwrap(),
        r#"{"header":{"msg_id":"x-1","timestamp":5},"route":{"operation":"update"},"content":null}"#
    );
}

#[test]
fn malformed_json_is_an_error() {
    for bad in [&b"{"[..], b"[]", b"{\"header\":5}", b"\xff\xfe", b""] {
        assert!(Message::from_json(bad).is_err());
    }
}

#[test]
fn reply_and_error_reply_point_at_the_request() {
    let req = Message::new(
        Route::new("edgemesh", "meta", operation::QUERY, "default/service/a"),
        Content::default(),
    )
    .with_sync(true);
    let ok = Message::reply(&req, "OK");
    assert_ne!(ok.id(), req.id());
    assert_eq!(ok.parent_id(), Some(req.id()));
    assert_eq!(ok.operation(), operation::RESPONSE);
    assert_eq!(ok.resource(), req.resource());
    assert!(ok.is_reply());
    assert!(!ok.header.sync);

    let err = Message::error_reply(&req, "not found");
    assert_eq!(err.parent_id(), Some(req.id()));
    assert_eq!(err.operation(), operation::ERROR);
    assert_eq!(err.content.as_str(), Some("not found"));
}

#[test]
fn json_round_trips_with_fresh_ids() {
    let msg = Message::new(
        Route::new("a", "b", "insert", "default/pod/p"),
        Content::Json(json!({"n": [1, 2.5, null, "s"]})),
    )
    .with_sync(true)
    .with_resource_version("99");
    let back = Message::from_json(&msg.to_json_vec().unwrap()).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn raw_bytes_in_json_become_base64_and_decode_back() {
    let payload = Bytes::from_static(&[0, 1, 2, 250, 255]);
    let msg = Message::new(Route::new("a", "mesh", "data", "s/1"), payload.clone());
    let text = msg.to_json().unwrap();
    assert!(text.contains(r#""content":"AAEC+v8=""#), "{text}");
    let back = Message::from_json(text.as_bytes()).unwrap();
    assert_eq!(back.content.to_bytes().unwrap(), payload);
}

fn sample(content: Content) -> Message {
    let mut m = Message::new(
        Route::new("edgemesh", "mesh", "data", "default/service/hello"),
        content,
    )
    .with_resource_version("7");
    m.header.parent_id = Some(MsgId::new_v4());
    m
}

#[test]
fn frame_round_trips_bytes_untouched_and_json() {
    let codec = FrameCodec::default();
    for content in [
        Content::Bytes(Bytes::from(vec![7u8; 100_000])),
        Content::Bytes(Bytes::new()),
        Content::Json(json!({"a": "b"})),
        Content::default(),
    ] {
        let msg = sample(content).with_sync(true);
        let frame = codec.encode_to_bytes(&msg).unwrap();
        assert_eq!(&frame[..2], b"EM");
        assert_eq!(codec.frame_len(&frame).unwrap(), Some(frame.len()));
        assert_eq!(codec.decode_frame(frame).unwrap(), msg);
    }
}

#[test]
fn frame_payload_is_a_zero_copy_slice() {
    let codec = FrameCodec::default();
    let msg = sample(Content::Bytes(Bytes::from(vec![1u8; 4096])));
    let frame = codec.encode_to_bytes(&msg).unwrap();
    let range = frame.as_ptr_range();
    let back = codec.decode_frame(frame.clone()).unwrap();
    let Content::Bytes(b) = back.content else {
        panic!("expected bytes")
    };
    assert!(range.contains(&b.as_ptr()));
}

#[test]
fn frames_stream_through_the_tokio_codec_in_pieces() {
    use tokio_util::codec::Decoder;
    let mut codec = FrameCodec::default();
    let msgs: Vec<Message> = (0..5)
        .map(|i| sample(Content::Bytes(Bytes::from(vec![i as u8; i * 1000]))))
        .collect();
    let mut wire = BytesMut::new();
    for m in &msgs {
        codec.encode(m, &mut wire).unwrap();
    }
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in wire.chunks(333) {
        buf.extend_from_slice(chunk);
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            out.push(m);
        }
    }
    assert_eq!(out, msgs);
    assert!(buf.is_empty());
}

#[test]
fn truncated_frames_are_errors() {
    let codec = FrameCodec::default();
    let frame = codec
        .encode_to_bytes(&sample(Content::Bytes(Bytes::from_static(b"payload"))))
        .unwrap();
    for cut in 0..frame.len() {
        assert!(
            codec.decode_frame(frame.slice(..cut)).is_err(),
            "cut at {cut} decoded"
        );
    }
    let mut longer = BytesMut::from(&frame[..]);
    longer.extend_from_slice(b"x");
    assert!(codec.decode_frame(longer.freeze()).is_err());
}

#[test]
fn oversized_frames_are_refused_both_ways() {
    let codec = FrameCodec::new(1024);
    let big = sample(Content::Bytes(Bytes::from(vec![0u8; 2000])));
    let mut dst = BytesMut::from(&b"keep"[..]);
    assert!(matches!(
        codec.encode(&big, &mut dst),
        Err(proto::Error::FrameTooLarge { .. })
    ));
    assert_eq!(
        &dst[..],
        b"keep",
        "a failed encode leaves the buffer as it was"
    );

    let frame = FrameCodec::default().encode_to_bytes(&big).unwrap();
    // The prefix alone is enough to refuse, before the rest is buffered.
    assert!(matches!(
        codec.frame_len(&frame[..PREFIX_LEN]),
        Err(proto::Error::FrameTooLarge { .. })
    ));
    assert!(codec.decode_frame(frame).is_err());
    // A length field claiming 4 GiB never allocates.
    let mut lie = BytesMut::from(&b"EM\x01\x00\xff\xff\xff\xff"[..]);
    lie.extend_from_slice(&[0; 64]);
    assert!(
        FrameCodec::new(DEFAULT_MAX_FRAME_LEN)
            .decode_frame(lie.freeze())
            .is_err()
    );
}

#[test]
fn bad_prefixes_are_errors() {
    let codec = FrameCodec::default();
    let good = codec.encode_to_bytes(&sample(Content::default())).unwrap();
    for (at, byte) in [(0, b'X'), (2, 9u8), (3, 0x80)] {
        let mut bad = BytesMut::from(&good[..]);
        bad[at] = byte;
        assert!(codec.decode_frame(bad.freeze()).is_err());
    }
    // A first byte that is not the magic is refused at once on a stream.
    assert!(codec.frame_len(b"G").is_err());
    assert_eq!(codec.frame_len(b"E").unwrap(), None);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = FrameCodec::new(4096);
        let _ = codec.decode_frame(Bytes::from(data.clone()));
        let _ = codec.frame_len(&data);
        let _ = Message::from_json(&data);
    }

    #[test]
    fn random_bodies_behind_a_valid_prefix_never_panic(
        flags in 0u8..4,
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut frame = BytesMut::from(&b"EM\x01"[..]);
        frame.extend_from_slice(&[flags]);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let _ = FrameCodec::default().decode_frame(frame.freeze());
    }

    #[test]
    fn any_message_round_trips_through_a_frame(
        source in "[a-zA-Z]{0,20}",
        resource in "[a-z0-9/.-]{0,300}",
        rv in "[0-9]{0,12}",
        ts in any::<i64>(),
        sync in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut msg = Message::new(Route::new(source, "mesh", "data", resource), Bytes::from(payload))
            .with_sync(sync)
            .with_resource_version(rv);
        msg.header.timestamp = ts;
        let codec = FrameCodec::default();
        let back = codec.decode_frame(codec.encode_to_bytes(&msg).unwrap()).unwrap();
        prop_assert_eq!(back, msg);
    }
}
