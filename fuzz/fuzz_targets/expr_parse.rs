#![no_main]
//! Any text as `require` and `prefer` (split at the first NUL byte) through
//! the parser and compiler; whatever compiles is matched on a small fixed
//! table and checked against the naive reference matcher (differential
//! fuzzing of the compiled form), and explained.
//! See `allot_engine::fuzzing::expr_parse`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    allot_engine::fuzzing::expr_parse(data);
});
