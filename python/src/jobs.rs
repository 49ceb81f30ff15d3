//! Jobs from Python: the SDK's `JobClient` (which wants a current-thread
//! runtime inside a `LocalSet`) on a thread of its own, asked over a
//! bounded channel, one request at a time; and `allot.Job`.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use allot::client::{Job, JobClient, JobError, JobSpec, JobsConfig};
use allot::wire::{JobSummary, JobTaskRow, JobTaskState};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use tokio::sync::{mpsc, oneshot};

use crate::errors;
use crate::wait;

/// Requests that may wait for the jobs thread (callers block past it).
const QUEUE: usize = 256;

/// How long `Job.wait` sleeps between two looks at the job (the SDK's).
const POLL: std::time::Duration = allot::client::WAIT_POLL;

type Reply<T> = oneshot::Sender<Result<T, JobError>>;

enum Request {
    Submit(JobSpec, Reply<Job>),
    List(Reply<Vec<JobSummary>>),
    Summary(String, Reply<JobSummary>),
    Outputs(String, Reply<Vec<JobTaskRow>>),
    Cancel(String, Reply<u64>),
}

/// The thread that owns a `JobClient`.
pub struct JobsHandle {
    /// `None` once closed.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
}

impl JobsHandle {
    /// Starts the thread; the client's certificate is loaded there, and an
    /// error doing so is returned here.
    pub fn start(cfg: JobsConfig) -> Result<JobsHandle, String> {
        let (requests, rx) = mpsc::channel(QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("allot-jobs".into())
            .spawn(move || serve(cfg, rx, ready_tx))
            .map_err(|e| format!("cannot start the jobs thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(JobsHandle {
                requests: Mutex::new(Some(requests)),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the jobs thread ended before it was ready".into()),
        }
    }

    fn ask<T: Send>(&self, py: Python<'_>, make: impl FnOnce(Reply<T>) -> Request) -> PyResult<T> {
        let (tx, rx) = oneshot::channel();
        let requests = self.requests.lock().ok().and_then(|r| r.clone());
        let request = make(tx);
        let answer = wait::wait(py, async move {
            let requests = requests?;
            if requests.send(request).await.is_err() {
                return None;
            }
            rx.await.ok()
        })?;
        match answer {
            Some(r) => r.map_err(|e| errors::job_error(py, &e)),
            None => Err(errors::error(py, "AllotError", "the client is closed", &[])),
        }
    }

    pub fn submit(&self, py: Python<'_>, spec: JobSpec) -> PyResult<Job> {
        self.ask(py, |tx| Request::Submit(spec, tx))
    }

    pub fn list(&self, py: Python<'_>) -> PyResult<Vec<JobSummary>> {
        self.ask(py, Request::List)
    }

    pub fn summary(&self, py: Python<'_>, id: &str) -> PyResult<JobSummary> {
        let id = id.to_owned();
        self.ask(py, |tx| Request::Summary(id, tx))
    }

    fn outputs(&self, py: Python<'_>, id: &str) -> PyResult<Vec<JobTaskRow>> {
        let id = id.to_owned();
        self.ask(py, |tx| Request::Outputs(id, tx))
    }

    fn cancel(&self, py: Python<'_>, id: &str) -> PyResult<u64> {
        let id = id.to_owned();
        self.ask(py, |tx| Request::Cancel(id, tx))
    }

    /// Ends the thread once the requests queued are answered.
    pub fn close(&self) {
        if let Ok(mut r) = self.requests.lock() {
            r.take();
        }
    }
}

fn serve(
    cfg: JobsConfig,
    mut rx: mpsc::Receiver<Request>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut jobs = match JobClient::new(cfg) {
            Ok(j) => j,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        while let Some(r) = rx.recv().await {
            match r {
                Request::Submit(spec, tx) => {
                    let _ = tx.send(jobs.submit(spec).await);
                }
                Request::List(tx) => {
                    let _ = tx.send(jobs.list().await);
                }
                Request::Summary(id, tx) => {
                    let _ = tx.send(jobs.summary(&id).await);
                }
                Request::Outputs(id, tx) => {
                    let _ = tx.send(jobs.tasks(&id, None, None, true).await);
                }
                Request::Cancel(id, tx) => {
                    let _ = tx.send(jobs.cancel(&id, None).await);
                }
            }
        }
        jobs.close();
    });
}

fn state_name(s: JobTaskState) -> &'static str {
    match s {
        JobTaskState::Queued => "queued",
        JobTaskState::Waiting => "waiting",
        JobTaskState::Running => "running",
        JobTaskState::Done => "done",
        JobTaskState::Failed => "failed",
        JobTaskState::Cancelled => "cancelled",
    }
}

/// A job's summary as a dict (the keys of `allot jobs --json`).
pub fn summary_dict<'py>(py: Python<'py>, s: &JobSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let c = &s.counts;
    d.set_item("job", &s.job)?;
    d.set_item("user", &s.user)?;
    d.set_item("app", &s.app)?;
    d.set_item("tasks", s.tasks)?;
    d.set_item("queued", c.queued)?;
    d.set_item("waiting", c.waiting)?;
    d.set_item("running", c.running)?;
    d.set_item("done", c.done)?;
    d.set_item("failed", c.failed)?;
    d.set_item("cancelled", c.cancelled)?;
    d.set_item("submitted_ms", s.submitted_ms)?;
    d.set_item("finished_ms", s.finished_ms)?;
    Ok(d)
}

fn row_dict<'py>(py: Python<'py>, r: &JobTaskRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("index", r.index)?;
    d.set_item("state", state_name(r.state))?;
    d.set_item("worker", &r.worker)?;
    d.set_item("attempts", r.attempts)?;
    d.set_item("exit_code", r.exit_code)?;
    d.set_item("message", &r.message)?;
    d.set_item("started_ms", r.started_ms)?;
    d.set_item("ended_ms", r.ended_ms)?;
    d.set_item("output", PyBytes::new(py, &r.output))?;
    Ok(d)
}

/// A job the cluster holds: it outlives this process and its client.
///
/// ``id`` names it (``SET/MEMBER/NUMBER``); ``tasks`` is how many it has.
/// ``wait`` blocks until every task has ended, ``outputs`` lists them with
/// their outputs, ``cancel`` stops what has not ended, ``summary`` counts
/// its tasks by state.
#[pyclass(frozen, module = "allot", name = "Job")]
pub struct PyJob {
    handle: Arc<JobsHandle>,
    job: Job,
}

impl PyJob {
    pub fn new(handle: Arc<JobsHandle>, job: Job) -> PyJob {
        PyJob { handle, job }
    }
}

#[pymethods]
impl PyJob {
    /// Its id (``SET/MEMBER/NUMBER``).
    #[getter]
    fn id(&self) -> &str {
        &self.job.id
    }

    /// How many tasks it has.
    #[getter]
    fn tasks(&self) -> u64 {
        self.job.tasks
    }

    /// Its counts by state now, as a dict (see ``Client.jobs``).
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.handle.summary(py, &self.job.id)?;
        summary_dict(py, &s)
    }

    /// Waits until every task has ended and returns the summary; raises
    /// ``Timeout`` if ``timeout`` seconds pass first. The GIL is released
    /// while it waits, and Ctrl-C interrupts it (the job goes on).
    #[pyo3(signature = (timeout = None))]
    fn wait<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyDict>> {
        let limit = timeout
            .map(|t| crate::convert::seconds(t, "timeout"))
            .transpose()?;
        let t0 = Instant::now();
        loop {
            let s = self.handle.summary(py, &self.job.id)?;
            let c = s.counts;
            let left = c.queued + c.waiting + c.running;
            if left == 0 {
                return summary_dict(py, &s);
            }
            if let Some(l) = limit {
                let waited = t0.elapsed();
                if waited >= l {
                    let m = format!(
                        "job {} did not finish within {:.1} s ({left} tasks left)",
                        self.job.id,
                        l.as_secs_f64()
                    );
                    return Err(errors::error(py, "Timeout", &m, &[]));
                }
                wait::sleep(py, POLL.min(l - waited))?;
            } else {
                wait::sleep(py, POLL)?;
            }
        }
    }

    /// Every task, in index order, as a dict: ``index``, ``state``,
    /// ``worker``, ``attempts``, ``exit_code``, ``message``,
    /// ``started_ms``, ``ended_ms`` and ``output`` (bytes).
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rows = self.handle.outputs(py, &self.job.id)?;
        let list = PyList::empty(py);
        for r in &rows {
            list.append(row_dict(py, r)?)?;
        }
        Ok(list)
    }

    /// Cancels its queued and running tasks; returns how many.
    fn cancel(&self, py: Python<'_>) -> PyResult<u64> {
        self.handle.cancel(py, &self.job.id)
    }

    fn __repr__(&self) -> String {
        format!("Job(id={:?}, tasks={})", self.job.id, self.job.tasks)
    }
}
