//! The code the fuzz targets run, kept here so that `cargo test` replays
//! the committed corpora through exactly the same functions on stable.

use crate::frame::FrameDecoder;
use crate::header::MessageKind;

/// The frame limit the fuzzers use: small, so that "never allocates more
/// than the limit" is checked with lengths libFuzzer can reach.
pub const FUZZ_MAX_FRAME: usize = 1 << 20;

/// What one fuzz input produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Frames decoded.
    pub frames: usize,
    /// Frames whose body validated as their kind.
    pub valid: usize,
    /// Whether the decoder stopped on an error.
    pub error: bool,
}

/// `decode_frame` target: the first byte picks a read size, the rest is fed
/// to a decoder in reads of that size (so frames straddle reads); every
/// frame is validated as its kind and its payload sliced.
pub fn decode_frame(data: &[u8]) -> Outcome {
    let Some((&step, rest)) = data.split_first() else {
        return Outcome::default();
    };
    let step = usize::from(step).max(1);
    let mut dec = FrameDecoder::new(FUZZ_MAX_FRAME);
    let mut out = Outcome::default();
    for chunk in rest.chunks(step) {
        dec.feed(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    out.frames += 1;
                    let payload = frame.payload();
                    assert_eq!(payload.len(), frame.header().payload_len as usize);
                    if frame.kind().validate(frame.body()).is_ok() {
                        out.valid += 1;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    out.error = true;
                    return out;
                }
            }
        }
    }
    let _ = dec.finish();
    out
}

/// `validate_message` target: the first byte picks a message kind, the rest
/// is a body, copied to an aligned buffer and validated as that kind.
pub fn validate_message(data: &[u8]) -> Outcome {
    let Some((&k, body)) = data.split_first() else {
        return Outcome::default();
    };
    let kind = MessageKind::ALL[usize::from(k) % MessageKind::ALL.len()];
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let valid = kind.validate(&aligned).is_ok();
    Outcome {
        frames: 1,
        valid: usize::from(valid),
        error: !valid,
    }
}
