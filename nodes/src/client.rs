//! The client SDK.
//!
//! `Client::connect` searches the gateways in order (the first that answers
//! wins), follows its redirect, and searches the distributor list in order.
//! Tasks are pipelined on one long-lived stream; `submit` may be called many
//! times concurrently. When the distributor fails, the client moves to the
//! next one in the list (asking the gateways again when the list is used
//! up) and resubmits every task still in flight with the same idempotency
//! key, so each task still ends in exactly one result or one error.
//!
//! The client is `!Send`: like the nodes it runs on a current-thread
//! runtime, inside a `tokio::task::LocalSet`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_wire::{
    Attr, Demands, ErrorMsg, ExplainQuery, ExplainReply, MessageKind, Redirect, Role, StatusQuery,
    StatusReply, Submit, TaskResult, TaskStatus, Timings,
};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::conn::{self, ConnError, Outbox};
use crate::inflight::InFlight;
use crate::labels::status_from_archived;
use crate::pki::Pki;
use crate::transport;

/// Tasks one client may have in flight; `submit` beyond it fails at once.
pub const MAX_IN_FLIGHT: usize = 1 << 20;

/// How a client is set up.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Certificate name (also the default user).
    pub name: String,
    /// PKI directory.
    pub pki: PathBuf,
    /// Gateways, in the order they are tried.
    pub gateways: Vec<SocketAddr>,
    /// Client attributes (`client.*` in expressions).
    pub attrs: Vec<Attr>,
}

/// A task to submit.
#[derive(Debug, Clone, Default)]
pub struct Task {
    /// Application.
    pub app: String,
    /// Input.
    pub payload: Bytes,
    /// Hard constraints.
    pub require: String,
    /// Score to maximise.
    pub prefer: String,
    /// User (empty: the certificate name).
    pub user: String,
    /// Resources.
    pub demands: Demands,
    /// Priority.
    pub priority: i32,
    /// Deadline in milliseconds (0: none).
    pub deadline_ms: u64,
}

impl Task {
    /// A task for `app` with `payload` and nothing else.
    pub fn new(app: &str, payload: impl Into<Bytes>) -> Task {
        Task {
            app: app.to_owned(),
            payload: payload.into(),
            ..Task::default()
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The client's id for the task.
    pub task_id: u64,
    /// Status.
    pub status: TaskStatus,
    /// The worker that ran it. Names are shared (`Arc<str>`): a client
    /// sees the same few names over and over, and an outcome costs no
    /// allocation for them.
    pub worker: Arc<str>,
    /// The distributor that placed it.
    pub distributor: Arc<str>,
    /// The gateway that redirected this client.
    pub gateway: Arc<str>,
    /// Placements tried.
    pub attempts: u32,
    /// Exit code of a command app.
    pub exit_code: i32,
    /// Reason for anything but `Ok`.
    pub message: String,
    /// Output.
    pub output: Bytes,
    /// Where the time went, as the distributor saw it.
    pub timings: Timings,
    /// From submit to the network read that brought the result, as the
    /// client saw it.
    pub latency: Duration,
}

/// The state of a client's connection to its distributor, as QUIC sees
/// it: what to look at when throughput is lower than it should be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// The packet size the path settled on (MTU discovery).
    pub mtu: u16,
    /// Packets sent.
    pub sent_packets: u64,
    /// Packets declared lost (and resent). On loopback or a LAN this
    /// should be 0: losses there mean full socket buffers.
    pub lost_packets: u64,
    /// Times the congestion controller cut its window.
    pub congestion_events: u64,
    /// Times QUIC decided large packets do not get through and fell back
    /// to 1,200 bytes.
    pub black_holes: u64,
}

impl LinkStats {
    /// Adds another connection's counts (the smaller MTU is kept).
    pub fn merge(&mut self, o: LinkStats) {
        self.mtu = if self.mtu == 0 {
            o.mtu
        } else {
            self.mtu.min(o.mtu)
        };
        self.sent_packets += o.sent_packets;
        self.lost_packets += o.lost_packets;
        self.congestion_events += o.congestion_events;
        self.black_holes += o.black_holes;
    }
}

/// Client errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No gateway answered.
    #[error("no gateway answered: {0}")]
    NoGateway(String),
    /// No distributor in the redirect answered.
    #[error("no distributor answered: {0}")]
    NoDistributor(String),
    /// Certificates could not be loaded.
    #[error("{0}")]
    Setup(String),
    /// Too many tasks in flight.
    #[error("{0} tasks in flight, the client's limit")]
    TooMany(usize),
    /// The stream failed and no failover worked.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The distributor answered with an error.
    #[error("distributor refused: {0}")]
    Refused(String),
}

/// Where an outcome goes: the waiting `submit` call, or the channel of a
/// pipelined submitter.
enum Reply {
    Once(oneshot::Sender<Result<Outcome, ClientError>>),
    Channel(mpsc::UnboundedSender<(u64, Result<Outcome, ClientError>)>),
}

impl Reply {
    fn send(self, id: u64, r: Result<Outcome, ClientError>) {
        match self {
            Reply::Once(tx) => {
                let _ = tx.send(r);
            }
            Reply::Channel(tx) => {
                let _ = tx.send((id, r));
            }
        }
    }
}

/// Outcomes of pipelined submissions, with the id `submit_to` returned.
pub type Results = mpsc::UnboundedSender<(u64, Result<Outcome, ClientError>)>;

struct PendingTask {
    tx: Reply,
    /// Kept for resubmission after a failover (shared, not copied, when
    /// the caller submits the same `Rc<Task>` many times).
    task: Rc<Task>,
    /// Its idempotency key, the same on every resubmission.
    key: u64,
    started: Instant,
}

/// Peer names as shared strings, so that an outcome does not allocate its
/// worker and distributor names. Bounded: past [`NAMES_CACHED`] names the
/// cache starts over.
///
/// The last few names handed out are compared first: a client mostly
/// hears from one distributor and a handful of workers, and comparing a
/// short name costs less than hashing it.
#[derive(Default)]
struct Names {
    all: HashMap<Box<str>, Arc<str>, rustc_hash::FxBuildHasher>,
    recent: [Option<Arc<str>>; RECENT_NAMES],
    next: usize,
}

/// Distinct peer names a client keeps shared (a cluster's workers and
/// distributors; more only churns the cache).
const NAMES_CACHED: usize = 65_536;

/// Names compared before the map is asked.
const RECENT_NAMES: usize = 4;

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(a) = self.recent.iter().flatten().find(|a| ***a == *name) {
            return a.clone();
        }
        let a = match self.all.get(name) {
            Some(a) => a.clone(),
            None => {
                if self.all.len() >= NAMES_CACHED {
                    self.all.clear();
                }
                let a: Arc<str> = Arc::from(name);
                self.all.insert(Box::from(name), a.clone());
                a
            }
        };
        self.recent[self.next] = Some(a.clone());
        self.next = (self.next + 1) % RECENT_NAMES;
        a
    }
}

enum Waiter {
    Status(oneshot::Sender<Result<StatusReply, ClientError>>),
    Explain(oneshot::Sender<Result<ExplainReply, ClientError>>),
}

struct Session {
    out: Rc<Outbox>,
    generation: u64,
    distributor: SocketAddr,
    /// Keeps the connection open.
    conn: quinn::Connection,
}

struct Inner {
    cfg: ClientConfig,
    ep: quinn::Endpoint,
    session: RefCell<Option<Session>>,
    /// Submissions in flight by id (sequential: see [`InFlight`]).
    pending: RefCell<InFlight<PendingTask>>,
    /// Reused for every `Submit` sent, so its strings keep their buffers.
    submit: RefCell<Submit>,
    names: RefCell<Names>,
    waiters: RefCell<VecDeque<Waiter>>,
    next_id: Cell<u64>,
    key_base: u64,
    generation: Cell<u64>,
    distributors: RefCell<Vec<SocketAddr>>,
    gateway: RefCell<Arc<str>>,
    /// When the cached redirect stops being valid (its time to live).
    redirect_expires: Cell<Option<Instant>>,
    failing_over: Cell<bool>,
}

/// A connected client.
#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
}

impl Client {
    /// Searches the gateways, follows the redirect, connects to the first
    /// distributor that answers.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let client = Client::new(cfg)?;
        client.inner.redirect().await?;
        Inner::connect_any(&client.inner, 0).await?;
        Ok(client)
    }

    /// Connects straight to one distributor (for status and explain).
    pub async fn connect_distributor(
        cfg: ClientConfig,
        addr: SocketAddr,
    ) -> Result<Client, ClientError> {
        let client = Client::new(cfg)?;
        *client.inner.distributors.borrow_mut() = vec![addr];
        Inner::connect_any(&client.inner, 0).await?;
        Ok(client)
    }

    fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let pki = Pki::load(&cfg.pki, &cfg.name).map_err(|e| ClientError::Setup(e.to_string()))?;
        let ep = transport::endpoint(&pki, SocketAddr::from(([0, 0, 0, 0], 0)))
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let key_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            .rotate_left(20);
        Ok(Client {
            inner: Rc::new(Inner {
                cfg,
                ep,
                session: RefCell::new(None),
                pending: RefCell::new(InFlight::new(1024, MAX_IN_FLIGHT * 2)),
                submit: RefCell::new(Submit {
                    task_id: 0,
                    idempotency_key: 0,
                    app: String::new(),
                    demands: Demands::default(),
                    require: String::new(),
                    prefer: String::new(),
                    user: String::new(),
                    priority: 0,
                    deadline_ms: 0,
                }),
                names: RefCell::new(Names::default()),
                waiters: RefCell::new(VecDeque::new()),
                next_id: Cell::new(1),
                key_base,
                generation: Cell::new(0),
                distributors: RefCell::new(Vec::new()),
                gateway: RefCell::new(Arc::from("")),
                redirect_expires: Cell::new(None),
                failing_over: Cell::new(false),
            }),
        })
    }

    /// The distributor this client talks to now.
    pub fn distributor(&self) -> Option<SocketAddr> {
        self.inner.session.borrow().as_ref().map(|s| s.distributor)
    }

    /// Submits a task and waits for its result. Many calls may be in flight
    /// at once on the same client.
    pub async fn submit(&self, task: Task) -> Result<Outcome, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.send(Rc::new(task), Reply::Once(tx))?;
        rx.await
            .unwrap_or_else(|_| Err(ClientError::Lost("client dropped".into())))
    }

    /// Pipelined submission for load generators: sends the task now and
    /// delivers its outcome, tagged with the returned id, to `results`. No
    /// task is spawned per submission.
    ///
    /// A load generator submitting the same task many times passes an
    /// `Rc<Task>` and clones it: nothing is copied or allocated per task.
    pub fn submit_to(
        &self,
        task: impl Into<Rc<Task>>,
        results: &Results,
    ) -> Result<u64, ClientError> {
        self.send(task.into(), Reply::Channel(results.clone()))
    }

    fn send(&self, task: Rc<Task>, tx: Reply) -> Result<u64, ClientError> {
        let inner = &self.inner;
        if inner.pending.borrow().len() >= MAX_IN_FLIGHT {
            return Err(ClientError::TooMany(MAX_IN_FLIGHT));
        }
        let id = inner.next_id.get();
        inner.next_id.set(id + 1);
        let key = inner.key_base ^ id;
        let sent = {
            let session = inner.session.borrow();
            session
                .as_ref()
                .map(|s| inner.send_submit(&s.out, id, key, &task))
        };
        inner.pending.borrow_mut().insert(
            id,
            PendingTask {
                tx,
                task,
                key,
                started: Instant::now(),
            },
        );
        if !matches!(sent, Some(Ok(()))) {
            // Not connected or the stream just failed: the failover (which
            // resubmits everything pending) takes care of it.
            Inner::failover(inner.clone(), inner.generation.get());
        }
        Ok(id)
    }

    /// The distributor's table of workers.
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.request(&StatusQuery { include_down: true }, Waiter::Status(tx))?;
        rx.await
            .unwrap_or_else(|_| Err(ClientError::Lost("stream closed".into())))
    }

    /// Whether a task would be placed, and if not why.
    pub async fn explain(&self, q: ExplainQuery) -> Result<ExplainReply, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.request(&q, Waiter::Explain(tx))?;
        rx.await
            .unwrap_or_else(|_| Err(ClientError::Lost("stream closed".into())))
    }

    fn request<M: allot_wire::WireMessage>(&self, m: &M, w: Waiter) -> Result<(), ClientError> {
        let session = self.inner.session.borrow();
        let s = session
            .as_ref()
            .ok_or_else(|| ClientError::Lost("not connected".into()))?;
        s.out
            .send(m, &Bytes::new())
            .map_err(|e| ClientError::Lost(e.to_string()))?;
        self.inner.waiters.borrow_mut().push_back(w);
        Ok(())
    }

    /// The current connection's transport counters, if connected.
    pub fn link_stats(&self) -> Option<LinkStats> {
        let session = self.inner.session.borrow();
        let path = session.as_ref()?.conn.stats().path;
        Some(LinkStats {
            mtu: path.current_mtu,
            sent_packets: path.sent_packets,
            lost_packets: path.lost_packets,
            congestion_events: path.congestion_events,
            black_holes: path.black_holes_detected,
        })
    }

    /// Closes the connection.
    pub fn close(&self) {
        // Marked as failing over so the reader's end does not reconnect.
        self.inner.failing_over.set(true);
        if let Some(s) = self.inner.session.borrow_mut().take() {
            s.out.close();
        }
        self.inner.ep.close(0u32.into(), b"client done");
    }
}

impl Inner {
    /// Encodes `task` as a `Submit` through the reused message.
    fn send_submit(&self, out: &Outbox, id: u64, key: u64, task: &Task) -> Result<(), ConnError> {
        let mut guard = self.submit.borrow_mut();
        let s = &mut *guard;
        s.task_id = id;
        s.idempotency_key = key;
        for (to, from) in [
            (&mut s.app, &task.app),
            (&mut s.require, &task.require),
            (&mut s.prefer, &task.prefer),
            (&mut s.user, &task.user),
        ] {
            to.clear();
            to.push_str(from);
        }
        s.demands = task.demands;
        s.priority = task.priority;
        s.deadline_ms = task.deadline_ms;
        out.send(&*s, &task.payload)
    }

    /// Asks the gateways, in order, for a distributor list.
    async fn redirect(&self) -> Result<(), ClientError> {
        let mut errors = Vec::new();
        for gw in &self.cfg.gateways {
            match self.ask_gateway(*gw).await {
                Ok(r) => {
                    let list: Vec<SocketAddr> = r
                        .distributors
                        .iter()
                        .filter_map(|a| a.parse().ok())
                        .collect();
                    if list.is_empty() {
                        errors.push(format!("{gw}: empty redirect"));
                        continue;
                    }
                    *self.distributors.borrow_mut() = list;
                    *self.gateway.borrow_mut() = Arc::from(gw.to_string());
                    self.redirect_expires.set(Some(
                        Instant::now() + Duration::from_millis(u64::from(r.ttl_ms)),
                    ));
                    return Ok(());
                }
                Err(e) => errors.push(format!("{gw}: {e}")),
            }
        }
        Err(ClientError::NoGateway(errors.join("; ")))
    }

    async fn ask_gateway(&self, gw: SocketAddr) -> Result<Redirect, ConnError> {
        let conn = transport::connect(&self.ep, gw)
            .await
            .map_err(|e| ConnError::Forbidden(e.to_string()))?;
        let mut s = conn::open(
            &conn,
            &conn::hello(Role::Client, &self.cfg.name, self.cfg.attrs.clone()),
        )
        .await?;
        let f = s.reader.next().await?.ok_or(ConnError::Closed)?;
        let r = if f.kind() == MessageKind::Error {
            let e = f.validate::<ErrorMsg>()?;
            Err(ConnError::Refused {
                code: conn::decode_code(&e.get().code),
                message: e.get().message.as_str().to_owned(),
            })
        } else {
            Ok(f.validate::<Redirect>()?.to_owned_message()?)
        };
        s.out.close();
        conn.close(0u32.into(), b"redirected");
        r
    }

    /// Connects to the distributors from `start` on, in order.
    async fn connect_any(this: &Rc<Inner>, start: usize) -> Result<(), ClientError> {
        let list = this.distributors.borrow().clone();
        let mut errors = Vec::new();
        for addr in list.iter().skip(start) {
            match this.open_session(*addr).await {
                Ok((session, reader)) => {
                    let generation = session.generation;
                    *this.session.borrow_mut() = Some(session);
                    tokio::task::spawn_local(read_loop(this.clone(), reader, generation));
                    return Ok(());
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(ClientError::NoDistributor(errors.join("; ")))
    }

    async fn open_session(
        &self,
        addr: SocketAddr,
    ) -> Result<(Session, conn::FrameReader), ConnError> {
        let conn = transport::connect(&self.ep, addr)
            .await
            .map_err(|e| ConnError::Forbidden(e.to_string()))?;
        let s = conn::open(
            &conn,
            &conn::hello(Role::Client, &self.cfg.name, self.cfg.attrs.clone()),
        )
        .await?;
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        Ok((
            Session {
                out: s.out,
                generation,
                distributor: addr,
                conn,
            },
            s.reader,
        ))
    }

    /// Moves to the next distributor (then asks the gateways again) and
    /// resubmits everything in flight. Runs once per lost session.
    fn failover(this: Rc<Inner>, lost_generation: u64) {
        if this.failing_over.get() || this.generation.get() != lost_generation {
            return;
        }
        this.failing_over.set(true);
        tokio::task::spawn_local(async move {
            let current = this.session.borrow_mut().take();
            let start = current
                .as_ref()
                .and_then(|s| {
                    this.distributors
                        .borrow()
                        .iter()
                        .position(|a| *a == s.distributor)
                })
                .map(|i| i + 1)
                .unwrap_or(0);
            // A redirect past its time to live is asked for again first.
            let expired = this
                .redirect_expires
                .get()
                .is_some_and(|t| Instant::now() >= t);
            let start = if expired && this.redirect().await.is_ok() {
                0
            } else {
                start
            };
            let mut result = Inner::connect_any(&this, start).await;
            if result.is_err() && !this.cfg.gateways.is_empty() {
                result = match this.redirect().await {
                    Ok(()) => Inner::connect_any(&this, 0).await,
                    Err(e) => Err(e),
                };
            }
            this.failing_over.set(false);
            match result {
                Ok(()) => {
                    let session = this.session.borrow();
                    if let Some(s) = session.as_ref() {
                        tracing::info!(distributor = %s.distributor, "failed over; resubmitting {} tasks", this.pending.borrow().len());
                        for (id, p) in this.pending.borrow().iter() {
                            let _ = this.send_submit(&s.out, id, p.key, &p.task);
                        }
                    }
                }
                Err(e) => {
                    for (id, p) in this.pending.borrow_mut().drain() {
                        p.tx.send(id, Err(e.clone()));
                    }
                    for w in this.waiters.borrow_mut().drain(..) {
                        w.fail(e.clone());
                    }
                }
            }
        });
    }
}

impl Waiter {
    fn fail(self, e: ClientError) {
        match self {
            Waiter::Status(tx) => {
                let _ = tx.send(Err(e));
            }
            Waiter::Explain(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

async fn read_loop(inner: Rc<Inner>, mut reader: conn::FrameReader, generation: u64) {
    // When the frames being handled arrived: read once per network read,
    // not once per frame (a burst of results arrives together, and the
    // clock read was the largest single cost of handling one).
    let mut arrived = Instant::now();
    loop {
        let frame = match reader.next_stamped(&mut arrived).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
        match frame.kind() {
            MessageKind::TaskResult => {
                let Ok(v) = frame.validate::<TaskResult>() else {
                    break;
                };
                let r = v.get();
                let Some(p) = inner.pending.borrow_mut().remove(r.task_id.to_native()) else {
                    continue;
                };
                let (worker, distributor) = {
                    let mut names = inner.names.borrow_mut();
                    (
                        names.get(r.worker.as_str()),
                        names.get(r.distributor.as_str()),
                    )
                };
                let outcome = Outcome {
                    task_id: r.task_id.to_native(),
                    status: status_from_archived(&r.status),
                    worker,
                    distributor,
                    gateway: inner.gateway.borrow().clone(),
                    attempts: r.attempts.to_native(),
                    exit_code: r.exit_code.to_native(),
                    message: r.message.as_str().to_owned(),
                    output: v.payload(),
                    timings: Timings {
                        queued_us: r.timings.queued_us.to_native(),
                        matched_us: r.timings.matched_us.to_native(),
                        ran_us: r.timings.ran_us.to_native(),
                    },
                    latency: arrived.saturating_duration_since(p.started),
                };
                p.tx.send(outcome.task_id, Ok(outcome));
            }
            MessageKind::StatusReply | MessageKind::ExplainReply | MessageKind::Error => {
                let Some(w) = inner.waiters.borrow_mut().pop_front() else {
                    continue;
                };
                match (frame.kind(), w) {
                    (MessageKind::StatusReply, Waiter::Status(tx)) => {
                        let r = frame
                            .validate::<StatusReply>()
                            .and_then(|v| v.to_owned_message());
                        let _ = tx.send(r.map_err(|e| ClientError::Refused(e.to_string())));
                    }
                    (MessageKind::ExplainReply, Waiter::Explain(tx)) => {
                        let r = frame
                            .validate::<ExplainReply>()
                            .and_then(|v| v.to_owned_message());
                        let _ = tx.send(r.map_err(|e| ClientError::Refused(e.to_string())));
                    }
                    (_, w) => {
                        let msg = frame
                            .validate::<ErrorMsg>()
                            .map(|e| e.get().message.as_str().to_owned())
                            .unwrap_or_else(|e| e.to_string());
                        w.fail(ClientError::Refused(msg));
                    }
                }
            }
            _ => {}
        }
    }
    Inner::failover(inner, generation);
}
