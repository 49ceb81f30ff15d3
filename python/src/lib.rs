//! The Python SDK of allot: the extension module `allot._native`, which
//! `allot/__init__.py` re-exports as the `allot` package (distribution
//! `allot-cluster`).
//!
//! It wraps the Rust SDK rather than reimplementing it: `Client` is the
//! SDK's `Send` client handle (its connection on a thread of its own),
//! jobs go through the SDK's `JobClient` on a thread of their own, and
//! `Worker` and `LocalCluster` start the same worker and nodes an
//! embedding Rust program would, with Python functions as handlers. Every
//! wait releases the GIL, and no thread that moves network traffic ever
//! takes it.

mod aio;
mod client;
mod cluster;
mod convert;
mod errors;
mod handlers;
mod jobs;
mod map;
mod results;
mod wait;
mod worker;

use pyo3::prelude::*;

/// The version of the package (the workspace's).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Sends the nodes' and client's logs (Rust `tracing`) to stderr, filtered
/// by ``filter`` (``"info"``, ``"allot=debug"``; the ``ALLOT_LOG``
/// environment variable if not given, else ``"warn"``). Call it once,
/// early; later calls do nothing.
#[pyfunction]
#[pyo3(signature = (filter = None))]
fn log_to_stderr(filter: Option<String>) {
    let filter = filter
        .or_else(|| std::env::var("ALLOT_LOG").ok())
        .unwrap_or_else(|| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    m.add_class::<client::PyClient>()?;
    m.add_class::<results::TaskResult>()?;
    m.add_class::<map::MapIter>()?;
    m.add_class::<jobs::PyJob>()?;
    m.add_class::<worker::PyWorker>()?;
    m.add_class::<handlers::PyTaskInfo>()?;
    m.add_class::<cluster::PyLocalCluster>()?;
    m.add_function(wrap_pyfunction!(log_to_stderr, m)?)?;
    m.add_function(wrap_pyfunction!(aio::_resolve_futures, m)?)?;
    Ok(())
}
