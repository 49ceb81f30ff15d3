//! The fast path of a command task with no input and no output files, run
//! wholly on the calling (runtime) thread:
//!
//! 1. `posix_spawn` (what std uses) returns once the child has executed
//!    its program;
//! 2. the child's exit is seen through a pidfd registered with the
//!    runtime, the one wake-up of the thread the task costs;
//! 3. its stdout and stderr are read from their pipes once it has exited,
//!    without registering them: a short command's output waits in the
//!    pipes (64 KiB each), read with one `poll` at its end.
//!
//! Handing the child to another thread instead (the blocking pool, see
//! [`super::blocking`]) costs a wake-up of each thread for every hand-over,
//! which on a short command is most of what the worker spends on it.
//!
//! A command still running after [`DRAIN_AFTER`] gets its pipes registered
//! too and read as it writes, so one that writes more than a pipe holds
//! never blocks for long; so do pipes still open after the exit (a process
//! that left the group holds them). The child is reaped only after its
//! output has ended, so its process group is never signalled once its id
//! may be reused. A task dropped before that (deadline, cancel, worker
//! stopping) kills the group and leaves the reaping to the blocking pool,
//! which returns at once: the group has been sent SIGKILL.
//!
//! `posix_spawn` holds the thread until the child has executed its
//! program (about 0.1 ms for a small one), so a worker starts its
//! commands one after the other: thousands a second, far more than
//! commands that do anything take.
//!
//! Where pidfds are not available (Linux before 5.3), commands take the
//! blocking pool's path.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Child;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{failed, piped, signal_group, stop_fired, STDERR_KEPT};
use crate::apps::{AppOutcome, Stop, MAX_OUTPUT, STOP_GRACE};

/// How long a command may run before its pipes are read as it writes:
/// a command that ends sooner has its output read once, at its end.
const DRAIN_AFTER: Duration = Duration::from_millis(10);

/// Reads of a pipe that keeps being written after the exit (an escaped
/// process) before it is read as it comes instead, off the thread's turn.
const READS_AT_EXIT: usize = 16;

/// Whether this kernel gives out pidfds (asked once, of our own process).
fn pidfds_work() -> bool {
    static WORK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORK.get_or_init(|| pidfd_open(std::process::id()).is_ok())
}

#[cfg(test)]
thread_local! {
    /// Tests take the blocking pool's path on their thread with this set.
    pub(super) static NO_PIDFD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether commands started from this thread take this path.
pub(super) fn available() -> bool {
    #[cfg(test)]
    if NO_PIDFD.with(std::cell::Cell::get) {
        return false;
    }
    pidfds_work()
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new
    // descriptor or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    match i32::try_from(fd) {
        // SAFETY: `fd` was just returned by the kernel and is owned by
        // nobody else.
        Ok(fd) if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The spawned child until it is reaped: dropped before that, it kills
/// the command's process group and hands the child to the blocking pool to
/// reap.
struct Spawned(Option<Child>);

impl Spawned {
    fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Reaps the child (which has exited): the group is not signalled
    /// after this.
    fn reap(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self.0.take() {
            Some(mut c) => c.wait(),
            None => Err(std::io::Error::other("the command was reaped already")),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        signal_group(Some(child.id()), libc::SIGKILL);
        let reap = move || {
            let _ = child.wait();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(reap)),
            Err(_) => {
                let _ = std::thread::Builder::new()
                    .name("allot-reap".into())
                    .spawn(reap);
            }
        }
    }
}

/// One of the child's output pipes and what has been kept of it.
struct Output {
    pipe: Option<OwnedFd>,
    kept: Vec<u8>,
    /// At most this much is kept (one more than may be used tells that
    /// there was more); the rest is read and dropped.
    limit: usize,
}

impl Output {
    fn new(pipe: Option<impl Into<OwnedFd>>, limit: usize) -> Output {
        Output {
            pipe: pipe.map(Into::into),
            kept: Vec::new(),
            limit,
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len()).min(bytes.len());
        self.kept.extend_from_slice(&bytes[..room]);
    }

    /// Reads what the pipe holds now, without waiting; `true` once it has
    /// ended (or failed).
    fn read_now(&mut self, scratch: &mut [u8]) -> bool {
        for _ in 0..READS_AT_EXIT {
            let Some(fd) = self.pipe.as_ref() else {
                return true;
            };
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, no timeout.
            let r = unsafe { libc::poll(&mut p, 1, 0) };
            if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if r <= 0 {
                return r < 0;
            }
            if p.revents & libc::POLLIN == 0 {
                // Hung up with nothing left to read.
                self.pipe = None;
                return true;
            }
            // SAFETY: read(2) into `scratch`, a live buffer of its length.
            let n =
                unsafe { libc::read(fd.as_raw_fd(), scratch.as_mut_ptr().cast(), scratch.len()) };
            match usize::try_from(n) {
                Ok(0) => {
                    self.pipe = None;
                    return true;
                }
                Ok(n) => self.keep(&scratch[..n]),
                Err(_)
                    if std::io::Error::last_os_error().kind()
                        == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.pipe = None;
                    return true;
                }
            }
        }
        false
    }

    /// Reads the pipe to its end as it is written.
    async fn drain(&mut self) {
        let Some(fd) = self.pipe.take() else { return };
        if set_nonblocking(&fd).is_err() {
            return;
        }
        // SAFETY: the `File` owns the descriptor and keeps it open, as
        // the same file, for as long as the `AsyncFd` holds it.
        let Ok(fd) = (unsafe {
            AsyncFd::register_with_interest(std::fs::File::from(fd), Interest::READABLE)
        }) else {
            return;
        };
        let mut scratch = vec![0u8; 16 * 1024];
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return;
            };
            match ready.try_io(|f| {
                let mut file: &std::fs::File = f.get_ref();
                file.read(&mut scratch)
            }) {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => self.keep(&scratch[..n]),
                Err(_would_block) => {}
            }
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl(2) on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `command` (stdin, stdout and stderr are set here) on this thread;
/// `cmd` names it in messages. Only when [`available`].
pub(super) async fn run(
    mut command: std::process::Command,
    cmd: &str,
    stop: Option<Stop>,
) -> AppOutcome {
    piped(&mut command);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return failed(127, format!("cannot start `{cmd}`: {e}")),
    };
    let mut out = Output::new(child.stdout.take(), MAX_OUTPUT + 1);
    let mut err = Output::new(child.stderr.take(), STDERR_KEPT as usize + 1);
    // SAFETY: the `OwnedFd` keeps the descriptor open, as the same pidfd,
    // for as long as the `AsyncFd` holds it.
    let pidfd = pidfd_open(child.id()).and_then(|fd| {
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(std::io::Error::from)
    });
    let mut spawned = Spawned(Some(child));
    let pidfd = match pidfd {
        Ok(fd) => fd,
        // The kernel gave our own process one: this is out of descriptors
        // (the group is killed and the child reaped on the way out).
        Err(e) => return failed(1, format!("cannot watch `{cmd}`: {e}")),
    };
    let grace = stop.as_ref().map_or(STOP_GRACE, |s| s.grace);
    let stopped_late = {
        let body = async {
            let exited = async {
                let _ = pidfd.readable().await;
            };
            let quick = tokio::time::timeout(DRAIN_AFTER, exited).await.is_ok();
            let mut scratch = [0u8; 16 * 1024];
            let ended = quick && {
                let o = out.read_now(&mut scratch);
                let e = err.read_now(&mut scratch);
                o && e
            };
            if !ended {
                tokio::join!(out.drain(), err.drain(), async {
                    let _ = pidfd.readable().await;
                });
            }
        };
        tokio::pin!(body);
        let signal = stop.map(|s| s.signal);
        let stopped = stop_fired(signal);
        tokio::select! {
            () = &mut body => false,
            () = stopped => {
                signal_group(spawned.pid(), libc::SIGTERM);
                tokio::time::timeout(grace, &mut body).await.is_err()
            }
        }
    };
    if stopped_late {
        // Dropping `spawned` kills the group and reaps the child.
        return failed(
            -9,
            format!("`{cmd}` did not exit within {grace:?} of SIGTERM: killed"),
        );
    }
    let status = spawned.reap();
    super::outcome(cmd, Ok(out.kept), Ok(err.kept), status, None, None)
}
