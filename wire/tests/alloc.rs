//! Encoding reuses its buffers: after warm-up, encoding a frame makes no
//! allocation, and neither does decoding, validating and reading one. The
//! counting global allocator proves it.

use allot_wire::testing::CountingAlloc;
use allot_wire::*;
use bytes::BytesMut;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

#[test]
fn steady_state_encode_and_decode_do_not_allocate() {
    let msg = allot_wire::samples::submit();
    let payload = [0xabu8; 64];
    let mut enc = FrameEncoder::default();
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut dec = FrameDecoder::default();

    let round = |enc: &mut FrameEncoder, out: &mut BytesMut, dec: &mut FrameDecoder| {
        out.clear();
        for _ in 0..100 {
            enc.encode(&msg, &payload, out).unwrap();
        }
        dec.read_buf().extend_from_slice(out);
        let mut n = 0;
        while let Some(f) = dec.next_frame().unwrap() {
            let v = f.validate::<Submit>().unwrap();
            assert_eq!(v.get().task_id, 42);
            assert_eq!(v.payload().len(), 64);
            n += 1;
        }
        assert_eq!(n, 100);
    };
    // Warm-up: the arena, the output and the receive buffer reach size.
    for _ in 0..3 {
        round(&mut enc, &mut out, &mut dec);
    }
    // Only this thread is counted: the harness allocates on others (its
    // timer and output capture) at moments of its choosing.
    let before = GLOBAL.this_thread_allocations();
    for _ in 0..10 {
        round(&mut enc, &mut out, &mut dec);
    }
    let after = GLOBAL.this_thread_allocations();
    assert_eq!(
        after - before,
        0,
        "1000 frames encoded and decoded with {} allocations",
        after - before
    );
}
