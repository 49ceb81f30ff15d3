//! The gateway (first tier): sends each client to a distributor set
//! without looking at the task (claim 1): by a rendezvous hash of the
//! client's name, or round-robin, skipping sets with no live member.
//!
//! The choice lives in [`GatewayCore`], which does no I/O; [`shell`]
//! answers clients and watches the members. Liveness: the gateway keeps a
//! connection to every distributor it knows; a member is live while that
//! connection is up, and is redialled every half second while it is down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod core;
mod shell;

pub use self::core::{rendezvous_score, GatewayCore};
pub use self::shell::{run, spawn};

/// How a gateway picks a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPolicy {
    /// The same client goes to the same set while it is live
    /// (rendezvous hash of the client name).
    Rendezvous,
    /// Clients are spread over the live sets in turn.
    RoundRobin,
}

/// How a gateway is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Node name.
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PKI directory.
    pub pki: PathBuf,
    /// Distributor sets: name and ordered members.
    pub sets: Vec<(String, Vec<SocketAddr>)>,
    /// Set choice.
    pub policy: RedirectPolicy,
    /// How long clients may cache a redirect.
    pub ttl: Duration,
    /// How fast a silent peer is noticed (QUIC idle timeout and
    /// keep-alives on every link of this node).
    pub link_timeouts: crate::transport::LinkTimeouts,
}

impl GatewayConfig {
    /// A gateway for `sets`, with rendezvous choice and a 30 s redirect TTL.
    pub fn new(
        name: &str,
        listen: SocketAddr,
        pki: PathBuf,
        sets: Vec<(String, Vec<SocketAddr>)>,
    ) -> GatewayConfig {
        GatewayConfig {
            name: name.to_owned(),
            listen,
            pki,
            sets,
            policy: RedirectPolicy::Rendezvous,
            ttl: Duration::from_secs(30),
            link_timeouts: crate::transport::LinkTimeouts::default(),
        }
    }
}

/// Errors starting a gateway: the one error type of every node.
pub type GatewayError = crate::NodeError;

/// A running gateway (on its own thread and runtime).
pub type GatewayHandle = crate::node_thread::NodeHandle;
