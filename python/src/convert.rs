//! Python values to the SDK's types: addresses, attributes, sizes,
//! seconds, payloads, task fields; and expressions checked before they
//! travel.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use allot::{Attr, AttrValue, Demands, Task};
use allot_engine::expr::{parser, ExprError, Which};
use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyString};

/// One address (`"127.0.0.1:7000"`, `"localhost:7000"`): the first one it
/// resolves to.
pub fn addr(s: &str) -> PyResult<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "`{s}` is not an address like 127.0.0.1:7000 or localhost:7000"
            ))
        })
}

/// A list of addresses, or one given as a string (which may hold several
/// separated by commas, as the command line takes them).
pub fn addrs(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<SocketAddr>> {
    let items: Vec<String> = if let Ok(s) = v.cast::<PyString>() {
        s.to_cow()?
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect()
    } else {
        v.try_iter()
            .map_err(|_| PyTypeError::new_err(format!("{what} must be a list of \"host:port\"")))?
            .map(|a| a.and_then(|a| a.extract::<String>()))
            .collect::<PyResult<_>>()?
    };
    items.iter().map(|a| addr(a)).collect()
}

/// Attributes from a dict of `str` to `str`, `int`, `float` or `bool`.
pub fn attrs(d: Option<&Bound<'_, PyDict>>, what: &str) -> PyResult<Vec<Attr>> {
    let Some(d) = d else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let key: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("{what} keys must be strings")))?;
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(PyValueError::new_err(format!(
                "`{key}` is not a valid {what} name (letters, digits, _)"
            )));
        }
        let value = if v.is_instance_of::<PyBool>() {
            AttrValue::Bool(v.extract()?)
        } else if v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>() {
            let n: f64 = v.extract()?;
            if !n.is_finite() {
                return Err(PyValueError::new_err(format!(
                    "{what} `{key}` must be a finite number"
                )));
            }
            AttrValue::Num(n)
        } else if let Ok(s) = v.cast::<PyString>() {
            AttrValue::Str(s.to_cow()?.into_owned())
        } else {
            return Err(PyTypeError::new_err(format!(
                "{what} `{key}` must be a str, int, float or bool, not {}",
                v.get_type().name()?
            )));
        };
        out.push(Attr { key, value });
    }
    Ok(out)
}

/// A byte size: an `int` of bytes, or a string with a unit (`"512MiB"`).
pub fn size(v: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    if let Ok(n) = v.extract::<u64>() {
        return Ok(n);
    }
    if let Ok(s) = v.extract::<String>() {
        return allot::units::parse_size(&s)
            .map_err(|e| PyValueError::new_err(format!("{what}: {e}")));
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be a number of bytes or a size like \"512MiB\""
    )))
}

/// Seconds (`int` or `float`, at least 0) as a duration.
pub fn seconds(s: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a number of seconds, at least 0 (got {s})"
        ))
    })
}

/// A payload: `bytes` or `bytearray`, or a `str` (sent as UTF-8).
pub fn payload(v: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(s.to_cow()?.as_bytes()));
    }
    if let Ok(b) = v.cast::<PyByteArray>() {
        return Ok(Bytes::from(b.to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "a payload must be bytes, bytearray or str, not {}",
        v.get_type().name()?
    )))
}

/// Checks that `require` and `prefer` parse, so that a typo fails at once
/// as a `ValueError` pointing at it rather than after a round trip. (The
/// distributor still type-checks them against its table.)
pub fn check_expressions(require: &str, prefer: &str) -> PyResult<()> {
    for (src, which) in [(require, Which::Require), (prefer, Which::Prefer)] {
        if src.trim().is_empty() {
            continue;
        }
        if let Err(e) = parser::parse(src, which) {
            return Err(expression_error(src, &e));
        }
    }
    Ok(())
}

/// `bad expression: require, column 17: expected ...`, and the expression
/// with a caret under the column.
fn expression_error(src: &str, e: &ExprError) -> PyErr {
    let mut text = format!("bad expression: {e}");
    if let Some(col) = e.column() {
        text.push_str(&format!("\n    {src}\n    {}^", " ".repeat(col - 1)));
    }
    PyValueError::new_err(text)
}

/// Everything of a task but its payload, shared by the tasks of one call.
#[derive(Clone, Debug, Default)]
pub struct Template {
    pub app: String,
    pub require: String,
    pub prefer: String,
    pub user: String,
    pub demands: Demands,
    pub priority: i32,
    pub deadline: Option<Duration>,
}

impl Template {
    /// Checks and gathers the task arguments of `submit`, `map` and
    /// `submit_async`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        app: String,
        require: Option<String>,
        prefer: Option<String>,
        user: Option<String>,
        cores: u32,
        mem: &Bound<'_, PyAny>,
        priority: i32,
        timeout: Option<f64>,
    ) -> PyResult<Template> {
        if app.is_empty() {
            return Err(PyValueError::new_err("app must not be empty"));
        }
        let require = require.unwrap_or_default();
        let prefer = prefer.unwrap_or_default();
        check_expressions(&require, &prefer)?;
        let deadline = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        Ok(Template {
            app,
            require,
            prefer,
            user: user.unwrap_or_default(),
            demands: Demands {
                cores,
                mem: size(mem, "mem")?,
                slots: 1,
            },
            priority,
            deadline,
        })
    }

    /// The task for `payload`.
    pub fn task(&self, payload: Bytes) -> Task {
        let mut t = Task::new(self.app.clone(), payload)
            .require(self.require.clone())
            .prefer(self.prefer.clone())
            .user(self.user.clone())
            .demands(self.demands)
            .priority(self.priority);
        if let Some(d) = self.deadline {
            t = t.deadline(d);
        }
        t
    }

    /// The explain query for tasks of this template.
    pub fn explain_query(&self) -> allot::ExplainQuery {
        allot::ExplainQuery {
            app: self.app.clone(),
            demands: self.demands,
            require: self.require.clone(),
            prefer: self.prefer.clone(),
            user: self.user.clone(),
        }
    }
}
