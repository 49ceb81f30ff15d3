//! The worker (fulfillment server): registers with distributors, reports
//! its attributes, checks each placement itself, and runs tasks.
//!
//! Its decisions (admission, what to report and when, drain) live in
//! [`WorkerCore`], which does no I/O; [`shell`] dials the distributors,
//! runs the apps that take time and moves bytes.
//!
//! In mode `registered` the worker keeps one distributor (the first of its
//! join list that answers, moving on when it fails); in mode `broadcast` it
//! registers with every member and reports to all of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use allot_wire::{Attr, ReportMode};

mod core;
pub mod dedup;
mod shell;

pub use self::core::{Action, WorkerCore};
pub use self::shell::{run, spawn};

/// How a worker is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Node name (its certificate's name).
    pub name: String,
    /// PKI directory.
    pub pki: PathBuf,
    /// Distributors to join, in order.
    pub join: Vec<SocketAddr>,
    /// Registered (one distributor) or broadcast (all).
    pub mode: ReportMode,
    /// Application names (built-ins or those with a command).
    pub apps: Vec<String>,
    /// `NAME=COMMAND` apps.
    pub app_cmds: Vec<(String, String)>,
    /// Their environment, working directories and output directory.
    pub commands: crate::apps::CommandSetup,
    /// Cores.
    pub cores: u32,
    /// Memory in bytes.
    pub mem: u64,
    /// Computing power.
    pub power: f64,
    /// Slots (tasks at once).
    pub slots: u32,
    /// Free labels.
    pub labels: Vec<Attr>,
    /// Relative change of `idle_power`, `load` or `mem_free` that is worth
    /// a delta of its own.
    pub change_threshold: f64,
    /// Window in which task start/end events are gathered into one delta.
    pub coalesce: Duration,
    /// A full numeric delta every this many heartbeats.
    pub full_every: u32,
    /// How long a task keeps running after the distributor that placed it
    /// is lost, for the member that takes over to join it (a client
    /// resubmits within its retry window); stopped after that if nobody
    /// did.
    pub orphan_grace: Duration,
    /// Local address to bind (port 0: any).
    pub listen: SocketAddr,
    /// How fast a silent peer is noticed (QUIC idle timeout and
    /// keep-alives on every link of this node).
    pub link_timeouts: crate::transport::LinkTimeouts,
    /// Where to serve `/metrics` and `/healthz` (nothing is served
    /// without it).
    pub metrics: Option<crate::observe::MetricsConfig>,
    /// When told to stop, drain for up to this long first: report
    /// `draining` at once, take nothing new, let running tasks finish.
    /// Tasks still running then are stopped, and their distributors place
    /// them elsewhere. Zero (the default): stop at once.
    pub drain_timeout: Duration,
}

/// One app's runs as a worker's `/metrics` shows them.
#[derive(Debug, Clone)]
pub struct AppMetrics {
    /// The app.
    pub name: String,
    /// Runs ended, by [`allot_wire::TaskStatus`] (as `u8`).
    pub by_status: [u64; 7],
    /// Their run times, in microseconds.
    pub run_us: crate::observe::Log2Histogram,
}

/// What a worker's `/metrics` shows, read from its core at a scrape.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// Tasks running.
    pub running: usize,
    /// Slots offered.
    pub slots: u32,
    /// Slots free.
    pub slots_free: u32,
    /// Cores free.
    pub cores_free: u32,
    /// Memory free, in bytes.
    pub mem_free: u64,
    /// Whether it drains.
    pub draining: bool,
    /// Every app it runs, with its runs.
    pub apps: Vec<AppMetrics>,
}

impl WorkerConfig {
    /// A worker with the given identity and defaults for the rest.
    pub fn new(name: &str, pki: PathBuf, join: Vec<SocketAddr>) -> WorkerConfig {
        WorkerConfig {
            name: name.to_owned(),
            pki,
            join,
            mode: ReportMode::Registered,
            apps: vec!["echo".into()],
            app_cmds: Vec::new(),
            commands: crate::apps::CommandSetup::default(),
            cores: 4,
            mem: 8 << 30,
            power: 4.0,
            slots: 4,
            labels: Vec::new(),
            change_threshold: 0.1,
            coalesce: Duration::from_millis(5),
            full_every: 10,
            orphan_grace: Duration::from_secs(60),
            link_timeouts: crate::transport::LinkTimeouts::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
            drain_timeout: Duration::ZERO,
        }
    }
}

/// Errors starting a worker: the one error type of every node.
pub type WorkerError = crate::NodeError;

/// A running worker (on its own thread and runtime).
pub type WorkerHandle = crate::node_thread::NodeHandle;
