//! What the client hands back to Python: `Result` (a task's outcome), and
//! the status and explain replies as the dicts `allot status --json` and
//! `allot explain --json` print.

use allot::client::{explain_verdict, Verdict};
use allot::{AttrValue, ExplainReply, Outcome, StatusReply, WorkerState};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

/// The outcome of a task that succeeded.
///
/// ``output`` is what the app returned; ``worker`` ran it, ``distributor``
/// placed it (through ``gateway``), after ``attempts`` placements;
/// ``latency_us`` is the round trip as the client saw it. ``queued_us``,
/// ``matched_us`` and ``ran_us`` are where the time went at the
/// distributor and worker.
#[pyclass(frozen, module = "allot", name = "Result")]
pub struct TaskResult {
    outcome: Outcome,
}

impl TaskResult {
    pub fn new(outcome: Outcome) -> TaskResult {
        TaskResult { outcome }
    }
}

#[pymethods]
impl TaskResult {
    /// The output (bytes).
    #[getter]
    fn output<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.outcome.output)
    }

    /// The client's id for the task.
    #[getter]
    fn task_id(&self) -> u64 {
        self.outcome.task_id
    }

    /// The worker that ran it.
    #[getter]
    fn worker(&self) -> &str {
        &self.outcome.worker
    }

    /// The distributor that placed it.
    #[getter]
    fn distributor(&self) -> &str {
        &self.outcome.distributor
    }

    /// The gateway that sent this client to its distributor (empty for a
    /// client connected to a distributor directly).
    #[getter]
    fn gateway(&self) -> &str {
        &self.outcome.gateway
    }

    /// Placements tried (1 unless a worker was lost or refused it).
    #[getter]
    fn attempts(&self) -> u32 {
        self.outcome.attempts
    }

    /// From submit to the result, as the client saw it, in microseconds.
    #[getter]
    fn latency_us(&self) -> u64 {
        self.outcome.latency.as_micros() as u64
    }

    /// The exit code (0: it succeeded).
    #[getter]
    fn exit_code(&self) -> i32 {
        self.outcome.exit_code
    }

    /// ``"ok"``.
    #[getter]
    fn status(&self) -> &'static str {
        allot::labels::status_name(self.outcome.status)
    }

    /// Microseconds from its arrival at the distributor to its matching.
    #[getter]
    fn queued_us(&self) -> u64 {
        self.outcome.timings.queued_us
    }

    /// Microseconds spent matching it to a worker.
    #[getter]
    fn matched_us(&self) -> u64 {
        self.outcome.timings.matched_us
    }

    /// Microseconds it ran on the worker.
    #[getter]
    fn ran_us(&self) -> u64 {
        self.outcome.timings.ran_us
    }

    fn __repr__(&self) -> String {
        let o = &self.outcome;
        let shown = String::from_utf8_lossy(&o.output[..o.output.len().min(40)]).into_owned();
        let more = if o.output.len() > 40 { "..." } else { "" };
        format!(
            "Result(task_id={}, worker={:?}, attempts={}, latency_us={}, output={:?}{more})",
            o.task_id,
            &*o.worker,
            o.attempts,
            o.latency.as_micros(),
            shown
        )
    }
}

fn state_name(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Up => "up",
        WorkerState::Down => "down",
        WorkerState::Draining => "draining",
        _ => "unknown",
    }
}

fn attr_value<'py>(py: Python<'py>, v: &AttrValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        AttrValue::Num(n) => n.into_pyobject(py)?.into_any(),
        AttrValue::Str(s) => s.into_pyobject(py)?.into_any(),
        AttrValue::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        _ => py.None().into_bound(py),
    })
}

/// One dict per worker, keyed as `allot status --json` keys them (its
/// labels as keys of their own).
pub fn status_list<'py>(py: Python<'py>, r: &StatusReply) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for w in &r.workers {
        let d = PyDict::new(py);
        let rec = &w.record;
        d.set_item("name", &w.name)?;
        d.set_item("state", state_name(w.state))?;
        d.set_item("slots", rec.slots)?;
        d.set_item("slots_free", rec.slots_free)?;
        d.set_item("cores", rec.cores)?;
        d.set_item("power", rec.power)?;
        d.set_item("idle_power", rec.idle_power)?;
        d.set_item("mem", rec.mem)?;
        d.set_item("mem_free", rec.mem_free)?;
        d.set_item("load", rec.load)?;
        d.set_item("apps", &w.apps)?;
        d.set_item("reserved_slots", w.reserved_slots)?;
        d.set_item("reserved_cores", w.reserved_cores)?;
        d.set_item("reserved_mem", w.reserved_mem)?;
        d.set_item("last_report_ms", w.last_report_ms)?;
        for l in &rec.labels {
            d.set_item(&l.key, attr_value(py, &l.value)?)?;
        }
        list.append(d)?;
    }
    Ok(list)
}

/// The explain reply as `allot explain --json` prints it, with the
/// verdict in a word (`"match"`, `"wait"`, `"fail"`) and a sentence.
pub fn explain_dict<'py>(py: Python<'py>, r: &ExplainReply) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let verdict = Verdict::of(r);
    d.set_item("verdict", verdict.as_str())?;
    d.set_item("summary", explain_verdict(r))?;
    d.set_item("matches", verdict == Verdict::Match)?;
    d.set_item("would_wait", verdict == Verdict::Wait)?;
    d.set_item("total", r.total)?;
    d.set_item("matched", r.matched)?;
    d.set_item("best", &r.best)?;
    d.set_item("waitable", r.waitable)?;
    let clauses = PyList::empty(py);
    for c in &r.clauses {
        let cd = PyDict::new(py);
        cd.set_item("clause", &c.clause)?;
        cd.set_item("eliminated", c.eliminated)?;
        clauses.append(cd)?;
    }
    d.set_item("clauses", clauses)?;
    let nearest = PyList::empty(py);
    for n in &r.nearest {
        let nd = PyDict::new(py);
        nd.set_item("worker", &n.worker)?;
        nd.set_item("failed", &n.failed)?;
        nearest.append(nd)?;
    }
    d.set_item("nearest", nearest)?;
    Ok(d)
}
