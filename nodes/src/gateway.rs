//! The gateway (first tier): sends each client to a distributor set
//! without looking at the task (claim 1): by a rendezvous hash of the
//! client's name, or round-robin, skipping sets with no live member.
//!
//! Liveness: the gateway keeps a connection to every distributor it knows;
//! a member is live while that connection is up, and is redialled every
//! half second while it is down.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use allot_wire::{ErrorCode, ErrorMsg, Redirect, Role};
use bytes::Bytes;

use crate::conn;
use crate::pki::Pki;
use crate::transport;

/// How a gateway picks a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPolicy {
    /// The same client goes to the same set while it is live
    /// (rendezvous hash of the client name).
    Rendezvous,
    /// Clients are spread over the live sets in turn.
    RoundRobin,
}

/// How a gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Node name.
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PKI directory.
    pub pki: PathBuf,
    /// Distributor sets: name and ordered members.
    pub sets: Vec<(String, Vec<SocketAddr>)>,
    /// Set choice.
    pub policy: RedirectPolicy,
    /// How long clients may cache a redirect.
    pub ttl: Duration,
}

/// Errors starting a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// The configuration is inconsistent.
    #[error("gateway configuration: {0}")]
    Config(String),
    /// The runtime could not start.
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

struct State {
    cfg: GatewayConfig,
    live: RefCell<HashMap<SocketAddr, bool>>,
    turn: Cell<usize>,
}

impl State {
    fn choose(&self, client: &str) -> Option<Redirect> {
        let live = self.live.borrow();
        // A member not probed yet (the gateway just started) counts as live:
        // the client tries the list in order and reports if none answers.
        let is_live = |a: &SocketAddr| live.get(a).copied().unwrap_or(true);
        let candidates: Vec<&(String, Vec<SocketAddr>)> = self
            .cfg
            .sets
            .iter()
            .filter(|(_, members)| members.iter().any(is_live))
            .collect();
        let chosen = match self.cfg.policy {
            RedirectPolicy::Rendezvous => candidates.iter().max_by_key(|(name, _)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                client.hash(&mut h);
                name.hash(&mut h);
                h.finish()
            }),
            RedirectPolicy::RoundRobin => {
                let t = self.turn.get();
                self.turn.set(t.wrapping_add(1));
                candidates.get(t % candidates.len().max(1))
            }
        }?;
        // Live members first, in their configured order.
        let (name, members) = chosen;
        let mut ordered: Vec<String> = members
            .iter()
            .filter(|a| is_live(a))
            .map(|a| a.to_string())
            .collect();
        ordered.extend(
            members
                .iter()
                .filter(|a| !is_live(a))
                .map(|a| a.to_string()),
        );
        Some(Redirect {
            set_name: name.clone(),
            distributors: ordered,
            ttl_ms: self.cfg.ttl.as_millis() as u32,
        })
    }
}

/// A running gateway (on its own thread and runtime).
pub type GatewayHandle = crate::node_thread::NodeHandle;

/// Starts a gateway on a thread of its own.
pub fn spawn(cfg: GatewayConfig) -> Result<GatewayHandle, GatewayError> {
    crate::node_thread::spawn_node(format!("gw-{}", cfg.name), move |stop| async move {
        let (ep, state) = setup(cfg)?;
        let addr = ep.local_addr()?;
        Ok::<_, GatewayError>((addr, serve(ep, state, stop)))
    })
}

/// Runs a gateway on the current runtime until `shutdown` resolves. Must be
/// called inside a `LocalSet`.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), GatewayError> {
    let (ep, state) = setup(cfg)?;
    serve(ep, state, shutdown).await;
    Ok(())
}

fn setup(cfg: GatewayConfig) -> Result<(quinn::Endpoint, Rc<State>), GatewayError> {
    if cfg.sets.is_empty() || cfg.sets.iter().any(|(_, m)| m.is_empty()) {
        return Err(GatewayError::Config(
            "each --set needs NAME=ADDR[,ADDR...] and at least one set is required".into(),
        ));
    }
    let pki = Pki::load(&cfg.pki, &cfg.name)?;
    let ep = transport::endpoint(&pki, cfg.listen)?;
    Ok((
        ep,
        Rc::new(State {
            cfg,
            live: RefCell::new(HashMap::new()),
            turn: Cell::new(0),
        }),
    ))
}

async fn serve(
    ep: quinn::Endpoint,
    state: Rc<State>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tasks = Vec::new();
    let members: Vec<SocketAddr> = state
        .cfg
        .sets
        .iter()
        .flat_map(|(_, m)| m.iter().copied())
        .collect();
    for addr in members {
        tasks.push(tokio::task::spawn_local(watch(
            ep.clone(),
            state.clone(),
            addr,
        )));
    }
    let accept = async {
        while let Some(incoming) = ep.accept().await {
            let state = state.clone();
            tokio::task::spawn_local(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("rejected connection: {e}");
                        return;
                    }
                };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let me = conn::hello(Role::Gateway, &state.cfg.name, Vec::new());
                    let stream = match conn::accept(&conn, send, recv, &me).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(peer = %conn.remote_address(), "stream refused: {e}");
                            continue;
                        }
                    };
                    if stream.peer_role != Role::Client {
                        let msg = ErrorMsg {
                            code: ErrorCode::Forbidden,
                            message: "only clients ask gateways for redirects".into(),
                        };
                        let _ = stream.out.send(&msg, &Bytes::new());
                        stream.out.close();
                        continue;
                    }
                    match state.choose(&stream.peer_name) {
                        Some(r) => {
                            let _ = stream.out.send(&r, &Bytes::new());
                        }
                        None => {
                            let msg = ErrorMsg {
                                code: ErrorCode::Unavailable,
                                message: "no distributor set has a live member".into(),
                            };
                            let _ = stream.out.send(&msg, &Bytes::new());
                        }
                    }
                    stream.out.close();
                }
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
    for t in tasks {
        t.abort();
    }
    ep.close(
        transport::codes::varint(ErrorCode::Unavailable),
        b"gateway stopping",
    );
    let _ = tokio::time::timeout(Duration::from_millis(300), ep.wait_idle()).await;
}

async fn watch(ep: quinn::Endpoint, state: Rc<State>, addr: SocketAddr) {
    loop {
        if let Ok(c) = transport::connect(&ep, addr).await {
            let me = conn::hello(Role::Gateway, &state.cfg.name, Vec::new());
            if let Ok(stream) = conn::open(&c, &me).await {
                state.live.borrow_mut().insert(addr, true);
                tracing::info!(%addr, "distributor live");
                c.closed().await;
                drop(stream);
                tracing::warn!(%addr, "distributor lost");
            }
        }
        state.live.borrow_mut().insert(addr, false);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
