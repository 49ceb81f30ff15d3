//! The gateway (first tier): sends each client to a distributor set
//! without looking at the task (claim 1): by a rendezvous hash of the
//! client's name, or round-robin, skipping sets with no live member.
//!
//! The record and the choice live in [`GatewayCore`], which does no I/O;
//! [`shell`] moves bytes. The record: distributors dial the gateways and
//! register (set name, address), then send a small heartbeat every period
//! and their share of the set's attributes on change, on events and every
//! Nth period. A registered member is live while its link is open and it
//! was heard from within [`GatewayConfig::member_timeout`]; its link's
//! end marks it down at once. Members listed with `--set` are seeds: until
//! one registers, the gateway keeps a watch connection to it (redialled
//! every half second) and it is live while that connection is up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod core;
mod query;
mod shell;

pub use self::core::{
    member_score, rendezvous_score, GatewayCore, MAX_APPS_PER_REPORT, MAX_MEMBERS, MAX_SET_NAME,
};
pub use self::query::{query_status, GatewayQueryError, QUERY_TIMEOUT};
pub use self::shell::{run, spawn};

/// How a gateway picks a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPolicy {
    /// The same client goes to the same set while it is live
    /// (rendezvous hash of the client name).
    Rendezvous,
    /// Clients are spread over the live sets in turn.
    RoundRobin,
    /// The set with the most free slots per waiting task, by the members'
    /// reports (a set whose live members have not reported counts as
    /// having none free); ties go by the rendezvous hash of the client.
    /// Like the others it never looks at the task or the client's
    /// attributes.
    LeastLoaded,
}

/// How a gateway is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Node name: what peers know it by.
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PKI directory.
    pub pki: PathBuf,
    /// The certificate (and key) to load from the PKI directory; `None`:
    /// the one named like the node. Its role is the node's role; several
    /// nodes may share one (a pool certificate).
    pub cert: Option<String>,
    /// Seed distributor sets: name and members, known before any
    /// registers (may be empty: the record then comes only from
    /// registrations).
    ///
    /// A host name is resolved when the gateway starts (clients are sent
    /// the address), and again by the seed's watch after each lost or
    /// failed connection; members that register send their own address.
    pub sets: Vec<(String, Vec<crate::HostPort>)>,
    /// Set choice.
    pub policy: RedirectPolicy,
    /// How long clients may cache a redirect.
    pub ttl: Duration,
    /// How fast a silent peer is noticed (QUIC idle timeout and
    /// keep-alives on every link of this node).
    pub link_timeouts: crate::transport::LinkTimeouts,
    /// A registered member not heard from (heartbeat or report) for this
    /// long is down. With the distributors' 1 s report period, 3 s is
    /// three missed heartbeats.
    pub member_timeout: Duration,
    /// A registered member silent (its link gone) for this long leaves the
    /// record; its set disappears with its last member.
    pub forget_after: Duration,
    /// Where to serve `/metrics` and `/healthz` (nothing is served
    /// without it).
    pub metrics: Option<crate::observe::MetricsConfig>,
}

/// One set as a gateway's `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetMetrics {
    /// The set's name (`_other` for the redirects to sets past
    /// [`MAX_MEMBERS`] names).
    pub name: String,
    /// Clients sent to it so far.
    pub redirects: u64,
    /// Its members up, draining and down.
    pub up: u32,
    /// See `up`.
    pub draining: u32,
    /// See `up`.
    pub down: u32,
}

/// What a gateway's `/metrics` shows, read from its core at a scrape.
#[derive(Debug, Clone, Default)]
pub struct GatewayMetrics {
    /// Every set recorded or redirected to, by name.
    pub sets: Vec<SetMetrics>,
    /// Clients told that no set had a live member.
    pub unavailable: u64,
    /// Member reports and heartbeats ingested.
    pub reports: u64,
}

impl GatewayConfig {
    /// The name of the certificate to load: `cert`, or the node's name.
    pub fn cert_name(&self) -> &str {
        self.cert.as_deref().unwrap_or(&self.name)
    }

    /// A gateway for `sets`, with rendezvous choice and a 30 s redirect
    /// TTL. Seed members by host name go in [`GatewayConfig::sets`].
    pub fn new(
        name: &str,
        listen: SocketAddr,
        pki: PathBuf,
        sets: Vec<(String, Vec<SocketAddr>)>,
    ) -> GatewayConfig {
        let sets = sets
            .into_iter()
            .map(|(n, m)| (n, m.into_iter().map(Into::into).collect()))
            .collect();
        GatewayConfig {
            name: name.to_owned(),
            listen,
            pki,
            cert: None,
            sets,
            policy: RedirectPolicy::Rendezvous,
            ttl: Duration::from_secs(30),
            link_timeouts: crate::transport::LinkTimeouts::default(),
            member_timeout: Duration::from_secs(3),
            forget_after: Duration::from_secs(60),
            metrics: None,
        }
    }
}

/// Errors starting a gateway: the one error type of every node.
pub type GatewayError = crate::NodeError;

/// A running gateway (on its own thread and runtime).
pub type GatewayHandle = crate::node_thread::NodeHandle;
