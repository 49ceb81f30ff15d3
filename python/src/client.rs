//! `allot.Client`: the SDK's `Send` client handle (one connection, one
//! thread of its own) behind a Python class that any number of Python
//! threads may share. Every wait releases the GIL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use allot::client::{Client, ClientConfig, JobsConfig};
use allot::{ExplainQuery, Outcome, TaskStatus};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::convert::{self, Template};
use crate::errors;
use crate::results::{explain_dict, status_list, TaskResult};
use crate::wait;

/// A connection to an allot cluster, shared by every thread of the
/// program.
///
/// ``Client(gateways, pki, name="client", attrs=None)`` asks the gateways
/// (``"host:port"`` strings, tried in order) for a distributor and connects
/// to it with the certificate ``name`` from the PKI directory ``pki``.
/// ``attrs`` are the client's attributes (``client.region`` in
/// expressions). With ``distributor="host:port"`` it connects to that
/// distributor directly instead. When no gateway or distributor answers it
/// keeps trying for ``retry_for`` seconds, then raises ``Unavailable``.
///
/// Tasks: ``submit`` (one task, waits for it), ``map`` (many, pipelined,
/// an iterator of results), ``submit_async`` (an awaitable for asyncio).
/// Questions: ``explain`` (would a task be placed, and if not why),
/// ``status`` (the distributor's workers). Jobs the cluster keeps:
/// ``submit_job``, ``jobs``. Use it as a context manager, or call
/// ``close``.
#[pyclass(frozen, module = "allot", name = "Client")]
pub struct PyClient {
    inner: Client,
    cfg: ClientConfig,
    distributor: Option<SocketAddr>,
    jobs: OnceLock<Result<Arc<crate::jobs::JobsHandle>, String>>,
    aio: OnceLock<Arc<crate::aio::Bridge>>,
}

impl PyClient {
    /// Connects as `cfg` says (straight to `distributor` if given).
    pub fn connect(
        py: Python<'_>,
        cfg: ClientConfig,
        distributor: Option<SocketAddr>,
    ) -> PyResult<PyClient> {
        let connecting = {
            let cfg = cfg.clone();
            async move {
                match distributor {
                    Some(d) => Client::connect_distributor(cfg, d).await,
                    None => Client::connect(cfg).await,
                }
            }
        };
        let inner = wait::wait(py, connecting)?.map_err(|e| errors::client_error(py, &e))?;
        Ok(PyClient {
            inner,
            cfg,
            distributor,
            jobs: OnceLock::new(),
            aio: OnceLock::new(),
        })
    }

    /// The SDK handle.
    pub fn handle(&self) -> &Client {
        &self.inner
    }

    /// The explain reply for `q` as a dict; `None` if it could not be had.
    fn explain_for(&self, py: Python<'_>, q: ExplainQuery) -> Option<Py<PyAny>> {
        let r = wait::wait(py, self.inner.explain(q)).ok()?.ok()?;
        explain_dict(py, &r).ok().map(|d| d.into_any().unbind())
    }

    /// `Ok` outcomes as `Result`, anything else as its exception.
    pub fn convert(
        &self,
        py: Python<'_>,
        r: Result<Outcome, allot::ClientError>,
        template: &Template,
    ) -> PyResult<Py<TaskResult>> {
        match r {
            Ok(o) if o.status == TaskStatus::Ok => Py::new(py, TaskResult::new(o)),
            Ok(o) => Err(errors::outcome_error(py, &o, |py| {
                self.explain_for(py, template.explain_query())
            })),
            Err(e) => Err(errors::client_error(py, &e)),
        }
    }

    fn jobs_handle(&self) -> PyResult<Arc<crate::jobs::JobsHandle>> {
        let made = self.jobs.get_or_init(|| {
            // The SDK resolves its addresses when the client is made, so
            // these are all IP literals.
            let gateways = self
                .cfg
                .gateways
                .iter()
                .filter_map(|g| g.socket_addr())
                .collect();
            let mut cfg = JobsConfig::new(&self.cfg.pki, &self.cfg.name, gateways)
                .with_attrs(self.cfg.attrs.clone())
                .with_retry_for(self.cfg.retry_for);
            if let Some(d) = self.distributor {
                cfg = cfg.with_distributor(d);
            }
            crate::jobs::JobsHandle::start(cfg)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        made.clone().map_err(errors::internal)
    }
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(signature = (gateways = None, pki = "pki".into(), name = "client".to_owned(), attrs = None, *, distributor = None, retry_for = 30.0, connect_timeout = None))]
    #[pyo3(
        text_signature = "(gateways=None, pki='pki', name='client', attrs=None, *, distributor=None, retry_for=30.0, connect_timeout=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        gateways: Option<&Bound<'_, PyAny>>,
        pki: PathBuf,
        name: String,
        attrs: Option<&Bound<'_, PyDict>>,
        distributor: Option<String>,
        retry_for: f64,
        connect_timeout: Option<f64>,
    ) -> PyResult<PyClient> {
        let gateways = match gateways {
            Some(g) => convert::addrs(g, "gateways")?,
            None => Vec::new(),
        };
        let distributor = distributor.map(|d| convert::addr(&d)).transpose()?;
        if gateways.is_empty() && distributor.is_none() {
            return Err(PyValueError::new_err(
                "give the gateways to ask (gateways=[\"host:port\"]) or a distributor (distributor=\"host:port\")",
            ));
        }
        let mut cfg = ClientConfig::new(name, pki, gateways)
            .with_attrs(convert::attrs(attrs, "client attribute")?)
            .with_retry_for(convert::seconds(retry_for, "retry_for")?);
        if let Some(t) = connect_timeout {
            cfg = cfg.with_connect_timeout(convert::seconds(t, "connect_timeout")?);
        }
        PyClient::connect(py, cfg, distributor)
    }

    /// Submits one task and waits for it; returns its ``Result``.
    ///
    /// ``app`` names the application, ``payload`` is its input (bytes, or
    /// str sent as UTF-8). ``require`` is an expression every worker that
    /// may run it must satisfy (``"server.mem >= 16GiB && server.region ==
    /// client.region"``), ``prefer`` one to maximise among them. ``user``
    /// runs it as another user (default: the certificate's name);
    /// ``cores`` and ``mem`` (bytes or ``"512MiB"``) are reserved on the
    /// worker; higher ``priority`` runs first when capacity is short;
    /// ``timeout`` (seconds) is its deadline. Raises ``TaskFailed``,
    /// ``NoMatch``, ``Timeout`` or ``Unavailable``; a
    /// ``require`` or ``prefer`` that does not parse raises ``ValueError``.
    /// The GIL is released while it waits; Ctrl-C cancels the task.
    #[pyo3(signature = (app, payload = None, *, require = None, prefer = None, user = None, cores = 0, mem = None, priority = 0, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        app: String,
        payload: Option<&Bound<'_, PyAny>>,
        require: Option<String>,
        prefer: Option<String>,
        user: Option<String>,
        cores: u32,
        mem: Option<&Bound<'_, PyAny>>,
        priority: i32,
        timeout: Option<f64>,
    ) -> PyResult<Py<TaskResult>> {
        let zero = 0u64.into_pyobject(py)?.into_any();
        let template = Template::new(
            app,
            require,
            prefer,
            user,
            cores,
            mem.unwrap_or(&zero),
            priority,
            timeout,
        )?;
        let input = match payload {
            Some(p) => convert::payload(p)?,
            None => bytes::Bytes::new(),
        };
        let task = template.task(input);
        let sub = py
            .detach(|| self.inner.start_blocking(task))
            .map_err(|e| errors::client_error(py, &e))?;
        // Dropped (Ctrl-C): the submission cancels its task.
        let r = wait::wait(py, sub)?;
        self.convert(py, r, &template)
    }

    /// Runs ``app`` on every payload of ``payloads`` (any iterable of
    /// bytes or str), keeping up to ``max_in_flight`` tasks in flight, and
    /// returns an iterator of their ``Result``s: in the order of the
    /// payloads (``ordered=True``), or as they end. The first tasks are
    /// sent at once; further payloads are read as room frees, so the
    /// iterable may be endless.
    ///
    /// A task that fails raises its exception when its turn comes (the
    /// iterator goes on after it); with ``return_exceptions=True`` the
    /// exception is yielded instead. The other arguments are those of
    /// ``submit``. Closing the iterator (or dropping it) cancels the tasks
    /// still in flight.
    #[pyo3(signature = (app, payloads, max_in_flight = 256, ordered = true, *, return_exceptions = false, require = None, prefer = None, user = None, cores = 0, mem = None, priority = 0, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn map(
        slf: &Bound<'_, PyClient>,
        app: String,
        payloads: &Bound<'_, PyAny>,
        max_in_flight: usize,
        ordered: bool,
        return_exceptions: bool,
        require: Option<String>,
        prefer: Option<String>,
        user: Option<String>,
        cores: u32,
        mem: Option<&Bound<'_, PyAny>>,
        priority: i32,
        timeout: Option<f64>,
    ) -> PyResult<crate::map::MapIter> {
        let py = slf.py();
        let zero = 0u64.into_pyobject(py)?.into_any();
        let template = Template::new(
            app,
            require,
            prefer,
            user,
            cores,
            mem.unwrap_or(&zero),
            priority,
            timeout,
        )?;
        if max_in_flight == 0 || max_in_flight > allot::client::MAX_IN_FLIGHT {
            return Err(PyValueError::new_err(format!(
                "max_in_flight must be from 1 to {}",
                allot::client::MAX_IN_FLIGHT
            )));
        }
        crate::map::MapIter::new(
            py,
            slf.get().handle().clone(),
            template,
            payloads.try_iter()?.unbind(),
            max_in_flight,
            ordered,
            return_exceptions,
        )
    }

    /// Submits one task and returns an ``asyncio.Future`` of its
    /// ``Result`` (await it in a coroutine of the running loop). Takes the
    /// arguments of ``submit``; the future raises what ``submit`` would.
    /// Cancelling the future cancels the task.
    #[pyo3(signature = (app, payload = None, *, require = None, prefer = None, user = None, cores = 0, mem = None, priority = 0, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn submit_async<'py>(
        slf: &Bound<'py, PyClient>,
        app: String,
        payload: Option<&Bound<'py, PyAny>>,
        require: Option<String>,
        prefer: Option<String>,
        user: Option<String>,
        cores: u32,
        mem: Option<&Bound<'py, PyAny>>,
        priority: i32,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let zero = 0u64.into_pyobject(py)?.into_any();
        let template = Template::new(
            app,
            require,
            prefer,
            user,
            cores,
            mem.unwrap_or(&zero),
            priority,
            timeout,
        )?;
        let input = match payload {
            Some(p) => convert::payload(p)?,
            None => bytes::Bytes::new(),
        };
        let me = slf.get();
        let bridge = me
            .aio
            .get_or_init(|| crate::aio::Bridge::new(me.handle().clone()))
            .clone();
        bridge.submit(py, template, input)
    }

    /// Whether a task would be placed now, and if not why, as the
    /// distributor sees it: a dict with ``verdict`` (``"match"``,
    /// ``"wait"`` or ``"fail"``), ``summary`` (a sentence), ``total`` and
    /// ``matched`` workers, ``best`` (the worker it would go to),
    /// ``clauses`` (each clause with the workers it eliminated),
    /// ``nearest`` (the workers that failed fewest clauses, and which) and
    /// ``waitable``. Arguments as for ``submit``; a bad expression raises
    /// ``ValueError``.
    #[pyo3(signature = (app, *, require = None, prefer = None, user = None, cores = 0, mem = None))]
    #[allow(clippy::too_many_arguments)]
    fn explain<'py>(
        &self,
        py: Python<'py>,
        app: String,
        require: Option<String>,
        prefer: Option<String>,
        user: Option<String>,
        cores: u32,
        mem: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let zero = 0u64.into_pyobject(py)?.into_any();
        let t = Template::new(
            app,
            require,
            prefer,
            user,
            cores,
            mem.unwrap_or(&zero),
            0,
            None,
        )?;
        let r = wait::wait(py, self.inner.explain(t.explain_query()))?
            .map_err(|e| errors::client_error(py, &e))?;
        if !r.error.is_empty() {
            return Err(PyValueError::new_err(format!(
                "bad expression: {}",
                r.error
            )));
        }
        explain_dict(py, &r)
    }

    /// The distributor's table of workers: one dict per worker, with the
    /// keys of ``allot status --json`` (``name``, ``state``, ``slots``,
    /// ``slots_free``, ``cores``, ``mem``, ``mem_free``, ``load``,
    /// ``apps``, the reservations, and each label as a key of its own).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let r = wait::wait(py, self.inner.status())?.map_err(|e| errors::client_error(py, &e))?;
        status_list(py, &r)
    }

    /// Submits a job the cluster keeps (durable at the distributor before
    /// this returns) and returns its ``Job``.
    ///
    /// One task of ``app`` with ``payload``; or, with ``array=(first,
    /// last)``, one task per index (each gets ``payload`` and its index);
    /// or, with ``lines`` (bytes or str), one task per line, the line as
    /// its input. ``timeout`` is each task's deadline in seconds; the
    /// other arguments are those of ``submit``.
    #[pyo3(signature = (app, payload = None, *, array = None, lines = None, require = None, prefer = None, user = None, cores = 0, mem = None, priority = 0, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn submit_job(
        &self,
        py: Python<'_>,
        app: String,
        payload: Option<&Bound<'_, PyAny>>,
        array: Option<(u64, u64)>,
        lines: Option<&Bound<'_, PyAny>>,
        require: Option<String>,
        prefer: Option<String>,
        user: Option<String>,
        cores: u32,
        mem: Option<&Bound<'_, PyAny>>,
        priority: i32,
        timeout: Option<f64>,
    ) -> PyResult<crate::jobs::PyJob> {
        let zero = 0u64.into_pyobject(py)?.into_any();
        let t = Template::new(
            app,
            require,
            prefer,
            user,
            cores,
            mem.unwrap_or(&zero),
            priority,
            timeout,
        )?;
        let payload = match payload {
            Some(p) => convert::payload(p)?,
            None => bytes::Bytes::new(),
        };
        let spec = match (array, lines) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("give array or lines, not both"));
            }
            (Some((first, last)), None) => {
                if first > last {
                    return Err(PyValueError::new_err(format!(
                        "array=({first}, {last}): the first index is above the last"
                    )));
                }
                allot::client::JobSpec::array(&t.app, first, last).input(payload)
            }
            (None, Some(l)) => {
                if !payload.is_empty() {
                    return Err(PyValueError::new_err(
                        "with lines, each line is its task's input: give no payload",
                    ));
                }
                allot::client::JobSpec::lines(&t.app, convert::payload(l)?)
            }
            (None, None) => allot::client::JobSpec::one(&t.app, payload),
        };
        let mut spec = spec
            .require(t.require)
            .prefer(t.prefer)
            .user(t.user)
            .demands(t.demands)
            .priority(t.priority);
        if let Some(d) = t.deadline {
            spec = spec.deadline(d);
        }
        let handle = self.jobs_handle()?;
        let job = handle.submit(py, spec)?;
        Ok(crate::jobs::PyJob::new(handle, job))
    }

    /// Every job the cluster holds (on every distributor the gateways
    /// know), oldest first: one dict each with ``job`` (its id), ``user``,
    /// ``app``, ``tasks``, the counts by state (``queued``, ``waiting``,
    /// ``running``, ``done``, ``failed``, ``cancelled``), ``submitted_ms``
    /// and ``finished_ms``.
    fn jobs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let handle = self.jobs_handle()?;
        let all = handle.list(py)?;
        let list = PyList::empty(py);
        for s in &all {
            list.append(crate::jobs::summary_dict(py, s)?)?;
        }
        Ok(list)
    }

    /// The job ``id`` (as ``Job.id`` or ``allot submit --detach`` gave
    /// it), to wait for, read or cancel from another process.
    fn job(&self, py: Python<'_>, id: String) -> PyResult<crate::jobs::PyJob> {
        let handle = self.jobs_handle()?;
        let s = handle.summary(py, &id)?;
        let job = allot::client::Job {
            id,
            tasks: s.tasks,
            distributor: String::new(),
        };
        Ok(crate::jobs::PyJob::new(handle, job))
    }

    /// The distributor this client talks to now (``None`` while it is
    /// failing over to another).
    #[getter]
    fn distributor(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let d =
            wait::wait(py, self.inner.distributor())?.map_err(|e| errors::client_error(py, &e))?;
        Ok(d.map(|a| a.to_string()))
    }

    /// The certificate name the client connected with.
    #[getter]
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Closes the connection. Tasks still in flight, and any submitted
    /// afterwards, raise ``AllotError`` ("the client is closed").
    fn close(&self) {
        self.inner.close();
        if let Some(Ok(j)) = self.jobs.get() {
            j.close();
        }
    }

    fn __enter__(slf: Py<PyClient>) -> Py<PyClient> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, pyo3::types::PyTuple>) {
        self.close();
    }

    fn __repr__(&self) -> String {
        let via: Vec<String> = match self.distributor {
            Some(d) => vec![format!("distributor={d}")],
            None => self.cfg.gateways.iter().map(|g| g.to_string()).collect(),
        };
        format!("Client(name={:?}, {})", self.cfg.name, via.join(", "))
    }
}
