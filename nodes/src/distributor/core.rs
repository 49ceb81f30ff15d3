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

mod view;
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
        self.st.now = now;
        let Some(entry) = self.links.remove(&link) else {
            return;
        };
        entry.out.closed_by_peer();
        match entry.side {
            Side::Worker(WorkerSide {
                registered: Some(id),
                ..
            }) => self.st.worker_lost(id, link),
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
        self.st.jobs.poll_journal()
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

// ---------------------------------------------------------------- gateways

impl State {
    /// This member's share of its set's attributes now, and its own state.
    fn member_attrs(&self) -> allot_wire::SetAttrs {
        // Jobs' tasks not started yet wait as much as those in the queue.
        let queued = self.jobs.queued();
        let state = match self.draining {
            Some(_) => WorkerState::Draining,
            None => WorkerState::Up,
        };
        report::summarize(
            &self.table.totals(),
            self.waiting
                .len()
                .saturating_add(usize::try_from(queued).unwrap_or(usize::MAX)),
            self.pending.len() + self.locating.len(),
            self.reporter.tasks_per_s(),
            state,
        )
    }

    /// Sends a full report to every gateway.
    fn report(&mut self, cause: allot_wire::DeltaCause) {
        let attrs = self.member_attrs();
        self.reporter.seq += 1;
        let r = allot_wire::MemberReport {
            seq: self.reporter.seq,
            cause,
            attrs: attrs.clone(),
        };
        for g in &self.gateways {
            if let Err(e) = push(&mut self.transmit, g, &r, &Bytes::new()) {
                tracing::warn!(link = g.id().0, "report to gateway not queued: {e}");
            }
        }
        self.reporter.last = Some(attrs);
    }

    /// A report period ended: a heartbeat, or every Nth time a report.
    fn member_beat(&mut self, now: Instant) {
        let beat = self.reporter.beat(now, self.stats.completed);
        if self.gateways.is_empty() {
            return;
        }
        match beat {
            Beat::Report => self.report(allot_wire::DeltaCause::Periodic),
            Beat::Heartbeat => {
                let hb = allot_wire::MemberHeartbeat {
                    seq: self.reporter.seq,
                };
                for g in &self.gateways {
                    if let Err(e) = push(&mut self.transmit, g, &hb, &Bytes::new()) {
                        tracing::warn!(link = g.id().0, "heartbeat to gateway not queued: {e}");
                    }
                }
            }
        }
    }

    /// Reports at once if a figure moved by more than the threshold.
    fn report_change(&mut self) {
        if self.gateways.is_empty() {
            return;
        }
        let now = self.member_attrs();
        let changed = self
            .reporter
            .last
            .as_ref()
            .is_none_or(|last| report::differs(last, &now, self.cfg.report_threshold));
        if changed {
            self.report(allot_wire::DeltaCause::Change);
        }
    }

    /// Reports at once after an event: a worker joined or was lost, the
    /// waiting queue turned non-empty or empty, the member started
    /// draining.
    fn report_events(&mut self) {
        let waiting = !self.waiting.is_empty();
        if waiting != self.was_waiting {
            self.was_waiting = waiting;
            self.member_event = true;
        }
        if !self.member_event {
            return;
        }
        if self.gateways.is_empty() {
            self.member_event = false;
            return;
        }
        // A burst of events (thousands of workers registering) makes one
        // report per window, not one per event: each report sums the
        // whole table.
        if self.next_event_report.is_some_and(|t| self.now < t) {
            return;
        }
        self.member_event = false;
        self.report(allot_wire::DeltaCause::Event);
        self.next_event_report = Some(self.now + EVENT_REPORT_SPACING);
    }
}

fn sweep_period(cfg: &DistributorConfig) -> Duration {
    (cfg.heartbeat / 4).max(Duration::from_millis(20))
}

// ---------------------------------------------------------------- workers

impl State {
    fn worker_frame(
        &mut self,
        out: &Rc<Outgoing>,
        link: LinkId,
        w: &mut WorkerSide,
        frame: Frame,
    ) -> Result<(), LinkError> {
        match frame.kind() {
            MessageKind::Register => {
                let reg = frame.validate::<Register>()?;
                let r = reg.get();
                // A worker announced as N registers N, or N/... for
                // workers an agent multiplexes over its connection.
                let name = r.name.as_str();
                let owned = name == w.cert
                    || name
                        .strip_prefix(w.cert.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'));
                if !owned {
                    return Err(LinkError::Forbidden(format!(
                        "worker announced as `{}` registers as `{}`",
                        w.cert, r.name
                    )));
                }
                let id = self.register(r, out.clone(), link)?;
                w.registered = Some(id);
                let ack = RegisterAck {
                    worker_id: u64::from(id.0),
                    heartbeat_ms: self.cfg.heartbeat_for(self.workers.len()).as_millis() as u32,
                    distributor: self.cfg.name.clone(),
                };
                push(&mut self.transmit, out, &ack, &Bytes::new())?;
                // A new worker may be what waiting tasks wait for.
                self.drain_queue(DRAIN_PER_EVENT);
            }
            MessageKind::AttrDelta => {
                let d = frame.validate::<AttrDelta>()?;
                let id = w
                    .registered
                    .ok_or_else(|| LinkError::Forbidden("delta before Register".into()))?;
                self.apply_delta(id, d.get());
                // A report may have freed capacity for waiting tasks.
                self.drain_queue(DRAIN_PER_EVENT);
            }
            MessageKind::Heartbeat => {
                let _ = frame.validate::<Heartbeat>()?;
                if let Some(id) = w.registered {
                    self.seen(id);
                }
            }
            MessageKind::KeyReply => {
                let r = frame.validate::<KeyReply>()?;
                if let Some(id) = w.registered {
                    self.on_key_reply(id, r.get());
                }
            }
            MessageKind::TaskResult => {
                let r = frame.validate::<TaskResult>()?;
                if let Some(id) = w.registered {
                    self.seen(id);
                }
                self.on_result(r.get(), r.payload());
            }
            other => {
                return Err(LinkError::Forbidden(format!(
                    "a worker may not send {other:?}"
                )));
            }
        }
        Ok(())
    }

    fn register(
        &mut self,
        r: &allot_wire::message::ArchivedRegister,
        out: Rc<Outgoing>,
        link: LinkId,
    ) -> Result<ServerId, LinkError> {
        let rec = &r.record;
        let record = ServerRecord {
            name: r.name.as_str().to_owned(),
            slots: rec.slots.to_native(),
            slots_free: rec.slots_free.to_native(),
            cores: rec.cores.to_native(),
            power: rec.power.to_native(),
            idle_power: rec.idle_power.to_native(),
            mem: rec.mem.to_native(),
            mem_free: rec.mem_free.to_native(),
            load: rec.load.to_native(),
            apps: r.apps.iter().map(|a| a.as_str().to_owned()).collect(),
            labels: rec
                .labels
                .iter()
                .filter_map(|a| Some((a.key.as_str().to_owned(), label_from_archived(&a.value)?)))
                .collect(),
        };
        let incarnation = r.incarnation.to_native();
        // A re-registration replaces the row: tasks placed on the old row
        // are retried (the worker restarted and lost them). But while the
        // row's worker is live on another link, only that same process may
        // (it reconnected): another process with the name is a second
        // worker, which a shared (pool) certificate makes possible, and
        // it is refused rather than let it take over the first one's tasks.
        if let Some(old) = self.table.lookup(&record.name) {
            if let Some(live) = self.workers.get(&old) {
                let down = self.table.state(old) == Some(ServerState::Down);
                if live.link != link && live.incarnation != incarnation && !down {
                    tracing::warn!(worker = %record.name, "refused a second live worker of this name");
                    return Err(LinkError::Forbidden(format!(
                        "worker name `{}` is taken by another live worker; give each worker \
                         its own --name (workers may share a --cert, not a name)",
                        record.name
                    )));
                }
            }
            self.retry_tasks_on(old, "worker re-registered");
        }
        let id = self
            .table
            .insert(record)
            .map_err(|e| LinkError::Forbidden(format!("cannot register: {e}")))?;
        self.workers.insert(
            id,
            WorkerLink {
                name: r.name.as_str().to_owned(),
                out,
                last_seen: self.now,
                link,
                incarnation,
            },
        );
        self.last_registration = self.now;
        self.member_event = true;
        tracing::info!(worker = %r.name, id = id.0, "worker registered");
        if let Some(a) = self.autoalloc.as_mut() {
            let job = r
                .record
                .labels
                .iter()
                .find(|l| l.key.as_str() == "slurm_job");
            if let Some(LabelValue::Str(job)) = job.and_then(|l| label_from_archived(&l.value)) {
                if a.policy.worker_joined(&job, r.name.as_str()) {
                    tracing::info!(worker = %r.name, job = %job, "autoalloc: the job's worker joined");
                }
            }
        }
        Ok(id)
    }

    /// Whether the table may still be filling after a start: within
    /// `startup_grace`, while no worker has registered or registrations
    /// came less than [`TABLE_SETTLED`] ago.
    fn in_grace(&self) -> bool {
        self.now < self.grace_until
            && (self.workers.is_empty()
                || self.now.saturating_duration_since(self.last_registration) < TABLE_SETTLED)
    }

    fn seen(&mut self, id: ServerId) {
        if let Some(l) = self.workers.get_mut(&id) {
            l.last_seen = self.now;
            if self.table.state(id) == Some(ServerState::Down) {
                let _ = self.table.set_state(id, ServerState::Up);
                self.member_event = true;
                tracing::info!(worker = %l.name, "worker up again");
            }
        }
    }

    fn apply_delta(&mut self, id: ServerId, d: &allot_wire::message::ArchivedAttrDelta) {
        self.seen(id);
        let mut changes = Vec::with_capacity(d.changes.len());
        let mut new_state = None;
        for c in d.changes.iter() {
            changes.push(match c {
                ArchivedAttrChange::Slots(v) => Change::Slots(v.to_native()),
                ArchivedAttrChange::SlotsFree(v) => Change::SlotsFree(v.to_native()),
                ArchivedAttrChange::Cores(v) => Change::Cores(v.to_native()),
                ArchivedAttrChange::Power(v) => Change::Power(v.to_native()),
                ArchivedAttrChange::IdlePower(v) => Change::IdlePower(v.to_native()),
                ArchivedAttrChange::Mem(v) => Change::Mem(v.to_native()),
                ArchivedAttrChange::MemFree(v) => Change::MemFree(v.to_native()),
                ArchivedAttrChange::Load(v) => Change::Load(v.to_native()),
                ArchivedAttrChange::Label(a) => match label_from_archived(&a.value) {
                    Some(v) => Change::Label(a.key.as_str().to_owned(), v),
                    None => Change::LabelRemoved(a.key.as_str().to_owned()),
                },
                ArchivedAttrChange::AppAdded(a) => Change::AppAdded(a.as_str().to_owned()),
                ArchivedAttrChange::AppRemoved(a) => Change::AppRemoved(a.as_str().to_owned()),
                ArchivedAttrChange::State(s) => {
                    new_state = Some(match s {
                        ArchivedWorkerState::Up => ServerState::Up,
                        ArchivedWorkerState::Down => ServerState::Down,
                        ArchivedWorkerState::Draining => ServerState::Draining,
                    });
                    continue;
                }
            });
        }
        match self.table.apply_delta(id, d.seq.to_native(), &changes) {
            Ok(allot_engine::DeltaOutcome::Stale) => self.observed.deltas_stale += 1,
            Ok(_) => self.observed.deltas_applied += 1,
            Err(e) => {
                self.observed.deltas_failed += 1;
                tracing::warn!("delta from worker {} not applied: {e}", id.0);
            }
        }
        if let Some(s) = new_state {
            let _ = self.table.set_state(id, s);
        }
    }

    fn worker_lost(&mut self, id: ServerId, link: LinkId) {
        if self.workers.get(&id).map(|l| l.link) != Some(link) {
            return; // a newer link of the same worker took over
        }
        if let Some(l) = self.workers.remove(&id) {
            tracing::warn!(worker = %l.name, "worker connection lost; marked down");
        }
        let _ = self.table.set_state(id, ServerState::Down);
        self.member_event = true;
        self.retry_tasks_on(id, "worker connection lost");
    }

    fn retry_tasks_on(&mut self, id: ServerId, why: &str) {
        let lost = self.pending.ids_where(|p| p.worker == id);
        for task in lost {
            if let Some(mut p) = self.pending.remove(task) {
                release(&self.table, &mut p.reservation);
                p.tried.push(id);
                self.stats.retried += 1;
                tracing::info!(task, "retrying: {why}");
                self.place(task, p, why.to_owned());
            }
        }
    }

    /// Places (or re-places) a task, excluding workers already tried; when
    /// nothing can take it now but some worker could later, it waits;
    /// otherwise the client gets the error.
    fn place(&mut self, task: u64, mut p: Pending, mut last_error: String) {
        loop {
            if p.attempts >= self.cfg.max_attempts {
                let msg = format!("gave up after {} attempts: {last_error}", p.attempts);
                self.finish_error(p, TaskStatus::Error, msg);
                return;
            }
            // Matching is timed only where it can take a microsecond: a
            // table of one block (64 servers) is scanned in well under one,
            // and two clock reads would cost more than the match.
            let clock = self
                .match_clock
                .filter(|_| self.table.len() > UNTIMED_MATCH_ROWS);
            let t0 = clock.map(|c| c());
            let res =
                self.table
                    .match_and_reserve_excluding(&p.query, self.cfg.match_mode, &p.tried);
            if let (Some(c), Some(t0)) = (clock, t0) {
                let us = c().duration_since(t0).as_micros() as u64;
                p.match_us += us;
                self.observed.match_us.record(us);
            }
            let reservation = match res {
                Ok(r) => r,
                Err(no_match) => {
                    self.unplaced(task, p, &last_error, no_match);
                    return;
                }
            };
            let Some(link) = self.workers.get(&reservation.server) else {
                // In the table but not connected here (e.g. just lost):
                // exclude it and try again.
                self.table.release(&reservation);
                p.tried.push(reservation.server);
                last_error = "worker not connected".into();
                continue;
            };
            p.attempts += 1;
            p.worker = reservation.server;
            fill_assign(&mut self.assign, task, &p);
            match push(&mut self.transmit, &link.out, &self.assign, &p.payload) {
                Ok(()) => {
                    if let Owner::Job { num, offset, .. } = p.owner {
                        self.jobs
                            .placed(num, offset, task, Some((&link.name, p.attempts)));
                    }
                    p.reservation = Some(reservation);
                    self.pending.insert(task, p);
                    return;
                }
                Err(e) => {
                    self.table.release(&reservation);
                    p.tried.push(reservation.server);
                    last_error = format!("worker unreachable: {e}");
                }
            }
        }
    }

    /// Asks every worker about the keys of the resubmitted tasks gathered
    /// since the last query (in batches of at most [`MAX_KEYS_PER_QUERY`]).
    fn send_key_queries(&mut self) {
        let ask = std::mem::take(&mut self.ask);
        for batch in ask.chunks(MAX_KEYS_PER_QUERY) {
            let id = self.next_query;
            self.next_query += 1;
            let q = KeyQuery {
                query: id,
                keys: batch.iter().map(|(k, _)| *k).collect(),
            };
            let mut asked = 0;
            for l in self.workers.values() {
                match push(&mut self.transmit, &l.out, &q, &Bytes::new()) {
                    Ok(()) => asked += 1,
                    Err(e) => tracing::warn!(worker = %l.name, "key query not sent: {e}"),
                }
            }
            let out = KeyQueryOut {
                id,
                outstanding: asked,
                deadline: self.now + LOCATE_TIMEOUT,
                tasks: batch.iter().map(|(_, t)| *t).collect(),
            };
            if asked == 0 {
                self.end_query(out);
            } else {
                self.queries.push_back(out);
            }
        }
    }

    /// Worker `id` holds some of the keys asked about: their tasks go to
    /// it (it joins its run or answers with the kept result).
    fn on_key_reply(&mut self, id: ServerId, r: &allot_wire::message::ArchivedKeyReply) {
        for k in r.held.iter() {
            let k = TaskKey {
                user: k.user.to_native(),
                key: k.key.to_native(),
            };
            let Some(task) = self.locating_keys.remove(&k) else {
                continue;
            };
            if let Some(p) = self.locating.remove(&task) {
                self.place_on(task, p, id);
            }
        }
        let query = r.query.to_native();
        if let Some(i) = self.queries.iter().position(|q| q.id == query) {
            let q = &mut self.queries[i];
            q.outstanding = q.outstanding.saturating_sub(1);
            if q.outstanding == 0 {
                if let Some(q) = self.queries.remove(i) {
                    self.end_query(q);
                }
            }
        }
    }

    /// Every worker answered (or the time is up): tasks no worker holds
    /// are placed as new ones.
    fn end_query(&mut self, q: KeyQueryOut) {
        for task in q.tasks {
            if let Some(p) = self.locating.remove(&task) {
                self.locating_keys.remove(&TaskKey {
                    user: p.key.0,
                    key: p.key.1,
                });
                self.place(task, p, String::new());
            }
        }
    }

    /// Sends a resubmitted task to worker `id`, which holds its key; no
    /// capacity is reserved (the worker joins the run it has). If that
    /// worker cannot be reached it is placed as a new task.
    fn place_on(&mut self, task: u64, mut p: Pending, id: ServerId) {
        let Some(link) = self.workers.get(&id) else {
            self.place(task, p, "the worker holding it is gone".into());
            return;
        };
        p.attempts += 1;
        p.worker = id;
        fill_assign(&mut self.assign, task, &p);
        match push(&mut self.transmit, &link.out, &self.assign, &p.payload) {
            Ok(()) => {
                if let Owner::Job { num, offset, .. } = p.owner {
                    self.jobs
                        .placed(num, offset, task, Some((&link.name, p.attempts)));
                }
                self.pending.insert(task, p);
            }
            Err(e) => {
                p.attempts -= 1;
                self.place(task, p, format!("worker unreachable: {e}"));
            }
        }
    }

    /// Nothing matched `p` now: wait for capacity, or fail with the
    /// explanation.
    fn unplaced(
        &mut self,
        task: u64,
        mut p: Pending,
        last_error: &str,
        no_match: allot_engine::NoMatch,
    ) {
        let waited = p
            .queued_at
            .map(|t| self.now.saturating_duration_since(t))
            .unwrap_or_default();
        // Some worker fails it only on free capacity, its state or the
        // user's quota (counted over the whole table); or the table is
        // empty or still filling after a start: an absence of workers is no
        // verdict on the task. Wait, up to the queue timeout.
        let empty = no_match.explain.total == 0;
        let in_grace = self.in_grace();
        // No worker here can ever take it, one of the automatic
        // allocation could: it waits for one, without the queue timeout.
        p.for_alloc = no_match.explain.waitable == 0
            && self
                .autoalloc
                .as_ref()
                .is_some_and(|a| a.could_take(&p.query));
        if p.for_alloc
            || ((no_match.explain.waitable > 0 || empty || in_grace)
                && waited < self.cfg.queue_timeout)
        {
            p.queued_at.get_or_insert(self.now);
            if let Owner::Job { num, offset, .. } = p.owner {
                self.jobs.placed(num, offset, task, None);
            }
            self.waiting.push(task, p.priority, p);
            return;
        }
        self.stats.no_match += 1;
        let reason = if empty {
            NoMatchReason::NoWorkers
        } else if waited >= self.cfg.queue_timeout {
            NoMatchReason::QueueTimeout
        } else {
            NoMatchReason::Unsatisfiable
        };
        self.observed.no_match_by[reason as usize] += 1;
        if empty {
            let msg = format!(
                "no worker has registered with distributor {} (waited {} s)",
                self.cfg.name,
                waited.as_secs()
            );
            self.finish_error(p, TaskStatus::NoMatch, msg);
            return;
        }
        let status = if p.tried.is_empty() {
            TaskStatus::NoMatch
        } else {
            TaskStatus::Error
        };
        let msg = if waited >= self.cfg.queue_timeout {
            format!("waited {} s for capacity: {no_match}", waited.as_secs())
        } else if p.tried.is_empty() {
            no_match.to_string()
        } else {
            format!("{last_error}; no other worker: {no_match}")
        };
        self.finish_error(p, status, msg);
    }

    fn finish_error(&mut self, p: Pending, status: TaskStatus, message: String) {
        self.ended(status, p.received);
        let (out, client_task) = match p.owner {
            Owner::Link { out, task } => (out, task),
            Owner::Job { num, offset, .. } => {
                let e = Ending {
                    status,
                    attempts: p.attempts,
                    exit_code: 0,
                    worker: "",
                    message: &message,
                    output: &Bytes::new(),
                };
                self.jobs.ended(self.now, num, offset, e);
                return;
            }
        };
        self.by_key.remove(p.key);
        let result = TaskResult {
            task_id: client_task,
            status,
            refusal: allot_wire::Refusal::None,
            worker: String::new(),
            distributor: self.cfg.name.clone(),
            attempts: p.attempts,
            exit_code: 0,
            message,
            timings: Timings {
                queued_us: 0,
                matched_us: p.match_us,
                ran_us: 0,
            },
        };
        self.deliver(&out, client_task, &result, &Bytes::new());
    }

    /// A task ended with `status` (counted once, whoever owns it: a
    /// client link or a job), received at `received`.
    fn ended(&mut self, status: TaskStatus, received: Instant) {
        self.stats.completed += 1;
        self.observed.by_status[status as usize] += 1;
        let latency = self.now.saturating_duration_since(received);
        self.observed.latency_us.record(latency.as_micros() as u64);
    }

    /// Sends a result to its client. A client link that is not reading is
    /// closed with `Overloaded` (and its other tasks cancelled); a link
    /// already gone is logged and counted: the client, if it comes back,
    /// resubmits under the same key.
    fn deliver(&mut self, client: &Rc<Outgoing>, client_task: u64, r: &TaskResult, out: &Bytes) {
        match push(&mut self.transmit, client, r, out) {
            Ok(()) => {}
            Err(LinkFull::Closed) => {
                self.stats.undelivered += 1;
                tracing::warn!(
                    link = client.id().0,
                    task = client_task,
                    "result not delivered: the client's stream is gone"
                );
            }
            Err(e) => {
                self.stats.undelivered += 1;
                self.disconnect_client(client, format!("client is not reading its results: {e}"));
            }
        }
    }

    /// Closes a client link that passed its bound, and cancels its tasks:
    /// nobody is left to take their results.
    fn disconnect_client(&mut self, client: &Rc<Outgoing>, why: String) {
        self.stats.clients_disconnected += 1;
        close(&mut self.transmit, client, ErrorCode::Overloaded, why);
        let id = client.id();
        let running = self.pending.ids_where(|p| p.owner.is_link(id));
        for task in running {
            if let Some(mut p) = self.pending.remove(task) {
                self.cancel_on_worker(task, &mut p);
                self.by_key.remove(p.key);
            }
        }
        let located: Vec<u64> = self
            .locating
            .iter()
            .filter(|(_, p)| p.owner.is_link(id))
            .map(|(t, _)| *t)
            .collect();
        for task in located {
            if let Some(p) = self.locating.remove(&task) {
                self.locating_keys.remove(&TaskKey {
                    user: p.key.0,
                    key: p.key.1,
                });
            }
        }
        let before = self.waiting.len();
        self.waiting.retain(|p| !p.owner.is_link(id));
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            tracing::warn!(
                link = id.0,
                dropped,
                "waiting tasks of a disconnected client cancelled"
            );
        }
    }

    /// Frees a placed task's reservation and tells its worker to stop it.
    fn cancel_on_worker(&mut self, task: u64, p: &mut Pending) {
        release(&self.table, &mut p.reservation);
        if let Some(l) = self.workers.get(&p.worker) {
            if let Err(e) = push(
                &mut self.transmit,
                &l.out,
                &Cancel { task_id: task },
                &Bytes::new(),
            ) {
                // The worker's link is failing; losing it stops the task.
                tracing::warn!(task, worker = %l.name, "cancel not sent: {e}");
            }
        }
    }

    fn on_result(&mut self, r: &allot_wire::message::ArchivedTaskResult, output: Bytes) {
        let task = r.task_id.to_native();
        let Some(mut p) = self.pending.remove(task) else {
            return; // cancelled, timed out or retried already
        };
        release(&self.table, &mut p.reservation);
        if matches!(r.status, ArchivedTaskStatus::Refused) {
            // The worker's admission check is the final word: our view was
            // stale. Correct it now and try the next candidate.
            self.stats.refused += 1;
            let reason = match r.refusal {
                ArchivedRefusal::Busy => {
                    self.stats.refused_busy += 1;
                    allot_wire::Refusal::Busy
                }
                ArchivedRefusal::UnknownApp => allot_wire::Refusal::UnknownApp,
                ArchivedRefusal::Draining => allot_wire::Refusal::Draining,
                ArchivedRefusal::None => allot_wire::Refusal::None,
            };
            self.observed.refused_by[reason as usize] += 1;
            let _ = self.table.mark_full(p.worker);
            match r.refusal {
                // It will not take this task at all: try the others.
                ArchivedRefusal::UnknownApp | ArchivedRefusal::Draining => {
                    p.tried.push(p.worker);
                }
                // Out of capacity for now: the placement did not run, so it
                // is not an attempt; the task waits for capacity (the worker
                // stays a candidate once its next report frees it).
                ArchivedRefusal::Busy | ArchivedRefusal::None => {
                    p.attempts = p.attempts.saturating_sub(1);
                }
            }
            let why = format!("refused by {}: {}", r.worker, r.message);
            self.place(task, p, why);
            return;
        }
        let status = crate::labels::status_from_archived(&r.status);
        if self.completions.len() < MAX_COMPLETIONS_BUFFERED {
            self.completions.push(Completion {
                app: p.app.clone(),
                ran: Duration::from_micros(r.timings.ran_us.to_native()),
                ok: status == TaskStatus::Ok,
            });
        }
        self.ended(status, p.received);
        let (client, client_task) = match p.owner {
            Owner::Link { out, task } => (out, task),
            Owner::Job { num, offset, .. } => {
                let worker = match self.workers.get(&p.worker) {
                    Some(l) => l.name.as_str(),
                    None => r.worker.as_str(),
                };
                let e = Ending {
                    status,
                    attempts: p.attempts,
                    exit_code: r.exit_code.to_native(),
                    worker,
                    message: r.message.as_str(),
                    output: &output,
                };
                self.jobs.ended(self.now, num, offset, e);
                self.drain_queue(DRAIN_PER_EVENT);
                return;
            }
        };
        self.by_key.remove(p.key);
        let mut result = std::mem::replace(
            &mut self.result,
            TaskResult {
                task_id: 0,
                status: TaskStatus::Ok,
                refusal: allot_wire::Refusal::None,
                worker: String::new(),
                distributor: String::new(),
                attempts: 0,
                exit_code: 0,
                message: String::new(),
                timings: Timings::default(),
            },
        );
        result.task_id = client_task;
        result.status = status;
        result.worker.clear();
        match self.workers.get(&p.worker) {
            Some(l) => result.worker.push_str(&l.name),
            None => result.worker.push_str(r.worker.as_str()),
        }
        result.attempts = p.attempts;
        result.exit_code = r.exit_code.to_native();
        result.message.clear();
        result.message.push_str(r.message.as_str());
        result.timings = Timings {
            queued_us: self.now.saturating_duration_since(p.received).as_micros() as u64,
            matched_us: p.match_us,
            ran_us: r.timings.ran_us.to_native(),
        };
        self.deliver(&client, client_task, &result, &output);
        self.result = result;
        self.drain_queue(DRAIN_PER_EVENT);
    }

    /// Tries to place up to `max` waiting tasks (after capacity came back),
    /// in queue order. A task whose user is at their in-flight quota keeps
    /// its place and does not count against `max`: it holds back nobody
    /// queued behind it (at most [`MAX_QUOTA_SKIPS`] are passed over per
    /// call; the sweep tries every task).
    fn drain_queue(&mut self, max: usize) {
        let mut take = Vec::with_capacity(max.min(self.waiting.len()));
        let mut skipped = 0;
        for (task, p) in self.waiting.iter() {
            if take.len() >= max || skipped > MAX_QUOTA_SKIPS {
                break;
            }
            if self.table.user_at_quota(&p.query) {
                skipped += 1;
                continue;
            }
            take.push(task);
        }
        for task in take {
            if let Some(p) = self.waiting.remove(task) {
                self.place(task, p, "waiting for capacity".into());
            }
        }
    }

    fn user(&mut self, name: &str) -> Rc<UserRecord> {
        if let Some(u) = self.users.get(name) {
            return u.clone();
        }
        let rec = Rc::new(UserRecord::new(name));
        if self.users.len() < MAX_USERS_CACHED {
            self.users.insert(name.to_owned(), rec.clone());
        }
        rec
    }

    /// The status reply: at most `max` workers listed (down ones only if
    /// `include_down`), the totals and counters over all of them.
    fn status(&self, now: Instant, include_down: bool, max: usize) -> StatusReply {
        let totals = self.table.totals();
        let listed = if max == 0 {
            Vec::new()
        } else {
            self.table.snapshot()
        };
        let workers = listed
            .into_iter()
            .filter(|s| include_down || s.state != ServerState::Down)
            .take(max)
            .map(|s| {
                let last = self
                    .workers
                    .get(&s.id)
                    .map(|l| now.saturating_duration_since(l.last_seen).as_millis() as u64)
                    .unwrap_or(u64::MAX);
                WorkerStatus {
                    name: s.record.name.clone(),
                    state: match s.state {
                        ServerState::Up => WorkerState::Up,
                        ServerState::Down => WorkerState::Down,
                        ServerState::Draining => WorkerState::Draining,
                    },
                    record: AttrRecord {
                        slots: s.record.slots,
                        slots_free: s.record.slots_free,
                        cores: s.record.cores,
                        power: s.record.power,
                        idle_power: s.record.idle_power,
                        mem: s.record.mem,
                        mem_free: s.record.mem_free,
                        load: s.record.load,
                        labels: s
                            .record
                            .labels
                            .iter()
                            .map(|(k, v)| attr_from_label(k, v))
                            .collect(),
                    },
                    apps: s.record.apps.clone(),
                    reserved_slots: s.reserved_slots,
                    reserved_cores: s.reserved_cores,
                    reserved_mem: s.reserved_mem,
                    last_report_ms: last,
                }
            })
            .collect();
        // Heard from: any frame of a worker (report, heartbeat, result).
        let stalest_report_ms = self
            .workers
            .iter()
            .filter(|(id, _)| {
                self.table
                    .state(**id)
                    .is_some_and(|s| s != ServerState::Down)
            })
            .map(|(_, l)| now.saturating_duration_since(l.last_seen).as_millis() as u64)
            .max()
            .unwrap_or(0);
        let st = &self.stats;
        StatusReply {
            distributor: self.cfg.name.clone(),
            workers,
            workers_total: totals.up + totals.draining + totals.down,
            workers_up: totals.up,
            stalest_report_ms,
            counters: DistributorCounters {
                submitted: st.submitted,
                completed: st.completed,
                refused: st.refused,
                refused_busy: st.refused_busy,
                retried: st.retried,
                no_match: st.no_match,
            },
            autoalloc: self.autoalloc.as_ref().map(|a| a.status(now)),
        }
    }
}

// ---------------------------------------------------------------- clients

impl State {
    fn client_frame(
        &mut self,
        out: &Rc<Outgoing>,
        c: &mut ClientSide,
        frame: Frame,
    ) -> Result<(), LinkError> {
        match frame.kind() {
            MessageKind::Submit => {
                let v = frame.validate::<Submit>()?;
                self.submit(out, c, &v)?;
            }
            MessageKind::StatusQuery => {
                let q = frame.validate::<StatusQuery>()?;
                let q = q.get();
                let max = (q.max_workers.to_native() as usize).min(MAX_STATUS_WORKERS);
                let mut reply = self.status(self.now, q.include_down, max);
                // Workers with many labels may still not fit in a frame:
                // list half as many until the reply fits.
                loop {
                    match push(&mut self.transmit, out, &reply, &Bytes::new()) {
                        Err(LinkFull::TooLarge) if !reply.workers.is_empty() => {
                            let half = reply.workers.len() / 2;
                            reply.workers.truncate(half);
                        }
                        r => break r?,
                    }
                }
            }
            MessageKind::ExplainQuery => {
                let v = frame.validate::<ExplainQuery>()?;
                let reply = self.explain(c, v.get());
                push(&mut self.transmit, out, &reply, &Bytes::new())?;
            }
            MessageKind::Cancel => {
                let v = frame.validate::<Cancel>()?;
                self.cancel(out, v.get().task_id.to_native());
            }
            MessageKind::JobSubmit => {
                let v = frame.validate::<allot_wire::JobSubmit>()?;
                self.job_submit(out, c, &v)?;
            }
            MessageKind::JobQuery => {
                let v = frame.validate::<allot_wire::JobQuery>()?;
                self.job_query(out, v.get())?;
            }
            MessageKind::WorkerControl => {
                let v = frame.validate::<allot_wire::WorkerControl>()?;
                self.worker_control(out, v.get())?;
            }
            other => {
                return Err(LinkError::Forbidden(format!(
                    "a client may not send {other:?}"
                )))
            }
        }
        Ok(())
    }

    fn submit(
        &mut self,
        out: &Rc<Outgoing>,
        c: &mut ClientSide,
        v: &allot_wire::Validated<Submit>,
    ) -> Result<(), LinkError> {
        let s = v.get();
        self.stats.submitted += 1;
        let received = self.now;
        let user = if s.user.is_empty() {
            c.cert_user.as_str()
        } else {
            s.user.as_str()
        };
        let client_task = s.task_id.to_native();
        let user_hash = if s.user.is_empty() {
            c.cert_user_hash
        } else {
            resubmit::name_hash(user)
        };
        let key = (user_hash, s.idempotency_key.to_native());
        if let Some(existing) = self.by_key.find(key) {
            // A resubmission (after a client failover) of a task we still
            // run or that still waits for capacity: answer the new link
            // when it ends. Looking through the waiting queue is linear,
            // but bounded by `max_pending` and done only for a key the
            // index knows and the running tasks do not hold.
            let held = match self.pending.get_mut(existing) {
                Some(p) => Some(p),
                None => match self.locating.get_mut(&existing) {
                    Some(p) => Some(p),
                    None => self.waiting.get_mut(existing),
                },
            };
            if let Some(p) = held.filter(|p| matches!(p.owner, Owner::Link { .. })) {
                p.owner = Owner::Link {
                    out: out.clone(),
                    task: client_task,
                };
                return Ok(());
            }
        }
        if self.draining.is_some() {
            // Not placed here: the client sends it to another member.
            let msg = format!(
                "distributor {} is draining: it takes no new tasks (submit to another member of set {})",
                self.cfg.name, self.cfg.set_name
            );
            let (status, refusal) = (TaskStatus::Refused, allot_wire::Refusal::Draining);
            return self.reply(out, client_task, status, refusal, msg);
        }
        let in_flight = self.pending.len() + self.waiting.len() + self.locating.len();
        if in_flight >= self.cfg.max_pending {
            let msg = format!("distributor overloaded: {in_flight} tasks in flight (limit)");
            return self.reply_error(out, client_task, TaskStatus::Error, msg);
        }
        let user_rec = self.user(user);
        let priority = (user_rec.priority, s.priority.to_native());
        let compiled = {
            let table = &self.table;
            c.shapes.get_or_compile(s, user, |shape: &Shape| {
                shape.compile(table, &user_rec, &c.attrs)
            })
        };
        let (query, app) = match compiled {
            Ok(hit) => hit,
            Err(e) => {
                let msg = format!("bad expression: {e}");
                return self.reply_error(out, client_task, TaskStatus::Error, msg);
            }
        };
        if let Some(a) = self.autoalloc.as_mut().filter(|a| !a.known(&query)) {
            a.note(&query, &Shape::of(s, user), &user_rec, &c.attrs);
        }
        let task = self.next_task;
        self.next_task += 1;
        let deadline_ms = s.deadline_ms.to_native();
        let p = Pending {
            owner: Owner::Link {
                out: out.clone(),
                task: client_task,
            },
            reservation: None,
            worker: ServerId(u32::MAX),
            attempts: 0,
            tried: Vec::new(),
            query,
            app,
            demands: allot_wire::Demands {
                cores: s.demands.cores.to_native(),
                mem: s.demands.mem.to_native(),
                slots: s.demands.slots.to_native(),
            },
            deadline: (deadline_ms > 0).then(|| received + Duration::from_millis(deadline_ms)),
            deadline_ms,
            payload: v.payload(),
            received,
            match_us: 0,
            key,
            priority,
            queued_at: None,
            for_alloc: false,
        };
        if let Some(d) = p.deadline {
            let d = d.max(self.last_deadline_check + DEADLINE_RESOLUTION);
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
        self.by_key.insert(key, task);
        if s.resubmit {
            // Sent again after its client lost another distributor: a
            // worker may run it or have run it already. Ask them first
            // (once the table has settled, so that workers that are still
            // re-registering after a restart are asked too).
            let k = TaskKey {
                user: key.0,
                key: key.1,
            };
            self.locating_keys.insert(k, task);
            self.locating.insert(task, p);
            self.ask.push((k, task));
            return Ok(());
        }
        self.place(task, p, String::new());
        Ok(())
    }

    fn reply_error(
        &mut self,
        out: &Rc<Outgoing>,
        client_task: u64,
        status: TaskStatus,
        message: String,
    ) -> Result<(), LinkError> {
        self.reply(out, client_task, status, allot_wire::Refusal::None, message)
    }

    /// Answers a submission at once, without placing it: an error, or a
    /// refusal such as [`Refusal::Draining`](allot_wire::Refusal::Draining).
    fn reply(
        &mut self,
        out: &Rc<Outgoing>,
        client_task: u64,
        status: TaskStatus,
        refusal: allot_wire::Refusal,
        message: String,
    ) -> Result<(), LinkError> {
        let r = TaskResult {
            task_id: client_task,
            status,
            refusal,
            worker: String::new(),
            distributor: self.cfg.name.clone(),
            attempts: 0,
            exit_code: 0,
            message,
            timings: Timings::default(),
        };
        push(&mut self.transmit, out, &r, &Bytes::new())?;
        Ok(())
    }

    /// Cancels the client's task `client_task` on link `out`: a waiting
    /// task is dropped, a running one is stopped on its worker; either way
    /// the client gets a `Cancelled` result. An unknown id (finished
    /// already) is ignored: its result is on its way.
    fn cancel(&mut self, out: &Rc<Outgoing>, client_task: u64) {
        let id = out.id();
        if let Some(task) = self
            .locating
            .iter()
            .find(|(_, p)| p.owner.is_link_task(id, client_task))
            .map(|(t, _)| *t)
        {
            if let Some(p) = self.locating.remove(&task) {
                self.locating_keys.remove(&TaskKey {
                    user: p.key.0,
                    key: p.key.1,
                });
                self.finish_error(p, TaskStatus::Cancelled, "cancelled by the client".into());
            }
            return;
        }
        let waiting = self
            .waiting
            .iter()
            .find(|(_, p)| p.owner.is_link_task(id, client_task))
            .map(|(t, _)| t);
        if let Some(task) = waiting {
            if let Some(p) = self.waiting.remove(task) {
                self.finish_error(p, TaskStatus::Cancelled, "cancelled by the client".into());
            }
            return;
        }
        let found = self
            .pending
            .iter()
            .find(|(_, p)| p.owner.is_link_task(id, client_task))
            .map(|(k, _)| k);
        if let Some(task) = found {
            if let Some(mut p) = self.pending.remove(task) {
                self.cancel_on_worker(task, &mut p);
                self.finish_error(p, TaskStatus::Cancelled, "cancelled by the client".into());
                // Its reservation is free: a waiting task may take it now.
                self.drain_queue(DRAIN_PER_EVENT);
            }
        }
    }

    fn explain(
        &mut self,
        c: &ClientSide,
        q: &allot_wire::message::ArchivedExplainQuery,
    ) -> ExplainReply {
        let user = if q.user.is_empty() {
            c.cert_user.as_str()
        } else {
            q.user.as_str()
        };
        let shape = Shape {
            app: q.app.as_str().to_owned(),
            require: q.require.as_str().to_owned(),
            prefer: q.prefer.as_str().to_owned(),
            user: user.to_owned(),
            demands: (
                q.demands.cores.to_native(),
                q.demands.mem.to_native(),
                q.demands.slots.to_native(),
            ),
            priority: 0,
        };
        let user_rec = self.user(user);
        match shape.compile(&self.table, &user_rec, &c.attrs) {
            Ok(query) => {
                let mut r = explain_reply(&self.table, &query);
                if let Some(a) = &self.autoalloc {
                    if r.matched == 0 && r.waitable == 0 && a.judge(&shape, &user_rec, &c.attrs) {
                        r.allocation = format!(
                            "waits for a worker from {}: {}",
                            a.backend,
                            a.policy.reason(self.now)
                        );
                    }
                }
                r
            }
            Err(e) => ExplainReply {
                total: self.table.len() as u32,
                matched: 0,
                best: String::new(),
                clauses: Vec::new(),
                nearest: Vec::new(),
                waitable: 0,
                error: e.to_string(),
                allocation: String::new(),
            },
        }
    }
}

fn explain_reply(table: &ServerTable, query: &Query) -> ExplainReply {
    // The worker a submission would get now: match, then give it back
    // and put the tie start back, so that asking does not move the next
    // placement off the worker named here.
    let start = table.tie_start();
    let best = match table.match_and_reserve(query, MatchMode::Exact) {
        Ok(r) => {
            let name = table.name(r.server).unwrap_or_default();
            table.release(&r);
            table.set_tie_start(start);
            name
        }
        Err(_) => String::new(),
    };
    let e = table.explain(query);
    ExplainReply {
        total: e.total,
        matched: e.matched,
        best,
        clauses: e
            .clauses
            .iter()
            .map(|c| ClauseCount {
                clause: c.clause.clone(),
                eliminated: c.eliminated,
            })
            .collect(),
        nearest: e
            .nearest
            .iter()
            .map(|n| NearMiss {
                worker: n.server.clone(),
                failed: n.failed.clone(),
            })
            .collect(),
        waitable: e.waitable,
        error: String::new(),
        allocation: String::new(),
    }
}

// ---------------------------------------------------------------- sweeps

impl State {
    /// Marks silent workers down, hands out completions, retries waiting
    /// tasks and fails those past their deadline.
    fn sweep(&mut self, now: Instant) {
        let limit = self.cfg.heartbeat_for(self.workers.len()) * self.cfg.missed_heartbeats;
        // A worker is marked down only after `limit` of silence since its
        // last frame; a restarted distributor knows only workers that have
        // registered since, so nobody is marked down on a restart.
        let silent: Vec<ServerId> = self
            .workers
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_seen) > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            if self.table.state(id) == Some(ServerState::Up) {
                tracing::warn!(
                    worker = id.0,
                    "missed {} heartbeats; marked down",
                    self.cfg.missed_heartbeats
                );
                let _ = self.table.set_state(id, ServerState::Down);
                self.member_event = true;
            }
        }
        if now.saturating_duration_since(self.last_flush) >= COMPLETION_FLUSH
            && !self.completions.is_empty()
        {
            self.last_flush = now;
            let batch = std::mem::take(&mut self.completions);
            match &mut self.flushed {
                // The shell has not taken the last batch yet: add to it up
                // to the same bound (past it the statistics are a sample).
                Some(prev) => {
                    let room = MAX_COMPLETIONS_BUFFERED.saturating_sub(prev.len());
                    prev.extend(batch.into_iter().take(room));
                }
                None => self.flushed = Some(batch),
            }
        }
        // Waiting tasks: retry all (deltas and registrations may have added
        // capacity), then fail those past their deadline.
        self.drain_queue(usize::MAX);
        if self.autoalloc.is_some() {
            let n = self.waiting.iter().filter(|(_, p)| p.for_alloc).count();
            if let Some(a) = self.autoalloc.as_mut() {
                a.policy.tick(now, u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        self.jobs.expire(now);
        self.by_key.expire(now);
        self.expire_deadlines(now);
    }

    /// Fails the tasks whose deadline passed (a placed one is stopped on
    /// its worker) and finds the next deadline.
    fn expire_deadlines(&mut self, now: Instant) {
        self.last_deadline_check = now;
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(t, _)| t)
            .collect();
        for task in late {
            if let Some(p) = self.waiting.remove(task) {
                let ms = p.deadline_ms;
                self.finish_error(
                    p,
                    TaskStatus::Timeout,
                    format!("deadline of {ms} ms passed while waiting for capacity"),
                );
            }
        }
        let expired = self
            .pending
            .ids_where(|p| p.deadline.is_some_and(|d| d <= now));
        for task in expired {
            if let Some(mut p) = self.pending.remove(task) {
                self.cancel_on_worker(task, &mut p);
                let ms = p.deadline_ms;
                self.finish_error(
                    p,
                    TaskStatus::Timeout,
                    format!("deadline of {ms} ms passed"),
                );
            }
        }
        self.next_deadline = self
            .pending
            .iter()
            .map(|(_, p)| p)
            .chain(self.waiting.iter().map(|(_, p)| p))
            .filter_map(|p| p.deadline)
            .min()
            .map(|d| d.max(now + DEADLINE_RESOLUTION));
    }
}

// ---------------------------------------------------------------- jobs

impl State {
    /// Starts job tasks while the window has room and a job has one. A
    /// draining distributor starts none: its jobs stay in the journal, and
    /// go on when it starts again.
    fn feed_jobs(&mut self) {
        if self.draining.is_some() {
            return;
        }
        while let Some(start) = self.jobs.start_next(self.now) {
            self.start_job_task(start);
        }
    }

    fn start_job_task(&mut self, start: Start) {
        let Start {
            num,
            offset,
            index,
            id,
            attempts,
            locate,
            query,
            app,
            payload,
            demands,
            deadline_ms,
            key,
            priority,
        } = start;
        let query = match query {
            Ok(q) => q,
            Err(e) => {
                let end = Ending {
                    status: TaskStatus::Error,
                    attempts,
                    exit_code: 0,
                    worker: "",
                    message: &e,
                    output: &Bytes::new(),
                };
                self.jobs.ended(self.now, num, offset, end);
                return;
            }
        };
        // A job's task is received when it starts here (the job's
        // acceptance received none of them yet).
        self.stats.submitted += 1;
        let task = self.next_task;
        self.next_task += 1;
        self.jobs.placed(num, offset, task, None);
        let p = Pending {
            owner: Owner::Job {
                num,
                offset,
                index,
                id,
            },
            reservation: None,
            worker: ServerId(u32::MAX),
            attempts,
            tried: Vec::new(),
            query,
            app,
            demands,
            deadline: (deadline_ms > 0).then(|| self.now + Duration::from_millis(deadline_ms)),
            deadline_ms,
            payload,
            received: self.now,
            match_us: 0,
            key,
            priority,
            queued_at: None,
            for_alloc: false,
        };
        if let Some(d) = p.deadline {
            let d = d.max(self.last_deadline_check + DEADLINE_RESOLUTION);
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
        if locate {
            // It was running when this distributor stopped: a worker may
            // run it still or hold its result. Ask them first.
            let k = TaskKey {
                user: key.0,
                key: key.1,
            };
            self.locating_keys.insert(k, task);
            self.locating.insert(task, p);
            self.ask.push((k, task));
            return;
        }
        self.place(task, p, String::new());
    }

    /// Answers the submits of the jobs in `created` (their creation is
    /// written, or with `error` could not be).
    fn send_acks(&mut self, created: &[u64], error: Option<String>) {
        if created.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.acks);
        for (num, out, request) in acks {
            if !created.contains(&num) {
                self.acks.push((num, out, request));
                continue;
            }
            let ack = match (&error, self.jobs.ack_of(num)) {
                (None, Some((job, tasks))) => allot_wire::JobAck {
                    request,
                    job,
                    tasks,
                    distributor: self.cfg.name.clone(),
                    error: String::new(),
                },
                (e, _) => allot_wire::JobAck {
                    request,
                    job: String::new(),
                    tasks: 0,
                    distributor: self.cfg.name.clone(),
                    error: format!(
                        "the job could not be made durable: {}",
                        e.as_deref().unwrap_or("the journal failed")
                    ),
                },
            };
            if let Err(e) = push(&mut self.transmit, &out, &ack, &Bytes::new()) {
                tracing::warn!(job = num, "job ack not delivered: {e}");
            }
        }
    }

    fn job_submit(
        &mut self,
        out: &Rc<Outgoing>,
        c: &ClientSide,
        v: &allot_wire::Validated<allot_wire::JobSubmit>,
    ) -> Result<(), LinkError> {
        let s = v.get();
        let request = s.request.to_native();
        if self.draining.is_some() {
            let ack = allot_wire::JobAck {
                request,
                job: String::new(),
                tasks: 0,
                distributor: self.cfg.name.clone(),
                error: format!(
                    "distributor {} is draining and takes no new job; submit again through the gateways (they send new clients to the other members)",
                    self.cfg.name
                ),
            };
            push(&mut self.transmit, out, &ack, &Bytes::new())?;
            return Ok(());
        }
        let user = if s.user.is_empty() {
            c.cert_user.clone()
        } else {
            s.user.as_str().to_owned()
        };
        let user_rec = self.user(&user);
        let shape = Shape {
            app: s.app.as_str().to_owned(),
            require: s.require.as_str().to_owned(),
            prefer: s.prefer.as_str().to_owned(),
            user: user.clone(),
            demands: (
                s.demands.cores.to_native(),
                s.demands.mem.to_native(),
                s.demands.slots.to_native(),
            ),
            priority: s.priority.to_native(),
        };
        let table = &self.table;
        let alloc = &mut self.autoalloc;
        let accepted = self.jobs.accept(
            self.now,
            s,
            &v.payload(),
            &user,
            user_rec.priority,
            &c.attrs,
            || {
                let q = Rc::new(
                    shape
                        .compile(table, &user_rec, &c.attrs)
                        .map_err(|e| e.to_string())?,
                );
                if let Some(a) = alloc {
                    a.note(&q, &shape, &user_rec, &c.attrs);
                }
                Ok((q, Rc::from(s.app.as_str())))
            },
        );
        match accepted {
            Ok((num, tasks)) => {
                tracing::info!(job = num, tasks, user = %user, "job accepted; acknowledged once journaled");
                self.acks.push((num, out.clone(), request));
            }
            Err(error) => {
                let ack = allot_wire::JobAck {
                    request,
                    job: String::new(),
                    tasks: 0,
                    distributor: self.cfg.name.clone(),
                    error,
                };
                push(&mut self.transmit, out, &ack, &Bytes::new())?;
            }
        }
        Ok(())
    }

    fn job_query(
        &mut self,
        out: &Rc<Outgoing>,
        q: &allot_wire::message::ArchivedJobQuery,
    ) -> Result<(), LinkError> {
        let (table, alloc, now) = (&self.table, &self.autoalloc, self.now);
        let (mut reply, stop) = self.jobs.query(self.now, q, |query| {
            let explain = table.explain(query);
            match alloc {
                Some(a) if explain.waitable == 0 && a.could_take(query) => format!(
                    "waits for a worker from {}: {}",
                    a.backend,
                    a.policy.reason(now)
                ),
                _ => format!("waits for a worker: {explain}"),
            }
        });
        if !stop.is_empty() {
            for task in stop {
                self.cancel_core_task(task);
            }
            self.drain_queue(DRAIN_PER_EVENT);
            if let Some(j) = reply.jobs.first_mut() {
                if let Some(now) = self.jobs.summary_of(&j.job) {
                    *j = now;
                }
            }
        }
        push(&mut self.transmit, out, &reply, &Bytes::new())?;
        Ok(())
    }

    /// Ends the core's task `task` as cancelled, wherever it is: waiting,
    /// being located, or on a worker (which is told to stop it).
    fn cancel_core_task(&mut self, task: u64) {
        const WHY: &str = "cancelled";
        if let Some(mut p) = self.pending.remove(task) {
            self.cancel_on_worker(task, &mut p);
            self.finish_error(p, TaskStatus::Cancelled, WHY.into());
        } else if let Some(p) = self.locating.remove(&task) {
            self.locating_keys.remove(&TaskKey {
                user: p.key.0,
                key: p.key.1,
            });
            self.finish_error(p, TaskStatus::Cancelled, WHY.into());
        } else if let Some(p) = self.waiting.remove(task) {
            self.finish_error(p, TaskStatus::Cancelled, WHY.into());
        }
    }
}
