//! Runs a node on a thread of its own with a current-thread runtime and a
//! `LocalSet`, the way an embedding program starts several nodes in one
//! process (and the way `allot demo` does).

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::oneshot;

/// A node running on a thread of its own. Stopping it (or dropping the
/// handle) tells it to shut down and waits for its thread.
pub struct NodeHandle {
    /// The address it listens on (for a worker: its local address).
    pub addr: SocketAddr,
    /// The address of its `/metrics` (and dashboard), when it serves one.
    pub metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops the node and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts `setup` on a new thread. `setup` gets a future that resolves when
/// the node should stop, and returns the node's address, its metrics
/// address if it serves one, and its serving future. Returns once the node is listening (or failed to start).
pub fn spawn_node<E, S, F, R>(thread_name: String, setup: S) -> Result<NodeHandle, E>
where
    E: Send + 'static + From<std::io::Error>,
    S: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()>>>) -> F + Send + 'static,
    F: Future<Output = Result<(SocketAddr, Option<SocketAddr>, R), E>>,
    R: Future<Output = ()>,
{
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) =
        std::sync::mpsc::channel::<Result<(SocketAddr, Option<SocketAddr>), E>>();
    let thread = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let stop = Box::pin(async move {
                    let _ = stop_rx.await;
                });
                match setup(stop).await {
                    Ok((addr, metrics, serve)) => {
                        let _ = ready_tx.send(Ok((addr, metrics)));
                        serve.await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })?;
    match ready_rx.recv() {
        Ok(Ok((addr, metrics))) => Ok(NodeHandle {
            addr,
            metrics,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(std::io::Error::other("node thread ended before it was ready").into())
        }
    }
}
