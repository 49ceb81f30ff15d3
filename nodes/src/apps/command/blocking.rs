//! The path of a command task with no input and no output files where
//! the kernel gives out no pidfds (Linux before 5.3; see [`super::inline`]
//! for the usual one): the whole child, from spawn to exit, is handled on
//! one thread of the runtime's blocking pool (spawn, read stdout and
//! stderr with `poll`, wait), and the runtime's thread is woken once the
//! child has started and once when it has ended.
//!
//! A task dropped meanwhile (deadline, cancel, worker stopping) kills the
//! command's process group, as the general path's `kill_on_drop` does, and
//! closes a socket the blocking thread polls with the child's pipes: it stops
//! reading (a process that left the group may hold the output pipes open)
//! and reaps the child, so the pool thread is free again at once. The
//! group is only signalled while the child is unreaped (a lock held over
//! the reaping), so a reused process id is never hit.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use super::{failed, piped, signal_group, stop_fired, STDERR_KEPT};
use crate::apps::{AppOutcome, Stop, MAX_OUTPUT, STOP_GRACE};

/// What the blocking thread hands back.
struct Ended {
    out: Vec<u8>,
    err: Vec<u8>,
    status: std::io::Result<ExitStatus>,
}

/// The child's process group while it may be signalled: `None` once it has
/// been reaped (its id may be reused then).
type Group = Arc<Mutex<Option<u32>>>;

fn signal(group: &Group, sig: libc::c_int) {
    if let Ok(g) = group.lock() {
        signal_group(*g, sig);
    }
}

/// Kills the group when the task is dropped before its command ended, and
/// (by closing its end of the cancel socket) stops the thread reading.
struct KillOnDrop(Group, Option<std::os::unix::net::UnixStream>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal(&self.0, libc::SIGKILL);
        self.1.take();
    }
}

/// Runs `command` (stdin, stdout and stderr are set here) on the blocking
/// pool; `cmd` names it in messages.
pub(super) async fn run(
    mut command: std::process::Command,
    cmd: &str,
    stop: Option<Stop>,
) -> AppOutcome {
    piped(&mut command);
    let group: Group = Arc::new(Mutex::new(None));
    let (cancel, cancelled) = match std::os::unix::net::UnixStream::pair() {
        Ok((r, w)) => (Some(w), Some(r)),
        Err(_) => (None, None),
    };
    let kill = KillOnDrop(group.clone(), cancel);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let mut job = tokio::task::spawn_blocking(move || -> Result<Ended, std::io::Error> {
        let mut child = command.spawn()?;
        if let Ok(mut g) = group.lock() {
            *g = Some(child.id());
        }
        let _ = started_tx.send(());
        let (out, err) = read_both(child.stdout.take(), child.stderr.take(), cancelled);
        // Wait for the exit without reaping, then reap under the lock, so
        // that nobody signals the group once its id may be reused.
        wait_exited(child.id());
        let status = match group.lock() {
            Ok(mut g) => {
                *g = None;
                child.wait()
            }
            Err(_) => child.wait(),
        };
        Ok(Ended { out, err, status })
    });
    // Started (or failed to start: the sender is dropped then).
    let _ = started_rx.await;
    let (signal_rx, grace) = match stop {
        Some(s) => (Some(s.signal), s.grace),
        None => (None, STOP_GRACE),
    };
    let stopped = stop_fired(signal_rx);
    let joined = tokio::select! {
        r = &mut job => r,
        () = stopped => {
            signal(&kill.0, libc::SIGTERM);
            match tokio::time::timeout(grace, &mut job).await {
                Ok(r) => r,
                Err(_) => {
                    signal(&kill.0, libc::SIGKILL);
                    return failed(
                        -9,
                        format!("`{cmd}` did not exit within {grace:?} of SIGTERM: killed"),
                    );
                }
            }
        }
    };
    let ended = match joined {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return failed(127, format!("cannot start `{cmd}`: {e}")),
        Err(e) => return failed(1, format!("running `{cmd}` failed: {e}")),
    };
    super::outcome(cmd, Ok(ended.out), Ok(ended.err), ended.status, None, None)
}

/// Waits until process `pid` (our child) has exited, leaving it a zombie.
fn wait_exited(pid: libc::id_t) {
    loop {
        // SAFETY: waitid writes only into `info`, a local of the right
        // type; WNOWAIT leaves the child to be reaped by `Child::wait`.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Reads both pipes to their ends, keeping at most [`MAX_OUTPUT`] + 1
/// bytes of stdout and [`STDERR_KEPT`] + 1 of stderr (what is past them
/// is read and dropped, so that the child never blocks on a full pipe).
fn read_both(
    out: Option<std::process::ChildStdout>,
    err: Option<std::process::ChildStderr>,
    cancelled: Option<std::os::unix::net::UnixStream>,
) -> (Vec<u8>, Vec<u8>) {
    let mut pipes: [Kept; 2] = [
        (
            out.map(|p| Box::new(p) as Box<dyn ReadFd>),
            Vec::new(),
            MAX_OUTPUT + 1,
        ),
        (
            err.map(|p| Box::new(p) as Box<dyn ReadFd>),
            Vec::new(),
            STDERR_KEPT as usize + 1,
        ),
    ];
    let mut scratch = [0u8; 16 * 1024];
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2);
        let mut which = Vec::with_capacity(2);
        for (i, (p, _, _)) in pipes.iter().enumerate() {
            if let Some(p) = p {
                fds.push(libc::pollfd {
                    fd: p.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        if fds.is_empty() {
            break;
        }
        // The task was dropped when this becomes readable (end of file).
        if let Some(c) = &cancelled {
            fds.push(libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if cancelled.is_some() && fds.last().is_some_and(|f| f.revents != 0) {
            break;
        }
        for (fd, &i) in fds.iter().zip(&which) {
            if fd.revents == 0 {
                continue;
            }
            let (pipe, buf, limit) = &mut pipes[i];
            let Some(p) = pipe.as_mut() else { continue };
            match p.read(&mut scratch) {
                Ok(0) => *pipe = None,
                Ok(n) => {
                    let room = limit.saturating_sub(buf.len()).min(n);
                    buf.extend_from_slice(&scratch[..room]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => *pipe = None,
            }
        }
    }
    let [(_, out, _), (_, err, _)] = pipes;
    (out, err)
}

/// A pipe still open, what was kept of it, and how much may be kept.
type Kept = (Option<Box<dyn ReadFd>>, Vec<u8>, usize);

/// A pipe end to read, with its descriptor for `poll`.
trait ReadFd: Read {
    fn fd(&self) -> i32;
}

impl<T: Read + AsRawFd> ReadFd for T {
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
}
