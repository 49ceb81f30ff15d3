//! `allot.LocalCluster`: gateway, distributors and workers in this
//! process, for notebooks and tests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use allot::{ClientConfig, LocalCluster, Role};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::client::PyClient;
use crate::convert;
use crate::errors;
use crate::handlers::{app_specs, AppSpec, Bridge};

struct Running {
    cluster: LocalCluster,
    /// Stopped after the nodes.
    _bridges: Vec<Bridge>,
}

/// A whole cluster in this process: ``workers`` workers, ``distributors``
/// distributors (one set; each worker reports to all of them) and a
/// gateway on loopback, with certificates in a private temporary directory
/// that is removed when the cluster stops.
///
/// ``apps`` maps app names to Python functions, as for ``Worker``, and
/// every worker offers them, besides the built-ins ``builtins`` (default
/// ``echo``, ``sleep``, ``sha256``). ``cores``, ``mem``, ``slots`` and
/// ``threads`` are each worker's; ``labels`` is one dict for all workers or
/// a list with one dict per worker.
///
/// ``with allot.LocalCluster(workers=2, apps={"upper": upper}) as c:
/// client = c.client()`` starts it, connects, and stops everything at the
/// end of the block (``stop()`` does the same).
#[pyclass(frozen, module = "allot", name = "LocalCluster")]
pub struct PyLocalCluster {
    running: Mutex<Option<Running>>,
    gateways: Vec<String>,
    distributors: Vec<String>,
    workers: Vec<String>,
    pki: PathBuf,
}

impl PyLocalCluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Labels for each of `n` workers from one dict or a list of `n`.
fn worker_labels(labels: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Vec<Vec<allot::Attr>>> {
    let Some(l) = labels else {
        return Ok(vec![Vec::new(); n]);
    };
    if let Ok(d) = l.cast::<PyDict>() {
        let one = convert::attrs(Some(d), "label")?;
        return Ok(vec![one; n]);
    }
    if let Ok(list) = l.cast::<PyList>() {
        if list.len() != n {
            return Err(PyValueError::new_err(format!(
                "labels lists {} dicts for {n} workers",
                list.len()
            )));
        }
        return list
            .iter()
            .map(|d| convert::attrs(Some(d.cast::<PyDict>()?), "label"))
            .collect();
    }
    Err(PyValueError::new_err(
        "labels must be a dict, or a list of one dict per worker",
    ))
}

#[pymethods]
impl PyLocalCluster {
    #[new]
    #[pyo3(signature = (workers = 2, apps = None, *, distributors = 1, cores = 4, mem = None, slots = None, threads = None, labels = None, builtins = None, timeout = 20.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        workers: usize,
        apps: Option<&Bound<'_, PyDict>>,
        distributors: usize,
        cores: u32,
        mem: Option<&Bound<'_, PyAny>>,
        slots: Option<u32>,
        threads: Option<usize>,
        labels: Option<&Bound<'_, PyAny>>,
        builtins: Option<Vec<String>>,
        timeout: f64,
    ) -> PyResult<PyLocalCluster> {
        if distributors == 0 {
            return Err(PyValueError::new_err(
                "a cluster needs at least one distributor",
            ));
        }
        let mem = match mem {
            Some(m) => convert::size(m, "mem")?,
            None => 8 << 30,
        };
        let slots = slots.unwrap_or(cores.max(1));
        if slots == 0 {
            return Err(PyValueError::new_err("slots must be at least 1"));
        }
        let threads = threads.unwrap_or((slots as usize).min(64)).clamp(1, 1024);
        let builtins =
            builtins.unwrap_or_else(|| vec!["echo".into(), "sleep".into(), "sha256".into()]);
        let labels = worker_labels(labels, workers)?;
        let specs: Vec<Arc<AppSpec>> = app_specs(py, apps)?;
        let timeout = convert::seconds(timeout, "timeout")?;

        let mut b = LocalCluster::builder();
        let mut dist_names = Vec::new();
        for i in 0..distributors {
            let n = format!("dist-{}", i + 1);
            b = b.distributor(&n);
            dist_names.push(n);
        }
        let mut names = Vec::new();
        for (i, l) in labels.into_iter().enumerate() {
            let name = format!("worker-{}", i + 1);
            let builtins = builtins.clone();
            b = b.worker(&name, move |w| {
                // With several distributors, each sees every worker, so
                // that a client sent to any of them finds them all.
                if distributors > 1 {
                    w.mode = allot::ReportMode::Broadcast;
                }
                w.apps = builtins;
                w.cores = cores;
                w.mem = mem;
                w.slots = slots;
                w.power = f64::from(cores);
                w.labels = l;
            });
            names.push(name);
        }
        let mut bridges = Vec::new();
        for name in &names {
            let (bridge, handlers) = Bridge::start(py, name, &specs, threads)?;
            for (app, h) in handlers {
                b = b.handler(name, &app, h);
            }
            bridges.push(bridge);
        }
        let b = b.gateway("gw-1").client("client").up_timeout(timeout);
        let cluster = py.detach(move || b.start()).map_err(|e| match e {
            allot::LocalClusterError::Config(m) => PyValueError::new_err(m),
            e => errors::error(py, "AllotError", &e.to_string(), &[]),
        })?;
        Ok(PyLocalCluster {
            gateways: cluster.gateways().iter().map(|a| a.to_string()).collect(),
            distributors: cluster
                .distributors()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            workers: names,
            pki: cluster.pki().to_path_buf(),
            running: Mutex::new(Some(Running {
                cluster,
                _bridges: bridges,
            })),
        })
    }

    /// A ``Client`` of the cluster, through its gateway, with the
    /// certificate ``name`` (issued now if the cluster has none by that
    /// name) and the client attributes ``attrs``.
    #[pyo3(signature = (name = "client".to_owned(), attrs = None, *, retry_for = 5.0))]
    #[pyo3(text_signature = "(self, name='client', attrs=None, *, retry_for=5.0)")]
    fn client(
        &self,
        py: Python<'_>,
        name: String,
        attrs: Option<&Bound<'_, PyDict>>,
        retry_for: f64,
    ) -> PyResult<PyClient> {
        if self.lock().is_none() {
            return Err(errors::error(
                py,
                "AllotError",
                "the cluster is stopped",
                &[],
            ));
        }
        self.ensure_cert(py, &name, Role::Client)?;
        let gateways = self
            .gateways
            .iter()
            .map(|g| convert::addr(g))
            .collect::<PyResult<Vec<_>>>()?;
        let cfg = ClientConfig::new(name, &self.pki, gateways)
            .with_attrs(convert::attrs(attrs, "client attribute")?)
            .with_retry_for(convert::seconds(retry_for, "retry_for")?);
        PyClient::connect(py, cfg, None)
    }

    /// Issues a certificate ``name`` for ``role`` (``"worker"``,
    /// ``"client"``, ``"distributor"`` or ``"gateway"``) in the cluster's
    /// PKI directory, for a node started separately (an ``allot.Worker``
    /// joining ``distributors``, an ``allot`` process); returns the
    /// directory. A name already issued is kept.
    #[pyo3(signature = (name, role = "worker"))]
    fn issue(&self, py: Python<'_>, name: &str, role: &str) -> PyResult<String> {
        let role = Role::parse(role).ok_or_else(|| {
            PyValueError::new_err(format!(
                "`{role}` is not a role (gateway, distributor, worker, client)"
            ))
        })?;
        self.ensure_cert(py, name, role)?;
        Ok(self.pki.display().to_string())
    }

    /// The gateways' addresses (``"127.0.0.1:PORT"``).
    #[getter]
    fn gateways(&self) -> Vec<String> {
        self.gateways.clone()
    }

    /// The distributors' addresses (for ``Worker(join=...)``).
    #[getter]
    fn distributors(&self) -> Vec<String> {
        self.distributors.clone()
    }

    /// The workers' names.
    #[getter]
    fn workers(&self) -> Vec<String> {
        self.workers.clone()
    }

    /// The PKI directory (removed when the cluster stops).
    #[getter]
    fn pki(&self) -> String {
        self.pki.display().to_string()
    }

    /// Stops every node and removes the certificates.
    fn stop(&self, py: Python<'_>) {
        let taken = self.lock().take();
        if let Some(Running { cluster, _bridges }) = taken {
            py.detach(move || cluster.stop());
            drop(_bridges);
        }
    }

    fn __enter__(slf: Py<PyLocalCluster>) -> Py<PyLocalCluster> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) {
        self.stop(py);
    }

    fn __repr__(&self) -> String {
        format!(
            "LocalCluster(gateways={:?}, distributors={:?}, workers={:?})",
            self.gateways, self.distributors, self.workers
        )
    }
}

impl PyLocalCluster {
    /// Issues `name` unless the directory has it already.
    fn ensure_cert(&self, py: Python<'_>, name: &str, role: Role) -> PyResult<()> {
        if self.pki.join(format!("{name}.pem")).exists() {
            return Ok(());
        }
        let pki = self.pki.clone();
        let name = name.to_owned();
        py.detach(move || allot::pki::issue(&pki, &name, role))
            .map_err(|e| errors::pki_error(py, &e))
    }
}
