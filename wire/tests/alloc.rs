//! Encoding reuses its buffers: after warm-up, encoding a frame makes no
//! allocation, and neither does decoding, validating and reading one. A
//! counting global allocator (this test binary only) proves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use allot_wire::*;
use bytes::BytesMut;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Only the test's own thread is counted: the harness allocates on
    // others (its timer and output capture) at moments of its choosing.
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTED.try_with(|c| c.get()).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    COUNTED.with(|c| c.set(true));
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..10 {
        round(&mut enc, &mut out, &mut dec);
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    COUNTED.with(|c| c.set(false));
    assert_eq!(
        after - before,
        0,
        "1000 frames encoded and decoded with {} allocations",
        after - before
    );
}
