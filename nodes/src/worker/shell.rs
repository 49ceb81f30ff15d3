//! The worker's async shell: dials the distributors of its join list,
//! feeds their frames and the time to the [`WorkerCore`], writes what the
//! core queued, and runs the apps that take time (commands, sleeps,
//! handlers) as tasks on the current-thread runtime.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_wire::{ReportMode, Role};
use tokio::sync::Notify;

use super::core::{Action, WorkerCore};
use super::{WorkerConfig, WorkerHandle};
use crate::apps::{self, App, AppTable};
use crate::conn::{self, ConnError, Outbox};
use crate::link::LinkId;
use crate::pki::Pki;
use crate::HostPort;
use crate::{observe, transport, FxMap, NodeError};

struct Shell {
    core: RefCell<WorkerCore>,
    links: RefCell<FxMap<LinkId, Rc<Outbox>>>,
    /// Tasks running: their task's abort handle, and for command apps the
    /// graceful stop (SIGTERM, then SIGKILL after [`apps::STOP_GRACE`]).
    running: RefCell<FxMap<(LinkId, u64), Running>>,
    /// The timeout the timer sleeps to; woken when the core wants an
    /// earlier one.
    armed: Cell<Option<Instant>>,
    rearm: Notify,
}

impl Shell {
    /// Moves what the core queued to the links' writers and starts or
    /// stops the tasks it asked for.
    fn flush(self: &Rc<Self>) {
        let mut core = self.core.borrow_mut();
        {
            let links = self.links.borrow();
            while let Some(t) = core.poll_transmit() {
                match links.get(&t.link) {
                    Some(out) => {
                        out.push_encoded(t.chunks, t.len);
                        if t.close.is_some() {
                            out.close();
                        }
                    }
                    None => core.handle_written(t.link, t.len),
                }
            }
        }
        while let Some(action) = core.poll_action() {
            match action {
                Action::Run {
                    link,
                    task,
                    app,
                    input,
                    deadline,
                    attempt,
                    key,
                    job,
                    user,
                } => {
                    let info = apps::TaskInfo::new(attempt, key.key).placed(task, user);
                    let info = match job {
                        Some((job, index)) => info.in_job(job, index),
                        None => info,
                    };
                    self.start(link, task, app, input, deadline, info)
                }
                Action::Abort { link, task } => {
                    if let Some(r) = self.running.borrow_mut().remove(&(link, task)) {
                        // A command ends itself within the grace; anything
                        // else (or a command already ending) is dropped.
                        let stopped = r.stop.is_some_and(|stop| stop.send(()).is_ok());
                        if !stopped {
                            r.abort.abort();
                        }
                    }
                }
            }
        }
        if let Some(t) = core.poll_timeout() {
            if self.armed.get().is_none_or(|a| t < a) {
                self.rearm.notify_one();
            }
        }
    }

    fn start(
        self: &Rc<Self>,
        link: LinkId,
        task: u64,
        app: App,
        input: bytes::Bytes,
        deadline: Option<Duration>,
        info: apps::TaskInfo,
    ) {
        let shell = self.clone();
        let (stop, stop_rx) = match app {
            App::Command(_) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let s = apps::Stop {
                    signal: rx,
                    grace: apps::STOP_GRACE,
                };
                (Some(tx), Some(s))
            }
            _ => (None, None),
        };
        let handle = tokio::task::spawn_local(async move {
            let t0 = Instant::now();
            let info = match deadline {
                Some(d) => info.until(t0 + d),
                None => info,
            };
            let outcome = apps::run_until(&app, input, deadline, info, stop_rx).await;
            shell.running.borrow_mut().remove(&(link, task));
            let now = Instant::now();
            shell
                .core
                .borrow_mut()
                .task_finished(now, link, task, outcome, now - t0);
            shell.flush();
        });
        // An aborted task (cancel, lost distributor) gives its capacity
        // back through this guard.
        let shell = self.clone();
        let abort = handle.abort_handle();
        tokio::task::spawn_local(async move {
            if let Err(e) = handle.await {
                if e.is_cancelled() {
                    shell
                        .core
                        .borrow_mut()
                        .task_aborted(Instant::now(), link, task);
                    shell.flush();
                }
            }
        });
        self.running
            .borrow_mut()
            .insert((link, task), Running { abort, stop });
    }
}

/// A task the worker runs (see [`Shell::running`]).
struct Running {
    abort: tokio::task::AbortHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Starts a worker on a thread of its own. `handlers` are extra apps
/// provided by the embedding program.
pub fn spawn(
    cfg: WorkerConfig,
    handlers: Vec<(String, apps::Handler)>,
) -> Result<WorkerHandle, NodeError> {
    crate::node_thread::spawn_node(format!("worker-{}", cfg.name), move |stop| async move {
        let (ep, shell, metrics) = setup(cfg, handlers)?;
        let addr = ep.local_addr()?;
        let (metrics, http) = serve_metrics(&shell, metrics)?.unzip();
        Ok::<_, NodeError>((addr, metrics, serve(ep, shell, http, stop)))
    })
}

/// Runs a worker on the current runtime until `shutdown` resolves. Must be
/// called inside a `LocalSet`.
pub async fn run(
    cfg: WorkerConfig,
    handlers: Vec<(String, apps::Handler)>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let (ep, shell, metrics) = setup(cfg, handlers)?;
    let http = serve_metrics(&shell, metrics)?.map(|(_, h)| h);
    serve(ep, shell, http, shutdown).await;
    Ok(())
}

fn config_error(message: impl Into<String>) -> NodeError {
    NodeError::Config {
        role: "worker",
        message: message.into(),
    }
}

/// Serves `/metrics` from the core, if a listener was bound: its
/// address and task.
fn serve_metrics(
    shell: &Rc<Shell>,
    bound: Option<observe::http::Bound>,
) -> Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>, NodeError> {
    let Some(bound) = bound else {
        return Ok(None);
    };
    let read: observe::http::Read = Rc::new(Observed(shell.clone()));
    Ok(Some(bound.spawn(read)?))
}

/// The worker as its HTTP routes read it: metrics only (no dashboard).
struct Observed(Rc<Shell>);

impl observe::http::Source for Observed {
    fn node(&self) -> observe::http::Node {
        observe::http::Node::Worker
    }

    fn families(&self) -> Vec<observe::Family> {
        observe::nodes::worker(&self.0.core.borrow().metrics())
    }

    fn api(&self, _: observe::api::Api) -> Option<serde_json::Value> {
        None
    }
}

type Setup = (quinn::Endpoint, Rc<Shell>, Option<observe::http::Bound>);

fn setup(cfg: WorkerConfig, handlers: Vec<(String, apps::Handler)>) -> Result<Setup, NodeError> {
    if cfg.join.is_empty() {
        return Err(config_error(
            "--join needs at least one distributor address",
        ));
    }
    if cfg.slots == 0 {
        return Err(config_error("--slots must be at least 1"));
    }
    if cfg.prefetch > super::MAX_PREFETCH {
        return Err(config_error(format!(
            "--prefetch {} is more than {}",
            cfg.prefetch,
            super::MAX_PREFETCH
        )));
    }
    // A name that does not resolve at start is a mistake, not an outage
    // (later lookups that fail are retried with the connection).
    for d in &cfg.join {
        d.resolve_blocking()
            .map_err(|e| config_error(format!("--join: {e}")))?;
    }
    let mut table = AppTable::from_config(&cfg.apps, &cfg.app_cmds).map_err(config_error)?;
    table
        .configure_commands(&cfg.commands)
        .map_err(config_error)?;
    for (name, h) in handlers {
        table.insert(&name, App::Handler(h));
    }
    let metrics = cfg
        .metrics
        .as_ref()
        .map(|m| observe::http::Bound::bind(m, "worker"))
        .transpose()?;
    crate::pki::validate_name(&cfg.name)?;
    let pki = Pki::load(&cfg.pki, cfg.cert_name())?;
    crate::pki::check_role(&pki, allot_wire::Role::Worker)?;
    let ep = transport::endpoint_with(&pki, cfg.listen, &cfg.link_timeouts)?;
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut core = WorkerCore::new(cfg, table, incarnation, Instant::now());
    core.set_clock(Instant::now);
    let shell = Rc::new(Shell {
        core: RefCell::new(core),
        links: RefCell::new(FxMap::default()),
        running: RefCell::new(FxMap::default()),
        armed: Cell::new(None),
        rearm: Notify::new(),
    });
    Ok((ep, shell, metrics))
}

async fn serve(
    ep: quinn::Endpoint,
    shell: Rc<Shell>,
    http: Option<tokio::task::JoinHandle<()>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (mode, join) = {
        let core = shell.core.borrow();
        (core.config().mode, core.config().join.clone())
    };
    let mut tasks: Vec<_> = http.into_iter().collect();
    match mode {
        ReportMode::Broadcast => {
            for addr in &join {
                tasks.push(tokio::task::spawn_local(link_loop(
                    ep.clone(),
                    shell.clone(),
                    vec![addr.clone()],
                )));
            }
        }
        _ => {
            tasks.push(tokio::task::spawn_local(link_loop(
                ep.clone(),
                shell.clone(),
                join.clone(),
            )));
        }
    }
    tasks.push(tokio::task::spawn_local(timer_loop(shell.clone())));
    let idle_exit = shell.core.borrow().config().idle_exit;
    tokio::select! {
        _ = shutdown => {}
        _ = idle(&shell, idle_exit) => {}
    }
    drain(&shell).await;
    for (_, r) in shell.running.borrow_mut().drain() {
        r.abort.abort();
    }
    // Closed before the links' tasks are stopped, so that distributors
    // hear this stop (`Unavailable`) rather than a dropped connection.
    transport::close_endpoint(&ep, b"worker stopping", Duration::from_millis(300)).await;
    for t in tasks {
        t.abort();
    }
}

/// Drains before a stop, for up to the configured timeout: the
/// distributors hear `draining` at once and place nothing new here; the
/// tasks running end, or are stopped when the time is up (their
/// distributors then place them elsewhere, as for a lost worker).
async fn drain(shell: &Rc<Shell>) {
    let timeout = shell.core.borrow().config().drain_timeout;
    let t0 = Instant::now();
    // Even a stop without a drain hands the tasks taken ahead back first,
    // so that none starts while the running ones are stopped.
    shell.core.borrow_mut().drain_to_stop(t0);
    shell.flush();
    if timeout.is_zero() {
        return;
    }
    let running = shell.core.borrow().running();
    tracing::info!(
        running,
        "draining: no new tasks, up to {timeout:?} for these"
    );
    loop {
        let left = shell.core.borrow().running();
        if left == 0 {
            tracing::info!("drained");
            return;
        }
        if t0.elapsed() >= timeout {
            tracing::warn!(
                left,
                "drain timeout of {timeout:?} passed: stopping the tasks left (their distributors place them elsewhere)"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How often an idle worker looks whether it ran anything.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Resolves once no task has run for `limit` (never without one): none
/// running, and none ended, since the last look that saw one.
async fn idle(shell: &Rc<Shell>, limit: Option<Duration>) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let mut busy_at = Instant::now();
    let mut done = shell.core.borrow().done();
    loop {
        tokio::time::sleep(IDLE_POLL.min(limit)).await;
        let (running, now_done) = {
            let core = shell.core.borrow();
            (core.running(), core.done())
        };
        if running > 0 || now_done != done {
            busy_at = Instant::now();
            done = now_done;
        } else if busy_at.elapsed() >= limit {
            tracing::info!(
                "idle for {:.0} s (--idle-exit): stopping",
                limit.as_secs_f64()
            );
            return;
        }
    }
}

/// Gives the core the time whenever it asked for it.
async fn timer_loop(shell: Rc<Shell>) {
    loop {
        let at = shell.core.borrow().poll_timeout();
        shell.armed.set(at);
        match at {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = shell.rearm.notified() => continue,
                }
            }
            None => shell.rearm.notified().await,
        }
        shell.core.borrow_mut().handle_timeout(Instant::now());
        shell.flush();
    }
}

/// Keeps one registration alive: tries `candidates` in order, serves the
/// first that accepts, and starts over (after a short pause) when it ends.
/// Each candidate is looked up again at each try, so a distributor whose
/// name now points elsewhere is found there.
async fn link_loop(ep: quinn::Endpoint, shell: Rc<Shell>, candidates: Vec<HostPort>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        for candidate in &candidates {
            let addrs = match candidate.resolve().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("--join: {e}");
                    continue;
                }
            };
            for addr in addrs {
                match serve_link(&ep, &shell, addr).await {
                    Ok(true) => backoff = Duration::from_millis(100),
                    Ok(false) => tracing::debug!(%addr, "registration refused"),
                    Err(e) => tracing::debug!(%addr, "cannot register: {e}"),
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Registers with the distributor at `addr` and serves the link until it
/// ends. Returns whether the registration was accepted.
async fn serve_link(
    ep: &quinn::Endpoint,
    shell: &Rc<Shell>,
    addr: SocketAddr,
) -> Result<bool, ConnError> {
    let conn = transport::connect(ep, addr).await.map_err(|e| {
        // Nobody answering is routine while a distributor restarts; a
        // refused handshake (an expired or foreign certificate) is not,
        // and would otherwise go unseen at the default log level.
        if matches!(e, transport::TransportError::Handshake { .. }) {
            tracing::warn!(%addr, "{e}");
        }
        ConnError::Forbidden(e.to_string())
    })?;
    let name = shell.core.borrow().config().name.clone();
    let stream = conn::open(&conn, &conn::hello(Role::Worker, &name, Vec::new())).await?;
    let (out, mut reader) = (stream.out, stream.reader);
    let link = shell.core.borrow_mut().link_opened(Instant::now());
    {
        let shell = Rc::downgrade(shell);
        out.on_written(Box::new(move |n| {
            if let Some(s) = shell.upgrade() {
                s.core.borrow_mut().handle_written(link, n);
            }
        }));
    }
    shell.links.borrow_mut().insert(link, out.clone());
    let mut arrived = Instant::now();
    loop {
        let next = match reader.buffered() {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => {
                shell.flush();
                if out.is_closed() {
                    break;
                }
                let r = reader.next().await;
                arrived = Instant::now();
                r
            }
            Err(e) => Err(e),
        };
        match next {
            Ok(Some(frame)) => shell.core.borrow_mut().handle_frame(arrived, link, frame),
            Ok(None) => break,
            Err(e) => {
                if conn::ended_by_a_stop(&e) {
                    tracing::info!("distributor link closed by a stop");
                } else {
                    tracing::warn!("distributor stream failed: {e}");
                }
                if let ConnError::Frame(f) = &e {
                    reader.reject(f.code());
                }
                break;
            }
        }
    }
    let registered = shell.core.borrow_mut().link_closed(Instant::now(), link);
    shell.links.borrow_mut().remove(&link);
    out.close();
    shell.flush();
    drop(conn);
    Ok(registered)
}
