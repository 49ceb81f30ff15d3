//! The distributor (second tier): holds the server table, matches each task
//! against the workers' live attributes, forwards it, and returns the result.
//!
//! Its decisions live in [`Core`], a state machine with no I/O and no
//! clock of its own (events and the time in, frames and a timeout out, as
//! quinn-proto's `Connection`); [`shell`] runs it over quinn on a
//! current-thread runtime and only moves bytes and time. Tests drive the
//! core directly (see `nodes/tests/harness`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use allot_engine::MatchMode;

mod core;
pub mod jobs;
pub mod journal;
mod report;
mod shape;
mod shell;
mod waiting;

pub use self::core::{
    Completion, Core, Peer, DEADLINE_RESOLUTION, EVENT_REPORT_SPACING, LOCATE_TIMEOUT,
    MAX_COMPLETIONS_BUFFERED, MAX_STATUS_WORKERS, TABLE_SETTLED, UNTIMED_MATCH_ROWS,
};
pub use self::core::{JobsView, WaitingTask, WaitingView};
pub use self::report::MAX_APPS_PER_REPORT;
pub use self::shape::QUERY_CACHE;
pub use self::shell::{run, spawn};

/// How a distributor is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DistributorConfig {
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
    /// The name of its distributor set.
    pub set_name: String,
    /// Where the user DB and task-class DB live.
    pub data_dir: PathBuf,
    /// A TOML file of users loaded into the user DB at start.
    pub users_file: Option<PathBuf>,
    /// The heartbeat period asked of workers (stretched when there are many).
    pub heartbeat: Duration,
    /// Heartbeats a worker may miss before it is marked down.
    pub missed_heartbeats: u32,
    /// Placements tried per task before it fails.
    pub max_attempts: u32,
    /// Tasks in flight at most.
    pub max_pending: usize,
    /// Exact or sampled matching.
    pub match_mode: MatchMode,
    /// Rows of the server table.
    pub table_capacity: usize,
    /// How long a task may wait for capacity (when its constraints are met
    /// by some worker that is busy) before it fails with the explanation.
    pub queue_timeout: Duration,
    /// After it starts, how long the distributor holds tasks that match no
    /// worker instead of failing them: its table is rebuilt from the
    /// workers' registrations, and a table that is still filling is no
    /// verdict. Tasks still unmatched when it ends fail as usual.
    pub startup_grace: Duration,
    /// When told to stop, how long it drains first: it tells the gateways
    /// it is draining (they send new clients to the other members),
    /// refuses new submissions with a `Draining` refusal (the client moves
    /// to another member) and lets the tasks it has finish, for up to this
    /// long; then it stops (clients of tasks still running resubmit them
    /// elsewhere, as after a crash). Zero: it stops at once. Default zero
    /// (`allot distributor` drains for 30 s).
    pub drain_timeout: Duration,
    /// How fast a silent peer is noticed (QUIC idle timeout and
    /// keep-alives on every link of this node).
    pub link_timeouts: crate::transport::LinkTimeouts,
    /// The gateways it registers with and reports to (may be empty); a
    /// host name is looked up again at every connection attempt.
    pub gateways: Vec<crate::HostPort>,
    /// `Registered`: to the first live gateway of the list (the next when
    /// it dies); `Broadcast`: to every gateway.
    pub gateway_report: allot_wire::ReportMode,
    /// Heartbeat period towards the gateways.
    pub report_period: Duration,
    /// Every this-many periods the heartbeat is a full report.
    pub report_every: u32,
    /// A capacity or load figure that moves by more than this fraction of
    /// its value is reported at once (counts of workers, apps, the state
    /// and whether tasks wait are reported on any change).
    pub report_threshold: f64,
    /// How long a finished job is kept before it is forgotten.
    pub retention: Duration,
    /// Where to serve `/metrics` and `/healthz` (nothing is served
    /// without it).
    pub metrics: Option<crate::observe::MetricsConfig>,
}

impl DistributorConfig {
    /// The name of the certificate to load: `cert`, or the node's name.
    pub fn cert_name(&self) -> &str {
        self.cert.as_deref().unwrap_or(&self.name)
    }

    /// Defaults for everything but the identity and addresses.
    pub fn new(name: &str, listen: SocketAddr, pki: PathBuf, data_dir: PathBuf) -> Self {
        DistributorConfig {
            name: name.to_owned(),
            listen,
            pki,
            cert: None,
            set_name: "default".into(),
            data_dir,
            users_file: None,
            heartbeat: Duration::from_millis(1000),
            missed_heartbeats: 3,
            max_attempts: 3,
            max_pending: 1 << 20,
            match_mode: MatchMode::Exact,
            table_capacity: 1 << 16,
            queue_timeout: Duration::from_secs(60),
            startup_grace: Duration::from_secs(3),
            drain_timeout: Duration::ZERO,
            link_timeouts: crate::transport::LinkTimeouts::default(),
            gateways: Vec::new(),
            gateway_report: allot_wire::ReportMode::Broadcast,
            report_period: Duration::from_millis(1000),
            report_every: 5,
            report_threshold: 0.1,
            retention: jobs::DEFAULT_RETENTION,
            metrics: None,
        }
    }

    /// The heartbeat period for `workers` registered workers: stretched by
    /// one period per thousand workers, so liveness traffic stays bounded as
    /// the cluster grows (Nomad and Dask do the same).
    pub fn heartbeat_for(&self, workers: usize) -> Duration {
        self.heartbeat * (1 + (workers / 1000) as u32)
    }
}

/// Errors starting a distributor: the one error type of every node.
pub type DistributorError = crate::NodeError;

/// Counters a distributor keeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Tasks received.
    pub submitted: u64,
    /// Results returned to clients.
    pub completed: u64,
    /// Placements refused by workers.
    pub refused: u64,
    /// Of those, refused as busy: the worker had less free capacity than
    /// this distributor's view of it (another distributor took it, or its
    /// last report had not arrived yet).
    pub refused_busy: u64,
    /// Tasks retried after a worker was lost or refused.
    pub retried: u64,
    /// Tasks that could not be placed.
    pub no_match: u64,
    /// Results (or errors) whose client link was gone or not reading:
    /// each is logged, and a link not reading is closed with an error.
    pub undelivered: u64,
    /// Client links closed because they did not read their results.
    pub clients_disconnected: u64,
}

/// Why a task matched no worker (and failed without waiting more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMatchReason {
    /// No worker had registered (after the startup grace and the queue
    /// timeout).
    NoWorkers,
    /// No registered worker satisfies its constraints.
    Unsatisfiable,
    /// It waited the queue timeout for capacity.
    QueueTimeout,
}

impl NoMatchReason {
    /// Every reason, in the order of [`Observed::no_match_by`].
    pub const ALL: [NoMatchReason; 3] = [
        NoMatchReason::NoWorkers,
        NoMatchReason::Unsatisfiable,
        NoMatchReason::QueueTimeout,
    ];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            NoMatchReason::NoWorkers => "no_workers",
            NoMatchReason::Unsatisfiable => "unsatisfiable",
            NoMatchReason::QueueTimeout => "queue_timeout",
        }
    }
}

/// Counts the distributor keeps only for its metrics: plain numbers the
/// core adds to on its own thread (no atomics, no locks), read at each
/// scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct Observed {
    /// Tasks ended, by [`allot_wire::TaskStatus`] (as `u8`).
    pub by_status: [u64; 7],
    /// Refusals by workers, by [`allot_wire::Refusal`] (as `u8`).
    pub refused_by: [u64; 4],
    /// Tasks that matched no worker, by [`NoMatchReason`] (as `u8`).
    pub no_match_by: [u64; 3],
    /// Time of each timed match, in microseconds (matches in a table of
    /// at most [`UNTIMED_MATCH_ROWS`](super::UNTIMED_MATCH_ROWS) rows are
    /// not timed: the clock would cost more than the match).
    pub match_us: crate::observe::Log2Histogram,
    /// From a task's arrival to its end, in microseconds.
    pub latency_us: crate::observe::Log2Histogram,
    /// Worker deltas applied to the table.
    pub deltas_applied: u64,
    /// Deltas dropped as stale (a newer one had been applied).
    pub deltas_stale: u64,
    /// Deltas the table refused (an unknown worker, a bad value).
    pub deltas_failed: u64,
}

/// What a distributor's `/metrics` shows, read from its core at a scrape.
#[derive(Debug, Clone, Copy)]
pub struct DistributorMetrics {
    /// The counters of `allot status`.
    pub stats: Stats,
    /// The counts kept for metrics only.
    pub observed: Observed,
    /// Tasks placed on workers (or being located after a reconnect).
    pub placed: usize,
    /// Tasks waiting for capacity.
    pub waiting: usize,
    /// Workers up.
    pub workers_up: u32,
    /// Workers draining.
    pub workers_draining: u32,
    /// Workers down (still in the table).
    pub workers_down: u32,
    /// Jobs held.
    pub jobs: usize,
    /// Their tasks by state.
    pub job_tasks: allot_wire::JobCounts,
    /// Whether the distributor drains.
    pub draining: bool,
}

/// A running distributor (on its own thread and runtime).
pub type DistributorHandle = crate::node_thread::NodeHandle;
