//! The frame header: sixteen bytes that say what a frame holds and how long
//! it is, read before any of the body is looked at.
//!
//! # Layout
//!
//! ```text
//! offset  size  field
//!  0      2     magic "aL" (0x61 0x4c)
//!  2      1     message kind (MessageKind)
//!  3      1     flags, must be 0
//!  4      4     body length (u32 LE): the rkyv archive, unpadded
//!  8      4     payload length (u32 LE): opaque bytes after the archive
//! 12      4     reserved, must be 0
//! 16      ..    body, zero-padded to a multiple of 8
//!  ..     ..    payload, zero-padded to a multiple of 8
//! ```
//!
//! Every frame is a multiple of 8 bytes long, so when the receive buffer
//! starts 8-aligned, every body in it is too and is read in place without a
//! copy. The payload is handed out as a [`Bytes`](bytes::Bytes) slice of the receive
//! buffer: a distributor forwards a task's input to a worker by reference.
//!
//! [`Header`] is the parsed form ([`Header::parse`] checks it; a bad header
//! is a [`FrameError`](crate::FrameError)); [`MessageKind`] is the kind byte.
//! This module imports nothing else of the crate, so the error, message-kind
//! and codec modules all build on it.

/// Bytes of header before each body.
pub const HEADER_LEN: usize = 16;
/// The alignment every body starts at.
pub const BODY_ALIGN: usize = 8;
/// The two magic bytes, as a little-endian `u16`.
pub const MAGIC: u16 = u16::from_le_bytes(*b"aL");

/// Rounds `n` up to a multiple of [`BODY_ALIGN`].
#[inline]
pub const fn pad8(n: usize) -> usize {
    (n + (BODY_ALIGN - 1)) & !(BODY_ALIGN - 1)
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message kind.
    pub kind: MessageKind,
    /// Archive length, unpadded.
    pub body_len: u32,
    /// Payload length, unpadded.
    pub payload_len: u32,
}

impl Header {
    /// Total bytes of the frame, padding included.
    pub fn frame_len(&self) -> u64 {
        HEADER_LEN as u64
            + pad8(self.body_len as usize) as u64
            + pad8(self.payload_len as usize) as u64
    }

    pub(crate) fn write(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        out[2] = self.kind as u8;
        out[3] = 0;
        out[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        out[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        out[12..16].copy_from_slice(&[0; 4]);
    }
}

/// Which message a frame holds. The byte is checked before the body is
/// looked at, so an unknown kind is a typed error, not a validation guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum MessageKind {
    /// [`Hello`](crate::message::Hello)
    Hello = 1,
    /// [`Register`](crate::message::Register)
    Register = 2,
    /// [`RegisterAck`](crate::message::RegisterAck)
    RegisterAck = 3,
    /// [`AttrDelta`](crate::message::AttrDelta)
    AttrDelta = 4,
    /// [`Heartbeat`](crate::message::Heartbeat)
    Heartbeat = 5,
    /// [`Submit`](crate::message::Submit)
    Submit = 6,
    /// [`Redirect`](crate::message::Redirect)
    Redirect = 7,
    /// [`Assign`](crate::message::Assign)
    Assign = 8,
    /// [`TaskResult`](crate::message::TaskResult)
    TaskResult = 9,
    /// [`Cancel`](crate::message::Cancel)
    Cancel = 10,
    /// [`ErrorMsg`](crate::message::ErrorMsg)
    Error = 11,
    /// [`StatusQuery`](crate::message::StatusQuery)
    StatusQuery = 12,
    /// [`StatusReply`](crate::message::StatusReply)
    StatusReply = 13,
    /// [`ExplainQuery`](crate::message::ExplainQuery)
    ExplainQuery = 14,
    /// [`ExplainReply`](crate::message::ExplainReply)
    ExplainReply = 15,
    /// [`KeyQuery`](crate::message::KeyQuery)
    KeyQuery = 16,
    /// [`KeyReply`](crate::message::KeyReply)
    KeyReply = 17,
    /// [`MemberRegister`](crate::message::MemberRegister)
    MemberRegister = 18,
    /// [`MemberReport`](crate::message::MemberReport)
    MemberReport = 19,
    /// [`MemberHeartbeat`](crate::message::MemberHeartbeat)
    MemberHeartbeat = 20,
    /// [`SetStatusQuery`](crate::message::SetStatusQuery)
    SetStatusQuery = 21,
    /// [`SetStatusReply`](crate::message::SetStatusReply)
    SetStatusReply = 22,
    /// [`JobSubmit`](crate::message::JobSubmit)
    JobSubmit = 23,
    /// [`JobAck`](crate::message::JobAck)
    JobAck = 24,
    /// [`JobQuery`](crate::message::JobQuery)
    JobQuery = 25,
    /// [`JobReply`](crate::message::JobReply)
    JobReply = 26,
    /// [`WorkerControl`](crate::message::WorkerControl)
    WorkerControl = 27,
    /// [`WorkerControlReply`](crate::message::WorkerControlReply)
    WorkerControlReply = 28,
}

impl MessageKind {
    /// Every kind, in byte order.
    pub const ALL: [MessageKind; 28] = [
        MessageKind::Hello,
        MessageKind::Register,
        MessageKind::RegisterAck,
        MessageKind::AttrDelta,
        MessageKind::Heartbeat,
        MessageKind::Submit,
        MessageKind::Redirect,
        MessageKind::Assign,
        MessageKind::TaskResult,
        MessageKind::Cancel,
        MessageKind::Error,
        MessageKind::StatusQuery,
        MessageKind::StatusReply,
        MessageKind::ExplainQuery,
        MessageKind::ExplainReply,
        MessageKind::KeyQuery,
        MessageKind::KeyReply,
        MessageKind::MemberRegister,
        MessageKind::MemberReport,
        MessageKind::MemberHeartbeat,
        MessageKind::SetStatusQuery,
        MessageKind::SetStatusReply,
        MessageKind::JobSubmit,
        MessageKind::JobAck,
        MessageKind::JobQuery,
        MessageKind::JobReply,
        MessageKind::WorkerControl,
        MessageKind::WorkerControlReply,
    ];

    /// The kind for a header byte, if it is one.
    pub fn from_byte(b: u8) -> Option<MessageKind> {
        MessageKind::ALL
            .get(usize::from(b).checked_sub(1)?)
            .copied()
    }
}
