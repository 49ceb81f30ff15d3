//! The worker (fulfillment server): registers with distributors, reports
//! its attributes, checks each placement itself, and runs tasks.
//!
//! Reporting (claims 24-29), kept apart as DESIGN.md asks:
//! * liveness: a tiny `Heartbeat` every period (the distributor sets the
//!   period in `RegisterAck` and stretches it when it has many workers);
//! * on events (task start and end, drain): a delta with `slots_free` and,
//!   when they moved by more than [`WorkerConfig::change_threshold`], the
//!   other load attributes. Events are coalesced for
//!   [`WorkerConfig::coalesce`] so a busy worker sends a bounded number of
//!   deltas (at most one per coalescing window), not one per task;
//! * periodically: a full numeric delta every [`WorkerConfig::full_every`]
//!   heartbeats, which repairs anything a distributor missed.
//!
//! In mode `registered` the worker keeps one distributor (the first of its
//! join list that answers, moving on when it fails); in mode `broadcast` it
//! registers with every member and reports to all of them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_wire::message::ArchivedAssign;
use allot_wire::{
    Assign, Attr, AttrChange, AttrDelta, AttrRecord, Cancel, DeltaCause, ErrorCode, Heartbeat,
    MessageKind, Register, RegisterAck, ReportMode, Role, TaskResult, TaskStatus, Timings,
    WorkerState,
};
use bytes::Bytes;

use crate::apps::{self, App, AppOutcome, AppTable};
use crate::conn::{self, ConnError, Outbox};
use crate::pki::Pki;
use crate::transport;

/// How a worker is set up.
#[derive(Debug, Clone)]
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
    /// Local address to bind (port 0: any).
    pub listen: SocketAddr,
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
            cores: 4,
            mem: 8 << 30,
            power: 4.0,
            slots: 4,
            labels: Vec::new(),
            change_threshold: 0.1,
            coalesce: Duration::from_millis(5),
            full_every: 10,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Errors starting a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// The configuration is inconsistent.
    #[error("worker configuration: {0}")]
    Config(String),
    /// The runtime could not start.
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

struct Link {
    out: Rc<Outbox>,
    worker_id: u64,
    seq: u64,
    heartbeat: Duration,
}

#[derive(Clone, Copy, PartialEq)]
struct Reported {
    slots_free: u32,
    idle_power: f64,
    load: f64,
    mem_free: u64,
}

struct Node {
    cfg: WorkerConfig,
    apps: AppTable,
    slots_free: u32,
    cores_free: u32,
    mem_free: u64,
    draining: bool,
    links: FxMap<usize, Link>,
    running: FxMap<(usize, u64), tokio::task::AbortHandle>,
    reported: Reported,
    dirty: bool,
    incarnation: u64,
    done: u64,
    /// Reused for every result, so that its strings (this worker's name,
    /// the message) keep their buffers: no allocation per task.
    result: RefCell<TaskResult>,
}

/// Maps touched once per task: Fx hashing (the keys are our own ids).
type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

type Shared = Rc<RefCell<Node>>;

impl Node {
    fn current(&self) -> Reported {
        let c = &self.cfg;
        let busy = c.slots.saturating_sub(self.slots_free);
        Reported {
            slots_free: self.slots_free,
            idle_power: if c.cores == 0 {
                c.power * f64::from(self.slots_free) / f64::from(c.slots.max(1))
            } else {
                c.power * f64::from(self.cores_free) / f64::from(c.cores)
            },
            load: f64::from(busy) / f64::from(c.slots.max(1)),
            mem_free: self.mem_free,
        }
    }

    fn record(&self) -> AttrRecord {
        let r = self.current();
        AttrRecord {
            slots: self.cfg.slots,
            slots_free: r.slots_free,
            cores: self.cfg.cores,
            power: self.cfg.power,
            idle_power: r.idle_power,
            mem: self.cfg.mem,
            mem_free: r.mem_free,
            load: r.load,
            labels: self.cfg.labels.clone(),
        }
    }

    /// The changes worth reporting since the last report.
    fn changes(&mut self, full: bool) -> Vec<AttrChange> {
        let now = self.current();
        let last = self.reported;
        let moved = |a: f64, b: f64| (a - b).abs() > self.cfg.change_threshold * b.abs().max(1e-9);
        let mut ch = Vec::new();
        if full || now.slots_free != last.slots_free {
            ch.push(AttrChange::SlotsFree(now.slots_free));
        }
        if full || moved(now.idle_power, last.idle_power) {
            ch.push(AttrChange::IdlePower(now.idle_power));
        }
        if full || moved(now.load, last.load) {
            ch.push(AttrChange::Load(now.load));
        }
        if full || moved(now.mem_free as f64, last.mem_free as f64) {
            ch.push(AttrChange::MemFree(now.mem_free));
        }
        if !ch.is_empty() {
            self.reported = now;
        }
        ch
    }

    fn send_delta(&mut self, cause: DeltaCause, changes: Vec<AttrChange>) {
        for link in self.links.values_mut() {
            link.seq += 1;
            let d = AttrDelta {
                worker_id: link.worker_id,
                seq: link.seq,
                cause,
                changes: changes.clone(),
            };
            if let Err(e) = link.out.send(&d, &Bytes::new()) {
                tracing::debug!("delta not sent: {e}");
            }
        }
    }
}

/// A running worker (on its own thread and runtime).
pub type WorkerHandle = crate::node_thread::NodeHandle;

/// Starts a worker on a thread of its own. `handlers` are extra apps
/// provided by the embedding program.
pub fn spawn(
    cfg: WorkerConfig,
    handlers: Vec<(String, apps::Handler)>,
) -> Result<WorkerHandle, WorkerError> {
    crate::node_thread::spawn_node(format!("worker-{}", cfg.name), move |stop| async move {
        let (ep, node) = setup(cfg, handlers)?;
        let addr = ep.local_addr()?;
        Ok::<_, WorkerError>((addr, serve(ep, node, stop)))
    })
}

/// Runs a worker on the current runtime until `shutdown` resolves. Must be
/// called inside a `LocalSet`.
pub async fn run(
    cfg: WorkerConfig,
    handlers: Vec<(String, apps::Handler)>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    let (ep, node) = setup(cfg, handlers)?;
    serve(ep, node, shutdown).await;
    Ok(())
}

fn setup(
    cfg: WorkerConfig,
    handlers: Vec<(String, apps::Handler)>,
) -> Result<(quinn::Endpoint, Shared), WorkerError> {
    if cfg.join.is_empty() {
        return Err(WorkerError::Config(
            "--join needs at least one distributor address".into(),
        ));
    }
    if cfg.slots == 0 {
        return Err(WorkerError::Config("--slots must be at least 1".into()));
    }
    let mut table = AppTable::from_config(&cfg.apps, &cfg.app_cmds).map_err(WorkerError::Config)?;
    for (name, h) in handlers {
        table.insert(&name, App::Handler(h));
    }
    let pki = Pki::load(&cfg.pki, &cfg.name)?;
    let ep = transport::endpoint(&pki, cfg.listen)?;
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let name = cfg.name.clone();
    let mut node = Node {
        slots_free: cfg.slots,
        cores_free: cfg.cores,
        mem_free: cfg.mem,
        cfg,
        apps: table,
        draining: false,
        links: FxMap::default(),
        running: FxMap::default(),
        reported: Reported {
            slots_free: 0,
            idle_power: 0.0,
            load: 0.0,
            mem_free: 0,
        },
        dirty: false,
        incarnation,
        done: 0,
        result: RefCell::new(TaskResult {
            task_id: 0,
            status: TaskStatus::Ok,
            worker: name,
            distributor: String::new(),
            attempts: 0,
            exit_code: 0,
            message: String::new(),
            timings: Timings::default(),
        }),
    };
    node.reported = node.current();
    Ok((ep, Rc::new(RefCell::new(node))))
}

async fn serve(ep: quinn::Endpoint, node: Shared, shutdown: impl std::future::Future<Output = ()>) {
    let (mode, join) = {
        let n = node.borrow();
        (n.cfg.mode, n.cfg.join.clone())
    };
    let flush = Rc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    match mode {
        ReportMode::Broadcast => {
            for (i, addr) in join.iter().enumerate() {
                tasks.push(tokio::task::spawn_local(link_loop(
                    ep.clone(),
                    node.clone(),
                    flush.clone(),
                    vec![(i, *addr)],
                )));
            }
        }
        _ => {
            let all: Vec<(usize, SocketAddr)> = join.iter().copied().enumerate().collect();
            tasks.push(tokio::task::spawn_local(link_loop(
                ep.clone(),
                node.clone(),
                flush.clone(),
                all,
            )));
        }
    }
    tasks.push(tokio::task::spawn_local(report_loop(node.clone(), flush)));
    shutdown.await;
    for t in tasks {
        t.abort();
    }
    ep.close(
        transport::codes::varint(ErrorCode::Unavailable),
        b"worker stopping",
    );
    let _ = tokio::time::timeout(Duration::from_millis(300), ep.wait_idle()).await;
}

/// Keeps one registration alive: tries `candidates` in order, serves the
/// first that accepts, and starts over (after a short pause) when it ends.
async fn link_loop(
    ep: quinn::Endpoint,
    node: Shared,
    flush: Rc<tokio::sync::Notify>,
    candidates: Vec<(usize, SocketAddr)>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        for &(idx, addr) in &candidates {
            match register(&ep, &node, idx, addr).await {
                Ok(reader) => {
                    backoff = Duration::from_millis(100);
                    serve_link(node.clone(), flush.clone(), idx, reader).await;
                    node.borrow_mut().links.remove(&idx);
                    // Tasks from a lost distributor are abandoned by it (it
                    // retries them elsewhere): stop them and free capacity.
                    abort_link_tasks(&node, idx);
                }
                Err(e) => tracing::debug!(%addr, "cannot register: {e}"),
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn abort_link_tasks(node: &Shared, idx: usize) {
    let n = node.borrow();
    for ((l, _), h) in n.running.iter() {
        if *l == idx {
            h.abort();
        }
    }
}

async fn register(
    ep: &quinn::Endpoint,
    node: &Shared,
    idx: usize,
    addr: SocketAddr,
) -> Result<conn::FrameReader, ConnError> {
    let conn = transport::connect(ep, addr)
        .await
        .map_err(|e| ConnError::Forbidden(e.to_string()))?;
    let (name, reg) = {
        let n = node.borrow();
        let reg = Register {
            name: n.cfg.name.clone(),
            incarnation: n.incarnation,
            mode: n.cfg.mode,
            record: n.record(),
            apps: n.apps.names(),
        };
        (n.cfg.name.clone(), reg)
    };
    let mut stream = conn::open(&conn, &conn::hello(Role::Worker, &name, Vec::new())).await?;
    stream.out.send(&reg, &Bytes::new())?;
    let frame = stream.reader.next().await?.ok_or(ConnError::Closed)?;
    if frame.kind() == MessageKind::Error {
        let e = frame.validate::<allot_wire::ErrorMsg>()?;
        return Err(ConnError::Refused {
            code: conn::decode_code(&e.get().code),
            message: e.get().message.as_str().to_owned(),
        });
    }
    let ack = frame.validate::<RegisterAck>()?;
    let a = ack.get();
    tracing::info!(distributor = %a.distributor, id = a.worker_id.to_native(), "registered");
    node.borrow_mut().links.insert(
        idx,
        Link {
            out: stream.out.clone(),
            worker_id: a.worker_id.to_native(),
            seq: 0,
            heartbeat: Duration::from_millis(u64::from(a.heartbeat_ms.to_native()).max(10)),
        },
    );
    // Keep the connection alive as long as the reader.
    let reader = stream.reader;
    tokio::task::spawn_local(async move {
        conn.closed().await;
    });
    Ok(reader)
}

async fn serve_link(
    node: Shared,
    flush: Rc<tokio::sync::Notify>,
    idx: usize,
    mut reader: conn::FrameReader,
) {
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("distributor stream failed: {e}");
                return;
            }
        };
        let result = match frame.kind() {
            MessageKind::Assign => frame
                .validate::<Assign>()
                .map(|a| on_assign(&node, &flush, idx, a)),
            MessageKind::Cancel => frame.validate::<Cancel>().map(|c| {
                let key = (idx, c.get().task_id.to_native());
                if let Some(h) = node.borrow_mut().running.remove(&key) {
                    h.abort();
                }
            }),
            other => {
                tracing::warn!("distributor sent {other:?}, which a worker does not take");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!("bad frame from distributor: {e}");
            reader.reject(e.code());
            return;
        }
    }
}

/// How a task ended on this worker, before it is sent.
struct Ended<'a> {
    status: TaskStatus,
    exit_code: i32,
    message: &'a str,
    ran: Duration,
}

fn reply(node: &Node, idx: usize, task_id: u64, end: Ended<'_>, output: &Bytes) {
    let Some(link) = node.links.get(&idx) else {
        return; // the distributor is gone; it has retried the task elsewhere
    };
    let mut r = node.result.borrow_mut();
    r.task_id = task_id;
    r.status = end.status;
    r.exit_code = end.exit_code;
    r.message.clear();
    r.message.push_str(end.message);
    r.timings.ran_us = end.ran.as_micros() as u64;
    if let Err(e) = link.out.send(&*r, output) {
        tracing::warn!("result of task {task_id} not sent: {e}");
    }
}

fn on_assign(
    node: &Shared,
    flush: &Rc<tokio::sync::Notify>,
    idx: usize,
    a: allot_wire::Validated<Assign>,
) {
    let g: &ArchivedAssign = a.get();
    let need = (
        g.demands.slots.to_native().max(1),
        g.demands.cores.to_native(),
        g.demands.mem.to_native(),
    );
    let task_id = g.task_id.to_native();
    let deadline = match g.deadline_ms.to_native() {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let app = g.app.as_str();
    let mut n = node.borrow_mut();
    let app_def = n.apps.get(app).cloned();
    // Admission: the worker's own check is the final word.
    let refusal = if n.draining {
        Some("draining".to_owned())
    } else if app_def.is_none() {
        Some(format!("does not run app `{app}`"))
    } else if n.slots_free < need.0 {
        Some(format!("{} slots free, {} needed", n.slots_free, need.0))
    } else if n.cores_free < need.1 {
        Some(format!("{} cores free, {} needed", n.cores_free, need.1))
    } else if n.mem_free < need.2 {
        Some(format!("{} bytes free, {} needed", n.mem_free, need.2))
    } else {
        None
    };
    if let Some(why) = refusal {
        let end = Ended {
            status: TaskStatus::Refused,
            exit_code: 0,
            message: &why,
            ran: Duration::ZERO,
        };
        reply(&n, idx, task_id, end, &Bytes::new());
        n.dirty = true;
        flush.notify_one();
        return;
    }
    let Some(app_def) = app_def else {
        return;
    };
    let input = a.payload();
    if matches!(app_def, App::Echo) {
        // Echo hands its input back by reference: it takes no time to
        // speak of, so no clock is read (two reads would cost more).
        n.done += 1;
        send_outcome(&n, idx, task_id, AppOutcome::Ok(input), Duration::ZERO);
        return;
    }
    if apps::is_instant(&app_def) {
        let t0 = Instant::now();
        if let Some(outcome) = apps::run_instant(&app_def, &input) {
            n.done += 1;
            send_outcome(&n, idx, task_id, outcome, t0.elapsed());
        }
        return;
    }
    n.slots_free -= need.0;
    n.cores_free -= need.1;
    n.mem_free -= need.2;
    n.dirty = true;
    flush.notify_one();
    let node2 = node.clone();
    let flush2 = flush.clone();
    let handle = tokio::task::spawn_local(async move {
        let t0 = Instant::now();
        let outcome = apps::run(&app_def, input, deadline).await;
        let mut n = node2.borrow_mut();
        n.running.remove(&(idx, task_id));
        n.done += 1;
        send_outcome(&n, idx, task_id, outcome, t0.elapsed());
        n.slots_free += need.0;
        n.cores_free += need.1;
        n.mem_free += need.2;
        n.dirty = true;
        flush2.notify_one();
    });
    // An aborted task (cancel, lost distributor) gives its capacity back
    // through this guard.
    let node3 = node.clone();
    let abort = handle.abort_handle();
    tokio::task::spawn_local(async move {
        if let Err(e) = handle.await {
            if e.is_cancelled() {
                let mut n = node3.borrow_mut();
                n.running.remove(&(idx, task_id));
                n.slots_free += need.0;
                n.cores_free += need.1;
                n.mem_free += need.2;
                n.dirty = true;
            }
        }
    });
    n.running.insert((idx, task_id), abort);
}

fn send_outcome(n: &Node, idx: usize, task_id: u64, outcome: AppOutcome, ran: Duration) {
    let end = |status, exit_code, message| Ended {
        status,
        exit_code,
        message,
        ran,
    };
    match outcome {
        AppOutcome::Ok(out) => reply(n, idx, task_id, end(TaskStatus::Ok, 0, ""), &out),
        AppOutcome::Failed {
            exit_code,
            output,
            message,
        } => reply(
            n,
            idx,
            task_id,
            end(TaskStatus::Failed, exit_code, &message),
            &output,
        ),
        AppOutcome::Timeout => reply(
            n,
            idx,
            task_id,
            end(TaskStatus::Timeout, 0, "deadline passed on the worker"),
            &Bytes::new(),
        ),
    }
}

/// Sends heartbeats, periodic full deltas and coalesced event deltas.
async fn report_loop(node: Shared, flush: Rc<tokio::sync::Notify>) {
    let mut beats: u32 = 0;
    let mut next_beat = Instant::now();
    loop {
        let period = {
            let n = node.borrow();
            n.links
                .values()
                .map(|l| l.heartbeat)
                .min()
                .unwrap_or(Duration::from_millis(200))
        };
        tokio::select! {
            _ = flush.notified() => {
                // Gather the events of one window into one delta.
                let window = node.borrow().cfg.coalesce;
                tokio::time::sleep(window).await;
                let mut n = node.borrow_mut();
                if n.dirty {
                    n.dirty = false;
                    let ch = n.changes(false);
                    if !ch.is_empty() {
                        n.send_delta(DeltaCause::Event, ch);
                    }
                }
            }
            _ = tokio::time::sleep_until(next_beat.into()) => {
                next_beat = Instant::now() + period;
                beats = beats.wrapping_add(1);
                let mut n = node.borrow_mut();
                let full = beats % n.cfg.full_every.max(1) == 0;
                if full {
                    let mut ch = n.changes(true);
                    ch.push(AttrChange::State(if n.draining { WorkerState::Draining } else { WorkerState::Up }));
                    n.send_delta(DeltaCause::Periodic, ch);
                } else {
                    for link in n.links.values() {
                        let hb = Heartbeat { worker_id: link.worker_id, seq: link.seq };
                        let _ = link.out.send(&hb, &Bytes::new());
                    }
                }
            }
        }
    }
}
