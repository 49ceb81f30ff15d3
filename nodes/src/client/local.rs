//! The `Rc` core of the client SDK: [`LocalClient`], `!Send`, run on a
//! current-thread runtime inside a `tokio::task::LocalSet` like the nodes.
//! [`Client`](super::Client) runs one on a thread of its own.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_wire::message::{ArchivedRefusal, ArchivedTaskStatus};
use allot_wire::{
    Cancel, Demands, ErrorMsg, ExplainQuery, ExplainReply, MessageKind, Redirect, Role,
    StatusQuery, StatusReply, Submit, TaskResult, TaskStatus, Timings,
};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::conn::{self, ConnError, Outbox};
use crate::inflight::InFlight;
use crate::labels::status_from_archived;
use crate::pki::Pki;
use crate::transport;

use super::{
    AttemptError, Attempts, ClientConfig, ClientError, LinkStats, Outcome, Retried, Searched, Task,
    MAX_IN_FLIGHT, MAX_RETRY_FOR,
};

/// How long a closing client thread waits for its connections to close.
const CLOSE_GRACE: Duration = Duration::from_millis(200);

/// The wait after the first failed search of an outage; doubled after
/// each further one, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(50);

/// The longest wait between two searches: a distributor that is back is
/// found within about a second.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Waits between the searches of an outage: doubling from
/// [`BACKOFF_FIRST`] to [`BACKOFF_MAX`], each drawn between half and all of
/// its step so that many clients that lost the same distributor do not
/// come back in lockstep. The draws come from a splitmix64 sequence seeded
/// per client: cheap, and enough to spread clients apart.
struct Backoff {
    step: Duration,
    state: u64,
}

impl Backoff {
    fn new(seed: u64) -> Backoff {
        Backoff {
            step: BACKOFF_FIRST,
            state: seed,
        }
    }

    fn next_wait(&mut self) -> Duration {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_MAX);
        // Both fit in u64: the step is at most a second.
        let half = (step / 2).as_nanos() as u64;
        Duration::from_nanos(half + z % (half + 1))
    }
}

/// The first search of a [`Inner::search`].
#[derive(Clone, Copy)]
enum First {
    /// The gateways, then the redirect's distributors (or only the
    /// distributor list, when the client was given one).
    Full,
    /// After losing the session to the distributor at `start - 1` of the
    /// list: the rest of the list, then the gateways again.
    After { start: usize },
}

/// Where an outcome goes: the waiting `submit` call, or the channel of a
/// pipelined submitter.
enum Reply {
    Once(oneshot::Sender<Result<Outcome, ClientError>>),
    Channel(mpsc::UnboundedSender<(u64, Result<Outcome, ClientError>)>),
}

impl Reply {
    /// Hands the outcome to its submitter. A submitter that stopped
    /// waiting (its future dropped) has cancelled the task already, so an
    /// outcome nobody receives is expected, not lost.
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
    /// It was handed to a stream at least once, so a distributor may have
    /// it: sent again with `resubmit` set. A task submitted while the client
    /// had no session has never left, and is sent as new.
    sent: bool,
    /// The generation of the session it was last sent on (0: none yet).
    /// A task on the [draining](Inner::draining) session stays there: its
    /// result comes on that stream, and it is not resubmitted meanwhile.
    on: u64,
    started: Instant,
    /// A `Cancel` was sent for it (sent once only).
    cancelled: bool,
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
    /// The session to a distributor that refused a task because it drains
    /// (it stops taking tasks before it stops): nothing new goes to it,
    /// but the tasks it had end there and their results come on its
    /// stream. At most one: when another member drains under the client,
    /// the older session is closed and its tasks resubmitted.
    draining: RefCell<Option<Session>>,
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
    /// Talks to the distributors it was given, never to a gateway
    /// ([`LocalClient::connect_distributor`]).
    direct: Cell<bool>,
    /// [`LocalClient::close`] was called: nothing reconnects any more.
    closed: Cell<bool>,
    /// Wakes a failover waiting between two searches when the client is
    /// closed.
    closing: tokio::sync::Notify,
}

/// A connected client on the current thread (`!Send`): cheap to clone,
/// every clone shares the one connection. Must run inside a `LocalSet`.
#[derive(Clone)]
pub struct LocalClient {
    inner: Rc<Inner>,
}

impl LocalClient {
    /// Searches the gateways, follows the redirect, connects to the first
    /// distributor that answers. When that fails, searches again for up to
    /// [`ClientConfig::retry_for`](ClientConfig#structfield.retry_for).
    pub async fn connect(cfg: ClientConfig) -> Result<LocalClient, ClientError> {
        let client = LocalClient::new(cfg)?;
        Inner::search(&client.inner, First::Full).await?;
        Ok(client)
    }

    /// Connects straight to one distributor (for status and explain),
    /// retrying as [`LocalClient::connect`] does. The client never asks a
    /// gateway, even if its configuration names some: its answers come
    /// from this distributor or none.
    pub async fn connect_distributor(
        cfg: ClientConfig,
        addr: SocketAddr,
    ) -> Result<LocalClient, ClientError> {
        let client = LocalClient::new(cfg)?;
        *client.inner.distributors.borrow_mut() = vec![addr];
        client.inner.direct.set(true);
        Inner::search(&client.inner, First::Full).await?;
        Ok(client)
    }

    fn new(cfg: ClientConfig) -> Result<LocalClient, ClientError> {
        let pki = Pki::load(&cfg.pki, &cfg.name).map_err(|e| ClientError::Pki(Arc::new(e)))?;
        let ep = transport::endpoint(&pki, SocketAddr::from(([0, 0, 0, 0], 0)))
            .map_err(|e| ClientError::Endpoint(Arc::new(e)))?;
        let key_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            .rotate_left(20);
        Ok(LocalClient {
            inner: Rc::new(Inner {
                cfg,
                ep,
                session: RefCell::new(None),
                draining: RefCell::new(None),
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
                    resubmit: false,
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
                direct: Cell::new(false),
                closed: Cell::new(false),
                closing: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The distributor this client talks to now.
    pub fn distributor(&self) -> Option<SocketAddr> {
        self.inner.session.borrow().as_ref().map(|s| s.distributor)
    }

    /// Submits a task and waits for its result. Many calls may be in flight
    /// at once on the same client. Dropping the future before it resolves
    /// cancels the task (see [`LocalClient::cancel`]).
    pub async fn submit(&self, task: Task) -> Result<Outcome, ClientError> {
        let (tx, rx) = oneshot::channel();
        let id = self.send(Rc::new(task), Reply::Once(tx))?;
        let guard = CancelOnDrop {
            client: self,
            id,
            armed: true,
        };
        let r = rx.await.unwrap_or(Err(ClientError::Closed));
        guard.disarm();
        r
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

    /// Submission under an id chosen by the caller (a [`Client`](super::Client)
    /// hands ids out itself, so that a submitter knows its id before the
    /// client's thread sees the task). Ids must be unique per client and
    /// not mixed with ids this client hands out.
    pub(crate) fn submit_as(
        &self,
        id: u64,
        task: Rc<Task>,
        tx: oneshot::Sender<Result<Outcome, ClientError>>,
    ) {
        if let Err(e) = self.send_as(id, task, Reply::Once(tx)) {
            // The reply went back with the error inside `send_as`.
            tracing::debug!(task = id, "submission refused: {e}");
        }
    }

    /// [`LocalClient::submit_as`] with the outcome to `results` (for
    /// [`Client::send_to`](super::Client::send_to)).
    pub(crate) fn submit_as_to(&self, id: u64, task: Rc<Task>, results: &Results) {
        if let Err(e) = self.send_as(id, task, Reply::Channel(results.clone())) {
            // The outcome went to `results` with the error inside `send_as`.
            tracing::debug!(task = id, "submission refused: {e}");
        }
    }

    fn send(&self, task: Rc<Task>, tx: Reply) -> Result<u64, ClientError> {
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id + 1);
        self.send_as(id, task, tx).map(|()| id)
    }

    /// Sends task `id`. When refused (too many in flight, waiting ones
    /// included, or the client closed), `tx` gets the error as well as the
    /// caller. Without a session (failing over) the task waits in the
    /// in-flight table and is sent once a session is back.
    fn send_as(&self, id: u64, task: Rc<Task>, tx: Reply) -> Result<(), ClientError> {
        let inner = &self.inner;
        if inner.closed.get() {
            tx.send(id, Err(ClientError::Closed));
            return Err(ClientError::Closed);
        }
        if inner.pending.borrow().len() >= MAX_IN_FLIGHT {
            let e = ClientError::TooMany(MAX_IN_FLIGHT);
            tx.send(id, Err(e.clone()));
            return Err(e);
        }
        let key = inner.key_base ^ id;
        let on = {
            let session = inner.session.borrow();
            session.as_ref().map_or(0, |s| {
                match inner.send_submit(&s.out, id, key, &task, false) {
                    Ok(()) => s.generation,
                    Err(_) => 0,
                }
            })
        };
        inner.pending.borrow_mut().insert(
            id,
            PendingTask {
                tx,
                task,
                key,
                sent: on != 0,
                on,
                started: Instant::now(),
                cancelled: false,
            },
        );
        if on == 0 {
            // Not connected or the stream just failed: the failover (which
            // resubmits everything pending) takes care of it.
            Inner::failover(inner.clone(), inner.generation.get());
        }
        Ok(())
    }

    /// Asks for task `task_id` to be stopped; returns whether it was still
    /// in flight. The distributor takes it off its queue or stops it on its
    /// worker, and the task's submitter gets an outcome with status
    /// [`TaskStatus::Cancelled`] (or the task's real outcome, if it ended
    /// first). While the client has no session (failing over), the task is
    /// not resubmitted and ends as cancelled at once.
    pub fn cancel(&self, task_id: u64) -> bool {
        let inner = &self.inner;
        let sent = {
            let mut pending = inner.pending.borrow_mut();
            let Some(p) = pending.get_mut(task_id) else {
                return false;
            };
            if p.cancelled {
                return true;
            }
            p.cancelled = true;
            // To the distributor that has it: a draining one keeps its
            // tasks to their end.
            let draining = inner.draining.borrow();
            let session = inner.session.borrow();
            draining
                .as_ref()
                .filter(|d| d.generation == p.on)
                .or(session.as_ref())
                .is_some_and(|s| s.out.send(&Cancel { task_id }, &Bytes::new()).is_ok())
        };
        if !sent {
            inner.end_cancelled(task_id);
        }
        true
    }

    /// The distributor's table of workers (every one it lists, down ones
    /// included), its totals and counters.
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        self.status_with(StatusQuery {
            include_down: true,
            max_workers: u32::MAX,
        })
        .await
    }

    /// The distributor's status for a query of the caller's own: with
    /// `max_workers: 0`, only the totals and counters (a cheap poll, even
    /// of a distributor with a hundred thousand workers).
    pub async fn status_with(&self, q: StatusQuery) -> Result<StatusReply, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.request(&q, Waiter::Status(tx))?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Whether a task would be placed, and if not why.
    pub async fn explain(&self, q: ExplainQuery) -> Result<ExplainReply, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.request(&q, Waiter::Explain(tx))?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    fn request<M: allot_wire::WireMessage>(&self, m: &M, w: Waiter) -> Result<(), ClientError> {
        let session = self.inner.session.borrow();
        let s = session.as_ref().ok_or(ClientError::NotConnected)?;
        s.out
            .send(m, &Bytes::new())
            .map_err(|e| ClientError::Lost(Arc::new(e)))?;
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

    /// Waits (briefly) for the closed connections to tell their peers, so
    /// that a distributor learns at once that the client is gone.
    pub(crate) async fn wait_idle(&self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, self.inner.ep.wait_idle()).await;
    }

    /// Closes the connection. A failover under way stops, and the tasks
    /// it held end with [`ClientError::Closed`].
    pub fn close(&self) {
        // The reader's end does not reconnect, a retrying failover stops.
        self.inner.closed.set(true);
        self.inner.closing.notify_waiters();
        if let Some(s) = self.inner.session.borrow_mut().take() {
            s.out.close();
        }
        if let Some(s) = self.inner.draining.borrow_mut().take() {
            s.out.close();
        }
        self.inner.ep.close(0u32.into(), b"client done");
    }
}

/// Cancels a [`LocalClient::submit`] whose future is dropped before it
/// resolves.
struct CancelOnDrop<'a> {
    client: &'a LocalClient,
    id: u64,
    armed: bool,
}

impl CancelOnDrop<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.client.cancel(self.id);
        }
    }
}

impl Inner {
    /// Ends task `id` as cancelled without asking a distributor (there is
    /// no session to ask, or it was lost).
    fn end_cancelled(&self, id: u64) {
        let Some(p) = self.pending.borrow_mut().remove(id) else {
            return;
        };
        let outcome = Outcome {
            task_id: id,
            status: TaskStatus::Cancelled,
            worker: Arc::from(""),
            distributor: Arc::from(""),
            gateway: self.gateway.borrow().clone(),
            attempts: 0,
            exit_code: 0,
            message: "cancelled by the client while it had no distributor".into(),
            output: Bytes::new(),
            timings: Timings::default(),
            latency: p.started.elapsed(),
        };
        p.tx.send(id, Ok(outcome));
    }

    /// Encodes `task` as a `Submit` through the reused message;
    /// `resubmit` after a failover (see `Submit::resubmit`).
    fn send_submit(
        &self,
        out: &Outbox,
        id: u64,
        key: u64,
        task: &Task,
        resubmit: bool,
    ) -> Result<(), ConnError> {
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
        s.deadline_ms = task.deadline_ms();
        s.resubmit = resubmit;
        out.send(&*s, &task.payload)
    }

    /// Asks the gateways, in order, for a distributor list. Attempts end
    /// by `deadline` (if any); none starts after it.
    async fn redirect(&self, deadline: Option<Instant>) -> Result<(), ClientError> {
        let mut tried = Attempts::default();
        for name in &self.cfg.gateways {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            // Looked up at every search: a gateway whose name moved is
            // found at its new address.
            let addrs = match name.resolve().await {
                Ok(a) => a,
                Err(e) => {
                    let none = SocketAddr::from(([0, 0, 0, 0], name.port()));
                    tried.push(Searched::Gateway, none, e.into());
                    continue;
                }
            };
            for gw in &addrs {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                match self.ask_gateway(*gw, deadline).await {
                    Ok(r) => {
                        let list: Vec<SocketAddr> = r
                            .distributors
                            .iter()
                            .filter_map(|a| a.parse().ok())
                            .collect();
                        if list.is_empty() {
                            tried.push(Searched::Gateway, *gw, AttemptError::EmptyRedirect);
                            continue;
                        }
                        *self.distributors.borrow_mut() = list;
                        *self.gateway.borrow_mut() = Arc::from(gw.to_string());
                        self.redirect_expires.set(Some(
                            Instant::now() + Duration::from_millis(u64::from(r.ttl_ms)),
                        ));
                        return Ok(());
                    }
                    Err(e) => tried.push(Searched::Gateway, *gw, e),
                }
            }
        }
        Err(ClientError::search_failed(tried, Searched::Gateway))
    }

    /// Runs one connection attempt within the configured connect timeout,
    /// or until `deadline` if that comes first.
    async fn within<T>(
        &self,
        deadline: Option<Instant>,
        attempt: impl Future<Output = Result<T, AttemptError>>,
    ) -> Result<T, AttemptError> {
        let mut after = self.cfg.connect_timeout;
        if let Some(d) = deadline {
            // In whole milliseconds (rounded up), as the error shows it.
            let left = d.saturating_duration_since(Instant::now()).as_nanos();
            let left =
                Duration::from_millis(u64::try_from(left.div_ceil(1_000_000)).unwrap_or(u64::MAX));
            after = after.min(left);
        }
        tokio::time::timeout(after, attempt)
            .await
            .unwrap_or(Err(AttemptError::Timeout { after }))
    }

    /// Connects to `addr` and exchanges `Hello`s.
    async fn dial(
        &self,
        addr: SocketAddr,
    ) -> Result<(quinn::Connection, conn::Stream), AttemptError> {
        let conn = transport::connect(&self.ep, addr).await?;
        let s = conn::open(
            &conn,
            &conn::hello(Role::Client, &self.cfg.name, self.cfg.attrs.clone()),
        )
        .await?;
        Ok((conn, s))
    }

    async fn ask_gateway(
        &self,
        gw: SocketAddr,
        deadline: Option<Instant>,
    ) -> Result<Redirect, AttemptError> {
        self.within(deadline, async {
            let (conn, mut s) = self.dial(gw).await?;
            let r = Inner::read_redirect(&mut s.reader).await;
            s.out.close();
            conn.close(0u32.into(), b"redirected");
            Ok(r?)
        })
        .await
    }

    async fn read_redirect(reader: &mut conn::FrameReader) -> Result<Redirect, ConnError> {
        let f = reader.next().await?.ok_or(ConnError::Closed)?;
        if f.kind() == MessageKind::Error {
            Err(conn::refusal(f)?)
        } else {
            Ok(f.validate::<Redirect>()?.to_owned_message()?)
        }
    }

    /// Connects to the distributors from `start` on, in order (and, with
    /// `wrap`, then to those before `start`). Attempts end by `deadline`
    /// (if any); none starts after it.
    async fn connect_any(
        this: &Rc<Inner>,
        start: usize,
        wrap: bool,
        deadline: Option<Instant>,
    ) -> Result<(), ClientError> {
        let list = this.distributors.borrow().clone();
        let mut tried = Attempts::default();
        // Not back to a member that drains: it takes no new tasks.
        let avoid = this.draining.borrow().as_ref().map(|d| d.distributor);
        let order = list
            .iter()
            .skip(start)
            .chain(if wrap {
                list.get(..start.min(list.len())).unwrap_or_default()
            } else {
                &[]
            })
            .filter(|a| Some(**a) != avoid);
        for addr in order {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            match this.open_session(*addr, deadline).await {
                Ok((session, reader)) => {
                    let generation = session.generation;
                    *this.session.borrow_mut() = Some(session);
                    tokio::task::spawn_local(read_loop(this.clone(), reader, generation));
                    return Ok(());
                }
                Err(e) => tried.push(Searched::Distributor, *addr, e),
            }
        }
        Err(ClientError::search_failed(tried, Searched::Distributor))
    }

    async fn open_session(
        &self,
        addr: SocketAddr,
        deadline: Option<Instant>,
    ) -> Result<(Session, conn::FrameReader), AttemptError> {
        let (conn, s) = self.within(deadline, self.dial(addr)).await?;
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

    /// One whole search: the gateways in order, then the distributors of
    /// the redirect in order (only the distributor list for a direct
    /// client).
    async fn search_once(this: &Rc<Inner>, deadline: Option<Instant>) -> Result<(), ClientError> {
        if !this.direct.get() {
            this.redirect(deadline).await?;
        }
        Inner::connect_any(this, 0, false, deadline).await
    }

    /// The first search after losing the session to the distributor at
    /// `start - 1`: the rest of the list, then the gateways again (a
    /// redirect past its time to live is asked for again first). A direct
    /// client tries the rest of its list, then the start of it, the lost
    /// distributor last.
    async fn search_after(this: &Rc<Inner>, start: usize) -> Result<(), ClientError> {
        if this.direct.get() {
            return Inner::connect_any(this, start, true, None).await;
        }
        let expired = this
            .redirect_expires
            .get()
            .is_some_and(|t| Instant::now() >= t);
        let start = if expired && this.redirect(None).await.is_ok() {
            0
        } else {
            start
        };
        let Err(rest) = Inner::connect_any(this, start, false, None).await else {
            return Ok(());
        };
        match Inner::search_once(this, None).await {
            Ok(()) => Ok(()),
            // Both searches' addresses are named.
            Err(e) => match (rest.attempts(), e.attempts(), e.searched()) {
                (Some(first), Some(then), Some(searched)) => {
                    let mut tried = first.clone();
                    tried.merge(then);
                    Err(ClientError::search_failed(tried, searched))
                }
                _ => Err(e),
            },
        }
    }

    /// Searches until a session is open, retrying the whole search with
    /// [`Backoff`] while the failures may pass, for at most
    /// `cfg.retry_for` (cut to [`MAX_RETRY_FOR`]) from the first failed
    /// search. At the bound, the error of the last search comes back with
    /// every address tried during the window and for how long; a search
    /// refused for good (every attempt [permanent](AttemptError::is_permanent)),
    /// any other error, or [`LocalClient::close`] ends it at once.
    async fn search(this: &Rc<Inner>, first: First) -> Result<(), ClientError> {
        let window = this.cfg.retry_for.min(MAX_RETRY_FOR);
        let mut backoff = Backoff::new(this.key_base ^ this.generation.get());
        let mut tried = Attempts::default();
        let mut searches: u32 = 0;
        // When the first search failed, and when the window closes.
        let mut failed: Option<(Instant, Instant)> = None;
        loop {
            let deadline = failed.map(|(_, d)| d);
            let r = match (searches, first) {
                (0, First::After { start }) => Inner::search_after(this, start).await,
                _ => Inner::search_once(this, deadline).await,
            };
            searches = searches.saturating_add(1);
            let e = match r {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if this.closed.get() {
                return Err(ClientError::Closed);
            }
            let (Some(these), Some(searched)) = (e.attempts(), e.searched()) else {
                return Err(e);
            };
            tried.merge(these);
            // Nothing to try (none configured, or the window closed before
            // the first attempt) is as final as a refusal.
            let permanent = these.all_permanent() || these.iter().next().is_none();
            let (since, until) = *failed.get_or_insert_with(|| {
                let now = Instant::now();
                (now, now + window)
            });
            if searches == 1 && (window.is_zero() || permanent) {
                // Nothing retried: the search's own error, as it was.
                return Err(e);
            }
            let give_up = |tried: Attempts| {
                let retried = Retried {
                    after: since.elapsed(),
                    searches,
                };
                Err(ClientError::search_failed(
                    tried.with_retried(retried),
                    searched,
                ))
            };
            let left = until.saturating_duration_since(Instant::now());
            if permanent || left.is_zero() {
                return give_up(tried);
            }
            tracing::debug!(
                "search {searches} failed, retrying for {:.1} s more: {e}",
                left.as_secs_f64()
            );
            tokio::select! {
                () = tokio::time::sleep(backoff.next_wait().min(left)) => {}
                () = this.closing.notified() => {}
            }
            if this.closed.get() {
                return Err(ClientError::Closed);
            }
            if Instant::now() >= until {
                return give_up(tried);
            }
        }
    }

    /// Moves to the next distributor (then asks the gateways again),
    /// retrying through an outage as [`Inner::search`] does, and
    /// resubmits everything in flight. Runs once per lost session. Tasks
    /// in flight, and tasks submitted meanwhile, wait in `pending`; when
    /// the search gives up they all fail with its error (but those on a
    /// draining session, which still end there).
    fn failover(this: Rc<Inner>, lost_generation: u64) {
        Inner::move_off(this, lost_generation, false);
    }

    /// The distributor of the current session drains (it refused a task
    /// with [`Refusal::Draining`](allot_wire::Refusal::Draining)): the
    /// session is kept for the tasks it has, and the client moves to
    /// another member as [`Inner::failover`] does, sending it everything
    /// else in flight.
    fn hand_off(this: Rc<Inner>, generation: u64) {
        Inner::move_off(this, generation, true);
    }

    fn move_off(this: Rc<Inner>, lost_generation: u64, keep: bool) {
        if this.closed.get() || this.failing_over.get() || this.generation.get() != lost_generation
        {
            return;
        }
        this.failing_over.set(true);
        tokio::task::spawn_local(async move {
            let current = this.session.borrow_mut().take();
            // Queries sent on the lost stream get no answer on another one.
            for w in this.waiters.borrow_mut().drain(..) {
                w.fail(ClientError::Lost(Arc::new(ConnError::OutboxClosed)));
            }
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
            if let (true, Some(s)) = (keep, current) {
                tracing::info!(distributor = %s.distributor, "distributor drains; moving to another member");
                let older = this.draining.borrow_mut().replace(s);
                if let Some(old) = older {
                    // Only one is kept: the older one's tasks go along.
                    old.out.close();
                    this.leave_session(old.generation);
                }
            }
            let result = Inner::search(&this, First::After { start }).await;
            this.failing_over.set(false);
            match result {
                Ok(()) => this.resubmit_pending(),
                Err(e) => {
                    let draining = this.draining_generation();
                    let failed = this.pending.borrow().ids_where(|p| Some(p.on) != draining);
                    for id in failed {
                        if let Some(p) = this.pending.borrow_mut().remove(id) {
                            p.tx.send(id, Err(e.clone()));
                        }
                    }
                    for w in this.waiters.borrow_mut().drain(..) {
                        w.fail(e.clone());
                    }
                }
            }
        });
    }

    /// The generation of the draining session, if there is one.
    fn draining_generation(&self) -> Option<u64> {
        self.draining.borrow().as_ref().map(|d| d.generation)
    }

    /// Tasks last sent on session `generation` are on none now (it ended):
    /// they go with the next resubmission. Returns how many.
    fn leave_session(&self, generation: u64) -> usize {
        let mut n = 0;
        let ids = self.pending.borrow().ids_where(|p| p.on == generation);
        let mut pending = self.pending.borrow_mut();
        for id in ids {
            if let Some(p) = pending.get_mut(id) {
                p.on = 0;
                n += 1;
            }
        }
        n
    }

    /// Session `generation`'s stream ended. The draining session's end
    /// sends the tasks it still had (it stopped before they ended) to the
    /// current distributor as resubmissions; any other session's end is a
    /// failover.
    fn session_ended(this: Rc<Inner>, generation: u64) {
        if this.draining_generation() != Some(generation) {
            Inner::failover(this, generation);
            return;
        }
        this.draining.borrow_mut().take();
        if this.leave_session(generation) == 0 || this.failing_over.get() {
            // Nothing left there, or the search under way sends them.
            return;
        }
        if this.session.borrow().is_some() {
            this.resubmit_pending();
        } else {
            let current = this.generation.get();
            Inner::failover(this, current);
        }
    }

    /// Task `id`, sent on session `generation`, was refused there because
    /// its distributor drains: it goes to another member.
    fn refused_draining(this: &Rc<Inner>, id: u64, generation: u64) {
        {
            let mut pending = this.pending.borrow_mut();
            let Some(p) = pending.get_mut(id) else {
                return;
            };
            if p.on != generation {
                return; // sent elsewhere since
            }
            p.on = 0;
        }
        if this.generation.get() == generation && this.session.borrow().is_some() {
            Inner::hand_off(this.clone(), generation);
        } else if this.session.borrow().is_some() && !this.failing_over.get() {
            // Refused by the member the client already moved off.
            this.resubmit_pending();
        }
    }

    /// Whether a draining distributor's refusal can move the client: a
    /// client given a single distributor (no gateway) has nowhere to go,
    /// and gets the refusal as its outcome.
    fn may_move(&self) -> bool {
        !self.direct.get() || self.distributors.borrow().len() > 1
    }

    /// Sends every task in flight that is on no session to the current
    /// one: under its own key, as a resubmission if it was sent before.
    /// Tasks on the draining session stay there. Cancelled ones end here.
    fn resubmit_pending(&self) {
        let session = self.session.borrow();
        let Some(s) = session.as_ref() else {
            return;
        };
        let draining = self.draining_generation();
        let mut cancelled = Vec::new();
        let mut unsent = Vec::new();
        let mut sent = Vec::new();
        for (id, p) in self.pending.borrow().iter() {
            if p.on == s.generation || (p.on != 0 && Some(p.on) == draining) {
                continue;
            }
            if p.cancelled {
                cancelled.push(id);
            } else if let Err(e) = self.send_submit(&s.out, id, p.key, &p.task, p.sent) {
                unsent.push((id, e));
            } else {
                sent.push(id);
            }
        }
        tracing::info!(distributor = %s.distributor, "resubmitted {} tasks", sent.len());
        {
            let mut pending = self.pending.borrow_mut();
            for id in sent {
                if let Some(p) = pending.get_mut(id) {
                    p.sent = true;
                    p.on = s.generation;
                }
            }
        }
        // Cancelled before the failover: not resubmitted but ended here.
        for id in cancelled {
            self.end_cancelled(id);
        }
        // A resubmission the new stream would not take ends with that
        // error, not in silence.
        for (id, e) in unsent {
            if let Some(p) = self.pending.borrow_mut().remove(id) {
                p.tx.send(id, Err(ClientError::Lost(Arc::new(e))));
            }
        }
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
                if matches!(r.status, ArchivedTaskStatus::Refused)
                    && matches!(r.refusal, ArchivedRefusal::Draining)
                    && inner.may_move()
                {
                    Inner::refused_draining(&inner, r.task_id.to_native(), generation);
                    continue;
                }
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
                if generation != inner.generation.get() {
                    // The answer to a query on a session left behind (its
                    // waiters were failed when the client moved).
                    continue;
                }
                let Some(w) = inner.waiters.borrow_mut().pop_front() else {
                    continue;
                };
                match (frame.kind(), w) {
                    (MessageKind::StatusReply, Waiter::Status(tx)) => {
                        let r = frame
                            .validate::<StatusReply>()
                            .and_then(|v| v.to_owned_message());
                        let _ = tx.send(r.map_err(|e| ClientError::BadReply(Arc::new(e))));
                    }
                    (MessageKind::ExplainReply, Waiter::Explain(tx)) => {
                        let r = frame
                            .validate::<ExplainReply>()
                            .and_then(|v| v.to_owned_message());
                        let _ = tx.send(r.map_err(|e| ClientError::BadReply(Arc::new(e))));
                    }
                    (_, w) => {
                        let e = match frame.validate::<ErrorMsg>() {
                            Ok(e) => ClientError::Refused {
                                code: conn::decode_code(&e.get().code),
                                message: e.get().message.as_str().to_owned(),
                            },
                            Err(e) => ClientError::BadReply(Arc::new(e)),
                        };
                        w.fail(e);
                    }
                }
            }
            _ => {}
        }
    }
    Inner::session_ended(inner, generation);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_each_wait_in_the_upper_half_of_its_step() {
        let mut b = Backoff::new(7);
        let mut step = BACKOFF_FIRST;
        for _ in 0..12 {
            let w = b.next_wait();
            assert!(w >= step / 2 && w <= step, "{w:?} for a step of {step:?}");
            step = (step * 2).min(BACKOFF_MAX);
        }
        // Two clients seeded apart do not wait alike.
        let (mut a, mut c) = (Backoff::new(1), Backoff::new(2));
        assert!((0..4).any(|_| a.next_wait() != c.next_wait()));
    }
}
