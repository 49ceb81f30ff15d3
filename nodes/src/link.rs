//! What a node core sends, as data: the frames queued for one link, and
//! the [`Transmit`] the async shell takes from the core to write.
//!
//! A core never touches a socket. When it answers on a link it encodes the
//! frame into that link's [`Outgoing`] buffer; the shell asks the core for
//! work with `poll_transmit` after every event and writes what it gets.
//! Payloads of [`PAYLOAD_BY_REFERENCE`] bytes or more travel as their own
//! `Bytes` chunk (the slice of the receive buffer they arrived in, never
//! copied); smaller ones are copied into the batch, which is cheaper than a
//! chunk of their own.
//!
//! Bound: a link holds at most [`OUTGOING_LIMIT`] bytes that the shell has
//! not yet reported written ([`Outgoing::written`]). Past it,
//! [`Outgoing::push`] refuses with [`LinkFull`] and the core decides: a
//! placement goes to another worker, a client that does not read its
//! results is disconnected with an error.

use std::cell::RefCell;

use allot_wire::{ErrorCode, ErrorMsg, FrameEncoder, WireMessage, DEFAULT_MAX_FRAME};
use bytes::{Bytes, BytesMut};

/// Payloads at least this large are sent as their own chunk, not copied.
pub const PAYLOAD_BY_REFERENCE: usize = 4096;

/// Bytes a link may hold unwritten before [`Outgoing::push`] refuses.
pub const OUTGOING_LIMIT: usize = 32 * 1024 * 1024;

/// Names one link (a stream to one peer) of a core. Given out by the core
/// when the shell reports the link open; never reused by that core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// Frames for one link, ready to write.
#[derive(Debug)]
pub struct Transmit {
    /// The link to write them on.
    pub link: LinkId,
    /// The encoded frames, in order; large payloads are chunks of their own.
    pub chunks: Vec<Bytes>,
    /// The bytes in `chunks`; report them with the core's `handle_written`
    /// once written.
    pub len: usize,
    /// After these bytes, finish the stream and stop reading it with this
    /// code: the core closed the link (the last chunk holds the `Error`
    /// frame saying why).
    pub close: Option<ErrorCode>,
}

/// The link is over [`OUTGOING_LIMIT`] or closed: the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkFull {
    /// The peer is not reading.
    #[error("peer is not reading: {0} bytes queued")]
    Backlog(usize),
    /// The link was closed.
    #[error("link is closed")]
    Closed,
    /// The frame could not be encoded (over the frame size limit).
    #[error("frame too large to encode")]
    TooLarge,
}

struct OutState {
    buf: BytesMut,
    chunks: Vec<Bytes>,
    /// Bytes in `buf` and `chunks`, not yet handed to the shell.
    pending: usize,
    /// Bytes handed to the shell or pending, not yet reported written.
    unwritten: usize,
    enc: FrameEncoder,
    close: Option<ErrorCode>,
    /// Closed: nothing more is queued.
    closed: bool,
    /// On the core's list of links with something to send.
    listed: bool,
}

/// The frames a core has queued for one link. Shared by the link's state
/// in the core and the tasks placed through it (hence the interior
/// mutability: everything runs on one thread).
pub struct Outgoing {
    id: LinkId,
    state: RefCell<OutState>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("id", &self.id)
            .field("unwritten", &self.unwritten())
            .finish()
    }
}

impl Outgoing {
    /// An empty buffer for link `id`.
    pub fn new(id: LinkId) -> Outgoing {
        Outgoing {
            id,
            state: RefCell::new(OutState {
                // Small at first: a node may hold thousands of mostly idle
                // links (one per worker); busy ones grow as they batch.
                buf: BytesMut::with_capacity(1024),
                chunks: Vec::new(),
                pending: 0,
                unwritten: 0,
                enc: FrameEncoder::new(DEFAULT_MAX_FRAME),
                close: None,
                closed: false,
                listed: false,
            }),
        }
    }

    /// The link this buffer belongs to.
    pub fn id(&self) -> LinkId {
        self.id
    }

    /// Queues a frame. Returns whether the link just went from nothing to
    /// send to something (the caller then lists it for `poll_transmit`).
    pub fn push<M: WireMessage>(&self, msg: &M, payload: &Bytes) -> Result<bool, LinkFull> {
        let mut st = self.state.borrow_mut();
        if st.closed {
            return Err(LinkFull::Closed);
        }
        if st.unwritten > OUTGOING_LIMIT {
            return Err(LinkFull::Backlog(st.unwritten));
        }
        let OutState {
            buf, chunks, enc, ..
        } = &mut *st;
        let before = buf.len();
        let by_reference = payload.len() >= PAYLOAD_BY_REFERENCE;
        if by_reference {
            enc.encode_head(msg, payload.len(), buf)
                .map_err(|_| LinkFull::TooLarge)?;
            chunks.push(buf.split().freeze());
            chunks.push(payload.clone());
            buf.extend_from_slice(allot_wire::payload_padding(payload.len()));
        } else {
            enc.encode(msg, payload, buf)
                .map_err(|_| LinkFull::TooLarge)?;
        }
        // For a large payload `buf` was split after the head: the chunk
        // holds what was buffered before and the head, `buf` the padding.
        let added = if by_reference {
            chunks[chunks.len() - 2].len() - before + payload.len() + buf.len()
        } else {
            buf.len() - before
        };
        st.pending += added;
        st.unwritten += added;
        Ok(!std::mem::replace(&mut st.listed, true))
    }

    /// Queues an `Error` frame and closes the link: the shell finishes the
    /// stream after it. Returns whether the link must be listed.
    pub fn close(&self, code: ErrorCode, message: String) -> bool {
        let mut st = self.state.borrow_mut();
        if st.closed {
            return false;
        }
        let OutState { buf, enc, .. } = &mut *st;
        let before = buf.len();
        // An error message is short; encoding it cannot pass the limit.
        if enc
            .encode(&ErrorMsg { code, message }, &Bytes::new(), buf)
            .is_ok()
        {
            let added = buf.len() - before;
            st.pending += added;
            st.unwritten += added;
        }
        st.closed = true;
        st.close = Some(code);
        !std::mem::replace(&mut st.listed, true)
    }

    /// Whether the link was closed by the core.
    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    /// Marks the link closed by its peer or the shell: nothing more is
    /// queued, nothing is sent.
    pub fn closed_by_peer(&self) {
        let mut st = self.state.borrow_mut();
        st.closed = true;
        st.buf.clear();
        st.chunks.clear();
        st.pending = 0;
    }

    /// Bytes not yet reported written.
    pub fn unwritten(&self) -> usize {
        self.state.borrow().unwritten
    }

    /// The shell wrote `n` bytes of what it took.
    pub fn written(&self, n: usize) {
        let mut st = self.state.borrow_mut();
        st.unwritten = st.unwritten.saturating_sub(n);
    }

    /// Takes what is queued (and unlists the link).
    pub fn take(&self) -> Option<Transmit> {
        let mut st = self.state.borrow_mut();
        st.listed = false;
        if !st.buf.is_empty() {
            let b = st.buf.split().freeze();
            st.chunks.push(b);
        }
        if st.chunks.is_empty() && st.close.is_none() {
            return None;
        }
        let len = std::mem::take(&mut st.pending);
        Some(Transmit {
            link: self.id,
            chunks: std::mem::take(&mut st.chunks),
            len,
            close: st.close.take(),
        })
    }
}

/// Queues a frame on `out`, and lists the link in `transmit` the first
/// time it has something to send (each link is listed once until taken).
pub fn push<M: WireMessage>(
    transmit: &mut std::collections::VecDeque<std::rc::Rc<Outgoing>>,
    out: &std::rc::Rc<Outgoing>,
    msg: &M,
    payload: &Bytes,
) -> Result<(), LinkFull> {
    if out.push(msg, payload)? {
        transmit.push_back(out.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_wire::{Cancel, FrameDecoder, MessageKind};

    fn decode(t: &Transmit) -> Vec<(MessageKind, usize)> {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        for c in &t.chunks {
            dec.read_buf().extend_from_slice(c);
        }
        let mut out = Vec::new();
        while let Ok(Some(f)) = dec.next_frame() {
            out.push((f.kind(), f.payload().len()));
        }
        out
    }

    #[test]
    fn frames_come_out_in_order_with_large_payloads_by_reference() {
        let o = Outgoing::new(LinkId(7));
        let big = Bytes::from(vec![9u8; PAYLOAD_BY_REFERENCE * 2]);
        assert!(o.push(&Cancel { task_id: 1 }, &Bytes::new()).unwrap());
        assert!(
            !o.push(&Cancel { task_id: 2 }, &big).unwrap(),
            "listed once"
        );
        assert!(!o
            .push(&Cancel { task_id: 3 }, &Bytes::from_static(b"x"))
            .unwrap());
        let t = o.take().unwrap();
        assert_eq!(t.link, LinkId(7));
        assert!(
            t.chunks.iter().any(|c| c.as_ptr() == big.as_ptr()),
            "the large payload is the caller's buffer, not a copy"
        );
        assert_eq!(t.len, t.chunks.iter().map(|c| c.len()).sum::<usize>());
        assert_eq!(
            decode(&t),
            vec![
                (MessageKind::Cancel, 0),
                (MessageKind::Cancel, big.len()),
                (MessageKind::Cancel, 1)
            ]
        );
        assert!(o.take().is_none());
    }

    #[test]
    fn a_link_that_is_not_written_refuses_past_its_bound() {
        let o = Outgoing::new(LinkId(1));
        let chunk = Bytes::from(vec![0u8; 1 << 20]);
        let mut queued = 0;
        while o.push(&Cancel { task_id: 1 }, &chunk).is_ok() {
            queued += 1;
            assert!(queued < 64, "the bound holds");
        }
        assert!(matches!(
            o.push(&Cancel { task_id: 1 }, &chunk),
            Err(LinkFull::Backlog(n)) if n > OUTGOING_LIMIT
        ));
        // Taking is not writing: still full until the shell says written.
        let t = o.take().unwrap();
        assert!(o.push(&Cancel { task_id: 1 }, &Bytes::new()).is_err());
        o.written(t.len);
        assert!(o.push(&Cancel { task_id: 1 }, &Bytes::new()).is_ok());
    }

    #[test]
    fn close_sends_the_error_then_nothing() {
        let o = Outgoing::new(LinkId(3));
        o.push(&Cancel { task_id: 1 }, &Bytes::new()).unwrap();
        assert!(!o.close(ErrorCode::Overloaded, "not reading".into()));
        assert_eq!(
            o.push(&Cancel { task_id: 2 }, &Bytes::new()),
            Err(LinkFull::Closed)
        );
        let t = o.take().unwrap();
        assert_eq!(t.close, Some(ErrorCode::Overloaded));
        assert_eq!(
            decode(&t).iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![MessageKind::Cancel, MessageKind::Error]
        );
    }
}
