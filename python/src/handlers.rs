//! Python functions as a worker's apps.
//!
//! The worker's network loop (its own thread, Rust only) never takes the
//! GIL: each task's handler future hands the task to Python and waits for
//! the answer on a channel, so heartbeats and results keep flowing while a
//! handler computes for an hour.
//!
//! * Plain functions run on a pool of Python threads (daemon
//!   `threading.Thread`s of this worker). The queue holds at most the tasks
//!   the worker admitted (its slots), since each waits for its answer. A
//!   pool thread that wakes runs every task queued before it lets the GIL
//!   go, so a burst of short tasks costs one wake-up, not one per task.
//! * `async def` functions run as tasks on an asyncio loop in a thread of
//!   their own, woken through a socket pair once per batch.
//!
//! A task the worker stops (cancelled, past its deadline) is skipped if it
//! has not started; an async one is cancelled; a plain function that has
//! started runs to its end (a thread cannot be stopped), its answer
//! dropped.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use allot::apps::{self, Handler, TaskInfo};
use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};
use tokio::sync::oneshot;

type Answer = Result<Bytes, String>;

/// One app's Python function.
pub struct AppSpec {
    name: String,
    func: Py<PyAny>,
    /// It takes `(payload, task)`, not just `(payload)`.
    wants_info: bool,
    is_async: bool,
}

impl AppSpec {
    /// The app's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The apps of a worker from `{name: function}`, each checked: callable,
/// taking one or two positional arguments.
pub fn app_specs(py: Python<'_>, apps: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<Arc<AppSpec>>> {
    let Some(apps) = apps else {
        return Ok(Vec::new());
    };
    let inspect = py.import("inspect")?;
    let mut out = Vec::with_capacity(apps.len());
    for (k, f) in apps.iter() {
        let name: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("app names must be strings"))?;
        if name.is_empty() {
            return Err(PyValueError::new_err("an app name must not be empty"));
        }
        if !f.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "app `{name}` must be a function taking (payload, task), not {}",
                f.get_type().name()?
            )));
        }
        let is_async = inspect
            .call_method1("iscoroutinefunction", (&f,))?
            .is_truthy()?;
        let wants_info = arity(&inspect, &name, &f)?;
        out.push(Arc::new(AppSpec {
            name,
            func: f.unbind(),
            wants_info,
            is_async,
        }));
    }
    Ok(out)
}

/// Whether `f` takes `(payload, task)` (true) or `(payload)` (false).
fn arity(inspect: &Bound<'_, PyModule>, name: &str, f: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = f.py();
    let Ok(sig) = inspect.call_method1("signature", (f,)) else {
        // No signature to read (some builtins): assume the documented form.
        return Ok(true);
    };
    let binds = |n: usize| -> bool {
        let args = PyTuple::new(py, (0..n).map(|_| py.None()));
        args.and_then(|a| sig.call_method1("bind", a)).is_ok()
    };
    if binds(2) {
        Ok(true)
    } else if binds(1) {
        Ok(false)
    } else {
        Err(PyTypeError::new_err(format!(
            "app `{name}` must take (payload, task) or (payload), but its signature is {}",
            sig.str()?
        )))
    }
}

/// What a handler learns about the task it runs.
///
/// ``task_id`` names the task across its attempts (``JOB/INDEX`` for a
/// job's task, else its idempotency key in hex); ``attempt`` is 1 for the
/// first run, more when it runs again after its worker was lost;
/// ``user`` is who it runs for; ``deadline`` is when the worker stops it,
/// as a ``time.monotonic()`` value (``None``: no deadline); ``app``,
/// ``job`` and ``index`` say what it is part of.
#[pyclass(frozen, module = "allot", name = "TaskInfo")]
pub struct PyTaskInfo {
    info: TaskInfo,
    app: String,
}

#[pymethods]
impl PyTaskInfo {
    /// The task's name across attempts: ``JOB/INDEX`` for a job's task,
    /// else its idempotency key as 16 hex digits.
    #[getter]
    fn task_id(&self) -> String {
        match &self.info.job {
            Some(j) => format!("{j}/{}", self.info.index),
            None => format!("{:016x}", self.info.key),
        }
    }

    /// The client's idempotency key (the same across attempts and
    /// resubmissions).
    #[getter]
    fn key(&self) -> u64 {
        self.info.key
    }

    /// 1 for the first run; more when it runs again because the worker
    /// that ran it was lost (so a side effect may have happened before).
    #[getter]
    fn attempt(&self) -> u32 {
        self.info.attempt
    }

    /// The user the task runs for.
    #[getter]
    fn user(&self) -> &str {
        self.info.user.as_deref().unwrap_or("")
    }

    /// When the worker stops the task, as a ``time.monotonic()`` value;
    /// ``None`` when it has no deadline.
    #[getter]
    fn deadline(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let Some(d) = self.info.deadline else {
            return Ok(None);
        };
        let now: f64 = py.import("time")?.call_method0("monotonic")?.extract()?;
        let left = d.saturating_duration_since(Instant::now()).as_secs_f64();
        Ok(Some(now + left))
    }

    /// Seconds left before the deadline (``None``: no deadline).
    fn remaining(&self) -> Option<f64> {
        self.info
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64())
    }

    /// The app it runs.
    #[getter]
    fn app(&self) -> &str {
        &self.app
    }

    /// The job it belongs to (``None`` for a task submitted alone).
    #[getter]
    fn job(&self) -> Option<&str> {
        self.info.job.as_deref()
    }

    /// Its index in the job (0 outside a job).
    #[getter]
    fn index(&self) -> u64 {
        self.info.index
    }

    fn __repr__(&self) -> String {
        format!(
            "TaskInfo(task_id={:?}, app={:?}, attempt={}, user={:?})",
            self.task_id(),
            self.app,
            self.info.attempt,
            self.user()
        )
    }
}

/// Calls the app's function on one task, with the GIL.
fn call(
    py: Python<'_>,
    spec: &AppSpec,
    input: &Bytes,
    info: TaskInfo,
) -> Result<Py<PyAny>, String> {
    let payload = PyBytes::new(py, input);
    let r = if spec.wants_info {
        let ti = Py::new(
            py,
            PyTaskInfo {
                info,
                app: spec.name.clone(),
            },
        )
        .map_err(|e| e.to_string())?;
        spec.func.call1(py, (payload, ti))
    } else {
        spec.func.call1(py, (payload,))
    };
    r.map_err(|e| failure(py, &spec.name, &e))
}

/// What a handler returned, as the task's output: bytes (or bytearray);
/// anything else fails the task saying so.
fn output(app: &str, v: &Bound<'_, PyAny>) -> Answer {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(b) = v.cast::<PyByteArray>() {
        return Ok(Bytes::from(b.to_vec()));
    }
    let ty = v
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    let hint = if v.is_instance_of::<PyString>() {
        " (encode it, e.g. `return text.encode()`)"
    } else {
        ""
    };
    Err(format!("handler `{app}` returned {ty}, not bytes{hint}"))
}

/// A raised exception as the task's failure message: `Type: message`.
/// The traceback goes to the `allot.worker` logger.
fn failure(py: Python<'_>, app: &str, e: &PyErr) -> String {
    let ty = e
        .get_type(py)
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let text = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    let log = (|| -> PyResult<()> {
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("allot.worker",))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", e.value(py))?;
        logger.call_method(
            "warning",
            ("handler %r raised %s: %s", app, &ty, &text),
            Some(&kwargs),
        )?;
        Ok(())
    })();
    drop(log);
    if text.is_empty() {
        ty
    } else {
        format!("{ty}: {text}")
    }
}

/// A task for the pool.
struct SyncJob {
    spec: Arc<AppSpec>,
    input: Bytes,
    info: TaskInfo,
    reply: oneshot::Sender<Answer>,
    /// Its handler future was dropped: skip it.
    cancelled: Arc<AtomicBool>,
}

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<SyncJob>,
    /// Threads waiting for a job (a push wakes one only if some wait).
    idle: usize,
    closed: bool,
}

#[derive(Default)]
struct PoolInner {
    state: Mutex<PoolState>,
    ready: Condvar,
}

impl PoolInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, job: SyncJob) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        s.jobs.push_back(job);
        if s.idle > 0 {
            self.ready.notify_one();
        }
    }

    /// The next job, waiting for one; `None` once closed.
    fn next(&self) -> Option<SyncJob> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some(j) = s.jobs.pop_front() {
                return Some(j);
            }
            s.idle += 1;
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
            s.idle -= 1;
        }
    }

    fn try_next(&self) -> Option<SyncJob> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        s.jobs.pop_front()
    }

    fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        // Their handler futures get an error (their senders are dropped).
        s.jobs.clear();
        self.ready.notify_all();
    }
}

/// The body of a pool thread (the target of its `threading.Thread`).
#[pyclass(frozen, module = "allot")]
pub struct PoolRunner {
    inner: Arc<PoolInner>,
}

#[pymethods]
impl PoolRunner {
    /// Runs tasks until the worker stops.
    fn serve(&self, py: Python<'_>) {
        let inner = self.inner.clone();
        loop {
            let job = py.detach(|| inner.next());
            let Some(mut job) = job else {
                return;
            };
            // Every task queued meanwhile, before the GIL goes.
            loop {
                if !job.cancelled.load(Ordering::Acquire) {
                    let answer = call(py, &job.spec, &job.input, job.info)
                        .and_then(|v| output(&job.spec.name, v.bind(py)));
                    let _ = job.reply.send(answer);
                }
                match inner.try_next() {
                    Some(j) => job = j,
                    None => break,
                }
            }
        }
    }
}

/// Sets `cancelled` when the handler future is dropped before its answer.
struct Skip(Arc<AtomicBool>);

impl Drop for Skip {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A task for the asyncio loop.
struct AsyncJob {
    id: u64,
    spec: Arc<AppSpec>,
    input: Bytes,
    info: TaskInfo,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct AioState {
    jobs: Vec<AsyncJob>,
    cancels: Vec<u64>,
    closing: bool,
    /// A wake-up byte is in the socket and not yet read.
    notified: bool,
    next_id: u64,
}

struct AioInner {
    state: Mutex<AioState>,
    wake: UnixStream,
}

impl AioInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, AioState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the loop unless a wake-up is pending (called with the lock).
    fn notify(&self, s: &mut AioState) {
        if !s.notified {
            s.notified = true;
            // Full means a wake-up is there already.
            let _ = (&self.wake).write(&[1]);
        }
    }

    fn push(
        &self,
        spec: Arc<AppSpec>,
        input: Bytes,
        info: TaskInfo,
        reply: oneshot::Sender<Answer>,
    ) -> u64 {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        if s.closing {
            return id;
        }
        s.jobs.push(AsyncJob {
            id,
            spec,
            input,
            info,
            reply,
        });
        self.notify(&mut s);
        id
    }

    fn cancel(&self, id: u64) {
        let mut s = self.lock();
        if s.closing {
            return;
        }
        s.cancels.push(id);
        self.notify(&mut s);
    }

    fn close(&self) {
        let mut s = self.lock();
        s.closing = true;
        s.jobs.clear();
        self.notify(&mut s);
    }
}

/// Tells the loop to cancel its task when the handler future is dropped
/// before its answer.
struct CancelAsync {
    inner: Arc<AioInner>,
    id: u64,
    armed: bool,
}

impl Drop for CancelAsync {
    fn drop(&mut self) {
        if self.armed {
            self.inner.cancel(self.id);
        }
    }
}

/// The asyncio side's view of the queue (see `allot/_worker.py`).
#[pyclass(frozen, module = "allot")]
pub struct AsyncInbox {
    inner: Arc<AioInner>,
    read: UnixStream,
}

#[pymethods]
impl AsyncInbox {
    /// The socket the loop watches for wake-ups.
    fn fileno(&self) -> i32 {
        self.read.as_raw_fd()
    }

    /// What came since the last call: `(tasks, cancels, closing)`, each
    /// task as `(id, function, payload, task_info_or_None, reply)`.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyList>, Vec<u64>, bool)> {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.read).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let (jobs, cancels, closing) = {
            let mut s = self.inner.lock();
            s.notified = false;
            (
                std::mem::take(&mut s.jobs),
                std::mem::take(&mut s.cancels),
                s.closing,
            )
        };
        let list = PyList::empty(py);
        for j in jobs {
            let info = if j.spec.wants_info {
                Py::new(
                    py,
                    PyTaskInfo {
                        info: j.info,
                        app: j.spec.name.clone(),
                    },
                )?
                .into_any()
            } else {
                py.None()
            };
            let reply = Py::new(
                py,
                AsyncReply {
                    tx: Mutex::new(Some(j.reply)),
                    app: j.spec.name.clone(),
                },
            )?;
            list.append((
                j.id,
                j.spec.func.clone_ref(py),
                PyBytes::new(py, &j.input),
                info,
                reply,
            ))?;
        }
        Ok((list, cancels, closing))
    }
}

/// Where an async handler's answer goes.
#[pyclass(frozen, module = "allot")]
pub struct AsyncReply {
    tx: Mutex<Option<oneshot::Sender<Answer>>>,
    app: String,
}

impl AsyncReply {
    fn send(&self, a: Answer) {
        if let Some(tx) = self.tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(a);
        }
    }
}

#[pymethods]
impl AsyncReply {
    /// The handler returned `value`.
    fn done(&self, value: &Bound<'_, PyAny>) {
        self.send(output(&self.app, value));
    }

    /// The handler raised `error`.
    fn fail(&self, error: &Bound<'_, PyAny>) {
        let e = PyErr::from_value(error.clone());
        let message = failure(error.py(), &self.app, &e);
        self.send(Err(message));
    }
}

/// The machinery behind one worker's Python apps; stopping it (dropping
/// it) ends its threads and loop.
pub struct Bridge {
    pool: Option<Arc<PoolInner>>,
    aio: Option<Arc<AioInner>>,
}

impl Bridge {
    /// Starts `threads` pool threads (if any app is a plain function) and
    /// an asyncio loop (if any is `async def`), named after `worker`, and
    /// returns the handlers to give the worker.
    pub fn start(
        py: Python<'_>,
        worker: &str,
        specs: &[Arc<AppSpec>],
        threads: usize,
    ) -> PyResult<(Bridge, Vec<(String, Handler)>)> {
        let threading = py.import("threading")?;
        let mut bridge = Bridge {
            pool: None,
            aio: None,
        };
        if specs.iter().any(|s| !s.is_async) {
            let inner = Arc::new(PoolInner::default());
            let runner = Py::new(
                py,
                PoolRunner {
                    inner: inner.clone(),
                },
            )?;
            for k in 0..threads.max(1) {
                let kwargs = PyDict::new(py);
                kwargs.set_item("target", runner.getattr(py, "serve")?)?;
                kwargs.set_item("name", format!("allot-worker-{worker}-{}", k + 1))?;
                kwargs.set_item("daemon", true)?;
                threading
                    .call_method("Thread", (), Some(&kwargs))?
                    .call_method0("start")?;
            }
            bridge.pool = Some(inner);
        }
        if specs.iter().any(|s| s.is_async) {
            let (read, wake) = UnixStream::pair().map_err(crate::errors::internal)?;
            read.set_nonblocking(true)
                .map_err(crate::errors::internal)?;
            wake.set_nonblocking(true)
                .map_err(crate::errors::internal)?;
            let inner = Arc::new(AioInner {
                state: Mutex::new(AioState::default()),
                wake,
            });
            let inbox = Py::new(
                py,
                AsyncInbox {
                    inner: inner.clone(),
                    read,
                },
            )?;
            py.import("allot._worker")?
                .getattr("AsyncRunner")?
                .call1((inbox, format!("allot-worker-{worker}-asyncio")))?
                .call_method0("start")?;
            bridge.aio = Some(inner);
        }
        let handlers = specs
            .iter()
            .map(|spec| (spec.name.clone(), bridge.handler(spec.clone())))
            .collect();
        Ok((bridge, handlers))
    }

    fn handler(&self, spec: Arc<AppSpec>) -> Handler {
        if spec.is_async {
            let Some(aio) = self.aio.clone() else {
                return unavailable();
            };
            apps::handler(move |input: Bytes| {
                let (aio, spec) = (aio.clone(), spec.clone());
                async move {
                    let info = apps::current_task().unwrap_or_else(|| TaskInfo::new(1, 0));
                    let (tx, rx) = oneshot::channel();
                    let id = aio.push(spec, input, info, tx);
                    let mut guard = CancelAsync {
                        inner: aio,
                        id,
                        armed: true,
                    };
                    let answer = rx.await;
                    guard.armed = false;
                    answer.unwrap_or_else(|_| Err("the worker is stopping".into()))
                }
            })
        } else {
            let Some(pool) = self.pool.clone() else {
                return unavailable();
            };
            apps::handler(move |input: Bytes| {
                let (pool, spec) = (pool.clone(), spec.clone());
                async move {
                    let info = apps::current_task().unwrap_or_else(|| TaskInfo::new(1, 0));
                    let (tx, rx) = oneshot::channel();
                    let cancelled = Arc::new(AtomicBool::new(false));
                    let _skip = Skip(cancelled.clone());
                    pool.push(SyncJob {
                        spec,
                        input,
                        info,
                        reply: tx,
                        cancelled,
                    });
                    rx.await
                        .unwrap_or_else(|_| Err("the worker is stopping".into()))
                }
            })
        }
    }
}

/// A handler for an app whose machinery did not start (cannot happen:
/// `start` starts what every spec needs).
fn unavailable() -> Handler {
    apps::handler(|_| async { Err("the app's Python machinery is not running".to_owned()) })
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.close();
        }
        if let Some(a) = &self.aio {
            a.close();
        }
    }
}
