//! The distributor's decisions, without I/O: a state machine that takes
//! events (a link opened, a frame on it, a link closed, bytes written, the
//! time) and gives out what to send, as quinn-proto's `Connection` does.
//!
//! Everything a task touches on its way through happens synchronously in
//! [`Core::handle_frame`]: validate the `Submit` in place, look up (or
//! compile and cache) its query, match and reserve, and encode the `Assign`
//! into the chosen worker's [`Outgoing`] buffer with the payload passed by
//! reference. The result path is the mirror image. The shell
//! ([`super::shell`]) only moves bytes and time: after each event it takes
//! [`Core::poll_transmit`] until `None` and arms a timer for
//! [`Core::poll_timeout`].
//!
//! This file holds the types and [`Core`]'s entry points; the state's
//! work is split by whom it serves: `workers` (registration, deltas,
//! loss), `placement` (a task's way to a worker and back), `clients`
//! (submissions, cancels, explain), `gateways` (the member's reports),
//! `sweeps` (timers), `job_tasks` (jobs' tasks), `status`, `control`
//! (remote drain) and `view` (what the dashboard reads).
//!
//! Bounds, and what happens at each:
//! * tasks placed or waiting: at most [`DistributorConfig::max_pending`];
//!   a submit beyond it is answered at once with an error;
//! * compiled shapes per client link: [`super::shape::QUERY_CACHE`];
//! * bytes queued per link: [`crate::link::OUTGOING_LIMIT`]; a worker
//!   link past it gets no more placements (the next candidate is tried), a
//!   client link past it is closed with `Overloaded` and its tasks are
//!   cancelled, so no result is dropped without the client hearing of it;
//! * completions buffered for the task-class DB between flushes:
//!   [`MAX_COMPLETIONS_BUFFERED`] (past it, runtime statistics are a sample);
//! * users cached: [`MAX_USERS_CACHED`] (past it, a user without a record is
//!   built anew for each compile).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_engine::{
    Change, LabelValue, MatchMode, Query, Reservation, ServerId, ServerRecord, ServerState,
    ServerTable, TableConfig, UserRecord,
};
mod control;

use allot_wire::message::{
    ArchivedAttrChange, ArchivedRefusal, ArchivedTaskStatus, ArchivedWorkerState,
};
use allot_wire::{
    AttrDelta, AttrRecord, Cancel, ClauseCount, DistributorCounters, ErrorCode, ExplainQuery,
    ExplainReply, Frame, FrameError, Heartbeat, KeyQuery, KeyReply, MessageKind, NearMiss,
    Register, RegisterAck, Role, StatusQuery, StatusReply, Submit, TaskKey, TaskResult, TaskStatus,
    Timings, WorkerState, WorkerStatus,
};
use bytes::Bytes;

use super::autoalloc::{self, Autoalloc};
use super::jobs::{self, Ending, Jobs, JournalBatch, Start};
use super::report::{self, Beat, Reporter};
use super::shape::{Shape, ShapeCache};
use super::waiting::WaitQueue;
use super::{DistributorConfig, DistributorMetrics, NoMatchReason, Observed, Stats};
use crate::inflight::InFlight;
use crate::labels::{attr_from_label, label_from_archived};
use crate::link::{push, LinkFull, LinkId, Outgoing, Transmit};
use crate::resubmit::{self, ResubmitIndex};
use crate::FxMap;

mod clients;
mod gateways;
mod job_tasks;
mod placement;
mod status;
mod sweeps;
mod view;
mod workers;
pub use view::{JobsView, WaitingTask, WaitingView};

/// Task completions buffered for the task-class DB between flushes (once a
/// second). Beyond it completions are not recorded until the next flush:
/// under heavy load the runtime statistics are a sample, and the hot path
/// never waits for the store.
pub const MAX_COMPLETIONS_BUFFERED: usize = 65_536;

/// Users without a record in the user DB whose default record is kept.
pub const MAX_USERS_CACHED: usize = 100_000;

/// How often buffered completions are handed to the shell for the store.
pub const COMPLETION_FLUSH: Duration = Duration::from_secs(1);

/// Tables up to this many servers are matched without timing the match
/// (one 64-row block: well under a microsecond, less than the two clock
/// reads timing it would cost).
pub const UNTIMED_MATCH_ROWS: usize = 64;

/// Deadlines are checked at most this often apart (each check walks the
/// tasks in flight, as the sweep does): a task's deadline fires up to this
/// late.
pub const DEADLINE_RESOLUTION: Duration = Duration::from_millis(20);

/// How long a resubmitted task waits for the workers to say whether one
/// of them runs or ran it; then it is placed as a new task.
pub const LOCATE_TIMEOUT: Duration = Duration::from_millis(300);

/// Keys asked about in one `KeyQuery` at most (a larger batch is split).
pub const MAX_KEYS_PER_QUERY: usize = 65_536;

/// After a start, the table counts as settled once no worker has
/// registered for this long (and at least one has).
pub const TABLE_SETTLED: Duration = Duration::from_millis(500);

/// Event reports to the gateways (a worker joined or was lost, the queue
/// turned empty or non-empty) go at once, then at most one per this
/// spacing: the events of the spacing go together at its end. A report
/// sums the whole server table, so one per event would make registering
/// N workers cost N squared.
pub const EVENT_REPORT_SPACING: Duration = Duration::from_millis(50);

/// Workers a status reply lists at most, whatever the query asks: about
/// 200 bytes each, so the reply stays well inside a 16 MiB frame (one
/// that still does not fit lists half as many, then half again). The
/// reply's totals and counters cover every worker.
pub const MAX_STATUS_WORKERS: usize = 50_000;

/// Waiting tasks retried after each report or result that may have freed
/// capacity (the sweep retries them all).
const DRAIN_PER_EVENT: usize = 16;

/// Waiting tasks of users at their quota passed over per retry at most
/// (beyond it, the rest wait for the sweep).
const MAX_QUOTA_SKIPS: usize = 4096;

/// Who is on the other end of a link: the role its certificate grants and
/// the name its `Hello` announces (one certificate may serve many nodes of
/// a role, see [`crate::pki`]).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The role its certificate was issued for.
    pub role: Role,
    /// Its announced node name (for a client: the user its tasks run as by
    /// default).
    pub name: String,
    /// Its `Hello` attributes (a client's `client.*`).
    pub attrs: Vec<(String, LabelValue)>,
}

/// A finished task, for the task-class DB (learned runtime statistics).
#[derive(Debug, Clone)]
pub struct Completion {
    /// The task's app.
    pub app: Rc<str>,
    /// How long it ran on its worker.
    pub ran: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Why a frame closed its link (sent to the peer in the `Error` frame).
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Forbidden(String),
    #[error("cannot answer: {0}")]
    Send(#[from] LinkFull),
}

impl LinkError {
    fn code(&self) -> ErrorCode {
        match self {
            LinkError::Frame(f) => f.code(),
            LinkError::Forbidden(_) => ErrorCode::Forbidden,
            LinkError::Send(_) => ErrorCode::Overloaded,
        }
    }
}

struct WorkerSide {
    /// The name its `Hello` announced: it may register that name or
    /// `name/...` (workers an agent multiplexes over its connection).
    cert: String,
    registered: Option<ServerId>,
}

struct ClientSide {
    /// Its announced name: the user when a submit names none.
    cert_user: String,
    cert_user_hash: u64,
    attrs: Vec<(String, LabelValue)>,
    shapes: ShapeCache,
}

enum Side {
    Worker(WorkerSide),
    Client(ClientSide),
    /// Gateways and distributor peers watch our liveness and send nothing.
    Watcher,
    /// A gateway this distributor registered with: it reports to it and
    /// expects nothing back but an `Error`.
    Gateway,
}

struct LinkEntry {
    out: Rc<Outgoing>,
    side: Side,
}

struct WorkerLink {
    name: String,
    out: Rc<Outgoing>,
    last_seen: Instant,
    /// The link it registered on, so that a stale link's end does not
    /// remove a newer one after a reconnect.
    link: LinkId,
    /// The process it registered from (`Register::incarnation`): the same
    /// one reconnecting may take its row over, another may not while this
    /// one lives.
    incarnation: u64,
}

/// Who awaits a task's result.
enum Owner {
    /// A client link (held, so the resubmission index sees the link as
    /// alive while its tasks run), under the client's id for the task.
    Link { out: Rc<Outgoing>, task: u64 },
    /// A job this distributor holds: the task at `offset` (index `index`).
    Job {
        num: u64,
        offset: u64,
        index: u64,
        id: Rc<str>,
    },
}

impl Owner {
    /// Whether it is task `task` of client link `link`.
    fn is_link_task(&self, link: LinkId, task: u64) -> bool {
        matches!(self, Owner::Link { out, task: t } if out.id() == link && *t == task)
    }

    fn is_link(&self, link: LinkId) -> bool {
        matches!(self, Owner::Link { out, .. } if out.id() == link)
    }
}

struct Pending {
    owner: Owner,
    reservation: Option<Reservation>,
    worker: ServerId,
    attempts: u32,
    tried: Vec<ServerId>,
    query: Rc<Query>,
    app: Rc<str>,
    demands: allot_wire::Demands,
    deadline: Option<Instant>,
    deadline_ms: u64,
    payload: Bytes,
    received: Instant,
    match_us: u64,
    /// (hash of the user name, idempotency key): identifies a resubmission.
    key: resubmit::Key,
    /// (user priority, task priority): its place when it waits.
    priority: (i32, i32),
    queued_at: Option<Instant>,
    /// It waits for a worker of the automatic allocation: no worker in
    /// the table can ever take it, one of the template could.
    for_alloc: bool,
}

/// A [`KeyQuery`] sent to every worker, waiting for their replies.
struct KeyQueryOut {
    id: u64,
    outstanding: usize,
    deadline: Instant,
    tasks: Vec<u64>,
}

/// Everything but the links' own state, so that a link's state and the
/// rest can be borrowed at once.
struct State {
    cfg: DistributorConfig,
    table: ServerTable,
    users: HashMap<String, Rc<UserRecord>>,
    completions: Vec<Completion>,
    flushed: Option<Vec<Completion>>,
    workers: FxMap<ServerId, WorkerLink>,
    /// Placed tasks by id (ids are sequential: see [`InFlight`]).
    pending: InFlight<Pending>,
    /// Tasks waiting for capacity, oldest first. Together with `pending`
    /// and `locating` bounded by `max_pending`.
    waiting: WaitQueue<Pending>,
    /// Resubmitted tasks this distributor never saw, while its workers are
    /// asked whether one of them runs or ran the task (see [`KeyQuery`]).
    locating: FxMap<u64, Pending>,
    locating_keys: FxMap<TaskKey, u64>,
    /// Keys to ask about in the next query, with their tasks.
    ask: Vec<(TaskKey, u64)>,
    /// Queries out: id, workers yet to answer, when to stop waiting, tasks.
    queries: VecDeque<KeyQueryOut>,
    next_query: u64,
    /// Finds a task again when its client resubmits it; kept only while a
    /// client that reconnected may resubmit (see [`ResubmitIndex`]).
    by_key: ResubmitIndex<Outgoing>,
    /// Links with frames to send, each listed once.
    transmit: VecDeque<Rc<Outgoing>>,
    next_task: u64,
    /// Until then an unmatched task waits (see `startup_grace`).
    grace_until: Instant,
    /// When the last worker registered (the table settles after it).
    last_registration: Instant,
    next_sweep: Instant,
    /// No task's deadline is before this (the earliest deadline when it
    /// was computed; tasks that ended since only make it early).
    next_deadline: Option<Instant>,
    last_deadline_check: Instant,
    last_flush: Instant,
    stats: Stats,
    /// Counts only the metrics show (see [`Core::metrics`]).
    observed: Observed,
    /// The time of the event being handled.
    now: Instant,
    /// Reads the time around a match, to report how long matching took; the
    /// shell gives the OS clock, tests none (matching then reports 0 us).
    match_clock: Option<fn() -> Instant>,
    /// Reused for every `Assign` and `TaskResult` this distributor sends,
    /// so that the strings in them (app, worker and distributor names)
    /// keep their buffers: no allocation per task in steady state.
    assign: allot_wire::Assign,
    result: TaskResult,
    /// Links to the gateways it reports to.
    gateways: Vec<Rc<Outgoing>>,
    reporter: Reporter,
    /// Something happened that the gateways hear of at once (or, within
    /// [`EVENT_REPORT_SPACING`] of the last event report, at its end).
    member_event: bool,
    /// When the next event report may go.
    next_event_report: Option<Instant>,
    /// Whether tasks waited after the last event (its turning is an event).
    was_waiting: bool,
    incarnation: u64,
    jobs: Jobs,
    /// Job submits answered once the job's creation is written: job
    /// number, link, the submit's request id.
    acks: Vec<(u64, Rc<Outgoing>, u64)>,
    /// Draining since then ([`Core::drain`]): new submissions are refused
    /// and the gateways hear the member's state as `draining`.
    draining: Option<Instant>,
    /// The automatic allocation, if configured.
    autoalloc: Option<Box<Autoalloc>>,
}

/// The distributor as a state machine. See the module docs.
pub struct Core {
    links: FxMap<LinkId, LinkEntry>,
    next_link: u64,
    st: State,
}

fn release(table: &ServerTable, r: &mut Option<Reservation>) {
    if let Some(r) = r.take() {
        table.release(&r);
    }
}

/// Writes placement `task` of `p` into the reused `Assign` (its strings
/// keep their buffers).
fn fill_assign(assign: &mut allot_wire::Assign, task: u64, p: &Pending) {
    match &p.owner {
        Owner::Job { id, index, .. } => {
            assign.job.clear();
            assign.job.push_str(id);
            assign.index = *index;
        }
        Owner::Link { .. } => {
            assign.job.clear();
            assign.index = 0;
        }
    }
    assign.task_id = task;
    assign.reservation = task;
    assign.app.clear();
    assign.app.push_str(&p.app);
    assign.demands = p.demands;
    assign.deadline_ms = p.deadline_ms;
    assign.attempt = p.attempts;
    assign.key = TaskKey {
        user: p.key.0,
        key: p.key.1,
    };
    assign.user.clear();
    assign.user.push_str(p.query.user_name());
}

fn close(transmit: &mut VecDeque<Rc<Outgoing>>, out: &Rc<Outgoing>, code: ErrorCode, why: String) {
    tracing::warn!(link = out.id().0, "closing link: {why}");
    if out.close(code, why) {
        transmit.push_back(out.clone());
    }
}

impl Core {
    /// A distributor core with no links, its user DB's records `users`
    /// (the shell reads them from the store), started at `now`.
    pub fn new(
        cfg: DistributorConfig,
        users: Vec<UserRecord>,
        now: Instant,
    ) -> Result<Core, allot_engine::EngineError> {
        let table = ServerTable::new(TableConfig {
            capacity: cfg.table_capacity,
            ..TableConfig::default()
        })?;
        let name = cfg.name.clone();
        let max_pending = cfg.max_pending;
        let reporter = Reporter::new(cfg.report_period, cfg.report_every, now);
        let jobs = Jobs::new(&cfg.set_name, &cfg.name, cfg.retention, now);
        let users = users
            .into_iter()
            .map(|u| (u.name.clone(), Rc::new(u)))
            .collect();
        let autoalloc = match &cfg.autoalloc {
            Some(a) => Some(Box::new(Autoalloc::new(a, now)?)),
            None => None,
        };
        Ok(Core {
            links: FxMap::default(),
            next_link: 1,
            st: State {
                next_sweep: now + sweep_period(&cfg),
                grace_until: now + cfg.startup_grace,
                last_registration: now,
                cfg,
                table,
                users,
                completions: Vec::new(),
                flushed: None,
                workers: FxMap::default(),
                pending: InFlight::new(1024, max_pending.saturating_mul(2)),
                waiting: WaitQueue::default(),
                locating: FxMap::default(),
                locating_keys: FxMap::default(),
                ask: Vec::new(),
                queries: VecDeque::new(),
                next_query: 1,
                by_key: ResubmitIndex::new(),
                transmit: VecDeque::new(),
                next_task: 1,
                next_deadline: None,
                last_deadline_check: now,
                last_flush: now,
                stats: Stats::default(),
                observed: Observed::default(),
                now,
                match_clock: None,
                assign: allot_wire::Assign {
                    task_id: 0,
                    reservation: 0,
                    app: String::new(),
                    demands: allot_wire::Demands::default(),
                    deadline_ms: 0,
                    attempt: 0,
                    key: allot_wire::TaskKey::default(),
                    user: String::new(),
                    job: String::new(),
                    index: 0,
                },
                result: TaskResult {
                    task_id: 0,
                    status: TaskStatus::Ok,
                    refusal: allot_wire::Refusal::None,
                    worker: String::new(),
                    distributor: name,
                    attempts: 0,
                    exit_code: 0,
                    message: String::new(),
                    timings: Timings::default(),
                },
                gateways: Vec::new(),
                reporter,
                member_event: false,
                next_event_report: None,
                was_waiting: false,
                incarnation: 0,
                jobs,
                acks: Vec::new(),
                draining: None,
                autoalloc,
            },
        })
    }

    /// Tells the gateways which start of this distributor they hear from
    /// (the shell passes a value of its own each start).
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.st.incarnation = incarnation;
    }

    /// The shell opened a stream to a gateway: the core registers there as
    /// a member of its set reachable at `advertise`, then reports to it.
    pub fn gateway_opened(&mut self, now: Instant, advertise: SocketAddr) -> LinkId {
        self.st.now = now;
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let out = Rc::new(Outgoing::new(id));
        let attrs = self.st.member_attrs();
        let reg = allot_wire::MemberRegister {
            set_name: self.st.cfg.set_name.clone(),
            addr: advertise.to_string(),
            incarnation: self.st.incarnation,
            attrs: attrs.clone(),
        };
        if let Err(e) = push(&mut self.st.transmit, &out, &reg, &Bytes::new()) {
            tracing::warn!("registration not queued: {e}");
        }
        // Other gateways get the same figures with the next report; this
        // one starts from them.
        if self.st.reporter.last.is_none() {
            self.st.reporter.last = Some(attrs);
        }
        self.st.gateways.push(out.clone());
        self.links.insert(
            id,
            LinkEntry {
                out,
                side: Side::Gateway,
            },
        );
        id
    }

    /// Starts draining at `now`: the gateways are told at once (an event
    /// report with the member's state `draining`, so they stop sending
    /// clients here), new submissions are refused with
    /// [`Refusal::Draining`](allot_wire::Refusal::Draining) (the client
    /// moves to another member), and the tasks already here, placed or
    /// waiting, go on to their end. [`Core::drained`] says when none is
    /// left. Draining again changes nothing.
    pub fn drain(&mut self, now: Instant) {
        self.st.now = now;
        if self.st.draining.is_some() {
            return;
        }
        self.st.draining = Some(now);
        // The gateways must stop sending clients here now, not at the end
        // of the spacing of event reports.
        self.st.next_event_report = None;
        let (placed, waiting) = self.tasks_in_flight();
        tracing::info!(
            placed,
            waiting,
            "draining: no new tasks, finishing those here"
        );
        self.st.member_event = true;
        self.st.report_events();
    }

    /// Whether [`Core::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.st.draining.is_some()
    }

    /// Whether no task is left here (placed, waiting or being located):
    /// a draining distributor may stop.
    pub fn drained(&self) -> bool {
        let (placed, waiting) = self.tasks_in_flight();
        placed == 0 && waiting == 0
    }

    /// The links to clients (a draining shell finishes their streams once
    /// nothing is left to send them).
    pub fn client_links(&self) -> Vec<LinkId> {
        self.links
            .iter()
            .filter(|(_, e)| matches!(e.side, Side::Client(_)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Times each match with `clock` (for `Timings::matched_us`).
    pub fn set_match_clock(&mut self, clock: fn() -> Instant) {
        self.st.match_clock = Some(clock);
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &DistributorConfig {
        &self.st.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.st.stats
    }

    /// Tasks placed on workers and tasks waiting for capacity.
    pub fn tasks_in_flight(&self) -> (usize, usize) {
        (
            self.st.pending.len() + self.st.locating.len(),
            self.st.waiting.len(),
        )
    }

    /// The server table (read-only use: status, tests).
    pub fn table(&self) -> &ServerTable {
        &self.st.table
    }

    /// A stream to `peer` finished its handshake. Returns the id the shell
    /// names it by.
    pub fn link_opened(&mut self, now: Instant, peer: Peer) -> LinkId {
        self.st.now = now;
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let out = Rc::new(Outgoing::new(id));
        let side = match peer.role {
            Role::Worker => Side::Worker(WorkerSide {
                cert: peer.name,
                registered: None,
            }),
            Role::Client => {
                let st = &mut self.st;
                if st.by_key.stream_opened(&peer.name, &out, now) {
                    // An earlier link of this client is still open or has
                    // tasks in flight: it may resubmit them. Index every
                    // task in flight or waiting.
                    let keys: Vec<(resubmit::Key, u64)> = st
                        .pending
                        .iter()
                        .map(|(id, p)| (p.key, id))
                        .chain(st.waiting.iter().map(|(id, p)| (p.key, id)))
                        .collect();
                    st.by_key.build(keys.into_iter());
                }
                Side::Client(ClientSide {
                    cert_user_hash: resubmit::name_hash(&peer.name),
                    cert_user: peer.name,
                    attrs: peer.attrs,
                    shapes: ShapeCache::default(),
                })
            }
            _ => Side::Watcher,
        };
        self.links.insert(id, LinkEntry { out, side });
        id
    }

    /// The link's stream ended (closed by the peer, reset, or its
    /// connection lost). Its worker is marked down and its tasks retried;
    /// a client's tasks keep running, for the client may resubmit them on
    /// a new link.
    pub fn link_closed(&mut self, now: Instant, link: LinkId) {
        self.link_ended(now, link, false);
    }

    /// As [`Core::link_closed`]; `stopped`: it ended because this node or
    /// the peer stopped on purpose (see [`crate::conn::ended_by_a_stop`]),
    /// which is logged as a departure rather than a loss.
    pub fn link_ended(&mut self, now: Instant, link: LinkId, stopped: bool) {
        self.st.now = now;
        let Some(entry) = self.links.remove(&link) else {
            return;
        };
        entry.out.closed_by_peer();
        match entry.side {
            Side::Worker(WorkerSide {
                registered: Some(id),
                ..
            }) => self.st.worker_lost(id, link, stopped),
            Side::Gateway => self.st.gateways.retain(|g| g.id() != link),
            _ => {}
        }
        self.st.feed_jobs();
        self.st.report_events();
    }

    /// The shell wrote `bytes` of what [`Core::poll_transmit`] gave for
    /// `link`.
    pub fn handle_written(&mut self, link: LinkId, bytes: usize) {
        if let Some(e) = self.links.get(&link) {
            e.out.written(bytes);
        }
    }

    /// A frame arrived on `link` at `now`. A frame the link may not send,
    /// or one that does not validate, closes the link with an `Error`
    /// frame (see [`Transmit::close`]); the node keeps serving.
    pub fn handle_frame(&mut self, now: Instant, link: LinkId, frame: Frame) {
        self.st.now = now;
        let Some(entry) = self.links.get_mut(&link) else {
            return; // closed by us; the shell stops reading it
        };
        if entry.out.is_closed() {
            return;
        }
        let out = &entry.out;
        let result = match &mut entry.side {
            Side::Worker(w) => self.st.worker_frame(out, link, w, frame),
            Side::Client(c) => self.st.client_frame(out, c, frame),
            Side::Watcher => Err(LinkError::Forbidden(format!(
                "{:?} not accepted from this role",
                frame.kind()
            ))),
            Side::Gateway => gateway_frame(frame),
        };
        if let Err(e) = result {
            close(&mut self.st.transmit, out, e.code(), e.to_string());
        }
        self.st.feed_jobs();
        self.st.report_events();
    }

    /// When [`Core::handle_timeout`] should next be called: the next sweep,
    /// or a task's deadline if that comes first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.st.next_sweep;
        if let Some(d) = self.st.next_deadline {
            t = t.min(d);
        }
        if let Some(q) = self.st.queries.front() {
            t = t.min(q.deadline);
        }
        if let Some(b) = self.st.jobs.next_batch_at() {
            t = t.min(b);
        }
        if let Some(a) = self
            .st
            .autoalloc
            .as_ref()
            .and_then(|a| a.policy.poll_timeout())
        {
            t = t.min(a);
        }
        if !self.st.gateways.is_empty() {
            t = t.min(self.st.reporter.next());
            if self.st.member_event {
                if let Some(e) = self.st.next_event_report {
                    t = t.min(e);
                }
            }
        }
        Some(t)
    }

    /// The time passed: marks silent workers down, retries waiting tasks,
    /// fails tasks past their deadline, and readies completions for the
    /// store once a second.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.st.now = now;
        if now >= self.st.reporter.next() {
            self.st.member_beat(now);
        }
        if now >= self.st.next_sweep {
            self.st.next_sweep = now + sweep_period(&self.st.cfg);
            self.st.sweep(now);
            self.st.report_change();
        } else if self.st.next_deadline.is_some_and(|d| d <= now) {
            self.st.expire_deadlines(now);
        }
        while self.st.queries.front().is_some_and(|q| q.deadline <= now) {
            if let Some(q) = self.st.queries.pop_front() {
                tracing::debug!(query = q.id, "key query timed out; placing its tasks");
                self.st.end_query(q);
            }
        }
        self.st.feed_jobs();
        self.st.report_events();
    }

    /// Frames to send, one link at a time; `None` when nothing is queued.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !self.st.ask.is_empty() && !self.st.in_grace() {
            self.st.send_key_queries();
        }
        while let Some(out) = self.st.transmit.pop_front() {
            if let Some(t) = out.take() {
                return Some(t);
            }
        }
        None
    }

    /// Completions to record in the task-class DB, handed out once a
    /// second by [`Core::handle_timeout`].
    pub fn poll_completions(&mut self) -> Option<Vec<Completion>> {
        self.st.flushed.take()
    }

    /// The next thing the automatic allocation wants done (submit, cancel
    /// or poll a batch job), if it is on and wants any.
    pub fn poll_autoalloc(&mut self) -> Option<autoalloc::Action> {
        self.st.autoalloc.as_mut()?.policy.poll_action()
    }

    /// The automatic allocation's submission ended: the job's id, or why
    /// the batch system refused it (logged; shown in `allot status` and
    /// as the reason its tasks wait).
    pub fn autoalloc_submitted(&mut self, now: Instant, result: Result<String, String>) {
        self.st.now = now;
        let Some(a) = self.st.autoalloc.as_mut() else {
            return;
        };
        match &result {
            Ok(id) => tracing::info!(job = %id, backend = %a.backend, "autoalloc: job submitted"),
            Err(e) => tracing::warn!(backend = %a.backend, "autoalloc: submission refused: {e}"),
        }
        a.policy.submitted(now, result);
    }

    /// What the look for jobs an earlier run of this distributor submitted
    /// said: those still pending or running are adopted, and the workers
    /// of theirs already registered are counted as theirs.
    pub fn autoalloc_found(&mut self, now: Instant, result: Result<Vec<(String, String)>, String>) {
        self.st.now = now;
        let Some(a) = self.st.autoalloc.as_mut() else {
            return;
        };
        if let Err(e) = &result {
            tracing::warn!(backend = %a.backend, "autoalloc: cannot list the jobs of an earlier run (no submission until it can): {e}");
        }
        a.policy.found(now, result);
        if !a.policy.adopted() {
            return;
        }
        for s in self.st.table.snapshot() {
            if s.state == ServerState::Down {
                continue;
            }
            let job = s.record.labels.iter().find(|(k, _)| k == "slurm_job");
            if let Some((_, LabelValue::Str(job))) = job {
                a.policy.worker_joined(job, &s.record.name);
            }
        }
    }

    /// What the poll of the automatic allocation's jobs said.
    pub fn autoalloc_states(
        &mut self,
        now: Instant,
        result: Result<Vec<(String, String)>, String>,
    ) {
        self.st.now = now;
        let Some(a) = self.st.autoalloc.as_mut() else {
            return;
        };
        if let Err(e) = &result {
            tracing::warn!(backend = %a.backend, "autoalloc: job states unknown: {e}");
        }
        a.policy.states(now, result);
    }

    /// What `allot status` shows, as of `now`: every worker (up to
    /// [`MAX_STATUS_WORKERS`]), the totals and the counters.
    pub fn status(&self, now: Instant) -> StatusReply {
        self.st.status(now, true, MAX_STATUS_WORKERS)
    }

    /// The wall clock reads `unix_ms` at `now` (for the times jobs show).
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.st.jobs.set_wall_clock(now, unix_ms);
    }

    /// Takes back the jobs the journal kept (before serving): finished
    /// tasks keep their results, tasks that were running run again with
    /// their attempt number raised, queued ones stay queued.
    pub fn restore_jobs(&mut self, now: Instant, replay: jobs::record::Replay) {
        self.st.now = now;
        let st = &mut self.st;
        let (table, users, alloc) = (&st.table, &st.users, &mut st.autoalloc);
        st.jobs.restore(
            now,
            replay,
            |rec| {
                let user = users
                    .get(&rec.user)
                    .cloned()
                    .unwrap_or_else(|| Rc::new(UserRecord::new(&rec.user)));
                let attrs: Vec<(String, LabelValue)> = rec
                    .client_attrs
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            jobs::record::AttrValueRecord::Str(s) => LabelValue::Str(s.clone()),
                            jobs::record::AttrValueRecord::Num(n) => LabelValue::Num(*n),
                        };
                        (k.clone(), v)
                    })
                    .collect();
                let shape = job_shape(rec);
                let q = Rc::new(
                    shape
                        .compile(table, &user, &attrs)
                        .map_err(|e| format!("bad expression: {e}"))?,
                );
                if let Some(a) = alloc.as_mut() {
                    a.note(&q, &shape, &user, &attrs);
                }
                Ok((q, Rc::from(rec.app.as_str())))
            },
            |name| users.get(name).map_or(0, |u| u.priority),
        );
        tracing::info!(jobs = st.jobs.len(), "jobs taken back from the journal");
        st.feed_jobs();
    }

    /// The next batch of job changes for the shell to write in one durable
    /// transaction, if there is one and none is being written.
    pub fn poll_journal(&mut self) -> Option<JournalBatch> {
        self.st.jobs.poll_journal(self.st.now)
    }

    /// The shell wrote batch `seq` (or could not, and says why): the jobs
    /// it created are acknowledged to their clients and start.
    pub fn journal_committed(&mut self, now: Instant, seq: u64, result: Result<(), String>) {
        self.st.now = now;
        let error = result.as_ref().err().cloned();
        let created = self.st.jobs.committed(seq, result);
        self.st.send_acks(&created, error);
        self.st.feed_jobs();
        self.st.report_events();
    }

    /// Its counters and gauges for `/metrics`, as of now: plain numbers,
    /// read at each scrape.
    pub fn metrics(&self) -> DistributorMetrics {
        let t = self.st.table.totals();
        let (placed, waiting) = self.tasks_in_flight();
        let (jobs, job_tasks) = self.job_totals();
        DistributorMetrics {
            stats: self.st.stats,
            observed: self.st.observed,
            placed,
            waiting,
            workers_up: t.up,
            workers_draining: t.draining,
            workers_down: t.down,
            jobs,
            job_tasks,
            draining: self.is_draining(),
        }
    }

    /// Jobs held, and their tasks by state over all of them.
    pub fn job_totals(&self) -> (usize, allot_wire::JobCounts) {
        (self.st.jobs.len(), self.st.jobs.totals())
    }
}

/// The query shape of a job's tasks.
fn job_shape(rec: &jobs::record::JobRecord) -> Shape {
    Shape {
        app: rec.app.clone(),
        require: rec.require.clone(),
        prefer: rec.prefer.clone(),
        user: rec.user.clone(),
        demands: (rec.cores, rec.mem, rec.slots),
        priority: rec.priority,
    }
}

/// A gateway sends nothing but an `Error` (it refused the registration or
/// a report: logged, and the gateway closes the link).
fn gateway_frame(frame: Frame) -> Result<(), LinkError> {
    if frame.kind() == MessageKind::Error {
        let e = frame.validate::<allot_wire::ErrorMsg>()?;
        tracing::warn!(
            "gateway refused this distributor: {:?}: {}",
            e.get().code,
            e.get().message.as_str()
        );
        return Ok(());
    }
    Err(LinkError::Forbidden(format!(
        "a gateway may not send {:?}",
        frame.kind()
    )))
}

fn sweep_period(cfg: &DistributorConfig) -> Duration {
    (cfg.heartbeat / 4).max(Duration::from_millis(20))
}
