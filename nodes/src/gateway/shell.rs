//! The gateway's async shell: feeds every stream's frames and the time
//! to the [`GatewayCore`], writes what it queued, and watches the seed
//! members that have not registered. It makes no decision of its own.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_wire::{ErrorCode, Role};

use super::core::GatewayCore;
use super::{GatewayConfig, GatewayHandle};
use crate::conn::{self, ConnError, Outbox, Stream};
use crate::link::LinkId;
use crate::pki::Pki;
use crate::{observe, transport, NodeError};

struct ShellLink {
    out: Rc<Outbox>,
    closed: Rc<Cell<Option<ErrorCode>>>,
}

struct Shell {
    name: String,
    core: RefCell<GatewayCore>,
    links: RefCell<HashMap<LinkId, ShellLink>>,
    /// The host names of the seed members given by name, by the address
    /// they resolved to at start (a watch looks them up again).
    seed_names: HashMap<SocketAddr, crate::HostPort>,
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
                None => core.handle_written(t.link, t.len),
            }
        }
    }
}

/// Starts a gateway on a thread of its own; returns once it listens.
pub fn spawn(cfg: GatewayConfig) -> Result<GatewayHandle, NodeError> {
    crate::node_thread::spawn_node(format!("gw-{}", cfg.name), move |stop| async move {
        let (ep, shell, metrics) = setup(cfg)?;
        let addr = ep.local_addr()?;
        let (metrics, http) = serve_metrics(&shell, metrics)?.unzip();
        Ok::<_, NodeError>((addr, metrics, serve(ep, shell, http, stop)))
    })
}

/// Runs a gateway on the current runtime until `shutdown` resolves. Must
/// be called inside a `LocalSet`.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let (ep, shell, metrics) = setup(cfg)?;
    let http = serve_metrics(&shell, metrics)?.map(|(_, h)| h);
    serve(ep, shell, http, shutdown).await;
    Ok(())
}

/// Serves `/metrics`, the dashboard and its API from the core, if a
/// listener was bound: its address and task.
fn serve_metrics(
    shell: &Rc<Shell>,
    bound: Option<observe::http::Bound>,
) -> Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>, NodeError> {
    let Some(bound) = bound else {
        return Ok(None);
    };
    let read: observe::http::Read = Rc::new(Observed(shell.clone()));
    Ok(Some(bound.spawn(read)?))
}

/// The gateway as its HTTP routes read it.
struct Observed(Rc<Shell>);

impl observe::http::Source for Observed {
    fn node(&self) -> observe::http::Node {
        observe::http::Node::Gateway
    }

    fn families(&self) -> Vec<observe::Family> {
        observe::nodes::gateway(&self.0.core.borrow().metrics())
    }

    fn api(&self, api: observe::api::Api) -> Option<serde_json::Value> {
        observe::api::gateway(&self.0.name, &self.0.core.borrow(), api)
    }
}

type Setup = (quinn::Endpoint, Rc<Shell>, Option<observe::http::Bound>);

fn setup(mut cfg: GatewayConfig) -> Result<Setup, NodeError> {
    if cfg.sets.iter().any(|(_, m)| m.is_empty()) {
        return Err(NodeError::Config {
            role: "gateway",
            message: "each --set needs NAME=ADDR[,ADDR...]".into(),
        });
    }
    // Seed members by name are resolved here (the core, which hands
    // clients addresses, does no I/O), and again by their watch when it
    // reconnects; a member that registers (`--gateways`) sends its own.
    let mut names = HashMap::new();
    for (set, members) in &mut cfg.sets {
        for m in members.iter_mut() {
            let a = m.resolve_one().map_err(|e| NodeError::Config {
                role: "gateway",
                message: format!("--set {set}: {e}"),
            })?;
            if m.socket_addr().is_none() {
                names.insert(a, m.clone());
            }
            *m = a.into();
        }
    }
    let metrics = cfg
        .metrics
        .as_ref()
        .map(|m| observe::http::Bound::bind(m, "gateway"))
        .transpose()?;
    crate::pki::validate_name(&cfg.name)?;
    let pki = Pki::load(&cfg.pki, cfg.cert_name())?;
    crate::pki::check_role(&pki, allot_wire::Role::Gateway)?;
    let ep = transport::endpoint_with(&pki, cfg.listen, &cfg.link_timeouts)?;
    let shell = Rc::new(Shell {
        name: cfg.name.clone(),
        core: RefCell::new(GatewayCore::new(&cfg)),
        links: RefCell::new(HashMap::new()),
        seed_names: names,
    });
    Ok((ep, shell, metrics))
}

async fn serve(
    ep: quinn::Endpoint,
    shell: Rc<Shell>,
    http: Option<tokio::task::JoinHandle<()>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tasks: Vec<_> = http.into_iter().collect();
    let members = shell.core.borrow().members();
    for addr in members {
        tasks.push(tokio::task::spawn_local(watch(
            ep.clone(),
            shell.clone(),
            addr,
        )));
    }
    let accept = async {
        while let Some(incoming) = ep.accept().await {
            let shell = shell.clone();
            let peer = incoming.remote_address();
            tokio::task::spawn_local(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%peer, "rejected connection: {e}");
                        return;
                    }
                };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let me = conn::hello(Role::Gateway, &shell.name, Vec::new());
                    match conn::accept(&conn, send, recv, &me).await {
                        Ok(s) => {
                            tokio::task::spawn_local(serve_stream(s, shell.clone()));
                        }
                        Err(e) => {
                            tracing::warn!(peer = %conn.remote_address(), "stream refused: {e}");
                        }
                    }
                }
            });
        }
    };
    tasks.push(tokio::task::spawn_local(timer_loop(shell.clone())));
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
    // Closed before the tasks are stopped, so that peers hear this stop
    // (`Unavailable`) rather than a dropped connection.
    transport::close_endpoint(&ep, b"gateway stopping", Duration::from_millis(300)).await;
    for t in tasks {
        t.abort();
    }
}

/// Gives the core the time whenever it asked for it.
async fn timer_loop(shell: Rc<Shell>) {
    loop {
        let at = shell.core.borrow().poll_timeout();
        match at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => tokio::time::sleep(Duration::from_millis(500)).await,
        }
        shell.core.borrow_mut().handle_timeout(Instant::now());
        shell.flush();
    }
}

async fn serve_stream(stream: Stream, shell: Rc<Shell>) {
    let Stream {
        out,
        mut reader,
        peer_name,
        peer_role,
        ..
    } = stream;
    let link = shell
        .core
        .borrow_mut()
        .link_opened(Instant::now(), peer_role, &peer_name);
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
    let mut stopped = false;
    loop {
        shell.flush();
        if let Some(code) = closed.get() {
            reader.reject(code);
            break;
        }
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(ConnError::Frame(e)) => {
                tracing::warn!(peer = %peer_name, "closing link: {e}");
                conn::refuse(&out, &mut reader, e.code(), e.to_string());
                break;
            }
            Err(e) => {
                stopped = conn::ended_by_a_stop(&e);
                break;
            }
        };
        shell
            .core
            .borrow_mut()
            .handle_frame(Instant::now(), link, frame);
    }
    shell
        .core
        .borrow_mut()
        .link_ended(Instant::now(), link, stopped);
    shell.links.borrow_mut().remove(&link);
    out.close();
    shell.flush();
}

/// Watches seed member `addr` (up while a connection to it is); one
/// given by host name is looked up again after each lost or failed
/// connection, and followed to its new address.
async fn watch(ep: quinn::Endpoint, shell: Rc<Shell>, mut addr: SocketAddr) {
    let name = shell.seed_names.get(&addr).cloned();
    loop {
        if let Ok(c) = transport::connect(&ep, addr).await {
            let me = conn::hello(Role::Gateway, &shell.name, Vec::new());
            if let Ok(stream) = conn::open(&c, &me).await {
                shell.core.borrow_mut().member_live(addr, true);
                tracing::info!(%addr, "distributor live");
                c.closed().await;
                drop(stream);
                tracing::warn!(%addr, "distributor lost");
            }
        }
        shell.core.borrow_mut().member_live(addr, false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(name) = &name {
            match name.resolve().await {
                Ok(a) if a[0] != addr => {
                    if shell.core.borrow_mut().seed_moved(addr, a[0]) {
                        tracing::info!(member = %name, from = %addr, to = %a[0], "seed member moved");
                        addr = a[0];
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("--set: {e}"),
            }
        }
    }
}
