//! Instruction counts of `Submit` encode and validate, for callgrind (the
//! benchmark machine has no hardware counters; instruction counts are the
//! noise-free figure next to criterion's times).
//!
//! ```text
//! cargo build --release -p allot-wire --example callgrind_submit
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/callgrind_submit
//! callgrind_annotate --inclusive=yes /tmp/cg.out | grep callgrind_submit::
//! ```
//!
//! `encode_n` encodes `N` `Submit` frames with a 64 B payload into one reused
//! buffer (cleared each time); `validate_n` validates one decoded frame `N`
//! times with `Frame::validate::<Submit>()` and reads a few fields and the
//! payload; `validate_body_n` runs only the bytecheck of the body. The
//! inclusive count of each function divided by `N` is the per-message cost.
//! An optional argument sets the payload size (default 64).

use std::hint::black_box;

use allot_wire::samples;
use allot_wire::{Frame, FrameDecoder, FrameEncoder, Submit, WireMessage};
use bytes::BytesMut;

/// Iterations of each measured function.
const N: usize = 10_000;

#[inline(never)]
fn encode_n(enc: &mut FrameEncoder, submit: &Submit, payload: &[u8], out: &mut BytesMut) -> usize {
    let mut total = 0;
    for _ in 0..N {
        out.clear();
        enc.encode(black_box(submit), black_box(payload), out)
            .expect("encodes");
        total += black_box(out.len());
    }
    total
}

#[inline(never)]
fn validate_n(frame: &Frame) -> u64 {
    let mut total = 0u64;
    for _ in 0..N {
        let v = black_box(frame)
            .clone()
            .validate::<Submit>()
            .expect("valid");
        let m = v.get();
        total += m.task_id.to_native()
            + m.app.len() as u64
            + u64::from(m.demands.cores.to_native())
            + v.payload().len() as u64;
    }
    total
}

#[inline(never)]
fn validate_body_n(frame: &Frame) -> u64 {
    let mut total = 0u64;
    for _ in 0..N {
        let m = <Submit as WireMessage>::validate(black_box(frame).body()).expect("valid");
        total += m.task_id.to_native() + m.app.len() as u64;
    }
    total
}

fn main() {
    let len: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("payload size in bytes"))
        .unwrap_or(64);
    let submit = samples::submit();
    let payload = vec![0xa5u8; len];
    let mut enc = FrameEncoder::default();
    let mut out = BytesMut::with_capacity(len + 1024);

    let encoded = encode_n(&mut enc, &submit, &payload, &mut out);

    let mut dec = FrameDecoder::default();
    dec.feed(&out);
    let frame = dec.next_frame().expect("decodes").expect("one whole frame");
    let validated = validate_n(&frame);
    let body = validate_body_n(&frame);
    println!(
        "N={N} payload={len} frame={} encoded={encoded} validated={validated} body={body}",
        frame.as_bytes().len()
    );
}
