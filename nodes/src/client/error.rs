//! What can go wrong for a client. Every error keeps its cause as its
//! `source()`, so a program (or `anyhow`'s `{:#}`) can tell a timeout from
//! a refused certificate from a lost connection.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allot_wire::{ErrorCode, FrameError};

use crate::conn::ConnError;
use crate::pki::PkiError;
use crate::transport::TransportError;

/// Why one gateway or distributor could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptError {
    /// No answer (QUIC handshake and `Hello`) within the time allowed.
    #[error("no answer within {after:?}")]
    Timeout {
        /// How long the client waited.
        after: Duration,
    },
    /// The QUIC connection could not be made (handshake refused, bad
    /// certificate, endpoint closed).
    #[error(transparent)]
    Transport(TransportError),
    /// The connection was made but the stream failed, or the peer refused
    /// the client's `Hello`.
    #[error(transparent)]
    Stream(#[from] ConnError),
    /// The gateway answered with no usable distributor address.
    #[error("the gateway's redirect lists no usable distributor")]
    EmptyRedirect,
}

impl From<TransportError> for AttemptError {
    /// A handshake that timed out in the transport is a timeout here too.
    fn from(e: TransportError) -> AttemptError {
        match e {
            TransportError::Timeout { after, .. } => AttemptError::Timeout { after },
            e => AttemptError::Transport(e),
        }
    }
}

/// The gateways or distributors tried, in order, each with why it failed.
/// Its `source()` is the last attempt's error.
#[derive(Debug, Clone, Default)]
pub struct Attempts(Vec<(SocketAddr, Arc<AttemptError>)>);

impl Attempts {
    pub(crate) fn push(&mut self, addr: SocketAddr, e: AttemptError) {
        self.0.push((addr, Arc::new(e)));
    }

    /// Each address tried, with why it failed.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &AttemptError)> {
        self.0.iter().map(|(a, e)| (*a, &**e))
    }

    /// Whether there was at least one attempt and every one timed out.
    pub fn all_timed_out(&self) -> bool {
        !self.0.is_empty()
            && self
                .0
                .iter()
                .all(|(_, e)| matches!(**e, AttemptError::Timeout { .. }))
    }
}

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none configured");
        }
        for (i, (addr, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{addr}: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Attempts {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .last()
            .map(|(_, e)| &**e as &(dyn std::error::Error + 'static))
    }
}

/// Client errors. Cloneable (causes are shared): one lost connection fails
/// every task in flight with the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client's certificates could not be loaded.
    #[error("cannot load the client's certificates: {0}")]
    Pki(#[source] Arc<PkiError>),
    /// The client's QUIC endpoint could not be opened.
    #[error("cannot open the client's endpoint: {0}")]
    Endpoint(#[source] Arc<TransportError>),
    /// The thread that runs a [`Client`](super::Client) could not start.
    #[error("cannot start the client's thread: {0}")]
    Thread(#[source] Arc<std::io::Error>),
    /// Every gateway (or every distributor) tried failed to answer in
    /// time.
    #[error("no {searched} answered in time: {tried}")]
    Timeout {
        /// What the search was for.
        searched: Searched,
        /// The addresses tried, each with its timeout.
        #[source]
        tried: Attempts,
    },
    /// No gateway answered (and not only because of timeouts).
    #[error("no gateway answered: {0}")]
    NoGateway(#[source] Attempts),
    /// No distributor in the redirect answered (and not only because of
    /// timeouts).
    #[error("no distributor answered: {0}")]
    NoDistributor(#[source] Attempts),
    /// Too many tasks in flight.
    #[error("{0} tasks in flight, the client's limit")]
    TooMany(usize),
    /// The stream to the distributor failed while sending.
    #[error("connection lost: {0}")]
    Lost(#[source] Arc<ConnError>),
    /// The client has no distributor session right now (it is failing
    /// over, or was closed).
    #[error("not connected to a distributor")]
    NotConnected,
    /// The distributor answered with an error.
    #[error("distributor refused: {message} ({code:?})")]
    Refused {
        /// The distributor's code.
        code: ErrorCode,
        /// The distributor's message.
        message: String,
    },
    /// The distributor's reply could not be decoded.
    #[error("bad reply from the distributor: {0}")]
    BadReply(#[source] Arc<FrameError>),
    /// The client was closed (or its thread ended) before the answer came.
    #[error("the client is closed")]
    Closed,
    /// Cancels are queued faster than the client's thread takes them.
    #[error("the client's cancel queue is full ({0} cancels waiting)")]
    CancelQueueFull(usize),
}

/// What a connection search was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Searched {
    /// A gateway, for a redirect.
    Gateway,
    /// A distributor, for a session.
    Distributor,
}

impl fmt::Display for Searched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Searched::Gateway => "gateway",
            Searched::Distributor => "distributor",
        })
    }
}

impl ClientError {
    /// The error for a failed search: [`ClientError::Timeout`] when every
    /// attempt timed out, else [`ClientError::NoGateway`] or
    /// [`ClientError::NoDistributor`].
    pub(crate) fn search_failed(tried: Attempts, searched: Searched) -> Self {
        match searched {
            _ if tried.all_timed_out() => ClientError::Timeout { searched, tried },
            Searched::Gateway => ClientError::NoGateway(tried),
            Searched::Distributor => ClientError::NoDistributor(tried),
        }
    }

    /// Whether this is a timeout (of the connection search).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }
}
