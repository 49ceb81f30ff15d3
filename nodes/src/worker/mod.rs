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

pub use self::core::{Action, WorkerCore, RESULT_HOLD};
pub use self::shell::{run, spawn};

/// How a worker is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Node name: what the distributors know it by; unique among live
    /// workers (a distributor refuses a second one of the same name).
    pub name: String,
    /// PKI directory.
    pub pki: PathBuf,
    /// The certificate (and key) to load from the PKI directory; `None`:
    /// the one named like the node. Its role is the node's role; several
    /// nodes may share one (a pool certificate).
    pub cert: Option<String>,
    /// Distributors to join, in order; a host name is looked up again at
    /// every connection attempt.
    pub join: Vec<crate::HostPort>,
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
    /// Placements taken beyond the free slots, to start the moment a slot
    /// frees: the next short task starts without waiting for a round trip
    /// to its distributor. A task taken so waits on this worker, holding
    /// its cores and memory, until a running one ends; it is handed back
    /// (refused as `Draining`) when the worker drains, and dropped at once
    /// if its distributor is lost. Distributors see `slots + prefetch`
    /// places (`slots` in `allot status`). While more tasks wait than
    /// there are slots (and than half of this), results are held for up
    /// to [`RESULT_HOLD`] to leave together. Zero (the default): a task is
    /// placed only on a free slot, which suits long tasks, whose wait
    /// behind another would cost more than the round trip saves.
    pub prefetch: u32,
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
    /// Stop (as told to, exit 0) once no task has run for this long: a
    /// worker started for a batch allocation gives its node back when the
    /// work is done. `None` (the default): never.
    pub idle_exit: Option<Duration>,
}

/// The most [`WorkerConfig::prefetch`] may be: past a few per slot the
/// tasks held only wait longer, and other workers go without.
pub const MAX_PREFETCH: u32 = 1024;

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
    /// Tasks taken ahead that wait for a slot ([`WorkerConfig::prefetch`]).
    pub waiting: usize,
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
    /// The name of the certificate to load: `cert`, or the node's name.
    pub fn cert_name(&self) -> &str {
        self.cert.as_deref().unwrap_or(&self.name)
    }

    /// A worker with the given identity and defaults for the rest.
    /// Distributors by host name go in [`WorkerConfig::join`].
    pub fn new(name: &str, pki: PathBuf, join: Vec<SocketAddr>) -> WorkerConfig {
        WorkerConfig {
            name: name.to_owned(),
            pki,
            cert: None,
            join: join.into_iter().map(Into::into).collect(),
            mode: ReportMode::Registered,
            apps: vec!["echo".into()],
            app_cmds: Vec::new(),
            commands: crate::apps::CommandSetup::default(),
            cores: 4,
            mem: 8 << 30,
            power: 4.0,
            slots: 4,
            prefetch: 0,
            labels: Vec::new(),
            change_threshold: 0.1,
            coalesce: Duration::from_millis(5),
            full_every: 10,
            orphan_grace: Duration::from_secs(60),
            link_timeouts: crate::transport::LinkTimeouts::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
            drain_timeout: Duration::ZERO,
            idle_exit: None,
        }
    }
}

/// The name a worker gets without `--name`: `HOST-PID`. The process id
/// keeps it unique among the workers running on one host at a time (two
/// started there with one pool certificate differ), and it tells an
/// operator where to look (`ssh HOST ps PID`), which a random suffix would
/// not. A restarted worker gets a new name; give `--name` for one that
/// stays. Characters a node name may not hold become `-`, and the host
/// part is cut to keep the name within [`crate::pki::MAX_NAME_LEN`].
pub fn default_name(host: &str, pid: u32) -> String {
    let suffix = format!("-{pid}");
    let mut h: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    // 63: a DNS label's limit, which the last part (with the suffix)
    // must keep too.
    h.truncate(crate::pki::MAX_NAME_LEN.min(63) - suffix.len());
    // No empty parts between dots, nor a dot at either end.
    let h: Vec<&str> = h.split('.').filter(|l| !l.is_empty()).collect();
    let h = if h.is_empty() {
        "worker".to_owned()
    } else {
        h.join(".")
    };
    format!("{h}{suffix}")
}

/// This host's name (`gethostname`), or `None` if it has none.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// Errors starting a worker: the one error type of every node.
pub type WorkerError = crate::NodeError;

/// A running worker (on its own thread and runtime).
pub type WorkerHandle = crate::node_thread::NodeHandle;

#[cfg(test)]
mod tests {
    use super::default_name;
    use crate::pki::{validate_name, MAX_NAME_LEN};

    #[test]
    fn the_default_name_is_host_and_pid_and_always_a_valid_name() {
        assert_eq!(default_name("node17", 4242), "node17-4242");
        assert_eq!(default_name("n1.cluster.local", 7), "n1.cluster.local-7");
        assert_eq!(default_name("weird host!", 7), "weird-host--7");
        assert_eq!(default_name("", 7), "worker-7");
        assert_eq!(default_name("..", 7), "worker-7");
        let long = "a".repeat(300);
        let n = default_name(&long, u32::MAX);
        assert!(n.len() <= MAX_NAME_LEN && n.len() >= 60, "{n}");
        assert!(n.ends_with(&format!("-{}", u32::MAX)));
        for h in ["node17", "weird host!", "", "..", &long, "a.b..c.", "x.y"] {
            let n = default_name(h, 99);
            assert!(validate_name(&n).is_ok(), "{h:?} gave {n:?}");
        }
    }
}
