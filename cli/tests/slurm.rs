//! allot on a real Slurm: the sbatch recipe (deploy/slurm/allot.sbatch)
//! and the distributor's automatic allocation.
//!
//! They need a Slurm to submit to: `.ci/run` starts a single-node one
//! (deploy/slurm/ci-slurm.sh) and sets `ALLOT_SLURM=1`, and then they must
//! run; elsewhere they run when `sinfo` answers and say why they are
//! skipped when it does not. The node has 2 CPUs and the features
//! `gpu_none` and `ssd`. The tests take turns (one lock): each expects
//! the node to itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{allot, eventually, Dir};

static SLURM: Mutex<()> = Mutex::new(());

/// Whether `sinfo` lists a node within 10 s (it waits long for a
/// controller that is down), asked once for all the tests.
fn sinfo_answers() -> bool {
    static ANSWERS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWERS.get_or_init(|| {
        let Ok(mut child) = Command::new("sinfo")
            .args(["-h", "-o", "%T"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        let t0 = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    let mut out = String::new();
                    if let Some(mut o) = child.stdout.take() {
                        use std::io::Read;
                        let _ = o.read_to_string(&mut out);
                    }
                    return st.success() && !out.trim().is_empty();
                }
                Ok(None) if t0.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    })
}

/// Whether a Slurm answers; panics when `.ci/run` said it started one
/// and it does not.
fn slurm_ready(test: &str) -> bool {
    let answers = sinfo_answers();
    if std::env::var_os("ALLOT_SLURM").is_some_and(|v| v == "1") {
        assert!(
            answers,
            "ALLOT_SLURM=1 but `sinfo` does not answer (SLURM_CONF={:?})",
            std::env::var_os("SLURM_CONF")
        );
    }
    if !answers {
        eprintln!(
            "{test}: skipped: no Slurm here (`sinfo` does not answer); \
             deploy/slurm/ci-slurm.sh start starts one (as root)"
        );
    }
    answers
}

/// The node to this test (the tests take turns), if a Slurm answers (see
/// [`slurm_ready`]).
fn slurm_turn(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let turn = SLURM.lock().unwrap_or_else(|p| p.into_inner());
    slurm_ready(test).then_some(turn)
}

fn sh(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"))
}

/// Cancels a Slurm job when the test ends, however it ends.
struct Job(String);

impl Drop for Job {
    fn drop(&mut self) {
        let _ = sh("scancel", &[&self.0]);
    }
}

/// Whether job `id` has left the queue (squeue no longer lists it, or no
/// longer knows it).
fn left_queue(id: &str) -> bool {
    let o = sh("squeue", &["-h", "-j", id, "-o", "%T"]);
    !o.status.success() || String::from_utf8_lossy(&o.stdout).trim().is_empty()
}

/// Processes whose command line mentions `needle` (but not this test).
fn processes_with(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(format!("{name}: {cmd}"));
        }
    }
    found
}

/// A loopback port whose next port is free too.
fn port_pair() -> u16 {
    loop {
        let p = common::port().port();
        if p < u16::MAX && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// The variables of an `export A=x B=y` line.
fn exports(line: &str) -> Vec<(String, String)> {
    line.trim()
        .trim_start_matches("export ")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `allot ARGS` with `env` set and `input` on stdin.
fn allot_with(env: &[(String, String)], args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut c = allot();
    c.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn allot");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slurm/allot.sbatch")
}

/// The recipe submitted with sbatch starts a cluster inside the job
/// (the node's features and the job as worker labels), says where to
/// submit, runs tasks, and leaves nothing behind once scancel'ed.
#[test]
fn the_sbatch_recipe_runs_tasks_and_cleans_up_on_scancel() {
    let Some(_turn) = slurm_turn("the_sbatch_recipe_runs_tasks_and_cleans_up_on_scancel") else {
        return;
    };
    let dir = Dir::new("slurm-recipe");
    let job_dir = dir.0.join("job");
    let out = dir.0.join("job-%j.out");
    let gport = port_pair();
    let export = format!(
        "ALL,ALLOT_BIN={},ALLOT_JOB_DIR={},ALLOT_GATEWAY_PORT={gport},ALLOT_LOG=warn",
        env!("CARGO_BIN_EXE_allot"),
        job_dir.display(),
    );
    let sub = sh(
        "sbatch",
        &[
            "--parsable",
            "--output",
            out.to_str().unwrap(),
            "--export",
            &export,
            recipe().to_str().unwrap(),
        ],
    );
    assert!(sub.status.success(), "sbatch: {}", text(&sub));
    let id = String::from_utf8_lossy(&sub.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let job = Job(id.clone());
    let job_out = dir.0.join(format!("job-{id}.out"));
    let env_file = job_dir.join("env");
    let line = eventually(
        "the job's env file (where to submit)",
        Duration::from_secs(90),
        || std::fs::read_to_string(&env_file).ok(),
    );
    let env = exports(&line);
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "ALLOT_GATEWAY",
            "ALLOT_DISTRIBUTOR",
            "ALLOT_PKI",
            "ALLOT_NAME"
        ],
        "{line}"
    );
    // The recipe prints the line before it writes the file; the job's
    // output file may still lag a moment behind on a loaded machine.
    eventually(
        "the job's output to show where to submit",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&job_out)
                .ok()
                .filter(|printed| printed.contains(line.trim()))
        },
    );
    // The first node, by its host name.
    let host = String::from_utf8(sh("hostname", &["-s"]).stdout).unwrap();
    assert_eq!(env[0].1, format!("{}:{gport}", host.trim()), "{line}");
    assert_eq!(env[1].1, format!("{}:{}", host.trim(), gport + 1), "{line}");

    // Tasks through the gateway, on the worker of this job's node, which
    // carries the node's features and the job's id.
    let require = format!(
        "server.feature_ssd == 1 && server.feature_gpu_none == 1 && server.slurm_job == \"{id}\" && server.host == \"{}\"",
        host.trim()
    );
    for i in 0..3 {
        let o = allot_with(
            &env,
            &[
                "submit",
                "--app",
                "echo",
                "--input",
                "-",
                "--require",
                &require,
                "--json",
            ],
            &format!("task {i}"),
        );
        assert!(o.status.success(), "submit: {}", text(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["output"], format!("task {i}"), "{j}");
        assert_eq!(j["worker"], format!("w-{}", host.trim()), "{j}");
    }
    let st = allot_with(&env, &["status", "--distributor", &env[1].1, "--json"], "");
    assert!(st.status.success(), "status: {}", text(&st));
    let workers: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(workers.as_array().map(Vec::len), Some(1), "{workers}");

    // scancel: every allot process of the job ends, and the job leaves
    // the queue.
    let c = sh("scancel", &[&id]);
    assert!(c.status.success(), "scancel: {}", text(&c));
    let needle = job_dir.to_str().unwrap().to_owned();
    eventually(
        "the job's allot processes to end and the job to leave the queue",
        Duration::from_secs(40),
        || (processes_with(&needle).is_empty() && left_queue(&id)).then_some(()),
    );
    let printed = std::fs::read_to_string(&job_out).unwrap_or_default();
    assert!(printed.contains("allot.sbatch: stopped"), "{printed}");
    drop(job);
}

/// A distributor with automatic allocation and no worker, for `pki`.
fn autoalloc_distributor(dir: &Path, pki: &str, addr: &str, extra: &[&str]) -> common::Proc {
    let data = dir.join("data");
    let mut args = vec![
        "distributor",
        "--name",
        "d1",
        "--listen",
        addr,
        "--pki",
        pki,
        "--data-dir",
        data.to_str().unwrap(),
        "--drain-timeout",
        "0",
        "--autoalloc",
        "slurm",
    ];
    args.extend(extra);
    common::spawn(&args)
}

/// `allot status --allocations --json` of the distributor at `addr`.
fn allocations(pki: &str, addr: &str) -> Option<serde_json::Value> {
    let o = common::run(&[
        "status",
        "--pki",
        pki,
        "--name",
        "client",
        "--distributor",
        addr,
        "--allocations",
        "--json",
    ]);
    o.status.success().then(|| common::json(&o))
}

/// Submits one echo task as a job to `addr`; its id.
fn submit_job(pki: &str, addr: &str, require: &str, input: &str) -> String {
    let env: Vec<(String, String)> = Vec::new();
    let o = allot_with(
        &env,
        &[
            "submit",
            "--pki",
            pki,
            "--name",
            "client",
            "--distributor",
            addr,
            "--app",
            "echo",
            "--require",
            require,
            "--input",
            "-",
            "--detach",
        ],
        input,
    );
    assert!(o.status.success(), "submit: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

/// A task no worker can take but a Slurm worker could: the distributor
/// submits a job, its worker joins and runs the task, then exits once
/// idle, and the job leaves the queue. A task no Slurm node could take
/// starts nothing.
#[test]
fn autoalloc_starts_a_worker_for_a_waiting_task_and_the_idle_worker_ends_its_job() {
    let Some(_turn) =
        slurm_turn("autoalloc_starts_a_worker_for_a_waiting_task_and_the_idle_worker_ends_its_job")
    else {
        return;
    };
    let dir = Dir::new("slurm-autoalloc");
    let pki = common::pki(
        &dir.0,
        &[
            ("d1", "distributor"),
            ("client", "client"),
            ("pool", "worker"),
        ],
    );
    let port = common::port().port();
    let addr = format!("127.0.0.1:{port}");
    let join = format!("localhost:{port}");
    // The jobs' workers share the pool certificate and join by host name.
    let _d = autoalloc_distributor(
        &dir.0,
        &pki,
        &addr,
        &[
            "--autoalloc-join",
            &join,
            "--autoalloc-idle",
            "3",
            "--autoalloc-max-jobs",
            "1",
            "--autoalloc-cert",
            "pool",
        ],
    );
    let none = eventually("the distributor to answer", Duration::from_secs(20), || {
        allocations(&pki, &addr)
    });
    assert_eq!(none["backend"], "slurm", "{none}");
    assert_eq!(none["allocations"], serde_json::json!([]), "{none}");

    let job = submit_job(&pki, &addr, "server.feature_ssd == 1", "hello slurm");
    let target = ["--pki", &pki, "--name", "client", "--distributor", &addr];
    let mut wait = vec!["wait", "--timeout", "90"];
    wait.extend(target);
    wait.push(&job);
    let w = common::run(&wait);
    assert!(w.status.success(), "wait: {}", text(&w));
    let mut output = vec!["output"];
    output.extend(target);
    output.push(&job);
    assert_eq!(common::ok(&output).trim(), "hello slurm");

    let al = allocations(&pki, &addr).unwrap();
    let list = al["allocations"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{al}");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let _job = Job(id.clone());
    let worker = format!("auto-{id}");
    assert_eq!(list[0]["workers"], serde_json::json!([worker]), "{al}");

    // Nothing in the partition has this feature: no job for it (with a
    // worker in the table it fails at once), and still one allocation.
    let never = submit_job(&pki, &addr, "server.feature_a100 == 1", "x");
    let mut wait_never = vec!["wait", "--timeout", "20"];
    wait_never.extend(target);
    wait_never.push(&never);
    assert!(!common::run(&wait_never).status.success());
    let al = allocations(&pki, &addr).unwrap();
    assert_eq!(al["allocations"].as_array().unwrap().len(), 1, "{al}");

    // Idle for 3 s: the worker exits and its job ends.
    let needle = format!("--name {worker} ");
    eventually(
        "the idle worker to exit and its job to leave the queue",
        Duration::from_secs(40),
        || (processes_with(&needle).is_empty() && left_queue(&id)).then_some(()),
    );
    eventually(
        "the distributor to see the job ended",
        Duration::from_secs(20),
        || {
            let al = allocations(&pki, &addr)?;
            let s = al["allocations"][0]["state"].as_str()?.to_owned();
            ["ENDED", "COMPLETED"].contains(&s.as_str()).then_some(())
        },
    );
}

/// sbatch refuses the job (a partition that does not exist): the status
/// says why, the task keeps waiting with that reason.
#[test]
fn a_refused_submission_is_shown_in_status_and_the_task_keeps_waiting() {
    let Some(_turn) =
        slurm_turn("a_refused_submission_is_shown_in_status_and_the_task_keeps_waiting")
    else {
        return;
    };
    let dir = Dir::new("slurm-refused");
    let pki = common::pki(&dir.0, &[("d1", "distributor"), ("client", "client")]);
    let addr = common::port().to_string();
    let _d = autoalloc_distributor(
        &dir.0,
        &pki,
        &addr,
        &["--autoalloc-args", "--partition nope"],
    );
    eventually("the distributor to answer", Duration::from_secs(20), || {
        allocations(&pki, &addr)
    });
    // explain says it would wait for a Slurm worker, and why it has none.
    let explain = |json: bool| {
        let mut a = vec![
            "explain",
            "--pki",
            &pki,
            "--name",
            "client",
            "--distributor",
            &addr,
            "--app",
            "echo",
        ];
        if json {
            a.push("--json");
        }
        common::ok(&a)
    };
    let e: serde_json::Value = serde_json::from_str(&explain(true)).unwrap();
    assert_eq!(e["would_wait"], true, "{e}");
    let job = submit_job(&pki, &addr, "", "waits");
    let al = eventually("the refusal in the status", Duration::from_secs(30), || {
        allocations(&pki, &addr).filter(|a| a["last_error"] != "")
    });
    let why = al["last_error"].as_str().unwrap();
    assert!(why.contains("invalid partition"), "{al}");
    let verdict = explain(false);
    assert!(
        verdict.starts_with("would wait: no worker of 0 satisfies every clause, but a worker the distributor's automatic allocation starts would")
            && verdict.contains("invalid partition"),
        "{verdict}"
    );
    assert_eq!(al["allocations"], serde_json::json!([]), "{al}");
    assert_eq!(al["waiting_tasks"], 1, "{al}");
    let text_status = common::ok(&[
        "status",
        "--pki",
        &pki,
        "--name",
        "client",
        "--distributor",
        &addr,
    ]);
    assert!(
        text_status.contains("last submission refused: sbatch: error: invalid partition"),
        "{text_status}"
    );
    let tasks = common::run(&[
        "tasks",
        "--pki",
        &pki,
        "--name",
        "client",
        "--distributor",
        &addr,
        &job,
        "--json",
    ]);
    assert!(tasks.status.success(), "tasks: {}", text(&tasks));
    let rows = common::json(&tasks);
    let row = &rows.as_array().expect("an array of tasks")[0];
    assert_eq!(row["state"], "waiting", "{rows}");
    let msg = row["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("waits for a worker from slurm: the last submission was refused")
            && msg.contains("invalid partition"),
        "{rows}"
    );
}

/// Without a pool certificate each job issues its worker one of its own
/// name, with the CA in the distributor's PKI directory.
#[test]
fn without_a_pool_certificate_the_job_issues_its_own() {
    let Some(_turn) = slurm_turn("without_a_pool_certificate_the_job_issues_its_own") else {
        return;
    };
    let dir = Dir::new("slurm-own-cert");
    let pki = common::pki(&dir.0, &[("d1", "distributor"), ("client", "client")]);
    let addr = common::port().to_string();
    let _d = autoalloc_distributor(&dir.0, &pki, &addr, &["--autoalloc-idle", "1"]);
    eventually("the distributor to answer", Duration::from_secs(20), || {
        allocations(&pki, &addr)
    });
    let job = submit_job(&pki, &addr, "", "own cert");
    let target = ["--pki", &pki, "--name", "client", "--distributor", &addr];
    let mut wait = vec!["wait", "--timeout", "90"];
    wait.extend(target);
    wait.push(&job);
    let w = common::run(&wait);
    assert!(w.status.success(), "wait: {}", text(&w));
    let al = allocations(&pki, &addr).unwrap();
    let id = al["allocations"][0]["id"].as_str().unwrap().to_owned();
    let _job = Job(id.clone());
    assert_eq!(
        al["allocations"][0]["workers"],
        serde_json::json!([format!("auto-{id}")])
    );
    let cert = Path::new(&pki).join(format!("auto-{id}.pem"));
    assert!(cert.exists(), "{} issued by the job", cert.display());
}

/// The ids of this user's jobs pending or running whose name starts
/// with `prefix`.
fn jobs_named(prefix: &str) -> Vec<String> {
    let o = sh(
        "squeue",
        &["-h", "--me", "-t", "PENDING,RUNNING", "-o", "%i %j"],
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (id, name) = l.trim().split_once(' ')?;
            name.starts_with(prefix).then(|| id.to_owned())
        })
        .collect()
}

/// The name of job `id`.
fn job_name(id: &str) -> String {
    let o = sh("squeue", &["-h", "-j", id, "-o", "%j"]);
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Cancels every job of this user whose name starts with its prefix when
/// the test ends, however it ends.
struct JobsNamed(&'static str);

impl Drop for JobsNamed {
    fn drop(&mut self) {
        for id in jobs_named(self.0) {
            let _ = sh("scancel", &[&id]);
        }
    }
}

/// A distributor killed while its job is pending, and started again on
/// the same data directory, adopts that job: `allot status` lists it, and
/// with the task still waiting it submits no second one (without the
/// adoption it would, past `--autoalloc-max-jobs 1`).
#[test]
fn a_restarted_distributor_adopts_its_pending_job_and_submits_no_more() {
    let Some(_turn) =
        slurm_turn("a_restarted_distributor_adopts_its_pending_job_and_submits_no_more")
    else {
        return;
    };
    let dir = Dir::new("slurm-adopt");
    let pki = common::pki(&dir.0, &[("d1", "distributor"), ("client", "client")]);
    let addr = common::port().to_string();
    // The job is held for an hour: it stays pending, its worker never
    // starts, and the task keeps waiting for it.
    let args = [
        "--autoalloc-max-jobs",
        "1",
        "--autoalloc-idle",
        "600",
        "--autoalloc-args",
        "--begin=now+3600",
    ];
    let mut d = autoalloc_distributor(&dir.0, &pki, &addr, &args);
    eventually("the distributor to answer", Duration::from_secs(20), || {
        allocations(&pki, &addr)
    });
    let _jobs = JobsNamed("allot-d1-");
    submit_job(&pki, &addr, "server.feature_ssd == 1", "waits");
    let first = eventually("a job submitted", Duration::from_secs(30), || {
        let al = allocations(&pki, &addr)?;
        al["allocations"][0]["id"].as_str().map(str::to_owned)
    });
    // Named for this distributor and its data directory.
    let name = job_name(&first);
    assert!(name.starts_with("allot-d1-"), "{name}");
    assert_eq!(jobs_named(&name), std::slice::from_ref(&first));

    d.kill();
    let _d = autoalloc_distributor(&dir.0, &pki, &addr, &args);
    // The task is journaled: it waits again once the job is reloaded.
    let al = eventually(
        "the job adopted and the task waiting",
        Duration::from_secs(30),
        || {
            allocations(&pki, &addr)
                .filter(|a| a["allocations"][0]["id"] == first.as_str() && a["waiting_tasks"] == 1)
        },
    );
    assert_eq!(al["allocations"][0]["state"], "PENDING", "{al}");
    // Several ticks and polls later, still the one job.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        jobs_named(&name),
        std::slice::from_ref(&first),
        "a second job was submitted"
    );
    let al = allocations(&pki, &addr).unwrap();
    assert_eq!(al["allocations"].as_array().map(Vec::len), Some(1), "{al}");
}
