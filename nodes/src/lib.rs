//! allot nodes over QUIC: the gateway, distributor and worker roles and the
//! client SDK.
//!
//! Every role is a library type an embedding program starts (`spawn`, on a
//! thread of its own, or `run`, on the caller's current-thread runtime
//! inside a `LocalSet`), and a subcommand of the `allot` binary, which
//! lives in the `allot-cli` package so that a program embedding this
//! library builds none of the command line's dependencies.

#![warn(missing_docs)]

pub mod pki;
pub mod resources;
pub mod transport;

pub mod apps;
pub mod client;
pub mod conn;
pub mod distributor;
mod error;
pub mod gateway;
pub mod hostport;
mod inflight;
pub mod labels;
pub mod link;
pub mod local_cluster;
pub mod node_thread;
pub mod observe;
mod resubmit;
#[cfg(feature = "testing")]
pub mod testing;
pub mod units;
pub mod users;
pub mod worker;

/// The wire protocol crate, for anything not re-exported above.
pub use allot_wire as wire;
/// The wire types an SDK user meets (task statuses, resource demands,
/// attributes, report modes, roles, status and explain replies), so that
/// an embedding program needs no direct `allot-wire` dependency.
pub use allot_wire::{
    Attr, AttrRecord, AttrValue, ClauseCount, Demands, ErrorCode, ExplainQuery, ExplainReply,
    NearMiss, ReportMode, Role, StatusReply, TaskStatus, Timings, WorkerState, WorkerStatus,
};
pub use client::{
    AttemptError, Attempts, Client, ClientConfig, ClientError, LinkStats, LocalClient, Outcome,
    Retried, Searched, Submission, Task,
};
pub use distributor::{DistributorConfig, DistributorHandle};
pub use error::NodeError;
pub use gateway::{GatewayConfig, GatewayHandle, RedirectPolicy};
pub use hostport::HostPort;
pub use local_cluster::{LocalCluster, LocalClusterBuilder, LocalClusterError};
pub use worker::{WorkerConfig, WorkerHandle};

/// Maps keyed by small ids on hot paths: Fx hashing instead of SipHash
/// (the keys are our own ids, not an attacker's choice of strings).
pub(crate) type FxMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;
