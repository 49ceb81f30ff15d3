#![no_main]
//! Any byte stream, read in pieces, through the frame decoder and the
//! validator of each frame's kind. See `allot_wire::fuzzing::decode_frame`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = allot_wire::fuzzing::decode_frame(data);
});
