//! The bench's child processes and what `/proc` says about them: CPU time
//! per process, resident memory, and that children die with the bench.

use std::process::Command;
use std::time::Duration;

/// Makes a child process get SIGTERM when the bench dies, however it dies
/// (a release build aborts on panic, so `Drop` of the cluster does not
/// run): no orphaned nodes are left behind. The children are spawned from
/// the main thread, whose exit is what the kernel watches.
pub(super) fn die_with_parent(cmd: &mut Command) -> &mut Command {
    die_with(cmd, std::process::id())
}

/// [`die_with_parent`], for a child whose parent should be `parent`: the
/// child ends itself at once if its parent is already another process.
fn die_with(cmd: &mut Command, parent: u32) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the child between fork and exec, and calls only
        // async-signal-safe functions (signal, prctl, getppid, kill) with
        // no allocation or locking. Exercised by every `--processes` bench,
        // including the cluster tests.
        unsafe {
            cmd.pre_exec(move || {
                // Until exec the child keeps the bench's handlers, and the
                // bench catches SIGTERM and SIGINT (`crate::interrupt`): a
                // SIGTERM arriving now (the bench died during the spawn)
                // would only set a flag in this copy of the bench, and the
                // node would then run on with no parent. The default
                // action, which exec would restore anyway, makes it fatal.
                for sig in [libc::SIGTERM, libc::SIGINT] {
                    if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
    cmd
}

/// Microseconds of CPU per completed task, summed per role, in the order
/// roles were listed (a role whose process could not be read is left out).
pub(super) fn cpu_by_role(
    roles: &[(&'static str, u32)],
    cpu_us: &[f64],
    seen: &[bool],
    tasks: u64,
) -> Vec<(&'static str, f64)> {
    let mut out: Vec<(&'static str, f64)> = Vec::new();
    if tasks == 0 {
        return out;
    }
    for (((role, _), us), ok) in roles.iter().zip(cpu_us).zip(seen) {
        if !ok {
            continue;
        }
        let per_task = us / tasks as f64;
        match out.iter_mut().find(|(r, _)| r == role) {
            Some((_, t)) => *t += per_task,
            None => out.push((role, per_task)),
        }
    }
    out
}

/// CPU time (user + system) a process has used, from /proc.
pub(super) fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Clock ticks per second of `/proc/PID/stat`, asked of `getconf` once
/// (it is read for every process before and after every round).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Resident memory of a process, from `/proc/PID/status`.
pub(super) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::time::Instant;

    /// A child that finds its parent gone before exec ends itself, even
    /// with the bench's SIGTERM handler (which it inherits from the fork)
    /// in place: it must not go on to run the node.
    #[test]
    fn a_child_whose_parent_is_gone_dies_despite_the_benchs_handlers() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        // SAFETY: runs in the child between fork and exec; `catch` only
        // calls sigaction, which is async-signal-safe.
        unsafe {
            // In the child only: the handlers a bench has when it spawns.
            cmd.pre_exec(crate::interrupt::catch);
        }
        // No process has this id: the child sees its parent as gone.
        let mut child = die_with(&mut cmd, u32::MAX).spawn().expect("spawn sleep");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child ran on without its parent");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    }
}
