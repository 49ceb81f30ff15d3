//! Jobs with real processes: a detached array survives a SIGKILLed
//! distributor, a running command is cancelled with SIGTERM, and bad input
//! is refused with a clear error.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A gateway that learns its set from registrations, one distributor
/// (set `main`, member `dist-1`) and two workers with the command app
/// `task` (prints its index) and `slow` (sleeps 30 s, noting SIGTERM).
struct Cluster {
    dir: Dir,
    pki: String,
    gw: SocketAddr,
    dist: SocketAddr,
    procs: Vec<Proc>,
    dist_proc: Option<Proc>,
}

impl Cluster {
    fn start(tag: &str) -> Cluster {
        let dir = Dir::new(tag);
        let pki = pki(
            &dir.0,
            &[
                ("gw-1", "gateway"),
                ("dist-1", "distributor"),
                ("w-1", "worker"),
                ("w-2", "worker"),
                ("client", "client"),
            ],
        );
        let (gw, dist) = (port(), port());
        let g = gw.to_string();
        let gateway = spawn(&["gateway", "--name", "gw-1", "--listen", &g, "--pki", &pki]);
        let mut c = Cluster {
            dir,
            pki,
            gw,
            dist,
            procs: vec![gateway],
            dist_proc: None,
        };
        c.start_distributor();
        let marker = c.dir.0.join("terms");
        let slow = format!(
            "slow=trap 'echo $ALLOT_TASK_INDEX >> {}; exit 143' TERM; sleep 30 & wait",
            marker.display()
        );
        for w in ["w-1", "w-2"] {
            let d = c.dist.to_string();
            c.procs.push(spawn(&[
                "worker",
                "--name",
                w,
                "--pki",
                &c.pki,
                "--join",
                &d,
                "--slots",
                "8",
                "--apps",
                "task,slow",
                "--app-cmd",
                "task=echo task $ALLOT_TASK_INDEX attempt $ALLOT_ATTEMPT",
                "--app-cmd",
                &slow,
            ]));
        }
        c.wait_ready();
        c
    }

    fn start_distributor(&mut self) {
        let (d, g) = (self.dist.to_string(), self.gw.to_string());
        let data = self.dir.0.join("dist-1");
        let data = data.to_str().unwrap();
        self.dist_proc = Some(spawn(&[
            "distributor",
            "--name",
            "dist-1",
            "--listen",
            &d,
            "--pki",
            &self.pki,
            "--set-name",
            "main",
            "--gateways",
            &g,
            "--report-ms",
            "200",
            "--data-dir",
            data,
        ]));
    }

    /// Until the gateway knows the member and it has both workers.
    fn wait_ready(&self) {
        let (p, g) = (self.pki.as_str(), self.gw.to_string());
        eventually(
            "the member registered with both workers",
            Duration::from_secs(30),
            || {
                let out = run(&["status", "--pki", p, "--gateway", &g, "--json"]);
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                v.as_array()?
                    .iter()
                    .any(|m| m["name"] == "dist-1" && m["state"] == "up" && m["workers_up"] == 2)
                    .then_some(())
            },
        );
    }

    fn cmd<'a>(&'a self, verb: &'a str, g: &'a str) -> Vec<&'a str> {
        vec![verb, "--pki", &self.pki, "--gateway", g]
    }

    fn jobs_json(&self) -> Vec<Value> {
        let g = self.gw.to_string();
        let mut args = self.cmd("jobs", &g);
        args.push("--json");
        let out = run(&args);
        if !out.status.success() {
            return Vec::new();
        }
        json(&out).as_array().cloned().unwrap_or_default()
    }

    fn job(&self, id: &str) -> Option<Value> {
        self.jobs_json().into_iter().find(|j| j["job"] == id)
    }
}

fn submit_detached(c: &Cluster, extra: &[&str]) -> Value {
    let g = c.gw.to_string();
    let mut args = c.cmd("submit", &g);
    args.extend(["--detach", "--json"]);
    args.extend(extra);
    let out = run(&args);
    assert!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out)
}

/// SIGKILL of the distributor in the middle of a 2,000-task array: after a
/// restart on the same data directory every task is done exactly once in
/// the job's state and the outputs are complete and in index order.
#[test]
fn a_detached_array_survives_a_sigkilled_distributor() {
    let mut c = Cluster::start("jobs-kill");
    let ack = submit_detached(&c, &["--app", "task", "--array", "1-2000"]);
    let id = ack["job"].as_str().unwrap().to_owned();
    assert_eq!(id, "main/dist-1/1");
    assert_eq!(ack["tasks"], 2000);
    assert_eq!(ack["distributor"], "dist-1");
    eventually("some tasks done", Duration::from_secs(60), || {
        let j = c.job(&id)?;
        (j["done"].as_u64()? >= 200).then_some(())
    });
    c.dist_proc.as_mut().unwrap().kill();
    c.start_distributor();
    let g = c.gw.to_string();
    let mut wait = c.cmd("wait", &g);
    wait.extend([&id[..], "--timeout", "120"]);
    let out = run(&wait);
    if !out.status.success() {
        let mut failed = c.cmd("tasks", &g);
        failed.extend([&id[..], "--state", "failed"]);
        let rows = run(&failed);
        panic!(
            "wait failed: {}\nfailed tasks: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&rows.stdout),
            String::from_utf8_lossy(&rows.stderr)
        );
    }
    let mut tasks = c.cmd("tasks", &g);
    tasks.extend([&id[..], "--json"]);
    let rows = json(&run(&tasks));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2000);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"], i as u64 + 1);
        assert_eq!(r["state"], "done", "{r}");
    }
    assert!(
        rows.iter().any(|r| r["attempts"].as_u64() >= Some(2)),
        "tasks that were running at the kill ran again with the attempt raised"
    );
    let mut output = c.cmd("output", &g);
    output.push(&id);
    let text = ok(&output);
    let indices: Vec<u64> = text
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(indices, (1..=2000).collect::<Vec<_>>());
    let j = c.job(&id).unwrap();
    assert_eq!(
        (j["done"].as_u64(), j["failed"].as_u64()),
        (Some(2000), Some(0))
    );
}

/// `allot cancel` stops a running command with SIGTERM (its trap runs) and
/// marks its tasks cancelled; `wait` then exits non-zero; cancelling the
/// finished job again is refused.
#[test]
fn cancel_stops_running_commands_with_sigterm() {
    let c = Cluster::start("jobs-cancel");
    let ack = submit_detached(&c, &["--app", "slow", "--array", "1-20"]);
    let id = ack["job"].as_str().unwrap().to_owned();
    eventually("tasks running", Duration::from_secs(30), || {
        (c.job(&id)?["running"].as_u64()? >= 16).then_some(())
    });
    let g = c.gw.to_string();
    let mut cancel = c.cmd("cancel", &g);
    cancel.push(&id);
    let said = ok(&cancel);
    assert!(said.contains("cancelled 20 tasks"), "{said}");
    let j = c.job(&id).unwrap();
    assert_eq!(j["cancelled"], 20, "{j}");
    let terms = eventually(
        "the commands noted SIGTERM",
        Duration::from_secs(10),
        || {
            let t = std::fs::read_to_string(c.dir.0.join("terms")).ok()?;
            (t.lines().count() >= 16).then_some(t)
        },
    );
    assert!(terms
        .lines()
        .all(|l| l.parse::<u64>().is_ok_and(|i| (1..=20).contains(&i))));
    let mut wait = c.cmd("wait", &g);
    wait.push(&id);
    let err = fails(&wait);
    assert!(err.contains("20 cancelled"), "{err}");
    let err = fails(&cancel);
    assert!(err.contains("has finished"), "{err}");
}

/// Bad input is refused with a clear error and loses nothing: a reversed
/// or oversized range, a missing `--each-line` file, an unknown job id,
/// and a damaged journal file.
#[test]
fn bad_job_input_is_refused_clearly() {
    let mut c = Cluster::start("jobs-bad");
    let g = c.gw.to_string();
    let mut sub = c.cmd("submit", &g);
    sub.extend(["--app", "task", "--detach", "--array", "10-5"]);
    assert!(fails(&sub).contains("reversed"));
    sub.pop();
    sub.push("0-99999999999");
    assert!(fails(&sub).contains("at most"));
    let mut lines = c.cmd("submit", &g);
    lines.extend([
        "--app",
        "task",
        "--detach",
        "--each-line",
        "/nonexistent/lines.txt",
    ]);
    let err = fails(&lines);
    assert!(err.contains("/nonexistent/lines.txt"), "{err}");
    for verb in ["tasks", "wait", "output", "cancel"] {
        let mut q = c.cmd(verb, &g);
        q.push("main/dist-1/999");
        let err = fails(&q);
        assert!(err.contains("no job main/dist-1/999"), "{verb}: {err}");
    }
    let mut q = c.cmd("tasks", &g);
    q.push("not-a-job");
    assert!(fails(&q).contains("not a job id"));
    // A good job still runs after all that, one task per line.
    let file = c.dir.0.join("lines.txt");
    std::fs::write(&file, "a\nb\nc\n").unwrap();
    let f = file.to_str().unwrap();
    let mut good = c.cmd("submit", &g);
    good.extend(["--app", "task", "--each-line", f]);
    let out = ok(&good);
    assert_eq!(
        out,
        "task 0 attempt 1\ntask 1 attempt 1\ntask 2 attempt 1\n"
    );
    // The same attached, each output to a file of its own.
    let outdir = c.dir.0.join("outputs");
    let o = outdir.to_str().unwrap();
    good.extend(["--output-dir", o]);
    assert_eq!(ok(&good), "", "nothing on stdout with --output-dir");
    for i in 0..3 {
        let text = std::fs::read_to_string(outdir.join(i.to_string())).unwrap();
        assert_eq!(text, format!("task {i} attempt 1\n"));
    }
    // A damaged journal: the distributor refuses to start and names it.
    c.dist_proc.as_mut().unwrap().kill();
    let journal = c.dir.0.join("dist-1").join("jobs.redb");
    assert!(journal.exists());
    std::fs::write(&journal, vec![0x5a; 8192]).unwrap();
    let (d, data) = (c.dist.to_string(), c.dir.0.join("dist-1"));
    let out = run(&[
        "distributor",
        "--name",
        "dist-1",
        "--listen",
        &d,
        "--pki",
        &c.pki,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jobs.redb") && err.contains("damaged"),
        "{err}"
    );
    let _ = Path::new(f);
}

/// A gateway seeded with `--set main=ADDR` knows its member by address
/// only: job commands still find the job through it.
#[test]
fn a_seeded_gateway_finds_jobs_by_address() {
    let dir = Dir::new("jobs-seeded");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let (gw, dist) = (port(), port());
    let (g, d) = (gw.to_string(), dist.to_string());
    let data = dir.0.join("data");
    let _dist = spawn(&[
        "distributor",
        "--name",
        "dist-1",
        "--listen",
        &d,
        "--pki",
        &pki,
        "--set-name",
        "main",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let set = format!("main={d}");
    let _gw = spawn(&[
        "gateway", "--name", "gw-1", "--listen", &g, "--pki", &pki, "--set", &set,
    ]);
    let _w = spawn(&[
        "worker", "--name", "w-1", "--pki", &pki, "--join", &d, "--apps", "echo",
    ]);
    let out = eventually("an attached job ran", Duration::from_secs(30), || {
        let out = run(&[
            "submit",
            "--pki",
            &pki,
            "--gateway",
            &g,
            "--app",
            "echo",
            "--array",
            "1-3",
            "--input",
            "/dev/null",
        ]);
        out.status.success().then_some(out)
    });
    assert!(out.stdout.is_empty(), "three empty outputs");
    let id = "main/dist-1/1";
    let rows = json(&run(&[
        "tasks",
        "--pki",
        &pki,
        "--gateway",
        &g,
        id,
        "--json",
    ]));
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{rows}");
    let jobs = json(&run(&["jobs", "--pki", &pki, "--gateway", &g, "--json"]));
    assert_eq!(jobs[0]["job"], id);
    assert_eq!(jobs[0]["done"], 3);
}
