//! `allot.Worker`: a worker node in this process whose apps are Python
//! functions (see [`crate::handlers`] for how they run).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use allot::worker::{self, WorkerConfig, WorkerHandle};
use allot::{NodeError, ReportMode};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::convert;
use crate::errors;
use crate::handlers::{app_specs, AppSpec, Bridge};
use crate::wait;

/// A node error as the Python exception for it.
pub fn node_error(py: Python<'_>, e: &NodeError) -> PyErr {
    match e {
        NodeError::Pki(p) => errors::pki_error(py, p),
        NodeError::Config { .. } => PyValueError::new_err(e.to_string()),
        _ => errors::error(py, "AllotError", &e.to_string(), &[]),
    }
}

/// `{name: "shell command"}` as the worker's command apps.
pub fn commands(d: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, String)>> {
    let Some(d) = d else {
        return Ok(Vec::new());
    };
    d.iter()
        .map(|(k, v)| Ok((k.extract::<String>()?, v.extract::<String>()?)))
        .collect()
}

struct Running {
    node: WorkerHandle,
    /// Stopped after the node: its threads end with it.
    _bridge: Bridge,
}

/// A worker that serves tasks with Python functions.
///
/// ``Worker(join, pki, name, cores=4, mem="8GiB", labels=None,
/// apps={"upper": upper})`` joins the distributors ``join`` (tried in
/// order) with the certificate ``name`` from the PKI directory ``pki``,
/// offering ``cores``, ``mem`` (bytes or ``"8GiB"``) and ``labels``
/// (``server.region`` in expressions).
///
/// ``apps`` maps app names to functions ``f(payload: bytes, task:
/// TaskInfo) -> bytes`` (or ``f(payload)``). Plain functions run on a pool
/// of ``threads`` Python threads (default: ``slots``, at most 64), off the worker's
/// network loop, so a handler that computes for minutes never stops the
/// worker's heartbeats; ``async def`` functions run on an asyncio loop of
/// the worker's own. A handler that raises fails its task with the
/// exception's type and message; one that returns anything but bytes fails
/// it saying so. ``slots`` (default ``cores``) is how many tasks it runs at
/// once; ``builtins`` the built-in apps it also offers (``echo``,
/// ``sleep``, ``sha256``); ``commands`` maps app names to shell commands.
///
/// ``start()`` starts it in the background and ``stop()`` stops it; ``run()``
/// serves until Ctrl-C. It is also a context manager.
#[pyclass(frozen, module = "allot", name = "Worker")]
pub struct PyWorker {
    cfg: WorkerConfig,
    specs: Vec<Arc<AppSpec>>,
    threads: usize,
    running: Mutex<Option<Running>>,
}

impl PyWorker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl PyWorker {
    #[new]
    #[pyo3(signature = (join, pki, name, cores = 4, mem = None, labels = None, apps = None, *, slots = None, threads = None, power = None, builtins = None, commands = None, report = "registered", listen = "0.0.0.0:0"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        join: &Bound<'_, PyAny>,
        pki: PathBuf,
        name: String,
        cores: u32,
        mem: Option<&Bound<'_, PyAny>>,
        labels: Option<&Bound<'_, PyDict>>,
        apps: Option<&Bound<'_, PyDict>>,
        slots: Option<u32>,
        threads: Option<usize>,
        power: Option<f64>,
        builtins: Option<Vec<String>>,
        commands: Option<&Bound<'_, PyDict>>,
        report: &str,
        listen: &str,
    ) -> PyResult<PyWorker> {
        let join = convert::addrs(join, "join")?;
        if join.is_empty() {
            return Err(PyValueError::new_err(
                "join needs at least one distributor address",
            ));
        }
        let mut cfg = WorkerConfig::new(&name, pki, join);
        cfg.cores = cores;
        cfg.mem = match mem {
            Some(m) => convert::size(m, "mem")?,
            None => 8 << 30,
        };
        cfg.slots = slots.unwrap_or(cores.max(1));
        if cfg.slots == 0 {
            return Err(PyValueError::new_err("slots must be at least 1"));
        }
        cfg.power = power.unwrap_or(f64::from(cores));
        cfg.labels = convert::attrs(labels, "label")?;
        cfg.apps = builtins.unwrap_or_else(|| vec!["echo".into()]);
        cfg.app_cmds = self::commands(commands)?;
        cfg.mode = match report {
            "registered" => ReportMode::Registered,
            "broadcast" => ReportMode::Broadcast,
            other => {
                return Err(PyValueError::new_err(format!(
                    "report must be \"registered\" or \"broadcast\", not {other:?}"
                )))
            }
        };
        cfg.listen = convert::addr(listen)?;
        let specs = app_specs(py, apps)?;
        let threads = threads
            .unwrap_or((cfg.slots as usize).min(64))
            .clamp(1, 1024);
        Ok(PyWorker {
            cfg,
            specs,
            threads,
            running: Mutex::new(None),
        })
    }

    /// Starts the worker in the background (it registers with a
    /// distributor of ``join`` and serves tasks). Raises ``PkiError`` if
    /// its certificate is missing; starting a running worker does nothing.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let mut running = self.lock();
        if running.is_some() {
            return Ok(());
        }
        let (bridge, handlers) = Bridge::start(py, &self.cfg.name, &self.specs, self.threads)?;
        let cfg = self.cfg.clone();
        let node = py
            .detach(move || worker::spawn(cfg, handlers))
            .map_err(|e| node_error(py, &e))?;
        *running = Some(Running {
            node,
            _bridge: bridge,
        });
        Ok(())
    }

    /// Stops the worker: its link to the distributor closes, tasks it
    /// runs end (the distributor places them again elsewhere). Handlers
    /// already running in Python finish in the background.
    fn stop(&self, py: Python<'_>) {
        let taken = self.lock().take();
        if let Some(r) = taken {
            let Running { node, _bridge } = r;
            py.detach(move || node.stop());
            drop(_bridge);
        }
    }

    /// Starts the worker (if it is not running) and serves until Ctrl-C
    /// (or SIGINT), then stops it and returns.
    fn run(&self, py: Python<'_>) -> PyResult<()> {
        self.start(py)?;
        loop {
            if let Err(e) = wait::sleep(py, std::time::Duration::from_secs(1)) {
                self.stop(py);
                if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
                    return Ok(());
                }
                return Err(e);
            }
        }
    }

    /// Whether it runs.
    #[getter]
    fn running(&self) -> bool {
        self.lock().is_some()
    }

    /// Its node name.
    #[getter]
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The names of the apps it offers (Python ones, built-ins, commands).
    #[getter]
    fn apps(&self) -> Vec<String> {
        let mut v: Vec<String> = self.specs.iter().map(|s| s.name().to_owned()).collect();
        v.extend(self.cfg.apps.iter().cloned());
        v.extend(self.cfg.app_cmds.iter().map(|(n, _)| n.clone()));
        v.sort();
        v.dedup();
        v
    }

    fn __enter__(slf: Py<PyWorker>, py: Python<'_>) -> PyResult<Py<PyWorker>> {
        slf.get().start(py)?;
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) {
        self.stop(py);
    }

    fn __repr__(&self) -> String {
        format!(
            "Worker(name={:?}, apps={:?}, running={})",
            self.cfg.name,
            self.apps(),
            self.running()
        )
    }
}
