//! Rust errors and task outcomes as the Python exceptions of
//! `allot/_errors.py` (Python classes, so that they can carry attributes
//! and also be `ConnectionError`/`TimeoutError`, which a class defined in
//! Rust cannot be under the stable ABI before Python 3.12).

use allot::client::{ClientError, JobError};
use allot::pki::PkiError;
use allot::{Outcome, TaskStatus};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};
use pyo3::BoundObject;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The exception class `name` of `allot._errors`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let m = ERRORS.get_or_try_init(py, || py.import("allot._errors").map(Bound::unbind))?;
    m.bind(py).getattr(name)
}

/// An instance of exception `name` with `message` and `fields` as
/// attributes; if even that fails (the module cannot be imported), the
/// failure itself.
pub fn error(py: Python<'_>, name: &str, message: &str, fields: &[(&str, Py<PyAny>)]) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let kwargs = PyDict::new(py);
        for (k, v) in fields {
            kwargs.set_item(k, v)?;
        }
        let e = class(py, name)?.call((message,), Some(&kwargs))?;
        Ok(PyErr::from_value(e))
    })();
    made.unwrap_or_else(|e| e)
}

/// Shorthand for a field value.
pub fn field<'py, T: IntoPyObject<'py>>(py: Python<'py>, v: T) -> Py<PyAny> {
    match v.into_pyobject(py) {
        Ok(o) => o.into_any().unbind(),
        Err(_) => py.None(),
    }
}

/// A client error as the exception a Python caller expects: the search
/// for a gateway or distributor failing, or a lost connection, is
/// `Unavailable`; missing certificates a `PkiError` naming the file.
pub fn client_error(py: Python<'_>, e: &ClientError) -> PyErr {
    let text = e.to_string();
    match e {
        ClientError::Pki(p) => pki_error(py, p),
        ClientError::Timeout { .. }
        | ClientError::NoGateway(_)
        | ClientError::NoDistributor(_)
        | ClientError::NotConnected
        | ClientError::Lost(_) => error(py, "Unavailable", &text, &[]),
        ClientError::Refused {
            code: allot::ErrorCode::Unavailable | allot::ErrorCode::Overloaded,
            ..
        } => error(py, "Unavailable", &text, &[]),
        _ => error(py, "AllotError", &text, &[]),
    }
}

/// A certificate error, with the file at fault.
pub fn pki_error(py: Python<'_>, e: &PkiError) -> PyErr {
    let path = match e {
        PkiError::Io { path, .. }
        | PkiError::CaExists { path }
        | PkiError::NodeExists { path, .. }
        | PkiError::MissingCa { path, .. }
        | PkiError::MissingNode { path, .. }
        | PkiError::BadFile { path, .. } => Some(path.display().to_string()),
        _ => None,
    };
    error(py, "PkiError", &e.to_string(), &[("path", field(py, path))])
}

/// A job request's error.
pub fn job_error(py: Python<'_>, e: &JobError) -> PyErr {
    let text = e.to_string();
    match e {
        JobError::Pki(p) => pki_error(py, p),
        JobError::Transport(_)
        | JobError::Conn(_)
        | JobError::NoTarget
        | JobError::NoMember { .. } => error(py, "Unavailable", &text, &[]),
        JobError::Timeout(_) | JobError::WaitTimeout { .. } => error(py, "Timeout", &text, &[]),
        JobError::Refused(m) if is_bad_expression(m) => bad_expression(m),
        _ => error(py, "AllotError", &text, &[]),
    }
}

/// The distributor's words for an expression that does not compile.
const BAD_EXPRESSION: &str = "bad expression: ";

fn is_bad_expression(message: &str) -> bool {
    message.starts_with(BAD_EXPRESSION)
}

/// A `ValueError` for a `require` or `prefer` the distributor could not
/// compile (its message names the expression, the column and what was
/// expected).
fn bad_expression(message: &str) -> PyErr {
    let m = message.strip_prefix(BAD_EXPRESSION).unwrap_or(message);
    PyValueError::new_err(format!("bad expression: {m}"))
}

/// The exception for a task that ended other than `Ok`; `explain` is
/// called for a `NoMatch` to attach the distributor's explanation.
pub fn outcome_error(
    py: Python<'_>,
    o: &Outcome,
    explain: impl FnOnce(Python<'_>) -> Option<Py<PyAny>>,
) -> PyErr {
    let fields = |py: Python<'_>| {
        vec![
            ("task_id", field(py, o.task_id)),
            ("worker", field(py, &*o.worker)),
            ("distributor", field(py, &*o.distributor)),
            ("attempts", field(py, o.attempts)),
            ("latency_us", field(py, o.latency.as_micros() as u64)),
        ]
    };
    let message = if o.message.is_empty() {
        allot::labels::status_name(o.status).to_owned()
    } else {
        o.message.clone()
    };
    match o.status {
        TaskStatus::Failed => {
            let mut f = fields(py);
            f.push(("exit_code", field(py, o.exit_code)));
            f.push((
                "output",
                pyo3::types::PyBytes::new(py, &o.output).into_any().unbind(),
            ));
            error(py, "TaskFailed", &message, &f)
        }
        TaskStatus::NoMatch => {
            let mut f = fields(py);
            let ex = explain(py).unwrap_or_else(|| py.None());
            f.push(("explain", ex));
            error(py, "NoMatch", &message, &f)
        }
        TaskStatus::Timeout => error(py, "Timeout", &message, &fields(py)),
        TaskStatus::Error if is_bad_expression(&message) => bad_expression(&message),
        _ => error(py, "AllotError", &message, &fields(py)),
    }
}

/// A Rust-side failure that is a bug or the machine's (a thread that could
/// not start), not the caller's.
pub fn internal(what: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(what.to_string())
}
