//! What a worker runs: the built-in apps, configured commands, and async
//! handlers registered by an embedding program.
//!
//! Commands (see [`command`]) run directly when they have no shell syntax,
//! else under `sh -c`; each app may have its own environment and working
//! directory, and its stdout and stderr may go to files.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub mod command;

pub use command::{CommandApp, CommandSetup};

/// The largest output a task may return: what fits in one frame.
pub const MAX_OUTPUT: usize = allot_wire::DEFAULT_MAX_FRAME - 64 * 1024;

/// How an app run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppOutcome {
    /// Succeeded with this output.
    Ok(Bytes),
    /// Failed: exit code, output so far, reason.
    Failed {
        /// Exit status of a command, 1 for handlers.
        exit_code: i32,
        /// stdout so far.
        output: Bytes,
        /// What went wrong (stderr for commands).
        message: String,
    },
    /// Ran past its deadline and was stopped.
    Timeout,
}

/// An async handler registered by an embedding program. The handler is
/// shared across threads (a node may be started on a thread of its own),
/// its futures are not: they run on the worker's current-thread runtime.
pub type Handler =
    Arc<dyn Fn(Bytes) -> Pin<Box<dyn Future<Output = Result<Bytes, String>>>> + Send + Sync>;

/// Wraps an async function as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, String>> + 'static,
{
    Arc::new(move |input| Box::pin(f(input)))
}

/// How one app is run.
#[derive(Clone)]
pub enum App {
    /// Returns its input.
    Echo,
    /// Sleeps for the input's number of milliseconds.
    Sleep,
    /// Returns the hex SHA-256 of its input.
    Sha256,
    /// Runs a command with the input on stdin; stdout is the output.
    Command(Arc<CommandApp>),
    /// An embedding program's handler.
    Handler(Handler),
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            App::Echo => f.write_str("echo"),
            App::Sleep => f.write_str("sleep"),
            App::Sha256 => f.write_str("sha256"),
            App::Command(c) => write!(f, "command {:?}", c.line()),
            App::Handler(_) => f.write_str("handler"),
        }
    }
}

/// The built-in app of this name, if any.
pub fn builtin(name: &str) -> Option<App> {
    Some(match name {
        "echo" => App::Echo,
        "sleep" => App::Sleep,
        "sha256" => App::Sha256,
        _ => return None,
    })
}

/// The apps a worker runs, by name.
#[derive(Clone, Default, Debug)]
pub struct AppTable {
    /// Looked up once per task: Fx hashing, the names are the worker's own.
    /// Each app has a number (its order of insertion), which indexes the
    /// worker's per-app counters without a second lookup.
    apps: HashMap<String, (usize, App), rustc_hash::FxBuildHasher>,
}

impl AppTable {
    /// Adds (or replaces) an app.
    pub fn insert(&mut self, name: &str, app: App) {
        let n = self.apps.len();
        match self.apps.get_mut(name) {
            Some(e) => e.1 = app,
            None => {
                self.apps.insert(name.to_owned(), (n, app));
            }
        }
    }

    /// The app of this name.
    pub fn get(&self, name: &str) -> Option<&App> {
        self.apps.get(name).map(|(_, a)| a)
    }

    /// The app of this name and its number (below [`AppTable::len`]).
    pub fn get_indexed(&self, name: &str) -> Option<(usize, &App)> {
        self.apps.get(name).map(|(i, a)| (*i, a))
    }

    /// Apps in the table.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The names by number: entry `i` is app number `i`.
    pub fn names_by_index(&self) -> Vec<String> {
        let mut v = vec![String::new(); self.apps.len()];
        for (name, (i, _)) in &self.apps {
            if let Some(slot) = v.get_mut(*i) {
                slot.clone_from(name);
            }
        }
        v
    }

    /// Sets the command apps' environment, working directories and output
    /// directory (see [`CommandSetup`]), checking them: each names a
    /// command app, the directories exist (the output directory is
    /// created). Relative directories are made absolute here, so that the
    /// worker's own directory does not matter later.
    pub fn configure_commands(&mut self, setup: &CommandSetup) -> Result<(), String> {
        for (app, key, _) in &setup.env {
            self.command_mut(app, "--app-env")?;
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(format!(
                    "--app-env {app}:{key}=...: `{key}` is not a variable name"
                ));
            }
        }
        for (app, _) in &setup.cwd {
            self.command_mut(app, "--app-cwd")?;
        }
        let output_dir = match &setup.output_dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("--output-dir {}: {e}", d.display()))?;
                Some(absolute(d, "--output-dir")?)
            }
            None => None,
        };
        let mut cwds = Vec::with_capacity(setup.cwd.len());
        for (app, dir) in &setup.cwd {
            let flag = format!("--app-cwd {app}={}", dir.display());
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("{flag}: not a directory")),
                Err(e) => return Err(format!("{flag}: {e}")),
            }
            cwds.push((app, absolute(dir, &flag)?));
        }
        for (_, (_, app)) in self.apps.iter_mut() {
            if let App::Command(c) = app {
                Arc::make_mut(c).output_dir.clone_from(&output_dir);
            }
        }
        for (app, key, value) in &setup.env {
            let c = self.command_mut(app, "--app-env")?;
            c.env.retain(|(k, _)| k != key);
            c.env.push((key.clone(), value.clone()));
        }
        for (app, dir) in cwds {
            self.command_mut(app, "--app-cwd")?.cwd = Some(dir);
        }
        Ok(())
    }

    fn command_mut(&mut self, name: &str, flag: &str) -> Result<&mut CommandApp, String> {
        match self.apps.get_mut(name) {
            Some((_, App::Command(c))) => Ok(Arc::make_mut(c)),
            _ => Err(format!(
                "{flag} names `{name}`, which is not a command app (--app-cmd {name}=COMMAND)"
            )),
        }
    }

    /// The app names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.apps.keys().cloned().collect();
        v.sort();
        v
    }

    /// Builds the table from `--apps` names and `--app-cmd NAME=COMMAND`
    /// entries: a name must be a built-in or have a command.
    pub fn from_config(names: &[String], cmds: &[(String, String)]) -> Result<AppTable, String> {
        let mut t = AppTable::default();
        for (n, c) in cmds {
            t.insert(n, App::Command(Arc::new(CommandApp::new(c)?)));
        }
        for n in names {
            if t.get(n).is_some() {
                continue;
            }
            match builtin(n) {
                Some(a) => t.insert(n, a),
                None => {
                    return Err(format!(
                        "app `{n}` is not built in (echo, sleep, sha256) and has no --app-cmd {n}=COMMAND"
                    ))
                }
            }
        }
        Ok(t)
    }
}

/// `dir` made absolute against the worker's directory.
fn absolute(dir: &std::path::Path, flag: &str) -> Result<std::path::PathBuf, String> {
    std::path::absolute(dir).map_err(|e| format!("{flag}: {e}"))
}

/// Whether the app finishes without waiting (run inline, no task spawned).
pub fn is_instant(app: &App) -> bool {
    matches!(app, App::Echo | App::Sha256)
}

/// Runs an instant app.
pub fn run_instant(app: &App, input: &Bytes) -> Option<AppOutcome> {
    match app {
        App::Echo => Some(AppOutcome::Ok(input.clone())),
        App::Sha256 => {
            let d = Sha256::digest(input);
            let mut hex = String::with_capacity(64);
            for b in d {
                use std::fmt::Write;
                let _ = write!(hex, "{b:02x}");
            }
            Some(AppOutcome::Ok(Bytes::from(hex)))
        }
        _ => None,
    }
}

/// Runs any app, with an optional deadline.
pub async fn run(
    app: &App,
    input: Bytes,
    deadline: Option<Duration>,
    info: TaskInfo,
) -> AppOutcome {
    run_until(app, input, deadline, info, None).await
}

/// How long a cancelled command has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A request to stop a running command gracefully: when it fires, the
/// command's process group gets SIGTERM, and SIGKILL `grace` later if it
/// has not exited.
pub struct Stop {
    /// Fires the stop.
    pub signal: tokio::sync::oneshot::Receiver<()>,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// As [`run`]; a command app is stopped gracefully when `stop` fires (see
/// [`Stop`]). Other apps ignore it (drop their future to stop them).
pub async fn run_until(
    app: &App,
    input: Bytes,
    deadline: Option<Duration>,
    info: TaskInfo,
    stop: Option<Stop>,
) -> AppOutcome {
    let fut = CURRENT.scope(info.clone(), run_inner(app, input, info, stop));
    match deadline {
        Some(d) => tokio::time::timeout(d, fut)
            .await
            .unwrap_or(AppOutcome::Timeout),
        None => fut.await,
    }
}

/// What a running task may want to know about itself: command apps get it
/// as environment variables (`ALLOT_ATTEMPT`, `ALLOT_TASK_KEY`,
/// `ALLOT_USER`, and for a job's task `ALLOT_JOB_ID`, `ALLOT_TASK_INDEX`
/// and `ALLOT_TASK_ID`, which is `JOB/INDEX`), handlers from
/// [`current_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// 1 for the first run; more when the task runs again because the
    /// worker that ran it was lost (execution is at least once then: an app
    /// with side effects can tell a repeat by this).
    pub attempt: u32,
    /// The client's idempotency key for the task: the same across
    /// resubmissions and attempts.
    pub key: u64,
    /// The job the task belongs to (`None` for a task submitted alone).
    pub job: Option<Arc<str>>,
    /// Its index in the job (0 outside a job).
    pub index: u64,
    /// The distributor's id for the task (unique at that distributor; a
    /// task placed again after a lost worker keeps it).
    pub task: u64,
    /// The user it runs as (`None` when not known: info made outside a
    /// worker).
    pub user: Option<Arc<str>>,
    /// When the worker stops it for running past its deadline (`None`: no
    /// deadline).
    pub deadline: Option<std::time::Instant>,
}

impl TaskInfo {
    /// Info for attempt `attempt` of the task with idempotency key `key`.
    pub fn new(attempt: u32, key: u64) -> TaskInfo {
        TaskInfo {
            attempt,
            key,
            job: None,
            index: 0,
            task: 0,
            user: None,
            deadline: None,
        }
    }

    /// The same, as the distributor's task `task`, run for `user`.
    pub fn placed(mut self, task: u64, user: Arc<str>) -> TaskInfo {
        self.task = task;
        self.user = Some(user);
        self
    }

    /// The same, stopped at `deadline`.
    pub fn until(mut self, deadline: std::time::Instant) -> TaskInfo {
        self.deadline = Some(deadline);
        self
    }

    /// The same, for task `index` of job `job`.
    pub fn in_job(mut self, job: Arc<str>, index: u64) -> TaskInfo {
        self.job = Some(job);
        self.index = index;
        self
    }
}

tokio::task_local! {
    static CURRENT: TaskInfo;
}

/// The task a handler runs for, when called from inside one (`None`
/// elsewhere).
pub fn current_task() -> Option<TaskInfo> {
    CURRENT.try_with(|i| i.clone()).ok()
}

async fn run_inner(app: &App, input: Bytes, info: TaskInfo, stop: Option<Stop>) -> AppOutcome {
    if let Some(o) = run_instant(app, &input) {
        return o;
    }
    match app {
        App::Sleep => {
            let text = String::from_utf8_lossy(&input);
            match text.trim().parse::<u64>() {
                Ok(ms) if ms <= 24 * 3600 * 1000 => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    AppOutcome::Ok(Bytes::from(format!("slept {ms} ms")))
                }
                _ => AppOutcome::Failed {
                    exit_code: 2,
                    output: Bytes::new(),
                    message: format!(
                        "sleep wants a number of milliseconds (at most a day), got {:?}",
                        text.trim()
                    ),
                },
            }
        }
        App::Command(cmd) => command::run(cmd, input, &info, stop).await,
        App::Handler(h) => match h(input).await {
            Ok(out) => AppOutcome::Ok(out),
            Err(message) => AppOutcome::Failed {
                exit_code: 1,
                output: Bytes::new(),
                message,
            },
        },
        App::Echo | App::Sha256 => unreachable_instant(),
    }
}

fn unreachable_instant() -> AppOutcome {
    AppOutcome::Failed {
        exit_code: 1,
        output: Bytes::new(),
        message: "internal: instant app not run inline".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stopped command gets SIGTERM (its trap runs and its output is
    /// kept); one that ignores SIGTERM is killed after the grace period.
    #[test]
    fn a_stopped_command_gets_sigterm_then_sigkill() {
        let rt = rt();
        let polite = cmd("trap 'echo term; exit 3' TERM; sleep 30 & wait");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let t0 = std::time::Instant::now();
        let out = rt.block_on(async {
            let run = run_until(
                &polite,
                Bytes::new(),
                None,
                info(),
                Some(Stop {
                    signal: rx,
                    grace: Duration::from_secs(10),
                }),
            );
            let stop = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = tx.send(());
                std::future::pending::<()>().await
            };
            tokio::select! { o = run => o, () = stop => unreachable!() }
        });
        match out {
            AppOutcome::Failed {
                exit_code, output, ..
            } => {
                assert_eq!(exit_code, 3);
                assert_eq!(&output[..], b"term\n");
            }
            o => panic!("expected the trap's exit, got {o:?}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "it exited on SIGTERM"
        );
        let stubborn = cmd("trap '' TERM; sleep 30");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let out = rt.block_on(async {
            let run = run_until(
                &stubborn,
                Bytes::new(),
                None,
                info(),
                Some(Stop {
                    signal: rx,
                    grace: Duration::from_millis(300),
                }),
            );
            // Once the shell has set its trap.
            let stop = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = tx.send(());
                std::future::pending::<()>().await
            };
            tokio::select! { o = run => o, () = stop => unreachable!() }
        });
        match out {
            AppOutcome::Failed { message, .. } => assert!(message.contains("killed"), "{message}"),
            o => panic!("expected a kill, got {o:?}"),
        }
    }

    fn info() -> TaskInfo {
        TaskInfo::new(1, 7)
    }

    fn cmd(line: &str) -> App {
        App::Command(Arc::new(CommandApp::new(line).unwrap()))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn builtins() {
        assert_eq!(
            run_instant(&App::Echo, &Bytes::from_static(b"hi")),
            Some(AppOutcome::Ok(Bytes::from_static(b"hi")))
        );
        assert_eq!(
            run_instant(&App::Sha256, &Bytes::from_static(b"abc")),
            Some(AppOutcome::Ok(Bytes::from_static(
                b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            )))
        );
        let rt = rt();
        assert_eq!(
            rt.block_on(run(&App::Sleep, Bytes::from_static(b"5"), None, info())),
            AppOutcome::Ok(Bytes::from_static(b"slept 5 ms"))
        );
        assert!(matches!(
            rt.block_on(run(&App::Sleep, Bytes::from_static(b"soon"), None, info())),
            AppOutcome::Failed { exit_code: 2, .. }
        ));
        assert_eq!(
            rt.block_on(run(
                &App::Sleep,
                Bytes::from_static(b"5000"),
                Some(Duration::from_millis(20)),
                info()
            )),
            AppOutcome::Timeout
        );
    }

    /// As above, where the kernel gives out no pidfds.
    #[test]
    fn a_stopped_command_on_the_blocking_pool_gets_sigterm_then_sigkill() {
        command::without_pidfds(a_stopped_command_gets_sigterm_then_sigkill);
    }

    #[test]
    fn commands_get_stdin_and_report_exit_status() {
        let rt = rt();
        let up = cmd("tr a-z A-Z");
        assert_eq!(
            rt.block_on(run(&up, Bytes::from_static(b"shout"), None, info())),
            AppOutcome::Ok(Bytes::from_static(b"SHOUT"))
        );
        let fail = cmd("echo partial; echo broken >&2; exit 3");
        match rt.block_on(run(&fail, Bytes::new(), None, info())) {
            AppOutcome::Failed {
                exit_code,
                output,
                message,
            } => {
                assert_eq!(exit_code, 3);
                assert_eq!(&output[..], b"partial\n");
                assert!(message.contains("status 3: broken"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let slow = cmd("sleep 5");
        assert_eq!(
            rt.block_on(run(
                &slow,
                Bytes::new(),
                Some(Duration::from_millis(50)),
                info()
            )),
            AppOutcome::Timeout
        );
    }

    #[test]
    fn commands_and_handlers_learn_their_attempt_and_key() {
        let rt = rt();
        let env = cmd("echo $ALLOT_ATTEMPT $ALLOT_TASK_KEY ${ALLOT_USER:-none}");
        let info = TaskInfo::new(3, 42);
        assert_eq!(
            rt.block_on(run(&env, Bytes::new(), None, info.clone())),
            AppOutcome::Ok(Bytes::from_static(b"3 42 none\n"))
        );
        let placed = info.clone().placed(9, Arc::from("dave"));
        assert_eq!(
            rt.block_on(run(&env, Bytes::new(), None, placed)),
            AppOutcome::Ok(Bytes::from_static(b"3 42 dave\n"))
        );
        let job = cmd("echo $ALLOT_JOB_ID $ALLOT_TASK_INDEX $ALLOT_TASK_ID");
        let in_job = info.clone().in_job(Arc::from("main/d1/7"), 5);
        assert_eq!(
            rt.block_on(run(&job, Bytes::new(), None, in_job)),
            AppOutcome::Ok(Bytes::from_static(b"main/d1/7 5 main/d1/7/5\n"))
        );
        let h = App::Handler(handler(|_| async move {
            let i = current_task().ok_or("no task info")?;
            Ok(Bytes::from(format!("{} {}", i.attempt, i.key)))
        }));
        assert_eq!(
            rt.block_on(run(&h, Bytes::new(), None, info)),
            AppOutcome::Ok(Bytes::from_static(b"3 42"))
        );
        assert_eq!(current_task(), None, "outside a task there is none");
    }

    #[test]
    fn unknown_app_without_command_is_a_config_error() {
        let err = AppTable::from_config(&["render".into()], &[]).unwrap_err();
        assert!(err.contains("--app-cmd render=COMMAND"), "{err}");
        let t = AppTable::from_config(
            &["render".into(), "echo".into()],
            &[("render".into(), "cat".into())],
        )
        .unwrap();
        assert_eq!(t.names(), vec!["echo", "render"]);
    }
}
