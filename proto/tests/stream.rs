//! The stream frame ("ES"): exact layout of every kind, round trips, and hostile input.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::stream::frame::{DEFAULT_MAX_FRAME_LEN, MAX_NAME_LEN, MAX_REASON_LEN};
use proto::stream::{
    HEADER_LEN, MAX_WINDOW, Open, ProtocolHint, ResetCode, StreamCodec, StreamFrame, StreamId,
    is_stream_frame,
};
use proto::{Content, Error, FrameCodec, Message, Route};

fn id(n: u32) -> StreamId {
    StreamId::new(n).unwrap()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Encodes `frame`, checks it equals `golden` byte for byte, and that `golden` decodes back
/// into `frame`.
fn assert_golden(frame: &StreamFrame, golden: &[u8]) {
    let codec = StreamCodec::default();
    let bytes = codec.encode_to_bytes(frame).unwrap();
    assert_eq!(&bytes[..], golden, "encoding of {frame:?}");
    assert_eq!(
        &codec.decode_frame(Bytes::copy_from_slice(golden)).unwrap(),
        frame
    );
    assert_eq!(codec.frame_len(golden).unwrap(), Some(golden.len()));
    assert!(is_stream_frame(golden));
}

fn open_v4() -> StreamFrame {
    StreamFrame::Open {
        id: id(1),
        open: Box::new(Open {
            dest_node: "edge-2".into(),
            source_node: "".into(),
            namespace: "default".into(),
            name: "hello".into(),
            port: 80,
            endpoint: "10.0.0.7:8080".parse().unwrap(),
            protocol: ProtocolHint::Http1,
            initial_window: 256 * 1024,
        }),
    }
}

#[test]
fn golden_open_ipv4_from_an_edge() {
    assert_golden(
        &open_v4(),
        &cat(&[
            b"ES\x01\x01",     // magic, version, kind Open
            &[0, 0, 0, 1],     // stream id 1 (edge-opened)
            &[0, 0, 0, 36],    // body length
            &[1],              // protocol HTTP/1
            &[0, 4, 0, 0],     // initial window 262144
            &[0, 80],          // service port 80
            &[4, 10, 0, 0, 7], // IPv4 10.0.0.7
            &[0x1f, 0x90],     // endpoint port 8080
            b"\x06edge-2",     // destination node
            b"\x00",           // source node: empty from an edge
            b"\x07default\x05hello",
        ]),
    );
}

#[test]
fn golden_open_ipv6_stamped_by_the_hub() {
    let frame = StreamFrame::Open {
        id: id(2),
        open: Box::new(Open {
            dest_node: "".into(),
            source_node: "edge-1".into(),
            namespace: "default".into(),
            name: "grpc".into(),
            port: 50051,
            endpoint: "[fd00::1]:443".parse().unwrap(),
            protocol: ProtocolHint::Http2,
            initial_window: 65535,
        }),
    };
    assert_golden(
        &frame,
        &cat(&[
            b"ES\x01\x01",
            &[0, 0, 0, 2],  // stream id 2 (cloud-opened)
            &[0, 0, 0, 47], // body length
            &[2],           // protocol HTTP/2
            &[0, 0, 0xff, 0xff],
            &[0xc3, 0x83], // service port 50051
            &[6, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0x01, 0xbb], // endpoint port 443
            b"\x00",       // destination: the cloud
            b"\x06edge-1", // source as the hub stamped it
            b"\x07default\x04grpc",
        ]),
    );
}

#[test]
fn golden_data() {
    let frame = StreamFrame::Data {
        id: id(3),
        payload: Bytes::from_static(b"hi"),
    };
    assert_golden(&frame, b"ES\x01\x02\x00\x00\x00\x03\x00\x00\x00\x02hi");
    let empty = StreamFrame::Data {
        id: id(3),
        payload: Bytes::new(),
    };
    assert_golden(&empty, b"ES\x01\x02\x00\x00\x00\x03\x00\x00\x00\x00");
}

#[test]
fn golden_fin() {
    assert_golden(
        &StreamFrame::Fin { id: id(2) },
        b"ES\x01\x03\x00\x00\x00\x02\x00\x00\x00\x00",
    );
}

#[test]
fn golden_reset() {
    let frame = StreamFrame::Reset {
        id: id(u32::MAX - 1),
        code: ResetCode::Refused,
        reason: "no route".into(),
    };
    assert_golden(
        &frame,
        &cat(&[
            b"ES\x01\x04",
            &[0xff, 0xff, 0xff, 0xfe],
            &[0, 0, 0, 10],
            &[4, 8], // code refused, text length
            b"no route",
        ]),
    );
}

#[test]
fn golden_window() {
    assert_golden(
        &StreamFrame::Window {
            id: id(5),
            increment: 32768,
        },
        b"ES\x01\x05\x00\x00\x00\x05\x00\x00\x00\x04\x00\x00\x80\x00",
    );
}

#[test]
fn every_reset_code_has_its_number() {
    let codes = [
        (ResetCode::Forbidden, 1, "forbidden"),
        (ResetCode::UnknownService, 2, "unknown_service"),
        (ResetCode::NoEndpoint, 3, "no_endpoint"),
        (ResetCode::Refused, 4, "refused"),
        (ResetCode::Timeout, 5, "timeout"),
        (ResetCode::NodeOffline, 6, "node_offline"),
        (ResetCode::TooManyStreams, 7, "too_many_streams"),
        (ResetCode::Limited, 8, "limited"),
        (ResetCode::ProtocolError, 9, "protocol_error"),
        (ResetCode::GoingAway, 10, "going_away"),
        (ResetCode::Cancelled, 11, "cancelled"),
    ];
    for (code, n, name) in codes {
        let frame = StreamFrame::Reset {
            id: id(1),
            code,
            reason: "".into(),
        };
        let bytes = StreamCodec::default().encode_to_bytes(&frame).unwrap();
        assert_eq!(bytes[HEADER_LEN], n);
        assert_eq!(code.to_string(), name);
    }
}

#[test]
fn the_data_header_and_sealing_in_place_match_the_encoder() {
    let codec = StreamCodec::default();
    let payload = vec![0xabu8; 1000];
    let frame = StreamFrame::Data {
        id: id(9),
        payload: Bytes::from(payload.clone()),
    };
    let encoded = codec.encode_to_bytes(&frame).unwrap();

    let header = codec.data_header(id(9), payload.len()).unwrap();
    assert_eq!(cat(&[&header, &payload]), &encoded[..]);

    // A reader that kept room for the header reads straight behind it.
    let mut buf = vec![0xeeu8; HEADER_LEN];
    buf.extend_from_slice(&payload);
    codec.seal_data(id(9), &mut buf).unwrap();
    assert_eq!(&buf[..], &encoded[..]);

    assert!(codec.seal_data(id(9), &mut [0u8; HEADER_LEN - 1]).is_err());
}

#[test]
fn data_payload_is_a_zero_copy_slice() {
    let codec = StreamCodec::default();
    let frame = codec
        .encode_to_bytes(&StreamFrame::Data {
            id: id(1),
            payload: Bytes::from(vec![1u8; 4096]),
        })
        .unwrap();
    let range = frame.as_ptr_range();
    let StreamFrame::Data { payload, .. } = codec.decode_frame(frame.clone()).unwrap() else {
        panic!("expected data")
    };
    assert_eq!(payload.len(), 4096);
    assert!(range.contains(&payload.as_ptr()));
}

#[test]
fn stream_and_message_frames_tell_each_other_apart() {
    let em = FrameCodec::default()
        .encode_to_bytes(&Message::new(
            Route::new("edgemesh", "mesh", "data", "default/service/a"),
            Content::Bytes(Bytes::from_static(b"x")),
        ))
        .unwrap();
    let es = StreamCodec::default().encode_to_bytes(&open_v4()).unwrap();
    assert!(!is_stream_frame(&em));
    assert!(is_stream_frame(&es));
    assert!(matches!(
        StreamCodec::default().decode_frame(em),
        Err(Error::FrameInvalid("bad magic"))
    ));
    assert!(FrameCodec::default().decode_frame(es).is_err());
    // On a byte stream the first wrong byte is enough.
    assert!(StreamCodec::default().frame_len(b"EM").is_err());
    assert_eq!(StreamCodec::default().frame_len(b"E").unwrap(), None);
}

#[test]
fn every_truncation_of_every_kind_is_an_error() {
    let codec = StreamCodec::default();
    let frames = [
        open_v4(),
        StreamFrame::Data {
            id: id(1),
            payload: Bytes::from_static(b"payload"),
        },
        StreamFrame::Fin { id: id(1) },
        StreamFrame::Reset {
            id: id(1),
            code: ResetCode::Timeout,
            reason: "slow".into(),
        },
        StreamFrame::Window {
            id: id(1),
            increment: 1,
        },
    ];
    for frame in frames {
        let bytes = codec.encode_to_bytes(&frame).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                codec.decode_frame(bytes.slice(..cut)).is_err(),
                "{frame:?} cut at {cut} decoded"
            );
        }
        let mut longer = BytesMut::from(&bytes[..]);
        longer.extend_from_slice(b"x");
        assert!(codec.decode_frame(longer.freeze()).is_err());
    }
}

/// `body` behind a header of `kind` for stream 1 with a matching length.
fn raw(kind: u8, body: &[u8]) -> Bytes {
    let len = (body.len() as u32).to_be_bytes();
    Bytes::from(cat(&[b"ES\x01", &[kind], &[0, 0, 0, 1], &len, body]))
}

#[test]
fn a_body_cut_short_behind_a_consistent_length_is_invalid() {
    let codec = StreamCodec::default();
    let open = codec.encode_to_bytes(&open_v4()).unwrap();
    for cut in HEADER_LEN..open.len() {
        let frame = raw(1, &open[HEADER_LEN..cut]);
        assert!(
            matches!(
                codec.decode_frame(frame),
                Err(Error::FrameInvalid("field runs past the body"))
            ),
            "body cut at {cut}"
        );
    }
    // Extra bytes inside the body length are refused too.
    assert!(matches!(
        codec.decode_frame(raw(3, b"x")),
        Err(Error::FrameInvalid("trailing bytes in the body"))
    ));
    assert!(matches!(
        codec.decode_frame(raw(5, &[0, 0, 0, 1, 0])),
        Err(Error::FrameInvalid("trailing bytes in the body"))
    ));
    let mut open_body = open[HEADER_LEN..].to_vec();
    open_body.push(0);
    assert!(codec.decode_frame(raw(1, &open_body)).is_err());
}

#[test]
fn bad_headers_are_typed_errors() {
    let codec = StreamCodec::default();
    let good = codec
        .encode_to_bytes(&StreamFrame::Fin { id: id(1) })
        .unwrap();
    let with = |at: usize, byte: u8| {
        let mut b = BytesMut::from(&good[..]);
        b[at] = byte;
        codec.decode_frame(b.freeze())
    };
    assert!(matches!(
        with(1, b'M'),
        Err(Error::FrameInvalid("bad magic"))
    ));
    assert!(matches!(
        with(2, 2),
        Err(Error::FrameInvalid("unsupported version"))
    ));
    assert!(matches!(with(3, 0), Err(Error::UnknownStreamKind(0))));
    assert!(matches!(with(3, 6), Err(Error::UnknownStreamKind(6))));
    assert!(matches!(
        with(7, 0),
        Err(Error::FrameInvalid("stream id 0"))
    ));
}

#[test]
fn unknown_enumerated_values_are_typed_errors() {
    let codec = StreamCodec::default();
    let open = codec.encode_to_bytes(&open_v4()).unwrap();
    let mut body = open[HEADER_LEN..].to_vec();
    body[0] = 4; // protocol hint
    assert!(matches!(
        codec.decode_frame(raw(1, &body)),
        Err(Error::UnknownStreamValue {
            field: "protocol hint",
            value: 4
        })
    ));
    let mut body = open[HEADER_LEN..].to_vec();
    body[7] = 5; // address family
    assert!(matches!(
        codec.decode_frame(raw(1, &body)),
        Err(Error::UnknownStreamValue {
            field: "address family",
            value: 5
        })
    ));
    for code in [0u8, 12, 255] {
        assert!(matches!(
            codec.decode_frame(raw(4, &[code, 0])),
            Err(Error::UnknownStreamValue {
                field: "reset code",
                ..
            })
        ));
    }
    assert!(matches!(
        codec.decode_frame(raw(4, &[1, 2, 0xff, 0xfe])),
        Err(Error::FrameInvalid("reset text is not UTF-8"))
    ));
}

#[test]
fn window_values_outside_one_to_max_are_refused_both_ways() {
    let codec = StreamCodec::default();
    for bad in [0, MAX_WINDOW + 1, u32::MAX] {
        assert!(matches!(
            codec.decode_frame(raw(5, &bad.to_be_bytes())),
            Err(Error::FrameInvalid(_))
        ));
        let frame = StreamFrame::Window {
            id: id(1),
            increment: bad,
        };
        let mut dst = BytesMut::from(&b"keep"[..]);
        assert!(codec.encode(&frame, &mut dst).is_err());
        assert_eq!(&dst[..], b"keep", "a failed encode leaves the buffer");
    }
    let mut open = open_v4();
    if let StreamFrame::Open { open, .. } = &mut open {
        open.initial_window = MAX_WINDOW + 1;
    }
    assert!(codec.encode_to_bytes(&open).is_err());
    let good = codec.encode_to_bytes(&open_v4()).unwrap();
    let mut body = good[HEADER_LEN..].to_vec();
    body[1..5].copy_from_slice(&(MAX_WINDOW + 1).to_be_bytes());
    assert!(codec.decode_frame(raw(1, &body)).is_err());
}

fn open_named(dest: &str, source: &str, namespace: &str, name: &str) -> StreamFrame {
    let StreamFrame::Open { id, mut open } = open_v4() else {
        unreachable!()
    };
    open.dest_node = dest.into();
    open.source_node = source.into();
    open.namespace = namespace.into();
    open.name = name.into();
    StreamFrame::Open { id, open }
}

/// An Open body with the given names, assembled by hand so invalid names reach the decoder.
fn open_body_with(names: [&[u8]; 4]) -> Vec<u8> {
    let mut body = vec![0, 0, 1, 0, 0, 0, 80, 4, 127, 0, 0, 1, 0, 80];
    for n in names {
        body.push(n.len() as u8);
        body.extend_from_slice(n);
    }
    body
}

#[test]
fn names_must_be_dns_names_on_both_ends() {
    let codec = StreamCodec::default();
    let long = "a".repeat(MAX_NAME_LEN);
    assert!(
        codec
            .encode_to_bytes(&open_named(&long, &long, &long, &long))
            .is_ok()
    );
    let too_long = "a".repeat(MAX_NAME_LEN + 1);
    let bad_names = [
        "Edge", "a/b", "../x", "-a", "a-", "a.", "a b", "a\0", "é", &too_long,
    ];
    for bad in bad_names {
        for (i, frame) in [
            open_named(bad, "", "ns", "svc"),
            open_named("", bad, "ns", "svc"),
            open_named("", "", bad, "svc"),
            open_named("", "", "ns", bad),
        ]
        .iter()
        .enumerate()
        {
            assert!(
                matches!(
                    codec.encode_to_bytes(frame),
                    Err(Error::InvalidStreamName { .. })
                ),
                "{bad:?} in field {i} encoded"
            );
        }
        if bad.len() <= 255 {
            let body = open_body_with([b"", b"", b"ns", bad.as_bytes()]);
            assert!(
                matches!(
                    codec.decode_frame(raw(1, &body)),
                    Err(Error::InvalidStreamName { .. })
                ),
                "{bad:?} decoded"
            );
        }
    }
    // Namespace and service name are never empty; the nodes may be.
    for names in [[&b""[..], b"", b"", b"svc"], [b"", b"", b"ns", b""]] {
        assert!(matches!(
            codec.decode_frame(raw(1, &open_body_with(names))),
            Err(Error::InvalidStreamName {
                reason: "empty",
                ..
            })
        ));
    }
    assert!(
        codec
            .decode_frame(raw(1, &open_body_with([b"", b"", b"ns", b"svc"])))
            .is_ok()
    );
    // Invalid bytes never reach the message whole: it is bounded and lossy.
    let err = codec
        .decode_frame(raw(1, &open_body_with([b"\xff", b"", b"ns", b"svc"])))
        .unwrap_err();
    assert!(err.to_string().contains("destination node"), "{err}");
}

#[test]
fn a_long_reset_text_is_cut_at_a_character_boundary() {
    let codec = StreamCodec::default();
    // 'é' is two bytes: 128 of them are 256 bytes, one too many.
    let reason: String = "é".repeat(128);
    let frame = StreamFrame::Reset {
        id: id(1),
        code: ResetCode::ProtocolError,
        reason: reason.as_str().into(),
    };
    let bytes = codec.encode_to_bytes(&frame).unwrap();
    let StreamFrame::Reset { reason: back, .. } = codec.decode_frame(bytes).unwrap() else {
        panic!("expected reset")
    };
    assert_eq!(back.len(), 254);
    assert!(back.len() <= MAX_REASON_LEN);
    assert!(reason.starts_with(back.as_str()));
}

#[test]
fn oversized_frames_are_refused_from_the_header_alone() {
    let small = StreamCodec::new(0);
    // The limit never goes below the largest Open frame: control frames always fit.
    let long = "a".repeat(MAX_NAME_LEN);
    let mut open = open_named(&long, &long, &long, &long);
    if let StreamFrame::Open { open, .. } = &mut open {
        open.endpoint = "[::1]:1".parse().unwrap();
    }
    let encoded = small.encode_to_bytes(&open).unwrap();
    assert_eq!(encoded.len(), small.max_frame_len());
    assert_eq!(small.decode_frame(encoded).unwrap(), open);

    let codec = StreamCodec::new(HEADER_LEN + 2000);
    assert_eq!(codec.max_data_len(), 2000);
    let big = StreamFrame::Data {
        id: id(1),
        payload: Bytes::from(vec![0u8; 2001]),
    };
    let mut dst = BytesMut::from(&b"keep"[..]);
    assert!(matches!(
        codec.encode(&big, &mut dst),
        Err(Error::FrameTooLarge {
            size: 2013,
            max: 2012
        })
    ));
    assert_eq!(&dst[..], b"keep");
    assert!(codec.data_header(id(1), 2001).is_err());
    assert!(codec.data_header(id(1), usize::MAX).is_err());
    assert!(codec.data_header(id(1), 2000).is_ok());

    let frame = StreamCodec::default().encode_to_bytes(&big).unwrap();
    assert!(matches!(
        codec.frame_len(&frame[..HEADER_LEN]),
        Err(Error::FrameTooLarge { .. })
    ));
    assert!(codec.decode_frame(frame).is_err());
    // A length claiming 4 GiB is refused with 12 bytes in hand, before anything is buffered.
    let lie = b"ES\x01\x02\x00\x00\x00\x01\xff\xff\xff\xff";
    assert!(matches!(
        StreamCodec::default().frame_len(lie),
        Err(Error::FrameTooLarge { .. })
    ));
    assert_eq!(DEFAULT_MAX_FRAME_LEN, HEADER_LEN + 256 * 1024);
}

#[test]
fn frames_stream_through_the_tokio_codec_in_pieces() {
    use tokio_util::codec::{Decoder, Encoder};
    let mut codec = StreamCodec::default();
    let frames: Vec<StreamFrame> = (1..=5u32)
        .flat_map(|i| {
            [
                StreamFrame::Data {
                    id: id(i),
                    payload: Bytes::from(vec![i as u8; i as usize * 1000]),
                },
                StreamFrame::Window {
                    id: id(i),
                    increment: i,
                },
            ]
        })
        .chain([open_v4(), StreamFrame::Fin { id: id(7) }])
        .collect();
    let mut wire = BytesMut::new();
    for f in &frames {
        Encoder::encode(&mut codec, f, &mut wire).unwrap();
    }
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in wire.chunks(333) {
        buf.extend_from_slice(chunk);
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
    }
    assert_eq!(out, frames);
    assert!(buf.is_empty());
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?"
}

fn node() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), name()]
}

fn endpoint() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn stream_id() -> impl Strategy<Value = StreamId> {
    (1..=u32::MAX).prop_map(id)
}

fn protocol() -> impl Strategy<Value = ProtocolHint> {
    prop_oneof![
        Just(ProtocolHint::Tcp),
        Just(ProtocolHint::Http1),
        Just(ProtocolHint::Http2),
        Just(ProtocolHint::Datagram),
    ]
}

fn reset_code() -> impl Strategy<Value = ResetCode> {
    prop::sample::select(vec![
        ResetCode::Forbidden,
        ResetCode::UnknownService,
        ResetCode::NoEndpoint,
        ResetCode::Refused,
        ResetCode::Timeout,
        ResetCode::NodeOffline,
        ResetCode::TooManyStreams,
        ResetCode::Limited,
        ResetCode::ProtocolError,
        ResetCode::GoingAway,
        ResetCode::Cancelled,
    ])
}

fn any_frame() -> impl Strategy<Value = StreamFrame> {
    let open = (
        stream_id(),
        (node(), node(), name(), name()),
        any::<u16>(),
        endpoint(),
        protocol(),
        0..=MAX_WINDOW,
    )
        .prop_map(
            |(id, (dest, source, namespace, name), port, endpoint, protocol, window)| {
                StreamFrame::Open {
                    id,
                    open: Box::new(Open {
                        dest_node: dest.into(),
                        source_node: source.into(),
                        namespace: namespace.into(),
                        name: name.into(),
                        port,
                        endpoint,
                        protocol,
                        initial_window: window,
                    }),
                }
            },
        );
    let data =
        (stream_id(), proptest::collection::vec(any::<u8>(), 0..4096)).prop_map(|(id, p)| {
            StreamFrame::Data {
                id,
                payload: Bytes::from(p),
            }
        });
    let fin = stream_id().prop_map(|id| StreamFrame::Fin { id });
    // At most 60 characters of at most 4 bytes: within the 255-byte text limit.
    let reset = (stream_id(), reset_code(), "\\PC{0,60}").prop_map(|(id, code, reason)| {
        StreamFrame::Reset {
            id,
            code,
            reason: reason.into(),
        }
    });
    let window = (stream_id(), 1..=MAX_WINDOW)
        .prop_map(|(id, increment)| StreamFrame::Window { id, increment });
    prop_oneof![open, data, fin, reset, window]
}

proptest! {
    #[test]
    fn any_frame_round_trips(frame in any_frame()) {
        let codec = StreamCodec::default();
        let bytes = codec.encode_to_bytes(&frame).unwrap();
        prop_assert!(is_stream_frame(&bytes));
        prop_assert_eq!(codec.frame_len(&bytes).unwrap(), Some(bytes.len()));
        prop_assert_eq!(codec.decode_frame(bytes).unwrap(), frame);
    }

    #[test]
    fn any_sequence_decodes_the_same_from_any_split(
        frames in proptest::collection::vec(any_frame(), 1..8),
        chunk in 1usize..700,
    ) {
        use tokio_util::codec::Decoder;
        let mut codec = StreamCodec::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            codec.encode(f, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = StreamCodec::new(1024);
        let _ = codec.decode_frame(Bytes::from(data.clone()));
        let _ = codec.frame_len(&data);
        let mut buf = BytesMut::from(&data[..]);
        let _ = tokio_util::codec::Decoder::decode(&mut { codec }, &mut buf);
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(
        kind in 0u8..8,
        stream in any::<u32>(),
        body in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut frame = BytesMut::from(&b"ES\x01"[..]);
        frame.extend_from_slice(&[kind]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let result = StreamCodec::default().decode_frame(frame.freeze());
        // Data takes any body; every other outcome is a frame or a typed error.
        if kind == 2 && stream != 0 {
            prop_assert!(result.is_ok());
        }
        if stream == 0 || !(1..=5).contains(&kind) {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn every_prefix_and_bit_flip_of_a_valid_frame_is_safe(
        frame in any_frame(),
        flip_at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let codec = StreamCodec::default();
        let bytes = codec.encode_to_bytes(&frame).unwrap();
        let cut = flip_at.index(bytes.len());
        prop_assert!(codec.decode_frame(bytes.slice(..cut)).is_err());
        let mut flipped = BytesMut::from(&bytes[..]);
        flipped[cut] ^= 1 << bit;
        let _ = codec.decode_frame(flipped.freeze());
    }
}
