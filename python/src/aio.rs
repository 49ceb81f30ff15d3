//! `Client.submit_async`: tasks whose outcomes resolve `asyncio` futures.
//!
//! Every task of a client's `submit_async` sends its outcome to one
//! channel; a thread of the bridge's own waits on it without the GIL and
//! hands each batch of outcomes to the event loops that wait for them, with
//! one `call_soon_threadsafe` per loop and batch (each call wakes the loop
//! once). The loop's thread sets the futures' results.
//!
//! Locking: `pending` is only ever taken without the GIL (inside
//! `detach` on the submitting side, before attaching on the bridge's), so
//! the two locks cannot be taken in opposite orders.

use std::sync::{Arc, Mutex};

use allot::{Client, ClientError, Outcome};
use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyList;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use crate::convert::Template;

/// Outcomes taken per wake-up of the bridge's thread.
const BATCH: usize = 1024;

struct Waiting {
    event_loop: Py<PyAny>,
    future: Py<PyAny>,
    template: Arc<Template>,
}

/// What the submitters and the bridge's thread share.
struct Shared {
    /// Futures by task id. Bounded by the tasks in flight, which the
    /// client bounds ([`allot::client::MAX_IN_FLIGHT`]).
    pending: Mutex<FxHashMap<u64, Waiting>>,
    /// The client, while the bridge lives: the thread asks it to explain a
    /// `NoMatch` but must not keep the connection open by itself.
    client: Mutex<Option<Client>>,
}

/// One client's `submit_async` machinery.
pub struct Bridge {
    shared: Arc<Shared>,
    tx: allot::client::Results,
    client: Client,
}

impl Bridge {
    /// A bridge for `client`, its thread started.
    pub fn new(handle: Client) -> Arc<Bridge> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending: Mutex::new(FxHashMap::default()),
            client: Mutex::new(Some(handle.clone())),
        });
        let thread_shared = shared.clone();
        let started = std::thread::Builder::new()
            .name("allot-async".into())
            .spawn(move || deliver(rx, thread_shared));
        if let Err(e) = started {
            tracing::error!("cannot start the thread of submit_async: {e}");
        }
        Arc::new(Bridge {
            shared,
            tx,
            client: handle,
        })
    }

    /// Sends the task and returns the future of its `Result`.
    pub fn submit<'py>(
        &self,
        py: Python<'py>,
        template: Template,
        input: Bytes,
    ) -> PyResult<Bound<'py, PyAny>> {
        let asyncio = py.import("asyncio")?;
        let event_loop = asyncio.call_method0("get_running_loop")?;
        let future = event_loop.call_method0("create_future")?;
        let task = template.task(input);
        let waiting = Waiting {
            event_loop: event_loop.unbind(),
            future: future.clone().unbind(),
            template: Arc::new(template),
        };
        let (client, tx, shared) = (&self.client, &self.tx, &self.shared);
        let sent = py.detach(move || {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            let ids = client.send_to_blocking(vec![task], tx)?;
            pending.insert(ids.start, waiting);
            Ok::<u64, ClientError>(ids.start)
        });
        let id = sent.map_err(|e| crate::errors::client_error(py, &e))?;
        let canceller = Canceller {
            client: self.client.clone(),
            id,
        };
        future.call_method1("add_done_callback", (canceller,))?;
        Ok(future)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // The thread ends once the last task's outcome has come.
        if let Ok(mut c) = self.shared.client.lock() {
            *c = None;
        }
    }
}

/// Cancels its task when its future is cancelled.
#[pyclass(frozen, module = "allot")]
pub struct Canceller {
    client: Client,
    id: u64,
}

#[pymethods]
impl Canceller {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            // A full queue loses it: the task runs to its end, unseen.
            let _ = self.client.cancel_nowait(self.id);
        }
        Ok(())
    }
}

/// The bridge's thread: waits for outcomes, resolves their futures.
fn deliver(
    mut rx: mpsc::UnboundedReceiver<(u64, Result<Outcome, ClientError>)>,
    shared: Arc<Shared>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.blocking_recv_many(&mut batch, BATCH) == 0 {
            return;
        }
        let paired: Vec<(Waiting, Result<Outcome, ClientError>)> = {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            batch
                .drain(..)
                .filter_map(|(id, r)| pending.remove(&id).map(|w| (w, r)))
                .collect()
        };
        let client = shared.client.lock().ok().and_then(|c| c.as_ref().cloned());
        let done = Python::try_attach(|py| resolve_all(py, paired, client.as_ref()));
        if done.is_none() {
            // The interpreter is shutting down: nobody waits any more.
            return;
        }
    }
}

/// Sets each future from the loop's own thread: one call per loop.
fn resolve_all(
    py: Python<'_>,
    paired: Vec<(Waiting, Result<Outcome, ClientError>)>,
    client: Option<&Client>,
) {
    let Ok(resolve) = py
        .import("allot._native")
        .and_then(|m| m.getattr("_resolve_futures"))
    else {
        return;
    };
    let mut by_loop: Vec<(Py<PyAny>, Bound<'_, PyList>)> = Vec::new();
    for (w, r) in paired {
        let (ok, value) = match r {
            Ok(o) if o.status == allot::TaskStatus::Ok => {
                match Py::new(py, crate::results::TaskResult::new(o)) {
                    Ok(v) => (true, v.into_any()),
                    Err(e) => (false, e.into_value(py).into_any()),
                }
            }
            Ok(o) => {
                let e = crate::errors::outcome_error(py, &o, |py| {
                    let c = client?;
                    let r = crate::wait::wait(py, c.explain(w.template.explain_query()))
                        .ok()?
                        .ok()?;
                    crate::results::explain_dict(py, &r)
                        .ok()
                        .map(|d| d.into_any().unbind())
                });
                (false, e.into_value(py).into_any())
            }
            Err(e) => (
                false,
                crate::errors::client_error(py, &e)
                    .into_value(py)
                    .into_any(),
            ),
        };
        let entry = (w.future, ok, value);
        match by_loop.iter().find(|(l, _)| l.is(&w.event_loop)) {
            Some((_, list)) => {
                let _ = list.append(entry);
            }
            None => {
                let list = PyList::empty(py);
                let _ = list.append(entry);
                by_loop.push((w.event_loop, list));
            }
        }
    }
    for (event_loop, list) in by_loop {
        // A loop closed meanwhile raises: its futures are gone with it.
        let _ = event_loop
            .bind(py)
            .call_method1("call_soon_threadsafe", (&resolve, list));
    }
}

/// Sets the results of `(future, ok, value)` entries on the loop's thread
/// (futures cancelled meanwhile are left alone).
#[pyfunction]
pub fn _resolve_futures(batch: &Bound<'_, PyList>) -> PyResult<()> {
    for entry in batch.iter() {
        let (future, ok, value): (Bound<'_, PyAny>, bool, Bound<'_, PyAny>) = entry.extract()?;
        if future.call_method0("done")?.is_truthy()? {
            continue;
        }
        if ok {
            future.call_method1("set_result", (value,))?;
        } else {
            future.call_method1("set_exception", (value,))?;
        }
    }
    Ok(())
}
