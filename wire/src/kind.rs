//! The trait that ties each message type to its kind (the header's
//! [`MessageKind`] byte), its encoder and its validator.

use rkyv::rancor::{Error as RkyvError, Failure};
use rkyv::ser::allocator::Arena;

use crate::error::{EncodeError, FrameError};
pub use crate::header::MessageKind;
use crate::header::BODY_ALIGN;
use crate::message::*;

impl MessageKind {
    /// Checks that `body` is a valid archive of this kind's message
    /// (bytecheck), without keeping the result. Used by the fuzzers and by
    /// anything that routes frames without reading them.
    pub fn validate(self, body: &[u8]) -> Result<(), FrameError> {
        macro_rules! v {
            ($t:ty) => {
                <$t as WireMessage>::validate(body).map(|_| ())
            };
        }
        match self {
            MessageKind::Hello => v!(Hello),
            MessageKind::Register => v!(Register),
            MessageKind::RegisterAck => v!(RegisterAck),
            MessageKind::AttrDelta => v!(AttrDelta),
            MessageKind::Heartbeat => v!(Heartbeat),
            MessageKind::Submit => v!(Submit),
            MessageKind::Redirect => v!(Redirect),
            MessageKind::Assign => v!(Assign),
            MessageKind::TaskResult => v!(TaskResult),
            MessageKind::Cancel => v!(Cancel),
            MessageKind::Error => v!(ErrorMsg),
            MessageKind::StatusQuery => v!(StatusQuery),
            MessageKind::StatusReply => v!(StatusReply),
            MessageKind::ExplainQuery => v!(ExplainQuery),
            MessageKind::ExplainReply => v!(ExplainReply),
            MessageKind::KeyQuery => v!(KeyQuery),
            MessageKind::KeyReply => v!(KeyReply),
            MessageKind::MemberRegister => v!(MemberRegister),
            MessageKind::MemberReport => v!(MemberReport),
            MessageKind::MemberHeartbeat => v!(MemberHeartbeat),
            MessageKind::SetStatusQuery => v!(SetStatusQuery),
            MessageKind::SetStatusReply => v!(SetStatusReply),
            MessageKind::JobSubmit => v!(JobSubmit),
            MessageKind::JobAck => v!(JobAck),
            MessageKind::JobQuery => v!(JobQuery),
            MessageKind::JobReply => v!(JobReply),
            MessageKind::WorkerControl => v!(WorkerControl),
            MessageKind::WorkerControlReply => v!(WorkerControlReply),
        }
    }
}

/// A message type that travels in frames.
///
/// Implemented by a macro for each type in [`crate::message`] so that the
/// rkyv serializer and validator are instantiated with concrete types; the
/// generic bounds would otherwise leak into every caller.
pub trait WireMessage: Sized {
    /// The header byte.
    const KIND: MessageKind;
    /// The archived form, read in place.
    type Archived: rkyv::Portable;

    /// Appends the archive of `self` to `out` (whose length must be a
    /// multiple of 8 so that the archive is aligned), using `arena` for
    /// scratch space so that steady-state encoding does not allocate.
    fn archive_into(&self, out: &mut bytes::BytesMut, arena: &mut Arena)
        -> Result<(), EncodeError>;

    /// Validates `body` as an archive of this type and returns it.
    fn validate(body: &[u8]) -> Result<&Self::Archived, FrameError>;

    /// Deserializes an archived value into the owned type.
    fn to_owned_message(archived: &Self::Archived) -> Result<Self, FrameError>;
}

/// Writes rkyv output straight into a `BytesMut`, so frames are built in
/// the buffer that is handed to the transport (no intermediate copy).
struct BytesMutWriter<'a>(&'a mut bytes::BytesMut);

impl rkyv::ser::Positional for BytesMutWriter<'_> {
    fn pos(&self) -> usize {
        self.0.len()
    }
}

impl<E> rkyv::ser::Writer<E> for BytesMutWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

macro_rules! wire_message {
    ($($t:ident => $kind:ident),* $(,)?) => {$(
        impl WireMessage for $t {
            const KIND: MessageKind = MessageKind::$kind;
            type Archived = rkyv::Archived<$t>;

            fn archive_into(
                &self,
                out: &mut bytes::BytesMut,
                arena: &mut Arena,
            ) -> Result<(), EncodeError> {
                rkyv::api::low::to_bytes_in_with_alloc::<_, _, Failure>(
                    self,
                    BytesMutWriter(out),
                    arena.acquire(),
                )
                .map(|_| ())
                .map_err(|_| EncodeError::Archive { kind: MessageKind::$kind })
            }

            fn validate(body: &[u8]) -> Result<&Self::Archived, FrameError> {
                if body.as_ptr().align_offset(BODY_ALIGN) != 0 {
                    return Err(FrameError::Misaligned { kind: MessageKind::$kind });
                }
                match rkyv::api::low::access::<rkyv::Archived<$t>, Failure>(body) {
                    Ok(archived) => Ok(archived),
                    // Cold path: validate again with the detailed error type
                    // so the reason reaches the log and the peer.
                    Err(_) => Err(FrameError::Invalid {
                        kind: MessageKind::$kind,
                        reason: match rkyv::access::<rkyv::Archived<$t>, RkyvError>(body) {
                            Err(e) => e.to_string(),
                            Ok(_) => "rejected by the validator".to_owned(),
                        },
                    }),
                }
            }

            fn to_owned_message(archived: &Self::Archived) -> Result<Self, FrameError> {
                rkyv::deserialize::<$t, RkyvError>(archived).map_err(|e| FrameError::Invalid {
                    kind: MessageKind::$kind,
                    reason: e.to_string(),
                })
            }
        }
    )*};
}

wire_message! {
    Hello => Hello,
    Register => Register,
    RegisterAck => RegisterAck,
    AttrDelta => AttrDelta,
    Heartbeat => Heartbeat,
    Submit => Submit,
    Redirect => Redirect,
    Assign => Assign,
    TaskResult => TaskResult,
    Cancel => Cancel,
    ErrorMsg => Error,
    StatusQuery => StatusQuery,
    StatusReply => StatusReply,
    ExplainQuery => ExplainQuery,
    ExplainReply => ExplainReply,
    KeyQuery => KeyQuery,
    KeyReply => KeyReply,
    MemberRegister => MemberRegister,
    MemberReport => MemberReport,
    MemberHeartbeat => MemberHeartbeat,
    SetStatusQuery => SetStatusQuery,
    SetStatusReply => SetStatusReply,
    JobSubmit => JobSubmit,
    JobAck => JobAck,
    JobQuery => JobQuery,
    JobReply => JobReply,
    WorkerControl => WorkerControl,
    WorkerControlReply => WorkerControlReply,
}
