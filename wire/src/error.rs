//! Typed errors for decoding and encoding frames.

use crate::header::MessageKind;
use crate::message::ErrorCode;

/// Why bytes from a peer were not accepted. A stream that produces one of
/// these is reset; the node keeps serving its other streams.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header does not start with the allot magic: the peer is not
    /// speaking allot frames, or the stream lost its framing.
    #[error("bad frame header: magic {found:#06x}, expected {expected:#06x}")]
    BadMagic {
        /// What was found.
        found: u16,
        /// What allot writes.
        expected: u16,
    },
    /// Reserved header bits were set.
    #[error("bad frame header: reserved bits set ({0:#x})")]
    ReservedBits(u64),
    /// The header names a message kind this node does not know.
    #[error("unknown message kind {0} in frame header")]
    UnknownKind(u8),
    /// The frame is longer than this node accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared total length.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("truncated frame: stream ended after {have} of {need} bytes")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the header announced (or a header's worth).
        need: usize,
    },
    /// The body does not start at an 8-byte boundary, so it cannot be read
    /// in place.
    #[error("{kind:?} body is not 8-byte aligned")]
    Misaligned {
        /// The frame's kind.
        kind: MessageKind,
    },
    /// The body is not a valid archive of its kind.
    #[error("{kind:?} body failed validation: {reason}")]
    Invalid {
        /// The frame's kind.
        kind: MessageKind,
        /// What the validator said.
        reason: String,
    },
    /// A frame of another kind was expected here.
    #[error("expected a {expected:?} frame, got {got:?}")]
    UnexpectedKind {
        /// What the protocol state allows.
        expected: MessageKind,
        /// What arrived.
        got: MessageKind,
    },
    /// The peer's `Hello` has another major version.
    #[error("peer speaks protocol {peer_major}.{peer_minor}, this node speaks {ours_major}.x")]
    VersionMismatch {
        /// Peer's major.
        peer_major: u16,
        /// Peer's minor.
        peer_minor: u16,
        /// Ours.
        ours_major: u16,
    },
    /// The decoder already failed; the stream must be closed.
    #[error("stream already failed; no further frames are read")]
    Poisoned,
}

impl FrameError {
    /// The error code to send the peer (and to reset the stream with).
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            FrameError::UnexpectedKind { .. } => ErrorCode::Protocol,
            _ => ErrorCode::Malformed,
        }
    }
}

/// Why a message could not be encoded. Nothing is left in the output
/// buffer when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame would exceed the limit the peer enforces.
    #[error("{kind:?} frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The message kind.
        kind: MessageKind,
        /// Its encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// rkyv failed to archive the value (only on allocation failure).
    #[error("could not archive a {kind:?} message")]
    Archive {
        /// The message kind.
        kind: MessageKind,
    },
}
