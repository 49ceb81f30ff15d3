//! allot nodes over QUIC: the gateway, distributor and worker roles and the
//! client SDK.
//!
//! Every role is a library type an embedding program starts (`spawn`, on a
//! thread of its own, or `run`, on the caller's current-thread runtime
//! inside a `LocalSet`), and a subcommand of the `allot` binary, which
//! lives in the `allot-cli` package so that a program embedding this
//! library builds none of the command line's dependencies.

pub mod pki;
pub mod transport;

pub mod apps;
pub mod client;
pub mod conn;
pub mod distributor;
pub mod gateway;
mod inflight;
pub mod labels;
pub mod local_cluster;
pub mod node_thread;
mod resubmit;
#[cfg(feature = "testing")]
pub mod testing;
pub mod units;
pub mod users;
pub mod worker;

pub use client::{Client, ClientConfig, ClientError, Outcome, Task};
pub use distributor::{DistributorConfig, DistributorHandle};
pub use gateway::{GatewayConfig, GatewayHandle, RedirectPolicy};
pub use local_cluster::{LocalCluster, LocalClusterBuilder, LocalClusterError};
pub use worker::{WorkerConfig, WorkerHandle};
