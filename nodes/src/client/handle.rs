//! [`Client`]: the `Send + Sync + Clone` handle an embedding program holds.
//!
//! The handle owns a thread that runs a current-thread runtime and a
//! `LocalSet` with a [`LocalClient`] on it (as [`node_thread`] does for
//! the nodes), so the connection, the in-flight table and the encoder stay
//! single-threaded and lock-free. Handles talk to that thread over two
//! bounded channels:
//!
//! * commands (submissions, explicit cancels, status, explain), at most
//!   [`COMMAND_QUEUE`] waiting. When full, the async methods wait for room
//!   (backpressure: a submitter cannot queue without limit) and the
//!   `*_blocking` ones block. The client thread takes up to a batch of
//!   commands per wake-up, and [`Client::start_many`] sends many tasks as
//!   one command.
//! * cancels from dropped [`Submission`]s, at most [`CANCEL_QUEUE`]
//!   waiting. `Drop` cannot wait: when full, the cancel is dropped (with a
//!   warning) and the task runs to its end, its outcome discarded.
//!
//! Outcomes do not come back through the thread's channels: each
//! submission carries a oneshot sender the client thread completes when
//! the result arrives.
//!
//! [`node_thread`]: crate::node_thread

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use allot_wire::{ExplainQuery, ExplainReply, StatusReply};
use tokio::sync::{mpsc, oneshot, Notify};

use super::{ClientConfig, ClientError, LinkStats, LocalClient, Outcome, Results, Task};

/// Commands (each a submission, a batch of them, or a query) that may wait
/// for the client thread; see the module docs for what happens when full.
pub const COMMAND_QUEUE: usize = 1024;

/// Cancels from dropped submissions that may wait for the client thread;
/// past it a dropped submission's cancel is lost (the task runs to its
/// end).
pub const CANCEL_QUEUE: usize = 65_536;

/// Commands the client thread takes per wake-up.
const BATCH: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// One submission on its way to the client thread.
struct Request {
    id: u64,
    task: Task,
    reply: Reply<Outcome>,
}

enum Command {
    Submit(Request),
    SubmitMany(Vec<Request>),
    /// Tasks `first..` whose outcomes all go to one channel.
    SubmitTo {
        first: u64,
        tasks: Vec<Task>,
        results: Results,
    },
    Cancel(u64),
    Status(Reply<StatusReply>),
    Explain(ExplainQuery, Reply<ExplainReply>),
    Distributor(oneshot::Sender<Option<SocketAddr>>),
    LinkStats(oneshot::Sender<Option<LinkStats>>),
}

/// What every clone of a handle, and every submission in flight, shares.
/// The client thread holds only the receiving ends, so it ends once the
/// last of these is dropped (or at [`Client::close`]).
struct Shared {
    commands: mpsc::Sender<Command>,
    cancels: mpsc::Sender<u64>,
    /// Task ids, handed out here so that a submitter knows its id (to
    /// cancel it) without waiting for the client thread.
    next_id: AtomicU64,
    stop: Arc<Notify>,
}

/// A connected client that any thread may use: `Send + Sync`, and cheap
/// to clone (every clone shares one connection and one client thread).
///
/// Works from any tokio runtime, multi-thread included, and from plain
/// threads through [`Client::submit_blocking`] and friends.
///
/// ```no_run
/// # async fn demo(cfg: allot::ClientConfig) -> Result<(), allot::ClientError> {
/// let client = allot::Client::connect(cfg).await?;
/// let out = client.submit(allot::Task::new("echo", "hi")).await?;
/// println!("{:?} from {}", out.status, out.worker);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("next_id", &self.shared.next_id.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts the client thread, which searches the gateways, follows the
    /// redirect and connects to the first distributor that answers.
    /// Returns once connected, or failed: after the retry window when no
    /// search succeeds (see [`ClientConfig::retry_for`](ClientConfig#structfield.retry_for)).
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let (client, ready) = Client::spawn(cfg, None)?;
        ready.await.unwrap_or(Err(ClientError::Closed))?;
        Ok(client)
    }

    /// Like [`Client::connect`] but straight to one distributor, without a
    /// gateway (for status and explain, or a cluster without gateways).
    pub async fn connect_distributor(
        cfg: ClientConfig,
        addr: SocketAddr,
    ) -> Result<Client, ClientError> {
        let (client, ready) = Client::spawn(cfg, Some(addr))?;
        ready.await.unwrap_or(Err(ClientError::Closed))?;
        Ok(client)
    }

    /// [`Client::connect`] for a plain thread.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime (tokio's rule for blocking
    /// calls); use [`Client::connect`] there.
    pub fn connect_blocking(cfg: ClientConfig) -> Result<Client, ClientError> {
        let (client, ready) = Client::spawn(cfg, None)?;
        ready.blocking_recv().unwrap_or(Err(ClientError::Closed))?;
        Ok(client)
    }

    fn spawn(
        cfg: ClientConfig,
        distributor: Option<SocketAddr>,
    ) -> Result<(Client, oneshot::Receiver<Result<(), ClientError>>), ClientError> {
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (cancels, cancels_rx) = mpsc::channel(CANCEL_QUEUE);
        let stop = Arc::new(Notify::new());
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("allot-client-{}", cfg.name))
            .spawn(move || {
                client_thread(
                    cfg,
                    distributor,
                    commands_rx,
                    cancels_rx,
                    thread_stop,
                    ready_tx,
                )
            })
            .map_err(|e| ClientError::Thread(Arc::new(e)))?;
        let client = Client {
            shared: Arc::new(Shared {
                commands,
                cancels,
                next_id: AtomicU64::new(1),
                stop,
            }),
        };
        Ok((client, ready_rx))
    }

    fn request(&self, task: Task) -> (Request, Submission) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let submission = Submission {
            id,
            rx,
            shared: self.shared.clone(),
            done: false,
        };
        (Request { id, task, reply }, submission)
    }

    /// Submits a task and waits for its outcome. Many calls may be in
    /// flight at once, from any number of threads. Dropping the future
    /// before it resolves cancels the task.
    pub async fn submit(&self, task: Task) -> Result<Outcome, ClientError> {
        self.start(task).await?.await
    }

    /// Sends a task (waiting while the command queue is full) and returns
    /// its [`Submission`] without waiting for the outcome: to keep many
    /// tasks in flight from one caller, or to learn the task's id.
    pub async fn start(&self, task: Task) -> Result<Submission, ClientError> {
        let (req, sub) = self.request(task);
        self.shared
            .commands
            .send(Command::Submit(req))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(sub)
    }

    /// Sends many tasks as one command (one slot in the command queue, one
    /// wake-up of the client thread) and returns their submissions, in
    /// order.
    pub async fn start_many(
        &self,
        tasks: impl IntoIterator<Item = Task>,
    ) -> Result<Vec<Submission>, ClientError> {
        let (reqs, subs): (Vec<Request>, Vec<Submission>) =
            tasks.into_iter().map(|t| self.request(t)).unzip();
        self.shared
            .commands
            .send(Command::SubmitMany(reqs))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(subs)
    }

    /// Sends many tasks as one command, their outcomes to go to `results`,
    /// each tagged with its task id, in the order they end. Returns the
    /// ids, `first..first + n` in the order of `tasks`.
    ///
    /// For a caller that keeps many tasks in flight and takes the outcomes
    /// from one channel, rather than one [`Submission`] per task (a
    /// language binding, a pipeline stage). The channel holds at most the
    /// outcomes of the tasks the caller has in flight (the client refuses
    /// tasks past [`MAX_IN_FLIGHT`](super::MAX_IN_FLIGHT), each with an
    /// outcome of [`ClientError::TooMany`]). Nothing cancels these tasks if
    /// `results` is dropped: cancel them with [`Client::cancel`] or
    /// [`Client::cancel_nowait`].
    pub async fn send_to(
        &self,
        tasks: Vec<Task>,
        results: &Results,
    ) -> Result<std::ops::Range<u64>, ClientError> {
        let (command, ids) = self.submit_to(tasks, results);
        self.shared
            .commands
            .send(command)
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(ids)
    }

    /// [`Client::send_to`] for a plain thread: blocks while the command
    /// queue is full.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    pub fn send_to_blocking(
        &self,
        tasks: Vec<Task>,
        results: &Results,
    ) -> Result<std::ops::Range<u64>, ClientError> {
        let (command, ids) = self.submit_to(tasks, results);
        self.shared
            .commands
            .blocking_send(command)
            .map_err(|_| ClientError::Closed)?;
        Ok(ids)
    }

    fn submit_to(&self, tasks: Vec<Task>, results: &Results) -> (Command, std::ops::Range<u64>) {
        let n = tasks.len() as u64;
        let first = self.shared.next_id.fetch_add(n, Ordering::Relaxed);
        let command = Command::SubmitTo {
            first,
            tasks,
            results: results.clone(),
        };
        (command, first..first + n)
    }

    /// [`Client::start`] for a plain thread: blocks while the command queue
    /// is full.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    pub fn start_blocking(&self, task: Task) -> Result<Submission, ClientError> {
        let (req, sub) = self.request(task);
        self.shared
            .commands
            .blocking_send(Command::Submit(req))
            .map_err(|_| ClientError::Closed)?;
        Ok(sub)
    }

    /// [`Client::submit`] for a plain thread.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    pub fn submit_blocking(&self, task: Task) -> Result<Outcome, ClientError> {
        self.start_blocking(task)?.wait_blocking()
    }

    /// Asks for task `task_id` (a [`Submission::id`] or
    /// [`Outcome::task_id`]) to be stopped. Its submitter gets an outcome
    /// with status [`TaskStatus::Cancelled`](allot_wire::TaskStatus::Cancelled)
    /// (or its real outcome, if it ended first). Waits only for room in the
    /// command queue, which keeps it behind the task's own submission; a
    /// task no longer in flight is left alone.
    pub async fn cancel(&self, task_id: u64) -> Result<(), ClientError> {
        self.shared
            .commands
            .send(Command::Cancel(task_id))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// [`Client::cancel`] for a plain thread.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    pub fn cancel_blocking(&self, task_id: u64) -> Result<(), ClientError> {
        self.shared
            .commands
            .blocking_send(Command::Cancel(task_id))
            .map_err(|_| ClientError::Closed)
    }

    /// [`Client::cancel`] without waiting, from anywhere (a `Drop`, a
    /// signal handler's thread, an async runtime): through the command
    /// queue when it has room, which keeps the cancel behind the task's own
    /// submission; else through the queue of dropped submissions' cancels,
    /// which the client thread takes first, so a cancel sent that way for
    /// a task whose submission is still queued finds nothing to stop.
    /// Fails with [`ClientError::CancelQueueFull`] when both are full.
    pub fn cancel_nowait(&self, task_id: u64) -> Result<(), ClientError> {
        match self.shared.commands.try_send(Command::Cancel(task_id)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ClientError::Closed),
            Err(mpsc::error::TrySendError::Full(_)) => {
                match self.shared.cancels.try_send(task_id) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(ClientError::Closed),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        Err(ClientError::CancelQueueFull(CANCEL_QUEUE))
                    }
                }
            }
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(command(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// The distributor's table of workers.
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        self.ask(Command::Status).await?
    }

    /// Whether a task would be placed, and if not why.
    pub async fn explain(&self, q: ExplainQuery) -> Result<ExplainReply, ClientError> {
        self.ask(|tx| Command::Explain(q, tx)).await?
    }

    /// The distributor this client talks to now (`None` while failing
    /// over).
    pub async fn distributor(&self) -> Result<Option<SocketAddr>, ClientError> {
        self.ask(Command::Distributor).await
    }

    /// The current connection's transport counters, if connected.
    pub async fn link_stats(&self) -> Result<Option<LinkStats>, ClientError> {
        self.ask(Command::LinkStats).await
    }

    /// Closes the connection and ends the client thread, for every clone.
    /// Tasks still in flight end with [`ClientError::Closed`]. Dropping
    /// every clone and submission does the same.
    pub fn close(&self) {
        self.shared.stop.notify_one();
    }
}

/// A task sent by [`Client::start`]: a future of its outcome. Dropping it
/// before it resolves cancels the task.
#[must_use = "dropping a Submission cancels its task"]
pub struct Submission {
    id: u64,
    rx: oneshot::Receiver<Result<Outcome, ClientError>>,
    /// Keeps the client thread running while the outcome is awaited.
    shared: Arc<Shared>,
    done: bool,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish()
    }
}

impl Submission {
    /// The task's id (for [`Client::cancel`]; also [`Outcome::task_id`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the outcome on a plain thread.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    pub fn wait_blocking(mut self) -> Result<Outcome, ClientError> {
        // `blocking_recv` takes the receiver; an unused one stands in.
        let rx = std::mem::replace(&mut self.rx, oneshot::channel().1);
        self.done = true;
        rx.blocking_recv().unwrap_or(Err(ClientError::Closed))
    }
}

impl Future for Submission {
    type Output = Result<Outcome, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = Pin::new(&mut self.rx).poll(cx);
        match r {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                self.done = true;
                Poll::Ready(r.unwrap_or(Err(ClientError::Closed)))
            }
        }
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // An outcome already sent means the task is over: nothing to
        // cancel. Closing first makes the check final.
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            return;
        }
        if let Err(e) = self.shared.cancels.try_send(self.id) {
            let e = match e {
                mpsc::error::TrySendError::Full(_) => ClientError::CancelQueueFull(CANCEL_QUEUE),
                mpsc::error::TrySendError::Closed(_) => return,
            };
            tracing::warn!(task = self.id, "dropped submission not cancelled: {e}");
        }
    }
}

/// The client thread: connects, reports on `ready`, then serves commands
/// until every handle is gone or `stop` is notified.
fn client_thread(
    cfg: ClientConfig,
    distributor: Option<SocketAddr>,
    commands: mpsc::Receiver<Command>,
    cancels: mpsc::Receiver<u64>,
    stop: Arc<Notify>,
    ready: oneshot::Sender<Result<(), ClientError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(ClientError::Thread(Arc::new(e))));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let connected = match distributor {
            Some(addr) => LocalClient::connect_distributor(cfg, addr).await,
            None => LocalClient::connect(cfg).await,
        };
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if ready.send(Ok(())).is_err() {
            // The caller gave up waiting (its connect future was dropped).
            client.close();
            return;
        }
        serve(&client, commands, cancels, &stop).await;
        client.close();
        client.wait_idle().await;
    });
}

async fn serve(
    client: &LocalClient,
    mut commands: mpsc::Receiver<Command>,
    mut cancels: mpsc::Receiver<u64>,
    stop: &Notify,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut dropped = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            () = stop.notified() => return,
            n = cancels.recv_many(&mut dropped, BATCH) => {
                if n == 0 {
                    return;
                }
                for id in dropped.drain(..) {
                    // Not yet in flight: its submission is still queued and
                    // is skipped when taken (its receiver is closed).
                    client.cancel(id);
                }
            }
            n = commands.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                for c in batch.drain(..) {
                    run(client, c);
                }
            }
        }
    }
}

fn run(client: &LocalClient, command: Command) {
    match command {
        Command::Submit(r) => submit(client, r),
        Command::SubmitMany(rs) => {
            for r in rs {
                submit(client, r);
            }
        }
        Command::SubmitTo {
            first,
            tasks,
            results,
        } => {
            for (id, task) in (first..).zip(tasks) {
                client.submit_as_to(id, Rc::new(task), &results);
            }
        }
        Command::Cancel(id) => {
            client.cancel(id);
        }
        Command::Status(tx) => {
            let c = client.clone();
            tokio::task::spawn_local(async move {
                let _ = tx.send(c.status().await);
            });
        }
        Command::Explain(q, tx) => {
            let c = client.clone();
            tokio::task::spawn_local(async move {
                let _ = tx.send(c.explain(q).await);
            });
        }
        Command::Distributor(tx) => {
            let _ = tx.send(client.distributor());
        }
        Command::LinkStats(tx) => {
            let _ = tx.send(client.link_stats());
        }
    }
}

fn submit(client: &LocalClient, r: Request) {
    // Dropped before it got here: nobody wants the outcome, do not send.
    if r.reply.is_closed() {
        return;
    }
    client.submit_as(r.id, Rc::new(r.task), r.reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn the_handle_is_send_sync_clone_and_its_futures_are_send() {
        assert_send_sync::<Client>();
        assert_send::<Submission>();
        // Compiles only if `submit`'s future may move between threads.
        let _ = |c: Client| -> Pin<Box<dyn Future<Output = Result<Outcome, ClientError>> + Send>> {
            Box::pin(async move { c.submit(Task::new("a", "")).await })
        };
        assert_send::<ClientError>();
    }
}
