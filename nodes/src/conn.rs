//! Frames over quinn streams: a batching writer ([`Outbox`]), a reader
//! ([`FrameReader`]) and the `Hello` exchange that opens every stream.
//!
//! All of it runs on one current-thread runtime per node (see DESIGN.md,
//! "Runtime and transport choices"), so shared state is `Rc<RefCell<_>>`
//! and nothing on the hot path takes a lock.
//!
//! Writing: producers encode frames straight into the outbox's buffer
//! (no channel, no task per frame); one writer task per stream sends
//! whatever accumulated as a single `write_all_chunks` call, so frames that
//! arrive while a write is in progress go out together, packed into the same
//! packets. Payloads of 4 KiB or more are sent by reference (a `Bytes`
//! chunk of the receive buffer they arrived in), smaller ones are copied
//! into the batch, which is cheaper than a chunk of their own.

use std::cell::RefCell;
use std::rc::Rc;

use allot_wire::{
    ErrorCode, ErrorMsg, Frame, FrameDecoder, FrameEncoder, FrameError, Handshake, Hello,
    MessageKind, Role, Validated, WireMessage, DEFAULT_MAX_FRAME,
};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::transport;

/// Payloads at least this large are sent as their own chunk, not copied.
const PAYLOAD_BY_REFERENCE: usize = 4096;

/// Bytes an outbox may hold before `send` refuses with
/// [`ConnError::Backpressure`]: a peer that does not read cannot make a node
/// buffer without limit. Callers either wait ([`Outbox::ready`]) or fail
/// the task to its submitter.
pub const OUTBOX_LIMIT: usize = 32 * 1024 * 1024;

/// What can go wrong on a stream.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The peer sent bytes that are not a valid frame.
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    /// Encoding failed (a message over the frame limit).
    #[error("cannot encode: {0}")]
    Encode(#[from] allot_wire::EncodeError),
    /// The stream or connection failed.
    #[error("stream failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed.
    #[error("stream failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Opening a stream failed.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// I/O on the stream failed.
    #[error("stream failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer answered with an `Error` frame.
    #[error("peer refused: {message} ({code:?})")]
    Refused {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// The peer's certificate does not allow what it tried.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The stream ended before the handshake finished.
    #[error("stream closed during handshake")]
    Closed,
    /// The outbox is over [`OUTBOX_LIMIT`]: the peer is not reading.
    #[error("peer is not reading: {0} bytes queued")]
    Backpressure(usize),
    /// The outbox was closed.
    #[error("stream is closed")]
    OutboxClosed,
}

struct OutState {
    buf: BytesMut,
    chunks: Vec<Bytes>,
    queued: usize,
    enc: FrameEncoder,
    closed: bool,
}

/// Told the bytes of each completed write.
type WrittenHook = Box<dyn Fn(usize)>;

/// The sending half of a stream, shared by everything that answers on it.
pub struct Outbox {
    state: RefCell<OutState>,
    wake: Notify,
    drained: Notify,
    /// Told how many bytes each write put on the stream (a node core's
    /// backlog accounting; see [`Outbox::on_written`]).
    written: RefCell<Option<WrittenHook>>,
}

impl Outbox {
    fn new() -> Rc<Outbox> {
        Rc::new(Outbox {
            state: RefCell::new(OutState {
                // Small at first: a node may hold thousands of mostly idle
                // streams (one per worker); busy ones grow as they batch.
                buf: BytesMut::with_capacity(4 * 1024),
                chunks: Vec::new(),
                queued: 0,
                enc: FrameEncoder::new(DEFAULT_MAX_FRAME),
                closed: false,
            }),
            wake: Notify::new(),
            drained: Notify::new(),
            written: RefCell::new(None),
        })
    }

    /// Queues frames a node core encoded (its `Transmit`): they go out in
    /// order with whatever else is queued. The core bounds its own backlog,
    /// so no limit is checked here; frames pushed after [`Outbox::close`]
    /// are dropped (the core has marked that link closed too).
    pub fn push_encoded(&self, chunks: Vec<Bytes>, len: usize) {
        let mut st = self.state.borrow_mut();
        if st.closed {
            return;
        }
        if !st.buf.is_empty() {
            let b = st.buf.split().freeze();
            st.chunks.push(b);
        }
        st.chunks.extend(chunks);
        st.queued += len;
        drop(st);
        self.wake.notify_one();
    }

    /// Calls `f` with the bytes of each completed write, so that a node
    /// core learns what its link's peer has been sent.
    pub fn on_written(&self, f: WrittenHook) {
        *self.written.borrow_mut() = Some(f);
    }

    /// Queues a frame; the writer task sends it with whatever else queued.
    pub fn send<M: WireMessage>(&self, msg: &M, payload: &Bytes) -> Result<(), ConnError> {
        let mut st = self.state.borrow_mut();
        if st.closed {
            return Err(ConnError::OutboxClosed);
        }
        if st.queued > OUTBOX_LIMIT {
            return Err(ConnError::Backpressure(st.queued));
        }
        let OutState {
            buf, chunks, enc, ..
        } = &mut *st;
        let before = buf.len();
        if payload.len() < PAYLOAD_BY_REFERENCE {
            enc.encode(msg, payload, buf)?;
        } else {
            enc.encode_head(msg, payload.len(), buf)?;
            chunks.push(buf.split().freeze());
            chunks.push(payload.clone());
            buf.extend_from_slice(allot_wire::payload_padding(payload.len()));
        }
        let added = buf.len()
            + if payload.len() < PAYLOAD_BY_REFERENCE {
                0
            } else {
                payload.len()
            };
        st.queued += added.saturating_sub(before);
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Waits until the outbox is under its limit (backpressure for
    /// producers that can wait).
    pub async fn ready(&self) {
        while self.state.borrow().queued > OUTBOX_LIMIT / 2 && !self.is_closed() {
            self.drained.notified().await;
        }
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.state.borrow().queued
    }

    /// Whether the stream is closed.
    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    /// Stops accepting frames; the writer sends what is queued and finishes
    /// the stream.
    pub fn close(&self) {
        self.state.borrow_mut().closed = true;
        self.wake.notify_one();
        self.drained.notify_waiters();
    }

    fn take(&self) -> (Vec<Bytes>, bool) {
        let mut st = self.state.borrow_mut();
        if !st.buf.is_empty() {
            let b = st.buf.split().freeze();
            st.chunks.push(b);
        }
        st.queued = 0;
        (std::mem::take(&mut st.chunks), st.closed)
    }
}

/// Runs until the outbox is closed or the stream fails; then the stream is
/// finished (or reset) and the outbox marked closed.
async fn write_loop(out: Rc<Outbox>, mut send: quinn::SendStream) {
    loop {
        let (mut chunks, closed) = out.take();
        let len: usize = chunks.iter().map(Bytes::len).sum();
        if chunks.is_empty() {
            if closed {
                let _ = send.finish();
                return;
            }
            out.drained.notify_waiters();
            out.wake.notified().await;
            continue;
        }
        if let Err(e) = send.write_all_chunks(&mut chunks).await {
            tracing::debug!("write failed: {e}");
            out.close();
            return;
        }
        if let Some(f) = out.written.borrow().as_ref() {
            f(len);
        }
    }
}

/// The receiving half of a stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl FrameReader {
    fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            dec: FrameDecoder::new(DEFAULT_MAX_FRAME),
        }
    }

    /// The next frame, `None` at a clean end of stream. A malformed frame is
    /// an error; the caller resets the stream with [`FrameReader::reject`].
    pub async fn next(&mut self) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(f) = self.dec.next_frame()? {
                return Ok(Some(f));
            }
            let n = self.recv.read_buf(self.dec.read_buf()).await?;
            if n == 0 {
                self.dec.finish()?;
                return Ok(None);
            }
        }
    }

    /// The next frame already received, without waiting for the network.
    pub fn buffered(&mut self) -> Result<Option<Frame>, ConnError> {
        Ok(self.dec.next_frame()?)
    }

    /// The next frame, like [`FrameReader::next`], and when it arrived:
    /// `arrived` is set to now only when a network read was needed. Frames
    /// of one burst share the clock of the read that brought them, so a
    /// burst costs one clock read, not one per frame.
    pub async fn next_stamped(
        &mut self,
        arrived: &mut std::time::Instant,
    ) -> Result<Option<Frame>, ConnError> {
        if let Some(f) = self.dec.next_frame()? {
            return Ok(Some(f));
        }
        let r = self.next().await;
        *arrived = std::time::Instant::now();
        r
    }

    /// Tells the peer to stop sending on this stream, with an error code.
    pub fn reject(&mut self, code: ErrorCode) {
        let _ = self.recv.stop(transport::codes::varint(code));
    }
}

/// A stream after a successful `Hello` exchange.
pub struct Stream {
    /// Where to send frames.
    pub out: Rc<Outbox>,
    /// Where frames come from.
    pub reader: FrameReader,
    /// The peer's node name (from its `Hello`, checked against its
    /// certificate's role).
    pub peer_name: String,
    /// The peer's role, as its certificate says.
    pub peer_role: Role,
    /// The peer's `Hello` (client attributes).
    pub hello: Validated<Hello>,
}

fn start(send: quinn::SendStream, recv: quinn::RecvStream) -> (Rc<Outbox>, FrameReader) {
    let out = Outbox::new();
    tokio::task::spawn_local(write_loop(out.clone(), send));
    (out, FrameReader::new(recv))
}

/// Builds our `Hello`.
pub fn hello(role: Role, name: &str, attrs: Vec<allot_wire::Attr>) -> Hello {
    Hello {
        version: allot_wire::PROTOCOL_VERSION,
        role,
        name: name.to_owned(),
        attrs,
    }
}

/// Opens a stream on `conn`, says `Hello`, and waits for the peer's.
pub async fn open(conn: &quinn::Connection, me: &Hello) -> Result<Stream, ConnError> {
    let (send, recv) = conn.open_bi().await?;
    let (out, mut reader) = start(send, recv);
    out.send(me, &Bytes::new())?;
    let first = reader.next().await?.ok_or(ConnError::Closed)?;
    if first.kind() == MessageKind::Error {
        return Err(refusal(first)?);
    }
    let peer_role = transport::peer_role(conn).map_err(|e| ConnError::Forbidden(e.to_string()))?;
    let hello = Handshake::new().on_frame(first).map_err(|(e, _)| e)?;
    Ok(Stream {
        out,
        reader,
        peer_name: hello.get().name.as_str().to_owned(),
        peer_role,
        hello,
    })
}

/// Accepts the peer's `Hello` on a new stream and answers with ours. A
/// wrong version, or a role the peer's certificate was not issued for, gets
/// an `Error` frame and the stream is closed.
pub async fn accept(
    conn: &quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    me: &Hello,
) -> Result<Stream, ConnError> {
    let (out, mut reader) = start(send, recv);
    let first = match reader.next().await {
        Ok(Some(f)) => f,
        Ok(None) => return Err(ConnError::Closed),
        Err(ConnError::Frame(e)) => {
            refuse(&out, &mut reader, e.code(), e.to_string());
            return Err(e.into());
        }
        Err(e) => return Err(e),
    };
    let hello = match Handshake::new().on_frame(first) {
        Ok(h) => h,
        Err((e, msg)) => {
            let _ = out.send(&msg, &Bytes::new());
            out.close();
            reader.reject(msg.code);
            return Err(e.into());
        }
    };
    let cert_role = transport::peer_role(conn).map_err(|e| ConnError::Forbidden(e.to_string()))?;
    let claimed = hello.get().role.to_native();
    if claimed != cert_role {
        let msg = ErrorMsg {
            code: ErrorCode::Forbidden,
            message: format!(
                "certificate is for role {}, Hello claims {}",
                cert_role.as_str(),
                claimed.as_str()
            ),
        };
        let _ = out.send(&msg, &Bytes::new());
        out.close();
        reader.reject(ErrorCode::Forbidden);
        return Err(ConnError::Forbidden(msg.message));
    }
    out.send(me, &Bytes::new())?;
    Ok(Stream {
        out,
        reader,
        peer_name: hello.get().name.as_str().to_owned(),
        peer_role: cert_role,
        hello,
    })
}

/// Whether `e` ended a stream because a node stopped on purpose: this one
/// (its connection closed locally) or the peer (it closed with
/// `Unavailable`, what a stopping node sends). That is a departure to log
/// as such, not a lost link.
pub fn ended_by_a_stop(e: &ConnError) -> bool {
    // A stream read through `AsyncRead` wraps quinn's error in an
    // `io::Error`.
    let read = match e {
        ConnError::Read(r) => Some(r),
        ConnError::Io(io) => io
            .get_ref()
            .and_then(|i| i.downcast_ref::<quinn::ReadError>()),
        _ => None,
    };
    let c = match (read, e) {
        (Some(quinn::ReadError::ConnectionLost(c)), _) | (None, ConnError::Connection(c)) => c,
        _ => return false,
    };
    match c {
        quinn::ConnectionError::LocallyClosed => true,
        quinn::ConnectionError::ApplicationClosed(a) => {
            a.error_code == transport::codes::varint(ErrorCode::Unavailable)
        }
        _ => false,
    }
}

/// Sends an `Error` frame for a frame that may not be sent by this peer or
/// could not be read, and resets the stream.
pub fn refuse(stream_out: &Outbox, reader: &mut FrameReader, code: ErrorCode, message: String) {
    tracing::warn!("refusing stream: {message}");
    let _ = stream_out.send(&ErrorMsg { code, message }, &Bytes::new());
    stream_out.close();
    reader.reject(code);
}

/// The refusal an `Error` frame from the peer carries (its code and
/// words), or why the frame could not be read.
pub fn refusal(f: Frame) -> Result<ConnError, FrameError> {
    let e = f.validate::<ErrorMsg>()?;
    let e = e.get();
    Ok(ConnError::Refused {
        code: decode_code(&e.code),
        message: e.message.as_str().to_owned(),
    })
}

/// The owned error code of an archived one.
pub fn decode_code(c: &allot_wire::message::ArchivedErrorCode) -> ErrorCode {
    use allot_wire::message::ArchivedErrorCode as A;
    match c {
        A::VersionMismatch => ErrorCode::VersionMismatch,
        A::Forbidden => ErrorCode::Forbidden,
        A::Malformed => ErrorCode::Malformed,
        A::TooLarge => ErrorCode::TooLarge,
        A::Protocol => ErrorCode::Protocol,
        A::UnknownApp => ErrorCode::UnknownApp,
        A::NoMatch => ErrorCode::NoMatch,
        A::Overloaded => ErrorCode::Overloaded,
        A::Unavailable => ErrorCode::Unavailable,
        A::Internal => ErrorCode::Internal,
    }
}
