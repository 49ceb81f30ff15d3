//! `Client.map`: many tasks pipelined from one Python thread.
//!
//! Payloads are read from the caller's iterable in batches, each batch
//! sent to the client's thread as one command, and every outcome comes
//! back on one channel, so a task costs the Python thread no wake-up of
//! its own: it blocks (without the GIL) only when no outcome is waiting,
//! and then takes all that have come. Bounds: at most `max_in_flight`
//! tasks are submitted and not yet handed to the caller (in order mode
//! that counts those that ended but wait for an earlier one), so the
//! channel and the reorder buffer hold at most that many outcomes.

use std::collections::VecDeque;

use allot::{ClientError, Outcome};
use bytes::Bytes;
use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::PyIterator;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use crate::convert::{self, Template};
use crate::wait;

type Item = Result<Outcome, ClientError>;

/// The iterator ``Client.map`` returns: each ``next`` gives the next
/// ``Result`` (or raises the next task's exception). ``close()`` cancels
/// the tasks still in flight.
#[pyclass(module = "allot", name = "MapIterator")]
pub struct MapIter {
    client: allot::Client,
    template: Template,
    /// `None` once exhausted (or after it raised).
    payloads: Option<Py<PyIterator>>,
    max_in_flight: usize,
    ordered: bool,
    return_exceptions: bool,
    tx: allot::client::Results,
    rx: mpsc::UnboundedReceiver<(u64, Item)>,
    /// Task id to its place in the payloads, for tasks not yet received.
    seq_of: FxHashMap<u64, u64>,
    /// The next payload's place.
    next_seq: u64,
    /// Ordered: the place `reorder[0]` is for.
    next_out: u64,
    reorder: VecDeque<Option<Item>>,
    /// Unordered: outcomes received, not yet handed out.
    ready: VecDeque<Item>,
    /// The explanation attached to `NoMatch`es (asked once per map).
    explained: Option<Option<Py<PyAny>>>,
    /// Why the payloads stopped early (the iterable raised, or gave
    /// something that is not a payload): raised in its turn, after the
    /// results of the payloads before it.
    stopped: Option<PyErr>,
}

impl MapIter {
    /// The iterator, its first window of tasks sent already (the work
    /// starts now, not at the first `next`).
    pub fn new(
        py: Python<'_>,
        client: allot::Client,
        template: Template,
        payloads: Py<PyIterator>,
        max_in_flight: usize,
        ordered: bool,
        return_exceptions: bool,
    ) -> PyResult<MapIter> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut it = MapIter {
            client,
            template,
            payloads: Some(payloads),
            max_in_flight,
            ordered,
            return_exceptions,
            tx,
            rx,
            seq_of: FxHashMap::default(),
            next_seq: 0,
            next_out: 0,
            reorder: VecDeque::new(),
            ready: VecDeque::new(),
            explained: None,
            stopped: None,
        };
        it.refill(py)?;
        Ok(it)
    }

    /// Tasks submitted and not yet handed out (ordered) or not yet
    /// received (unordered): what `max_in_flight` bounds.
    fn held(&self) -> usize {
        if self.ordered {
            (self.next_seq - self.next_out) as usize
        } else {
            self.seq_of.len()
        }
    }

    fn pop_ready(&mut self) -> Option<Item> {
        if self.ordered {
            if matches!(self.reorder.front(), Some(Some(_))) {
                self.next_out += 1;
                return self.reorder.pop_front().flatten();
            }
            None
        } else {
            self.ready.pop_front()
        }
    }

    fn take(&mut self, id: u64, item: Item) {
        let Some(seq) = self.seq_of.remove(&id) else {
            return;
        };
        if self.ordered {
            let at = (seq - self.next_out) as usize;
            if self.reorder.len() <= at {
                self.reorder.resize_with(at + 1, || None);
            }
            self.reorder[at] = Some(item);
        } else {
            self.ready.push_back(item);
        }
    }

    /// Reads payloads and sends their tasks while there is room: at once
    /// when nothing is in flight, else once an eighth of the window is
    /// free (fewer, larger commands).
    fn refill(&mut self, py: Python<'_>) -> PyResult<()> {
        let Some(payloads) = self.payloads.as_ref() else {
            return Ok(());
        };
        let room = self.max_in_flight.saturating_sub(self.held());
        let held = self.held();
        if room == 0 || (held > 0 && room < (self.max_in_flight / 8).max(1)) {
            return Ok(());
        }
        let mut it = payloads.bind(py).clone();
        let mut batch: Vec<Bytes> = Vec::with_capacity(room);
        let mut failed = None;
        for _ in 0..room {
            match it.next() {
                Some(Ok(p)) => match convert::payload(&p) {
                    Ok(b) => batch.push(b),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                },
                Some(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                None => {
                    self.payloads = None;
                    break;
                }
            }
        }
        if let Some(e) = failed {
            // No more payloads after a bad one; what is in flight still
            // comes out first.
            self.payloads = None;
            self.stopped = Some(e);
        }
        if !batch.is_empty() {
            let tasks: Vec<allot::Task> =
                batch.into_iter().map(|b| self.template.task(b)).collect();
            let n = tasks.len() as u64;
            let client = self.client.clone();
            let tx = &self.tx;
            let ids = py
                .detach(|| client.send_to_blocking(tasks, tx))
                .map_err(|e| crate::errors::client_error(py, &e))?;
            for (i, id) in ids.enumerate() {
                self.seq_of.insert(id, self.next_seq + i as u64);
            }
            self.next_seq += n;
        }
        Ok(())
    }

    /// Takes every outcome that has come; if none has, waits for one.
    fn receive(&mut self, py: Python<'_>) -> PyResult<()> {
        let mut got = false;
        while let Ok((id, item)) = self.rx.try_recv() {
            self.take(id, item);
            got = true;
        }
        if got {
            return Ok(());
        }
        let rx = &mut self.rx;
        let first = wait::wait(py, rx.recv())?;
        match first {
            Some((id, item)) => self.take(id, item),
            // Cannot happen while `self.tx` lives; stop rather than spin.
            None => {
                self.seq_of.clear();
                self.payloads = None;
            }
        }
        while let Ok((id, item)) = self.rx.try_recv() {
            self.take(id, item);
        }
        Ok(())
    }

    fn convert(&mut self, py: Python<'_>, item: Item) -> PyResult<Py<PyAny>> {
        let client = &self.client;
        match item {
            Ok(o) if o.status == allot::TaskStatus::Ok => {
                Ok(Py::new(py, crate::results::TaskResult::new(o))?.into_any())
            }
            other => {
                let explained = &mut self.explained;
                let template = &self.template;
                let e = match other {
                    Ok(o) => crate::errors::outcome_error(py, &o, |py| {
                        explained
                            .get_or_insert_with(|| {
                                let q = template.explain_query();
                                let r = wait::wait(py, client.explain(q)).ok()?.ok()?;
                                crate::results::explain_dict(py, &r)
                                    .ok()
                                    .map(|d| d.into_any().unbind())
                            })
                            .as_ref()
                            .map(|e| e.clone_ref(py))
                    }),
                    Err(e) => crate::errors::client_error(py, &e),
                };
                if self.return_exceptions {
                    Ok(e.into_value(py).into_any())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Cancels what is in flight and reads no more payloads.
    fn cancel_all(&mut self) {
        let client = &self.client;
        for id in self.seq_of.keys() {
            // A full queue loses the cancel: the task runs to its end and
            // its outcome is dropped with the channel.
            let _ = client.cancel_nowait(*id);
        }
        self.seq_of.clear();
        self.payloads = None;
        self.stopped = None;
        self.reorder.clear();
        self.ready.clear();
    }
}

#[pymethods]
impl MapIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loop {
            if let Some(item) = self.pop_ready() {
                return self.convert(py, item);
            }
            self.refill(py)?;
            if self.seq_of.is_empty() {
                if let Some(item) = self.pop_ready() {
                    return self.convert(py, item);
                }
                if self.payloads.is_none() {
                    return Err(self
                        .stopped
                        .take()
                        .unwrap_or_else(|| PyStopIteration::new_err(())));
                }
                continue;
            }
            self.receive(py)?;
        }
    }

    /// Tasks submitted whose results have not been handed out yet.
    #[getter]
    fn in_flight(&self) -> usize {
        self.held()
    }

    /// Cancels the tasks still in flight; the iterator ends.
    fn close(&mut self) {
        self.cancel_all();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, _exc: &Bound<'_, pyo3::types::PyTuple>) {
        self.cancel_all();
    }
}

impl Drop for MapIter {
    fn drop(&mut self) {
        if self.seq_of.is_empty() {
            return;
        }
        self.cancel_all();
    }
}
