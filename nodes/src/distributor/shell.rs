//! The distributor's async shell: accepts quinn connections and streams,
//! feeds their frames and the time to the [`Core`], writes what the core
//! queued, and keeps the store (user DB at start, task-class DB once a
//! second). It makes no decision of its own.
//!
//! Frames already received are handed to the core one after the other
//! with the clock of the read that brought them (a burst costs one clock
//! read); what the core queued is taken only when the reader is about to
//! wait for the network, so the frames of a burst leave in one write.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_engine::Store;
use std::net::SocketAddr;

use allot_wire::{ErrorCode, ReportMode};

use super::core::{Core, Peer};
use super::journal::Journal;
use super::{DistributorConfig, DistributorHandle};
use crate::conn::{self, ConnError, Outbox, Stream};
use crate::labels::label_from_archived;
use crate::link::LinkId;
use crate::pki::Pki;
use crate::{observe, transport, FxMap, NodeError};

struct ShellLink {
    out: Rc<Outbox>,
    /// Set when the core closed the link: its reader stops.
    closed: Rc<Cell<Option<ErrorCode>>>,
}

struct Shell {
    core: RefCell<Core>,
    links: RefCell<FxMap<LinkId, ShellLink>>,
    store: Store,
    /// Batches of job changes to the journal's writer thread (at most one
    /// is out at a time: the core hands out the next once this one is
    /// reported written).
    journal: std::sync::mpsc::Sender<super::jobs::JournalBatch>,
}

impl Shell {
    /// Moves what the core queued to the links' writers.
    fn flush(&self) {
        let mut core = self.core.borrow_mut();
        let links = self.links.borrow();
        while let Some(t) = core.poll_transmit() {
            match links.get(&t.link) {
                Some(l) => {
                    l.out.push_encoded(t.chunks, t.len);
                    if let Some(code) = t.close {
                        l.out.close();
                        l.closed.set(Some(code));
                    }
                }
                // The stream is gone: nothing will be written.
                None => core.handle_written(t.link, t.len),
            }
        }
        if let Some(batch) = core.poll_journal() {
            let seq = batch.seq;
            if self.journal.send(batch).is_err() {
                core.journal_committed(
                    Instant::now(),
                    seq,
                    Err("the journal writer stopped".into()),
                );
            }
        }
    }

    fn record_completions(&self) {
        let Some(batch) = self.core.borrow_mut().poll_completions() else {
            return;
        };
        let items: Vec<(&str, Duration, bool)> =
            batch.iter().map(|c| (&*c.app, c.ran, c.ok)).collect();
        if let Err(e) = self.store.task_classes().record_completions(&items) {
            tracing::error!("task-class DB update failed: {e}");
        }
    }
}

/// Starts a distributor on a thread of its own with a current-thread
/// runtime; returns once it listens.
pub fn spawn(cfg: DistributorConfig) -> Result<DistributorHandle, NodeError> {
    crate::node_thread::spawn_node(format!("dist-{}", cfg.name), move |stop| async move {
        let (ep, shell, written, metrics) = setup(cfg)?;
        let addr = ep.local_addr()?;
        let (metrics, http) = serve_metrics(&shell, addr, metrics)?.unzip();
        Ok((addr, metrics, serve(ep, shell, written, http, stop)))
    })
}

/// Runs a distributor on the current (current-thread) runtime until
/// `shutdown` resolves. Must be called inside a `LocalSet`.
pub async fn run(
    cfg: DistributorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let (ep, shell, written, metrics) = setup(cfg)?;
    let addr = ep.local_addr()?;
    tracing::info!(%addr, "distributor listening");
    let http = serve_metrics(&shell, addr, metrics)?.map(|(_, h)| h);
    serve(ep, shell, written, http, shutdown).await;
    Ok(())
}

/// What the journal's writer thread reports: a batch's number and whether
/// it was written.
type Written = (u64, Result<(), String>);

/// Serves `/metrics`, the dashboard and its API from the core, if a
/// listener was bound: its address and task.
fn serve_metrics(
    shell: &Rc<Shell>,
    listen: SocketAddr,
    bound: Option<observe::http::Bound>,
) -> Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>, NodeError> {
    let Some(bound) = bound else {
        return Ok(None);
    };
    let read: observe::http::Read = Rc::new(Observed {
        shell: shell.clone(),
        dash: observe::api::DistributorDash::new(listen),
    });
    Ok(Some(bound.spawn(read)?))
}

/// The distributor as its HTTP routes read it (the clocks are read here,
/// not in the core).
struct Observed {
    shell: Rc<Shell>,
    dash: observe::api::DistributorDash,
}

impl observe::http::Source for Observed {
    fn node(&self) -> observe::http::Node {
        observe::http::Node::Distributor
    }

    fn families(&self) -> Vec<observe::Family> {
        observe::nodes::distributor(&self.shell.core.borrow().metrics())
    }

    fn api(&self, api: observe::api::Api) -> Option<serde_json::Value> {
        let core = self.shell.core.borrow();
        Some(self.dash.answer(&core, Instant::now(), api))
    }

    fn tick(&self) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.dash
            .sample(&self.shell.core.borrow(), Instant::now(), unix_ms);
    }
}

type Setup = (
    quinn::Endpoint,
    Rc<Shell>,
    tokio::sync::mpsc::UnboundedReceiver<Written>,
    Option<observe::http::Bound>,
);

fn setup(cfg: DistributorConfig) -> Result<Setup, NodeError> {
    let metrics = cfg
        .metrics
        .as_ref()
        .map(|m| observe::http::Bound::bind(m, "distributor"))
        .transpose()?;
    crate::pki::validate_name(&cfg.name)?;
    let pki = Pki::load(&cfg.pki, cfg.cert_name())?;
    crate::pki::check_role(&pki, allot_wire::Role::Distributor)?;
    // A name that does not resolve at start is a mistake, not an outage.
    for g in &cfg.gateways {
        g.resolve_blocking().map_err(|e| NodeError::Config {
            role: "distributor",
            message: format!("--gateways: {e}"),
        })?;
    }
    let ep = transport::endpoint_with(&pki, cfg.listen, &cfg.link_timeouts)?;
    let store = Store::open(&cfg.data_dir)?;
    if let Some(path) = &cfg.users_file {
        let users = crate::users::load_users_file(path).map_err(|message| NodeError::Users {
            path: path.display().to_string(),
            message,
        })?;
        for u in users {
            store.users().put(&u)?;
        }
    }
    // The user DB is written only here, before serving (redb holds the
    // file exclusively), so the core can hold every record.
    let users = store.users().list()?;
    let (journal, replay) = Journal::open(&cfg.data_dir)?;
    tracing::info!(path = %journal.path().display(), jobs = replay.jobs.len(), "job journal open");
    let (batches, written) = journal_writer(journal)?;
    let mut core = Core::new(cfg, users, Instant::now())?;
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    core.set_wall_clock(Instant::now(), unix_ms);
    core.restore_jobs(Instant::now(), replay);
    core.set_match_clock(Instant::now);
    core.set_incarnation(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    let shell = Rc::new(Shell {
        core: RefCell::new(core),
        links: RefCell::new(FxMap::default()),
        store,
        journal: batches,
    });
    Ok((ep, shell, written, metrics))
}

/// Starts the thread that writes job batches to the journal, each in one
/// durable transaction, off the core's thread (a commit waits for the disk).
fn journal_writer(
    journal: Journal,
) -> Result<
    (
        std::sync::mpsc::Sender<super::jobs::JournalBatch>,
        tokio::sync::mpsc::UnboundedReceiver<Written>,
    ),
    NodeError,
> {
    let (tx, rx) = std::sync::mpsc::channel::<super::jobs::JournalBatch>();
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("allot-journal".into())
        .spawn(move || {
            while let Ok(batch) = rx.recv() {
                let r = journal.commit(&batch.ops).map_err(|e| e.to_string());
                if done_tx.send((batch.seq, r)).is_err() {
                    return;
                }
            }
        })?;
    Ok((tx, done_rx))
}

/// Tells the core each batch the writer finished.
async fn journal_loop(
    shell: Rc<Shell>,
    mut written: tokio::sync::mpsc::UnboundedReceiver<Written>,
) {
    while let Some((seq, r)) = written.recv().await {
        shell
            .core
            .borrow_mut()
            .journal_committed(Instant::now(), seq, r);
        shell.flush();
    }
}

async fn serve(
    ep: quinn::Endpoint,
    shell: Rc<Shell>,
    written: tokio::sync::mpsc::UnboundedReceiver<Written>,
    http: Option<tokio::task::JoinHandle<()>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let timer = tokio::task::spawn_local(timer_loop(shell.clone()));
    let journal = tokio::task::spawn_local(journal_loop(shell.clone(), written));
    let reporting = {
        let core = shell.core.borrow();
        let cfg = core.config();
        let listen = ep.local_addr().unwrap_or(cfg.listen);
        let gateways = cfg.gateways.clone();
        match cfg.gateway_report {
            ReportMode::Registered if !gateways.is_empty() => vec![tokio::task::spawn_local(
                gateway_loop(ep.clone(), shell.clone(), gateways, listen),
            )],
            _ => gateways
                .into_iter()
                .map(|g| {
                    tokio::task::spawn_local(gateway_loop(
                        ep.clone(),
                        shell.clone(),
                        vec![g],
                        listen,
                    ))
                })
                .collect(),
        }
    };
    let accept = async {
        while let Some(incoming) = ep.accept().await {
            let shell = shell.clone();
            let peer = incoming.remote_address();
            tokio::task::spawn_local(async move {
                match incoming.await {
                    Ok(conn) => serve_connection(conn, shell).await,
                    Err(e) => tracing::warn!(%peer, "rejected connection: {e}"),
                }
            });
        }
    };
    tokio::pin!(accept);
    let told = tokio::select! {
        _ = &mut accept => false,
        _ = shutdown => true,
    };
    let drain_timeout = shell.core.borrow().config().drain_timeout;
    if told && !drain_timeout.is_zero() {
        // Still accepting while the tasks end: a worker that reconnects
        // may be the one finishing a task.
        tokio::select! {
            _ = &mut accept => {}
            _ = drain(&shell, drain_timeout) => {}
        }
    }
    // Closed before the tasks are stopped, so that peers hear this stop
    // (`Unavailable`) rather than a dropped connection.
    transport::close_endpoint(&ep, b"distributor stopping", Duration::from_millis(500)).await;
    timer.abort();
    journal.abort();
    if let Some(h) = http {
        h.abort();
    }
    for r in reporting {
        r.abort();
    }
}

/// How often a draining distributor looks whether its tasks are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// How long a drained distributor waits for its clients to leave after
/// their streams were finished (each moves to another member and closes
/// its connection here), so that their last results are not cut off by
/// the endpoint's close.
const CLIENTS_LEAVE: Duration = Duration::from_secs(2);

/// Drains the core ([`Core::drain`]) for up to `timeout`: the gateways hear
/// of it at once, and it returns once no task is left (or at the timeout,
/// with the tasks left named in the log; their clients resubmit them to
/// another member when this one is gone).
async fn drain(shell: &Rc<Shell>, timeout: Duration) {
    let started = Instant::now();
    let deadline = started + timeout;
    shell.core.borrow_mut().drain(started);
    shell.flush();
    loop {
        if shell.core.borrow().drained() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            let (placed, waiting) = shell.core.borrow().tasks_in_flight();
            tracing::warn!(
                placed,
                waiting,
                "drain timeout ({:.1} s) passed: stopping with tasks left (their clients resubmit them to another member)",
                timeout.as_secs_f64()
            );
            return;
        }
        tokio::time::sleep(DRAIN_POLL.min(deadline - now)).await;
    }
    tracing::info!(
        "drained in {:.1} s: every task here has ended",
        started.elapsed().as_secs_f64()
    );
    // Finish the clients' streams after their last results.
    let clients = shell.core.borrow().client_links();
    for id in &clients {
        if let Some(l) = shell.links.borrow().get(id) {
            l.out.close();
        }
    }
    let leave_by = Instant::now() + CLIENTS_LEAVE;
    while Instant::now() < leave_by
        && clients
            .iter()
            .any(|id| shell.links.borrow().contains_key(id))
    {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Gives the core the time whenever it asked for it.
async fn timer_loop(shell: Rc<Shell>) {
    loop {
        let at = shell.core.borrow().poll_timeout();
        match at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        shell.core.borrow_mut().handle_timeout(Instant::now());
        shell.flush();
        shell.record_completions();
        run_autoalloc(&shell);
    }
}

/// Runs what the automatic allocation asked for (each Slurm command on a
/// task of its own, so the core never waits for one) and tells the core
/// what it said. The policy keeps at most one submission and one poll
/// out, and asks each cancel once.
fn run_autoalloc(shell: &Rc<Shell>) {
    use super::autoalloc::{slurm, Action};
    loop {
        let Some(action) = shell.core.borrow_mut().poll_autoalloc() else {
            return;
        };
        let shell = shell.clone();
        tokio::task::spawn_local(async move {
            match action {
                Action::Submit { script } => {
                    let args = shell
                        .core
                        .borrow()
                        .config()
                        .autoalloc
                        .as_ref()
                        .map(|a| a.submit_args.clone())
                        .unwrap_or_default();
                    let r = slurm::submit(&script, &args).await;
                    shell
                        .core
                        .borrow_mut()
                        .autoalloc_submitted(Instant::now(), r);
                }
                Action::Poll { ids } => {
                    let r = slurm::states(&ids).await;
                    shell.core.borrow_mut().autoalloc_states(Instant::now(), r);
                }
                Action::Find { name } => {
                    let r = slurm::find(&name).await;
                    shell.core.borrow_mut().autoalloc_found(Instant::now(), r);
                }
                Action::Cancel { id } => match slurm::cancel(&id).await {
                    Ok(()) => tracing::info!(job = %id, "autoalloc: idle pending job cancelled"),
                    Err(e) => tracing::warn!(job = %id, "autoalloc: scancel failed: {e}"),
                },
            }
            shell.flush();
        });
    }
}

async fn serve_connection(conn: quinn::Connection, shell: Rc<Shell>) {
    let me = {
        let core = shell.core.borrow();
        conn::hello(
            allot_wire::Role::Distributor,
            &core.config().name,
            Vec::new(),
        )
    };
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let shell = shell.clone();
        let conn = conn.clone();
        let me = me.clone();
        tokio::task::spawn_local(async move {
            match conn::accept(&conn, send, recv, &me).await {
                Ok(stream) => serve_stream(stream, shell).await,
                Err(e) => tracing::warn!(peer = %conn.remote_address(), "stream refused: {e}"),
            }
        });
    }
}

async fn serve_stream(stream: Stream, shell: Rc<Shell>) {
    let Stream {
        out,
        reader,
        peer_name,
        peer_role,
        hello,
    } = stream;
    let peer = Peer {
        role: peer_role,
        name: peer_name,
        attrs: hello
            .get()
            .attrs
            .iter()
            .filter_map(|a| Some((a.key.as_str().to_owned(), label_from_archived(&a.value)?)))
            .collect(),
    };
    let link = shell.core.borrow_mut().link_opened(Instant::now(), peer);
    drive(out, reader, link, shell).await;
}

/// The address a gateway is told to send clients to: the listen address,
/// or where it is unspecified (0.0.0.0, port 0) the bound port and the
/// local address this host uses to reach `gateway`.
fn advertise(listen: SocketAddr, gateway: SocketAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let bind: SocketAddr = if gateway.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // Connecting a UDP socket sends nothing; it only picks the route.
    let ip = std::net::UdpSocket::bind(bind)
        .and_then(|s| s.connect(gateway).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(listen.ip());
    SocketAddr::new(ip, listen.port())
}

/// Keeps this distributor registered with `gateways`: one at a time, the
/// first that answers, moving to the next when its link ends (a list of
/// one, per gateway, is the broadcast mode).
async fn gateway_loop(
    ep: quinn::Endpoint,
    shell: Rc<Shell>,
    gateways: Vec<crate::HostPort>,
    listen: SocketAddr,
) {
    let name = shell.core.borrow().config().name.clone();
    let me = conn::hello(allot_wire::Role::Distributor, &name, Vec::new());
    let mut i = 0;
    loop {
        let Some(name) = gateways.get(i % gateways.len().max(1)) else {
            return;
        };
        i = i.wrapping_add(1);
        // Looked up at each try: a gateway whose name moved is found.
        let gw = match name.resolve().await {
            Ok(a) => a[0],
            Err(e) => {
                tracing::warn!("--gateways: {e}");
                if i % gateways.len().max(1) == 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                continue;
            }
        };
        let opened = match transport::connect(&ep, gw).await {
            Ok(c) => conn::open(&c, &me).await.map(|s| (c, s)),
            Err(e) => Err(ConnError::Forbidden(e.to_string())),
        };
        match opened {
            Ok((c, stream)) => {
                let link = shell
                    .core
                    .borrow_mut()
                    .gateway_opened(Instant::now(), advertise(listen, gw));
                tracing::info!(gateway = %gw, "registered with gateway");
                if drive(stream.out, stream.reader, link, shell.clone()).await {
                    tracing::info!(gateway = %gw, "gateway link closed by a stop");
                } else {
                    tracing::warn!(gateway = %gw, "gateway link lost");
                }
                drop(c);
            }
            Err(e) => tracing::debug!(gateway = %gw, "gateway not reached: {e}"),
        }
        // After a full round, wait before trying the list again.
        if i % gateways.len().max(1) == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Moves frames between one stream and the core until either ends it;
/// whether it ended because a node stopped on purpose.
async fn drive(
    out: Rc<Outbox>,
    mut reader: conn::FrameReader,
    link: LinkId,
    shell: Rc<Shell>,
) -> bool {
    let closed = Rc::new(Cell::new(None));
    {
        let shell = Rc::downgrade(&shell);
        out.on_written(Box::new(move |n| {
            if let Some(s) = shell.upgrade() {
                s.core.borrow_mut().handle_written(link, n);
            }
        }));
    }
    shell.links.borrow_mut().insert(
        link,
        ShellLink {
            out: out.clone(),
            closed: closed.clone(),
        },
    );
    let mut arrived = Instant::now();
    let mut stopped = false;
    loop {
        let next = match reader.buffered() {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => {
                // Everything received is handled: send what it produced,
                // then wait for more.
                shell.flush();
                if let Some(code) = closed.get() {
                    reader.reject(code);
                    break;
                }
                let r = reader.next().await;
                arrived = Instant::now();
                r
            }
            Err(e) => Err(e),
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(ConnError::Frame(e)) => {
                conn::refuse(&out, &mut reader, e.code(), e.to_string());
                break;
            }
            Err(e) => {
                stopped = conn::ended_by_a_stop(&e);
                break;
            }
        };
        shell.core.borrow_mut().handle_frame(arrived, link, frame);
    }
    shell
        .core
        .borrow_mut()
        .link_ended(Instant::now(), link, stopped);
    shell.links.borrow_mut().remove(&link);
    out.close();
    shell.flush();
    stopped
}
