//! The gateway's async shell: answers each client stream with the core's
//! redirect and watches every member's liveness.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use allot_wire::{ErrorCode, Role};
use bytes::Bytes;

use super::core::GatewayCore;
use super::{GatewayConfig, GatewayHandle};
use crate::conn;
use crate::pki::Pki;
use crate::{transport, NodeError};

struct Shell {
    name: String,
    core: RefCell<GatewayCore>,
}

/// Starts a gateway on a thread of its own; returns once it listens.
pub fn spawn(cfg: GatewayConfig) -> Result<GatewayHandle, NodeError> {
    crate::node_thread::spawn_node(format!("gw-{}", cfg.name), move |stop| async move {
        let (ep, shell) = setup(cfg)?;
        let addr = ep.local_addr()?;
        Ok::<_, NodeError>((addr, serve(ep, shell, stop)))
    })
}

/// Runs a gateway on the current runtime until `shutdown` resolves. Must
/// be called inside a `LocalSet`.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let (ep, shell) = setup(cfg)?;
    serve(ep, shell, shutdown).await;
    Ok(())
}

fn setup(cfg: GatewayConfig) -> Result<(quinn::Endpoint, Rc<Shell>), NodeError> {
    if cfg.sets.is_empty() || cfg.sets.iter().any(|(_, m)| m.is_empty()) {
        return Err(NodeError::Config {
            role: "gateway",
            message: "each --set needs NAME=ADDR[,ADDR...] and at least one set is required".into(),
        });
    }
    let pki = Pki::load(&cfg.pki, &cfg.name)?;
    let ep = transport::endpoint_with(&pki, cfg.listen, &cfg.link_timeouts)?;
    let shell = Rc::new(Shell {
        name: cfg.name.clone(),
        core: RefCell::new(GatewayCore::new(&cfg)),
    });
    Ok((ep, shell))
}

async fn serve(
    ep: quinn::Endpoint,
    shell: Rc<Shell>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tasks = Vec::new();
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
            tokio::task::spawn_local(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("rejected connection: {e}");
                        return;
                    }
                };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let me = conn::hello(Role::Gateway, &shell.name, Vec::new());
                    let stream = match conn::accept(&conn, send, recv, &me).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(peer = %conn.remote_address(), "stream refused: {e}");
                            continue;
                        }
                    };
                    let answer = shell
                        .core
                        .borrow_mut()
                        .answer(stream.peer_role, &stream.peer_name);
                    let sent = match answer {
                        Ok(r) => stream.out.send(&r, &Bytes::new()),
                        Err(e) => stream.out.send(&e, &Bytes::new()),
                    };
                    if let Err(e) = sent {
                        tracing::warn!(peer = %conn.remote_address(), "answer not sent: {e}");
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

async fn watch(ep: quinn::Endpoint, shell: Rc<Shell>, addr: SocketAddr) {
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
    }
}
