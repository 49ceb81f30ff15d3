//! allot's wire protocol, sans-IO.
//!
//! * [`message`]: every message nodes exchange, as rkyv archived types.
//! * [`header`]: the sixteen-byte frame header and its message kind byte;
//!   it imports nothing else of the crate, so everything builds on it.
//! * [`frame`]: the length-prefixed frame codec. Bytes in, validated
//!   messages out, read in place; payloads are `Bytes` slices of the receive
//!   buffer, never copied. Encoding reuses its buffers.
//! * [`handshake`]: version negotiation on the first frame.
//!
//! Nothing here knows about sockets or async runtimes, so the whole protocol
//! is tested, benchmarked and fuzzed without a network (the `quinn-proto`
//! model).
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod handshake;
pub mod header;
pub mod kind;
pub mod message;
pub mod samples;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{EncodeError, FrameError};
pub use frame::{
    decode_one, payload_padding, Frame, FrameDecoder, FrameEncoder, Validated, DEFAULT_MAX_FRAME,
};
pub use handshake::{accept_hello, Handshake, HandshakeState, PROTOCOL_VERSION};
pub use header::{Header, MessageKind, HEADER_LEN};
pub use kind::WireMessage;
pub use message::*;
