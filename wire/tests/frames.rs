//! Frame codec behaviour: round trips, zero-copy payloads and every kind of
//! bad input a peer can send.

use allot_wire::frame::{pad8, HEADER_LEN};
use allot_wire::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

fn encode<M: WireMessage>(m: &M, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    FrameEncoder::default()
        .encode(m, payload, &mut out)
        .unwrap();
    out
}

#[test]
fn every_kind_round_trips() {
    let samples = allot_wire::samples::all_frames();
    assert_eq!(samples.len(), MessageKind::ALL.len(), "a sample per kind");
    let mut dec = FrameDecoder::default();
    for (_, bytes) in &samples {
        dec.feed(bytes);
    }
    for (kind, bytes) in &samples {
        let frame = dec.next_frame().unwrap().expect("whole frame buffered");
        assert_eq!(frame.kind(), *kind);
        assert_eq!(frame.as_bytes().len(), bytes.len());
        assert_eq!(frame.as_bytes().len() % 8, 0, "frames are padded to 8");
        kind.validate(frame.body()).unwrap();
    }
    assert!(dec.next_frame().unwrap().is_none());
    dec.finish().unwrap();
}

#[test]
fn submit_reads_back_in_place_with_payload() {
    let sent = allot_wire::samples::submit();
    let bytes = encode(&sent, b"input bytes");
    let frame = decode_one(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
    let v = frame.validate::<Submit>().unwrap();
    let a = v.get();
    assert_eq!(a.task_id, sent.task_id);
    assert_eq!(a.app.as_str(), "echo");
    assert_eq!(a.demands.mem, 512 << 20);
    assert_eq!(a.require.as_str(), sent.require);
    assert_eq!(&v.payload()[..], b"input bytes");
    assert_eq!(v.to_owned_message().unwrap(), sent);
}

#[test]
fn validated_reads_in_place() {
    // Exercises the unsafe unchecked read behind `Validated::get`, also
    // under Miri: values must match what validation saw, across clones.
    let bytes = encode(&Cancel { task_id: 99 }, b"");
    let frame = decode_one(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
    let v = frame.validate::<Cancel>().unwrap();
    let v2 = v.clone();
    drop(v);
    assert_eq!(v2.get().task_id, 99);
}

#[test]
fn payload_is_a_slice_of_the_receive_buffer() {
    let payload = vec![7u8; 64 * 1024];
    let bytes = encode(&allot_wire::samples::submit(), &payload);
    let mut dec = FrameDecoder::default();
    dec.feed(&bytes);
    let frame = dec.next_frame().unwrap().unwrap();
    let whole = frame.as_bytes().as_ptr_range();
    let p = frame.payload();
    assert_eq!(p.len(), payload.len());
    assert!(
        whole.contains(&p.as_ptr()),
        "payload must point into the frame buffer"
    );
    assert_eq!(p.as_ptr() as usize % 8, 0, "payload starts aligned");
    assert_eq!(dec.stats().realigned, 0);
}

#[test]
fn frames_straddling_reads_decode_the_same() {
    let samples = allot_wire::samples::all_frames();
    let stream: Vec<u8> = samples
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    for step in [1, 3, 7, 16, 17, 100] {
        let mut dec = FrameDecoder::default();
        let mut kinds = Vec::new();
        for chunk in stream.chunks(step) {
            let buf = dec.read_buf();
            buf.extend_from_slice(chunk);
            while let Some(f) = dec.next_frame().unwrap() {
                f.kind().validate(f.body()).unwrap();
                kinds.push(f.kind());
            }
        }
        let want: Vec<_> = samples.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, want, "step {step}");
        dec.finish().unwrap();
    }
}

#[test]
fn truncated_frame_is_reported_at_end_of_stream() {
    let bytes = encode(&allot_wire::samples::submit(), b"abc");
    let mut dec = FrameDecoder::default();
    dec.feed(&bytes[..bytes.len() - 3]);
    assert!(dec.next_frame().unwrap().is_none());
    assert_eq!(
        dec.finish(),
        Err(FrameError::Truncated {
            have: bytes.len() - 3,
            need: bytes.len()
        })
    );
    let mut dec = FrameDecoder::default();
    dec.feed(&bytes[..5]);
    assert!(dec.next_frame().unwrap().is_none());
    assert_eq!(
        dec.finish(),
        Err(FrameError::Truncated {
            have: 5,
            need: HEADER_LEN
        })
    );
    // A slice that is not a whole frame is refused by `Frame::from_bytes`.
    let err = Frame::from_bytes(Bytes::copy_from_slice(&bytes[..bytes.len() - 8])).unwrap_err();
    assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
}

fn header(kind: u8, body: u32, payload: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"aL");
    h.push(kind);
    h.push(0);
    h.extend_from_slice(&body.to_le_bytes());
    h.extend_from_slice(&payload.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h
}

#[test]
fn length_over_the_limit_is_refused_before_reserving() {
    let mut dec = FrameDecoder::new(4096);
    dec.feed(&header(MessageKind::Submit as u8, 16, u32::MAX));
    let err = dec.next_frame().unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLarge {
            len: 16 + 16 + pad8(u32::MAX as usize) as u64,
            max: 4096
        }
    );
    assert!(err.to_string().contains("exceeds the limit of 4096 bytes"));
    assert_eq!(err.code(), ErrorCode::TooLarge);
    assert!(
        dec.read_buf().capacity() <= 64 * 1024,
        "no reservation for the huge frame"
    );
    assert_eq!(dec.next_frame().unwrap_err(), FrameError::Poisoned);
}

#[test]
fn encoder_refuses_oversized_frames_and_keeps_the_buffer() {
    let mut enc = FrameEncoder::new(1024);
    let mut out = BytesMut::new();
    enc.encode(&Cancel { task_id: 1 }, b"", &mut out).unwrap();
    let before = out.clone();
    let err = enc
        .encode(&allot_wire::samples::submit(), &[0; 2000], &mut out)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EncodeError::TooLarge {
                kind: MessageKind::Submit,
                max: 1024,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(out, before, "a failed encode leaves nothing behind");
}

#[test]
fn unknown_kind_bad_magic_and_reserved_bits_are_typed_errors() {
    let mut dec = FrameDecoder::default();
    dec.feed(&header(200, 0, 0));
    assert_eq!(dec.next_frame().unwrap_err(), FrameError::UnknownKind(200));
    let mut dec = FrameDecoder::default();
    dec.feed(&header(0, 0, 0));
    assert_eq!(dec.next_frame().unwrap_err(), FrameError::UnknownKind(0));

    let mut h = header(MessageKind::Cancel as u8, 8, 0);
    h[0] = b'G';
    let mut dec = FrameDecoder::default();
    dec.feed(&h);
    assert!(matches!(
        dec.next_frame().unwrap_err(),
        FrameError::BadMagic { .. }
    ));

    let mut h = header(MessageKind::Cancel as u8, 8, 0);
    h[3] = 1;
    let mut dec = FrameDecoder::default();
    dec.feed(&h);
    assert!(matches!(
        dec.next_frame().unwrap_err(),
        FrameError::ReservedBits(_)
    ));
}

#[test]
fn misaligned_body_is_refused() {
    let bytes = encode(&Cancel { task_id: 5 }, b"");
    // Place the frame one byte off an 8-byte boundary.
    let mut store = vec![0u8; bytes.len() + 16];
    let base = store.as_ptr().align_offset(8);
    store[base + 1..base + 1 + bytes.len()].copy_from_slice(&bytes);
    let body = &store[base + 1 + HEADER_LEN..base + 1 + HEADER_LEN + 8];
    let err = <Cancel as WireMessage>::validate(body).unwrap_err();
    assert_eq!(
        err,
        FrameError::Misaligned {
            kind: MessageKind::Cancel
        }
    );
    let shifted = Bytes::copy_from_slice(&store[base + 1..base + 1 + bytes.len()]);
    // `copy_from_slice` may land aligned or not; either way no panic, and
    // when misaligned the error says so.
    match Frame::from_bytes(shifted.slice(0..)) {
        Ok(f) => assert_eq!(f.kind(), MessageKind::Cancel),
        Err(e) => assert_eq!(
            e,
            FrameError::Misaligned {
                kind: MessageKind::Cancel
            }
        ),
    }
}

#[test]
fn body_failing_validation_is_refused_with_the_reason() {
    let mut bytes = encode(&allot_wire::samples::submit(), b"");
    // Overwrite the archive with 0xfe: inline strings become invalid UTF-8
    // (0xff would read as empty strings: rkyv pads inline strings with it).
    let body_len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    for b in &mut bytes[HEADER_LEN..HEADER_LEN + body_len] {
        *b = 0xfe;
    }
    let frame = decode_one(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
    let err = frame.validate::<Submit>().unwrap_err();
    match &err {
        FrameError::Invalid { kind, reason } => {
            assert_eq!(*kind, MessageKind::Submit);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(err.code(), ErrorCode::Malformed);
}

#[test]
fn validating_as_the_wrong_kind_is_refused() {
    let bytes = encode(&Cancel { task_id: 5 }, b"");
    let frame = decode_one(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
    assert_eq!(
        frame.validate::<Submit>().unwrap_err(),
        FrameError::UnexpectedKind {
            expected: MessageKind::Submit,
            got: MessageKind::Cancel
        }
    );
}

fn hello(major: u16) -> Frame {
    let bytes = encode(
        &Hello {
            version: Version { major, minor: 3 },
            role: Role::Worker,
            name: "w1".into(),
            attrs: vec![],
        },
        b"",
    );
    decode_one(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap()
}

#[test]
fn wrong_major_version_gets_an_error_and_nothing_more_is_read() {
    let mut hs = Handshake::new();
    let (err, msg) = hs.on_frame(hello(PROTOCOL_VERSION.major + 1)).unwrap_err();
    assert_eq!(
        err,
        FrameError::VersionMismatch {
            peer_major: PROTOCOL_VERSION.major + 1,
            peer_minor: 3,
            ours_major: PROTOCOL_VERSION.major
        }
    );
    assert_eq!(msg.code, ErrorCode::VersionMismatch);
    assert_eq!(
        msg.message,
        format!(
            "peer speaks protocol {}.3, this node speaks {}.x",
            PROTOCOL_VERSION.major + 1,
            PROTOCOL_VERSION.major
        )
    );
    assert_eq!(hs.state(), &HandshakeState::Rejected);
    // Even a correct Hello is not read any more.
    assert_eq!(
        hs.on_frame(hello(PROTOCOL_VERSION.major)).unwrap_err().0,
        FrameError::Poisoned
    );
}

#[test]
fn matching_version_establishes_and_a_second_hello_is_a_protocol_error() {
    let mut hs = Handshake::new();
    let h = hs.on_frame(hello(PROTOCOL_VERSION.major)).unwrap();
    assert_eq!(h.get().name.as_str(), "w1");
    assert_eq!(
        hs.state(),
        &HandshakeState::Established {
            role: Role::Worker,
            name: "w1".into()
        }
    );
    let (err, msg) = hs.on_frame(hello(PROTOCOL_VERSION.major)).unwrap_err();
    assert!(matches!(err, FrameError::UnexpectedKind { .. }));
    assert_eq!(msg.code, ErrorCode::Protocol);
}

#[test]
fn first_frame_not_hello_is_refused() {
    let bytes = encode(&allot_wire::samples::submit(), b"");
    let mut hs = Handshake::new();
    let (err, _) = hs
        .on_frame(decode_one(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap())
        .unwrap_err();
    assert_eq!(
        err,
        FrameError::UnexpectedKind {
            expected: MessageKind::Hello,
            got: MessageKind::Submit
        }
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// Any bytes yield frames or a typed error, never a panic, and the
    /// decoder never holds more than the limit plus one read.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096), step in 1usize..300) {
        let mut dec = FrameDecoder::new(2048);
        'outer: for chunk in data.chunks(step) {
            dec.feed(chunk);
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => { let _ = f.kind().validate(f.body()); }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
            prop_assert!(dec.buffered() <= 2048 + step);
        }
    }

    /// Valid frames with a byte flipped anywhere: still no panic.
    #[test]
    fn corrupted_frames_never_panic(idx in any::<prop::sample::Index>(), which in 0usize..15, bit in 0u8..8) {
        let samples = allot_wire::samples::all_frames();
        let (_, mut bytes) = samples[which % samples.len()].clone();
        let i = idx.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let _ = allot_wire::fuzzing::decode_frame(&[&[64u8][..], &bytes[..]].concat());
    }

    /// Submits with arbitrary fields and payloads round-trip exactly.
    #[test]
    fn submit_round_trips(task_id in any::<u64>(), app in "[a-z]{0,40}", require in ".{0,200}", cores in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let mut s = allot_wire::samples::submit();
        s.task_id = task_id; s.app = app; s.require = require; s.demands.cores = cores;
        let bytes = encode(&s, &payload);
        let f = decode_one(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
        let v = f.validate::<Submit>().unwrap();
        prop_assert_eq!(v.to_owned_message().unwrap(), s);
        prop_assert_eq!(&v.payload()[..], &payload[..]);
    }
}

#[test]
fn borrowed_access_validates_and_checks_the_kind() {
    let bytes = encode(&allot_wire::samples::submit(), b"in place");
    let frame = decode_one(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
    let a = frame.access::<Submit>().unwrap();
    assert_eq!(a.task_id, 42);
    assert_eq!(frame.payload_slice(), b"in place");
    assert!(matches!(
        frame.access::<Cancel>(),
        Err(FrameError::UnexpectedKind { .. })
    ));
    let mut bad = bytes.clone();
    for b in &mut bad[HEADER_LEN..HEADER_LEN + 64] {
        *b = 0xfe;
    }
    let frame = decode_one(&bad, DEFAULT_MAX_FRAME).unwrap().unwrap();
    assert!(matches!(
        frame.access::<Submit>(),
        Err(FrameError::Invalid { .. })
    ));
}

#[test]
fn a_1x_peer_is_refused_naming_both_versions() {
    // Each major version changed an archived layout.
    let mut hs = Handshake::new();
    let (err, msg) = hs.on_frame(hello(1)).unwrap_err();
    assert!(matches!(
        err,
        FrameError::VersionMismatch { peer_major: 1, .. }
    ));
    assert_eq!(
        msg.message,
        "peer speaks protocol 1.3, this node speaks 7.x"
    );
}
