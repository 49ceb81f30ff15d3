//! Sans-IO framing: bytes in, frames out; messages in, bytes out.
//!
//! The header's layout is in [`crate::header`].
//!
//! # Bounds
//!
//! A frame's total length is checked against the decoder's limit (default
//! [`DEFAULT_MAX_FRAME`]) as soon as its header arrives, before any memory
//! is reserved for it: no input makes the decoder hold more than one frame
//! limit plus one read's worth of bytes.

use std::marker::PhantomData;

use bytes::{Buf, Bytes, BytesMut};
use rkyv::ser::allocator::Arena;

use crate::error::{EncodeError, FrameError};
use crate::header::MessageKind;
pub use crate::header::{pad8, Header, BODY_ALIGN, HEADER_LEN, MAGIC};
use crate::kind::WireMessage;

/// The default limit on one frame, header and payload included.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// How much buffer the decoder first asks the transport to fill when it
/// does not yet know the next frame's size. It doubles, up to
/// [`MAX_READ_CHUNK`], whenever a read fills it: an idle stream (a worker
/// that only sends deltas) stays small, a busy one reads in large chunks.
const MIN_READ_CHUNK: usize = 4 * 1024;
/// The largest read chunk.
const MAX_READ_CHUNK: usize = 64 * 1024;

static ZEROS: [u8; BODY_ALIGN] = [0; BODY_ALIGN];

/// The zero bytes that follow a payload of `len` bytes.
#[inline]
pub fn payload_padding(len: usize) -> &'static [u8] {
    &ZEROS[..pad8(len) - len]
}

impl Header {
    /// Parses and checks the first [`HEADER_LEN`] bytes of `b`.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic {
                found: magic,
                expected: MAGIC,
            });
        }
        let flags = u64::from(b[3]);
        let reserved = u64::from(u32::from_le_bytes([b[12], b[13], b[14], b[15]]));
        if flags != 0 || reserved != 0 {
            return Err(FrameError::ReservedBits(flags | reserved << 8));
        }
        let kind = MessageKind::from_byte(b[2]).ok_or(FrameError::UnknownKind(b[2]))?;
        Ok(Header {
            kind,
            body_len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            payload_len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

/// One received frame: a cheap handle (a [`Bytes`]) on the receive buffer.
#[derive(Clone)]
pub struct Frame {
    bytes: Bytes,
    header: Header,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.header.kind)
            .field("body_len", &self.header.body_len)
            .field("payload_len", &self.header.payload_len)
            .finish()
    }
}

impl Frame {
    /// Wraps one whole frame (header included) that came from elsewhere
    /// than a [`FrameDecoder`], checking the header, the length and the
    /// alignment. Bodies are validated when accessed.
    pub fn from_bytes(bytes: Bytes) -> Result<Frame, FrameError> {
        let head: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FrameError::Truncated {
                have: bytes.len(),
                need: HEADER_LEN,
            })?;
        let header = Header::parse(head)?;
        let len = header.frame_len();
        if len != bytes.len() as u64 {
            return Err(FrameError::Truncated {
                have: bytes.len(),
                need: usize::try_from(len).unwrap_or(usize::MAX),
            });
        }
        if bytes[HEADER_LEN..].as_ptr().align_offset(BODY_ALIGN) != 0 {
            return Err(FrameError::Misaligned { kind: header.kind });
        }
        Ok(Frame { bytes, header })
    }

    /// The message kind.
    pub fn kind(&self) -> MessageKind {
        self.header.kind
    }

    /// The header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// The whole frame as received, for forwarding unchanged.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The archived body (unpadded).
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..HEADER_LEN + self.header.body_len as usize]
    }

    /// The payload: a slice of the receive buffer, not a copy.
    pub fn payload(&self) -> Bytes {
        let start = HEADER_LEN + pad8(self.header.body_len as usize);
        self.bytes
            .slice(start..start + self.header.payload_len as usize)
    }

    /// Validates the body as `M` and reads it in place, borrowing the frame:
    /// for code that checks a frame and keeps it (no handle is consumed or
    /// cloned, so no reference count is touched).
    pub fn access<M: WireMessage>(&self) -> Result<&M::Archived, FrameError> {
        if self.header.kind != M::KIND {
            return Err(FrameError::UnexpectedKind {
                expected: M::KIND,
                got: self.header.kind,
            });
        }
        M::validate(self.body())
    }

    /// The payload, borrowed (no reference count touched).
    pub fn payload_slice(&self) -> &[u8] {
        let start = HEADER_LEN + pad8(self.header.body_len as usize);
        &self.bytes[start..start + self.header.payload_len as usize]
    }

    /// Validates the body as `M` and returns a handle that reads it in place
    /// from then on without validating again.
    pub fn validate<M: WireMessage>(self) -> Result<Validated<M>, FrameError> {
        if self.header.kind != M::KIND {
            return Err(FrameError::UnexpectedKind {
                expected: M::KIND,
                got: self.header.kind,
            });
        }
        M::validate(self.body())?;
        Ok(Validated {
            frame: self,
            _message: PhantomData,
        })
    }

    /// Reads the body as `M` without validation.
    ///
    /// # Safety
    ///
    /// The body must be a valid archive of `M`: this frame was validated as
    /// `M` before, or it was encoded by this process.
    pub unsafe fn access_unchecked<M: WireMessage>(&self) -> &M::Archived {
        // SAFETY: the caller guarantees the body is a valid archive of `M`;
        // the slice is 8-aligned (checked when the frame was built).
        unsafe { rkyv::access_unchecked::<M::Archived>(self.body()) }
    }
}

/// A frame whose body was validated as `M`: reading it costs nothing more.
pub struct Validated<M: WireMessage> {
    frame: Frame,
    _message: PhantomData<fn() -> M>,
}

impl<M: WireMessage> Clone for Validated<M> {
    fn clone(&self) -> Self {
        Validated {
            frame: self.frame.clone(),
            _message: PhantomData,
        }
    }
}

impl<M: WireMessage> std::fmt::Debug for Validated<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.frame.fmt(f)
    }
}

impl<M: WireMessage> Validated<M> {
    /// The archived message, read in place.
    #[inline]
    pub fn get(&self) -> &M::Archived {
        // SAFETY: `Frame::validate` checked this exact body as an archive of
        // `M` when this value was made, and `Bytes` is immutable, so the bytes
        // are still valid. Exercised by `validated_reads_in_place` (and Miri).
        unsafe { self.frame.access_unchecked::<M>() }
    }

    /// The frame's payload: a slice of the receive buffer, not a copy.
    pub fn payload(&self) -> Bytes {
        self.frame.payload()
    }

    /// The underlying frame.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// Deserializes into the owned type (allocates; for cold paths).
    pub fn to_owned_message(&self) -> Result<M, FrameError> {
        M::to_owned_message(self.get())
    }
}

/// Encodes messages into frames, reusing its scratch space: after warm-up,
/// encoding allocates nothing (the output buffer is the caller's to reuse).
pub struct FrameEncoder {
    arena: Arena,
    max_frame: usize,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        FrameEncoder::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameEncoder {
    /// An encoder that refuses frames over `max_frame` bytes (the limit the
    /// receiving decoder enforces).
    pub fn new(max_frame: usize) -> FrameEncoder {
        FrameEncoder {
            arena: Arena::new(),
            max_frame,
        }
    }

    /// The frame limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Appends a whole frame — header, `msg`, and `payload` copied in — to
    /// `out`. For large payloads prefer [`FrameEncoder::encode_head`] and
    /// send the payload as its own chunk.
    pub fn encode<M: WireMessage>(
        &mut self,
        msg: &M,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.encode_head(msg, payload.len(), out)?;
        out.extend_from_slice(payload);
        out.extend_from_slice(payload_padding(payload.len()));
        Ok(())
    }

    /// Appends the header and the archived `msg` (padded) for a frame whose
    /// payload of `payload_len` bytes the caller sends next, followed by
    /// [`payload_padding`]`(payload_len)`. This is how a payload is forwarded
    /// without copying it into the frame.
    ///
    /// `out.len()` must be a multiple of 8 (it is whenever `out` holds only
    /// whole frames). On error `out` is left as it was.
    pub fn encode_head<M: WireMessage>(
        &mut self,
        msg: &M,
        payload_len: usize,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        debug_assert_eq!(out.len() % BODY_ALIGN, 0, "output holds a partial frame");
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        if let Err(e) = msg.archive_into(out, &mut self.arena) {
            out.truncate(start);
            return Err(e);
        }
        let body_len = out.len() - start - HEADER_LEN;
        let total = HEADER_LEN + pad8(body_len) + pad8(payload_len);
        if total > self.max_frame || payload_len > u32::MAX as usize {
            out.truncate(start);
            return Err(EncodeError::TooLarge {
                kind: M::KIND,
                len: total,
                max: self.max_frame,
            });
        }
        out.resize(start + HEADER_LEN + pad8(body_len), 0);
        Header {
            kind: M::KIND,
            // Fits: total <= max_frame was checked and body_len <= total.
            body_len: body_len as u32,
            payload_len: payload_len as u32,
        }
        .write(&mut out[start..start + HEADER_LEN]);
        Ok(())
    }
}

/// Counters a decoder keeps for observability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames handed out.
    pub frames: u64,
    /// Frames that had to be copied to an aligned buffer because the
    /// receive buffer was not 8-aligned (expected to stay 0).
    pub realigned: u64,
}

/// Turns a byte stream into frames without copying them.
///
/// Feed it by reading into [`FrameDecoder::read_buf`] (or with
/// [`FrameDecoder::feed`]) and take frames with [`FrameDecoder::next_frame`]
/// until it returns `Ok(None)`. After an error the decoder is poisoned: the
/// stream has lost its framing and must be reset.
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
    pending: Option<Header>,
    poisoned: bool,
    read_chunk: usize,
    stats: DecoderStats,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder that rejects frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            max_frame: max_frame.max(HEADER_LEN),
            pending: None,
            poisoned: false,
            read_chunk: MIN_READ_CHUNK,
            stats: DecoderStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Bytes received but not yet handed out as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The buffer to read into (e.g. with `AsyncReadExt::read_buf`), with
    /// room reserved for the rest of the frame being received, or for one
    /// read chunk. Never reserves more than the frame limit.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if self.buf.capacity() > 0 && self.buf.len() == self.buf.capacity() {
            // The last read filled everything it was given: read more at once.
            self.read_chunk = (self.read_chunk * 2).min(MAX_READ_CHUNK);
        }
        let want = match self.pending {
            // The header was checked against the limit already.
            Some(h) => (h.frame_len() as usize)
                .saturating_sub(self.buf.len())
                .max(1),
            None => self.read_chunk.min(self.max_frame),
        };
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        &mut self.buf
    }

    /// Copies `bytes` in (for tests, fuzzers and transports that hand out
    /// slices).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        match self.next_frame_inner() {
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
            ok => ok,
        }
    }

    fn next_frame_inner(&mut self) -> Result<Option<Frame>, FrameError> {
        let header = match self.pending {
            Some(h) => h,
            None => {
                let Some(head) = self.buf.get(..HEADER_LEN) else {
                    return Ok(None);
                };
                let head: &[u8; HEADER_LEN] =
                    head.try_into().map_err(|_| FrameError::Truncated {
                        have: self.buf.len(),
                        need: HEADER_LEN,
                    })?;
                let h = Header::parse(head)?;
                if h.frame_len() > self.max_frame as u64 {
                    return Err(FrameError::TooLarge {
                        len: h.frame_len(),
                        max: self.max_frame,
                    });
                }
                self.pending = Some(h);
                h
            }
        };
        let len = header.frame_len() as usize;
        if self.buf.len() < len {
            return Ok(None);
        }
        self.pending = None;
        let mut bytes = self.buf.split_to(len).freeze();
        if bytes[HEADER_LEN..].as_ptr().align_offset(BODY_ALIGN) != 0 {
            // Only if the allocator returned a buffer that is not 8-aligned:
            // copy this frame once into an aligned buffer.
            let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(len);
            aligned.extend_from_slice(&bytes);
            bytes = Bytes::from_owner(aligned);
            self.stats.realigned += 1;
        }
        self.stats.frames += 1;
        Ok(Some(Frame { bytes, header }))
    }

    /// Call when the stream ends: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.pending {
            Some(h) => h.frame_len() as usize,
            None => HEADER_LEN,
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            need,
        })
    }

    /// Drops buffered bytes (after an error, before reuse).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.buf.advance(0);
        self.pending = None;
        self.poisoned = false;
    }
}

/// Decodes one whole frame from a byte slice, copying it into an aligned
/// buffer first. The entry point for fuzzers and tests.
pub fn decode_one(bytes: &[u8], max_frame: usize) -> Result<Option<Frame>, FrameError> {
    let mut dec = FrameDecoder::new(max_frame);
    dec.feed(bytes);
    dec.next_frame()
}
