//! The fast path of a command task with no input and no output files:
//! started and watched from the runtime's thread.
//!
//! 1. the child is made with [`super::clone`], which returns as soon as it
//!    exists, without waiting for its exec; where the kernel cannot,
//!    `posix_spawn` (what std uses) runs on the blocking pool, because it
//!    returns only once the child has executed its program, which waits on
//!    the program's file system (a hung NFS mount, a slow `--app-cwd`);
//! 2. the child's exit is seen through a pidfd registered with the
//!    runtime: one wake-up of its thread at the end;
//! 3. its stdout and stderr are read from their pipes once it has exited,
//!    without registering them: a short command's output waits in the
//!    pipes (64 KiB each), read with one `poll` each at its end.
//!
//! Handing the whole child to a pool thread instead (see
//! [`super::blocking`]) costs a wake-up of each thread at its start and at
//! its end, and a `poll` loop and `waitid` on the pool thread.
//!
//! A command still running after [`DRAIN_AFTER`] gets its pipes registered
//! too and read as it writes, so one that writes more than a pipe holds
//! never blocks for long; so do pipes still open after the exit (a process
//! that left the group holds them). The child is reaped only after its
//! output has ended and its pidfd said it exited, so its process group is
//! never signalled once its id may be reused. A task dropped before that
//! (deadline, cancel, worker stopping), or one whose watching fails, kills
//! the group and leaves the reaping to a thread of its own, which returns
//! at once: the group has been sent SIGKILL.
//!
//! Where pidfds are not available (Linux before 5.3, or a seccomp policy
//! that forbids them), commands take the blocking pool's path.

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

/// Whether this kernel gives out pidfds: asked of our own process until
/// it answers for good (a lack of descriptors is asked again next time).
fn pidfds_work() -> bool {
    static WORK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(w) = WORK.get() {
        return *w;
    }
    match pidfd_open(std::process::id()) {
        Ok(_) => *WORK.get_or_init(|| true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            *WORK.get_or_init(|| false)
        }
        Err(_) => false,
    }
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

/// A child started by either spawn.
enum Proc {
    /// `posix_spawn` on the blocking pool.
    Std(Child),
    /// [`super::clone`] on this thread.
    Cloned(super::clone::Forked),
}

impl Proc {
    fn id(&self) -> u32 {
        match self {
            Proc::Std(c) => c.id(),
            Proc::Cloned(f) => f.id(),
        }
    }

    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        match self {
            Proc::Std(c) => c.try_wait(),
            Proc::Cloned(f) => f.try_wait(),
        }
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Proc::Std(c) => c.wait(),
            Proc::Cloned(f) => f.wait(),
        }
    }
}

/// The spawned child until it is reaped: dropped before that, it kills
/// the command's process group and hands the child to a thread to reap.
struct Spawned(Option<Proc>);

impl Spawned {
    fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Proc::id)
    }

    /// Reaps the child if it has exited (its pidfd said so): the group is
    /// not signalled after this. `None`: it has not, and stays held.
    fn reap(&mut self) -> Option<Reaped> {
        let c = self.0.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => match self.0.take() {
                Some(Proc::Cloned(f)) => match f.start_failure() {
                    Some(e) => Some(Reaped::NotStarted(e)),
                    None => Some(Reaped::Exited(Ok(status))),
                },
                _ => Some(Reaped::Exited(Ok(status))),
            },
            Ok(None) => None,
            Err(e) => Some(Reaped::Exited(Err(e))),
        }
    }
}

/// A reaped child: how it exited, or why it never ran its program (a
/// cloned child, whose exec failed).
enum Reaped {
    Exited(std::io::Result<std::process::ExitStatus>),
    NotStarted(std::io::Error),
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        signal_group(Some(child.id()), libc::SIGKILL);
        // Not the blocking pool: a runtime shutting down drops what it has
        // not started, and the child would stay a zombie. A cloned child's
        // prepared memory goes with it, and is freed once it is reaped.
        let pid = child.id();
        let reaper = std::thread::Builder::new()
            .name("allot-reap".into())
            .spawn(move || {
                let _ = child.wait();
            });
        if let Err(e) = reaper {
            tracing::warn!(pid, "cannot start a thread to reap a killed command: {e}");
        }
    }
}

/// One of the child's output pipes and what has been kept of it.
struct Output {
    pipe: Option<OwnedFd>,
    kept: Vec<u8>,
    /// Why it could not be read to its end (the task fails with it rather
    /// than pass off part of the output as all of it).
    failed: Option<String>,
    /// At most this much is kept (one more than may be used tells that
    /// there was more); the rest is read and dropped.
    limit: usize,
}

impl Output {
    fn new(pipe: Option<impl Into<OwnedFd>>, limit: usize) -> Output {
        Output {
            pipe: pipe.map(Into::into),
            kept: Vec::new(),
            failed: None,
            limit,
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len()).min(bytes.len());
        self.kept.extend_from_slice(&bytes[..room]);
    }

    /// Reads what the pipe holds now, without waiting; `true` once it has
    /// ended (or failed).
    fn read_now(&mut self) -> bool {
        let mut scratch = [0u8; 16 * 1024];
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
                // Nothing yet (a process holds the pipe), or poll failed:
                // read it as it comes.
                return false;
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
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        self.pipe = None;
                        self.failed = Some(format!("reading its output failed: {e}"));
                        return true;
                    }
                }
            }
        }
        false
    }

    /// What was kept, or why it could not be read to its end.
    fn result(self) -> Result<Vec<u8>, String> {
        match self.failed {
            Some(why) => Err(why),
            None => Ok(self.kept),
        }
    }

    /// Reads the pipe to its end as it is written.
    async fn drain(&mut self) {
        let Some(fd) = self.pipe.take() else { return };
        if let Err(e) = self.drain_fd(fd).await {
            self.failed = Some(format!("reading its output failed: {e}"));
        }
    }

    async fn drain_fd(&mut self, fd: OwnedFd) -> std::io::Result<()> {
        set_nonblocking(&fd)?;
        // SAFETY: the `File` owns the descriptor and keeps it open, as
        // the same file, for as long as the `AsyncFd` holds it.
        let fd =
            unsafe { AsyncFd::register_with_interest(std::fs::File::from(fd), Interest::READABLE) }
                .map_err(std::io::Error::from)?;
        let mut scratch = vec![0u8; 16 * 1024];
        loop {
            let mut ready = fd.readable().await?;
            match ready.try_io(|f| {
                let mut file: &std::fs::File = f.get_ref();
                file.read(&mut scratch)
            }) {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => self.keep(&scratch[..n]),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
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

/// Runs `command` (stdin, stdout and stderr are set here): spawned on the
/// blocking pool, watched from this thread; `cmd` names it in messages.
/// Only when [`available`].
pub(super) async fn run(
    command: std::process::Command,
    cmd: &str,
    stop: Option<Stop>,
) -> AppOutcome {
    let (mut spawned, stdout, stderr, pidfd) = match start(command, cmd).await {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    let mut out = Output::new(stdout, MAX_OUTPUT + 1);
    let mut err = Output::new(stderr, STDERR_KEPT as usize + 1);
    // SAFETY: the `OwnedFd` keeps the descriptor open, as the same pidfd,
    // for as long as the `AsyncFd` holds it.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
    let pidfd = match pidfd {
        Ok(fd) => fd,
        // Out of descriptors or epoll's limits (the group is killed and
        // the child reaped on the way out).
        Err(e) => return failed(1, format!("cannot watch `{cmd}`: {e}")),
    };
    let grace = stop.as_ref().map_or(STOP_GRACE, |s| s.grace);
    let watched = {
        let body = async {
            let exited = pidfd.readable();
            let quick = match tokio::time::timeout(DRAIN_AFTER, exited).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => return Err(e),
                Err(_) => false,
            };
            let ended = quick && {
                let o = out.read_now();
                let e = err.read_now();
                o && e
            };
            if !ended {
                let (_, _, exited) = tokio::join!(out.drain(), err.drain(), async {
                    pidfd.readable().await.map(|_| ())
                });
                exited?;
            }
            Ok(())
        };
        tokio::pin!(body);
        let signal = stop.map(|s| s.signal);
        let stopped = stop_fired(signal);
        tokio::select! {
            r = &mut body => Some(r),
            () = stopped => {
                signal_group(spawned.pid(), libc::SIGTERM);
                tokio::time::timeout(grace, &mut body).await.ok()
            }
        }
    };
    // On every way out before the reaping, dropping `spawned` kills the
    // group and reaps the child.
    match watched {
        None => {
            return failed(
                -9,
                format!("`{cmd}` did not exit within {grace:?} of SIGTERM: killed"),
            )
        }
        Some(Err(e)) => return failed(1, format!("watching `{cmd}` failed: {e}")),
        Some(Ok(())) => {}
    }
    let status = match spawned.reap() {
        None => {
            return failed(
                1,
                format!("watching `{cmd}` failed: its pidfd said it had exited; it has not"),
            )
        }
        Some(Reaped::NotStarted(e)) => return failed(127, format!("cannot start `{cmd}`: {e}")),
        Some(Reaped::Exited(status)) => status,
    };
    super::outcome(cmd, out.result(), err.result(), status, None, None)
}

/// A started child, its stdout and stderr, and its pidfd.
type Started = (Spawned, Option<OwnedFd>, Option<OwnedFd>, OwnedFd);

/// Starts `command`: on this thread where [`super::clone`] can, else with
/// `posix_spawn` on the blocking pool. A task dropped while this runs
/// drops the guard unseen: the child is killed and reaped.
async fn start(mut command: std::process::Command, cmd: &str) -> Result<Started, AppOutcome> {
    if super::clone::available() {
        match super::clone::spawn(&command) {
            Ok((f, io)) => {
                let spawned = Spawned(Some(Proc::Cloned(f)));
                return Ok((spawned, Some(io.stdout), Some(io.stderr), io.pidfd));
            }
            Err(super::clone::SpawnError::Failed(e)) => {
                return Err(failed(127, format!("cannot start `{cmd}`: {e}")))
            }
            Err(super::clone::SpawnError::Unsupported) => {}
        }
    }
    piped(&mut command);
    let started = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn()?;
        let pipes = (child.stdout.take(), child.stderr.take());
        Ok::<_, std::io::Error>((Spawned(Some(Proc::Std(child))), pipes))
    })
    .await;
    let (spawned, (stdout, stderr)) = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(failed(127, format!("cannot start `{cmd}`: {e}"))),
        Err(e) => return Err(failed(1, format!("cannot start `{cmd}`: {e}"))),
    };
    let pidfd = spawned
        .pid()
        .ok_or_else(|| std::io::Error::other("no child"))
        .and_then(pidfd_open);
    match pidfd {
        Ok(p) => Ok((spawned, stdout.map(Into::into), stderr.map(Into::into), p)),
        // The kernel gave our own process one: this is out of descriptors
        // (the group is killed and the child reaped on the way out).
        Err(e) => Err(failed(1, format!("cannot watch `{cmd}`: {e}"))),
    }
}
