#![no_main]
//! Any bytes validated as any message kind. See
//! `allot_wire::fuzzing::validate_message`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = allot_wire::fuzzing::validate_message(data);
});
