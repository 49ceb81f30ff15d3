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
    /// The gateway's host name did not resolve (this time: it is looked
    /// up again at the next search).
    #[error(transparent)]
    Resolve(#[from] crate::hostport::ResolveError),
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

impl AttemptError {
    /// Whether trying the same address again cannot help: the peer refused
    /// the client for a reason that does not pass (its certificate, its
    /// role, its protocol version), or the client's own endpoint is closed.
    /// Anything else (no answer, a lost connection, a node that says it is
    /// not ready) may pass, so a search is retried over it.
    pub fn is_permanent(&self) -> bool {
        match self {
            AttemptError::Timeout { .. }
            | AttemptError::EmptyRedirect
            | AttemptError::Resolve(_) => false,
            AttemptError::Transport(e) => match e {
                TransportError::Handshake { source, .. } => refused_by_tls(source),
                TransportError::Timeout { .. } => false,
                // Bad settings, a bad address, a closed endpoint.
                _ => true,
            },
            AttemptError::Stream(e) => match e {
                ConnError::Refused { code, .. } => !matches!(
                    code,
                    ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::Internal
                ),
                ConnError::Forbidden(_) => true,
                ConnError::Connection(c) => refused_by_tls(c),
                _ => false,
            },
        }
    }
}

/// Whether a connection failed in its TLS handshake (an untrusted or
/// refused certificate), by either side: QUIC carries TLS alerts as the
/// "crypto" error codes 0x100 to 0x1ff.
fn refused_by_tls(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    (0x100..=0x1ff).contains(&u64::from(code))
}

/// One address tried, as what, and its (last) error.
#[derive(Debug, Clone)]
struct Attempt {
    addr: SocketAddr,
    searched: Searched,
    error: Arc<AttemptError>,
}

/// The gateways or distributors tried, in order, each with why it failed.
/// Its `source()` is the last attempt's error.
///
/// After a client retried its search through an outage (see
/// [`ClientConfig::retry_for`](super::ClientConfig#structfield.retry_for)),
/// it lists every address tried during the outage, once, in the order
/// first tried, with its last error, and says for how long the client
/// searched ([`Attempts::retried`]).
#[derive(Debug, Clone, Default)]
pub struct Attempts {
    tried: Vec<Attempt>,
    retried: Option<Retried>,
}

/// How long a client searched before it gave up, and how many times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retried {
    /// From the first failed search to giving up.
    pub after: Duration,
    /// Searches made (the first one included).
    pub searches: u32,
}

impl Attempt {
    /// The host name that did not resolve, for an attempt that never had
    /// an address (its `addr` is then only a placeholder).
    fn host(&self) -> Option<&crate::HostPort> {
        match &*self.error {
            AttemptError::Resolve(e) => Some(&e.addr),
            _ => None,
        }
    }
}

impl Attempts {
    pub(crate) fn push(&mut self, searched: Searched, addr: SocketAddr, e: AttemptError) {
        self.tried.push(Attempt {
            addr,
            searched,
            error: Arc::new(e),
        });
    }

    /// Adds `other`'s attempts: an address already listed keeps its place
    /// and takes the newer error.
    pub(crate) fn merge(&mut self, other: &Attempts) {
        for a in &other.tried {
            match self
                .tried
                .iter_mut()
                .find(|t| t.addr == a.addr && t.searched == a.searched && t.host() == a.host())
            {
                Some(t) => t.error = a.error.clone(),
                None => self.tried.push(a.clone()),
            }
        }
    }

    /// Marks these as the attempts of a search retried as `retried` says.
    pub(crate) fn with_retried(mut self, retried: Retried) -> Attempts {
        self.retried = Some(retried);
        self
    }

    /// Each address tried, with why it failed.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &AttemptError)> {
        self.tried.iter().map(|a| (a.addr, &*a.error))
    }

    /// Each address tried, with what it was tried as and why it failed.
    pub fn iter_searched(&self) -> impl Iterator<Item = (Searched, SocketAddr, &AttemptError)> {
        self.tried.iter().map(|a| (a.searched, a.addr, &*a.error))
    }

    /// How long the client retried before giving up (`None`: it gave up at
    /// the first failed search).
    pub fn retried(&self) -> Option<Retried> {
        self.retried
    }

    /// Whether there was at least one attempt and every one timed out.
    pub fn all_timed_out(&self) -> bool {
        !self.tried.is_empty()
            && self
                .tried
                .iter()
                .all(|a| matches!(*a.error, AttemptError::Timeout { .. }))
    }

    /// Whether there was at least one attempt and every one failed in a
    /// way that trying again cannot mend ([`AttemptError::is_permanent`]).
    pub fn all_permanent(&self) -> bool {
        !self.tried.is_empty() && self.tried.iter().all(|a| a.error.is_permanent())
    }
}

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tried.is_empty() {
            f.write_str("none configured")?;
        }
        // Gateways and distributors in one list (a retried search) say
        // which is which.
        let mixed = self
            .tried
            .iter()
            .any(|a| a.searched != self.tried[0].searched);
        for (i, a) in self.tried.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if mixed {
                write!(f, "{} ", a.searched)?;
            }
            match &*a.error {
                // Names the host itself; there is no address to show.
                AttemptError::Resolve(e) => write!(f, "{e}")?,
                e => write!(f, "{}: {e}", a.addr)?,
            }
        }
        if let Some(r) = self.retried {
            write!(
                f,
                " (retried for {:.1} s, {} searches)",
                r.after.as_secs_f64(),
                r.searches
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Attempts {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.tried
            .last()
            .map(|a| &*a.error as &(dyn std::error::Error + 'static))
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

    /// The addresses tried, when this is a failed connection search
    /// ([`ClientError::Timeout`], [`ClientError::NoGateway`] or
    /// [`ClientError::NoDistributor`]).
    pub fn attempts(&self) -> Option<&Attempts> {
        match self {
            ClientError::Timeout { tried, .. }
            | ClientError::NoGateway(tried)
            | ClientError::NoDistributor(tried) => Some(tried),
            _ => None,
        }
    }

    /// What the failed connection search was for, when this is one.
    pub(crate) fn searched(&self) -> Option<Searched> {
        match self {
            ClientError::Timeout { searched, .. } => Some(*searched),
            ClientError::NoGateway(_) => Some(Searched::Gateway),
            ClientError::NoDistributor(_) => Some(Searched::Distributor),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn timeout(ms: u64) -> AttemptError {
        AttemptError::Timeout {
            after: Duration::from_millis(ms),
        }
    }

    #[test]
    fn names_that_did_not_resolve_are_listed_by_name_each_once() {
        let unresolved = |host: &str| {
            let hp: crate::HostPort = host.parse().unwrap();
            AttemptError::Resolve(crate::hostport::ResolveError {
                addr: hp,
                why: "unknown".into(),
            })
        };
        let none = SocketAddr::from(([0, 0, 0, 0], 7000));
        let mut first = Attempts::default();
        first.push(Searched::Gateway, none, unresolved("a.invalid:7000"));
        let mut then = Attempts::default();
        then.push(Searched::Gateway, none, unresolved("b.invalid:7000"));
        then.push(Searched::Gateway, none, unresolved("a.invalid:7000"));
        first.merge(&then);
        assert_eq!(
            first.to_string(),
            "cannot resolve \"a.invalid:7000\": unknown; cannot resolve \"b.invalid:7000\": unknown"
        );
        assert!(!unresolved("a.invalid:1").is_permanent());
    }

    #[test]
    fn a_retried_search_names_each_address_once_with_its_last_error() {
        let mut first = Attempts::default();
        first.push(Searched::Gateway, addr(1), timeout(100));
        first.push(Searched::Distributor, addr(2), AttemptError::EmptyRedirect);
        let mut then = Attempts::default();
        then.push(Searched::Gateway, addr(1), timeout(200));
        let mut all = first.clone();
        all.merge(&then);
        let all = all.with_retried(Retried {
            after: Duration::from_millis(1500),
            searches: 3,
        });
        let shown = all.to_string();
        assert_eq!(
            shown,
            "gateway 127.0.0.1:1: no answer within 200ms; distributor 127.0.0.1:2: \
             the gateway's redirect lists no usable distributor (retried for 1.5 s, 3 searches)"
        );
        assert_eq!(all.iter().count(), 2);
        // One kind of address only: shown as before, without the kind.
        assert_eq!(then.to_string(), "127.0.0.1:1: no answer within 200ms");
        assert_eq!(then.retried(), None);
    }

    #[test]
    fn only_refusals_that_cannot_pass_are_permanent() {
        let refused = |code| {
            AttemptError::Stream(ConnError::Refused {
                code,
                message: String::new(),
            })
        };
        assert!(!timeout(1).is_permanent());
        assert!(!refused(ErrorCode::Unavailable).is_permanent());
        assert!(!refused(ErrorCode::Overloaded).is_permanent());
        assert!(refused(ErrorCode::Forbidden).is_permanent());
        assert!(refused(ErrorCode::VersionMismatch).is_permanent());
        assert!(AttemptError::Stream(ConnError::Forbidden("role".into())).is_permanent());
        let mut some = Attempts::default();
        assert!(!some.all_permanent(), "no attempt is no verdict");
        some.push(Searched::Gateway, addr(1), refused(ErrorCode::Forbidden));
        assert!(some.all_permanent());
        some.push(Searched::Gateway, addr(2), timeout(1));
        assert!(!some.all_permanent());
    }
}
