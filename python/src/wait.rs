//! Waiting for the SDK's futures from a Python thread: without the GIL
//! (other Python threads run meanwhile), in slices, so that Ctrl-C raises
//! `KeyboardInterrupt` within a fraction of a second even while a task
//! runs for an hour.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How long one wait goes without looking at Python's signals.
const SLICE: Duration = Duration::from_millis(100);

thread_local! {
    /// A small current-thread runtime per Python thread that waits: the
    /// SDK's futures are channels completed from the client's own thread,
    /// and this one only parks until they are (its timer bounds a slice).
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's runtime.
fn with_runtime<R>(f: impl FnOnce(&tokio::runtime::Runtime) -> R) -> std::io::Result<R> {
    RUNTIME.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()?,
            );
        }
        match slot.as_ref() {
            Some(rt) => Ok(f(rt)),
            None => Err(std::io::Error::other("no runtime")),
        }
    })
}

/// Waits for `fut` without the GIL, checking for signals between slices.
/// `None` if `timeout` passed first (`fut` is dropped then). An exception
/// from a signal handler (`KeyboardInterrupt`) drops `fut` and is raised.
pub fn block_on<F>(py: Python<'_>, fut: F, timeout: Option<Duration>) -> PyResult<Option<F::Output>>
where
    F: Future + Send,
    F::Output: Send,
{
    let until = timeout.map(|t| Instant::now() + t);
    let mut fut = Box::pin(fut);
    loop {
        let slice = match until {
            Some(u) => {
                let left = u.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                left.min(SLICE)
            }
            None => SLICE,
        };
        let r = py.detach(|| {
            with_runtime(|rt| {
                rt.block_on(async { tokio::time::timeout(slice, fut.as_mut()).await })
            })
        });
        match r.map_err(crate::errors::internal)? {
            Ok(v) => return Ok(Some(v)),
            Err(_elapsed) => py.check_signals()?,
        }
    }
}

/// [`block_on`] without a timeout.
pub fn wait<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    match block_on(py, fut, None)? {
        Some(v) => Ok(v),
        None => Err(crate::errors::internal("a wait without timeout timed out")),
    }
}

/// Sleeps `d` without the GIL, checking for signals every slice.
pub fn sleep(py: Python<'_>, d: Duration) -> PyResult<()> {
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        py.detach(|| std::thread::sleep(left.min(SLICE)));
        py.check_signals()?;
    }
}
