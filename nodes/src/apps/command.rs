//! Command apps: how a configured command line is run for a task.
//!
//! * A line without shell syntax (see [`direct_words`]) is split on
//!   whitespace and executed directly: one process, no `sh` in between,
//!   which is most of a short task's cost. Anything the shell would read
//!   differently (quotes, variables, globs, redirections, several commands,
//!   a builtin or keyword first) runs under `sh -c LINE` as before.
//! * Each app may have environment variables and a working directory of its
//!   own ([`CommandSetup`]); the `ALLOT_*` variables are set after them.
//! * With an output directory, stdout and stderr are copied to files named
//!   after the task ([`output_paths`]) instead of coming back in the
//!   result; the result's output is then the stdout file's path. The worker
//!   copies them itself (rather than handing the files to the child), so a
//!   write that fails (a full disk) fails the task with the error, and the
//!   child, whose pipe is closed, stops.
//!
//! A command with no input and no output files is started (`clone`,
//! without waiting for its exec) and watched on the runtime's own thread
//! (`inline`), which costs the thread one wake-up per task; the others,
//! and every command where the kernel gives out no pidfds, are spawned on
//! the runtime's blocking pool (see [`run`]).
//!
//! Bounds: output kept for the result is at most [`super::MAX_OUTPUT`]
//! (more fails the task), stderr kept for its message at most
//! [`STDERR_KEPT`]; files in the output directory are bounded by the disk.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{AppOutcome, Stop, TaskInfo, MAX_OUTPUT, STOP_GRACE};

mod blocking;
mod clone;
mod inline;

/// Bytes of stderr kept for a failed task's message.
pub const STDERR_KEPT: u64 = 64 * 1024;

/// Characters that make a command line shell syntax: quoting, expansion,
/// globbing, redirection, command lists and grouping, comments, tilde and
/// brace expansion, assignments, job specs, history. The set errs on the
/// side of the shell: `=` sends `--opt=value` through `sh` too, which
/// changes nothing but the cost.
const SHELL_CHARS: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
    '=', '%', '{', '}', '!', '^', '\n', '\r',
];

/// First words that are shell builtins or keywords with no program of the
/// same behaviour (`cd`, `exit`, `read`, `if`...): a line starting with one
/// runs under `sh`. Builtins that are also programs doing the same (`true`,
/// `echo` without backslashes, `printf`, `kill`, `pwd`, `test`) run
/// directly.
const SHELL_WORDS: &[&str] = &[
    ".", ":", "alias", "bg", "break", "builtin", "case", "cd", "command", "continue", "declare",
    "do", "done", "elif", "else", "esac", "eval", "exec", "exit", "export", "fc", "fg", "fi",
    "for", "function", "getopts", "hash", "if", "in", "jobs", "let", "local", "read", "readonly",
    "return", "select", "set", "shift", "source", "suspend", "then", "time", "times", "trap",
    "type", "typeset", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// The words of `line` if it can be executed without a shell: no
/// character of the shell's syntax, and a first word that is not a
/// builtin or keyword. `None`: it needs `sh -c`.
pub fn direct_words(line: &str) -> Option<Vec<String>> {
    if line.contains(SHELL_CHARS) {
        return None;
    }
    let words: Vec<String> = line.split_ascii_whitespace().map(str::to_owned).collect();
    let first = words.first()?;
    if SHELL_WORDS.contains(&first.as_str()) {
        return None;
    }
    Some(words)
}

/// How command apps are set up beyond their command line (worker flags
/// `--app-env`, `--app-cwd`, `--output-dir`), applied by
/// [`super::AppTable::configure_commands`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CommandSetup {
    /// (app, variable, value): set in that app's environment.
    pub env: Vec<(String, String, String)>,
    /// (app, directory): that app runs there.
    pub cwd: Vec<(String, PathBuf)>,
    /// Every command app's stdout and stderr go to files here.
    pub output_dir: Option<PathBuf>,
}

/// One configured command app.
#[derive(Debug, Clone)]
pub struct CommandApp {
    line: String,
    /// Its words when run directly; `None`: under `sh -c`.
    words: Option<Vec<String>>,
    /// Variables added to the worker's environment.
    pub(super) env: Vec<(String, String)>,
    /// Where it runs (absolute); `None`: the worker's directory.
    pub(super) cwd: Option<PathBuf>,
    /// Where its stdout and stderr go; `None`: back in the result.
    pub(super) output_dir: Option<PathBuf>,
}

impl CommandApp {
    /// The app for command line `line` (not empty).
    pub fn new(line: &str) -> Result<CommandApp, String> {
        if line.trim().is_empty() {
            return Err("an --app-cmd needs a command".to_owned());
        }
        Ok(CommandApp {
            line: line.to_owned(),
            words: direct_words(line),
            env: Vec::new(),
            cwd: None,
            output_dir: None,
        })
    }

    /// Its command line as configured.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Whether it runs without a shell.
    pub fn is_direct(&self) -> bool {
        self.words.is_some()
    }

    fn command(&self) -> std::process::Command {
        match self.words.as_deref() {
            Some([program, args @ ..]) => {
                let mut c = std::process::Command::new(program);
                c.args(args);
                c
            }
            _ => {
                let mut c = std::process::Command::new("sh");
                c.arg("-c").arg(&self.line);
                c
            }
        }
    }
}

/// A path component made of `s`: characters other than letters, digits
/// and `._-+@` become `_`, and `.`, `..` or nothing become `_`, so that a
/// name never leaves the output directory.
fn component(s: &str) -> String {
    let c: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if c.is_empty() || c == "." || c == ".." {
        "_".to_owned()
    } else {
        c
    }
}

/// The stdout and stderr files of a task in `dir`: a job's task at
/// `DIR/JOB/INDEX.out` and `.err` (the job id's `/` make directories);
/// a task alone at `DIR/tasks/USER/KEY.out`, by its idempotency key, which
/// stays the same when it runs again (the last run's output wins), where
/// the distributor's task id would not.
pub fn output_paths(dir: &Path, info: &TaskInfo) -> (PathBuf, PathBuf) {
    let mut p = dir.to_path_buf();
    let name = match &info.job {
        Some(job) => {
            for part in job.split('/') {
                p.push(component(part));
            }
            info.index.to_string()
        }
        None => {
            p.push("tasks");
            p.push(component(info.user.as_deref().unwrap_or("")));
            info.key.to_string()
        }
    };
    (p.join(format!("{name}.out")), p.join(format!("{name}.err")))
}

/// Files a task's output is copied to.
struct Sinks {
    out: (PathBuf, tokio::fs::File),
    err: (PathBuf, tokio::fs::File),
}

async fn open_sinks(dir: &Path, info: &TaskInfo) -> Result<Sinks, String> {
    let (out, err) = output_paths(dir, info);
    if let Some(parent) = out.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let open = |p: PathBuf| async move {
        match tokio::fs::File::create(&p).await {
            Ok(f) => Ok((p, f)),
            Err(e) => Err(format!("cannot create {}: {e}", p.display())),
        }
    };
    Ok(Sinks {
        out: open(out).await?,
        err: open(err).await?,
    })
}

/// Copies `from` to the file to its end; the error names the file.
async fn copy_to(
    mut from: impl tokio::io::AsyncRead + Unpin,
    (path, mut file): (PathBuf, tokio::fs::File),
) -> Result<(), String> {
    let r = async {
        tokio::io::copy(&mut from, &mut file).await?;
        file.flush().await
    }
    .await;
    r.map_err(|e| format!("writing {} failed: {e}", path.display()))
}

/// Reads `from` to its end, keeping at most `limit + 1` bytes (one more
/// tells that it was longer); what is past them is read and dropped, so
/// that the child never blocks on a full pipe.
async fn read_bounded(mut from: impl tokio::io::AsyncRead + Unpin, limit: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = (&mut from).take(limit + 1).read_to_end(&mut buf).await;
    let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
    buf
}

fn failed(exit_code: i32, message: String) -> AppOutcome {
    AppOutcome::Failed {
        exit_code,
        output: Bytes::new(),
        message,
    }
}

/// Runs command app `app` for a task; the child is killed if this future
/// is dropped (deadline or cancel), so nothing outlives its task.
pub(super) async fn run(
    app: &CommandApp,
    input: Bytes,
    info: &TaskInfo,
    stop: Option<Stop>,
) -> AppOutcome {
    let cmd = app.line.as_str();
    let mut command = app.command();
    for (k, v) in &app.env {
        command.env(k, v);
    }
    if let Some(dir) = &app.cwd {
        command.current_dir(dir);
    }
    command
        .env("ALLOT_ATTEMPT", info.attempt.to_string())
        .env("ALLOT_TASK_KEY", info.key.to_string());
    if let Some(user) = &info.user {
        command.env("ALLOT_USER", &**user);
    }
    if let Some(job) = &info.job {
        command
            .env("ALLOT_JOB_ID", &**job)
            .env("ALLOT_TASK_INDEX", info.index.to_string())
            .env("ALLOT_TASK_ID", format!("{job}/{}", info.index));
    }
    if app.output_dir.is_none() && input.is_empty() {
        if inline::available() {
            return inline::run(command, cmd, stop).await;
        }
        return blocking::run(command, cmd, stop).await;
    }
    let mut command = tokio::process::Command::from(command);
    let sinks = match &app.output_dir {
        Some(dir) => match open_sinks(dir, info).await {
            Ok(s) => Some(s),
            Err(e) => return failed(1, format!("output of `{cmd}`: {e}")),
        },
        None => None,
    };
    // No input: no pipe to write (the command reads end of file at once).
    let stdin = if input.is_empty() {
        null_stdin()
    } else {
        Stdio::piped()
    };
    // Its own process group, so that a stop reaches what a shell started.
    command
        .process_group(0)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Spawning blocks the calling thread until the child has executed its
    // program (posix_spawn waits for the exec): on the runtime's thread
    // that would put every task's exec in one line. The blocking pool
    // spawns as many at once as tasks start (bounded by the worker's
    // slots). A child spawned after its task was dropped is killed with
    // the handle nobody takes.
    let mut child = match tokio::task::spawn_blocking(move || command.spawn()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return failed(127, format!("cannot start `{cmd}`: {e}")),
        Err(e) => return failed(1, format!("cannot start `{cmd}`: {e}")),
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let write = async move {
        if let Some(mut s) = stdin {
            // A command that does not read its input closes the pipe: fine.
            let _ = s.write_all(&input).await;
        }
    };
    let out_path = sinks.as_ref().map(|s| s.out.0.clone());
    let err_path = sinks.as_ref().map(|s| s.err.0.clone());
    let (out_sink, err_sink) = match sinks {
        Some(s) => (Some(s.out), Some(s.err)),
        None => (None, None),
    };
    // Each reader owns its pipe: when it ends (or fails) the pipe closes,
    // so a child writing on never blocks the wait below.
    let read_out = async move {
        match (stdout, out_sink) {
            (Some(s), Some(f)) => copy_to(s, f).await.map(|()| Vec::new()),
            (Some(s), None) => Ok(read_bounded(s, MAX_OUTPUT as u64).await),
            (None, _) => Ok(Vec::new()),
        }
    };
    let read_err = async move {
        match (stderr, err_sink) {
            (Some(s), Some(f)) => copy_to(s, f).await.map(|()| Vec::new()),
            (Some(s), None) => Ok(read_bounded(s, STDERR_KEPT).await),
            (None, _) => Ok(Vec::new()),
        }
    };
    let pid = child.id();
    let body = async {
        let ((), out, err) = tokio::join!(write, read_out, read_err);
        (out, err, child.wait().await)
    };
    tokio::pin!(body);
    let (signal, grace) = match stop {
        Some(s) => (Some(s.signal), s.grace),
        None => (None, STOP_GRACE),
    };
    let stopped = stop_fired(signal);
    let (out, err, status) = tokio::select! {
        r = &mut body => r,
        () = stopped => {
            signal_group(pid, libc::SIGTERM);
            match tokio::time::timeout(grace, &mut body).await {
                Ok(r) => r,
                Err(_) => {
                    signal_group(pid, libc::SIGKILL);
                    return failed(
                        -9,
                        format!("`{cmd}` did not exit within {grace:?} of SIGTERM: killed"),
                    );
                }
            }
        }
    };
    outcome(cmd, out, err, status, out_path, err_path)
}

/// The task's outcome from what the command wrote and how it ended;
/// `out` and `err` are the copy errors when they went to files (at
/// `out_path` and `err_path`).
fn outcome(
    cmd: &str,
    out: Result<Vec<u8>, String>,
    err: Result<Vec<u8>, String>,
    status: std::io::Result<std::process::ExitStatus>,
    out_path: Option<PathBuf>,
    err_path: Option<PathBuf>,
) -> AppOutcome {
    let status = match status {
        Ok(s) => s,
        Err(e) => return failed(1, format!("waiting for `{cmd}` failed: {e}")),
    };
    let code = status.code().unwrap_or(-1);
    let (out, err) = match (out, err) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return failed(
                if status.success() { 1 } else { code },
                format!("output of `{cmd}`: {e}"),
            )
        }
    };
    if out.len() > MAX_OUTPUT {
        return failed(
            status.code().unwrap_or(1),
            format!("output of `{cmd}` exceeds {MAX_OUTPUT} bytes"),
        );
    }
    // With an output directory the result carries where the output went.
    let output = match &out_path {
        Some(p) => Bytes::from(p.display().to_string()),
        None => Bytes::from(out),
    };
    if status.success() {
        return AppOutcome::Ok(output);
    }
    let stderr = String::from_utf8_lossy(&err).trim().to_owned();
    let message = match (&err_path, stderr.is_empty()) {
        (Some(p), _) => format!(
            "`{cmd}` exited with status {code} (stderr in {})",
            p.display()
        ),
        (None, true) => format!("`{cmd}` exited with status {code}"),
        (None, false) => format!("`{cmd}` exited with status {code}: {stderr}"),
    };
    AppOutcome::Failed {
        exit_code: code,
        output,
        message,
    }
}

/// `/dev/null` for a command's stdin: a duplicate of one descriptor kept
/// open (opened on first use), which costs a `dup` where
/// [`Stdio::null`] opens the file for every command.
fn null_stdin() -> Stdio {
    dev_null()
        .ok()
        .and_then(|f| f.try_clone().ok())
        .map_or_else(Stdio::null, Stdio::from)
}

/// `/dev/null`, opened once (and above descriptor 2), for every command's
/// stdin.
fn dev_null() -> std::io::Result<&'static OwnedFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd);
    }
    let f = above_stdio(OwnedFd::from(std::fs::File::open("/dev/null")?))?;
    Ok(NULL.get_or_init(|| f))
}

/// `fd`, moved above 2 if it is one of the standard descriptors (a worker
/// started with them closed), so that a child's `dup2` onto 0-2 never
/// lands on another of its descriptors.
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl(2) duplicating a descriptor we own.
    let d = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if d < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just made by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// Runs `f` with commands started from this thread taking the blocking
/// pool's path, as where the kernel gives out no pidfds.
#[cfg(test)]
pub(crate) fn without_pidfds<R>(f: impl FnOnce() -> R) -> R {
    inline::NO_PIDFD.with(|n| n.set(true));
    let r = f();
    inline::NO_PIDFD.with(|n| n.set(false));
    r
}

/// Runs `f` with commands started from this thread spawned on the
/// blocking pool, as where the kernel makes no `clone3` children.
#[cfg(test)]
pub(crate) fn without_clone<R>(f: impl FnOnce() -> R) -> R {
    clone::NO_CLONE.with(|n| n.set(true));
    let r = f();
    clone::NO_CLONE.with(|n| n.set(false));
    r
}

/// Resolves when `signal` fires; never when there is none, or its sender
/// was dropped without firing (no stop).
async fn stop_fired(signal: Option<tokio::sync::oneshot::Receiver<()>>) {
    let fired = match signal {
        Some(rx) => rx.await.is_ok(),
        None => false,
    };
    if !fired {
        std::future::pending::<()>().await;
    }
}

/// Sets `command` up for the paths without input: its own process group
/// (a stop reaches what a shell started), `/dev/null` in, pipes out.
fn piped(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    command
        .process_group(0)
        .stdin(null_stdin())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

/// Sends `sig` to the process group led by `pid` (the command).
fn signal_group(pid: Option<u32>, sig: libc::c_int) {
    let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a
    // group that has exited already makes it fail with ESRCH, which is
    // harmless here.
    unsafe {
        libc::kill(-pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::apps::{run, App, AppTable};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn table(line: &str, setup: &CommandSetup) -> Result<App, String> {
        let mut t = AppTable::from_config(&[], &[("c".into(), line.into())])?;
        t.configure_commands(setup)?;
        Ok(t.get("c").cloned().expect("the app"))
    }

    fn env(pairs: &[(&str, &str)]) -> CommandSetup {
        CommandSetup {
            env: pairs
                .iter()
                .map(|(k, v)| ("c".to_owned(), k.to_string(), v.to_string()))
                .collect(),
            ..CommandSetup::default()
        }
    }

    fn out(app: &App, info: TaskInfo) -> AppOutcome {
        rt().block_on(run(app, Bytes::new(), None, info))
    }

    #[test]
    fn only_lines_without_shell_syntax_run_directly() {
        assert_eq!(
            direct_words("  /bin/true  -a\tb "),
            Some(vec!["/bin/true".into(), "-a".into(), "b".into()])
        );
        assert_eq!(
            direct_words("render --fast in.png"),
            Some(vec!["render".into(), "--fast".into(), "in.png".into()])
        );
        for shell in [
            "echo $HOME",
            "a | b",
            "a && b",
            "a; b",
            "a > f",
            "a < f",
            "(a)",
            "echo `date`",
            "echo 'x'",
            "echo \"x\"",
            "ls *.c",
            "ls ?",
            "ls [ab]",
            "a # comment",
            "ls ~",
            "X=1 a",
            "a --opt=v",
            "kill %1",
            "echo {a,b}",
            "! a",
            "a\\ b",
            "a\nb",
            "cd /tmp",
            "exit 3",
            "read x",
            "if",
            "trap x TERM",
            ". ./env",
            "",
            "   ",
        ] {
            assert_eq!(direct_words(shell), None, "{shell:?} needs a shell");
        }
    }

    /// A direct command gets its words as arguments and needs no `sh`
    /// (it runs with a PATH where there is none); a line with shell syntax
    /// runs under `sh`, so its variables expand, and it cannot start
    /// without one.
    #[test]
    fn direct_commands_need_no_shell_and_shell_lines_still_expand() {
        let no_sh = env(&[("PATH", "/nonexistent")]);
        let direct = table("/bin/echo a   b", &no_sh).unwrap();
        let App::Command(c) = &direct else {
            panic!("a command")
        };
        assert!(c.is_direct());
        assert_eq!(
            out(&direct, TaskInfo::new(1, 7)),
            AppOutcome::Ok(Bytes::from_static(b"a b\n"))
        );
        let shell = table(
            "echo $GREETING $ALLOT_TASK_KEY",
            &env(&[("GREETING", "hi")]),
        )
        .unwrap();
        assert_eq!(
            out(&shell, TaskInfo::new(1, 7)),
            AppOutcome::Ok(Bytes::from_static(b"hi 7\n"))
        );
        let shell_no_sh = table("echo $GREETING", &no_sh).unwrap();
        match out(&shell_no_sh, TaskInfo::new(1, 7)) {
            AppOutcome::Failed {
                exit_code, message, ..
            } => {
                assert_eq!(exit_code, 127);
                assert!(message.contains("cannot start"), "{message}");
            }
            o => panic!("{o:?}"),
        }
        // No input: a command reading stdin gets end of file at once.
        let cat = table("cat", &CommandSetup::default()).unwrap();
        assert_eq!(out(&cat, TaskInfo::new(1, 7)), AppOutcome::Ok(Bytes::new()));
        // The app's variables and the task's reach a direct command too.
        let printenv = table(
            "printenv GREETING ALLOT_ATTEMPT",
            &env(&[("GREETING", "hey")]),
        )
        .unwrap();
        assert_eq!(
            out(&printenv, TaskInfo::new(2, 7)),
            AppOutcome::Ok(Bytes::from_static(b"hey\n2\n"))
        );
    }

    #[test]
    fn an_app_runs_in_its_directory_and_a_missing_one_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let setup = CommandSetup {
            cwd: vec![("c".into(), dir.path().to_path_buf())],
            ..CommandSetup::default()
        };
        let pwd = table("pwd", &setup).unwrap();
        let want = format!("{}\n", dir.path().canonicalize().unwrap().display());
        match out(&pwd, TaskInfo::new(1, 7)) {
            AppOutcome::Ok(o) => assert_eq!(String::from_utf8_lossy(&o), want),
            o => panic!("{o:?}"),
        }
        let missing = CommandSetup {
            cwd: vec![("c".into(), dir.path().join("gone"))],
            ..CommandSetup::default()
        };
        let e = table("pwd", &missing).unwrap_err();
        assert!(e.contains("--app-cwd c=") && e.contains("gone"), "{e}");
        assert!(e.contains("No such file"), "{e}");
        let not_command = CommandSetup {
            env: vec![("echo".into(), "K".into(), "v".into())],
            ..CommandSetup::default()
        };
        let mut t = AppTable::from_config(&["echo".into()], &[]).unwrap();
        let e = t.configure_commands(&not_command).unwrap_err();
        assert!(e.contains("`echo`, which is not a command app"), "{e}");
        let bad_key = env(&[("A=B", "v")]);
        assert!(table("true", &bad_key)
            .unwrap_err()
            .contains("not a variable name"));
    }

    #[test]
    fn output_goes_to_files_named_by_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let setup = CommandSetup {
            output_dir: Some(dir.path().join("out")),
            ..CommandSetup::default()
        };
        let speak = table("echo said; echo warned >&2", &setup).unwrap();
        let job = TaskInfo::new(1, 7).in_job(Arc::from("main/d1/7"), 5);
        let o = dir.path().join("out/main/d1/7/5.out");
        assert_eq!(
            out(&speak, job),
            AppOutcome::Ok(Bytes::from(o.display().to_string())),
            "the result says where the output went"
        );
        assert_eq!(std::fs::read_to_string(&o).unwrap(), "said\n");
        let e = dir.path().join("out/main/d1/7/5.err");
        assert_eq!(std::fs::read_to_string(&e).unwrap(), "warned\n");
        let fail = table("echo bad >&2; exit 4", &setup).unwrap();
        let alone = TaskInfo::new(1, 9).placed(3, Arc::from("ann/../x"));
        match out(&fail, alone) {
            AppOutcome::Failed {
                exit_code, message, ..
            } => {
                assert_eq!(exit_code, 4);
                let err = dir.path().join("out/tasks/ann_.._x/9.err");
                assert!(message.contains(&err.display().to_string()), "{message}");
                assert_eq!(std::fs::read_to_string(&err).unwrap(), "bad\n");
            }
            o => panic!("{o:?}"),
        }
    }

    /// Runs `f` on every path a command without input or output files can
    /// take: started and watched on the runtime's thread, spawned on the
    /// blocking pool and watched on the runtime's thread, and wholly on the
    /// blocking pool.
    fn on_every_path(f: impl Fn()) {
        f();
        without_clone(&f);
        without_pidfds(f);
    }

    /// Output past what a pipe holds (64 KiB) comes back whole, from a
    /// command that ends within the first look and one that runs longer.
    #[test]
    fn output_past_a_pipe_comes_back_whole() {
        on_every_path(|| {
            for line in [
                "head -c 300000 /dev/zero",
                "sh -c 'sleep 0.05; head -c 300000 /dev/zero'",
            ] {
                let app = table(line, &CommandSetup::default()).unwrap();
                match out(&app, TaskInfo::new(1, 1)) {
                    AppOutcome::Ok(o) => {
                        assert_eq!(o.len(), 300_000, "{line}");
                        assert!(o.iter().all(|b| *b == 0), "{line}");
                    }
                    o => panic!("{line}: {o:?}"),
                }
            }
            // A long stderr is read to its end too (and cut for the
            // message), so the command never blocks on it.
            let noisy = table(
                "sh -c 'head -c 300000 /dev/zero >&2; exit 4'",
                &CommandSetup::default(),
            )
            .unwrap();
            match out(&noisy, TaskInfo::new(1, 1)) {
                AppOutcome::Failed {
                    exit_code, message, ..
                } => {
                    assert_eq!(exit_code, 4);
                    assert!(
                        message.len() <= STDERR_KEPT as usize + 200,
                        "{}",
                        message.len()
                    );
                }
                o => panic!("{o:?}"),
            }
        });
    }

    /// More stdout than a result may carry fails the task saying so, and
    /// a command that closes its output and runs on is waited for: its
    /// exit status is the result.
    #[test]
    fn too_much_output_fails_and_closed_output_still_waits_for_the_exit() {
        on_every_path(|| {
            let line = format!("head -c {} /dev/zero", MAX_OUTPUT + 10);
            let big = table(&line, &CommandSetup::default()).unwrap();
            match out(&big, TaskInfo::new(1, 1)) {
                AppOutcome::Failed { message, .. } => {
                    assert!(message.contains("exceeds"), "{message}")
                }
                o => panic!("{o:?}"),
            }
            let quiet = table(
                "exec >/dev/null 2>&1; sleep 0.3; exit 3",
                &CommandSetup::default(),
            )
            .unwrap();
            let t0 = std::time::Instant::now();
            match out(&quiet, TaskInfo::new(1, 1)) {
                AppOutcome::Failed { exit_code, .. } => assert_eq!(exit_code, 3),
                o => panic!("{o:?}"),
            }
            assert!(t0.elapsed() >= std::time::Duration::from_millis(300));
        });
    }

    /// What a process the command started writes after the command has
    /// exited is part of the output: the task ends when the output does.
    #[test]
    fn output_written_after_the_command_exits_is_kept() {
        on_every_path(|| {
            let app = table(
                "(sleep 0.2; echo late) & echo early",
                &CommandSetup::default(),
            )
            .unwrap();
            assert_eq!(
                out(&app, TaskInfo::new(1, 1)),
                AppOutcome::Ok(Bytes::from_static(b"early\nlate\n"))
            );
        });
    }

    /// Quick and slower commands, direct and under `sh`, report their
    /// output, their exit status and their stderr on either path.
    #[test]
    fn exit_status_and_stderr_on_either_path() {
        on_every_path(|| {
            let quick = table("/bin/echo quick", &CommandSetup::default()).unwrap();
            assert_eq!(
                out(&quick, TaskInfo::new(1, 1)),
                AppOutcome::Ok(Bytes::from_static(b"quick\n"))
            );
            let slow = table(
                "sleep 0.05; echo out; echo why >&2; exit 5",
                &CommandSetup::default(),
            )
            .unwrap();
            match out(&slow, TaskInfo::new(1, 1)) {
                AppOutcome::Failed {
                    exit_code,
                    output,
                    message,
                } => {
                    assert_eq!(exit_code, 5);
                    assert_eq!(&output[..], b"out\n");
                    assert!(message.contains("status 5: why"), "{message}");
                }
                o => panic!("{o:?}"),
            }
            let missing = table("/nonexistent/program", &CommandSetup::default()).unwrap();
            match out(&missing, TaskInfo::new(1, 1)) {
                AppOutcome::Failed {
                    exit_code, message, ..
                } => {
                    assert_eq!(exit_code, 127);
                    assert!(message.contains("cannot start"), "{message}");
                }
                o => panic!("{o:?}"),
            }
        });
    }

    /// What a command sees is the same however it was started: a program
    /// found on `PATH`, the task's variables, the app's directory, stdin at
    /// end of file, a process group of its own and SIGPIPE at its default
    /// (so `yes` ends quietly when `head` has read enough); a program that
    /// is missing or may not be executed fails with the reason.
    #[test]
    fn a_command_sees_the_same_on_every_path() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().canonicalize().unwrap();
        let setup = CommandSetup {
            cwd: vec![("c".into(), here.clone())],
            env: vec![("c".into(), "GREETING".into(), "hello".into())],
            ..CommandSetup::default()
        };
        let script = here.join("not-executable");
        std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
        on_every_path(|| {
            let line = "echo $GREETING $ALLOT_TASK_KEY; pwd; cat; \
                        test \"$(ps -o pgid= -p $$ | tr -d ' ')\" = $$ && echo leader; \
                        yes | head -n 1";
            let app = table(line, &setup).unwrap();
            let want = format!("hello 7\n{}\nleader\ny\n", here.display());
            match out(&app, TaskInfo::new(1, 7)) {
                AppOutcome::Ok(o) => assert_eq!(String::from_utf8_lossy(&o), want),
                o => panic!("{o:?}"),
            }
            // A bare name, found on PATH, run without a shell.
            let env = table("env", &setup).unwrap();
            match out(&env, TaskInfo::new(1, 8)) {
                AppOutcome::Ok(o) => {
                    let o = String::from_utf8_lossy(&o);
                    assert!(o.lines().any(|l| l == "GREETING=hello"), "{o}");
                    assert!(o.lines().any(|l| l == "ALLOT_TASK_KEY=8"), "{o}");
                    assert!(o.lines().any(|l| l.starts_with("PATH=")), "{o}");
                }
                o => panic!("{o:?}"),
            }
            for (line, why) in [
                ("no-such-program-for-allot", "No such file"),
                (script.to_str().unwrap(), "Permission denied"),
            ] {
                let app = table(line, &CommandSetup::default()).unwrap();
                match out(&app, TaskInfo::new(1, 9)) {
                    AppOutcome::Failed {
                        exit_code, message, ..
                    } => {
                        assert_eq!(exit_code, 127, "{line}: {message}");
                        assert!(message.contains("cannot start"), "{line}: {message}");
                        assert!(message.contains(why), "{line}: {message}");
                    }
                    o => panic!("{line}: {o:?}"),
                }
            }
        });
    }

    /// A task dropped at its deadline kills its command's process group
    /// (the shell and what it started), and the child is reaped.
    #[test]
    fn a_command_past_its_deadline_is_killed_and_reaped() {
        on_every_path(a_command_past_its_deadline_is_killed_and_reaped_once);
    }

    fn a_command_past_its_deadline_is_killed_and_reaped_once() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let line = format!("echo $$ > {}; sleep 30", pidfile.display());
        let app = table(&line, &CommandSetup::default()).unwrap();
        let rt = rt();
        let got = rt.block_on(run(
            &app,
            Bytes::new(),
            Some(std::time::Duration::from_millis(300)),
            TaskInfo::new(1, 7),
        ));
        assert_eq!(got, AppOutcome::Timeout);
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let t0 = std::time::Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "the command outlived its task"
            );
            rt.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(20)).await });
        }
    }

    /// A dropped task frees its pool thread at once even when a process
    /// that left the command's group still holds its output open.
    #[test]
    fn a_dropped_task_does_not_wait_for_an_escaped_process() {
        on_every_path(a_dropped_task_does_not_wait_for_an_escaped_process_once);
    }

    fn a_dropped_task_does_not_wait_for_an_escaped_process_once() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("escaped");
        let line = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 30' & sleep 30",
            pidfile.display()
        );
        let app = table(&line, &CommandSetup::default()).unwrap();
        let rt = rt();
        let got = rt.block_on(run(
            &app,
            Bytes::new(),
            Some(std::time::Duration::from_millis(500)),
            TaskInfo::new(1, 7),
        ));
        assert_eq!(got, AppOutcome::Timeout);
        let t0 = std::time::Instant::now();
        // Dropping the runtime waits for its blocking threads.
        drop(rt);
        let waited = t0.elapsed();
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) with plain integers; the escaped sleep.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        assert!(
            waited < std::time::Duration::from_secs(5),
            "the pool thread waited {waited:?} for the escaped process"
        );
    }

    /// A full disk fails the task with the write error (here the stdout
    /// file is `/dev/full`), and the command, whose pipe closes, ends.
    #[test]
    fn a_full_disk_fails_the_task_with_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let setup = CommandSetup {
            output_dir: Some(dir.path().to_path_buf()),
            ..CommandSetup::default()
        };
        let info = TaskInfo::new(1, 11);
        let (o, _) = output_paths(dir.path(), &info);
        std::fs::create_dir_all(o.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/dev/full", &o).unwrap();
        let yes = table("yes", &setup).unwrap();
        match out(&yes, info) {
            AppOutcome::Failed { message, .. } => {
                assert!(message.contains("No space left on device"), "{message}");
                assert!(message.contains("11.out"), "{message}");
            }
            o => panic!("{o:?}"),
        }
    }
}
