//! Ctrl-C and SIGTERM for the commands that start a cluster of their own
//! (`allot demo`, `allot bench --local`).
//!
//! Those commands hold a temporary directory with the cluster's private
//! keys, node threads and, with `--processes`, child processes. Under the
//! default action of the signal the process dies on the spot: no destructor
//! runs, and the keys stay in the temporary directory. [`catch`] replaces
//! the default action with a flag; the command runs its async work through
//! [`block_on`], which ends it with [`Interrupted`] once the flag is set,
//! so the command returns an error and its guards (the directory, the
//! nodes, the children) clean up on the way out. A signal that comes while
//! the command is between two such calls is kept and ends the next one at
//! once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

/// Set by the handler that [`catch`] installs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How often [`block_on`] looks at the flag: the delay between Ctrl-C and
/// the start of the clean-up, at most.
const POLL: Duration = Duration::from_millis(50);

/// The command was interrupted by Ctrl-C (SIGINT) or SIGTERM.
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted (Ctrl-C or SIGTERM): what this run started is stopped and its temporary files removed"
)]
pub struct Interrupted;

/// Exit status for an interrupted command: 128 + SIGINT, as shells report
/// a process killed by Ctrl-C.
pub const EXIT_CODE: u8 = 130;

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Relaxed);
}

/// From now on, SIGINT and SIGTERM set the flag instead of killing the
/// process.
pub fn catch() -> std::io::Result<()> {
    #[cfg(unix)]
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to a static atomic, which is
        // async-signal-safe; `sa` is fully initialised (zeroed, then the
        // handler, an empty mask and SA_RESTART so that interrupted system
        // calls resume) and outlives the call, which copies it.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM came since [`catch`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Relaxed)
}

/// Runs `f` to completion, or until the interrupt flag is set.
pub async fn until_interrupted<F: Future>(f: F) -> Result<F::Output, Interrupted> {
    let watch = async {
        while !interrupted() {
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        biased;
        () = watch => Err(Interrupted),
        r = f => Ok(r),
    }
}

/// [`crate::runtime::block_on_local`] of `f`, ended by an interrupt.
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(crate::runtime::block_on_local(until_interrupted(f))??)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, not two: the flag is process-wide.
    #[cfg(unix)]
    #[test]
    fn a_caught_signal_ends_the_work_with_an_error_and_only_then() {
        assert_eq!(block_on(async { 7 }).expect("not interrupted"), 7);
        catch().expect("handler installed");
        // SAFETY: raising a signal whose handler `catch` just installed.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert!(interrupted(), "the handler set the flag; the process lives");
        let e = block_on(std::future::pending::<()>()).expect_err("interrupted");
        assert!(e.downcast_ref::<Interrupted>().is_some(), "{e:#}");
        assert!(format!("{e:#}").contains("Ctrl-C"));
        // Back to the default action for the rest of the test process.
        INTERRUPTED.store(false, Relaxed);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: resetting a signal to its default action.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
}
