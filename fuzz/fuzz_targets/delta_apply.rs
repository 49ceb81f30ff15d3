#![no_main]
//! Any byte string as a sequence of table operations (insert, remove, delta
//! with arbitrary values and sequence numbers, state change, match, release),
//! applied to the engine and to the naive reference; the two must agree on
//! every outcome and, at the end, on every attribute of every server.
//! See `allot_engine::fuzzing::delta_apply`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    allot_engine::fuzzing::delta_apply(data);
});
