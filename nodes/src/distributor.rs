//! The distributor (second tier): holds the server table, matches each task
//! against the workers' live attributes, forwards it, and returns the result.
//!
//! Everything a task touches on its way through happens synchronously in
//! the reader loop of the stream it arrived on: validate the `Submit` in
//! place, look up (or compile and cache) its query, match and reserve, and
//! encode the `Assign` into the chosen worker's outbox with the payload
//! passed by reference. No task is spawned, no channel crossed, no lock
//! taken per task. The result path is the mirror image.
//!
//! Bounds: at most [`DistributorConfig::max_pending`] tasks in flight (a
//! submit beyond it is answered at once with `Overloaded`); at most
//! [`QUERY_CACHE`] compiled query shapes per client stream (cleared when
//! full); outboxes are bounded by [`crate::conn::OUTBOX_LIMIT`].

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_engine::{
    Change, Env, LabelValue, MatchMode, Query, Reservation, ServerId, ServerRecord, ServerState,
    ServerTable, Store, TableConfig, TaskAttrs, UserRecord,
};
use allot_wire::message::{ArchivedAttrChange, ArchivedTaskStatus, ArchivedWorkerState};
use allot_wire::{
    AttrDelta, AttrRecord, ClauseCount, ErrorCode, ExplainQuery, ExplainReply, Frame, Heartbeat,
    MessageKind, NearMiss, Register, RegisterAck, Role, StatusQuery, StatusReply, Submit,
    TaskResult, TaskStatus, Timings, WorkerState, WorkerStatus,
};
use bytes::Bytes;

use crate::conn::{self, ConnError, Outbox, Stream};
use crate::inflight::InFlight;
use crate::labels::{attr_from_label, label_from_archived};
use crate::pki::Pki;
use crate::resubmit::{self, ResubmitIndex};
use crate::transport;

/// Maps keyed by small ids on the hot path: Fx hashing instead of SipHash
/// (the keys are ours, not an attacker's choice of strings).
type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Compiled query shapes cached per client stream.
pub const QUERY_CACHE: usize = 1024;

/// Tables up to this many servers are matched without timing the match
/// (one 64-row block: well under a microsecond, less than the two clock
/// reads timing it would cost).
pub const UNTIMED_MATCH_ROWS: usize = 64;

/// Task completions buffered for the task-class DB between flushes (once a
/// second). Beyond it completions are not recorded until the next flush:
/// under heavy load the runtime statistics are a sample, and the hot path
/// never waits for the store.
pub const MAX_COMPLETIONS_BUFFERED: usize = 65_536;

fn release(table: &ServerTable, r: &mut Option<Reservation>) {
    if let Some(r) = r.take() {
        table.release(&r);
    }
}

/// How a distributor is set up.
#[derive(Debug, Clone)]
pub struct DistributorConfig {
    /// Node name (its certificate's name in the PKI directory).
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PKI directory.
    pub pki: PathBuf,
    /// The name of its distributor set.
    pub set_name: String,
    /// The other members of its set.
    pub peers: Vec<SocketAddr>,
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
}

impl DistributorConfig {
    /// Defaults for everything but the identity and addresses.
    pub fn new(name: &str, listen: SocketAddr, pki: PathBuf, data_dir: PathBuf) -> Self {
        DistributorConfig {
            name: name.to_owned(),
            listen,
            pki,
            set_name: "default".into(),
            peers: Vec::new(),
            data_dir,
            users_file: None,
            heartbeat: Duration::from_millis(1000),
            missed_heartbeats: 3,
            max_attempts: 3,
            max_pending: 1 << 20,
            match_mode: MatchMode::Exact,
            table_capacity: 1 << 16,
            queue_timeout: Duration::from_secs(60),
        }
    }

    /// The heartbeat period for `workers` registered workers: stretched by
    /// one period per thousand workers, so liveness traffic stays bounded as
    /// the cluster grows (Nomad and Dask do the same).
    pub fn heartbeat_for(&self, workers: usize) -> Duration {
        self.heartbeat * (1 + (workers / 1000) as u32)
    }
}

/// Errors starting a distributor.
#[derive(Debug, thiserror::Error)]
pub enum DistributorError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// The engine refused the configuration.
    #[error("{0}")]
    Engine(#[from] allot_engine::EngineError),
    /// The user and task-class store could not be opened.
    #[error("{0}")]
    Store(String),
    /// The runtime could not start.
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    /// The users file is wrong.
    #[error("{path}: {message}")]
    Users {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

struct WorkerLink {
    name: String,
    out: Rc<Outbox>,
    last_seen: Instant,
    /// Identifies the connection, so that a stale link's end does not
    /// remove a newer one after a reconnect.
    link: u64,
}

struct Pending {
    client: Rc<Outbox>,
    client_task: u64,
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
    queued_at: Option<Instant>,
}

struct State {
    cfg: DistributorConfig,
    table: ServerTable,
    store: Store,
    users: HashMap<String, Rc<UserRecord>>,
    completions: Vec<(Rc<str>, Duration, bool)>,
    links: FxMap<ServerId, WorkerLink>,
    /// Placed tasks by id (ids are sequential: see [`InFlight`]).
    pending: InFlight<Pending>,
    /// Tasks waiting for capacity, oldest first. Together with `pending`
    /// bounded by `max_pending`.
    waiting: VecDeque<(u64, Pending)>,
    /// Finds a task again when its client resubmits it; kept only while a
    /// client that reconnected may resubmit (see [`ResubmitIndex`]).
    by_key: ResubmitIndex<Outbox>,
    next_task: u64,
    next_link: u64,
    started: Instant,
    last_flush: Instant,
    stats: Stats,
    /// When the frames being handled arrived: read once per network read
    /// (see [`read_loop`]), not once per frame, since a burst of frames
    /// arrives together and a clock read costs as much as a hash lookup.
    now: Instant,
    /// Reused for every `Assign` and `TaskResult` this distributor sends,
    /// so that the strings in them (app, worker and distributor names)
    /// keep their buffers: no allocation per task in steady state.
    assign: allot_wire::Assign,
    result: TaskResult,
}

/// Counters a distributor keeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Tasks received.
    pub submitted: u64,
    /// Results returned to clients.
    pub completed: u64,
    /// Placements refused by workers.
    pub refused: u64,
    /// Tasks retried after a worker was lost or refused.
    pub retried: u64,
    /// Tasks that could not be placed.
    pub no_match: u64,
}

type Shared = Rc<RefCell<State>>;

/// A running distributor (on its own thread and runtime).
pub type DistributorHandle = crate::node_thread::NodeHandle;

/// Starts a distributor on a thread of its own with a current-thread
/// runtime; returns once it listens.
pub fn spawn(cfg: DistributorConfig) -> Result<DistributorHandle, DistributorError> {
    crate::node_thread::spawn_node(format!("dist-{}", cfg.name), move |stop| async move {
        let (ep, state) = setup(cfg)?;
        let addr = ep.local_addr()?;
        Ok((addr, serve(ep, state, stop)))
    })
}

/// Runs a distributor on the current (current-thread) runtime until
/// `shutdown` resolves. Must be called inside a `LocalSet`.
pub async fn run(
    cfg: DistributorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DistributorError> {
    let (ep, state) = setup(cfg)?;
    tracing::info!(addr = %ep.local_addr()?, "distributor listening");
    serve(ep, state, shutdown).await;
    Ok(())
}

fn setup(cfg: DistributorConfig) -> Result<(quinn::Endpoint, Shared), DistributorError> {
    let pki = Pki::load(&cfg.pki, &cfg.name)?;
    let ep = transport::endpoint(&pki, cfg.listen)?;
    let store = Store::open(&cfg.data_dir).map_err(|e| DistributorError::Store(e.to_string()))?;
    if let Some(path) = &cfg.users_file {
        for u in crate::users::load_users_file(path).map_err(|message| DistributorError::Users {
            path: path.display().to_string(),
            message,
        })? {
            store
                .users()
                .put(&u)
                .map_err(|e| DistributorError::Store(e.to_string()))?;
        }
    }
    let table = ServerTable::new(TableConfig {
        capacity: cfg.table_capacity,
        ..TableConfig::default()
    })?;
    let name = cfg.name.clone();
    let max_pending = cfg.max_pending;
    let state = Rc::new(RefCell::new(State {
        cfg,
        table,
        store,
        users: HashMap::new(),
        completions: Vec::new(),
        links: FxMap::default(),
        pending: InFlight::new(1024, max_pending.saturating_mul(2)),
        waiting: VecDeque::new(),
        by_key: ResubmitIndex::new(),
        next_task: 1,
        next_link: 1,
        started: Instant::now(),
        last_flush: Instant::now(),
        stats: Stats::default(),
        now: Instant::now(),
        assign: allot_wire::Assign {
            task_id: 0,
            reservation: 0,
            app: String::new(),
            demands: allot_wire::Demands::default(),
            deadline_ms: 0,
            attempt: 0,
        },
        result: TaskResult {
            task_id: 0,
            status: TaskStatus::Ok,
            worker: String::new(),
            distributor: name,
            attempts: 0,
            exit_code: 0,
            message: String::new(),
            timings: Timings::default(),
        },
    }));
    Ok((ep, state))
}

async fn serve(
    ep: quinn::Endpoint,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let sweeper = tokio::task::spawn_local(sweep_loop(state.clone()));
    let accept = async {
        while let Some(incoming) = ep.accept().await {
            let state = state.clone();
            tokio::task::spawn_local(async move {
                match incoming.await {
                    Ok(conn) => serve_connection(conn, state).await,
                    Err(e) => tracing::warn!("rejected connection: {e}"),
                }
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
    sweeper.abort();
    ep.close(
        transport::codes::varint(ErrorCode::Unavailable),
        b"distributor stopping",
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), ep.wait_idle()).await;
}

async fn serve_connection(conn: quinn::Connection, state: Shared) {
    let me = {
        let st = state.borrow();
        conn::hello(Role::Distributor, &st.cfg.name, Vec::new())
    };
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let state = state.clone();
        let conn = conn.clone();
        let me = me.clone();
        tokio::task::spawn_local(async move {
            match conn::accept(&conn, send, recv, &me).await {
                Ok(stream) => serve_stream(stream, state).await,
                Err(e) => tracing::warn!(peer = %conn.remote_address(), "stream refused: {e}"),
            }
        });
    }
}

async fn serve_stream(stream: Stream, state: Shared) {
    match stream.peer_role {
        Role::Worker => serve_worker(stream, state).await,
        Role::Client => serve_client(stream, state).await,
        // Gateways keep a stream open to watch our liveness; distributor
        // peers likewise. They send nothing else.
        _ => {
            let Stream {
                mut reader, out, ..
            } = stream;
            if let Ok(Some(f)) = reader.next().await {
                conn::refuse(
                    &out,
                    &mut reader,
                    ErrorCode::Forbidden,
                    format!("{:?} not accepted from this role", f.kind()),
                );
            }
        }
    }
}

/// The per-stream read loop shared by worker and client streams: frames are
/// handled synchronously as they come; a bad frame resets the stream.
async fn read_loop(
    mut stream: Stream,
    state: &Shared,
    mut handle: impl FnMut(&Shared, &Rc<Outbox>, Frame) -> Result<(), ConnError>,
) {
    let mut arrived = Instant::now();
    loop {
        // Frames already buffered are handled with the clock of the read
        // that brought them; a read that had to wait refreshes it.
        let next = stream.reader.next_stamped(&mut arrived).await;
        state.borrow_mut().now = arrived;
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(ConnError::Frame(e)) => {
                conn::refuse(&stream.out, &mut stream.reader, e.code(), e.to_string());
                break;
            }
            Err(_) => break,
        };
        if let Err(e) = handle(state, &stream.out, frame) {
            let code = match &e {
                ConnError::Frame(f) => f.code(),
                ConnError::Forbidden(_) => ErrorCode::Forbidden,
                _ => ErrorCode::Protocol,
            };
            conn::refuse(&stream.out, &mut stream.reader, code, e.to_string());
            break;
        }
    }
    stream.out.close();
}

// ---------------------------------------------------------------- workers

async fn serve_worker(stream: Stream, state: Shared) {
    let peer = stream.peer_name.clone();
    let link = {
        let mut st = state.borrow_mut();
        st.next_link += 1;
        st.next_link
    };
    let mut registered: Option<ServerId> = None;
    read_loop(stream, &state, |state, out, frame| {
        let mut st = state.borrow_mut();
        match frame.kind() {
            MessageKind::Register => {
                let reg = frame.validate::<Register>()?;
                let r = reg.get();
                // A worker certificate named N registers N, or N/... for
                // workers an agent multiplexes over its connection.
                let name = r.name.as_str();
                let owned = name == peer
                    || name
                        .strip_prefix(peer.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'));
                if !owned {
                    return Err(ConnError::Forbidden(format!(
                        "worker certificate `{peer}` registers as `{}`",
                        r.name
                    )));
                }
                let id = st.register(r, out.clone(), link)?;
                registered = Some(id);
                let ack = RegisterAck {
                    worker_id: u64::from(id.0),
                    heartbeat_ms: st.cfg.heartbeat_for(st.links.len()).as_millis() as u32,
                    distributor: st.cfg.name.clone(),
                };
                out.send(&ack, &Bytes::new())?;
            }
            MessageKind::AttrDelta => {
                let d = frame.validate::<AttrDelta>()?;
                let id = registered
                    .ok_or_else(|| ConnError::Forbidden("delta before Register".into()))?;
                st.apply_delta(id, d.get());
                // A report may have freed capacity for waiting tasks.
                st.drain_queue(16);
            }
            MessageKind::Heartbeat => {
                let _ = frame.validate::<Heartbeat>()?;
                if let Some(id) = registered {
                    st.seen(id);
                }
            }
            MessageKind::TaskResult => {
                let r = frame.validate::<TaskResult>()?;
                if let Some(id) = registered {
                    st.seen(id);
                }
                st.on_result(r.get(), r.payload());
            }
            other => {
                return Err(ConnError::Forbidden(format!(
                    "a worker may not send {other:?}"
                )));
            }
        }
        Ok(())
    })
    .await;
    if let Some(id) = registered {
        state.borrow_mut().worker_lost(id, link);
    }
}

impl State {
    fn register(
        &mut self,
        r: &allot_wire::message::ArchivedRegister,
        out: Rc<Outbox>,
        link: u64,
    ) -> Result<ServerId, ConnError> {
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
        // A re-registration replaces the row: tasks placed on the old row
        // are retried (the worker restarted and lost them) unless this is the
        // same incarnation reconnecting.
        if let Some(old) = self.table.lookup(&record.name) {
            self.retry_tasks_on(old, "worker re-registered");
        }
        let id = self
            .table
            .insert(record)
            .map_err(|e| ConnError::Forbidden(format!("cannot register: {e}")))?;
        self.links.insert(
            id,
            WorkerLink {
                name: r.name.as_str().to_owned(),
                out,
                last_seen: Instant::now(),
                link,
            },
        );
        tracing::info!(worker = %r.name, id = id.0, "worker registered");
        Ok(id)
    }

    fn seen(&mut self, id: ServerId) {
        if let Some(l) = self.links.get_mut(&id) {
            l.last_seen = self.now;
            if self.table.state(id) == Some(ServerState::Down) {
                let _ = self.table.set_state(id, ServerState::Up);
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
        if let Err(e) = self.table.apply_delta(id, d.seq.to_native(), &changes) {
            tracing::warn!("delta from worker {} not applied: {e}", id.0);
        }
        if let Some(s) = new_state {
            let _ = self.table.set_state(id, s);
        }
    }

    fn worker_lost(&mut self, id: ServerId, link: u64) {
        if self.links.get(&id).map(|l| l.link) != Some(link) {
            return; // a newer connection of the same worker took over
        }
        if let Some(l) = self.links.remove(&id) {
            tracing::warn!(worker = %l.name, "worker connection lost; marked down");
        }
        let _ = self.table.set_state(id, ServerState::Down);
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
                self.place(task, p, why);
            }
        }
    }

    /// Places (or re-places) a pending task, excluding workers already
    /// tried; on failure answers the client.
    fn place(&mut self, task: u64, mut p: Pending, last_error: &str) {
        if p.attempts >= self.cfg.max_attempts {
            let msg = format!("gave up after {} attempts: {last_error}", p.attempts);
            self.finish_error(p, TaskStatus::Error, msg);
            return;
        }
        // Matching is timed only where it can take a microsecond: a table
        // of one block (64 servers) is scanned in well under one, and two
        // clock reads would cost more than the match (reported as 0 us).
        let t0 = (self.table.len() > UNTIMED_MATCH_ROWS).then(Instant::now);
        let res = self
            .table
            .match_and_reserve_excluding(&p.query, self.cfg.match_mode, &p.tried);
        if let Some(t0) = t0 {
            p.match_us += t0.elapsed().as_micros() as u64;
        }
        match res {
            Ok(reservation) => {
                p.attempts += 1;
                p.worker = reservation.server;
                let Some(link) = self.links.get(&reservation.server) else {
                    // In the table but not connected here (e.g. just lost):
                    // exclude it and try again.
                    self.table.release(&reservation);
                    p.tried.push(reservation.server);
                    p.attempts -= 1;
                    self.place(task, p, "worker not connected");
                    return;
                };
                let assign = &mut self.assign;
                assign.task_id = task;
                assign.reservation = task;
                assign.app.clear();
                assign.app.push_str(&p.app);
                assign.demands = p.demands;
                assign.deadline_ms = p.deadline_ms;
                assign.attempt = p.attempts;
                match link.out.send(&*assign, &p.payload) {
                    Ok(()) => {
                        p.reservation = Some(reservation);
                        self.pending.insert(task, p);
                    }
                    Err(e) => {
                        self.table.release(&reservation);
                        p.tried.push(reservation.server);
                        self.place(task, p, &format!("worker unreachable: {e}"));
                    }
                }
            }
            Err(no_match) => {
                let waited = p.queued_at.map(|t| t.elapsed()).unwrap_or_default();
                if is_transient(&no_match.explain) && waited < self.cfg.queue_timeout {
                    // Some worker would take it but is busy (or down for the
                    // moment): wait for capacity instead of failing.
                    p.queued_at.get_or_insert_with(Instant::now);
                    self.waiting.push_back((task, p));
                    return;
                }
                self.stats.no_match += 1;
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
        }
    }

    fn finish_error(&mut self, p: Pending, status: TaskStatus, message: String) {
        self.by_key.remove(p.key);
        let result = TaskResult {
            task_id: p.client_task,
            status,
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
        self.stats.completed += 1;
        let _ = p.client.send(&result, &Bytes::new());
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
            let _ = self.table.mark_full(p.worker);
            let reason = r.message.as_str();
            if reason.starts_with("does not run app") || reason.starts_with("draining") {
                // It will not take this task at all: try the others.
                p.tried.push(p.worker);
            } else {
                // Out of capacity for now: the placement did not run, so it
                // is not an attempt; the task waits for capacity (the worker
                // stays a candidate once its next report frees it).
                p.attempts = p.attempts.saturating_sub(1);
            }
            let why = format!("refused by {}: {}", r.worker, r.message);
            self.place(task, p, &why);
            return;
        }
        self.by_key.remove(p.key);
        let status = crate::labels::status_from_archived(&r.status);
        if self.completions.len() < MAX_COMPLETIONS_BUFFERED {
            self.completions.push((
                p.app.clone(),
                Duration::from_micros(r.timings.ran_us.to_native()),
                status == TaskStatus::Ok,
            ));
        }
        let result = &mut self.result;
        result.task_id = p.client_task;
        result.status = status;
        result.worker.clear();
        match self.links.get(&p.worker) {
            Some(l) => result.worker.push_str(&l.name),
            None => result.worker.push_str(r.worker.as_str()),
        }
        result.attempts = p.attempts;
        result.exit_code = r.exit_code.to_native();
        result.message.clear();
        result.message.push_str(r.message.as_str());
        result.timings = Timings {
            queued_us: self.now.duration_since(p.received).as_micros() as u64,
            matched_us: p.match_us,
            ran_us: r.timings.ran_us.to_native(),
        };
        self.stats.completed += 1;
        let _ = p.client.send(&*result, &output);
        self.drain_queue(16);
    }

    /// Tries to place up to `max` waiting tasks (after capacity came back).
    fn drain_queue(&mut self, max: usize) {
        let n = self.waiting.len().min(max);
        for _ in 0..n {
            if let Some((task, p)) = self.waiting.pop_front() {
                self.place(task, p, "waiting for capacity");
            }
        }
    }

    fn user(&mut self, name: &str) -> Rc<UserRecord> {
        if let Some(u) = self.users.get(name) {
            return u.clone();
        }
        let rec = match self.store.users().get(name) {
            Ok(Some(u)) => u,
            Ok(None) => UserRecord::new(name),
            Err(e) => {
                tracing::error!("user DB read failed for {name}: {e}");
                UserRecord::new(name)
            }
        };
        let rec = Rc::new(rec);
        if self.users.len() < 100_000 {
            self.users.insert(name.to_owned(), rec.clone());
        }
        rec
    }

    fn status(&self) -> StatusReply {
        let now = Instant::now();
        let workers = self
            .table
            .snapshot()
            .into_iter()
            .map(|s| {
                let last = self
                    .links
                    .get(&s.id)
                    .map(|l| now.duration_since(l.last_seen).as_millis() as u64)
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
        StatusReply {
            distributor: self.cfg.name.clone(),
            workers,
        }
    }
}

/// Whether a task that matched nowhere should wait for capacity: some
/// server fails it only on free capacity, the up state or the user's quota,
/// counted over the whole table (`Explain::waitable`; judging by the few
/// nearest misses shown, a busy server ranked behind servers that can never
/// run the task made the task fail at once instead of waiting).
fn is_transient(e: &allot_engine::Explain) -> bool {
    e.waitable > 0
}

// ---------------------------------------------------------------- clients

/// What identifies a query shape on one client stream (client attributes
/// are fixed per stream).
#[derive(Hash, PartialEq, Eq)]
struct Shape {
    app: String,
    require: String,
    prefer: String,
    user: String,
    demands: (u32, u64, u32),
    priority: i32,
}

fn client_env(hello: &allot_wire::message::ArchivedHello) -> Vec<(String, LabelValue)> {
    hello
        .attrs
        .iter()
        .filter_map(|a| Some((a.key.as_str().to_owned(), label_from_archived(&a.value)?)))
        .collect()
}

/// Hashes what identifies a query shape straight from the archived
/// submit, so a cache hit allocates nothing.
fn shape_hash(s: &allot_wire::message::ArchivedSubmit, user: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    s.app.as_str().hash(&mut h);
    s.require.as_str().hash(&mut h);
    s.prefer.as_str().hash(&mut h);
    user.hash(&mut h);
    s.demands.cores.to_native().hash(&mut h);
    s.demands.mem.to_native().hash(&mut h);
    s.demands.slots.to_native().hash(&mut h);
    s.priority.to_native().hash(&mut h);
    h.finish()
}

impl Shape {
    /// Whether this shape is the one of `s` (a hash hit is verified).
    fn is(&self, s: &allot_wire::message::ArchivedSubmit, user: &str) -> bool {
        self.app == s.app.as_str()
            && self.require == s.require.as_str()
            && self.prefer == s.prefer.as_str()
            && self.user == user
            && self.demands
                == (
                    s.demands.cores.to_native(),
                    s.demands.mem.to_native(),
                    s.demands.slots.to_native(),
                )
            && self.priority == s.priority.to_native()
    }
}

fn shape_of(s: &allot_wire::message::ArchivedSubmit, user: &str) -> Shape {
    Shape {
        app: s.app.as_str().to_owned(),
        require: s.require.as_str().to_owned(),
        prefer: s.prefer.as_str().to_owned(),
        user: user.to_owned(),
        demands: (
            s.demands.cores.to_native(),
            s.demands.mem.to_native(),
            s.demands.slots.to_native(),
        ),
        priority: s.priority.to_native(),
    }
}

/// Compiles a task shape for one client stream (whose attributes are
/// `client`), with the user's defaults filled in.
fn compile_for(
    st: &mut State,
    client: &[(String, LabelValue)],
    shape: &Shape,
) -> Result<Query, allot_engine::ExprError> {
    let Shape {
        app,
        require,
        prefer,
        user,
        demands,
        priority,
    } = shape;
    let (demands, priority) = (*demands, *priority);
    let user_rec = st.user(user);
    let require = if require.is_empty() {
        user_rec.default_require.as_str()
    } else {
        require
    };
    // A demand no worker could meet even when idle is a static clause of
    // its own, so the task fails at once (and explain names it) instead of
    // waiting for capacity that can never come.
    let mut clauses: Vec<String> = Vec::new();
    if demands.0 > 0 {
        clauses.push(format!("server.cores >= {}", demands.0));
    }
    if demands.1 > 0 {
        clauses.push(format!("server.mem >= {}", demands.1));
    }
    if require.contains("||") {
        // Keep the user's disjunction together.
        clauses.push(format!("({require})"));
    } else if !require.trim().is_empty() {
        // Every other operator binds tighter than `&&`: joining keeps the
        // user's clauses as they were written, for explain.
        clauses.push(require.to_owned());
    }
    let full = clauses.join(" && ");
    let require = full.as_str();
    let prefer = if prefer.is_empty() {
        user_rec.default_prefer.as_str()
    } else {
        prefer
    };
    let env = Env {
        task: TaskAttrs {
            app: app.to_owned(),
            cores: demands.0,
            mem: demands.1,
            // Every task holds at least one slot while it runs.
            slots: demands.2.max(1),
            priority,
            extra: Vec::new(),
        },
        user: (*user_rec).clone(),
        client: client.to_vec(),
    };
    st.table.compile(require, prefer, &env)
}

async fn serve_client(stream: Stream, state: Shared) {
    let client_attrs = client_env(stream.hello.get());
    let cert_user = stream.peer_name.clone();
    let cert_user_hash = resubmit::name_hash(&cert_user);
    {
        let mut guard = state.borrow_mut();
        let st = &mut *guard;
        if st
            .by_key
            .stream_opened(&cert_user, &stream.out, Instant::now())
        {
            // An earlier stream of this client is still open or has tasks
            // in flight: it may resubmit them. Index every task in flight
            // or waiting.
            let keys: Vec<(resubmit::Key, u64)> = st
                .pending
                .iter()
                .map(|(id, p)| (p.key, id))
                .chain(st.waiting.iter().map(|(id, p)| (p.key, *id)))
                .collect();
            st.by_key.build(keys.into_iter());
        }
    }
    let mut cache: FxMap<u64, (Shape, Rc<Query>, Rc<str>)> = FxMap::default();
    // The hash of the shape of this stream's last submit.
    let mut last_shape: Option<u64> = None;
    read_loop(stream, &state, |state, out, frame| {
        let mut st = state.borrow_mut();
        match frame.kind() {
            MessageKind::Submit => {
                let v = frame.validate::<Submit>()?;
                let s = v.get();
                st.stats.submitted += 1;
                let received = st.now;
                let user = if s.user.is_empty() {
                    cert_user.as_str()
                } else {
                    s.user.as_str()
                };
                let client_task = s.task_id.to_native();
                let reply_err = |st: &State, status: TaskStatus, message: String| {
                    let r = TaskResult {
                        task_id: client_task,
                        status,
                        worker: String::new(),
                        distributor: st.cfg.name.clone(),
                        attempts: 0,
                        exit_code: 0,
                        message,
                        timings: Timings::default(),
                    };
                    out.send(&r, &Bytes::new())
                };
                let user_hash = if s.user.is_empty() {
                    cert_user_hash
                } else {
                    resubmit::name_hash(user)
                };
                let key = (user_hash, s.idempotency_key.to_native());
                if let Some(existing) = st.by_key.find(key) {
                    // A resubmission (after a client failover) of a task we
                    // still run or that still waits for capacity: answer
                    // the new stream when it ends. Looking through the
                    // waiting queue is linear, but bounded by `max_pending`
                    // and done only for a key the index knows and the
                    // running tasks do not hold.
                    let State {
                        pending, waiting, ..
                    } = &mut *st;
                    let held = match pending.get_mut(existing) {
                        Some(p) => Some(p),
                        None => waiting
                            .iter_mut()
                            .find(|(id, _)| *id == existing)
                            .map(|(_, p)| p),
                    };
                    if let Some(p) = held {
                        p.client = out.clone();
                        p.client_task = client_task;
                        return Ok(());
                    }
                }
                if st.pending.len() + st.waiting.len() >= st.cfg.max_pending {
                    let n = st.pending.len() + st.waiting.len();
                    return reply_err(
                        &st,
                        TaskStatus::Error,
                        format!("distributor overloaded: {n} tasks in flight (limit)"),
                    );
                }
                // A stream mostly sends one shape: try the last one before
                // hashing the submit's strings.
                let same_as_last = last_shape
                    .and_then(|h| cache.get(&h))
                    .filter(|(shape, _, _)| shape.is(s, user));
                let shape_hash = match same_as_last {
                    Some(_) => last_shape.unwrap_or_default(),
                    None => shape_hash(s, user),
                };
                let cached = same_as_last
                    .or_else(|| {
                        cache
                            .get(&shape_hash)
                            .filter(|(shape, _, _)| shape.is(s, user))
                    })
                    .map(|(_, q, app)| (q.clone(), app.clone()));
                last_shape = Some(shape_hash);
                let (query, app) = match cached {
                    Some(hit) => hit,
                    None => match compile_for(&mut st, &client_attrs, &shape_of(s, user)) {
                        Ok(q) => {
                            let q = Rc::new(q);
                            let app: Rc<str> = Rc::from(s.app.as_str());
                            if cache.len() >= QUERY_CACHE {
                                cache.clear();
                            }
                            // A hash collision replaces the older shape.
                            cache.insert(shape_hash, (shape_of(s, user), q.clone(), app.clone()));
                            (q, app)
                        }
                        Err(e) => {
                            return reply_err(
                                &st,
                                TaskStatus::Error,
                                format!("bad expression: {e}"),
                            )
                        }
                    },
                };
                let task = st.next_task;
                st.next_task += 1;
                let deadline_ms = s.deadline_ms.to_native();
                let p = Pending {
                    client: out.clone(),
                    client_task,
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
                    deadline: (deadline_ms > 0)
                        .then(|| received + Duration::from_millis(deadline_ms)),
                    deadline_ms,
                    payload: v.payload(),
                    received,
                    match_us: 0,
                    key,
                    queued_at: None,
                };
                st.by_key.insert(key, task);
                st.place(task, p, "");
            }
            MessageKind::StatusQuery => {
                let _ = frame.validate::<StatusQuery>()?;
                out.send(&st.status(), &Bytes::new())?;
            }
            MessageKind::ExplainQuery => {
                let v = frame.validate::<ExplainQuery>()?;
                let q = v.get();
                let user = if q.user.is_empty() {
                    cert_user.as_str()
                } else {
                    q.user.as_str()
                };
                let demands = (
                    q.demands.cores.to_native(),
                    q.demands.mem.to_native(),
                    q.demands.slots.to_native(),
                );
                let shape = Shape {
                    app: q.app.as_str().to_owned(),
                    require: q.require.as_str().to_owned(),
                    prefer: q.prefer.as_str().to_owned(),
                    user: user.to_owned(),
                    demands,
                    priority: 0,
                };
                let reply = match compile_for(&mut st, &client_attrs, &shape) {
                    Ok(query) => explain_reply(&st.table, &query),
                    Err(e) => ExplainReply {
                        total: st.table.len() as u32,
                        matched: 0,
                        best: String::new(),
                        clauses: Vec::new(),
                        nearest: Vec::new(),
                        waitable: 0,
                        error: e.to_string(),
                    },
                };
                out.send(&reply, &Bytes::new())?;
            }
            MessageKind::Cancel => {
                let c = frame.validate::<allot_wire::Cancel>()?;
                let id = c.get().task_id.to_native();
                if let Some(i) = st
                    .waiting
                    .iter()
                    .position(|(_, p)| p.client_task == id && Rc::ptr_eq(&p.client, out))
                {
                    if let Some((_, p)) = st.waiting.remove(i) {
                        st.finish_error(p, TaskStatus::Cancelled, "cancelled by the client".into());
                    }
                    return Ok(());
                }
                let found = st
                    .pending
                    .iter()
                    .find(|(_, p)| p.client_task == id && Rc::ptr_eq(&p.client, out))
                    .map(|(k, _)| k);
                if let Some(task) = found {
                    if let Some(mut p) = st.pending.remove(task) {
                        release(&st.table, &mut p.reservation);
                        if let Some(l) = st.links.get(&p.worker) {
                            let _ = l
                                .out
                                .send(&allot_wire::Cancel { task_id: task }, &Bytes::new());
                        }
                        st.finish_error(p, TaskStatus::Cancelled, "cancelled by the client".into());
                    }
                }
            }
            other => {
                return Err(ConnError::Forbidden(format!(
                    "a client may not send {other:?}"
                )))
            }
        }
        Ok(())
    })
    .await;
}

fn explain_reply(table: &ServerTable, query: &Query) -> ExplainReply {
    // The worker a submission would get now: match, then give it back.
    let best = match table.match_and_reserve(query, MatchMode::Exact) {
        Ok(r) => {
            let name = table.name(r.server).unwrap_or_default();
            table.release(&r);
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
    }
}

// ---------------------------------------------------------------- sweeps

/// Marks silent workers down and fails tasks past their deadline. Runs a
/// few times per heartbeat period.
async fn sweep_loop(state: Shared) {
    let period = state.borrow().cfg.heartbeat / 4;
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(20)));
    loop {
        tick.tick().await;
        let mut st = state.borrow_mut();
        let now = Instant::now();
        let limit = st.cfg.heartbeat_for(st.links.len()) * st.cfg.missed_heartbeats;
        // After a restart, wait a grace period for reports before marking
        // anyone down (avoids mass rescheduling after a blip).
        if now.duration_since(st.started) > limit {
            let silent: Vec<ServerId> = st
                .links
                .iter()
                .filter(|(_, l)| now.duration_since(l.last_seen) > limit)
                .map(|(id, _)| *id)
                .collect();
            for id in silent {
                if st.table.state(id) == Some(ServerState::Up) {
                    tracing::warn!(
                        worker = id.0,
                        "missed {} heartbeats; marked down",
                        st.cfg.missed_heartbeats
                    );
                    let _ = st.table.set_state(id, ServerState::Down);
                }
            }
        }
        if now.duration_since(st.last_flush) >= Duration::from_secs(1) && !st.completions.is_empty()
        {
            st.last_flush = now;
            let batch = std::mem::take(&mut st.completions);
            let items: Vec<(&str, Duration, bool)> =
                batch.iter().map(|(a, d, ok)| (&**a, *d, *ok)).collect();
            if let Err(e) = st.store.task_classes().record_completions(&items) {
                tracing::error!("task-class DB update failed: {e}");
            }
        }
        // Waiting tasks: retry all (deltas and registrations may have
        // added capacity), then fail those past their deadline.
        st.drain_queue(usize::MAX);
        let mut i = 0;
        while i < st.waiting.len() {
            if st.waiting[i].1.deadline.is_some_and(|d| d <= now) {
                if let Some((_, p)) = st.waiting.remove(i) {
                    let ms = p.deadline_ms;
                    st.finish_error(
                        p,
                        TaskStatus::Timeout,
                        format!("deadline of {ms} ms passed while waiting for capacity"),
                    );
                }
            } else {
                i += 1;
            }
        }
        st.by_key.expire(now);
        let expired = st
            .pending
            .ids_where(|p| p.deadline.is_some_and(|d| d <= now));
        for task in expired {
            if let Some(mut p) = st.pending.remove(task) {
                release(&st.table, &mut p.reservation);
                if let Some(l) = st.links.get(&p.worker) {
                    let _ = l
                        .out
                        .send(&allot_wire::Cancel { task_id: task }, &Bytes::new());
                }
                let ms = p.deadline_ms;
                st.finish_error(
                    p,
                    TaskStatus::Timeout,
                    format!("deadline of {ms} ms passed"),
                );
            }
        }
    }
}
