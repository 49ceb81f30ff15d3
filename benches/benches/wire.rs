//! Wire benchmarks: a `Submit` frame with a 64 B and a 64 KiB payload
//! through allot's rkyv frame codec, and the same fields through postcard in
//! the same run, for a ratio.
//!
//! ```text
//! cargo bench -p allot-benches --bench wire -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! What each benchmark measures:
//!
//! - `rkyv_encode`: `FrameEncoder::encode(&submit, &payload, &mut out)` into
//!   a reused `BytesMut` (cleared each iteration): header, archive, payload
//!   copied in, padding.
//! - `rkyv_validate_access`: `Frame::access::<Submit>()` (validate, then read
//!   in place, borrowing the frame) and reading `task_id`, `app`,
//!   `demands.cores` and the payload (`payload_slice()`, no copy).
//! - `rkyv_validate_owned`: `Frame::validate::<Submit>()` on a clone of the
//!   frame handle (a receiver that hands the validated frame on), the same
//!   reads, and `payload()` as a `Bytes` slice: adds the reference counting.
//! - `rkyv_validate_body`: only the bytecheck of the body slice, without the
//!   frame handle's reference counting.
//! - `rkyv_unchecked_access`: `Frame::access_unchecked::<Submit>()` and the
//!   same reads.
//! - `postcard_encode`: `postcard::to_extend` of a serde struct with the
//!   same fields plus `payload: Vec<u8>` (postcard has no trailer, the
//!   payload is inside) into a reused `Vec`.
//! - `postcard_decode`: `postcard::from_bytes` into a borrowing struct
//!   (`&str` strings, `&[u8]` payload: no copies), then the same reads.
//! - `decode_stream_1000`: a `FrameDecoder` holding 1000 `Submit` frames
//!   (64 B payload) hands them all out (`take`), or hands them out and
//!   validates each (`take_validate`); throughput is in frames.

use std::hint::black_box;

use allot_wire::samples;
use allot_wire::{Frame, FrameDecoder, FrameEncoder, Submit, WireMessage};
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize, Serializer};

/// The payload sizes measured.
const PAYLOADS: [(&str, usize); 2] = [("64B", 64), ("64KiB", 64 * 1024)];

/// Frames in the stream-decoding benchmark.
const STREAM_FRAMES: usize = 1000;

#[derive(Serialize, Deserialize, Clone, Copy)]
struct PcDemands {
    cores: u32,
    mem: u64,
    slots: u32,
}

/// `Submit`'s fields plus its payload, owned, as a sender holds them.
#[derive(Serialize)]
struct PcSubmit {
    task_id: u64,
    idempotency_key: u64,
    app: String,
    demands: PcDemands,
    require: String,
    prefer: String,
    user: String,
    priority: i32,
    deadline_ms: u64,
    #[serde(serialize_with = "as_bytes")]
    payload: Vec<u8>,
}

/// The same, borrowing from the receive buffer: the fairest decode.
#[derive(Deserialize)]
struct PcSubmitRef<'a> {
    task_id: u64,
    #[allow(dead_code)]
    idempotency_key: u64,
    app: &'a str,
    demands: PcDemands,
    #[allow(dead_code)]
    require: &'a str,
    #[allow(dead_code)]
    prefer: &'a str,
    #[allow(dead_code)]
    user: &'a str,
    #[allow(dead_code)]
    priority: i32,
    #[allow(dead_code)]
    deadline_ms: u64,
    payload: &'a [u8],
}

/// Serializes a byte vector as serde bytes (one length and a copy) rather
/// than as a sequence of `u8` (one call per byte); the encoding is the same
/// in postcard, and `&[u8]` deserializes from it borrowed.
fn as_bytes<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

fn pc_submit(s: &Submit, payload: &[u8]) -> PcSubmit {
    PcSubmit {
        task_id: s.task_id,
        idempotency_key: s.idempotency_key,
        app: s.app.clone(),
        demands: PcDemands {
            cores: s.demands.cores,
            mem: s.demands.mem,
            slots: s.demands.slots,
        },
        require: s.require.clone(),
        prefer: s.prefer.clone(),
        user: s.user.clone(),
        priority: s.priority,
        deadline_ms: s.deadline_ms,
        payload: payload.to_vec(),
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// One encoded `Submit` frame, taken out of a decoder as a receiver gets it.
fn submit_frame(submit: &Submit, payload: &[u8]) -> Frame {
    let mut out = BytesMut::new();
    FrameEncoder::default()
        .encode(submit, payload, &mut out)
        .expect("encodes");
    let mut dec = FrameDecoder::default();
    dec.feed(&out);
    dec.next_frame().expect("decodes").expect("one whole frame")
}

fn submit_frames(c: &mut Criterion) {
    let submit = samples::submit();
    let mut g = c.benchmark_group("wire");
    for (name, len) in PAYLOADS {
        let payload = payload(len);

        let mut enc = FrameEncoder::default();
        let mut out = BytesMut::with_capacity(len + 1024);
        g.bench_function(BenchmarkId::new("rkyv_encode", name), |b| {
            b.iter(|| {
                out.clear();
                enc.encode(black_box(&submit), black_box(&payload), &mut out)
                    .expect("encodes");
                black_box(out.len())
            })
        });

        let frame = submit_frame(&submit, &payload);
        g.bench_function(BenchmarkId::new("rkyv_validate_access", name), |b| {
            b.iter(|| {
                let f = black_box(&frame);
                let m = f.access::<Submit>().expect("valid");
                black_box((
                    m.task_id.to_native(),
                    m.app.as_str().len(),
                    m.demands.cores.to_native(),
                    f.payload_slice().len(),
                ));
            })
        });

        g.bench_function(BenchmarkId::new("rkyv_validate_owned", name), |b| {
            b.iter(|| {
                let v = black_box(&frame)
                    .clone()
                    .validate::<Submit>()
                    .expect("valid");
                let m = v.get();
                let p = v.payload();
                black_box((
                    m.task_id.to_native(),
                    m.app.as_str().len(),
                    m.demands.cores.to_native(),
                    p.len(),
                ));
            })
        });

        g.bench_function(BenchmarkId::new("rkyv_validate_body", name), |b| {
            b.iter(|| {
                let m = <Submit as WireMessage>::validate(black_box(&frame).body()).expect("valid");
                black_box((
                    m.task_id.to_native(),
                    m.app.as_str().len(),
                    m.demands.cores.to_native(),
                ));
            })
        });

        g.bench_function(BenchmarkId::new("rkyv_unchecked_access", name), |b| {
            b.iter(|| {
                let f = black_box(&frame);
                // SAFETY: the frame was encoded by this process from a `Submit`.
                let m = unsafe { f.access_unchecked::<Submit>() };
                let p = f.payload();
                black_box((
                    m.task_id.to_native(),
                    m.app.as_str().len(),
                    m.demands.cores.to_native(),
                    p.len(),
                ));
            })
        });

        let pc = pc_submit(&submit, &payload);
        let mut buf: Vec<u8> = Vec::with_capacity(len + 1024);
        g.bench_function(BenchmarkId::new("postcard_encode", name), |b| {
            b.iter(|| {
                let mut v = std::mem::take(&mut buf);
                v.clear();
                buf = postcard::to_extend(black_box(&pc), v).expect("encodes");
                black_box(buf.len())
            })
        });

        let encoded = postcard::to_allocvec(&pc).expect("encodes");
        g.bench_function(BenchmarkId::new("postcard_decode", name), |b| {
            b.iter(|| {
                let m: PcSubmitRef<'_> =
                    postcard::from_bytes(black_box(&encoded)).expect("decodes");
                black_box((m.task_id, m.app.len(), m.demands.cores, m.payload.len()));
            })
        });
    }
    g.finish();
}

fn decode_stream(c: &mut Criterion) {
    let submit = samples::submit();
    let payload = payload(64);
    let mut enc = FrameEncoder::default();
    let mut stream = BytesMut::new();
    for i in 0..STREAM_FRAMES {
        let mut s = submit.clone();
        s.task_id = i as u64;
        enc.encode(&s, &payload, &mut stream).expect("encodes");
    }
    let stream = stream.freeze();
    let loaded = || {
        let mut dec = FrameDecoder::default();
        dec.feed(&stream);
        dec
    };

    let mut g = c.benchmark_group("wire/decode_stream_1000");
    g.throughput(Throughput::Elements(STREAM_FRAMES as u64));
    g.bench_function("take", |b| {
        b.iter_batched(
            loaded,
            |mut dec| {
                let mut n = 0usize;
                while let Some(f) = dec.next_frame().expect("decodes") {
                    n += black_box(&f).header().payload_len as usize;
                }
                assert_eq!(n, STREAM_FRAMES * 64);
                dec
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("take_validate", |b| {
        b.iter_batched(
            loaded,
            |mut dec| {
                let mut n = 0u64;
                while let Some(f) = dec.next_frame().expect("decodes") {
                    let v = f.validate::<Submit>().expect("valid");
                    n += v.get().task_id.to_native();
                }
                assert_eq!(n, (STREAM_FRAMES * (STREAM_FRAMES - 1) / 2) as u64);
                dec
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, submit_frames, decode_stream);
criterion_main!(benches);
