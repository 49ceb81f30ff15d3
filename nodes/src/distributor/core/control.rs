//! `allot drain` and `allot undrain` at the distributor: a client's
//! [`WorkerControl`] for one of its workers is checked, applied to the
//! distributor's own view at once (a drained worker leaves matching before
//! the worker has heard of it), and sent on to the worker over its link.
//! The worker then drains or resumes and reports its state to every
//! distributor it serves: the drain is the worker's state, not this
//! distributor's.
//!
//! Any client certificate may send it: the PKI knows no role above
//! `client`, and whoever may submit tasks to a pool may already fill it.

use allot_engine::ServerState;
use allot_wire::message::{ArchivedWorkerControl, ArchivedWorkerOp};
use allot_wire::{WorkerControl, WorkerControlReply, WorkerOp, WorkerState};
use bytes::Bytes;

use super::{LinkError, State, DRAIN_PER_EVENT};
use crate::link::{push, Outgoing};
use std::rc::Rc;

impl State {
    /// Answers a client's control of a worker (see the module docs).
    pub(super) fn worker_control(
        &mut self,
        out: &Rc<Outgoing>,
        c: &ArchivedWorkerControl,
    ) -> Result<(), LinkError> {
        let name = c.worker.as_str();
        let op = match c.op {
            ArchivedWorkerOp::Drain(ms) => WorkerOp::Drain(ms.to_native()),
            ArchivedWorkerOp::Undrain => WorkerOp::Undrain,
        };
        let (state, error) = match self.control(name, op) {
            Ok(s) => (s, String::new()),
            Err(e) => (WorkerState::Down, e),
        };
        let reply = WorkerControlReply {
            request: c.request.to_native(),
            worker: name.to_owned(),
            state,
            error,
        };
        push(&mut self.transmit, out, &reply, &Bytes::new())?;
        Ok(())
    }

    fn control(&mut self, name: &str, op: WorkerOp) -> Result<WorkerState, String> {
        let me = &self.cfg.name;
        let Some(id) = self.table.lookup(name) else {
            return Err(format!(
                "no worker named `{name}` is registered with distributor `{me}` (see `allot status --distributor`)"
            ));
        };
        let Some(link) = self.workers.get(&id) else {
            return Err(format!(
                "worker `{name}` is down at distributor `{me}`: not connected"
            ));
        };
        let msg = WorkerControl {
            request: 0,
            worker: name.to_owned(),
            op,
        };
        let out = link.out.clone();
        push(&mut self.transmit, &out, &msg, &Bytes::new())
            .map_err(|e| format!("cannot reach worker `{name}`: {e}"))?;
        let (state, wire) = match op {
            WorkerOp::Undrain => (ServerState::Up, WorkerState::Up),
            _ => (ServerState::Draining, WorkerState::Draining),
        };
        if self.table.state(id) != Some(state) {
            let _ = self.table.set_state(id, state);
            self.member_event = true;
            tracing::info!(worker = %name, state = ?wire, "worker state set by a client");
        }
        if state == ServerState::Up {
            // Tasks waiting may fit on it again.
            self.drain_queue(DRAIN_PER_EVENT);
        }
        Ok(wire)
    }
}
