//! The client SDK.
//!
//! Two ways in:
//!
//! * [`Client`]: a `Send + Sync + Clone` handle, usable from any tokio
//!   runtime (multi-thread too) and, through the `*_blocking` methods,
//!   from plain threads. It owns a thread running a [`LocalClient`] and
//!   talks to it over bounded channels. This is what an embedding program
//!   wants.
//! * [`LocalClient`]: the `Rc` core itself, `!Send`, for programs that
//!   already run a current-thread runtime inside a `tokio::task::LocalSet`
//!   (the load generator does: it saves the channel hop).
//!
//! Either one searches the gateways in order (the first that answers
//! wins), follows its redirect, and searches the distributor list in order.
//! Tasks are pipelined on one long-lived stream. When the distributor
//! fails, the client moves to the next one in the list (asking the gateways
//! again when the list is used up) and resubmits every task still in flight
//! with the same idempotency key, so each task still ends in exactly one
//! result or one error.
//!
//! When a whole search fails (no gateway, or no distributor of the set,
//! answers), the client searches again with backoff for
//! [`ClientConfig::retry_for`](ClientConfig#structfield.retry_for), at
//! connect time and after losing its distributor alike: a short outage
//! (distributors restarting, a gateway that has not yet seen its members
//! come back) delays tasks instead of failing them. Tasks in flight and
//! tasks submitted meanwhile wait; once the window has passed they all fail
//! with one error naming every address tried.

mod control;
mod error;
mod explain;
mod handle;
mod jobs;
mod local;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use allot_wire::{Attr, Demands, TaskStatus, Timings};
use bytes::Bytes;

pub use control::{control_worker, ControlError, CONTROL_TIMEOUT};
pub use error::{AttemptError, Attempts, ClientError, Retried, Searched};
pub use explain::{explain_verdict, Verdict};
pub use handle::{Client, Submission, CANCEL_QUEUE, COMMAND_QUEUE};
pub use jobs::{Job, JobClient, JobError, JobSpec, JobsConfig, REQUEST_TIMEOUT, WAIT_POLL};
pub use local::{LocalClient, Results};

/// Tasks one client may have in flight; `submit` beyond it fails at once
/// with [`ClientError::TooMany`]. Tasks submitted while the client has no
/// distributor (riding out an outage) count too: they wait in the same
/// table, so an outage holds at most this many.
pub const MAX_IN_FLIGHT: usize = 1 << 20;

/// The default of [`ClientConfig::retry_for`](ClientConfig#structfield.retry_for):
/// long enough for a distributor to restart and its gateway to notice,
/// short enough that a client whose cluster is really gone says so soon.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);

/// The longest retry window a client keeps (a longer
/// [`ClientConfig::retry_for`](ClientConfig#structfield.retry_for) is cut
/// to it): a day, so that the window's end is always a real instant.
pub const MAX_RETRY_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// How a client is set up. Build it with [`ClientConfig::new`] and the
/// `with_*` methods (fields may be added, so it cannot be written as a
/// struct literal outside this crate).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Certificate name (also the default user).
    pub name: String,
    /// PKI directory.
    pub pki: PathBuf,
    /// Gateways, in the order they are tried; a host name is looked up
    /// again at every search.
    pub gateways: Vec<crate::HostPort>,
    /// Client attributes (`client.*` in expressions).
    pub attrs: Vec<Attr>,
    /// How long one gateway or distributor may take to answer (QUIC
    /// handshake and `Hello`) before the next is tried. The QUIC handshake
    /// gives up after [`transport::CONNECT_TIMEOUT`](crate::transport::CONNECT_TIMEOUT)
    /// in any case.
    pub connect_timeout: Duration,
    /// How long the client keeps searching when a whole search fails
    /// (every gateway, or every distributor of the redirect, failed to
    /// answer), counted from that first failed search: at connect time
    /// (`connect` returns once a search succeeds) and after losing its
    /// distributor. It searches again, gateways then the redirect's
    /// distributors, with a backoff from 50 ms doubling to 1 s (jittered);
    /// tasks in flight stay pending, and new submissions wait with them
    /// (up to [`MAX_IN_FLIGHT`]). Once a search succeeds, every task in
    /// flight is resubmitted under its idempotency key. When the window has
    /// passed, `connect` and every waiting task fail with an error naming
    /// each address tried, its last error, and how long the client retried
    /// ([`Attempts::retried`]).
    ///
    /// A search whose every attempt was refused for good (an untrusted
    /// certificate, a role the peer does not accept) is not retried. A
    /// submission after the client gave up starts a new search, with a
    /// new window.
    /// Zero: fail at the first failed search. Default
    /// [`DEFAULT_RETRY_FOR`]; at most [`MAX_RETRY_FOR`].
    pub retry_for: Duration,
}

impl ClientConfig {
    /// A client named `name` (its certificate under `pki`) that asks
    /// `gateways`, in order; no attributes, the default connect timeout and
    /// retry window. Gateways by host name go in
    /// [`ClientConfig::gateways`](ClientConfig#structfield.gateways).
    pub fn new(
        name: impl Into<String>,
        pki: impl Into<PathBuf>,
        gateways: Vec<std::net::SocketAddr>,
    ) -> Self {
        ClientConfig {
            name: name.into(),
            pki: pki.into(),
            gateways: gateways.into_iter().map(Into::into).collect(),
            attrs: Vec::new(),
            connect_timeout: crate::transport::CONNECT_TIMEOUT,
            retry_for: DEFAULT_RETRY_FOR,
        }
    }

    /// With these client attributes (`client.*` in expressions).
    pub fn with_attrs(mut self, attrs: Vec<Attr>) -> Self {
        self.attrs = attrs;
        self
    }

    /// With this connect timeout per gateway or distributor.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// With this retry window (see [`ClientConfig::retry_for`](ClientConfig#structfield.retry_for));
    /// `Duration::ZERO` fails at the first failed search.
    pub fn with_retry_for(mut self, window: Duration) -> Self {
        self.retry_for = window;
        self
    }
}

/// A task to submit. Build it with [`Task::new`] and the builder methods:
///
/// ```
/// use std::time::Duration;
/// let t = allot::Task::new("render", "scene-1")
///     .require("server.cores >= 4")
///     .deadline(Duration::from_secs(30));
/// assert_eq!(t.deadline, Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Task {
    /// Application.
    pub app: String,
    /// Input.
    pub payload: Bytes,
    /// Hard constraints.
    pub require: String,
    /// Score to maximise.
    pub prefer: String,
    /// User (empty: the certificate name).
    pub user: String,
    /// Resources.
    pub demands: Demands,
    /// Priority.
    pub priority: i32,
    /// How long the task may take, from its arrival at the distributor,
    /// before it ends as [`TaskStatus::Timeout`] (`None`: no limit). Sent
    /// in whole milliseconds, rounded up.
    pub deadline: Option<Duration>,
}

impl Task {
    /// A task for `app` with `payload` and nothing else.
    pub fn new(app: impl Into<String>, payload: impl Into<Bytes>) -> Task {
        Task {
            app: app.into(),
            payload: payload.into(),
            ..Task::default()
        }
    }

    /// With hard constraints (an expression over `server.*` and `client.*`).
    pub fn require(mut self, expr: impl Into<String>) -> Task {
        self.require = expr.into();
        self
    }

    /// With a score to maximise among the workers that qualify.
    pub fn prefer(mut self, expr: impl Into<String>) -> Task {
        self.prefer = expr.into();
        self
    }

    /// On behalf of this user (the default is the certificate name).
    pub fn user(mut self, user: impl Into<String>) -> Task {
        self.user = user.into();
        self
    }

    /// With these resource demands.
    pub fn demands(mut self, demands: Demands) -> Task {
        self.demands = demands;
        self
    }

    /// With this priority.
    pub fn priority(mut self, priority: i32) -> Task {
        self.priority = priority;
        self
    }

    /// With a deadline (see [`Task::deadline`](Task#structfield.deadline)).
    pub fn deadline(mut self, deadline: Duration) -> Task {
        self.deadline = Some(deadline);
        self
    }

    /// The deadline as the wire carries it: milliseconds, 0 for none. A
    /// deadline shorter than a millisecond is sent as one (0 would mean
    /// none).
    pub(crate) fn deadline_ms(&self) -> u64 {
        match self.deadline {
            None => 0,
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                u64::try_from(ms).unwrap_or(u64::MAX).max(1)
            }
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outcome {
    /// The client's id for the task.
    pub task_id: u64,
    /// Status.
    pub status: TaskStatus,
    /// The worker that ran it. Names are shared (`Arc<str>`): a client
    /// sees the same few names over and over, and an outcome costs no
    /// allocation for them.
    pub worker: Arc<str>,
    /// The distributor that placed it.
    pub distributor: Arc<str>,
    /// The gateway that redirected this client.
    pub gateway: Arc<str>,
    /// Placements tried.
    pub attempts: u32,
    /// Exit code of a command app.
    pub exit_code: i32,
    /// Reason for anything but `Ok`.
    pub message: String,
    /// Output.
    pub output: Bytes,
    /// Where the time went, as the distributor saw it.
    pub timings: Timings,
    /// From submit to the network read that brought the result, as the
    /// client saw it (for a [`Client`], from when its thread took the
    /// task).
    pub latency: Duration,
}

/// The state of a client's connection to its distributor, as QUIC sees
/// it: what to look at when throughput is lower than it should be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// The packet size the path settled on (MTU discovery).
    pub mtu: u16,
    /// Packets sent.
    pub sent_packets: u64,
    /// Packets declared lost (and resent). On loopback or a LAN this
    /// should be 0: losses there mean full socket buffers.
    pub lost_packets: u64,
    /// Times the congestion controller cut its window.
    pub congestion_events: u64,
    /// Times QUIC decided large packets do not get through and fell back
    /// to 1,200 bytes.
    pub black_holes: u64,
}

impl LinkStats {
    /// Adds another connection's counts (the smaller MTU is kept).
    pub fn merge(&mut self, o: LinkStats) {
        self.mtu = if self.mtu == 0 {
            o.mtu
        } else {
            self.mtu.min(o.mtu)
        };
        self.sent_packets += o.sent_packets;
        self.lost_packets += o.lost_packets;
        self.congestion_events += o.congestion_events;
        self.black_holes += o.black_holes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_whole_milliseconds() {
        let t = |d: Option<Duration>| Task {
            deadline: d,
            ..Task::new("a", "")
        };
        assert_eq!(t(None).deadline_ms(), 0);
        assert_eq!(t(Some(Duration::ZERO)).deadline_ms(), 1);
        assert_eq!(t(Some(Duration::from_micros(1))).deadline_ms(), 1);
        assert_eq!(t(Some(Duration::from_micros(1500))).deadline_ms(), 2);
        assert_eq!(t(Some(Duration::from_secs(2))).deadline_ms(), 2000);
        assert_eq!(t(Some(Duration::MAX)).deadline_ms(), u64::MAX);
    }
}
